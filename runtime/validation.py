"""Admission checks on a module binary: size, magic, wasmtime validation, imports, exports."""

from __future__ import annotations

from wasmtime import Engine, Module, WasmtimeError

from runtime.abi import Abi, export_problems
from runtime.capabilities import Capabilities, check_imports
from runtime.errors import CapabilityDenied, ModuleTooLarge, ValidationError
from runtime.limits import ModuleBounds

WASM_MAGIC = b"\x00asm"
WASM_VERSION_1 = b"\x01\x00\x00\x00"


def check_header(wasm: bytes, max_bytes: int) -> None:
    """Reject oversized, truncated or non-wasm binaries before wasmtime sees them."""
    if len(wasm) > max_bytes:
        raise ValidationError(f"module is {len(wasm)} bytes, over the {max_bytes} byte limit")
    if len(wasm) < 8:
        raise ValidationError(f"module is truncated: {len(wasm)} bytes, a wasm header alone is 8")
    if wasm[:4] != WASM_MAGIC:
        raise ValidationError(
            f"not a WebAssembly module: bad magic {wasm[:4]!r} (expected b'\\x00asm'); "
            "is this a component, a .wat text file or a native binary?"
        )
    if wasm[4:8] != WASM_VERSION_1:
        raise ValidationError(
            f"unsupported wasm binary version {wasm[4:8].hex()} (components are not supported; expected 01000000)"
        )


# Section ids of the core wasm binary format whose payload starts with a vector count.
_SEC_TYPE, _SEC_IMPORT, _SEC_FUNCTION, _SEC_TABLE, _SEC_MEMORY, _SEC_GLOBAL = 1, 2, 3, 4, 5, 6
_SEC_EXPORT, _SEC_ELEMENT, _SEC_CODE, _SEC_DATA = 7, 9, 10, 11
_COUNTED = {
    _SEC_TYPE: ("types", "max_types"),
    _SEC_IMPORT: ("imports", "max_imports"),
    _SEC_FUNCTION: ("functions", "max_functions"),
    _SEC_TABLE: ("tables", "max_tables"),
    _SEC_MEMORY: ("memories", "max_memories"),
    _SEC_GLOBAL: ("globals", "max_globals"),
    _SEC_EXPORT: ("exports", "max_exports"),
    _SEC_ELEMENT: ("element segments", "max_element_segments"),
    _SEC_DATA: ("data segments", "max_data_segments"),
}


class _Malformed(Exception):
    """The scan hit malformed structure; wasmtime's validator reports it with the canonical message."""


def _leb_u32(wasm: bytes, pos: int, end: int) -> tuple[int, int]:
    """Decode an unsigned LEB128 of at most 5 bytes at ``pos``; return (value, next position)."""
    result = shift = 0
    for i in range(5):
        if pos + i >= end:
            raise _Malformed
        byte = wasm[pos + i]
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos + i + 1
        shift += 7
    raise _Malformed


def _too_large(what: str, bound: str, value: int, limit: int) -> ModuleTooLarge:
    return ModuleTooLarge(f"module has {value} {what}, over the admission bound {bound}={limit}", bound, value, limit)


def check_bounds(wasm: bytes, bounds: ModuleBounds) -> dict[str, int]:
    """Scan section headers (no compilation) and refuse a module over ``bounds``; return the counts found.

    Linear in the number of sections plus, for the code section, the number of
    function bodies (bounded first), so it is cheap on any input.
    """
    counts: dict[str, int] = {}
    try:
        _scan(wasm, bounds, counts)
    except _Malformed:
        pass  # not ours to word: full validation rejects it next
    return counts


def _scan(wasm: bytes, bounds: ModuleBounds, counts: dict[str, int]) -> None:
    pos, end = 8, len(wasm)
    while pos < end:
        sec_id = wasm[pos]
        size, body = _leb_u32(wasm, pos + 1, end)
        sec_end = body + size
        if sec_end > end:
            raise _Malformed
        if sec_id in _COUNTED and size:
            what, bound = _COUNTED[sec_id]
            n, _ = _leb_u32(wasm, body, sec_end)
            counts[what] = counts.get(what, 0) + n
            limit = getattr(bounds, bound)
            if counts[what] > limit:
                raise _too_large(what, bound, counts[what], limit)
        if sec_id == _SEC_DATA:
            counts["data bytes"] = counts.get("data bytes", 0) + size
            if counts["data bytes"] > bounds.max_data_bytes:
                raise _too_large("bytes of data segments", "max_data_bytes", counts["data bytes"], bounds.max_data_bytes)
        if sec_id == _SEC_CODE and size:
            n, p = _leb_u32(wasm, body, sec_end)
            if n > bounds.max_functions:
                raise _too_large("function bodies", "max_functions", n, bounds.max_functions)
            for i in range(n):
                fsize, p = _leb_u32(wasm, p, sec_end)
                if fsize > bounds.max_function_body_bytes:
                    raise _too_large(f"bytes in function body {i}", "max_function_body_bytes", fsize,
                                     bounds.max_function_body_bytes)
                p += fsize
        pos = sec_end


def validate_binary(engine: Engine, wasm: bytes, max_bytes: int) -> None:
    """Header checks then full wasmtime validation; raises ValidationError with the reason."""
    check_header(wasm, max_bytes)
    try:
        Module.validate(engine, wasm)
    except WasmtimeError as exc:
        raise ValidationError(f"invalid WebAssembly module: {_first_line(str(exc))}") from None


def module_imports(module: Module) -> list[tuple[str, str, str]]:
    """The ``(module, name, kind)`` imports of a compiled module."""
    out = []
    for imp in module.imports:
        kind = type(imp.type).__name__.removesuffix("Type").lower()
        out.append((imp.module, imp.name or "", kind))
    return out


def module_exports(module: Module) -> list[tuple[str, object]]:
    """The ``(name, type)`` exports of a compiled module."""
    return [(exp.name, exp.type) for exp in module.exports]


def check_module(module: Module, abi: Abi, caps: Capabilities, key: str) -> None:
    """Refuse a module whose imports exceed its grant or whose exports do not fit its ABI."""
    report = check_imports(module_imports(module), caps)
    if report.offending:
        raise CapabilityDenied(
            f"module {key} imports what it was not granted: " + "; ".join(report.offending),
            report.offending,
        )
    problems = export_problems(module_exports(module), abi)
    if problems:
        raise ValidationError(f"module {key} does not implement the {abi.value} ABI: " + "; ".join(problems))


def _first_line(message: str) -> str:
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    return lines[0] if lines else message
