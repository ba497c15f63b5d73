"""Hypothesis properties of place(): order independence, constraints, counts, spread, churn, noise.

The oracle for eligibility is written here from the spec (issue 11), not taken from scheduler.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from scheduler import ALIVE, DEAD, DRAINING, SUSPECT, NodeInfo, PlacementSpec, View, explain, place

ARCHES = ("x86_64", "amd64", "aarch64", "arm64", "armv7l", "riscv64")
CANON = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64", "armv7l": "armv7l", "riscv64": "riscv64"}
# Which spec names accept which canonical host (seed R11 matrix as documented in docs/SCHEDULER.md).
ACCEPTS = {"x86_64": {"x86_64"}, "arm64": {"aarch64"}, "arm": {"aarch64", "armv7l"}, "riscv64": {"riscv64"}}
ZONES = tuple(f"r{r}/s{s}" for r in range(3) for s in range(3))

SETTINGS = settings(max_examples=35, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def nodes(draw: st.DrawFn, min_size: int = 0, max_size: int = 24, statuses: tuple[str, ...] = (ALIVE, ALIVE, ALIVE, SUSPECT, DRAINING, DEAD)) -> list[NodeInfo]:
    n = draw(st.integers(min_size, max_size))
    out = []
    for i in range(n):
        out.append(NodeInfo(
            node_id=f"n{i:02d}",
            status=draw(st.sampled_from(statuses)),
            arch=draw(st.sampled_from(ARCHES)),
            cores=draw(st.sampled_from((1, 2, 4))),
            memory_mb=draw(st.sampled_from((512, 1024, 4096))),
            labels=tuple(sorted(draw(st.sets(st.sampled_from((("tier", "edge"), ("gpu", "yes"))))))),
            hardware=tuple(sorted(draw(st.sets(st.sampled_from(("tpm", "cam")))))),
            zone=draw(st.sampled_from(ZONES)),
            load=draw(st.sampled_from((0.0, 0.25, 0.5, 0.75, 1.0))),
            coord=(draw(st.floats(0, 0.05)), draw(st.floats(0, 0.05)), 0.1, 0.0, 0.005),
            blobs=frozenset({"b"}) if draw(st.booleans()) else frozenset(),
        ))
    return out


@st.composite
def specs(draw: st.DrawFn, near: bool = True) -> PlacementSpec:
    return PlacementSpec(
        name=draw(st.sampled_from(("web", "api", "db"))),
        replicas=draw(st.integers(0, 6)),
        arch=tuple(draw(st.sets(st.sampled_from(tuple(ACCEPTS))))),
        min_memory_mb=draw(st.sampled_from((0, 1024))),
        min_cores=draw(st.sampled_from((0, 2))),
        labels=tuple(sorted(draw(st.sets(st.sampled_from((("tier", "edge"),)))))),
        hardware=tuple(draw(st.sets(st.sampled_from(("tpm",))))),
        near_node=draw(st.sampled_from((None, "n00", "n03"))) if near else None,
        spread=draw(st.sampled_from((None, "region", "site"))),
        blob=draw(st.sampled_from((None, "b"))),
    )


def eligible(spec: PlacementSpec, n: NodeInfo, incumbents: frozenset[str] = frozenset()) -> bool:
    """The hard filters, from the spec."""
    if not (n.status == ALIVE or (n.status == SUSPECT and n.node_id in incumbents)):
        return False
    if spec.arch and CANON[n.arch] not in set().union(*(ACCEPTS[a] for a in spec.arch)):
        return False
    return (n.memory_mb >= spec.min_memory_mb and n.cores >= spec.min_cores and all(lab in n.labels for lab in spec.labels)
            and all(t in n.hardware for t in spec.hardware) and spec.name not in n.failed)


def domain(n: NodeInfo, level: str) -> str:
    return "/".join(n.zone.split("/")[: {"region": 1, "site": 2, "unit": 3}[level]])


@SETTINGS
@given(nodes(), specs(), st.randoms(use_true_random=False), st.sets(st.sampled_from([f"n{i:02d}" for i in range(24)])))
def test_order_independent_and_constraints_hold(ns: list[NodeInfo], spec: PlacementSpec, rnd: random.Random, inc: set[str]) -> None:
    inc_f = frozenset(inc)
    p = place(spec, View(tuple(ns)), inc_f)
    shuffled = list(ns)
    rnd.shuffle(shuffled)
    assert place(spec, View(tuple(shuffled)), frozenset(sorted(inc, reverse=True))) == p
    ok = [n for n in ns if eligible(spec, n, inc_f)]
    by_id = {n.node_id: n for n in ns}
    assert len(p.nodes) == min(max(spec.replicas, 0), len(ok))
    assert len(set(p.nodes)) == len(p.nodes)
    assert all(eligible(spec, by_id[x], inc_f) for x in p.nodes)
    if spec.spread and spec.replicas > 0:
        domains = {domain(n, spec.spread) for n in ok}
        chosen = [domain(by_id[x], spec.spread) for x in p.nodes]
        if len(domains) >= spec.replicas:
            assert len(set(chosen)) == len(chosen)  # no two replicas in one domain when avoidable
        else:
            assert set(chosen) == domains  # every domain is used before any is used twice


@SETTINGS
@given(nodes(min_size=1, statuses=(ALIVE,)), specs(), st.data())
def test_a_death_moves_only_the_dead_nodes_replicas(ns: list[NodeInfo], spec: PlacementSpec, data: st.DataObject) -> None:
    view = View(tuple(ns))
    steady = place(spec, view, place(spec, view).nodes)  # running with its incumbents passed back
    victim = data.draw(st.sampled_from([n.node_id for n in ns]))
    assume(victim != spec.near_node)  # the proximity origin dying changes every score, legitimately
    after = place(spec, View(tuple(n for n in ns if n.node_id != victim)), frozenset(steady.nodes) - {victim})
    assert set(steady.nodes) - {victim} <= set(after.nodes)
    # and it is also a death seen only as a status change
    dead = View(tuple(n if n.node_id != victim else NodeInfo(n.node_id, status=DEAD, zone=n.zone) for n in ns))
    assert set(place(spec, dead, frozenset(steady.nodes)).nodes) == set(after.nodes)


@SETTINGS
@given(nodes(statuses=(ALIVE,)), specs(), nodes(min_size=1, max_size=1, statuses=(ALIVE,)))
def test_a_join_moves_at_most_one_replica(ns: list[NodeInfo], spec: PlacementSpec, extra: list[NodeInfo]) -> None:
    view = View(tuple(ns))
    steady = place(spec, view, place(spec, view).nodes)
    new = NodeInfo(**{f: getattr(extra[0], f) for f in NodeInfo.__slots__ if f != "node_id"}, node_id="new")  # type: ignore[arg-type]
    after = place(spec, View((*ns, new)), frozenset(steady.nodes))
    assert len(set(after.nodes) - set(steady.nodes)) <= 1
    assert len(set(steady.nodes) - set(after.nodes)) <= 1


@SETTINGS
@given(nodes(statuses=(ALIVE,)), specs(), st.lists(st.floats(-0.0025, 0.0025), min_size=24, max_size=24))
def test_rtt_noise_below_the_margin_moves_nothing(ns: list[NodeInfo], spec: PlacementSpec, noise: list[float]) -> None:
    """An error of up to 2.5 ms on every estimated RTT (docs/SCHEDULER.md: margin 3 ms) moves no replica."""
    view = View(tuple(ns))
    placed = place(spec, view)
    # The height adds to every RTT from that node: shifting it by e shifts its RTT to the origin by e.
    noisy = View(tuple(n if n.node_id == spec.near_node or n.coord is None else
                       NodeInfo(**{f: getattr(n, f) for f in NodeInfo.__slots__ if f != "coord"},  # type: ignore[arg-type]
                                coord=(*n.coord[:-1], n.coord[-1] + noise[i]))
                       for i, n in enumerate(ns)))
    assert set(place(spec, noisy, frozenset(placed.nodes)).nodes) == set(placed.nodes)


@SETTINGS
@given(nodes(), specs())
def test_placing_again_with_its_own_result_as_incumbents_is_stable(ns: list[NodeInfo], spec: PlacementSpec) -> None:
    view = View(tuple(ns))
    first = place(spec, view)
    assert set(place(spec, view, frozenset(first.nodes)).nodes) == set(first.nodes)


@SETTINGS
@given(nodes(), specs(), st.sets(st.sampled_from([f"n{i:02d}" for i in range(24)])))
def test_explain_agrees_with_place_and_the_filters(ns: list[NodeInfo], spec: PlacementSpec, inc: set[str]) -> None:
    view, inc_f = View(tuple(ns)), frozenset(inc)
    rows = explain(spec, view, inc_f)
    assert sorted(r.node_id for r in rows) == sorted(n.node_id for n in ns)
    by_id = {n.node_id: n for n in ns}
    assert {r.node_id for r in rows if r.rejected is None} == {n.node_id for n in ns if eligible(spec, by_id[n.node_id], inc_f)}
    chosen = [r.node_id for r in rows if r.replica is not None]
    assert tuple(chosen) == place(spec, view, inc_f).nodes
    assert [r.replica for r in rows if r.replica is not None] == list(range(len(chosen)))
