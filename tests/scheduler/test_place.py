"""place(): filters, score, spread, rendezvous ties, hysteresis — expected values worked out by hand."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler import (
    DEAD, DRAINING, LEFT, SUSPECT, NodeInfo, PlacementSpec, ScheduleError, View, Weights, arch_compatible,
    canonical_arch, explain, place, placement_digest, reject_reason, view_digest,
)

ROOT = Path(__file__).resolve().parents[2]


def coord(x_ms: float, height_ms: float = 0.0) -> tuple[float, ...]:
    """A 2-d Vivaldi coordinate at x (ms) on one axis: RTT between two = |dx| + both heights."""
    return (x_ms / 1000.0, 0.0, 0.0, 0.0, height_ms / 1000.0)


def ids(p) -> tuple[str, ...]:  # noqa: ANN001
    return p.nodes


# ---------------------------------------------------------------- filters


@pytest.mark.parametrize(
    ("node", "spec", "why"),
    [
        (NodeInfo("a", status=DEAD), PlacementSpec("w", 1), "status dead"),
        (NodeInfo("a", status=LEFT), PlacementSpec("w", 1), "status left"),
        (NodeInfo("a", status=DRAINING), PlacementSpec("w", 1), "status draining"),
        (NodeInfo("a", status=SUSPECT), PlacementSpec("w", 1), "status suspect"),
        (NodeInfo("a", arch="riscv64"), PlacementSpec("w", 1, arch=("x86_64", "arm64")), "arch riscv64 not in x86_64, arm64"),
        (NodeInfo("a", memory_mb=512), PlacementSpec("w", 1, min_memory_mb=1024), "memory 512 MiB < 1024 MiB"),
        (NodeInfo("a", cores=2), PlacementSpec("w", 1, min_cores=4), "cores 2 < 4"),
        (NodeInfo("a", labels=(("tier", "core"),)), PlacementSpec("w", 1, labels=(("tier", "edge"),)), "label tier=edge missing"),
        (NodeInfo("a", hardware=("gpu",)), PlacementSpec("w", 1, hardware=("gpu", "tpm")), "hardware tpm missing"),
        (NodeInfo("a", failed=frozenset({"w"})), PlacementSpec("w", 1), "replica failed here (restart budget spent)"),
    ],
)
def test_each_hard_constraint_rejects_with_its_reason(node: NodeInfo, spec: PlacementSpec, why: str) -> None:
    assert reject_reason(spec, node) == why
    assert place(spec, View((node,))).nodes == ()
    assert place(spec, View((node,))).shortfall == 1


def test_a_node_meeting_every_constraint_is_placed() -> None:
    n = NodeInfo("a", arch="aarch64", cores=4, memory_mb=4096, labels=(("tier", "edge"), ("x", "y")), hardware=("gpu", "tpm"))
    spec = PlacementSpec("w", 1, arch=("arm64",), min_memory_mb=4096, min_cores=4, labels=(("tier", "edge"),), hardware=("tpm",))
    assert reject_reason(spec, n) is None
    assert ids(place(spec, View((n,)))) == ("a",)


def test_suspect_node_keeps_a_replica_it_runs_but_gets_no_new_one() -> None:
    view = View((NodeInfo("a", status=SUSPECT, load=0.0), NodeInfo("b", load=0.9), NodeInfo("c", load=0.9)))
    assert "a" not in ids(place(PlacementSpec("w", 1), view))
    assert ids(place(PlacementSpec("w", 1), view, frozenset({"a"}))) == ("a",)
    assert reject_reason(PlacementSpec("w", 1), view.nodes[0], incumbent=True) is None


def test_draining_incumbent_loses_its_replica() -> None:
    view = View((NodeInfo("a", status=DRAINING), NodeInfo("b")))
    assert ids(place(PlacementSpec("w", 1), view, frozenset({"a"}))) == ("b",)


@pytest.mark.parametrize(
    ("node_arch", "allowed", "ok"),
    [
        ("x86_64", ("amd64",), True),
        ("amd64", ("x86_64",), True),  # nodes reporting Go/Debian names are canonicalised
        ("AMD64", ("x64",), True),
        ("aarch64", ("arm64",), True),
        ("arm64", ("aarch64",), True),
        ("aarch64", ("arm",), True),  # "arm" in a spec accepts both ARM families
        ("armv7l", ("arm",), True),
        ("armv7l", ("aarch64",), False),  # a 32-bit ARM host is not an aarch64 host
        ("riscv64", ("riscv",), True),
        ("riscv64", ("x86_64", "aarch64"), False),
        ("x86_64", ("riscv64",), False),
        ("mips", ("mips",), True),  # unknown architectures match their own name only
        ("mips", ("x86_64",), False),
        ("riscv64", (), True),  # no arch constraint: any host
    ],
)
def test_architecture_compatibility_matrix(node_arch: str, allowed: tuple[str, ...], ok: bool) -> None:
    assert arch_compatible(node_arch, allowed) is ok


def test_canonical_arch() -> None:
    assert [canonical_arch(a) for a in ("amd64", "x64", "arm64", "arm", "armhf", "riscv", "sparc")] == [
        "x86_64", "x86_64", "aarch64", "armv7l", "armv7l", "riscv64", "sparc"]


# ---------------------------------------------------------------- count and score


def test_exactly_min_of_replicas_and_eligible() -> None:
    view = View(tuple(NodeInfo(f"n{i}") for i in range(4)) + (NodeInfo("d", status=DEAD),))
    assert len(place(PlacementSpec("w", 2), view).nodes) == 2
    p = place(PlacementSpec("w", 9), view)
    assert sorted(p.nodes) == ["n0", "n1", "n2", "n3"] and p.shortfall == 5
    assert place(PlacementSpec("w", 0), view).nodes == ()


def test_least_loaded_first() -> None:
    view = View((NodeInfo("a", load=0.9), NodeInfo("b", load=0.1), NodeInfo("c", load=0.5), NodeInfo("d", load=2.0)))
    assert ids(place(PlacementSpec("w", 3), view)) == ("b", "c", "a")


def test_proximity_to_a_node_by_vivaldi_rtt() -> None:
    # origin o at 0; a at 30 ms, b at 5 ms, c at 12 ms, x has no coordinate (neutral 0.5).
    # proximity = 1 / (1 + rtt / 20 ms): o 1.0, b 0.8, c 0.625, x 0.5, a 0.4
    view = View((NodeInfo("o", coord=coord(0)), NodeInfo("a", coord=coord(30)), NodeInfo("b", coord=coord(5)),
                 NodeInfo("c", coord=coord(12)), NodeInfo("x")))
    assert ids(place(PlacementSpec("w", 5, near_node="o"), view)) == ("o", "b", "c", "x", "a")


def test_proximity_to_a_location_by_great_circle_distance() -> None:
    paris, berlin, lisbon = (48.8566, 2.3522), (52.52, 13.405), (38.7223, -9.1393)
    view = View((NodeInfo("berlin", geo=berlin), NodeInfo("lisbon", geo=lisbon), NodeInfo("nowhere"), NodeInfo("paris", geo=paris)))
    # Brussels: Paris 264 km, Berlin 651 km, Lisbon 1717 km; no position scores 0.
    assert ids(place(PlacementSpec("w", 4, near_location=(50.8503, 4.3517)), view)) == ("paris", "berlin", "lisbon", "nowhere")


def test_proximity_to_nodes_carrying_a_label() -> None:
    view = View((NodeInfo("cam1", labels=(("role", "camera"),), coord=coord(0)), NodeInfo("cam2", labels=(("role", "camera"),), coord=coord(100)),
                 NodeInfo("a", coord=coord(50)), NodeInfo("b", coord=coord(97)), NodeInfo("c", coord=coord(20))))
    spec = PlacementSpec("w", 3, near_label=("role", "camera"), labels=())
    # anchors score 1.0; b is 3 ms from cam2, c 20 ms from cam1, a 50 ms from both
    got = ids(place(spec, view))
    assert set(got[:2]) == {"cam1", "cam2"} and got[2] == "b"
    assert ids(place(PlacementSpec("w", 5, near_label=("role", "camera")), view))[2:] == ("b", "c", "a")


def test_data_locality_blob_and_kv_namespace() -> None:
    view = View((NodeInfo("none"), NodeInfo("blob", blobs=frozenset({"h"})), NodeInfo("both", blobs=frozenset({"h"}), kv_namespaces=frozenset({"ns"}))))
    assert ids(place(PlacementSpec("w", 3, blob="h", kv_namespace="ns"), view)) == ("both", "blob", "none")


def test_weights_from_the_spec_change_the_ranking() -> None:
    # a: close (5 ms: proximity 0.8) but busy (load 1.0); b: far (60 ms: 0.25) and idle.
    view = View((NodeInfo("o", coord=coord(0), status=DEAD), NodeInfo("a", coord=coord(5), load=1.0), NodeInfo("b", coord=coord(60), load=0.0)))
    # defaults: a 0.8 + 0 = 0.8; b 0.25 + 0.3 = 0.55
    assert ids(place(PlacementSpec("w", 1, near_node="o"), view)) == ("a",)
    # load-heavy weights: a 0.8; b 0.25 + 1.0 = 1.25
    assert ids(place(PlacementSpec("w", 1, near_node="o", weights=Weights(load=1.0)), view)) == ("b",)


# ---------------------------------------------------------------- spread


def test_spread_takes_one_node_per_domain_before_a_second() -> None:
    # r0 holds the two best nodes; spread over regions takes r0's best, then r1, then r2.
    view = View((NodeInfo("a", zone="r0/s0/v1", load=0.0), NodeInfo("b", zone="r0/s1/v2", load=0.1),
                 NodeInfo("c", zone="r1/s2/v3", load=0.5), NodeInfo("d", zone="r2/s3/v4", load=0.6)))
    assert ids(place(PlacementSpec("w", 3, spread="region"), view)) == ("a", "c", "d")
    assert ids(place(PlacementSpec("w", 3), view)) == ("a", "b", "c")
    # by site every node is its own domain
    assert ids(place(PlacementSpec("w", 3, spread="site"), view)) == ("a", "b", "c")
    # spread weight 0 switches spread off
    assert ids(place(PlacementSpec("w", 3, spread="region", weights=Weights(spread=0.0)), view)) == ("a", "b", "c")


def test_spread_doubles_up_only_when_unavoidable() -> None:
    view = View((NodeInfo("a", zone="r0", load=0.0), NodeInfo("b", zone="r0", load=0.1), NodeInfo("c", zone="r0", load=0.2),
                 NodeInfo("x", zone="r1", load=0.9), NodeInfo("y", zone="r1", load=0.95)))
    # rank 0: a (r0), x (r1); rank 1: b (r0), y (r1) -> a, x, b, y
    assert ids(place(PlacementSpec("w", 4, spread="region"), view)) == ("a", "x", "b", "y")


# ---------------------------------------------------------------- ties, hysteresis, errors


def _hrw_by_hand(dep: str, node: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{dep}\x00{node}".encode(), digest_size=8).digest(), "big")


def test_equal_scores_are_ordered_by_rendezvous_hash() -> None:
    names = [f"n{i:02d}" for i in range(20)]
    view = View(tuple(NodeInfo(n) for n in names))
    for dep in ("web", "api", "x"):
        want = tuple(sorted(names, key=lambda n: _hrw_by_hand(dep, n), reverse=True)[:5])
        assert ids(place(PlacementSpec(dep, 5), view)) == want


def test_incumbent_keeps_its_replica_within_the_hysteresis_margin() -> None:
    # a runs the replica at load 0.5 (0.15 + 0.3 bonus), b is idle (0.3): a stays.
    view = View((NodeInfo("a", load=0.5), NodeInfo("b", load=0.0)))
    assert ids(place(PlacementSpec("w", 1), view)) == ("b",)
    assert ids(place(PlacementSpec("w", 1), view, frozenset({"a"}))) == ("a",)
    # a challenger better by more than the margin takes over: 20 ms closer is 0.4 of proximity.
    view = View((NodeInfo("o", coord=coord(0), status=DEAD), NodeInfo("a", coord=coord(20)), NodeInfo("b", coord=coord(1))))
    assert ids(place(PlacementSpec("w", 1, near_node="o"), view, frozenset({"a"}))) == ("b",)


def test_without_hysteresis_a_few_ms_of_noise_flaps_the_placement() -> None:
    def view(b_ms: float) -> View:
        return View((NodeInfo("o", coord=coord(0), status=DEAD), NodeInfo("a", coord=coord(10)), NodeInfo("b", coord=coord(b_ms))))

    spec0 = PlacementSpec("w", 1, near_node="o", weights=Weights(hysteresis=0.0))
    spec = PlacementSpec("w", 1, near_node="o")
    assert ids(place(spec0, view(11))) == ("a",)
    assert ids(place(spec0, view(9), frozenset({"a"}))) == ("b",)  # 2 ms of noise moves it
    assert ids(place(spec, view(11))) == ("a",)
    assert ids(place(spec, view(8), frozenset({"a"}))) == ("a",)  # with the default margin it stays
    assert ids(place(spec, view(11), frozenset({"a"}))) == ("a",)


def test_non_finite_inputs_rank_last_instead_of_raising() -> None:
    nan, inf = float("nan"), float("inf")
    view = View((NodeInfo("o", coord=coord(0)), NodeInfo("nanload", load=nan), NodeInfo("nancoord", coord=(nan, 0.0, 0.0, 0.0, 0.0)),
                 NodeInfo("infcoord", coord=(inf, 0.0, 0.0, 0.0, 0.0)), NodeInfo("ok", coord=coord(5))))
    assert ids(place(PlacementSpec("w", 2, near_node="o"), view)) == ("o", "ok")
    assert set(place(PlacementSpec("w", 5, near_node="o"), view).nodes) == {"o", "ok", "nanload", "nancoord", "infcoord"}
    geo = View((NodeInfo("inf", geo=(inf, 0.0)), NodeInfo("paris", geo=(48.8566, 2.3522))))
    assert ids(place(PlacementSpec("w", 2, near_location=(48.0, 2.0)), geo)) == ("paris", "inf")


def test_duplicate_node_ids_are_refused() -> None:
    with pytest.raises(ScheduleError, match="'a' more than once"):
        place(PlacementSpec("w", 1), View((NodeInfo("a"), NodeInfo("b"), NodeInfo("a", load=1.0))))


def test_explain_lists_every_node_chosen_first() -> None:
    view = View((NodeInfo("a", load=0.5), NodeInfo("b", status=DEAD), NodeInfo("c", load=0.0), NodeInfo("d", memory_mb=10)))
    rows = explain(PlacementSpec("w", 1, min_memory_mb=100), view)
    assert [(r.node_id, r.replica, r.rejected) for r in rows] == [
        ("c", 0, None), ("a", None, None), ("b", None, "status dead"), ("d", None, "memory 10 MiB < 100 MiB")]
    assert rows[0].score is not None and rows[0].score.load == 1.0 and rows[1].score is not None
    assert rows[1].score.base == pytest.approx(0.5 + 0.3 * 0.5)


def test_digests_ignore_order() -> None:
    nodes = (NodeInfo("a", labels=(("k", "v"),)), NodeInfo("b"))
    assert view_digest(View(nodes)) == view_digest(View(nodes[::-1]))
    assert view_digest(View(nodes)) != view_digest(View((nodes[0],)))
    moved = (NodeInfo("a", labels=(("k", "v"),), coord=coord(3)), NodeInfo("b"))
    assert view_digest(View(moved)) == view_digest(View(nodes))  # coordinates drift: left out by default
    assert view_digest(View(moved), with_coords=True) != view_digest(View(nodes), with_coords=True)
    assert view_digest(View(moved), with_coords=True) == view_digest(View(moved[::-1]), with_coords=True)
    p = [place(PlacementSpec("w", 1), View(nodes)), place(PlacementSpec("v", 2), View(nodes))]
    assert placement_digest(p) == placement_digest(p[::-1])


_CHILD = """
import json, random
from scheduler import NodeInfo, PlacementSpec, View, place
r = random.Random(5)
nodes = [NodeInfo(f"n{i:03d}", zone=f"r{i % 3}/s{i % 7}", load=round(r.random(), 2), labels=(("t", "a" if i % 2 else "b"),),
                  coord=(r.uniform(0, .05), r.uniform(0, .05), 0.1, 0.0, 0.0001)) for i in range(200)]
set_ids = {n.node_id for n in nodes}  # a set: iteration order depends on the hash seed
order = sorted(nodes, key=lambda n: list(set_ids).index(n.node_id))
out = [place(PlacementSpec(name, 5, spread="site", near_node="n007"), View(tuple(order))).nodes for name in ("web", "api", "db")]
out.append(place(PlacementSpec("lbl", 4, labels=(("t", "a"),)), View(tuple(order))).nodes)
print(json.dumps(out))
"""


def test_same_result_under_different_hash_seeds() -> None:
    outs = []
    for seed in ("0", "1", "12345"):
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONHASHSEED=seed)
        proc = subprocess.run([sys.executable, "-c", _CHILD], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        outs.append(json.loads(proc.stdout))
    assert outs[0] == outs[1] == outs[2]
    assert all(len(p) == 5 for p in outs[0][:3]) and len(outs[0][3]) == 4


def _round_robin_by_hand(nodes: list[NodeInfo], dep: str, want: int, level_parts: int) -> tuple[str, ...]:
    """The spec's rule written out naively: key = (round(score / 0.001), hrw, id), no proximity
    preference (0.5 * 1.0), load weight 0.3; domains round-robin."""
    def key(n: NodeInfo) -> tuple[int, int, str]:
        return (round((0.5 + 0.3 * (1.0 - n.load)) / 0.001), _hrw_by_hand(dep, n.node_id), n.node_id)

    order = sorted(nodes, key=key, reverse=True)
    rank: dict[str, int] = {}
    ranked = []
    for i, n in enumerate(order):
        d = "/".join(n.zone.split("/")[:level_parts])
        ranked.append((rank.get(d, 0), i, n.node_id))
        rank[d] = rank.get(d, 0) + 1
    return tuple(x for _, _, x in sorted(ranked)[:want])


@pytest.mark.parametrize(("domains", "want"), [(2, 3), (3, 5), (50, 4), (200, 7), (5, 1)])
def test_spread_on_a_large_view_matches_the_rule_written_out(domains: int, want: int) -> None:
    # Large enough for place() to try its short-prefix path; few domains force the full order.
    nodes = [NodeInfo(f"n{i:04d}", zone=f"r{i % domains}/s{i}", load=round((i * 7919 % 1000) / 1000, 3)) for i in range(400)]
    got = place(PlacementSpec("svc", want, spread="region"), View(tuple(nodes))).nodes
    assert got == _round_robin_by_hand(nodes, "svc", want, 1)
