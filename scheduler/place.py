"""``place(spec, view)``: hard filters, a weighted score, rendezvous tie-breaks, hysteresis.

Pure and deterministic: nodes are visited in sorted id order, hashes are BLAKE2b (not Python's
seeded ``hash``), and the result depends on nothing but the arguments.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from scheduler.model import ALIVE, FAULT_LEVELS, NodeInfo, Placement, PlacementSpec, View

# Architecture compatibility matrix (seed 000 R11.5): the names a spec may use for each node
# architecture. WebAssembly is portable, so the matrix only decides which *hosts* a deployment
# accepts; a spec listing "arm64" accepts an "aarch64" node.
ARCH_ALIASES: dict[str, frozenset[str]] = {
    "x86_64": frozenset({"x86_64", "amd64", "x64", "x86"}),
    "aarch64": frozenset({"aarch64", "arm64", "arm"}),
    "armv7l": frozenset({"armv7l", "armv7", "armhf", "arm"}),
    "riscv64": frozenset({"riscv64", "riscv"}),
}

PROXIMITY_SCALE_S = 0.010  # an RTT of 10 ms halves the proximity score
GEO_SCALE_KM = 100.0  # 100 km halves the geo proximity score
SCORE_QUANTUM = 1e-3  # scores are compared after rounding to this, so float noise cannot reorder


def arch_compatible(node_arch: str, allowed: tuple[str, ...]) -> bool:
    if not allowed:
        return True
    names = ARCH_ALIASES.get(node_arch, frozenset({node_arch}))
    return any(a in names for a in allowed)


def hrw(deployment: str, node_id: str) -> int:
    """Rendezvous (highest-random-weight) hash of (deployment, node)."""
    h = hashlib.blake2b(f"{deployment}\x00{node_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big")


def coord_rtt(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Vivaldi RTT estimate in seconds between two wire-form coordinates (mesh/coords.py's formula)."""
    va, vb = a[:-3], b[:-3]
    dist = math.dist(va, vb) + a[-1] + b[-1]
    adjusted = dist + a[-2] + b[-2]
    return adjusted if adjusted > 0.0 else dist


def geo_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance (haversine, mean Earth radius 6371 km)."""
    la1, lo1, la2, lo2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = math.sin((la2 - la1) / 2) ** 2 + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2
    return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(h)))


def fault_domain(zone: str, level: str) -> str:
    """The prefix of ``zone`` at ``level`` ("region" → 1 part, "site" → 2, "unit" → 3)."""
    depth = FAULT_LEVELS.index(level) + 1
    return "/".join(zone.split("/")[:depth])


def reject_reason(spec: PlacementSpec, n: NodeInfo) -> str | None:
    """Why ``n`` cannot host ``spec`` (a hard constraint), or None when it can."""
    if n.status != ALIVE:
        return f"status {n.status}"
    if not arch_compatible(n.arch, spec.arch):
        return f"arch {n.arch} not in {', '.join(spec.arch)}"
    if n.memory_mb < spec.min_memory_mb:
        return f"memory {n.memory_mb} MiB < {spec.min_memory_mb} MiB"
    if n.cores < spec.min_cores:
        return f"cores {n.cores} < {spec.min_cores}"
    labels = dict(n.labels)
    for k, v in spec.labels:
        if labels.get(k) != v:
            return f"label {k}={v} missing"
    for tag in spec.hardware:
        if tag not in n.hardware:
            return f"hardware {tag} missing"
    if spec.name in n.failed:
        return "replica failed here (restart budget spent)"
    return None


@dataclass(frozen=True, slots=True)
class Score:
    """How one eligible node scored (the parts ``--explain`` shows)."""

    node_id: str
    proximity: float
    locality: float
    load: float
    incumbent: bool
    base: float  # weighted sum before the spread penalty
    hrw: int


def _proximity(spec: PlacementSpec, n: NodeInfo, by_id: dict[str, NodeInfo]) -> float:
    """1.0 at the origin, falling off with RTT / distance; 0.5 when nothing is known."""
    if spec.near_node is not None:
        origin = by_id.get(spec.near_node)
        if n.node_id == spec.near_node:
            return 1.0
        if origin is not None and origin.coord is not None and n.coord is not None:
            return 1.0 / (1.0 + coord_rtt(origin.coord, n.coord) / PROXIMITY_SCALE_S)
        return 0.5 if origin is None or n.coord is None else 0.5
    if spec.near_location is not None:
        if n.geo is None:
            return 0.0
        return 1.0 / (1.0 + geo_km(spec.near_location, n.geo) / GEO_SCALE_KM)
    if spec.near_label is not None:
        k, v = spec.near_label
        anchors = [m for m in by_id.values() if (k, v) in m.labels]
        if any(m.node_id == n.node_id for m in anchors):
            return 1.0
        rtts = [coord_rtt(m.coord, n.coord) for m in anchors if m.coord is not None and n.coord is not None]
        return 1.0 / (1.0 + min(rtts) / PROXIMITY_SCALE_S) if rtts else 0.0
    return 0.5


def score(spec: PlacementSpec, n: NodeInfo, by_id: dict[str, NodeInfo], incumbents: frozenset[str]) -> Score:
    w = spec.weights
    prox = _proximity(spec, n, by_id)
    loc = 0.0
    if spec.blob is not None and spec.blob in n.blobs:
        loc += 0.5
    if spec.kv_namespace is not None and spec.kv_namespace in n.kv_namespaces:
        loc += 0.5
    load = max(0.0, 1.0 - min(max(n.load, 0.0), 1.0))
    inc = n.node_id in incumbents
    base = w.proximity * prox + w.locality * loc + w.load * load + (w.hysteresis if inc else 0.0)
    return Score(n.node_id, prox, loc, load, inc, base, hrw(spec.name, n.node_id))


def _q(x: float) -> int:
    return round(x / SCORE_QUANTUM)


def place(spec: PlacementSpec, view: View, incumbents: frozenset[str] | tuple[str, ...] = frozenset()) -> Placement:
    """The ordered target placement of ``spec`` over ``view``.

    ``incumbents`` are the nodes that currently run a replica (from the replicated placement
    document); they get the hysteresis bonus so coordinate noise does not move replicas.
    Replicas are chosen greedily: at each step the best remaining node by
    (quantised score − spread penalty, rendezvous hash, node id).
    """
    want = spec.replicas
    if want <= 0:
        return Placement(spec.name, want, ())
    inc = frozenset(incumbents)
    nodes = sorted(view.nodes, key=lambda n: n.node_id)
    by_id = {n.node_id: n for n in nodes}
    scores = [score(spec, n, by_id, inc) for n in nodes if reject_reason(spec, n) is None]
    chosen: list[str] = []
    used: dict[str, int] = {}
    level = spec.spread if spec.spread in FAULT_LEVELS else None
    remaining = scores
    while remaining and len(chosen) < want:
        best = None
        best_key = None
        for s in remaining:
            pen = used.get(fault_domain(by_id[s.node_id].zone, level), 0) * spec.weights.spread if level else 0.0
            key = (_q(s.base - pen), s.hrw, s.node_id)
            if best_key is None or key > best_key:
                best, best_key = s, key
        assert best is not None
        chosen.append(best.node_id)
        if level:
            d = fault_domain(by_id[best.node_id].zone, level)
            used[d] = used.get(d, 0) + 1
        remaining = [s for s in remaining if s.node_id != best.node_id]
    return Placement(spec.name, want, tuple(chosen))


@dataclass(frozen=True, slots=True)
class Candidate:
    """One row of ``--explain``: why a node was filtered, or how it scored and whether it was chosen."""

    node_id: str
    rejected: str | None  # the hard constraint that failed, or None
    score: Score | None  # None when rejected
    replica: int | None  # the replica index it got, or None


def explain(spec: PlacementSpec, view: View, incumbents: frozenset[str] | tuple[str, ...] = frozenset()) -> list[Candidate]:
    """Every node of ``view`` with its filter verdict or score, chosen ones first in replica order."""
    inc = frozenset(incumbents)
    nodes = sorted(view.nodes, key=lambda n: n.node_id)
    by_id = {n.node_id: n for n in nodes}
    chosen = {nid: i for i, nid in enumerate(place(spec, view, inc).nodes)}
    rows = []
    for n in nodes:
        why = reject_reason(spec, n)
        s = None if why is not None else score(spec, n, by_id, inc)
        rows.append(Candidate(n.node_id, why, s, chosen.get(n.node_id)))
    rows.sort(key=lambda c: (c.replica is None, c.replica or 0, c.rejected is not None, -(c.score.base if c.score else 0.0), c.node_id))
    return rows
