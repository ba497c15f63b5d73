"""Hand-built WebAssembly modules shared by the runtime tests and bench/bench_admission.py."""

from __future__ import annotations


def leb128(n: int) -> bytes:
    """Unsigned LEB128 encoding of ``n``."""
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def section(sec_id: int, body: bytes) -> bytes:
    """One module section: id, LEB128 size, body."""
    return bytes([sec_id]) + leb128(len(body)) + body


def many_functions(n: int) -> bytes:
    """A valid module of ``n`` functions ``() -> i32`` each returning 42 (the issue's 100,000-function case)."""
    body = b"\x00\x41\x2a\x0b"  # no locals; i32.const 42; end
    return (
        b"\0asm\x01\0\0\0"
        + section(1, leb128(1) + b"\x60\x00\x01\x7f")
        + section(3, leb128(n) + b"\x00" * n)
        + section(10, leb128(n) + (leb128(len(body)) + body) * n)
    )
