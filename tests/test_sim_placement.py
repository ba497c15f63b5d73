"""Placement in the simulator (issue 11, "Simulator"): every node places with its own view.

Expected outcomes come from the spec: agreement once membership converged, exactly
min(replicas, eligible) replicas on live nodes meeting the constraints (checked here against the
nodes' own metadata, not through the scheduler), a crash moving only the crashed node's
replicas, each side of a partition placing what it can and no surplus after the heal.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sim.engine import Simulation
from sim.report import build_report, render_text
from sim.scenario import ScenarioError, parse
from tests.sim_helpers import replay_hint, run

BASE: dict[str, Any] = {
    "name": "placement",
    "nodes": 10,
    "duration": 40.0,
    "profile": "lan",
    "join_window": 2.0,
    "arch_mix": ["x86_64", "aarch64"],
    # A short push-pull period repairs a metadata update that gossip lost (e.g. across a partition).
    "profile_overrides": {"push_pull_interval": 5.0},
    "deployments": [
        {"name": "web", "replicas": 3, "spread": "region"},
        {"name": "api", "replicas": 2, "labels": {"zone": "r1"}},
        {"name": "arm", "replicas": 2, "arch": ["arm64"], "min_memory_mb": 2048},
        {"name": "near", "replicas": 2, "near": "n000"},
    ],
}

ARM = {"aarch64", "arm64"}


def eligible(sim: Simulation, dep: dict[str, Any], names: list[str]) -> list[str]:
    """The nodes of ``names`` whose own metadata satisfies ``dep`` (the spec, by hand)."""
    out = []
    for n in names:
        meta = sim.nodes[n].core.meta
        labels = dict(meta.labels)
        if any(labels.get(k) != v for k, v in dep.get("labels", {}).items()):
            continue
        if dep.get("arch") and meta.arch not in ARM:
            continue
        if meta.memory_mb < dep.get("min_memory_mb", 0):
            continue
        out.append(n)
    return out


def running(sim: Simulation) -> dict[str, list[str]]:
    assert sim.placement is not None
    return sim.placement.running()


def check_steady(sim: Simulation, doc: dict[str, Any], seed: int) -> None:
    hint = replay_hint(doc, seed)
    # Nodes a crash_replica fault made fail every start: the supervisor may have marked them failed
    # (only those), and placement must then leave them out of that deployment.
    injected = {(f["node"], f["deployment"]) for f in doc.get("faults", []) if f["action"] == "crash_replica"}
    assert sim.converged(), "membership did not converge" + hint
    p = sim.placement
    assert p is not None
    live = sim.live_names()
    assert p.agreed(), {n: p.targets(n) for n in live}.__repr__()[:2000] + hint
    run_now = running(sim)
    failed = {(n, d) for n, ds in p.report()["failed"].items() for d in ds}
    assert failed <= injected, (failed, injected, hint)
    for dep in doc["deployments"]:
        ok = [n for n in eligible(sim, dep, live) if (n, dep["name"]) not in failed]
        nodes = run_now[dep["name"]]
        assert len(nodes) == min(dep["replicas"], len(ok)), (dep["name"], nodes, ok, hint)
        assert set(nodes) <= set(ok), (dep["name"], nodes, ok, hint)
        # what runs is what every node computes
        assert set(nodes) == set(p.targets(live[0])[dep["name"]].nodes), hint
        if dep.get("spread") == "region":
            regions = [dict(sim.nodes[n].core.meta.labels)["zone"] for n in nodes]
            assert len(set(regions)) == len(regions), (regions, hint)


def test_same_seed_same_trace_and_placement() -> None:
    _, r1 = run(BASE, 4)
    _, r2 = run(BASE, 4)
    _, r3 = run(BASE, 5)
    assert r1["trace_hash"] == r2["trace_hash"] and r1["placement"] == r2["placement"]
    assert r1["trace_hash"] != r3["trace_hash"]
    assert "placement:" in render_text(r1)


def test_a_scenario_without_deployments_has_no_placement() -> None:
    doc = {k: v for k, v in BASE.items() if k != "deployments"}
    sim, r = run(doc, 4)
    assert sim.placement is None and "placement" not in r


def test_steady_state_and_report() -> None:
    sim, r = run(BASE, 1)
    check_steady(sim, BASE, 1)
    p = r["placement"]
    assert p["changes"][0]["action"] == "start" and p["changes"][0]["converged_after"] is not None
    assert p["replicas_started"] >= 9  # 3 + 2 + 2 + 2 at least, once each
    assert {d: len(v["running"]) for d, v in p["deployments"].items()} == {"web": 3, "api": 2, "arm": 2, "near": 2}


def test_one_crash_moves_only_the_crashed_nodes_replicas() -> None:
    for seed in (1, 2, 3):
        sim = Simulation(parse(BASE), seed)
        sim.run(25.0)
        check_steady(sim, BASE, seed)
        before = running(sim)
        # crash a node that runs a replica
        victim = sorted({n for ns in before.values() for n in ns if n != "n000"})[seed % 3]
        doc = copy.deepcopy(BASE)
        doc["duration"] = 55.0
        doc["faults"] = [{"at": 25.0, "action": "crash", "node": victim}]
        sim = Simulation(parse(doc), seed)
        sim.run()
        check_steady(sim, doc, seed)
        after = running(sim)
        lost = 0
        for dep, nodes in before.items():
            kept = set(nodes) - {victim}
            assert kept <= set(after[dep]), (dep, nodes, after[dep], replay_hint(doc, seed))
            lost += victim in nodes
        ch = [c for c in sim.placement.report()["changes"] if c["action"] == "crash"][0]
        assert ch["nodes"] == [victim]
        assert ch["replicas_stopped"] == lost and ch["replicas_started"] == lost  # one replacement per lost replica
        assert ch["converged_after"] is not None


def test_joining_nodes_move_at_most_one_replica_per_deployment() -> None:
    doc = copy.deepcopy(BASE)
    doc["duration"] = 55.0
    doc["faults"] = [{"at": 25.0, "action": "join", "count": 2}]
    for seed in (1, 2):
        sim = Simulation(parse(doc), seed)
        sim.run(24.9)
        before = running(sim)
        sim.run()
        check_steady(sim, doc, seed)
        after = running(sim)
        for dep in before:
            assert len(set(after[dep]) - set(before[dep])) <= 1, (dep, before, after, replay_hint(doc, seed))
        ch = [c for c in sim.placement.report()["changes"] if c["action"] == "join"][0]
        assert ch["nodes"] == ["n010", "n011"]
        # the new nodes had to learn the membership and compute their placement first
        assert ch["converged_after"] is not None and ch["converged_after"] > 0


def test_partition_each_side_places_what_it_can_and_the_heal_leaves_no_surplus() -> None:
    doc = copy.deepcopy(BASE)
    doc["duration"] = 90.0
    doc["faults"] = [{"at": 20.0, "action": "partition", "groups": ["n000-n004", "n005-n009"]},
                     {"at": 55.0, "action": "heal"}]
    for seed in (1, 2):
        sim = Simulation(parse(doc), seed)
        sim.run(54.9)
        hint = replay_hint(doc, seed)
        sides = (["n000", "n001", "n002", "n003", "n004"], ["n005", "n006", "n007", "n008", "n009"])
        now = running(sim)
        for dep in doc["deployments"]:
            for side in sides:
                on_side = [n for n in now[dep["name"]] if n in side]
                assert len(on_side) == min(dep["replicas"], len(eligible(sim, dep, side))), (dep["name"], side, now, hint)
        sim.run()
        check_steady(sim, doc, seed)  # exactly min(replicas, eligible) again: the surplus stopped
        heal = [c for c in sim.placement.report()["changes"] if c["action"] == "heal"][0]
        assert heal["replicas_stopped"] > 0 and heal["converged_after"] is not None


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"deployments": [{"name": "web", "replicas": 1, "colour": "red"}]}, "unknown deployments[0] key(s): colour"),
        ({"deployments": [{"name": "web", "spread": "planet"}]}, "deployments[0].spread must be one of region, site, unit"),
        ({"deployments": [{"name": "a,b"}]}, "deployments[0].name must be"),
        ({"deployments": [{"name": "w"}, {"name": "w"}]}, "deployments[1].name 'w' is used twice"),
        ({"deployments": [{"name": "w", "replicas": -1}]}, "deployments[0].replicas must be an integer"),
        ({"deployments": [{"name": "w", "labels": {"k": 1}}]}, "deployments[0].labels must be a table of strings"),
        ({"deployments": [{"name": "w", "near_location": [100, 0]}]}, "deployments[0].near_location must be"),
        ({"deployments": [{"name": "w", "weights": {"gravity": 1.0}}]}, "deployments[0].weights must be a table"),
        ({"placement": {"incumbents": "maybe"}}, "placement.incumbents must be 'gossip' or 'none'"),
        ({"placement": {"start_delay": -1}}, "placement.start_delay must be a number"),
        ({"placement": {"speed": 1}}, "unknown placement key(s): speed"),
    ],
)
def test_bad_deployment_keys_are_refused(patch: dict[str, Any], message: str) -> None:
    doc = {"nodes": 3, **patch}
    with pytest.raises(ScenarioError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        parse(doc)


SCHEDULES = st.lists(
    st.tuples(st.sampled_from(["crash", "restart", "leave", "crash", "crash_replica"]), st.integers(1, 9), st.floats(12.0, 30.0)),
    min_size=1, max_size=3,
)


def _fault(action: str, i: int, at: float) -> dict[str, Any]:
    f: dict[str, Any] = {"at": round(at, 3), "action": action, "node": f"n{i:03d}"}
    if action == "crash_replica":  # the web replica there crashes and every later start of it fails
        f.update(deployment="web", fail_starts=1000)
    return f


def _property(seed: int, schedule: list[tuple[str, int, float]], incumbents: str, nodes: int) -> None:
    doc = copy.deepcopy(BASE)
    doc["nodes"] = nodes
    doc["duration"] = 75.0
    doc["placement"] = {"incumbents": incumbents}
    doc["faults"] = [_fault(a, i, at) for a, i, at in sorted(schedule, key=lambda x: x[2])]
    sim, r = run(doc, seed)
    check_steady(sim, doc, seed)
    changes = r["placement"]["changes"]
    assert changes[-1]["converged_after"] is not None, (changes, replay_hint(doc, seed))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), schedule=SCHEDULES, incumbents=st.sampled_from(["gossip", "none"]))
@example(seed=0, schedule=[("leave", 2, 12.0), ("restart", 2, 16.0)], incumbents="gossip")  # a left node restarted
@example(seed=1, schedule=[("crash_replica", 1, 12.0), ("crash", 1, 20.0), ("restart", 1, 25.0)], incumbents="gossip")
def test_property_converged_views_give_one_placement_meeting_constraints(seed: int, schedule: list[tuple[str, int, float]], incumbents: str) -> None:
    _property(seed, schedule, incumbents, 10)


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), schedule=SCHEDULES, incumbents=st.sampled_from(["gossip", "none"]))
def test_property_more_seeds_bigger_mesh(seed: int, schedule: list[tuple[str, int, float]], incumbents: str) -> None:
    _property(seed, schedule, incumbents, 24)
