"""Wire messages of the crdt layer (types 20-39 sync, 40-49 blob).

Intent sync is the signed log's: :mod:`crdt.heads` defines types 30-34 (heads digest, heads,
records request, record batch, record push); ``SyncAck`` (23) acknowledges a push. Types 20-22,
24 and 25 (Yjs updates, state vectors, chunks) are retired: a peer still sending them gets
``unknown_type``.

Each class follows the envelope protocol of ``mesh.wire`` without importing it: a ``TYPE``,
``to_payload() -> list`` of msgpack values and a strict ``from_payload(payload)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from crdt.heads import HeadsDigest, HeadsMessage, RecordBatch, RecordPush, RecordsRequest

# Every message here travels as one stream frame: the plaintext of one Noise transport message
# (65,535 bytes less its 16-byte tag). This is mesh.wire.MAX_FRAME, restated because crdt must
# not import mesh; tests/test_crdt_frame_bounds.py checks the two agree.
FRAME_PLAINTEXT = 65_535 - 16
# Room for the envelope around a chunk's bytes, worst case: a 256-character sender (the most
# mesh.wire.decode accepts) at 4 UTF-8 bytes each is 1,027 bytes with its header, and the
# envelope and chunk fields (version, type, arrays, ids, offsets, sizes, sha256, bin header)
# add under 100 more.
ENVELOPE_ROOM = 1536
MAX_CHUNK = FRAME_PLAINTEXT - ENVELOPE_ROOM  # a record batch (crdt.heads.BATCH_BYTES): 63,983 bytes
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


SYNC_MESSAGES = (SyncAck, HeadsDigest, HeadsMessage, RecordsRequest, RecordBatch, RecordPush)
BLOB_MESSAGES = (BlobRequest, BlobChunk, BlobMissing)
ALL_MESSAGES = SYNC_MESSAGES + BLOB_MESSAGES
