"""Issue 12: a plain Rust WASI command using std's HashMap runs under the default grants.

Rust's std seeds ``HashMap`` from WASI ``random_get`` and reads the clock; clocks and random are
granted unless denied (``--no-clocks`` / ``--no-random``, ``no-clocks`` / ``no-random`` in a
manifest or deployment, ``clocks=False`` / ``random=False`` in a node policy).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mesh.cli import main
from mesh.cli.runcmd import EXIT_INVALID_MODULE
from runtime import (
    Capabilities, CapabilityDenied, CapabilityRequest, Manifest, MemoryAuditSink, Publisher, Runtime, RuntimeConfig,
    TrustStore, example_path,
)
from tests.runtime.conftest import counter

ROOT = Path(__file__).resolve().parents[2]
TEXT = b"the cat and the hat\nThe end\n"
# Counted by hand: "the" three times (case folded), every other word once, ties by word.
COUNTS = b"3 the\n1 and\n1 cat\n1 end\n1 hat\n"


def test_rust_module_imports_clock_and_random(wasm: dict[str, bytes]) -> None:
    import wasmtime

    names = {i.name for i in wasmtime.Module(wasmtime.Engine(), wasm["wordcount"]).imports}
    assert {"clock_time_get", "random_get"} <= names  # what made it need --clocks --random before


def test_rust_hashmap_module_runs_with_default_grants(rt: Runtime, wasm: dict[str, bytes]) -> None:
    lm = rt.load_unsigned(wasm["wordcount"], name="wordcount")  # no capabilities given
    result = rt.run_command(lm.key, stdin=TEXT)
    assert result.status == 0, result.stderr
    assert result.body == COUNTS
    assert result.stderr.startswith(b"wordcount: 5 distinct words at unix time ")
    assert int(result.stderr.split()[-1]) > 1_600_000_000  # a real wall clock, not zero


@pytest.mark.parametrize(("flag", "imp"), [("random", "random_get"), ("clocks", "clock_time_get")])
def test_denied_flag_refuses_the_module_with_a_metric(
    rt: Runtime, audit: MemoryAuditSink, wasm: dict[str, bytes], flag: str, imp: str
) -> None:
    with pytest.raises(CapabilityDenied) as info:
        rt.load_unsigned(wasm["wordcount"], name="wordcount", capabilities=Capabilities.build(**{flag: False}))
    assert tuple(info.value.offending) == (f"wasi_snapshot_preview1.{imp} (needs the {flag} capability)",)
    assert str(info.value).count("\n") == 0
    assert counter(rt, "wasmatrix_runtime_capability_denials_total", module="wordcount@0.0.0-dev", capability="import") == 1
    assert counter(rt, "wasmatrix_runtime_admission_rejections_total", reason="capability") == 1
    assert [e["event"] for e in audit.events] == ["capability_denied", "module_rejected"]


def test_signed_default_manifest_runs_and_node_policy_can_deny(tmp_path: Path, wasm: dict[str, bytes]) -> None:
    pub = Publisher.generate()
    manifest = Manifest.for_module("wordcount", "1.0.0", wasm["wordcount"])
    assert manifest.capabilities == CapabilityRequest.from_strings([])  # clocks + random requested by default
    audit = MemoryAuditSink()
    with Runtime(RuntimeConfig(data_dir=tmp_path / "n"), trust=TrustStore([pub.public_bytes]), audit=audit) as rt:
        lm = rt.admit(pub.sign(manifest), wasm["wordcount"])  # default node policy
        assert rt.run_command(lm.key, stdin=TEXT).body == COUNTS
        rt.unload(lm.key)
        with pytest.raises(CapabilityDenied):
            rt.admit(pub.sign(manifest), wasm["wordcount"], grant=Capabilities.build(random=False))
        # The requested-but-denied capability is counted and audited at admission, then the import refused.
        assert counter(rt, "wasmatrix_runtime_capability_denials_total", module="wordcount@1.0.0", capability="random") == 1
        assert any(e["event"] == "capability_denied" and e["capability"] == "random" for e in audit.events)
        assert counter(rt, "wasmatrix_runtime_admission_rejections_total", reason="capability") == 1


def test_wasmatrix_run_default_and_deny_flags(capsysbinary: pytest.CaptureFixture[bytes], tmp_path: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_bytes(TEXT)
    assert main(["run", str(example_path("wordcount")), "--stdin", str(text)]) == 0
    assert capsysbinary.readouterr().out == COUNTS
    for flag, imp in (("--no-random", "random_get"), ("--no-clocks", "clock_time_get")):
        assert main(["run", flag, str(example_path("wordcount")), "--stdin", str(text)]) == EXIT_INVALID_MODULE
        captured = capsysbinary.readouterr()
        err = captured.err.decode()
        assert captured.out == b"" and err.count("\n") == 1
        assert err.startswith("wasmatrix run: ") and imp in err and "Traceback" not in err


def test_wasmatrix_run_subprocess_piped_stdin() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mesh.cli", "run", str(example_path("wordcount"))], input=TEXT, capture_output=True,
        cwd=ROOT, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == COUNTS


def test_one_version_under_two_grants_is_two_loaded_modules(rt: Runtime, wasm: dict[str, bytes]) -> None:
    """Two deployments of one module version on one node: the second one's grant must hold, not the first's."""
    granted = rt.load_unsigned(wasm["hello"], name="hello", version="1.0.0")
    same = rt.load_unsigned(wasm["hello"], name="hello", version="1.0.0")
    assert same is granted  # same version, same grant: one loaded module
    env = Capabilities.build(env={"GREETING": "hi"})
    other = rt.load_unsigned(wasm["hello"], name="hello", version="1.0.0", capabilities=env)
    assert other is not granted and other.key != granted.key and other.key.startswith("hello@1.0.0~")
    assert dict(other.capabilities.env) == {"GREETING": "hi"} and granted.capabilities.env == ()
    assert b"env: GREETING=hi" in rt.run_command(other.key).body
    assert b"GREETING" not in rt.run_command(granted.key).body
    # and a version loaded with random first cannot lend it to a later load that denies it
    rt.load_unsigned(wasm["wordcount"], name="wordcount", version="1.0.0")
    with pytest.raises(CapabilityDenied):
        rt.load_unsigned(wasm["wordcount"], name="wordcount", version="1.0.0", capabilities=Capabilities.build(random=False))
