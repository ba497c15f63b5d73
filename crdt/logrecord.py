"""Chained signed records: the unit of the Byzantine-tolerant signed log (issue 9).

A log record is ``[2, signer, seq, prev, kind, key, tombstone, payload, wall_ms, signature]``;
the signature is Ed25519 over the canonical msgpack encoding of
``["wasmatrix-log/2", signer, seq, prev, kind, key, tombstone, canonical(payload), wall_ms]``
(the same canonical payload form as :mod:`crdt.records`). The record id is SHA-256 of those
signed bytes: it names the record's *content*, so a second signature over the same content
(Ed25519 lets a signer pick any nonce) is the same record, never an equivocation.

``seq`` is the signer's own sequence number (1, 2, 3, … below ``MAX_LOG_SEQ``) and ``prev`` the
id of the signer's record ``seq - 1`` (empty for seq 1): a signer's records form a hash chain, so
a replay is a duplicate id, a gap is a ``prev`` we do not hold, and two records at one position
are signed proof of equivocation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from crdt.errors import ValidationError
from crdt.keys import KEY_ID_LEN, SigningKey
from crdt.records import KINDS, canonical, check_key, pack, unpack_bounded

from model.canonical import LOG_DOMAIN  # noqa: E402  (model.canonical.log_signing_bytes gives the same bytes)
LOG_VERSION = 2
# A record must fit one 65,535-byte transport frame together with its batch framing, so it
# never needs reassembly (which is where unbounded buffers hide). 60,000 bytes is the sync
# chunk size already used by SyncCore.
MAX_LOG_RECORD_BYTES = 60_000
# 2**53: exact in every JSON/JS number and far beyond any honest writer (one write per
# microsecond for 285 years); the old 2**62 bound let one record pin a slot forever.
MAX_LOG_SEQ = 2**53
MAX_WALL_MS = 2**53
ID_LEN = 32
_HEX = frozenset("0123456789abcdef")


def signing_bytes(signer: str, seq: int, prev: bytes, kind: str, key: str, tombstone: bool, payload: Any, wall_ms: int) -> bytes:
    """The exact bytes a log record's signature covers (payload already canonical)."""
    return pack([LOG_DOMAIN, signer, seq, prev, kind, key, tombstone, payload, wall_ms])


def unpack_signing_bytes(message: bytes, signer: str) -> tuple[str, str, bool, Any, int, bytes, int]:
    """Inverse of :func:`signing_bytes` for our own message: (kind, key, tombstone, payload, seq, prev, wall_ms)."""
    obj = unpack_bounded(message, MAX_LOG_RECORD_BYTES, "signing bytes")
    if not isinstance(obj, list) or len(obj) != 9 or obj[0] != LOG_DOMAIN or obj[1] != signer:
        raise ValidationError("not the signing bytes of a log record of this signer")
    _, _, seq, prev, kind, key, tombstone, payload, wall_ms = obj
    return kind, key, tombstone, payload, seq, prev, wall_ms


@dataclass(slots=True, frozen=True)
class LogRecord:
    """One chained signed record; ``(signer, seq)`` is its position, ``id`` its content hash."""

    signer: str
    seq: int
    prev: bytes
    kind: str
    key: str
    tombstone: bool
    payload: Any
    wall_ms: int
    signature: bytes
    id: bytes = field(default=b"", compare=False)

    @classmethod
    def create(
        cls,
        signer: SigningKey,
        seq: int,
        prev: bytes,
        kind: str,
        key: str,
        payload: Any,
        wall_ms: int,
        *,
        tombstone: bool = False,
    ) -> "LogRecord":
        """Sign a new record (raise ValidationError if any field is out of bounds)."""
        payload = canonical(payload)
        _check_fields(signer.key_id, seq, prev, kind, key, tombstone, wall_ms)
        msg = signing_bytes(signer.key_id, seq, prev, kind, key, tombstone, payload, wall_ms)
        rec = cls(signer.key_id, seq, prev, kind, key, tombstone, payload, wall_ms, signer.sign(msg), hashlib.sha256(msg).digest())
        if len(rec.encode()) > MAX_LOG_RECORD_BYTES:
            raise ValidationError(f"log record for {kind}:{key!r:.60} exceeds {MAX_LOG_RECORD_BYTES} bytes")
        return rec

    @property
    def write_id(self) -> tuple[str, int]:
        """``(signer key id, seq)``: the position of this write in its signer's chain."""
        return (self.signer, self.seq)

    def message(self) -> bytes:
        """The signed bytes."""
        return signing_bytes(self.signer, self.seq, self.prev, self.kind, self.key, self.tombstone, self.payload, self.wall_ms)

    def encode(self) -> bytes:
        """The wire/storage form."""
        return pack([LOG_VERSION, self.signer, self.seq, self.prev, self.kind, self.key, self.tombstone, self.payload, self.wall_ms, self.signature])

    @classmethod
    def decode(cls, data: bytes) -> "LogRecord":
        """Parse strictly (size bounded before parsing); raise ValidationError on anything malformed."""
        obj = unpack_bounded(data, MAX_LOG_RECORD_BYTES, "log record")
        if not isinstance(obj, list) or len(obj) != 10 or obj[0] != LOG_VERSION:
            raise ValidationError("log record is not a version-2 10-element array")
        _, signer, seq, prev, kind, key, tombstone, payload, wall_ms, sig = obj
        _check_fields(signer, seq, prev, kind, key, tombstone, wall_ms)
        if not isinstance(sig, bytes) or len(sig) != 64:
            raise ValidationError("log record signature is not 64 bytes")
        payload = canonical(payload)
        msg = signing_bytes(signer, seq, prev, kind, key, tombstone, payload, wall_ms)
        return cls(signer, seq, prev, kind, key, tombstone, payload, wall_ms, sig, hashlib.sha256(msg).digest())


def _check_fields(signer: Any, seq: Any, prev: Any, kind: Any, key: Any, tombstone: Any, wall_ms: Any) -> None:
    if not isinstance(signer, str) or len(signer) != KEY_ID_LEN or not set(signer) <= _HEX:
        raise ValidationError("log record signer is not a key id")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 < seq < MAX_LOG_SEQ:
        raise ValidationError(f"log record seq out of range (1 .. 2**53-1)")
    if not isinstance(prev, bytes) or len(prev) != (0 if seq == 1 else ID_LEN):
        raise ValidationError("log record prev must be empty for seq 1 and a 32-byte id otherwise")
    if kind not in KINDS:
        raise ValidationError(f"log record of unknown kind {kind!r:.40}")
    check_key(key)
    if not isinstance(tombstone, bool):
        raise ValidationError("log record tombstone flag is not a boolean")
    if not isinstance(wall_ms, int) or isinstance(wall_ms, bool) or not 0 <= wall_ms < MAX_WALL_MS:
        raise ValidationError("log record wall time out of range")
