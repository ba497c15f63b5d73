"""Compiled-module cache: an in-memory LRU in front of an on-disk LRU of serialized modules.

Deserializing a compiled module is loading native code, so a disk entry is
only trusted if its HMAC (keyed with a node-local secret, over the cache key
and the payload) verifies; anything else is counted as corrupt, deleted and
recompiled. Keys cover (sha256, wasmtime version, engine settings, arch) so an
upgrade or a settings change never loads stale code.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import structlog
from wasmtime import Module, WasmtimeError

from runtime.engine import EngineHandle
from runtime.errors import CacheError, ValidationError
from runtime.metrics import RuntimeMetrics

log = structlog.get_logger("wasmatrix.runtime.cache")

_MAGIC = b"WMXC1\n"
_MAC_LEN = 32
DEFAULT_DISK_BYTES = 1 << 30
DEFAULT_MEMORY_ENTRIES = 64


def load_or_create_key(path: Path) -> bytes:
    """Read the node's cache HMAC key, creating a random 0600 one on first use."""
    try:
        key = path.read_bytes()
        if len(key) == 32:
            return key
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


class CompiledCache:
    """Returns compiled ``Module`` objects, compiling only on a miss in both tiers."""

    def __init__(
        self,
        directory: Path | None,
        *,
        metrics: RuntimeMetrics,
        hmac_key: bytes | None = None,
        max_disk_bytes: int = DEFAULT_DISK_BYTES,
        memory_entries: int = DEFAULT_MEMORY_ENTRIES,
        compiler: Callable[[EngineHandle, bytes], Module] | None = None,
    ) -> None:
        if directory is not None and hmac_key is None:
            raise CacheError("an on-disk compiled cache needs an HMAC key (see load_or_create_key)")
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._key = hmac_key or b""
        self.max_disk_bytes = max_disk_bytes
        self.memory_entries = memory_entries
        self._metrics = metrics
        # None: compile in this process; else e.g. a compile worker process (runtime.compileworker).
        self._compiler = compiler
        self._lock = threading.Lock()
        self._memory: OrderedDict[tuple[str, str], Module] = OrderedDict()
        # One lock per key so two threads loading the same module compile it once.
        self._key_locks: dict[tuple[str, str], threading.Lock] = {}
        if self.directory is not None:
            self._metrics.cache_bytes.set(self._disk_usage())

    def get_or_compile(self, engine: EngineHandle, sha256: str, wasm: Callable[[], bytes]) -> Module:
        """Return the module for ``sha256``; ``wasm()`` supplies the (verified) bytes on a miss."""
        key = (sha256, engine.fingerprint)
        with self._lock:
            module = self._memory.get(key)
            if module is not None:
                self._memory.move_to_end(key)
                self._metrics.cache_hits.labels(tier="memory").inc()
                return module
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                module = self._memory.get(key)
            if module is not None:
                self._metrics.cache_hits.labels(tier="memory").inc()
                return module
            module = self._load_disk(engine, key)
            if module is None:
                self._metrics.cache_misses.inc()
                module = self._compile(engine, wasm())
                self._store_disk(key, module)
            self._remember(key, module)
            return module

    def _remember(self, key: tuple[str, str], module: Module) -> None:
        with self._lock:
            self._memory[key] = module
            self._memory.move_to_end(key)
            while len(self._memory) > self.memory_entries:
                self._memory.popitem(last=False)
                self._metrics.cache_evictions.labels(tier="memory").inc()

    def _compile(self, engine: EngineHandle, wasm: bytes) -> Module:
        started = time.perf_counter()
        try:
            module = self._compiler(engine, wasm) if self._compiler is not None else Module(engine.engine, wasm)
        except WasmtimeError as exc:
            raise ValidationError(f"module failed to compile: {str(exc).strip().splitlines()[0]}") from None
        self._metrics.compiles.inc()
        self._metrics.compile_seconds.observe(time.perf_counter() - started)
        return module

    def _path(self, key: tuple[str, str]) -> Path:
        assert self.directory is not None
        name = hashlib.sha256(f"{key[0]}|{key[1]}".encode()).hexdigest()
        return self.directory / f"{name}.cwasm"

    def _mac(self, key: tuple[str, str], payload: bytes) -> bytes:
        return hmac.new(self._key, f"{key[0]}|{key[1]}\n".encode() + payload, hashlib.sha256).digest()

    def _load_disk(self, engine: EngineHandle, key: tuple[str, str]) -> Module | None:
        if self.directory is None:
            return None
        path = self._path(key)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("compiled_cache_read_failed", path=str(path), error=str(exc))
            return None
        head = len(_MAGIC) + _MAC_LEN
        payload = blob[head:]
        ok = (
            len(blob) > head
            and blob[: len(_MAGIC)] == _MAGIC
            and hmac.compare_digest(blob[len(_MAGIC):head], self._mac(key, payload))
        )
        module = None
        if ok:
            try:
                module = Module.deserialize(engine.engine, payload)
            except WasmtimeError:
                module = None
        if module is None:
            # Never load what fails the check; drop it so the recompiled entry replaces it.
            self._metrics.cache_corrupt.inc()
            log.warning("compiled_cache_entry_corrupt", sha256=key[0], path=str(path))
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # mtime is the LRU clock of the disk tier
        self._metrics.cache_hits.labels(tier="disk").inc()
        return module

    def _store_disk(self, key: tuple[str, str], module: Module) -> None:
        if self.directory is None:
            return
        payload = bytes(module.serialize())
        blob = _MAGIC + self._mac(key, payload) + payload
        path = self._path(key)
        try:
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.replace(tmp, path)
        except OSError as exc:
            # A cache that cannot be written only costs a recompile next time.
            log.warning("compiled_cache_write_failed", path=str(path), error=str(exc))
            return
        self._evict_disk()

    def _entries(self) -> list[tuple[float, int, Path]]:
        assert self.directory is not None
        out = []
        for p in self.directory.glob("*.cwasm"):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            out.append((st.st_mtime, st.st_size, p))
        return out

    def _disk_usage(self) -> int:
        return sum(size for _, size, _ in self._entries())

    def _evict_disk(self) -> None:
        entries = sorted(self._entries(), key=lambda e: e[0])
        total = sum(size for _, size, _ in entries)
        for _, size, path in entries:
            if total <= self.max_disk_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
            self._metrics.cache_evictions.labels(tier="disk").inc()
            log.info("compiled_cache_evicted", path=str(path), size=size)
        self._metrics.cache_bytes.set(total)

    def forget_memory(self) -> None:
        """Drop the in-memory tier (the next load goes to disk)."""
        with self._lock:
            self._memory.clear()
