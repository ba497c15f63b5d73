"""Issue 9: what a compromised admitted node could do to intent, tried at the protocol a peer now has.

A hostile peer reaches a node only through sync messages (RecordPush, RecordBatch, heads); each
test sends what the attack needs and checks that the victim's view still holds every valid record
and stores nothing invalid. The raw-Yjs forms of the attacks (delete or overwrite a map entry,
squat a Yjs clock) cannot be expressed any more: a Yjs update frame is an unknown message type.
"""

from __future__ import annotations

import random

import msgpack

from crdt.heads import RecordBatch, RecordPush
from crdt.intent import IntentNode
from crdt.logrecord import LogRecord
from crdt.schema import DeploymentSpec, ReplicaClaim, RouteSpec
from crdt_helpers import OPERATOR, PUBLISHER, key, make_nodes, manifest, share

WALL = 1_765_000_000.0  # the tests' wall clock (seconds since the epoch)


def _nodes() -> tuple[IntentNode, IntentNode, IntentNode]:
    """An honest writer, a victim and a hostile admitted node (n002, holding only its node key)."""
    nodes = make_nodes(3)
    for n in nodes.values():
        n.wall = WALL
    return nodes["n000"], nodes["n001"], nodes["n002"]


def _push(victim: IntentNode, records: list[bytes], src: str = "n002") -> list:
    return victim.receive(src, RecordPush(tuple(records), 7, 5), 1.0)


def _records_of(node: IntentNode, signer: str) -> list[LogRecord]:
    return [r for r in map(LogRecord.decode, node.doc.records.export()) if r.signer == signer]


def test_replaying_older_records_rolls_nothing_back() -> None:
    a, v, _ = _nodes()
    a.set_placement([ReplicaClaim("web", "1.0.0", "running")], 1.0)
    a.set_placement([ReplicaClaim("web", "2.0.0", "running")], 2.0)
    a.set("app", "k", b"old")
    a.set("app", "k", b"new")
    a.set("app", "gone", b"x")
    a.delete("app", "gone")
    share(a, v)
    assert v.doc.placement("n000").replicas[0].version == "2.0.0"
    own = [r.encode() for r in _records_of(a, key("node:n000").key_id)]
    before = v.doc.records.export()
    _push(v, own[:1] + own[2:3] + own[4:5])  # placement 1.0.0, KV "old", the deleted key's value
    assert v.doc.placement("n000").replicas[0].version == "2.0.0"
    assert v.get("app", "k") == b"new" and v.get("app", "gone") is None
    assert v.doc.records.export() == before and v.doc.records.stats["duplicates"] == 3
    # and nothing was forwarded: a replay is not news
    assert not [m for _, m in v.tick(1.0, ["n000", "n002"]) if isinstance(m, RecordPush) and m.push_id]


def test_nothing_a_peer_sends_deletes_a_deployment_revision_a_tombstone_or_a_route() -> None:
    a, v, m = _nodes()
    a.publish(manifest("hello", "1.0.0"), PUBLISHER, 1.0)
    a.publish(manifest("hello", "2.0.0"), PUBLISHER, 2.0)
    a.publish(manifest("hello", "3.0.0"), PUBLISHER, 3.0)
    a.set_deployment(DeploymentSpec("web", "hello", "1.0.0"), OPERATOR, 4.0)
    a.set_deployment(DeploymentSpec("web", "hello", "2.0.0"), OPERATOR, 5.0)
    a.remove_version("hello", "3.0.0", PUBLISHER, 6.0, reason="withdrawn")
    a.set_route(RouteSpec("x.com", "/", "*", "web"), OPERATOR, 7.0)
    share(a, v)
    # The raw Yjs delete of the old layout travelled as a SyncUpdate (type 22): no longer a sync
    # message at all, so it cannot reach the view.
    from mesh.node import NodeCore  # noqa: F401  (registers the crdt messages with the wire)
    from mesh.wire import pack

    core_counters = _core_receive(v, pack([1, 22, "n002", [b"\x01\x00", 5, 2], []]))
    assert core_counters["unknown_type"] == 1
    # Everything the hostile node can sign itself is refused for its role (a node key may write
    # KV and its own placement only); replays of the older revisions are duplicates.
    older = [r.encode() for r in _records_of(a, OPERATOR.key_id)][:1]
    rival = [LogRecord.create(key("node:n002"), 1, b"", "deployments", "web", {}, int(WALL * 1000)).encode(),
             LogRecord.create(key("node:n002"), 1, b"", "routes", "x.com/ GET", {"deleted": True}, int(WALL * 1000)).encode()]
    _push(v, older + rival)
    assert v.deployment("web").active_version == "2.0.0"
    removed = v.doc.manifest("hello", "3.0.0")
    assert removed.removed and removed.removed_reason == "withdrawn"
    assert [x.version for x in v.doc.versions("hello", include_removed=False)] == ["1.0.0", "2.0.0"]
    assert v.match("x.com", "/", "GET") is not None
    assert v.counters.invalid_by_reason == {"role": 2}


def _core_receive(node: IntentNode, frame: bytes) -> dict[str, int]:
    from mesh.membership.config import profile
    from mesh.membership.meta import NodeMeta
    from mesh.node import NodeCore

    core = NodeCore("n001", "addr-n001", NodeMeta(), profile("lan"), random.Random(1), intent=node)
    core.receive("addr-n002", frame, 1.0, reliable=True)
    return core.counters


def test_garbage_at_a_valid_records_position_leaves_the_valid_record_in_the_view() -> None:
    a, v, _ = _nodes()
    a.publish(manifest("hello", "1.0.0"), PUBLISHER, 1.0)
    share(a, v)
    (real,) = _records_of(a, PUBLISHER.key_id)
    garbage = LogRecord(real.signer, real.seq, real.prev, real.kind, real.key, False, {"junk": "x" * 100}, real.wall_ms, bytes(64))
    _push(v, [garbage.encode(), b"\x93garbage", msgpack.packb([2, real.signer, 1, b"", "registry"])])
    assert v.doc.manifest("hello", "1.0.0").sha256 == real.payload["sha256"]
    assert v.counters.invalid_by_reason == {"bad_signature": 1, "malformed": 2}


def test_a_forged_placement_never_replaces_the_owners_placement() -> None:
    a, v, m = _nodes()
    a.set_placement([ReplicaClaim("web", "1.0.0", "running")], 1.0)
    share(a, v)
    forged = LogRecord.create(key("node:n002"), 1, b"", "placement", "n000", {"node_id": "n000", "replicas": [], "updated_at": WALL}, int(WALL * 1000) + 5000)
    _push(v, [forged.encode()])
    assert v.doc.placement("n000").replicas[0].version == "1.0.0"
    assert v.counters.invalid_by_reason == {"not_owner": 1}


def test_a_pinned_sequence_number_neither_wins_nor_blocks_honest_writers() -> None:
    a, v, m = _nodes()
    m_key = key("node:n002")
    # The old pin: seq 2**62 - 1 (out of range now); and the largest valid seq above a gap.
    pin_old = msgpack.packb([2, m_key.key_id, 2**62 - 1, bytes(32), "kv", "app/k", False, {"v": b"pinned"}, int(WALL * 1000), bytes(64)])
    pin = LogRecord.create(m_key, 2**53 - 1, bytes(32), "kv", "app/k", {"v": b"pinned"}, int(WALL * 1000)).encode()
    _push(v, [pin_old, pin])
    assert v.get("app", "k") is None  # above a gap in its signer's chain: never in the view
    for i in range(3):  # honest writers keep writing: their sequence is their own
        a.set("app", "k", f"honest{i}".encode())
        v.set("app", "mine", f"v{i}".encode())
    share(a, v)
    assert v.get("app", "k") == b"honest2" and v.get("app", "mine") == b"v2"
    assert v.counters.invalid_by_reason == {"malformed": 1}


def test_a_squatted_position_is_refused_and_the_real_write_still_arrives() -> None:
    a, v, m = _nodes()
    a.set("app", "k", b"1")
    share(a, v)
    a_key = key("node:n000")
    (first,) = _records_of(a, a_key.key_id)
    # The hostile node occupies a's next position (seq 2) with content a never signed.
    squat = LogRecord(a_key.key_id, 2, first.id, "kv", "app/k", False, {"v": b"squat"}, int(WALL * 1000), bytes(64))
    _push(v, [squat.encode()])
    ack = a.set("app", "k", b"2")  # a's real record 2
    assert ack is None and v.get("app", "k") == b"1"
    # Heads sync compares per-signer positions: v finds it lacks a's seq 2 and fetches it.
    from crdt.logsync import LogSync

    sa, sv = LogSync(a.doc.records), LogSync(v.doc.records)
    queue = [("v", m) for m in sa.receive(sv.open(), WALL)]
    while queue:
        to, msg = queue.pop(0)
        out = (sv if to == "v" else sa).receive(msg, WALL)
        queue += [("a" if to == "v" else "v", x) for x in out]
    v.doc.refresh()
    assert v.get("app", "k") == b"2" and v.has_write(a_key.key_id, 2)


def test_200_invalid_50kb_records_are_neither_stored_nor_forwarded() -> None:
    a, v, m = _nodes()
    rows, before = v.store.row_count(), v.doc.encoded_size()
    m_key = key("node:n002")
    junk = []
    for i in range(200):
        good = LogRecord.create(m_key, i + 1, b"" if i == 0 else bytes(32), "kv", f"junk/{i}", {"v": bytes(50_000)}, int(WALL * 1000))
        junk.append(LogRecord(good.signer, good.seq, good.prev, good.kind, good.key, False, good.payload, good.wall_ms, bytes(64)).encode())
    for i in range(0, 200, 1):
        _push(v, junk[i : i + 1])
    assert v.store.row_count() == rows and v.doc.encoded_size() == before
    assert v.counters.invalid_by_reason == {"bad_signature": 200}
    assert not [x for _, x in v.tick(1.0, ["n000", "n002"]) if isinstance(x, (RecordPush, RecordBatch)) and x.records]


def test_a_manifest_from_year_5000_is_refused_and_a_slightly_early_one_is_held_back() -> None:
    a, v, _ = _nodes()
    y5000 = 95_617_584_000.0
    far = manifest("hello", "1.0.0", now=y5000)
    dated = LogRecord.create(PUBLISHER, 1, b"", "registry", "hello@1.0.0", far.to_payload(), int(WALL * 1000)).encode()
    future = LogRecord.create(PUBLISHER, 1, b"", "registry", "hello@1.0.0", far.to_payload(), int(y5000 * 1000)).encode()
    _push(v, [dated, future])
    assert v.counters.invalid_by_reason == {"schema": 1, "far_future": 1}
    # 60 s ahead of v's clock: held back (not in the view), applied once v's clock gets there.
    early = manifest("hello", "2.0.0", now=WALL + 60)
    held = LogRecord.create(PUBLISHER, 1, b"", "registry", "hello@2.0.0", early.to_payload(), int((WALL + 60) * 1000)).encode()
    _push(v, [held])
    assert v.doc.records.held_count() == 1 and not v.doc.versions("hello")
    v.wall = WALL + 31
    v.tick(2.0, [])
    assert [x.version for x in v.doc.versions("hello")] == ["2.0.0"] and v.store.row_count() == 1
