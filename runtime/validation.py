"""Admission checks on a module binary: size, magic, wasmtime validation, imports, exports."""

from __future__ import annotations

from wasmtime import Engine, Module, WasmtimeError

from runtime.abi import Abi, export_problems
from runtime.capabilities import Capabilities, check_imports
from runtime.errors import CapabilityDenied, ValidationError

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
