"""Serving sync requests is throttled per peer: a peer asking for large ranges in a loop gets the
bucket's rate, honest anti-entropy (steady state and a fresh node catching up) is never throttled."""

from __future__ import annotations

import random

from crdt.heads import RecordsRequest
from crdt.intent import IntentNode
from crdt.sync import SyncConfig
from crdt_helpers import Pump, converged, key, make_nodes, trust_for


def _bytes_served(out: list) -> int:
    return sum(len(r) for _, m in out for r in getattr(m, "records", ()))


def test_a_peer_asking_for_everything_in_a_loop_gets_the_bucket_rate() -> None:
    cfg = SyncConfig(serve_rate=50_000, serve_burst=200_000)
    a = IntentNode("n000", key("node:n000"), trust_for(["n000", "n001"]), random.Random(1))  # default bucket: 4 MiB
    for i in range(100):
        a.set("app", f"k{i}", bytes([i]) * 3000)  # ~3.2 KB records: ~320 KB in all
    signer = a.node_key.key_id
    everything = RecordsRequest(((signer, 1, 100),))
    full = _bytes_served(a.receive("n001", everything, 0.0))  # what one unthrottled answer costs
    assert full > 300_000 and a.counters.sync_requests_throttled == 0
    a2 = IntentNode("n000", key("node:n000"), trust_for(["n000", "n001"]), random.Random(1), sync_config=cfg)
    for rec in a.doc.records.export():
        a2.doc.add(rec, 4e9)
    served = 0
    for i in range(50):  # 50 requests over 10 s; without the bucket: 50 x 320 KB = 16 MB
        served += _bytes_served(a2.receive("n001", everything, i * 0.2))
    # The bucket (200 KB burst + 50 KB/s for 9.8 s) is the limit, in whole records.
    assert served <= 200_000 + 50_000 * 9.8
    assert served >= 200_000 + 50_000 * 9.8 - 50 * 3200  # it still serves at the rate
    assert a2.counters.sync_requests_throttled == 50  # every request was cut (the burst is below one full answer)
    # Another peer has its own bucket: the hostile one does not starve it.
    assert _bytes_served(a2.receive("n002", everything, 9.8)) >= 200_000 - 3200


def test_honest_anti_entropy_and_catch_up_are_not_throttled() -> None:
    nodes = make_nodes(4, seed=3)
    late = nodes.pop("n003")
    pump = Pump(nodes, seed=4)
    for i in range(600):  # 600 records of ~4 KB, about 2.5 MB, from three writers
        writer = nodes[f"n00{i % 3}"]
        writer.set(f"ns{i % 3}", f"k{i}", bytes([i % 256]) * 4000)
    for _ in range(10):
        pump.step()
    assert converged(nodes)
    # A fresh node joins and pulls everything by anti-entropy, from whichever peer it picks.
    nodes["n003"] = late
    pump.nodes = nodes
    for _ in range(60):
        pump.step()
        if converged(nodes):
            break
    assert converged(nodes) and len(late.doc.records.export()) == 600
    for _ in range(20):  # then steady state
        pump.step()
    for name, n in nodes.items():
        assert n.counters.sync_requests_throttled == 0, name
