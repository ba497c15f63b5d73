"""WASI configuration of one store: argv, env, stdin bytes, capped stdout/stderr, preopens."""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence

from wasmtime import WasiConfig

from runtime.capabilities import Capabilities

try:  # stdin from memory, without a temp file; not wrapped by wasmtime-py's public API
    from wasmtime import _ffi as _wasm_ffi

    _HAVE_STDIN_BYTES = hasattr(_wasm_ffi, "wasi_config_set_stdin_bytes")
except ImportError:  # pragma: no cover
    _HAVE_STDIN_BYTES = False


class OutputBuffer:
    """Collects a guest stream up to ``cap`` bytes; the rest is dropped and flagged, never an error."""

    __slots__ = ("cap", "_parts", "size", "truncated", "_lock")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._parts: list[bytes] = []
        self.size = 0
        self.truncated = False
        # wasmtime may call the sink from one of its own threads.
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        """The WasiConfig custom-output callback: accept everything, keep up to the cap."""
        with self._lock:
            room = self.cap - self.size
            if room <= 0:
                self.truncated = self.truncated or bool(data)
                return
            if len(data) > room:
                data = data[:room]
                self.truncated = True
            self._parts.append(bytes(data))
            self.size += len(data)

    def value(self) -> bytes:
        """Everything kept so far."""
        with self._lock:
            return b"".join(self._parts)

    def reset(self) -> None:
        """Forget collected output (between calls on a pooled instance)."""
        with self._lock:
            self._parts.clear()
            self.size = 0
            self.truncated = False


def _set_stdin(wasi: WasiConfig, data: bytes) -> None:
    if not data:
        return  # WASI's default stdin is empty: reads return EOF
    if _HAVE_STDIN_BYTES:
        vec = _wasm_ffi.wasm_byte_vec_t()
        buf = (ctypes.c_ubyte * len(data)).from_buffer_copy(data)
        _wasm_ffi.wasm_byte_vec_new(ctypes.byref(vec), len(data), buf)
        # Ownership of the vector passes to the config.
        _wasm_ffi.wasi_config_set_stdin_bytes(wasi.ptr(), ctypes.byref(vec))
        return
    import tempfile  # pragma: no cover - fallback for wasmtime-py builds without the binding

    with tempfile.NamedTemporaryFile(prefix="wasmatrix-stdin-", delete=False) as f:  # pragma: no cover
        f.write(data)
    wasi.stdin_file = f.name  # pragma: no cover


def make_wasi(
    caps: Capabilities,
    *,
    argv: Sequence[str],
    env: Sequence[tuple[str, str]],
    stdin: bytes,
    stdout: OutputBuffer,
    stderr: OutputBuffer,
) -> WasiConfig:
    """Build the WasiConfig of one store from the grant and the request; nothing is inherited."""
    wasi = WasiConfig()
    wasi.argv = list(argv)
    if env:
        wasi.env = list(env)
    _set_stdin(wasi, stdin)
    wasi.stdout_custom = stdout.write
    wasi.stderr_custom = stderr.write
    for grant in caps.dirs:
        wasi.preopen_dir(grant.host_path, grant.guest_path, grant.writable)
    return wasi
