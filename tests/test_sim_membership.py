"""Simulation properties of the membership protocol, over seeds and fault schedules.

Each failing example prints its seed, the scenario as TOML and the command that replays it.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sim_helpers import replay_hint, run, to_toml

from mesh.membership import MemberState, profile
from sim.engine import Simulation
from sim.report import build_report
from sim.scenario import builtin, load, parse

# Issue 8's goal: every live node agrees on the live nodes within 10 virtual s of a heal.
HEAL_AGREEMENT_S = 10.0


def seconds_until_live_nodes_agree(sim: Simulation, since: float, limit: float, step: float = 0.25) -> float | None:
    """Advance the run until every live node holds every live node alive; the time that took, or None."""
    t = since
    while True:
        live = frozenset(sim.live_names())
        if all(live <= v for v in sim.views().values()):
            return t - since
        if t - since >= limit:
            return None
        t += step
        sim.run(t)


SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def detection_bound(profile_name: str, n: int) -> float:
    """Crash → dead at every live node, for a loss-free network: what the profile implies.

    First probe of the crashed node within 8 probe intervals (round-robin over n-1 probers
    makes a longer wait vanishingly rare), the probe interval itself, the maximum Lifeguard
    suspicion timeout, and a few gossip rounds to disseminate.
    """
    cfg = profile(profile_name)
    _, hi = cfg.suspicion_timeouts(n)
    return 9 * cfg.probe_interval + hi + 10 * cfg.gossip_interval * math.ceil(math.log10(n + 1))


@SETTINGS
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(12, 40),
    prof=st.sampled_from(["lan", "local"]),
    crash_at=st.floats(15.0, 30.0),
    victims=st.integers(1, 3),
)
def test_every_crash_is_declared_dead_by_every_live_node_within_bound(
    seed: int, n: int, prof: str, crash_at: float, victims: int
) -> None:
    bound = detection_bound(prof, n)
    doc = {
        "nodes": n,
        "profile": prof,
        "duration": round(crash_at + bound + 5, 3),
        "network": {"latency_ms": 2.0, "jitter_ms": 1.0},
        "faults": [{"at": round(crash_at, 3), "action": "crash", "nodes": f"random:{victims}"}],
    }
    sim, report = run(doc, seed)
    hint = replay_hint(doc, seed)
    assert len(report["crashes"]) == victims, hint
    for c in report["crashes"]:
        assert c["all_dead_at"] is not None and c["all_dead_at"] <= bound, f"{c} bound={bound:.1f}" + hint
        assert c["first_suspect_at"] <= c["first_dead_at"] <= c["all_dead_at"], hint
    assert report["false_positives"] == 0, hint
    assert report["converged"], hint


@SETTINGS
@given(seed=st.integers(0, 2**31), n=st.integers(15, 40), loss=st.floats(0.0, 0.10))
def test_no_live_node_is_declared_dead_under_ten_percent_loss(seed: int, n: int, loss: float) -> None:
    doc = {
        "nodes": n,
        "profile": "lan",
        "duration": 150.0,
        "network": {"latency_ms": 5.0, "jitter_ms": 4.0, "loss": round(loss, 4), "reorder": 0.05, "duplicate": 0.01},
    }
    sim, report = run(doc, seed)
    hint = replay_hint(doc, seed)
    assert report["false_positives"] == 0, f"{report['false_positive_events']}" + hint
    assert report["converged"], hint


@SETTINGS
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(10, 30),
    split=st.floats(0.2, 0.8),
    start=st.floats(10.0, 20.0),
    length=st.floats(5.0, 40.0),
    crash=st.booleans(),
)
def test_partition_heals_and_all_live_nodes_converge(
    seed: int, n: int, split: float, start: float, length: float, crash: bool
) -> None:
    cut = max(1, min(n - 1, int(n * split)))
    scn = parse({"nodes": n})
    a, b = scn.node_name(0), scn.node_name(cut - 1)
    c, d = scn.node_name(cut), scn.node_name(n - 1)
    heal = round(start + length, 3)
    faults = [
        {"at": round(start, 3), "action": "partition", "groups": [f"{a}-{b}", f"{c}-{d}"]},
        {"at": heal, "action": "heal"},
    ]
    if crash:
        faults.append({"at": round(start + 1, 3), "action": "crash", "node": d})
    doc = {"nodes": n, "profile": "lan", "duration": heal + 120.0, "network": {"latency_ms": 3.0, "loss": 0.01}, "faults": faults}
    hint = replay_hint(doc, seed)
    sim = Simulation(parse(doc), seed)
    sim.run(heal)
    agreed = seconds_until_live_nodes_agree(sim, heal, limit=HEAL_AGREEMENT_S)
    assert agreed is not None, f"live nodes still disagree {HEAL_AGREEMENT_S}s after the heal" + hint
    sim.run()
    report = build_report(sim)
    assert report["converged"], f"views={ {k: len(v) for k, v in sim.views().items()} }" + hint
    # Every death of a live node is explained by the partition (decided by a node cut off from it).
    assert report["false_positives_other"] == 0, f"{report['false_positive_events']}" + hint
    if crash:
        assert report["crashes"][0]["all_dead_at"] is not None, hint


@SETTINGS
@given(seed=st.integers(0, 2**31), n=st.integers(10, 40), loss=st.floats(0.0, 0.05))
def test_metadata_updates_reach_every_live_node(seed: int, n: int, loss: float) -> None:
    scn = parse({"nodes": n})
    doc = {
        "nodes": n,
        "duration": 60.0,
        "network": {"latency_ms": 2.0, "loss": round(loss, 4)},
        "faults": [
            {"at": 20.0, "action": "meta", "node": scn.node_name(1), "labels": {"gpu": "1"}, "load": 0.5},
            {"at": 25.0, "action": "meta", "node": scn.node_name(n - 1), "fault_domain": "eu/depot/truck-9"},
            {"at": 30.0, "action": "meta", "node": scn.node_name(1), "load": 0.9},
        ],
    }
    sim, report = run(doc, seed)
    hint = replay_hint(doc, seed)
    assert report["meta_updates_reached_all"], hint
    seen = sim.nodes[scn.node_name(0)].core.swim.members[scn.node_name(1)].meta
    assert seen.load == 0.9 and seen.label("gpu") == "1", hint


def test_restart_rejoins_with_a_new_incarnation() -> None:
    doc = {
        "nodes": 20,
        "duration": 150.0,
        "network": {"latency_ms": 2.0},
        "faults": [{"at": 20.0, "action": "crash", "node": "n005"}, {"at": 70.0, "action": "restart", "node": "n005"}],
    }
    sim, report = run(doc, 11)
    hint = replay_hint(doc, 11)
    assert report["crashes"][0]["all_dead_at"] is not None, hint
    assert report["converged"], hint
    inc = {sim.nodes[n].core.swim.members["n005"].incarnation for n in sim.live_names() if n != "n005"}
    assert len(inc) == 1 and inc.pop() > 0, hint  # refuted its own tombstone


def test_graceful_leave_is_left_everywhere_and_no_false_positive() -> None:
    doc = {"nodes": 20, "duration": 60.0, "faults": [{"at": 20.0, "action": "leave", "node": "n007"}]}
    sim, report = run(doc, 5)
    hint = replay_hint(doc, 5)
    assert report["false_positives"] == 0, hint
    for n in sim.live_names():
        assert sim.nodes[n].core.swim.members["n007"].state == MemberState.LEFT, hint
    assert report["converged"], hint


def test_slow_node_and_drifting_clocks_are_not_declared_dead() -> None:
    doc = {
        "nodes": 25,
        "duration": 120.0,
        "network": {"latency_ms": 2.0, "loss": 0.01},
        "faults": [
            {"at": 10.0, "action": "slow", "node": "n003", "delay_ms": 900.0},
            {"at": 10.0, "action": "clock", "nodes": ["n004", "n005"], "skew": 3600.0, "drift": 0.05},
        ],
    }
    sim = Simulation(parse(doc), 3)
    about: list[tuple[str, str]] = []
    sim.observers.append(lambda s, observer, ev: about.append((observer, ev.kind)) if ev.node == "n003" else None)
    sim.run()
    report = build_report(sim)
    hint = replay_hint(doc, 3)
    assert report["false_positives"] == 0, hint
    assert report["converged"], hint
    # Answering 900 ms late, n003 misses probe timeouts and is suspected (at 700 ms its acks landed
    # inside the 1 s probe interval so often that seed 3 saw no suspicion at all once the probe
    # timeout stopped being scaled by local health); it refutes every time, so nobody ever declares
    # it dead, and every suspicion of it ends with an alive verdict at that observer.
    suspected = [o for o, k in about if k == "suspect"]
    assert suspected, "the 900-ms node was never suspected: the scenario no longer tests refutation" + hint
    assert not [o for o, k in about if k == "dead"], hint
    for observer in set(suspected):
        kinds = [k for o, k in about if o == observer and k in ("suspect", "alive")]
        assert kinds[-1] == "alive", f"{observer} still suspects n003" + hint
    swim = sim.nodes["n003"].core.swim
    assert swim.counters["refutes"] >= 1 and swim.incarnation == swim.counters["refutes"], hint


def test_mute_node_heard_again_does_not_kill_healthy_third_parties() -> None:
    # n007's datagrams are all lost for 30 s (it still hears everyone, and its push-pull streams get
    # through). Before issue 8's fix its stale suspicions of everyone, merged by the others, came
    # back as "independent" confirmations and up to 31 healthy nodes were declared dead.
    doc = {
        "nodes": 30,
        "duration": 120.0,
        "network": {"latency_ms": 2.0, "jitter_ms": 1.0, "loss": 0.01},
        "faults": [
            {"at": 20.0, "action": "one_way_loss", "from": "n007", "to": "all", "loss": 1.0},
            {"at": 50.0, "action": "clear_loss"},
        ],
    }
    sim, report = run(doc, 3)  # seed 3 declared 22 healthy nodes dead before the fix
    hint = replay_hint(doc, 3)
    third = [f for f in sim.false_positives if f["node"] != "n007"]
    assert third == [], hint
    assert report["converged"], hint


def test_one_way_loss_node_is_suspected_but_refutes() -> None:
    doc = {
        "nodes": 20,
        "duration": 90.0,
        "faults": [
            {"at": 15.0, "action": "one_way_loss", "from": "n000-n009", "to": "n012", "loss": 1.0},
            {"at": 60.0, "action": "clear_loss"},
        ],
    }
    sim, report = run(doc, 9)
    hint = replay_hint(doc, 9)
    assert report["converged"], hint
    assert sim.nodes["n012"].core.swim.counters["refutes"] >= 1, hint  # it was suspected and refuted


def test_nodes_joining_over_time_are_learned_by_everyone() -> None:
    doc = {
        "nodes": 15,
        "duration": 90.0,
        "faults": [{"at": 20.0, "action": "join", "count": 5}, {"at": 40.0, "action": "join", "count": 5}],
    }
    sim, report = run(doc, 2)
    assert report["nodes"] == 25 and report["live_nodes"] == 25, replay_hint(doc, 2)
    assert report["converged"], replay_hint(doc, 2)


def test_same_seed_same_trace_different_seed_different_trace() -> None:
    doc = {
        "nodes": 30,
        "duration": 60.0,
        "network": {"latency_ms": 4.0, "jitter_ms": 3.0, "loss": 0.02, "reorder": 0.1, "duplicate": 0.02},
        "faults": [{"at": 20.0, "action": "crash", "node": "random:2"}, {"at": 30.0, "action": "partition", "groups": ["n000-n014", "n015-n029"]}, {"at": 45.0, "action": "heal"}],
    }
    _, r1 = run(doc, 42)
    _, r2 = run(doc, 42)
    _, r3 = run(doc, 43)
    assert r1["trace_hash"] == r2["trace_hash"]
    assert {k: v for k, v in r1.items() if k != "wall_seconds" and k != "events_per_second"} == {
        k: v for k, v in r2.items() if k != "wall_seconds" and k != "events_per_second"
    }
    assert r1["trace_hash"] != r3["trace_hash"]


def test_toml_rendering_round_trips() -> None:
    import tomllib

    doc = {"nodes": 5, "network": {"loss": 0.1}, "faults": [{"at": 1.0, "action": "meta", "node": "n001", "labels": {"a": "b"}}]}
    assert tomllib.loads(to_toml(doc)) == doc


@pytest.mark.slow
def test_demo_has_no_unexplained_deaths() -> None:
    # Seed 1 of the built-in demo declared six live nodes dead, on their own side, right after the heal.
    sim = Simulation(load(builtin("demo")), 1)
    sim.run()
    report = build_report(sim)
    assert report["false_positives_other"] == 0, report["false_positive_events"]
    assert report["false_positives_across_partition"] > 0  # the 30-s split itself is still seen
    assert report["converged"]


@pytest.mark.slow
def test_large_even_split_agrees_within_ten_seconds_of_the_heal() -> None:
    # 200 nodes, 50/50 for 60 s: before issue 8's fix agreement took 8.5 to 53.5 s across seeds.
    doc = {
        "nodes": 200,
        "profile": "lan",
        "duration": 110.0,
        "network": {"latency_ms": 2.0, "jitter_ms": 1.0, "loss": 0.01},
        "faults": [
            {"at": 30.0, "action": "partition", "groups": ["n000-n099", "n100-n199"]},
            {"at": 90.0, "action": "heal"},
        ],
    }
    for seed in (1, 2, 3, 4):
        sim = Simulation(parse(doc), seed)
        sim.run(90.0)
        hint = replay_hint(doc, seed)
        assert seconds_until_live_nodes_agree(sim, 90.0, limit=HEAL_AGREEMENT_S) is not None, hint
        sim.run()
        report = build_report(sim)
        assert report["false_positives_other"] == 0, f"{report['false_positive_events']}" + hint
        assert report["converged"], hint
