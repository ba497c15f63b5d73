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
from crdt.heads import BATCH_BYTES, MAX_HEADS_PER_MESSAGE, HeadsMessage, RecordBatch, RecordPush
from crdt.logrecord import MAX_LOG_RECORD_BYTES
from crdt.messages import FRAME_PLAINTEXT, MAX_BLOB_CHUNK, MAX_CHUNK, BlobChunk, BlobRequest
from crdt.schema import KvLimits
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


def test_the_largest_record_push_and_batch_fit_one_frame() -> None:
    assert BATCH_BYTES == MAX_CHUNK
    p = RecordPush((b"\xff" * MAX_LOG_RECORD_BYTES,), 2**63 - 1, 32)
    data = encode(WORST_SENDER, p)
    assert len(data) <= MAX_FRAME and decode(data, MAX_FRAME).msg == p
    # A batch filled to BATCH_BYTES with small records (5 bytes of header each) fits too.
    n = BATCH_BYTES // (200 + 5)
    b = RecordBatch(tuple(b"\xff" * 200 for _ in range(n)))
    assert len(encode(WORST_SENDER, b)) <= MAX_FRAME


def test_a_full_heads_page_fits_one_frame() -> None:
    page = HeadsMessage(tuple((f"{i:016x}", 2**53 - 1, b"\xff" * 32) for i in range(MAX_HEADS_PER_MESSAGE)), True)
    data = encode(WORST_SENDER, page)
    assert len(data) <= MAX_FRAME and decode(data, MAX_FRAME).msg == page


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
def test_sync_core_frames_fit_while_replicating_large_records(config: SyncConfig) -> None:
    nodes = make_nodes(2, config=config)
    a, b = nodes["n000"], nodes["n001"]
    # Values at the KV value limit: each record alone nearly fills a frame.
    values = {f"k{i}": os.urandom(KvLimits().max_value_bytes) for i in range(5)}
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
    assert sum(1 for f in frames if f > KvLimits().max_value_bytes) >= len(values)  # one record per frame
    assert max(frames) <= MAX_FRAME


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
