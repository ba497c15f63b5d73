"""Every crdt message the sync and blob cores send fits one stream frame (mesh.wire.MAX_FRAME).

A stream frame is the plaintext of one Noise transport message: 65,535 bytes less the 16-byte
tag. crdt cannot import mesh, so crdt.messages restates the limit; these tests (which may import
both) check the restatement and that the largest valid chunks, in a full envelope, fit.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest

import mesh.protocol  # noqa: F401  registers the crdt message types with mesh.wire
from crdt.blob import BlobTransfer, MemoryBlobStore
from crdt.messages import (
    FRAME_PLAINTEXT, MAX_BLOB_CHUNK, MAX_CHUNK, MAX_CHUNKS, MAX_UPDATE, BlobChunk, BlobRequest, SyncChunk, SyncStep1, SyncStep2,
)
from crdt.sync import SyncConfig
from crdt_helpers import make_nodes
from mesh.wire import MAX_FRAME, MAX_NAME, decode, encode

# The longest sender mesh.wire.decode accepts: a member name of MAX_NAME (128) ASCII characters
# (crdt.messages leaves room for the older bound, 256 characters of 4 UTF-8 bytes).
WORST_SENDER = "z" * MAX_NAME
NOISE_MAX_MESSAGE = 65_535  # Noise spec, section 3: a transport message is at most 65,535 bytes
NOISE_TAG = 16  # ChaChaPoly authentication tag


def test_the_crdt_frame_limit_is_one_noise_message_plaintext() -> None:
    assert FRAME_PLAINTEXT == MAX_FRAME == NOISE_MAX_MESSAGE - NOISE_TAG


def test_the_largest_valid_sync_chunk_fits_one_frame() -> None:
    c = SyncChunk(2**63 - 1, MAX_CHUNKS - 1, MAX_CHUNKS, MAX_UPDATE + 1024, b"\xff" * MAX_CHUNK)
    data = encode(WORST_SENDER, c)
    assert len(data) <= MAX_FRAME
    assert decode(data, MAX_FRAME).msg == c
    with pytest.raises(ValueError, match="chunk must be bytes of at most"):
        SyncChunk.from_payload([1, 0, 1, 10, b"\xff" * (MAX_CHUNK + 1)])


def test_the_largest_valid_blob_chunk_fits_one_frame() -> None:
    c = BlobChunk("f" * 64, 2**40, b"\xff" * MAX_BLOB_CHUNK, 2**40)
    data = encode(WORST_SENDER, c)
    assert len(data) <= MAX_FRAME
    assert decode(data, MAX_FRAME).msg == c
    with pytest.raises(ValueError, match="data must be bytes of at most"):
        BlobChunk.from_payload(["f" * 64, 0, b"\xff" * (MAX_BLOB_CHUNK + 1), 10])


def test_chunk_sizes_beyond_one_frame_are_refused_by_the_cores() -> None:
    with pytest.raises(ValueError, match="chunk_size must be in"):
        SyncConfig(chunk_size=MAX_CHUNK + 1)
    with pytest.raises(ValueError, match="chunk_size must be in"):
        BlobTransfer(MemoryBlobStore(), chunk_size=MAX_BLOB_CHUNK + 1)


def _deliver(nodes: dict[str, Any], src: str, out: list[tuple[str, Any]], now: float, frames: list[int]) -> None:
    """Send every message through the real envelope, checking each frame, until nothing is left."""
    queue = [(src, dst, m) for dst, m in out]
    while queue:
        s, d, m = queue.pop(0)
        data = encode(WORST_SENDER, m)
        frames.append(len(data))
        assert len(data) <= MAX_FRAME, f"{type(m).__name__} of {len(data)} bytes exceeds one frame"
        queue += [(d, dst, r) for dst, r in nodes[d].receive(s, decode(data, MAX_FRAME).msg, now)]


@pytest.mark.parametrize("config", [SyncConfig(), SyncConfig(chunk_size=MAX_CHUNK)], ids=["default", "max"])
def test_sync_core_frames_fit_while_replicating_large_updates(config: SyncConfig) -> None:
    nodes = make_nodes(2, config=config)
    a, b = nodes["n000"], nodes["n001"]
    # Values at the 64 KiB namespace limit: each signed update is larger than any chunk_size allowed.
    values = {f"k{i}": os.urandom(64 * 1024) for i in range(5)}
    for k, v in values.items():
        a.set("big", k, v)
    frames: list[int] = []
    now = 0.0
    for _ in range(6):
        now += 1.0
        for name in sorted(nodes):
            peer = "n001" if name == "n000" else "n000"
            _deliver(nodes, name, nodes[name].tick(now, [peer]), now, frames)
    assert {k: b.get("big", k) for k in values} == values
    assert a.counters.chunks_sent >= 2 * len(values)  # each update needs at least two frames
    assert max(frames) <= MAX_FRAME


def test_a_state_vector_larger_than_a_frame_is_chunked_and_answered() -> None:
    # 12,000 Yjs clients whose ids need 5-byte varuints: a ~73 KB state vector, more than a frame.
    n = 12_000
    sv = bytearray()

    def varuint(x: int) -> None:
        while x >= 0x80:
            sv.append((x & 0x7F) | 0x80)
            x >>= 7
        sv.append(x)

    varuint(n)
    for i in range(n):
        varuint(2**30 + i)
        varuint(1)
    assert len(sv) > MAX_FRAME
    nodes = make_nodes(2)
    a, b = nodes["n000"], nodes["n001"]
    out = a.sync._send("n001", SyncStep1(bytes(sv)))
    assert len(out) > 1 and all(isinstance(m, SyncChunk) for _, m in out)
    replies: list[tuple[str, Any]] = []
    for _, m in out:
        data = encode("n000", m)
        assert len(data) <= MAX_FRAME
        replies += b.receive("n000", decode(data, MAX_FRAME).msg, 0.0)
    # b reassembled the SyncStep1 and answered it with what a lacks plus its own state vector
    assert [type(m) for _, m in replies] == [SyncStep2]
    assert b.counters.updates_malformed == 0


@pytest.mark.parametrize("chunk_size", [None, MAX_BLOB_CHUNK], ids=["default", "max"])
def test_blob_core_frames_fit(chunk_size: int | None) -> None:
    data = os.urandom(300_000)
    sha = hashlib.sha256(data).hexdigest()
    kw = {} if chunk_size is None else {"chunk_size": chunk_size}
    src_store = MemoryBlobStore()
    src_store.put(sha, data)
    nodes = {"src": BlobTransfer(src_store, **kw), "me": BlobTransfer(MemoryBlobStore(), **kw)}
    frames: list[int] = []
    _deliver(nodes, "me", nodes["me"].fetch(sha, [("src", 0.01)], 0.0, expected_size=len(data)), 0.0, frames)
    assert nodes["me"].status(sha).status == "done" and nodes["me"].store.read(sha, 0, len(data)) == data
    assert max(frames) <= MAX_FRAME
    # a peer asking for a full frame's worth is served within one frame
    big_ask = BlobRequest(sha, 0, MAX_BLOB_CHUNK)
    for _, m in nodes["src"].receive("me", big_ask, 0.0):
        assert len(encode(WORST_SENDER, m)) <= MAX_FRAME
