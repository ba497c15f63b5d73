"""Pieces shared by the signed record formats: canonical payloads, key checks, strict decoding.

Payloads are normalised by ``model.canonical`` (every map encoded with its keys sorted), so the
bytes a signature covers do not depend on dict insertion order. The record itself is
:class:`crdt.logrecord.LogRecord`. ``signing_bytes`` is the version-1 signing form
``["wasmatrix-record/1", kind, key, payload, seq]`` (``model.canonical.record_signing_bytes``).
"""

from __future__ import annotations

import re
from typing import Any

import msgpack

from crdt.errors import ValidationError
from model.canonical import RECORD_DOMAIN as DOMAIN  # the record format's domain tag
from model.canonical import canonical as _canonical
from model.canonical import pack
from model.canonical import record_signing_bytes
from model.errors import SpecError

__all__ = ["DOMAIN", "KINDS", "SEP", "canonical", "check_key", "pack", "signing_bytes", "unpack_bounded"]

KINDS = ("registry", "deployments", "routes", "placement", "kv", "trust")
KINDS += ("subscriptions",)  # events: operator-signed subscriptions (crdt.schema.SubscriptionSpec)
KINDS += ("tenant",)  # quotas: operator-signed tenant limits (crdt.schema.TenantQuota)
SEP = "\x1f"  # separates parts of a slot key; forbidden in keys
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def canonical(obj: Any) -> Any:
    """Normalise a payload into canonical form (``model.canonical``); ValidationError if it has none."""
    try:
        return _canonical(obj)
    except SpecError as exc:
        raise ValidationError(str(exc)) from None


def signing_bytes(kind: str, key: str, payload: Any, seq: int) -> bytes:
    """The exact bytes a record's signature covers (the runtime computes the same for manifests)."""
    try:
        return record_signing_bytes(kind, key, payload, seq)
    except SpecError as exc:
        raise ValidationError(str(exc)) from None


def check_key(key: str, what: str = "key", max_len: int = 512) -> str:
    """Validate a document key: non-empty printable text without the slot separator."""
    if not isinstance(key, str) or not key or len(key) > max_len:
        raise ValidationError(f"{what} must be a non-empty string of at most {max_len} characters")
    if _CONTROL.search(key):
        raise ValidationError(f"{what} {key!r:.60} contains control characters")
    return key


def unpack_bounded(data: Any, limit: int, what: str, bound: str = "bounded size") -> Any:
    """Strict msgpack decode of untrusted bytes, size checked first; ValidationError names ``what``."""
    if not isinstance(data, (bytes, bytearray)) or len(data) > limit:
        raise ValidationError(f"{what} is not bytes of {bound}")
    try:
        return msgpack.unpackb(bytes(data), raw=False, strict_map_key=True, max_ext_len=0)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ValidationError(f"{what} is not msgpack: {exc.__class__.__name__}") from None
