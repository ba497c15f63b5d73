"""Issue 9: malformed sync, blob and membership frames through ``NodeCore.receive``.

Inputs are valid messages (what an honest peer sends) mutated structurally (a field of the
decoded msgpack tree replaced by a hostile value, an element dropped or duplicated) or byte-wise
(overwritten, truncated, extended), seeded so a failure replays. Each goes in as a datagram and
as a stream frame, from an authenticated session and from none. Work is bounded by state, not by
time: after every input the node's tables (members, pending and held records, held answers,
blob fetches) stay within bounds derived from what the inputs could legitimately add, no call
raises and no sub-core even fails internally; afterwards the node still answers a ping and its
intent view is unchanged.
"""

from __future__ import annotations

import hashlib
import math
import random
from typing import Any

import msgpack

from crdt.blob import BlobTransfer, MemoryBlobStore
from crdt.heads import RecordBatch, RecordPush, RecordsRequest
from crdt.intent import IntentNode
from crdt.logsync import LogSync
from crdt.messages import BlobChunk, BlobMissing, BlobRequest
from mesh.membership.config import profile
from mesh.membership.messages import Ack, Ping
from mesh.membership.meta import NodeMeta
from mesh.node import NodeCore
from mesh.wire import MAX_FRAME, Outgoing, decode, encode
from hostile_datagrams import base_datagrams

WALL = 1_765_000_000.0
A_ADDR, B_ADDR = "10.0.0.1:7946", "10.0.0.2:7946"
INPUTS = 5000


def _nodes() -> tuple[NodeCore, list[bytes], int]:
    """Victim core ``a`` (intent + blobs) holding an honest writer's records, the valid frames
    to mutate (all sent by ``b``), and the most membership entries one of them carries."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "crdt"))
    from crdt_helpers import PUBLISHER, make_nodes, manifest, share

    nodes = make_nodes(3)
    a_int, honest, b_int = nodes["n000"], nodes["n001"], nodes["n002"]
    for n in nodes.values():
        n.wall = WALL
    honest.publish(manifest("hello", "1.0.0"), PUBLISHER, 1.0)
    honest.set("app", "k", b"v1")
    honest.set("app", "k", b"v2")
    honest.set_placement([], 2.0)
    share(honest, a_int, WALL)
    share(honest, b_int, WALL)
    blob = bytes(range(256)) * 20
    store = MemoryBlobStore()
    store.put(hashlib.sha256(blob).hexdigest(), blob)
    blobs = BlobTransfer(store, chunk_size=1024, node_id="n000")
    a = NodeCore("n000", A_ADDR, NodeMeta(), profile("lan"), random.Random("fuzz:a"), intent=a_int, blobs=blobs)
    b = NodeCore("n002", B_ADDR, NodeMeta(), profile("lan"), random.Random("fuzz:b"), seeds=[A_ADDR])
    frames = [o.data for o in b.start(0.0)]  # b's join push-pull
    a.receive(B_ADDR, frames[0], 0.0, peer="n002", stream="join")  # a knows b now
    # A blob fetch from b in progress, so chunks from b are acted on.
    wanted = hashlib.sha256(b"wanted" * 100).hexdigest()
    a.fetch_blob(wanted, ["n002"], 0.0, expected_size=600)
    # Sync messages of a real round between b and an empty log, plus pushes of valid records.
    records = tuple(honest.doc.records.export())
    sb, empty = LogSync(b_int.doc.records), LogSync(make_nodes(1, seed=9)["n000"].doc.records)
    sync_msgs: list[Any] = [sb.open()]
    queue = [("b", m) for m in empty.receive(sb.open(), WALL)]
    while queue and len(sync_msgs) < 20:
        to, m = queue.pop(0)
        sync_msgs.append(m)
        out = (sb if to == "b" else empty).receive(m, WALL)
        queue += [("e" if to == "b" else "b", x) for x in out]
    sync_msgs += [RecordPush(records, 7, 5), RecordBatch(records[:2])]
    assert {type(m) for m in sync_msgs} >= {RecordsRequest, RecordBatch, RecordPush}
    blob_msgs = [BlobRequest(hashlib.sha256(blob).hexdigest(), 0, 1024), BlobChunk(wanted, 0, b"wanted" * 100, 600), BlobMissing(wanted), BlobRequest(wanted, 0, 1 << 20)]
    membership = base_datagrams_from("n002")
    base = frames + membership + [encode("n002", m) for m in sync_msgs + blob_msgs]
    most = max(_entries(f) for f in frames + membership)
    return a, base, most


def base_datagrams_from(sender: str) -> list[bytes]:
    out = []
    for d in base_datagrams():  # written as from "b": re-addressed from this mesh's node b
        env = msgpack.unpackb(d, raw=False)
        env[2] = sender
        out.append(msgpack.packb(env, use_bin_type=True))
    return out


def _entries(frame: bytes) -> int:
    """Upper bound on the member entries a membership frame carries (piggybacks + push-pull rows)."""
    env = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    n = len(env[4]) + 1
    body = env[3]
    if isinstance(body, list):
        n += sum(len(x) for x in body if isinstance(x, list))
    return n


_HOSTILE: list[Any] = [
    0, -1, 2**63 - 1, 2**64 - 1, -(2**63), 2**53 + 1, 1.5, math.inf, -math.inf, math.nan, None, True, False,
    "", "x" * 300, "\u0000", "../../etc", b"", b"\xff" * 64, bytes(32), [], {}, [None], {"a": 1}, [[[[]]]],
]


def _leaf(rng: random.Random) -> Any:
    r = rng.random()
    if r < 0.6:
        return rng.choice(_HOSTILE)
    if r < 0.8:
        return rng.randbytes(rng.randrange(0, 80))
    return rng.randrange(-(2**40), 2**40)


def _same_type(obj: Any, rng: random.Random) -> Any:
    """A hostile value of the same type (passes shape checks, so the sub-cores see it)."""
    if isinstance(obj, bool):
        return not obj
    if isinstance(obj, int):
        v = rng.choice([0, 1, -1, obj + 1, obj - 1, 2**31, 2**53 - 1, 2**63 - 1, 2**64 - 1, -(2**63), rng.randrange(1 << 32)])
        return min(max(v, -(2**63)), 2**64 - 1)  # what msgpack can carry
    if isinstance(obj, float):
        return rng.choice([0.0, -1.0, 1e300, math.inf, math.nan, obj * 1000])
    if isinstance(obj, str):
        return rng.choice(["", "n000", "n001", "n002", obj + obj, obj[:-1], "x" * 200, "\u2603" * 10])
    if isinstance(obj, (bytes, bytearray)):
        return rng.choice([b"", bytes(len(obj)), obj[:-1], obj + b"\0", b"\xff" * len(obj)])
    return _leaf(rng)


def _mutate_tree(obj: Any, rng: random.Random) -> Any:
    """Replace, drop or duplicate one node of a decoded msgpack tree (structure-aware mutation)."""
    if isinstance(obj, list) and obj and rng.random() < 0.95:
        i = rng.randrange(len(obj))
        r = rng.random()
        if r < 0.1:
            return obj[:i] + obj[i + 1 :]
        if r < 0.15:
            return obj[: i + 1] + [obj[i]] + obj[i + 1 :]
        return obj[:i] + [_mutate_tree(obj[i], rng)] + obj[i + 1 :]
    if isinstance(obj, dict) and obj and rng.random() < 0.95:
        k = rng.choice(sorted(obj, key=repr))
        return {**obj, k: _mutate_tree(obj[k], rng)}
    if isinstance(obj, (bytes, bytearray)) and obj and rng.random() < 0.7:
        # Nested msgpack (records, metadata, piggybacks) is mutated inside.
        try:
            inner = msgpack.unpackb(obj, raw=False, strict_map_key=False)
        except Exception:  # not msgpack: flip bytes instead
            b = bytearray(obj)
            b[rng.randrange(len(b))] = rng.randrange(256)
            return bytes(b)
        return msgpack.packb(_mutate_tree(inner, rng), use_bin_type=True)
    return _same_type(obj, rng) if rng.random() < 0.6 else _leaf(rng)


def _mutate(data: bytes, rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.85:
        env = msgpack.unpackb(data, raw=False, strict_map_key=False)
        for _ in range(rng.randint(1, 3)):
            # Mostly inside the payload and piggybacks: a broken envelope header is the cheap case.
            at = 3 if rng.random() < 0.8 or not env[4] else 4 if rng.random() < 0.9 else rng.randrange(len(env))
            env[at] = _mutate_tree(env[at], rng)
        return msgpack.packb(env, use_bin_type=True)
    b = bytearray(data)
    if r < 0.92:
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif r < 0.97:
        del b[rng.randrange(len(b)) :]
    else:
        b += rng.randbytes(rng.randrange(1, 64))
    return bytes(b)


def _answers_ping(core: NodeCore, seq: int, now: float) -> bool:
    out = core.receive(B_ADDR, encode("n002", Ping(seq, "n000")), now, peer="n002")
    msgs = [decode(o.data, 1 << 16).msg for o in out if not o.reliable]
    return any(isinstance(m, Ack) and m.seq == seq for m in msgs)


def test_mutated_sync_blob_and_membership_frames_cost_little_and_change_nothing() -> None:
    a, base, most = _nodes()
    assert a.intent is not None and a.blobs is not None
    view = tuple(a.intent.doc.records.export())
    digest = a.intent.doc.view_digest()
    members0 = a.swim.num_members()
    assert _answers_ping(a, 1, 0.5)
    rng = random.Random(90210)
    channels = [(False, None, None), (False, "n002", None), (True, "n002", "s1"), (True, None, "s2")]
    for i in range(INPUTS):
        data = _mutate(rng.choice(base), rng)
        reliable, peer, stream = channels[i % len(channels)]
        now = 1.0 + i * 0.001
        out = a.receive(B_ADDR, data, now, reliable, peer=peer, stream=stream)
        assert isinstance(out, list) and all(isinstance(o, Outgoing) and len(o.data) <= MAX_FRAME for o in out)
        assert a.counters["intent_errors"] == 0 and a.counters["membership_errors"] == 0, (i, a.last_error)
        # Bounded state: no input adds more members than it carries entries; nothing pends or is held.
        assert a.swim.num_members() <= members0 + most * (i + 1)
        assert a.intent.doc.records.pending_count() == 0 and a.intent.doc.records.held_count() == 0
        assert len(a.blobs.fetches) == 1 and len(a.intent._held) == 0
        if i % 100 == 99:
            a.tick(now)
    assert tuple(a.intent.doc.records.export()) == view and a.intent.doc.view_digest() == digest
    assert a.intent.get("app", "k") == b"v2"
    assert _answers_ping(a, 2, 10.0)
