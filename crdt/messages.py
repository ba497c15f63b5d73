"""Wire messages of the crdt layer (types 20-39 sync, 40-49 blob).

Each class follows the envelope protocol of ``mesh.wire`` without importing it: a ``TYPE``,
``to_payload() -> list`` of msgpack values and a strict ``from_payload(payload)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

MAX_UPDATE = 64 * 1024 * 1024  # a reassembled update; single frames are far smaller
MAX_SV = 1024 * 1024
# Every message here travels as one stream frame: the plaintext of one Noise transport message
# (65,535 bytes less its 16-byte tag). This is mesh.wire.MAX_FRAME, restated because crdt must
# not import mesh; tests/test_crdt_frame_bounds.py checks the two agree.
FRAME_PLAINTEXT = 65_535 - 16
# Room for the envelope around a chunk's bytes, worst case: a 256-character sender (the most
# mesh.wire.decode accepts) at 4 UTF-8 bytes each is 1,027 bytes with its header, and the
# envelope and chunk fields (version, type, arrays, ids, offsets, sizes, sha256, bin header)
# add under 100 more.
ENVELOPE_ROOM = 1536
MAX_CHUNK = FRAME_PLAINTEXT - ENVELOPE_ROOM  # SyncChunk data: 63,983 bytes
MAX_CHUNKS = 4096
MAX_BLOB_CHUNK = FRAME_PLAINTEXT - ENVELOPE_ROOM  # BlobChunk data and BlobRequest length: 63,983 bytes
_SHA = re.compile(r"^[0-9a-f]{64}$")


def _bin(x: Any, max_len: int, what: str) -> bytes:
    if not isinstance(x, (bytes, bytearray)) or len(x) > max_len:
        raise ValueError(f"{what} must be bytes of at most {max_len}")
    return bytes(x)


def _int(x: Any, lo: int, hi: int, what: str) -> int:
    if not isinstance(x, int) or isinstance(x, bool) or not lo <= x <= hi:
        raise ValueError(f"{what} must be an integer in [{lo}, {hi}]")
    return x


def _sha(x: Any) -> str:
    if not isinstance(x, str) or not _SHA.match(x):
        raise ValueError("sha256 must be 64 lowercase hex characters")
    return x


def _arity(payload: list[Any], n: int, name: str) -> list[Any]:
    if not isinstance(payload, list) or len(payload) != n:
        raise ValueError(f"{name} payload must have {n} fields")
    return payload


@dataclass(slots=True, frozen=True)
class SyncStep1:
    """Anti-entropy request: my state vector; answer with what I lack."""

    TYPE: ClassVar[int] = 20
    state_vector: bytes

    def to_payload(self) -> list[Any]:
        return [self.state_vector]

    @classmethod
    def from_payload(cls, payload: list[Any]) -> "SyncStep1":
        (sv,) = _arity(payload, 1, "SyncStep1")
        return cls(_bin(sv, MAX_SV, "state vector"))


@dataclass(slots=True, frozen=True)
class SyncStep2:
    """Anti-entropy reply: what the requester lacks (may be empty) and the replier's state vector."""

    TYPE: ClassVar[int] = 21
    update: bytes
    state_vector: bytes

    def to_payload(self) -> list[Any]:
        return [self.update, self.state_vector]

    @classmethod
    def from_payload(cls, payload: list[Any]) -> "SyncStep2":
        u, sv = _arity(payload, 2, "SyncStep2")
        return cls(_bin(u, MAX_UPDATE, "update"), _bin(sv, MAX_SV, "state vector"))


@dataclass(slots=True, frozen=True)
class SyncUpdate:
    """An eager push (``push_id`` > 0 asks for a SyncAck) or a repair (``push_id`` 0); relayed while ``ttl`` > 0."""

    TYPE: ClassVar[int] = 22
    update: bytes
    push_id: int
    ttl: int

    def to_payload(self) -> list[Any]:
        return [self.update, self.push_id, self.ttl]

    @classmethod
    def from_payload(cls, payload: list[Any]) -> "SyncUpdate":
        u, pid, ttl = _arity(payload, 3, "SyncUpdate")
        return cls(_bin(u, MAX_UPDATE, "update"), _int(pid, 0, 2**63 - 1, "push_id"), _int(ttl, 0, 32, "ttl"))


@dataclass(slots=True, frozen=True)
class SyncAck:
    """Acknowledges an eager push: releases the sender's per-peer outstanding budget."""

    TYPE: ClassVar[int] = 23
    push_id: int

    def to_payload(self) -> list[Any]:
        return [self.push_id]

    @classmethod
    def from_payload(cls, payload: list[Any]) -> "SyncAck":
        (pid,) = _arity(payload, 1, "SyncAck")
        return cls(_int(pid, 1, 2**63 - 1, "push_id"))


@dataclass(slots=True, frozen=True)
class SyncDigest:
    """Anti-entropy probe: a digest of the sender's state vector; a peer whose digest differs answers SyncStep1."""

    TYPE: ClassVar[int] = 25
    digest: bytes

    def to_payload(self) -> list[Any]:
        return [self.digest]

    @classmethod
    def from_payload(cls, payload: list[Any]) -> "SyncDigest":
        (d,) = _arity(payload, 1, "SyncDigest")
        d = _bin(d, 64, "state digest")
        if len(d) < 8:
            raise ValueError("state digest must be 8-64 bytes")
        return cls(d)


@dataclass(slots=True, frozen=True)
class SyncChunk:
    """One piece of a message too large for a frame; the pieces concatenate to msgpack ``[TYPE, payload]``."""

    TYPE: ClassVar[int] = 24
    transfer_id: int
    index: int
    count: int
    total_size: int
    data: bytes

    def to_payload(self) -> list[Any]:
        return [self.transfer_id, self.index, self.count, self.total_size, self.data]

    @classmethod
    def from_payload(cls, payload: list[Any]) -> "SyncChunk":
        tid, idx, cnt, total, data = _arity(payload, 5, "SyncChunk")
        cnt = _int(cnt, 1, MAX_CHUNKS, "count")
        return cls(_int(tid, 0, 2**63 - 1, "transfer_id"), _int(idx, 0, cnt - 1, "index"), cnt, _int(total, 1, MAX_UPDATE + 1024, "total_size"), _bin(data, MAX_CHUNK, "chunk"))


@dataclass(slots=True, frozen=True)
class BlobRequest:
    """Ask a peer for ``length`` bytes of a blob from ``offset``."""

    TYPE: ClassVar[int] = 40
    sha256: str
    offset: int
    length: int

    def to_payload(self) -> list[Any]:
        return [self.sha256, self.offset, self.length]

    @classmethod
    def from_payload(cls, payload: list[Any]) -> "BlobRequest":
        sha, off, ln = _arity(payload, 3, "BlobRequest")
        return cls(_sha(sha), _int(off, 0, 2**40, "offset"), _int(ln, 1, MAX_BLOB_CHUNK, "length"))


@dataclass(slots=True, frozen=True)
class BlobChunk:
    """A piece of a blob; ``total_size`` is the full blob size."""

    TYPE: ClassVar[int] = 41
    sha256: str
    offset: int
    data: bytes
    total_size: int

    def to_payload(self) -> list[Any]:
        return [self.sha256, self.offset, self.data, self.total_size]

    @classmethod
    def from_payload(cls, payload: list[Any]) -> "BlobChunk":
        sha, off, data, total = _arity(payload, 4, "BlobChunk")
        return cls(_sha(sha), _int(off, 0, 2**40, "offset"), _bin(data, MAX_BLOB_CHUNK, "data"), _int(total, 0, 2**40, "total_size"))


@dataclass(slots=True, frozen=True)
class BlobMissing:
    """The peer does not have the blob (or not that range)."""

    TYPE: ClassVar[int] = 42
    sha256: str

    def to_payload(self) -> list[Any]:
        return [self.sha256]

    @classmethod
    def from_payload(cls, payload: list[Any]) -> "BlobMissing":
        (sha,) = _arity(payload, 1, "BlobMissing")
        return cls(_sha(sha))


SYNC_MESSAGES = (SyncStep1, SyncStep2, SyncUpdate, SyncAck, SyncChunk, SyncDigest)
BLOB_MESSAGES = (BlobRequest, BlobChunk, BlobMissing)
ALL_MESSAGES = SYNC_MESSAGES + BLOB_MESSAGES
