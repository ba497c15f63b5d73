"""Heads-based sync messages for the signed log (sans-IO): types 30-34 of the node's envelope.

Like Corrosion's per-actor version vectors, two nodes compare, per signer key id, the head of
the signer's hash chain ``(seq, id)``: a position is ``(signer, seq, id)`` where the signer is a
key id, so nobody but the key holder can occupy it and a record can neither hide nor be
squatted. The idle cost is one :class:`HeadsDigest` (16 bytes of BLAKE2b over the sorted heads).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import msgpack

from crdt.errors import ValidationError
from crdt.keys import KEY_ID_LEN
from crdt.logrecord import ID_LEN, MAX_LOG_SEQ
from crdt.records import unpack_bounded

FRAME_BYTES = 65_535  # one Noise transport frame
FRAME_OVERHEAD = 64  # message type, array headers and the AEAD tag, with margin
# A record batch inside the node's envelope (version, type, a sender name of up to 1,027 bytes,
# piggyback list) must fit one stream frame of 65,519 plaintext bytes: the same room as a blob
# or sync chunk (crdt.messages.MAX_CHUNK).
BATCH_BYTES = 65_519 - 1_536
MAX_HEADS_PER_MESSAGE = 1000  # ~60 bytes per entry: one frame
MAX_RANGES = 256

# Message type numbers (crdt.messages.ALL_MESSAGES registers them; 23 is SyncAck, 40-42 blobs).
# Each class has two forms: ``encode``/``decode`` ([type, body], standalone) and
# ``to_payload``/``from_payload`` (the body inside the node's envelope, see mesh.wire).
T_HEADS_DIGEST, T_HEADS, T_RECORDS_REQUEST, T_RECORD_BATCH, T_RECORD_PUSH = 30, 31, 32, 33, 34
MAX_PUSH_TTL = 32

Heads = Mapping[str, tuple[int, bytes]]
Range = tuple[str, int, int]


def heads_digest(heads: Heads, forks: Mapping[str, int]) -> bytes:
    """BLAKE2b-128 over the heads and the forks in signer order: equal digests mean equal both."""
    items = [[s, heads[s][0], heads[s][1]] for s in sorted(heads)]
    frozen = [[s, forks[s]] for s in sorted(forks)]
    return hashlib.blake2b(msgpack.packb([items, frozen], use_bin_type=True), digest_size=16).digest()


def valid_head(signer: object, seq: object, hid: object) -> bool:
    """True if a remote head entry is well-formed (bad entries are skipped and counted)."""
    return (
        isinstance(signer, str)
        and len(signer) == KEY_ID_LEN
        and isinstance(seq, int)
        and not isinstance(seq, bool)
        and 0 < seq < MAX_LOG_SEQ
        and isinstance(hid, bytes)
        and len(hid) == ID_LEN
    )


@dataclass(slots=True, frozen=True)
class HeadsDigest:
    """Opening of a sync round: the digest of the sender's heads."""

    TYPE: ClassVar[int] = T_HEADS_DIGEST
    digest: bytes

    def encode(self) -> bytes:
        return msgpack.packb([T_HEADS_DIGEST, self.digest], use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> "HeadsDigest":
        """Parse strictly; raise ValidationError on anything malformed."""
        return cls._parse(_unpack(data, T_HEADS_DIGEST))

    def to_payload(self) -> list[Any]:
        return [self.digest]

    @classmethod
    def from_payload(cls, payload: list[Any]) -> "HeadsDigest":
        """The envelope body ``[digest]``."""
        return cls._parse(_one(payload, "heads digest"))

    @classmethod
    def _parse(cls, obj: Any) -> "HeadsDigest":
        if not isinstance(obj, bytes) or len(obj) != 16:
            raise ValidationError("heads digest is not 16 bytes")
        return cls(obj)


@dataclass(slots=True, frozen=True)
class HeadsMessage:
    """Some or all of the sender's heads ``[(signer, seq, id)]`` (at most one frame's worth)."""

    TYPE: ClassVar[int] = T_HEADS
    heads: tuple[tuple[str, int, bytes], ...]
    reply: bool = False  # an answer to our heads: do not answer with heads again
    forks: tuple[tuple[str, int], ...] = ()  # signers proven to equivocate, with their fork seq

    def encode(self) -> bytes:
        return msgpack.packb([T_HEADS, self.to_payload()], use_bin_type=True)

    def to_payload(self) -> list[Any]:
        return [self.reply, [list(h) for h in self.heads], [list(f) for f in self.forks]]

    @classmethod
    def decode(cls, data: bytes) -> "HeadsMessage":
        """Parse strictly; raise ValidationError on anything malformed."""
        return cls.from_payload(_unpack(data, T_HEADS))

    @classmethod
    def from_payload(cls, obj: Any) -> "HeadsMessage":
        """The body ``[reply, heads, forks]``; raise ValidationError on anything malformed."""
        if not isinstance(obj, list) or len(obj) != 3 or not isinstance(obj[0], bool):
            raise ValidationError("heads message is not [reply, heads, forks]")
        reply, heads, forks = obj
        if not isinstance(heads, list) or not isinstance(forks, list) or len(heads) + len(forks) > MAX_HEADS_PER_MESSAGE:
            raise ValidationError("heads message is not bounded lists")
        out = []
        for h in heads:
            if not isinstance(h, list) or len(h) != 3 or not valid_head(*h):
                raise ValidationError("heads message entry is not (signer, seq, id)")
            out.append((h[0], h[1], h[2]))
        fk = []
        for f in forks:
            if not isinstance(f, list) or len(f) != 2 or not valid_head(f[0], f[1], bytes(ID_LEN)):
                raise ValidationError("heads message fork is not (signer, seq)")
            fk.append((f[0], f[1]))
        return cls(tuple(out), reply, tuple(fk))

    def as_heads(self) -> dict[str, tuple[int, bytes]]:
        """The heads as the mapping :meth:`SignedLog.missing_from` takes."""
        return {s: (q, h) for s, q, h in self.heads}

    def as_forks(self) -> dict[str, int]:
        """The forks as the mapping :meth:`SignedLog.missing_from` takes."""
        return dict(self.forks)


@dataclass(slots=True, frozen=True)
class RecordsRequest:
    """Ask for the records of ``(signer, from_seq, to_seq)`` ranges."""

    TYPE: ClassVar[int] = T_RECORDS_REQUEST
    ranges: tuple[Range, ...]

    def encode(self) -> bytes:
        return msgpack.packb([T_RECORDS_REQUEST, self.to_payload()], use_bin_type=True)

    def to_payload(self) -> list[Any]:
        return [list(r) for r in self.ranges]

    @classmethod
    def decode(cls, data: bytes) -> "RecordsRequest":
        """Parse strictly; raise ValidationError on anything malformed."""
        return cls.from_payload(_unpack(data, T_RECORDS_REQUEST))

    @classmethod
    def from_payload(cls, obj: Any) -> "RecordsRequest":
        """The body ``[[signer, from, to], ...]``; raise ValidationError on anything malformed."""
        if not isinstance(obj, list) or len(obj) > MAX_RANGES:
            raise ValidationError("records request is not a bounded list")
        out = []
        for r in obj:
            if not (isinstance(r, list) and len(r) == 3 and valid_head(r[0], r[1], b"\0" * ID_LEN) and valid_head(r[0], r[2], b"\0" * ID_LEN) and r[1] <= r[2]):
                raise ValidationError("records request range is not (signer, from, to)")
            out.append((r[0], r[1], r[2]))
        return cls(tuple(out))


@dataclass(slots=True, frozen=True)
class RecordBatch:
    """Encoded log records; :meth:`encode` always fits one transport frame."""

    TYPE: ClassVar[int] = T_RECORD_BATCH
    records: tuple[bytes, ...]

    def encode(self) -> bytes:
        return msgpack.packb([T_RECORD_BATCH, list(self.records)], use_bin_type=True)

    def to_payload(self) -> list[Any]:
        return list(self.records)

    @classmethod
    def decode(cls, data: bytes) -> "RecordBatch":
        """Parse strictly; raise ValidationError on anything malformed (records are checked by the log)."""
        return cls.from_payload(_unpack(data, T_RECORD_BATCH))

    @classmethod
    def from_payload(cls, obj: Any) -> "RecordBatch":
        """The body: a list of encoded records (each is checked by the log, not here)."""
        if not isinstance(obj, list) or not all(isinstance(r, bytes) for r in obj):
            raise ValidationError("record batch is not a list of byte strings")
        return cls(tuple(obj))


@dataclass(slots=True, frozen=True)
class RecordPush:
    """An eager push of encoded records: ``push_id`` > 0 asks for a SyncAck; relayed while ``ttl`` > 0."""

    TYPE: ClassVar[int] = T_RECORD_PUSH
    records: tuple[bytes, ...]
    push_id: int = 0
    ttl: int = 0

    def size(self) -> int:
        """Bytes of record data carried."""
        return sum(len(r) for r in self.records)

    def to_payload(self) -> list[Any]:
        return [self.push_id, self.ttl, list(self.records)]

    @classmethod
    def from_payload(cls, obj: Any) -> "RecordPush":
        """The body ``[push_id, ttl, records]``; raise ValidationError on anything malformed."""
        if not isinstance(obj, list) or len(obj) != 3:
            raise ValidationError("record push is not [push_id, ttl, records]")
        pid, ttl, recs = obj
        if not isinstance(pid, int) or isinstance(pid, bool) or not 0 <= pid < 2**63:
            raise ValidationError("record push id out of range")
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 <= ttl <= MAX_PUSH_TTL:
            raise ValidationError("record push ttl out of range")
        if not isinstance(recs, list) or not all(isinstance(r, bytes) for r in recs):
            raise ValidationError("record push records are not a list of byte strings")
        return cls(tuple(recs), pid, ttl)


def _one(payload: Any, what: str) -> Any:
    if not isinstance(payload, list) or len(payload) != 1:
        raise ValidationError(f"{what} payload is not a one-element array")
    return payload[0]


def _unpack(data: bytes, want: int) -> object:
    obj = unpack_bounded(data, FRAME_BYTES, "sync message", "at most one frame")
    if not isinstance(obj, list) or len(obj) != 2 or obj[0] != want:
        raise ValidationError(f"not a type-{want} sync message")
    return obj[1]
