"""Scale of intent: dissemination by forwarding, digest anti-entropy, per-write and per-record costs.

Behaviour only (no timing): running KV usage totals, per-node verification caching that never
accepts a forgery, and eager forwarding that reaches every node without anti-entropy.
"""

from __future__ import annotations

import random

import pytest
from crdt.errors import KvLimitError
from crdt.heads import HeadsDigest, HeadsMessage, RecordBatch, RecordPush, RecordsRequest
from crdt.intent import IntentNode
from crdt.logrecord import LogRecord
from crdt.schema import KvLimits
from crdt.sync import SyncConfig
from crdt.trust import TrustConfig
from crdt_helpers import PUBLISHER, Pump, converged, key, make_nodes, manifest, share, trust_for


def recount(node: IntentNode, ns: str) -> tuple[int, int]:
    """Usage from scratch through the public read API: live keys and bytes of keys + values."""
    keys = node.list(ns)
    size = 0
    for k in keys:
        v = node.get(ns, k)
        assert v is not None
        size += len(k) + len(v)
    return len(keys), size


def sync_pair(a: IntentNode, b: IntentNode, now: float) -> None:
    share(b, a)
    share(a, b)


# --------------------------------------------------------------------------- KV usage totals


def test_kv_usage_totals_stay_exact_across_overwrites_deletes_and_remote_merges() -> None:
    nodes = make_nodes(2)
    a, b = nodes["n000"], nodes["n001"]
    a.set("app", "a", b"xx")
    a.set("app", "bb", b"y")
    assert a.doc.kv_usage("app") == (2, 1 + 2 + 2 + 1)
    a.set("app", "a", b"xxxx")  # overwrite: same key count, value grows by 2
    assert a.doc.kv_usage("app") == (2, 1 + 4 + 2 + 1)
    a.delete("app", "bb")
    assert a.doc.kv_usage("app") == (1, 1 + 4)
    a.delete("app", "bb")  # deleting a missing key changes nothing
    assert a.doc.kv_usage("app") == (1, 5)
    # b writes the same key without having seen a's value, and a new key: after the merge the
    # key's value is the winner's (wall time, signer), counted once, and b's new key adds itself
    b.set("app", "a", b"z")
    b.set("app", "ccc", b"q" * 10)
    assert b.doc.kv_usage("app") == (2, 1 + 1 + 3 + 10)
    sync_pair(a, b, 1.0)
    winner = a.get("app", "a")
    assert winner is not None and winner == b.get("app", "a")
    expected = (2, 1 + len(winner) + 3 + 10)
    assert a.doc.kv_usage("app") == b.doc.kv_usage("app") == expected
    # a deletion replicated from a peer and a re-creation after it
    b.delete("app", "ccc")
    sync_pair(a, b, 2.0)
    assert a.doc.kv_usage("app") == (1, 1 + len(winner))
    a.set("app", "ccc", b"r")
    assert a.doc.kv_usage("app") == (2, 1 + len(winner) + 3 + 1)
    assert a.doc.kv_usage("other") == (0, 0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kv_usage_matches_a_recount_after_random_writes_on_three_nodes(seed: int) -> None:
    rng = random.Random(seed)
    nodes = make_nodes(3, seed=seed)
    names = sorted(nodes)
    for step in range(120):
        n = nodes[rng.choice(names)]
        ns = rng.choice(["app", "cache"])
        k = f"k{rng.randrange(12)}"
        if rng.random() < 0.25:
            n.delete(ns, k)
        else:
            n.set(ns, k, bytes([step % 256]) * rng.randrange(0, 40))
        if rng.random() < 0.3:  # a partial merge between two nodes
            x, y = rng.sample(names, 2)
            share(nodes[y], nodes[x])
        for node in nodes.values():
            for space in ("app", "cache"):
                assert node.doc.kv_usage(space) == recount(node, space), f"seed={seed} step={step}"
    for x in names:
        for y in names:
            share(nodes[y], nodes[x])
    usage = {node.doc.kv_usage("app") for node in nodes.values()}
    assert len(usage) == 1 and usage == {recount(nodes["n000"], "app")}


def test_kv_limits_hold_with_running_totals_including_remote_keys() -> None:
    lim = KvLimits(max_value_bytes=100, max_keys=3, max_namespace_bytes=60)
    nodes = make_nodes(2, kv_limits=lim)
    a, b = nodes["n000"], nodes["n001"]
    a.set("app", "k1", b"x" * 10)
    b.set("app", "k2", b"y" * 10)
    sync_pair(a, b, 1.0)
    a.set("app", "k3", b"z" * 10)  # three keys: 3 * (2 + 10) = 36 bytes
    with pytest.raises(KvLimitError, match="already holds 3 keys"):
        a.set("app", "k4", b"w")  # b's key counts towards a's limit
    for i in range(20):  # overwrites keep the count; sizes are replaced, not added up
        a.set("app", "k1", bytes([i]) * 10)
    assert a.doc.kv_usage("app") == (3, 36)
    with pytest.raises(KvLimitError, match="would hold 61 bytes"):
        a.set("app", "k1", b"x" * 35)  # 36 - 10 + 35 = 61 > 60
    a.set("app", "k1", b"x" * 34)  # 60 exactly
    a.delete("app", "k2")
    a.set("app", "k4", b"w")  # a deletion frees a key slot
    assert a.doc.kv_usage("app") == recount(a, "app") == (3, 2 + 34 + 2 + 10 + 2 + 1)


# --------------------------------------------------------------------------- verification cache


class CountingTrust(TrustConfig):
    """Counts real signature verifications."""

    calls = 0

    def verify(self, key_id: str, signature: bytes, message: bytes) -> bool:
        CountingTrust.calls += 1
        return super().verify(key_id, signature, message)


def counting_nodes(n: int) -> dict[str, IntentNode]:
    names = [f"n{i:03d}" for i in range(n)]
    trust = CountingTrust.from_json(trust_for(names).to_json())
    assert isinstance(trust, CountingTrust)
    return {nm: IntentNode(nm, key("node:" + nm), trust, random.Random(nm)) for nm in names}


def test_writer_does_not_verify_what_it_signed_and_each_node_verifies_each_record_once() -> None:
    nodes = counting_nodes(3)
    a, b, c = nodes["n000"], nodes["n001"], nodes["n002"]
    CountingTrust.calls = 0
    a.set("app", "k", b"v")
    a.publish(manifest("m", "1.0.0"), PUBLISHER, 1.0)
    assert CountingTrust.calls == 0
    # two other nodes share one TrustConfig but not a cache: each verifies both records itself
    share(a, b)
    assert CountingTrust.calls == 2
    share(a, c)
    assert CountingTrust.calls == 4
    assert b.doc.records._verified is not c.doc.records._verified and len(b.doc.records._verified) == len(c.doc.records._verified) == 2
    # the same records again (a replay) are duplicates: nothing is verified twice
    share(a, b)
    assert CountingTrust.calls == 4 and b.has_write(PUBLISHER.key_id, 1)


def test_forged_record_at_a_valid_records_position_is_rejected_and_the_valid_one_stays() -> None:
    nodes = make_nodes(2)
    a, b = nodes["n000"], nodes["n001"]
    ack = a.publish(manifest("m", "1.0.0"), PUBLISHER, 1.0)
    share(a, b)
    real = b.doc.effective("registry", "m@1.0.0")
    assert real is not None
    # same signer, seq, chain link and signature; only the payload differs (another binary)
    forged = LogRecord(real.signer, real.seq, real.prev, real.kind, real.key, False, {**real.payload, "sha256": "e" * 64}, real.wall_ms, real.signature)
    assert b.doc.add(forged.encode(), 2.0).reason == "bad_signature"
    assert all(r.payload["sha256"] != "e" * 64 for r in b.doc.history("registry", "m@1.0.0"))
    assert b.has_write(ack.signer, ack.seq) and b.doc.manifest("m", "1.0.0").sha256 == real.payload["sha256"]


# --------------------------------------------------------------------------- dissemination


def test_eager_forwarding_reaches_all_100_nodes_without_anti_entropy_in_bounded_hops() -> None:
    cfg = SyncConfig(anti_entropy_interval=1e9)
    nodes = make_nodes(100, config=cfg)
    pump = Pump(nodes, 3)
    pump.step(0.01)  # every node learns the live peers (its one anti-entropy round finds equal digests)
    assert sum(n.counters.anti_entropy_in_sync for n in nodes.values()) == 100
    ack = nodes["n042"].publish(manifest(), PUBLISHER, pump.now)
    # one Pump step = one hop (a node forwards from its next tick)
    hops = 0
    while not all(n.has_write(ack.signer, ack.seq) for n in nodes.values()):
        pump.step(0.01)
        hops += 1
        assert hops <= cfg.relay_ttl + 1, f"only {sum(n.has_write(ack.signer, ack.seq) for n in nodes.values())}/100 after {hops} hops"
    for n in nodes.values():
        assert n.counters.anti_entropy_rounds == 1
        assert n.counters.relays <= 1  # each node forwards a record at most once: a duplicate is not new
        assert n.counters.eager_pushes <= cfg.fanout + 1
    assert converged(nodes)


def test_forwarded_push_is_what_the_node_newly_learned() -> None:
    nodes = make_nodes(3, config=SyncConfig(anti_entropy_interval=1e9))
    a, b = nodes["n000"], nodes["n001"]
    for i in range(30):
        a.set("app", f"k{i}", b"v" * 50)
    known = tuple(a.doc.records.export())
    share(a, b)
    a.publish(manifest("m", "2.0.0"), PUBLISHER, 2.0)
    fresh = a.sync._queue[-1].records[0]
    b.tick(2.0, ["n000", "n002"])
    b.receive("n000", RecordPush(known + (fresh,), 1, 5), 2.0)  # old news plus one new record
    out = b.tick(2.0, ["n000", "n002"])
    forwarded = [m for dst, m in out if isinstance(m, RecordPush)]
    assert forwarded and all(m.ttl == 4 and m.records == (fresh,) for m in forwarded)
    # what was forwarded is enough for a node that already had the old news
    c = nodes["n002"]
    share(b, c)
    c.receive("n001", forwarded[0], 3.0)
    assert c.doc.manifest("m", "2.0.0") and converged({"a": a, "b": b, "c": c})


def test_a_node_that_learned_nothing_does_not_forward() -> None:
    nodes = make_nodes(3, config=SyncConfig(anti_entropy_interval=1e9))
    a, b = nodes["n000"], nodes["n001"]
    a.publish(manifest(), PUBLISHER, 1.0)
    u = a.sync._queue[-1].records
    b.tick(1.0, ["n000", "n002"])
    b.receive("n000", RecordPush(tuple(u), 1, 5), 1.0)
    assert [m for _, m in b.tick(1.0, ["n000", "n002"]) if isinstance(m, RecordPush)]
    b.receive("n002", RecordPush(tuple(u), 2, 5), 1.0)  # the same record again, from another peer
    assert not [m for _, m in b.tick(1.0, ["n000", "n002"]) if isinstance(m, RecordPush)]
    assert b.counters.updates_redundant == 1 and b.counters.relays == 1


def test_ring_successor_is_always_a_push_target() -> None:
    names = [f"n{i:03d}" for i in range(50)]
    n = IntentNode("n010", key("node:n010"), trust_for(names), random.Random(1), sync_config=SyncConfig(fanout=2))
    n.tick(0.0, names)
    for _ in range(20):
        t = n.sync.targets(None)
        assert "n011" in t and "n010" not in t and len(t) in (2, 3)
    assert "n011" not in n.sync.targets("n011")
    last = IntentNode("n049", key("node:n049"), trust_for(names), random.Random(1))
    last.tick(0.0, names)
    assert "n000" in last.sync.targets(None)  # the ring wraps around


def test_idle_anti_entropy_is_one_digest_whatever_the_number_of_writers() -> None:
    sizes = []
    for writers in (2, 40):
        nodes = make_nodes(writers)
        for n in nodes.values():
            n.set_placement([], 1.0)
        pump = Pump(nodes, 1, wire=True)
        for _ in range(30):
            pump.step(2.0)
            if converged(nodes):
                break
        assert converged(nodes)
        a = nodes["n000"]
        assert len(a.doc.records.heads()) == writers
        out = a.tick(1e6, sorted(nodes))
        assert [type(m) for _, m in out] == [HeadsDigest]
        peer = nodes[out[0][0]]
        assert peer.receive("n000", out[0][1], 1e6) == []  # equal digests: the round ends here
        sizes.append(len(out[0][1].digest))
    assert sizes == [16, 16]


def test_differing_digest_opens_a_heads_exchange_that_repairs_both_sides() -> None:
    nodes = make_nodes(2, config=SyncConfig(anti_entropy_interval=1e9))
    a, b = nodes["n000"], nodes["n001"]
    a.set("app", "from-a", b"1")
    b.set("app", "from-b", b"2")
    assert a.sync.state_digest() != b.sync.state_digest()
    assert a.sync.state_digest() == a.doc.records.heads_digest()
    [(dst, heads)] = b.receive("n000", HeadsDigest(a.sync.state_digest()), 1.0)
    assert dst == "n000" and isinstance(heads, HeadsMessage) and not heads.reply
    out = a.receive("n001", heads, 1.0)
    assert [type(m) for _, m in out] == [RecordsRequest, HeadsMessage]
    queue = [("n000", "n001", m) for _, m in out]
    kinds = []
    while queue:
        src, dst, m = queue.pop(0)
        kinds.append(type(m))
        queue += [(dst, d, r) for d, r in nodes[dst].receive(src, m, 1.0)]
    assert kinds == [RecordsRequest, HeadsMessage, RecordBatch, RecordsRequest, RecordBatch]
    assert converged(nodes) and a.get("app", "from-b") == b"2" and b.get("app", "from-a") == b"1"


def test_an_unacknowledged_push_is_sent_once_more_after_push_retry() -> None:
    cfg = SyncConfig(fanout=1, ring=False, anti_entropy_interval=1e9, push_retry=0.25)
    nodes = make_nodes(2, config=cfg)
    a, b = nodes["n000"], nodes["n001"]
    a.tick(0.0, ["n001"])
    a.publish(manifest(), PUBLISHER, 0.0)
    [(dst, first)] = a.tick(0.0, ["n001"])  # lost on the way
    assert dst == "n001" and isinstance(first, RecordPush) and first.push_id > 0
    assert a.tick(0.2, ["n001"]) == []
    assert a.sync.next_deadline() == pytest.approx(0.25)
    [(_, again)] = a.tick(0.25, ["n001"])
    assert again == first and a.counters.eager_retries == 1
    assert a.sync.outstanding_bytes("n001") == 2 * first.size()  # both copies in flight
    assert a.tick(0.6, ["n001"]) == []  # once only: a second loss is left to anti-entropy
    [(_, ack)] = b.receive("n000", again, 0.3)
    a.receive("n001", ack, 0.3)
    assert a.sync.outstanding_bytes("n001") == 0 and b.doc.manifest("hello", "1.0.0")


def test_a_node_forwards_to_the_live_peers_of_its_next_tick_not_a_stale_list() -> None:
    nodes = make_nodes(4, config=SyncConfig(anti_entropy_interval=1e9))
    a, b = nodes["n000"], nodes["n001"]
    b.tick(0.0, [])  # b ticked before it knew any member
    a.tick(0.0, ["n001"])
    a.publish(manifest(), PUBLISHER, 1.0)
    [(_, push)] = [o for o in a.tick(1.0, ["n001"]) if isinstance(o[1], RecordPush)]
    replies = b.receive("n000", push, 1.0)
    assert [type(m).__name__ for _, m in replies] == ["SyncAck"]
    assert b.sync.next_deadline() == 1.0  # the forward is due at once
    out = b.tick(1.0, ["n000", "n001", "n002", "n003"])
    assert sorted(dst for dst, m in out if isinstance(m, RecordPush)) == ["n002", "n003"]


def test_a_peer_cannot_stretch_a_wave_beyond_the_local_hop_bound() -> None:
    nodes = make_nodes(3, config=SyncConfig(anti_entropy_interval=1e9, relay_ttl=5))
    a, b = nodes["n000"], nodes["n001"]
    a.publish(manifest(), PUBLISHER, 1.0)
    u = tuple(a.sync._queue[-1].records)
    b.tick(1.0, ["n000", "n002"])
    b.receive("n000", RecordPush(u, 1, 32), 1.0)
    forwarded = [m for _, m in b.tick(1.0, ["n000", "n002"]) if isinstance(m, RecordPush)]
    assert forwarded and {m.ttl for m in forwarded} == {4}
