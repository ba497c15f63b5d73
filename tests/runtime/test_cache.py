"""Compiled-module cache: survives restarts, never loads corrupt entries, stays under its cap."""

from __future__ import annotations

from pathlib import Path

from runtime import Runtime, RuntimeConfig
from tests.runtime.conftest import counter


def _entries(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "compiled").glob("*.cwasm"))


def test_cache_survives_restart_without_recompiling(data_dir: Path, wasm: dict[str, bytes]) -> None:
    with Runtime(RuntimeConfig(data_dir=data_dir, allow_unsigned=True)) as first:
        lm = first.load_unsigned(wasm["hello"], name="hello")
        assert counter(first, "wasmatrix_runtime_compiles_total") == 1
        assert counter(first, "wasmatrix_runtime_cache_misses_total") == 1
        first.unload(lm.key)
        first.load_unsigned(wasm["hello"], name="hello")
        assert counter(first, "wasmatrix_runtime_cache_hits_total", tier="memory") == 1
        assert counter(first, "wasmatrix_runtime_compiles_total") == 1
    with Runtime(RuntimeConfig(data_dir=data_dir, allow_unsigned=True)) as second:
        lm = second.load_unsigned(wasm["hello"], name="hello")
        assert counter(second, "wasmatrix_runtime_compiles_total") == 0
        assert counter(second, "wasmatrix_runtime_cache_hits_total", tier="disk") == 1
        assert second.run_command(lm.key, stdin=b"ok").body.endswith(b"stdin: ok\n")


def test_corrupted_entry_is_recompiled_not_loaded(data_dir: Path, wasm: dict[str, bytes]) -> None:
    with Runtime(RuntimeConfig(data_dir=data_dir, allow_unsigned=True)) as rt:
        rt.load_unsigned(wasm["hello"], name="hello")
    (entry,) = _entries(data_dir)
    blob = bytearray(entry.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one flipped bit in the native code
    entry.write_bytes(bytes(blob))
    with Runtime(RuntimeConfig(data_dir=data_dir, allow_unsigned=True)) as rt:
        lm = rt.load_unsigned(wasm["hello"], name="hello")
        assert counter(rt, "wasmatrix_runtime_cache_corrupt_total") == 1
        assert counter(rt, "wasmatrix_runtime_compiles_total") == 1
        assert counter(rt, "wasmatrix_runtime_cache_hits_total", tier="disk") == 0
        assert rt.run_command(lm.key).status == 0
    # The rewritten entry is good again.
    with Runtime(RuntimeConfig(data_dir=data_dir, allow_unsigned=True)) as rt:
        rt.load_unsigned(wasm["hello"], name="hello")
        assert counter(rt, "wasmatrix_runtime_cache_hits_total", tier="disk") == 1


def test_entry_from_another_node_key_is_rejected(tmp_path: Path, wasm: dict[str, bytes]) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    with Runtime(RuntimeConfig(data_dir=a, allow_unsigned=True)) as rt:
        rt.load_unsigned(wasm["hello"], name="hello")
    with Runtime(RuntimeConfig(data_dir=b, allow_unsigned=True)) as rt:
        rt.load_unsigned(wasm["loop"], name="loop")  # creates b's cache dir and key
    (entry,) = _entries(a)
    (b / "compiled" / entry.name).write_bytes(entry.read_bytes())  # planted, signed with a's key
    with Runtime(RuntimeConfig(data_dir=b, allow_unsigned=True)) as rt:
        rt.load_unsigned(wasm["hello"], name="hello")
        assert counter(rt, "wasmatrix_runtime_cache_corrupt_total") == 1
        assert counter(rt, "wasmatrix_runtime_compiles_total") == 1


def test_disk_tier_is_lru_bounded(data_dir: Path, wasm: dict[str, bytes]) -> None:
    with Runtime(RuntimeConfig(data_dir=data_dir, allow_unsigned=True)) as rt:
        rt.load_unsigned(wasm["loop"], name="loop")
        size_one = sum(p.stat().st_size for p in _entries(data_dir))
    cfg = RuntimeConfig(data_dir=data_dir, allow_unsigned=True, cache_disk_bytes=size_one * 2)
    with Runtime(cfg) as rt:
        rt.load_unsigned(wasm["hello"], name="hello")
        rt.load_unsigned(wasm["handler"], name="handler")
        total = sum(p.stat().st_size for p in _entries(data_dir))
        assert total <= size_one * 2
        assert counter(rt, "wasmatrix_runtime_cache_evictions_total", tier="disk") >= 1
        assert counter(rt, "wasmatrix_runtime_cache_bytes") == total
