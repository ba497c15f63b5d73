"""The pure helpers of the lifecycle (mesh/lifecycle.py): the scheduler view built
from membership and the placement document, the spec built from a deployment, incumbents, metrics docs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from crdt.schema import Constraints, DeploymentSpec, PlacementEntry, Preferences, ReplicaClaim
from mesh.lifecycle import build_view, incumbents, placement_spec, replacements
from mesh.membership import NodeMeta
from mesh.membership.state import MemberState
from scheduler import ALIVE, DEAD, DRAINING, LEFT, SUSPECT, PlacementSpec, View, place

from tests.harness.promtool import assert_documented


@dataclass
class _M:
    meta: NodeMeta
    state: MemberState


class _Swim:
    def __init__(self, members: dict[str, _M]) -> None:
        self.members = members

    def coordinate_of(self, name: str) -> Any:
        return None


@dataclass
class _Dep:
    spec: DeploymentSpec


def _entry(node: str, *claims: tuple[str, str, str]) -> PlacementEntry:
    return PlacementEntry(node, tuple(ReplicaClaim(d, v, s, 0) for d, v, s in claims), 1.0)


def test_view_maps_status_meta_failed_marks_and_blob_holdings() -> None:
    swim = _Swim({
        "n1": _M(NodeMeta(arch="aarch64", cores=4, memory_mb=2048, labels=(("gpu", "yes"), ("wasmatrix.coord", "1.50,-2.00,0.00,0.10")),
                          fault_domain="eu/s1/u1", name="one"), MemberState.ALIVE),
        "n2": _M(NodeMeta(), MemberState.SUSPECT),
        "n3": _M(NodeMeta(), MemberState.DEAD),
        "n4": _M(NodeMeta(), MemberState.LEFT),
        "n5": _M(NodeMeta(labels=(("drain", "true"),)), MemberState.ALIVE),
    })
    placements = {"n1": _entry("n1", ("web", "1.0.0", "running"), ("api", "2.0.0", "failed")),
                  "n2": _entry("n2", ("web", "1.0.0", "starting"))}
    view = build_view(swim, placements, {"web": "handler", "api": "other"}, {("handler", "1.0.0"): "ab" * 32})
    rows = {n.node_id: n for n in view.nodes}
    assert [n.node_id for n in view.nodes] == ["n1", "n2", "n3", "n4", "n5"]
    # membership's statuses (place lets a suspect incumbent keep its replica); drain=true drains
    assert [rows[n].status for n in ("n1", "n2", "n3", "n4", "n5")] == [ALIVE, SUSPECT, DEAD, LEFT, DRAINING]
    # the published coordinate (ms in the label, seconds in the view; error 0) and not a label any more
    assert rows["n1"].coord == pytest.approx((0.0015, -0.002, 0.0, 0.0, 0.0001))
    assert rows["n2"].coord is None  # nothing published: no coordinate (not this node's private estimate)
    n1 = rows["n1"]
    assert (n1.arch, n1.cores, n1.memory_mb, n1.labels, n1.zone) == ("aarch64", 4, 2048, (("gpu", "yes"),), "eu/s1/u1")
    assert n1.failed == frozenset({"api"})
    assert n1.blobs == frozenset({"ab" * 32})  # running claims hold their blob
    assert rows["n2"].blobs == frozenset()  # a starting claim may not have it yet


def test_incumbents_are_nodes_holding_or_starting_a_replica() -> None:
    placements = {
        "n1": _entry("n1", ("web", "1.0.0", "running")),
        "n2": _entry("n2", ("web", "1.0.0", "starting")),
        "n3": _entry("n3", ("web", "1.0.0", "stopping")),
        "n4": _entry("n4", ("web", "1.0.0", "failed")),
        "n5": _entry("n5", ("api", "1.0.0", "running")),
    }
    assert incumbents("web", placements) == frozenset({"n1", "n2"})


def test_spec_maps_constraints_preferences_and_display_names() -> None:
    spec = DeploymentSpec(
        "web", "handler", "^1.0.0", replicas=2,
        constraints=Constraints(arch=("arm64",), min_memory_mb=512, labels={"zone": "a", "gpu": "yes"}, hardware=("tpu",)),
        preferences=Preferences(near_label="site=berlin", near_node="one", spread="vehicle"),
    )
    ps = placement_spec(_Dep(spec), "cd" * 32, "counters", {"one": "n1"})
    assert (ps.name, ps.replicas, ps.arch, ps.min_memory_mb) == ("web", 2, ("arm64",), 512)
    assert ps.labels == (("gpu", "yes"), ("zone", "a"))
    assert ps.hardware == ("tpu",)
    assert ps.near_label == ("site", "berlin")
    assert ps.near_node == "n1"  # the display name resolved to the node id
    assert ps.spread == "unit"  # a vehicle is the unit level of region/site/unit
    assert (ps.blob, ps.kv_namespace) == ("cd" * 32, "counters")
    assert placement_spec(_Dep(DeploymentSpec("w", "m", "1.0.0", preferences=Preferences(spread="galaxy"))), None, None, {}).spread is None


def test_a_failed_mark_in_the_placement_document_moves_the_replica() -> None:
    swim = _Swim({n: _M(NodeMeta(), MemberState.ALIVE) for n in ("n1", "n2", "n3")})
    spec = placement_spec(_Dep(DeploymentSpec("web", "handler", "1.0.0", replicas=1)), None, None, {})
    first = place(spec, build_view(swim, {}, {}, {})).nodes
    assert len(first) == 1
    failed = {first[0]: _entry(first[0], ("web", "1.0.0", "failed"))}
    second = place(spec, build_view(swim, failed, {}, {}), incumbents("web", failed)).nodes
    assert len(second) == 1 and second[0] != first[0]


def test_every_lifecycle_metric_is_documented() -> None:
    from pathlib import Path

    from prometheus_client import CollectorRegistry
    from prometheus_client.parser import text_string_to_metric_families

    from mesh.daemon.workloads import WorkloadMetrics
    from mesh.metrics import render

    doc = (Path(__file__).parent.parent / "docs" / "METRICS.md").read_text()
    reg = CollectorRegistry()
    m = WorkloadMetrics(reg)
    m.running.labels(deployment="web").set(1)
    m.decisions.labels(deployment="web").inc()
    m.moved.labels(deployment="web").inc()
    families = [f for f in text_string_to_metric_families(render(reg).decode()) if not f.name.endswith("_created")]
    assert len(families) == 13
    assert_documented(families, doc, free=("deployment",))


def test_event_hub_ring_long_poll_and_subscription() -> None:
    import trio

    from mesh.daemon.workloads import EventHub

    async def main() -> None:
        hub = EventHub("n1", keep=3)
        for i in range(5):
            hub.publish("start", deployment=f"d{i}")
        assert [e["seq"] for e in hub.recent()] == [3, 4, 5]  # the ring keeps the last 3
        assert [e["deployment"] for e in hub.recent(after=4)] == ["d4"]
        assert await hub.wait(5, 0.01) == []  # nothing new: the long poll times out empty
        got: list[dict[str, Any]] = []

        async def follow() -> None:
            async with hub.subscribe() as stream:
                async for ev in stream:
                    got.append(ev)
                    if len(got) == 2:
                        return

        async with trio.open_nursery() as n:
            n.start_soon(follow)
            await trio.sleep(0.01)
            hub.publish("stop", deployment="x")
            await trio.sleep(0.01)
            hub.publish("stopped", deployment="x")
        assert [(e["seq"], e["kind"], e["node"]) for e in got] == [(6, "stop", "n1"), (7, "stopped", "n1")]
        waited = await hub.wait(6, 1.0)
        assert [e["kind"] for e in waited] == ["stopped"]

    trio.run(main)


def test_events_cli_bad_input_and_no_node(tmp_path: Any, capsys: Any) -> None:
    from mesh.cli import main

    assert main(["events", "--limit", "-1", "--data-dir", str(tmp_path)]) == 2
    assert "--limit" in capsys.readouterr().err
    assert main(["events", "--data-dir", str(tmp_path)]) in (1, 2)  # no node runs there: one clear line
    err = capsys.readouterr().err.strip()
    assert err.startswith("wasmatrix") and len(err.splitlines()) == 1


def test_assign_gives_every_node_the_same_placement_and_moves_only_the_dead_nodes_replica() -> None:
    from crdt.schema import DeploymentSpec as Spec
    from mesh.lifecycle import assign
    from tests.crdt.crdt_helpers import OPERATOR, PUBLISHER, make_nodes, manifest

    nodes = make_nodes(5)
    writer = nodes["n000"]
    writer.publish(manifest("handler", "1.0.0"), PUBLISHER, 1.0)
    writer.set_deployment(Spec("web", "handler", "^1.0.0", replicas=2), OPERATOR, 2.0)
    writer.set_deployment(Spec("lazy", "handler", "1.0.0", replicas=0), OPERATOR, 3.0)
    names = sorted(nodes)
    swim = _Swim({n: _M(NodeMeta(), MemberState.ALIVE) for n in names})
    per_node = {n: assign(n, swim, writer.doc, standbys=1) for n in names}
    placed = {a.placements["web"] for a in per_node.values()}
    assert len(placed) == 1  # every node computes the same placement
    ((chosen, version),) = placed
    assert version == "1.0.0" and len(chosen) == 2 and len(set(chosen)) == 2
    assert {n: a.targets["web"].index for n, a in per_node.items() if "web" in a.targets} == {chosen[0]: 0, chosen[1]: 1}
    standbys = [n for n, a in per_node.items() if "web" in a.standby]
    assert len(standbys) == 1 and standbys[0] not in chosen
    assert all(a.on_demand == frozenset({"lazy"}) and "lazy" not in a.targets for a in per_node.values())
    # the first replica's node dies: the standby takes its place, the other replica stays where it is
    swim.members[chosen[0]].state = MemberState.DEAD
    after = assign(standbys[0], swim, writer.doc, standbys=1)
    assert set(after.placements["web"][0]) == {chosen[1], standbys[0]}
    assert "web" in after.targets


def test_standby_of_each_replica_is_the_node_that_replaces_it_in_its_own_fault_domain() -> None:
    """Spread over regions, 2 replicas: one in eu, one in us. When the us host dies its replacement
    must be in us (strict spread), so the us host's standby is the other us node, not the third node
    in spread order (which is back in eu)."""
    from scheduler import NodeInfo

    zones = {"e1": "eu/a/1", "e2": "eu/a/2", "e3": "eu/b/3", "u1": "us/c/1", "u2": "us/c/2"}
    view = View(tuple(NodeInfo(n, zone=z) for n, z in sorted(zones.items())))
    spec = PlacementSpec("web", 2, spread="region")
    chosen = place(spec, view).nodes
    by_region = {zones[n].split("/")[0]: n for n in chosen}
    assert sorted(by_region) == ["eu", "us"]
    spare = replacements(spec, view, frozenset(chosen), chosen)
    assert len(spare) == 2
    us_spare = spare[chosen.index(by_region["us"])]
    eu_spare = spare[chosen.index(by_region["eu"])]
    # the other us node stands by for the us replica; an eu node for the eu one
    assert us_spare == ({"u1", "u2"} - {by_region["us"]}).pop()
    assert zones[eu_spare].startswith("eu/") and eu_spare != by_region["eu"]
    # and it is what place() really does once the host is gone
    gone = by_region["us"]
    rest = View(tuple(n for n in view.nodes if n.node_id != gone))
    assert set(place(spec, rest, frozenset(chosen) - {gone}).nodes) == {by_region["eu"], us_spare}


def test_agreement_digests_follow_what_placement_depends_on_and_ignore_dead_members() -> None:
    from crdt.schema import DeploymentSpec as Spec
    from mesh.lifecycle import assign, digests
    from tests.crdt.crdt_helpers import OPERATOR, PUBLISHER, make_nodes, manifest

    nodes = make_nodes(4)
    writer = nodes["n000"]
    writer.publish(manifest("handler", "1.0.0"), PUBLISHER, 1.0)
    writer.set_deployment(Spec("web", "handler", "^1.0.0", replicas=2), OPERATOR, 2.0)
    names = sorted(nodes)
    members = {n: _M(NodeMeta(), MemberState.ALIVE) for n in names}
    swim = _Swim(members)
    # every node digests the same evaluation alike (members listed in any order)
    d = {n: digests(assign(n, swim, writer.doc)) for n in names}
    assert len(set(d.values())) == 1
    base = d[names[0]]
    assert all(len(x) == 12 for x in base)
    shuffled = _Swim(dict(reversed(list(members.items()))))
    assert digests(assign(names[1], shuffled, writer.doc)) == base
    # a dead member is never a candidate and nodes reap it at different times: not in the view digest
    more = _Swim({**members, "zz-dead": _M(NodeMeta(), MemberState.DEAD)})
    assert digests(assign(names[0], more, writer.doc))[0] == base[0]
    # a published coordinate is part of the view (every node reads the same label)
    coord = _Swim({**members, names[3]: _M(NodeMeta(labels=(("wasmatrix.coord", "1.00,2.00,0.00,0.10"),)), MemberState.ALIVE)})
    assert digests(assign(names[0], coord, writer.doc))[0] != base[0]
    # a failed mark in the placement document changes the view; the new deployment revision the specs
    chosen = assign(names[0], swim, writer.doc).placements["web"][0]
    failed = {chosen[0]: _entry(chosen[0], ("web", "1.0.0", "failed"))}
    v, s, p = digests(assign(names[0], swim, writer.doc, failed))
    assert v != base[0] and s == base[1] and p != base[2]  # the failed node no longer chosen
    writer.set_deployment(Spec("web", "handler", "^1.0.0", replicas=3), OPERATOR, 3.0)
    v, s, p = digests(assign(names[0], swim, writer.doc))
    assert v == base[0] and s != base[1] and p != base[2]
