"""The two handler ABIs and the export checks that tell them apart.

* ``wasi-command`` (WAGI style): request body on stdin, argv and env from the
  request, stdout is the response, the exit code is the status. A fresh
  instance per request, because a command's state after ``_start`` is spent.
* ``direct``: ``handle(ptr, len) -> i64`` gets the request in guest memory and
  answers ``(out_ptr << 32) | out_len`` (a negative result is the guest's own
  error status); optional ``_initialize`` runs once per instance. Instances are
  pooled and reused. Two contracts, told apart by the ``wmx_abi_version``
  export (read once per instance):

  - version 2 (``wmx_abi_version() -> i32`` returns 2), **one call into wasm
    per invocation**: the host obtains an input buffer with ``alloc`` when the
    instance is created (and again only when a larger request arrives), writes
    each request there from the host side and calls ``handle``; the output
    buffer belongs to the guest and stays valid until its next call on that
    instance, so the host never calls ``dealloc`` on the hot path.
  - version 1 (no such export): per call ``alloc(len)``, ``handle``, and
    ``dealloc(ptr, len)`` on both buffers when exported (four calls).

See docs/ABI.md.
"""

from __future__ import annotations

from collections.abc import Iterable

from wasmtime import FuncType, MemoryType, ValType

from model.manifest import Abi  # the manifest names the ABI; the checks below need wasmtime

__all__ = [
    "ABI_VERSION_EXPORT", "DIRECT_OPTIONAL", "DIRECT_REQUIRED", "INITIAL_INPUT_CAPACITY", "ONE_CALL_VERSION", "Abi",
    "detect_abi", "export_problems", "pack_result", "unpack_result",
]


_I32 = ValType.i32()
_I64 = ValType.i64()

# export name -> (params, results) for the direct ABI
DIRECT_REQUIRED = {"alloc": ([_I32], [_I32]), "handle": ([_I32, _I32], [_I64])}
DIRECT_OPTIONAL = {"dealloc": ([_I32, _I32], []), "_initialize": ([], []), "wmx_abi_version": ([], [_I32])}

# The direct-ABI contract versions this host speaks (docs/ABI.md §2).
ABI_VERSION_EXPORT = "wmx_abi_version"
ONE_CALL_VERSION = 2
# The input buffer a version-2 instance gets at creation; larger requests grow it (doubling).
INITIAL_INPUT_CAPACITY = 16 * 1024


def _sig_ok(ty: object, params: list[ValType], results: list[ValType]) -> bool:
    return isinstance(ty, FuncType) and list(ty.params) == params and list(ty.results) == results


def export_problems(exports: Iterable[tuple[str, object]], abi: Abi) -> list[str]:
    """Return what is missing or mistyped among ``(name, type)`` exports for ``abi``."""
    table = dict(exports)
    problems: list[str] = []
    if abi is Abi.WASI_COMMAND:
        if not _sig_ok(table.get("_start"), [], []):
            problems.append("export _start: () -> () is missing (not a WASI command; build with main())")
        return problems
    if not isinstance(table.get("memory"), MemoryType):
        problems.append("export memory is missing")
    for name, (params, results) in DIRECT_REQUIRED.items():
        if name not in table:
            problems.append(f"export {name} is missing")
        elif not _sig_ok(table[name], params, results):
            problems.append(f"export {name} has the wrong signature")
    for name, (params, results) in DIRECT_OPTIONAL.items():
        if name in table and not _sig_ok(table[name], params, results):
            problems.append(f"export {name} has the wrong signature")
    return problems


def detect_abi(exports: Iterable[tuple[str, object]]) -> Abi:
    """Guess the ABI from exports: ``handle`` means direct, otherwise a WASI command."""
    names = {name for name, _ in exports}
    return Abi.DIRECT if "handle" in names and "alloc" in names else Abi.WASI_COMMAND


def pack_result(ptr: int, length: int) -> int:
    """Encode a direct-ABI result the way guests do (used by tests and docs)."""
    return (ptr << 32) | length


def unpack_result(value: int) -> tuple[int, int]:
    """Split a non-negative ``handle`` result into ``(ptr, len)``."""
    return (value >> 32) & 0xFFFFFFFF, value & 0xFFFFFFFF
