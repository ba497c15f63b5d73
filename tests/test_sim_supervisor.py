"""The simulator drives the daemon's supervisor core (issue 11, "Simulator").

Expected times come from the restart policy in docs/LIFECYCLE.md, computed by hand: with ``n``
failures in the window the restart comes ``min(0.2 s x 2^(n-1), 30 s)`` later, the 5th failure
marks the replica failed, and every start takes the scenario's ``start_delay`` (0.5 s default).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from sim.engine import Simulation
from sim.scenario import ScenarioError, parse
from tests.sim_helpers import replay_hint, run
from tests.test_sim_placement import BASE, check_steady, eligible

CRASH_AT = 20.0


def _before(seed: int) -> tuple[str, dict[str, list[str]]]:
    """What runs just before the fault, and a node running a ``web`` replica (not n000, the ``near`` anchor)."""
    sim = Simulation(parse(BASE), seed)
    sim.run(CRASH_AT - 0.1)
    assert sim.placement is not None
    placed = sim.placement.running()
    return [n for n in placed["web"] if n != "n000"][0], placed


def _doc(victim: str, fail_starts: int, duration: float = 45.0) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    doc["duration"] = duration
    doc["faults"] = [{"at": CRASH_AT, "action": "crash_replica", "node": victim, "deployment": "web", "fail_starts": fail_starts}]
    return doc


def _log(sim: Simulation, node: str, dep: str = "web") -> list[tuple[float, str]]:
    assert sim.placement is not None
    return [(round(t, 6), kind) for t, n, kind, d in sim.placement.log if n == node and d == dep and t >= CRASH_AT]


@pytest.mark.parametrize("seed", [1, 2])
def test_a_replica_whose_starts_keep_failing_backs_off_then_is_marked_failed_and_moves(seed: int) -> None:
    victim, placed = _before(seed)
    doc = _doc(victim, fail_starts=10)
    sim, r = run(doc, seed)
    hint = replay_hint(doc, seed)
    # By hand: crash at 20.0 (failure 1) -> restart +0.2 = 20.2, fails +0.5 = 20.7 (2) -> +0.4 = 21.1,
    # fails 21.6 (3) -> +0.8 = 22.4, fails 22.9 (4) -> +1.6 = 24.5, fails 25.0 (5) -> failed mark.
    assert _log(sim, victim) == [
        (20.0, "crashed"),
        (20.2, "restart"), (20.7, "start_failed"),
        (21.1, "restart"), (21.6, "start_failed"),
        (22.4, "restart"), (22.9, "start_failed"),
        (24.5, "restart"), (25.0, "start_failed"),
        (25.0, "stop"), (25.0, "failed"), (25.0, "stopped"),
    ], hint
    p = sim.placement
    assert p is not None
    live = sim.live_names()
    assert sim.converged() and p.agreed(), hint
    # Every live node agrees the replica moved off the failed node; three still run, one per region.
    web = {n: p.targets(n)["web"].nodes for n in live}
    assert len(set(web.values())) == 1 and victim not in web[live[0]], (web, hint)
    running = p.running()
    assert victim not in running["web"] and len(running["web"]) == 3, (running, hint)
    assert set(running["web"]) <= set(eligible(sim, BASE["deployments"][0], live)) - {victim}
    regions = [dict(sim.nodes[n].core.meta.labels)["zone"] for n in running["web"]]
    assert len(set(regions)) == 3, (regions, hint)
    # Only the failed replica moved: one new web node, the other deployments untouched.
    assert len(set(running["web"]) - set(placed["web"])) == 1, (placed, running, hint)
    assert {d: running[d] for d in ("api", "arm", "near")} == {d: placed[d] for d in ("api", "arm", "near")}, hint
    rep = r["placement"]
    assert rep["restarts"] == 4 and rep["failed_marks"] == 1 and rep["failed"] == {victim: ["web"]}, (rep, hint)


def test_a_crashed_replica_restarts_after_the_first_backoff_and_stays() -> None:
    seed = 3
    victim, placed = _before(seed)
    doc = _doc(victim, fail_starts=0, duration=35.0)
    sim, r = run(doc, seed)
    # crash at 20.0 -> restart 0.2 s later -> serving 0.5 s after that
    assert _log(sim, victim) == [(20.0, "crashed"), (20.2, "restart"), (20.7, "running")], replay_hint(doc, seed)
    check_steady(sim, doc, seed)
    assert sim.placement is not None and sim.placement.running() == placed  # nothing moved
    assert r["placement"]["restarts"] == 1 and r["placement"]["failed_marks"] == 0


def test_same_seed_same_trace_with_a_crashing_replica() -> None:
    doc = _doc("n001", fail_starts=10, duration=30.0)
    _, r1 = run(doc, 4)
    _, r2 = run(doc, 4)
    assert r1["trace_hash"] == r2["trace_hash"] and r1["placement"] == r2["placement"]


def test_the_failed_mark_expires_after_the_hold_and_the_node_is_eligible_again() -> None:
    seed = 1
    victim, _ = _before(seed)
    doc = _doc(victim, fail_starts=4, duration=340.0)  # 1 crash + 4 failed starts = 5 failures
    sim, r = run(doc, seed)
    assert sim.placement is not None
    # marked failed at 25.0, held 300 s: no failed mark at the end, nothing announced as failed
    assert (25.0, "failed") in _log(sim, victim)
    assert r["placement"]["failed"] == {}
    assert all("wasmatrix.failed" not in dict(sim.nodes[n].core.meta.labels) for n in sim.live_names())
    check_steady(sim, doc, seed)


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ({"action": "crash_replica", "node": "n001"}, "crash_replica needs 'deployment'"),
        ({"action": "crash_replica", "deployment": "web"}, "crash_replica needs 'node' or 'nodes'"),
        ({"action": "crash_replica", "node": "n001", "deployment": "db"}, "deployment 'db' is not in"),
        ({"action": "crash_replica", "node": "n001", "deployment": "web", "fail_starts": -1}, "fail_starts must be an integer"),
        ({"action": "crash_replica", "node": "n001", "deployment": "web", "times": 3}, "unknown key.s. times"),
    ],
)
def test_bad_crash_replica_faults_are_refused(fault: dict[str, Any], message: str) -> None:
    doc = {"nodes": 3, "deployments": [{"name": "web"}], "faults": [{"at": 1.0, **fault}]}
    with pytest.raises(ScenarioError, match=message):
        parse(doc)
