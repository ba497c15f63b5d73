"""Canonical msgpack and the bytes a signed record's signature covers.

A registry record's signature *is* the publisher's signature of the manifest, so ``crdt`` (which
signs and stores records) and ``runtime`` (which admits what the registry holds) must compute
the very same bytes: both call ``record_signing_bytes``.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack

from model.errors import SpecError

RECORD_DOMAIN = "wasmatrix-record/1"
MAX_DEPTH = 16


def canonical(obj: Any, depth: int = 0) -> Any:
    """Normalise a payload into canonical form: sorted string-keyed maps, lists, scalars."""
    if depth > MAX_DEPTH:
        raise SpecError(f"payload nests deeper than {MAX_DEPTH} levels")
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        if not -(2**63) <= obj < 2**64:
            raise SpecError("payload integer out of 64-bit range")
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise SpecError("payload floats must be finite")
        return obj
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj)
    if isinstance(obj, (list, tuple)):
        return [canonical(x, depth + 1) for x in obj]
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise SpecError("payload map keys must be strings")
        return {k: canonical(obj[k], depth + 1) for k in sorted(obj)}
    raise SpecError(f"payload value of type {type(obj).__name__} is not encodable")


def pack(obj: Any) -> bytes:
    """msgpack with binary-safe strings (no canonicalisation: pass ``canonical(obj)``)."""
    return msgpack.packb(obj, use_bin_type=True)


def canonical_encode(obj: Any) -> bytes:
    """msgpack of the canonical form, so equal values encode to equal bytes."""
    return pack(canonical(obj))


def record_signing_bytes(kind: str, key: str, payload: Any, seq: int) -> bytes:
    """The exact bytes a record's signature covers: ``[domain, kind, key, canonical payload, seq]``."""
    return pack([RECORD_DOMAIN, kind, key, canonical(payload), seq])


LOG_DOMAIN = "wasmatrix-log/2"


def log_signing_bytes(signer: str, seq: int, prev: bytes, kind: str, key: str, tombstone: bool, payload: Any, wall_ms: int) -> bytes:
    """The bytes a chained log record's signature covers (``crdt.logrecord``): ``[domain, signer, seq,
    prev, kind, key, tombstone, canonical payload, wall_ms]``; the runtime verifies registry records by it."""
    return pack([LOG_DOMAIN, signer, seq, prev, kind, key, tombstone, canonical(payload), wall_ms])
