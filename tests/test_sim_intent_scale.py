"""Scale of intent in the simulator: per-node verification cost and eager dissemination."""

from __future__ import annotations

from typing import Any

from sim.engine import Simulation
from sim.intent import IntentHarness
from sim.scenario import parse


def scenario(n: int, faults: list[dict[str, Any]], duration: float = 12.0) -> dict[str, Any]:
    return {
        "name": "intent-scale",
        "nodes": n,
        "duration": duration,
        "seeds": 2,
        "join_window": 2.0,
        "network": {"latency_ms": 2.0, "jitter_ms": 1.0, "loss": 0.0},
        "intent": {},
        "faults": faults,
    }


def test_every_simulated_node_verifies_each_record_itself_once() -> None:
    doc = scenario(12, [
        {"at": 5.0, "action": "publish", "node": "n003", "module": "hello", "version": "1.0.0"},
        {"at": 7.0, "action": "deploy", "node": "n008", "name": "web", "module": "hello", "version": "1.0.0"},
    ])
    sim = Simulation(parse(doc), 3)
    sim.run()
    harness = sim.intent
    assert isinstance(harness, IntentHarness)
    live = harness.live_intents()
    assert len(live) == 12 and harness.converged()
    caches = {id(i.doc.records._verified) for _, i in live}
    assert len(caches) == 12  # one cache per node, although the TrustConfig is shared
    for name, i in live:
        # two records in the mesh; a writer never verifies the record it signed
        signed_here = {"n003": 1, "n008": 1}.get(name, 0)
        assert len(i.doc.records._verified) == 2 - signed_here, f"seed=3 {name}"


def test_a_registry_update_reaches_all_100_simulated_nodes_by_the_eager_wave_alone() -> None:
    # Anti-entropy every 1000 s: after the first round at boot, only push + forwarding runs.
    doc = scenario(100, [{"at": 6.0, "action": "publish", "node": "n017", "module": "hello", "version": "1.0.0"}], 8.0)
    doc["intent"] = {"anti_entropy_interval": 1000.0}
    sim = Simulation(parse(doc), 7)
    sim.run()
    harness = sim.intent
    assert isinstance(harness, IntentHarness)
    (w,) = harness.writes.values()
    assert sorted(w.visible) == sorted(sim.live_names())
    # 2 ± 1 ms links: ≤ relay_ttl (10) hops of at most 3 ms each
    assert max(w.visible.values()) - w.acked_at <= 10 * 0.003
