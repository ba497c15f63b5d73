"""Signed records: the only thing ever stored as a value in an intent document.

A record is ``(kind, key, payload, signer, seq, signature)``; the signature is Ed25519 over
the canonical msgpack encoding of ``["wasmatrix-record/1", kind, key, payload, seq]`` (``model.canonical``) where
every map in ``payload`` is encoded with its keys sorted, so the bytes (and the signature)
do not depend on dict insertion order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgpack

from crdt.errors import ValidationError
from crdt.keys import KEY_ID_LEN, SigningKey
from model.canonical import RECORD_DOMAIN as DOMAIN  # the record format's domain tag
from model.canonical import canonical as _canonical
from model.canonical import pack
from model.canonical import record_signing_bytes
from model.errors import SpecError

__all__ = ["DOMAIN", "KINDS", "MAX_RECORD_BYTES", "SEP", "SignedRecord", "canonical", "check_key", "pack", "signing_bytes"]

KINDS = ("registry", "deployments", "routes", "placement", "kv", "trust")
MAX_RECORD_BYTES = 256 * 1024
MAX_SEQ = 2**62
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


@dataclass(slots=True, frozen=True)
class SignedRecord:
    """One signed value; ``(signer, seq)`` identifies the write everywhere."""

    kind: str
    key: str
    payload: Any
    signer: str
    seq: int
    signature: bytes

    @classmethod
    def create(cls, signer: SigningKey, kind: str, key: str, payload: Any, seq: int) -> "SignedRecord":
        """Sign a new record."""
        if kind not in KINDS:
            raise ValidationError(f"unknown document kind {kind!r}")
        check_key(key)
        if not 0 < seq < MAX_SEQ:
            raise ValidationError("sequence number out of range")
        payload = canonical(payload)
        sig = signer.sign(pack([DOMAIN, kind, key, payload, seq]))  # = signing_bytes: payload is canonical
        rec = cls(kind, key, payload, signer.key_id, seq, sig)
        if len(rec.encode()) > MAX_RECORD_BYTES:
            raise ValidationError(f"record for {key!r:.60} exceeds {MAX_RECORD_BYTES} bytes")
        return rec

    @property
    def write_id(self) -> tuple[str, int]:
        """``(signer key id, seq)``: the identity of this write."""
        return (self.signer, self.seq)

    @property
    def order(self) -> tuple[int, str]:
        """Conflict-resolution order: the record with the greatest ``(seq, signer)`` wins."""
        return (self.seq, self.signer)

    def message(self) -> bytes:
        return signing_bytes(self.kind, self.key, self.payload, self.seq)

    def encode(self) -> bytes:
        """The value stored in the document map."""
        return pack([1, self.kind, self.key, self.payload, self.signer, self.seq, self.signature])

    @classmethod
    def decode(cls, data: bytes) -> "SignedRecord":
        """Parse a stored value strictly; raise ValidationError on anything malformed."""
        obj = unpack_bounded(data, MAX_RECORD_BYTES, "record")
        if not isinstance(obj, list) or len(obj) != 7 or obj[0] != 1:
            raise ValidationError("record is not a version-1 7-element array")
        _, kind, key, payload, signer, seq, sig = obj
        if kind not in KINDS:
            raise ValidationError(f"record of unknown kind {kind!r:.40}")
        check_key(key)
        if not isinstance(signer, str) or len(signer) != KEY_ID_LEN:
            raise ValidationError("record signer is not a key id")
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 < seq < MAX_SEQ:
            raise ValidationError("record seq out of range")
        if not isinstance(sig, bytes) or len(sig) != 64:
            raise ValidationError("record signature is not 64 bytes")
        return cls(kind, key, canonical(payload), signer, seq, sig)
