"""The two handler ABIs and the export checks that tell them apart.

* ``wasi-command`` (WAGI style): request body on stdin, argv and env from the
  request, stdout is the response, the exit code is the status. A fresh
  instance per request, because a command's state after ``_start`` is spent.
* ``direct``: the host calls ``alloc(len) -> ptr``, writes the request there,
  calls ``handle(ptr, len) -> i64`` and reads ``(out_ptr << 32) | out_len``
  (a negative result is the guest's own error status). Optional
  ``dealloc(ptr, len)`` frees both buffers and optional ``_initialize`` runs
  once per instance. Instances are pooled and reused.

See docs/ABI.md.
"""

from __future__ import annotations

from collections.abc import Iterable

from wasmtime import FuncType, MemoryType, ValType

from model.manifest import Abi  # the manifest names the ABI; the checks below need wasmtime

__all__ = ["Abi", "DIRECT_OPTIONAL", "DIRECT_REQUIRED", "detect_abi", "export_problems", "pack_result", "unpack_result"]


_I32 = ValType.i32()
_I64 = ValType.i64()

# export name -> (params, results) for the direct ABI
DIRECT_REQUIRED = {"alloc": ([_I32], [_I32]), "handle": ([_I32, _I32], [_I64])}
DIRECT_OPTIONAL = {"dealloc": ([_I32, _I32], []), "_initialize": ([], [])}


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
