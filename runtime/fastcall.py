"""Calls into a guest and access to its memory in one FFI call each.

wasmtime-py's public ``Func.__call__`` looks the function's type up, builds
``Val`` objects and a context manager on every call: about 20 µs of Python
around a call that costs about 1 µs in wasmtime (measured with wasmtime-py 50).
``Memory.write``/``read`` copy through an intermediate bytearray. The hot path
of the direct ABI calls the C API directly instead, through ctypes handles
bound once per instance:

* ``wasmtime_func_call_unchecked`` with a preallocated ``wasmtime_val_raw_t``
  array (safe here: the runtime checked every export's signature at admission,
  and the ABIs pass only i32/i64, which need no rooting);
* ``wasmtime_memory_data`` / ``wasmtime_memory_data_size`` re-read on every
  access (the guest may grow, hence move, its memory during any call) and
  ``ctypes.memmove`` / ``ctypes.string_at`` for the copies.

ctypes releases the GIL for the duration of each C call, so guests on
different instances run in parallel on worker threads.

These are wasmtime-py internals (``wasmtime._bindings``). When a wasmtime-py
release lacks them, ``FAST`` is False and the same classes fall back to the
public API (slower, same behaviour); ``tests/runtime/test_direct_abi.py``
runs the ABI tests on both.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from functools import partial
from typing import Any

from wasmtime import Func, Memory, Store, Trap, WasmtimeError

try:  # pragma: no branch - which side runs depends on the installed wasmtime-py
    from wasmtime import _bindings as _b
    from wasmtime._func import maybe_raise_last_exn as _maybe_raise_last_exn

    _call_unchecked = _b.dll["wasmtime_func_call_unchecked"]  # a private handle: never touch the shared one
    _call_unchecked.restype = ctypes.c_void_p  # wasmtime_error_t* (NULL on success)
    _call_unchecked.argtypes = [
        ctypes.POINTER(_b.wasmtime_context_t), ctypes.POINTER(_b.wasmtime_func_t),
        ctypes.POINTER(_b.wasmtime_val_raw_t), ctypes.c_size_t, ctypes.POINTER(ctypes.POINTER(_b.wasm_trap_t)),
    ]
    _memory_data = _b.dll["wasmtime_memory_data"]
    _memory_data.restype = ctypes.c_void_p  # an int address, no pointer object to build
    _memory_data.argtypes = [ctypes.POINTER(_b.wasmtime_context_t), ctypes.POINTER(_b.wasmtime_memory_t)]
    _memory_size = _b.dll["wasmtime_memory_data_size"]
    _memory_size.restype = ctypes.c_size_t
    _memory_size.argtypes = [ctypes.POINTER(_b.wasmtime_context_t), ctypes.POINTER(_b.wasmtime_memory_t)]
    _set_deadline = _b.dll["wasmtime_context_set_epoch_deadline"]
    _set_deadline.restype = None
    _set_deadline.argtypes = [ctypes.POINTER(_b.wasmtime_context_t), ctypes.c_uint64]
    _ERROR_T = ctypes.POINTER(_b.wasmtime_error_t)
    _TRAP_T = ctypes.POINTER(_b.wasm_trap_t)
    FAST = True
except (ImportError, AttributeError, TypeError):  # pragma: no cover - a wasmtime-py without these internals
    FAST = False

__all__ = ["FAST", "GuestCall", "GuestMemory", "epoch_setter"]


def _raise_failure(error: int | None, trap: Any) -> None:
    """Raise what wasmtime-py's ``Func.__call__`` raises for a failed call (a host exception first)."""
    if error:
        exc: Exception = WasmtimeError._from_ptr(ctypes.cast(error, _ERROR_T))
    else:
        exc = Trap._from_ptr(trap)
    _maybe_raise_last_exn()  # a Python exception raised by a host function wins, as in wasmtime-py
    raise exc


class GuestCall:
    """One exported function of one instance, callable with ints in one FFI call.

    ``nparams``/``nresults`` must match the export's checked signature; the
    result is the single result as a Python int (i32 results are sign-extended
    like wasmtime-py's; mask with ``& 0xFFFFFFFF`` for a pointer), or None.
    Not thread-safe: one instance is used by one thread at a time.
    """

    __slots__ = ("_store", "_func", "_ctx", "_fref", "_args", "_n", "_trap", "_tref", "_i64", "_nres", "call")
    call: Callable[..., Any]  # the bound fast or public path, chosen once

    def __init__(self, store: Store, func: Func, nparams: int, nresults: int, *, result_i64: bool = False,
                 fast: bool = FAST) -> None:
        self._store = store
        self._func = func
        self._nres = nresults
        self._i64 = result_i64
        if fast:
            self._ctx = store._context()
            self._fref = ctypes.byref(func._func)
            self._n = max(nparams, nresults, 1)
            self._args = (_b.wasmtime_val_raw_t * self._n)()
            self._trap = _TRAP_T()
            self._tref = ctypes.byref(self._trap)
            self.call = self._fast
        else:
            self.call = self._public

    def _fast(self, *params: int) -> int | None:
        args = self._args
        for i, value in enumerate(params):
            args[i].i64 = value  # i32 params read the low 32 bits (little-endian union)
        error = _call_unchecked(self._ctx, self._fref, args, self._n, self._tref)
        if error or self._trap:
            trap = self._trap
            self._trap = _TRAP_T()  # the Trap object owns the old one now
            self._tref = ctypes.byref(self._trap)
            _raise_failure(error, trap)
        if not self._nres:
            return None
        return args[0].i64 if self._i64 else args[0].i32

    def _public(self, *params: int) -> int | None:
        return self._func(self._store, *params)  # type: ignore[no-any-return]


class GuestMemory:
    """Bounds-checked copies into and out of one instance's linear memory."""

    __slots__ = ("_store", "_memory", "_ctx", "_mref", "size", "write", "read")
    size: Callable[[], int]
    write: Callable[[int, bytes], bool]
    read: Callable[[int, int], bytes | None]

    def __init__(self, store: Store, memory: Memory, *, fast: bool = FAST) -> None:
        self._store = store
        self._memory = memory
        if fast:
            self._ctx = store._context()
            self._mref = ctypes.byref(memory._memory)
            self.size = self._fast_size
            self.write = self._fast_write
            self.read = self._fast_read
        else:
            self.size = self._public_size
            self.write = self._public_write
            self.read = self._public_read

    def _fast_size(self) -> int:
        return _memory_size(self._ctx, self._mref)  # type: ignore[no-any-return]

    def _fast_write(self, offset: int, data: bytes) -> bool:
        """Copy ``data`` to ``offset``; False (nothing written) when it does not fit in memory."""
        if offset + len(data) > _memory_size(self._ctx, self._mref):
            return False
        ctypes.memmove(_memory_data(self._ctx, self._mref) + offset, data, len(data))
        return True

    def _fast_read(self, offset: int, length: int) -> bytes | None:
        """``length`` bytes at ``offset``, or None when the range is outside memory."""
        if offset + length > _memory_size(self._ctx, self._mref):
            return None
        return ctypes.string_at(_memory_data(self._ctx, self._mref) + offset, length) if length else b""

    def _public_size(self) -> int:
        return self._memory.data_len(self._store)

    def _public_write(self, offset: int, data: bytes) -> bool:
        if offset + len(data) > self._memory.data_len(self._store):
            return False
        if data:
            self._memory.write(self._store, data, offset)
        return True

    def _public_read(self, offset: int, length: int) -> bytes | None:
        if offset + length > self._memory.data_len(self._store):
            return None
        return bytes(self._memory.read(self._store, offset, offset + length)) if length else b""


def epoch_setter(store: Store, *, fast: bool = FAST) -> Callable[[int], None]:
    """``store.set_epoch_deadline`` bound to ``store`` without wasmtime-py's wrapper (half the cost)."""
    if fast:
        return partial(_set_deadline, store._context())
    return store.set_epoch_deadline
