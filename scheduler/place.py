"""``place(spec, view)``: hard filters, a weighted score, fault-domain spread, rendezvous ties, hysteresis.

Pure and deterministic: the result depends only on the arguments — not on the order of
``view.nodes``, not on dict/set order, not on Python's hash seed (rendezvous hashes are BLAKE2b,
every comparison ends on the node id, which is unique in a view).

How one placement is computed (docs/SCHEDULER.md has the reasoning and the proofs' sketches):

1. **Filter**: a node is eligible when it is alive (or suspect *and* already running a replica:
   a suspicion alone does not move a replica), its architecture is accepted (compatibility
   matrix ``ARCH_ALIASES``), it has the memory, cores, labels and hardware tags asked for, and
   it has not marked this deployment failed (restart budget spent). Draining, dead and left
   nodes never are.
2. **Score** in score units: ``proximity * p + locality * l + load * (1 - load) + hysteresis *
   [incumbent]`` (weights from ``spec.weights``), quantised to ``SCORE_QUANTUM``. A node's key is
   ``(quantised score, hrw(deployment, node), node id)``: equal scores fall to the rendezvous
   hash, so membership changes move few replicas.
3. **Spread** (``spec.spread`` names a level of the zone path): replicas are taken round-robin
   over fault domains — first the best node of every domain in key order, then the second-best
   of every domain, and so on. No domain gets a second replica while an eligible node in an
   unused domain exists. Without spread: the ``replicas`` best keys.

Properties this gives (tested in tests/scheduler/): keys do not depend on other nodes (except the
proximity origin and ``near_label`` anchors), so removing a node takes out only its own
replicas, adding one moves at most one replica, and an RTT error below the hysteresis margin
does not move a replica placed with its incumbents passed back in.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import operator
from dataclasses import dataclass

from scheduler.model import ALIVE, FAULT_LEVELS, SUSPECT, NodeInfo, Placement, PlacementSpec, ScheduleError, View

# Architecture compatibility matrix (seed 000 R11.5): for each canonical node architecture, the
# names a spec may use to accept it. WebAssembly is portable, so the matrix only decides which
# *hosts* a deployment accepts (e.g. for native host functions or measured performance); a spec
# listing "arm64" accepts an "aarch64" node, "arm" accepts both ARM families.
ARCH_ALIASES: dict[str, frozenset[str]] = {
    "x86_64": frozenset({"x86_64", "amd64", "x64", "x86"}),
    "aarch64": frozenset({"aarch64", "arm64", "arm"}),
    "armv7l": frozenset({"armv7l", "armv7", "armhf", "arm"}),
    "riscv64": frozenset({"riscv64", "riscv"}),
}
# What a *node* may report, mapped to its canonical name ("arm" alone is the 32-bit family).
_NODE_ARCH: dict[str, str] = {"arm": "armv7l"}
for _canon, _names in ARCH_ALIASES.items():
    for _n in sorted(_names - {"arm"}):
        _NODE_ARCH[_n] = _canon

PROXIMITY_SCALE_S = 0.020  # an RTT of 20 ms halves the proximity score (1 / (1 + rtt / scale))
GEO_SCALE_KM = 100.0  # 100 km halves the geo proximity score
SCORE_QUANTUM = 1e-3  # scores are compared after rounding to this: near-equal scores tie, HRW decides
NEUTRAL_PROXIMITY = 0.5  # proximity when nothing is known (no origin coordinate, no preference)

_ID = operator.attrgetter("node_id")
_HRW_CACHE: dict[str, dict[str, int]] = {}
_HRW_CACHE_MAX = 200_000  # entries over all deployments; the cache is dropped when larger


def canonical_arch(name: str) -> str:
    """The canonical architecture a node reporting ``name`` has (``amd64`` → ``x86_64``)."""
    low = name.lower()
    return _NODE_ARCH.get(low, low)


def arch_compatible(node_arch: str, allowed: tuple[str, ...]) -> bool:
    """Whether a node of ``node_arch`` may host a spec accepting ``allowed`` (() = any)."""
    if not allowed:
        return True
    canon = canonical_arch(node_arch)
    names = ARCH_ALIASES.get(canon, frozenset({canon}))
    return any(a.lower() in names for a in allowed)


def hrw(deployment: str, node_id: str) -> int:
    """Rendezvous (highest-random-weight) hash of (deployment, node): 64 bits of BLAKE2b."""
    h = hashlib.blake2b(f"{deployment}\x00{node_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big")


def _hrw_table(deployment: str) -> dict[str, int]:
    """Memo of ``hrw`` for one deployment (a pure function: memoising changes no result)."""
    t = _HRW_CACHE.get(deployment)
    if t is None:
        if sum(len(x) for x in _HRW_CACHE.values()) > _HRW_CACHE_MAX:
            _HRW_CACHE.clear()
        t = _HRW_CACHE[deployment] = {}
    return t


def coord_rtt(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Vivaldi RTT estimate in seconds between two wire-form coordinates (mesh/coords.py's formula)."""
    dist = math.dist(a[:-3], b[:-3]) + a[-1] + b[-1]
    adjusted = dist + a[-2] + b[-2]
    return adjusted if adjusted > 0.0 else dist


def geo_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance (haversine, mean Earth radius 6371 km)."""
    la1, lo1, la2, lo2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = math.sin((la2 - la1) / 2) ** 2 + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2
    return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(h)))


_DOMAINS: dict[tuple[str, str], str] = {}


def fault_domain(zone: str, level: str) -> str:
    """The prefix of ``zone`` at ``level`` ("region" → 1 part, "site" → 2, "unit" → 3)."""
    d = _DOMAINS.get((zone, level))
    if d is None:
        if len(_DOMAINS) > 200_000:  # a memo of a pure function: dropping it changes no result
            _DOMAINS.clear()
        d = _DOMAINS[(zone, level)] = "/".join(zone.split("/")[: FAULT_LEVELS.index(level) + 1])
    return d


def reject_reason(spec: PlacementSpec, n: NodeInfo, incumbent: bool = False) -> str | None:
    """Why ``n`` cannot host ``spec`` (a hard constraint), or None when it can.

    ``incumbent``: ``n`` already runs a replica; a *suspect* incumbent keeps it.
    """
    if n.status != ALIVE and not (incumbent and n.status == SUSPECT):
        return f"status {n.status}"
    if not arch_compatible(n.arch, spec.arch):
        return f"arch {n.arch} not in {', '.join(spec.arch)}"
    if spec.min_memory_mb > 0 and n.memory_mb < spec.min_memory_mb:  # <= 0: no constraint (as in bulk)
        return f"memory {n.memory_mb} MiB < {spec.min_memory_mb} MiB"
    if spec.min_cores > 0 and n.cores < spec.min_cores:
        return f"cores {n.cores} < {spec.min_cores}"
    for k, v in spec.labels:
        if (k, v) not in n.labels:
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
    base: float  # weighted sum, hysteresis bonus included
    hrw: int
    domain: str = ""  # fault domain at the spec's spread level ("" without spread)


class _Ctx:
    """What one ``place`` call precomputes from the spec and view (never per node)."""

    __slots__ = ("spec", "inc", "prox", "origin", "anchors", "anchor_ids", "hrws")

    def __init__(self, spec: PlacementSpec, nodes: tuple[NodeInfo, ...], inc: frozenset[str]) -> None:
        self.spec = spec
        if len(set(map(_ID, nodes))) != len(nodes):
            seen: set[str] = set()
            dup = sorted({n.node_id for n in nodes if n.node_id in seen or seen.add(n.node_id)})  # type: ignore[func-returns-value]
            raise ScheduleError(f"view lists node {dup[0]!r} more than once")
        self.inc = inc
        self.origin: tuple[float, ...] | None = None
        self.anchors: list[tuple[float, ...]] = []
        self.anchor_ids: frozenset[str] = frozenset()
        self.hrws = _hrw_table(spec.name)
        if spec.near_node is not None:
            self.prox = "node"
            near = spec.near_node
            self.origin = next((n.coord for n in nodes if n.node_id == near), None)
        elif spec.near_location is not None:
            self.prox = "geo"
        elif spec.near_label is not None:
            self.prox = "label"
            lab = spec.near_label
            found = sorted((m.node_id, m.coord) for m in nodes if lab in m.labels and m.status in (ALIVE, SUSPECT))
            self.anchor_ids = frozenset(i for i, _ in found)
            self.anchors = [c for _, c in found if c is not None]
        else:
            self.prox = ""

    def hrw(self, node_id: str) -> int:
        h = self.hrws.get(node_id)
        if h is None:
            h = self.hrws[node_id] = hrw(self.spec.name, node_id)
        return h

    def proximity(self, n: NodeInfo) -> float:
        """1.0 at the origin, falling off with RTT / distance; NEUTRAL_PROXIMITY when unknown."""
        kind = self.prox
        if kind == "node":
            if n.node_id == self.spec.near_node:
                return 1.0
            if self.origin is None or n.coord is None:
                return NEUTRAL_PROXIMITY
            return 1.0 / (1.0 + coord_rtt(self.origin, n.coord) / PROXIMITY_SCALE_S)
        if kind == "geo":
            if n.geo is None or not (math.isfinite(n.geo[0]) and math.isfinite(n.geo[1])):
                return 0.0
            assert self.spec.near_location is not None
            return 1.0 / (1.0 + geo_km(self.spec.near_location, n.geo) / GEO_SCALE_KM)
        if kind == "label":
            if n.node_id in self.anchor_ids:
                return 1.0
            if n.coord is None or not self.anchors:
                return 0.0
            c = n.coord
            return 1.0 / (1.0 + min(coord_rtt(a, c) for a in self.anchors) / PROXIMITY_SCALE_S)
        return NEUTRAL_PROXIMITY

    def eligible(self, nodes: tuple[NodeInfo, ...]) -> list[NodeInfo]:
        """The nodes passing every hard filter (same verdicts as ``reject_reason``, in bulk)."""
        spec, inc = self.spec, self.inc
        out = [n for n in nodes if n.status == ALIVE or (n.status == SUSPECT and n.node_id in inc)]
        if spec.arch:
            ok: dict[str, bool] = {}
            keep = []
            for n in out:
                v = ok.get(n.arch)
                if v is None:
                    v = ok[n.arch] = arch_compatible(n.arch, spec.arch)
                if v:
                    keep.append(n)
            out = keep
        if spec.min_memory_mb > 0:
            m = spec.min_memory_mb
            out = [n for n in out if n.memory_mb >= m]
        if spec.min_cores > 0:
            c = spec.min_cores
            out = [n for n in out if n.cores >= c]
        for lab in spec.labels:
            out = [n for n in out if lab in n.labels]
        for tag in spec.hardware:
            out = [n for n in out if tag in n.hardware]
        name = spec.name
        return [n for n in out if not n.failed or name not in n.failed]

    def base(self, n: NodeInfo) -> float:
        w = self.spec.weights
        spec = self.spec
        loc = 0.0
        if spec.blob is not None and spec.blob in n.blobs:
            loc += 0.5
        if spec.kv_namespace is not None and spec.kv_namespace in n.kv_namespaces:
            loc += 0.5
        load = n.load
        load = 1.0 - (0.0 if load <= 0.0 else 1.0 if load >= 1.0 else load)
        b = w.proximity * self.proximity(n) + w.locality * loc + w.load * load
        return b + w.hysteresis if n.node_id in self.inc else b

    def score(self, n: NodeInfo) -> Score:
        spec = self.spec
        loc = (0.5 if spec.blob is not None and spec.blob in n.blobs else 0.0) + (
            0.5 if spec.kv_namespace is not None and spec.kv_namespace in n.kv_namespaces else 0.0
        )
        load = 1.0 - min(max(n.load, 0.0), 1.0)
        level = _spread_level(spec)
        return Score(n.node_id, self.proximity(n), loc, load, n.node_id in self.inc, self.base(n), self.hrw(n.node_id),
                     fault_domain(n.zone, level) if level else "")


def _spread_level(spec: PlacementSpec) -> str | None:
    return spec.spread if spec.spread in FAULT_LEVELS and spec.weights.spread > 0 else None


def score(spec: PlacementSpec, n: NodeInfo, by_id: dict[str, NodeInfo], incumbents: frozenset[str]) -> Score:
    """The score of one (eligible) node within the view ``by_id``."""
    return _Ctx(spec, tuple(by_id.values()), frozenset(incumbents)).score(n)


def _keys(ctx: _Ctx, nodes: list[NodeInfo]) -> list[tuple[int, int, str]]:
    """(quantised score, rendezvous hash, id) per node: ``_Ctx.base`` inlined (the hot loop)."""
    spec = ctx.spec
    w = spec.weights
    q = 1.0 / SCORE_QUANTUM
    wp, wl, wload, wh = w.proximity * q, w.locality * q * 0.5, w.load * q, w.hysteresis * q
    blob, kvns = spec.blob, spec.kv_namespace
    inc = ctx.inc
    hrws = ctx.hrws
    out = []
    # Proximity per node, or one constant when the spec names no origin.
    if ctx.prox == "node" and ctx.origin is not None:
        o = ctx.origin
        ovec, oadj, oh = o[:-3], o[-2], o[-1]
        near = spec.near_node
        dist = math.dist
        inv = 1.0 / PROXIMITY_SCALE_S
        proxs = []
        for n in nodes:
            c = n.coord
            if n.node_id == near:
                proxs.append(1.0)
            elif c is None:
                proxs.append(NEUTRAL_PROXIMITY)
            else:
                d = dist(ovec, c[:-3]) + oh + c[-1]
                a = d + oadj + c[-2]
                proxs.append(1.0 / (1.0 + (a if a > 0.0 else d) * inv))
    elif ctx.prox:
        proxs = [ctx.proximity(n) for n in nodes]
    else:
        proxs = None
    const = NEUTRAL_PROXIMITY * wp
    for i, n in enumerate(nodes):
        b = wp * proxs[i] if proxs is not None else const
        if blob is not None and blob in n.blobs:
            b += wl
        if kvns is not None and kvns in n.kv_namespaces:
            b += wl
        load = n.load
        b += wload * (1.0 - (0.0 if load <= 0.0 else 1.0 if load >= 1.0 else load))
        nid = n.node_id
        if nid in inc:
            b += wh
        h = hrws.get(nid)
        if h is None:
            h = hrws[nid] = hrw(spec.name, nid)
        if not -1e15 < b < 1e15:  # NaN or infinite load/coordinates from a bad row: rank it last
            b = -1e15
        out.append((round(b), h, nid))
    return out


def _choose(ctx: _Ctx, nodes: list[NodeInfo], want: int) -> list[str]:
    """The ordered choice among eligible ``nodes`` (keys, then spread round-robin)."""
    keys = _keys(ctx, nodes)
    level = _spread_level(ctx.spec)
    if level is None:
        return [k[2] for k in heapq.nlargest(want, keys)]
    # Round-robin over fault domains: rank r of every domain before rank r+1 of any; within a
    # rank, key order (keys are a total order: they end on the unique node id).
    zone = {n.node_id: n.zone for n in nodes}
    # Usually a short prefix of the key order already holds enough domains: scan the top few
    # (heapq.nlargest is a C loop), and sort everything only when it does not.
    prefix = heapq.nlargest(8 * want, keys) if len(keys) > 16 * want else None
    if prefix is not None:
        got = _round_robin(prefix, zone, level, want, complete=False)
        if got is not None:
            return got
    out = _round_robin(sorted(keys, reverse=True), zone, level, want, complete=True)
    assert out is not None
    return out


def _round_robin(ordered: list[tuple[int, int, str]], zone: dict[str, str], level: str, want: int, complete: bool) -> list[str] | None:
    """The first ``want`` nodes of the round-robin over fault domains, given nodes in key order.

    ``complete``: ``ordered`` holds every node; otherwise it is a prefix of the order, and the
    answer is None unless ``want`` distinct domains appear in it (then later nodes cannot matter).
    """
    rank_in: dict[str, int] = {}
    ranked = []
    firsts = 0
    for i, k in enumerate(ordered):
        d = fault_domain(zone[k[2]], level)
        r = rank_in.get(d, 0)
        rank_in[d] = r + 1
        ranked.append((r, i, k[2]))
        if r == 0:
            firsts += 1
            if firsts == want:  # enough domains already: later nodes all rank after these
                return [nid for _, _, nid in sorted(ranked)[:want]]
    if not complete:
        return None
    ranked.sort()
    return [nid for _, _, nid in ranked[:want]]


def place(spec: PlacementSpec, view: View, incumbents: frozenset[str] | tuple[str, ...] = frozenset()) -> Placement:
    """The ordered target placement of ``spec`` over ``view``.

    ``incumbents`` are the nodes that currently run a replica (from the replicated placement
    document); they get the hysteresis bonus so coordinate noise does not move replicas, and a
    suspect incumbent stays eligible. ``nodes[0]`` is the most preferred replica.
    """
    want = spec.replicas
    if want <= 0:
        return Placement(spec.name, want, ())
    nodes = view.nodes
    ctx = _Ctx(spec, nodes, frozenset(incumbents))
    return Placement(spec.name, want, tuple(_choose(ctx, ctx.eligible(nodes), want)))


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
    ctx = _Ctx(spec, view.nodes, inc)
    chosen = {nid: i for i, nid in enumerate(place(spec, view, inc).nodes)}
    rows = []
    for n in view.nodes:
        why = reject_reason(spec, n, n.node_id in inc)
        s = None if why is not None else ctx.score(n)
        rows.append(Candidate(n.node_id, why, s, chosen.get(n.node_id)))
    rows.sort(key=lambda c: (c.replica is None, c.replica or 0, c.rejected is not None, -(c.score.base if c.score else 0.0), c.node_id))
    return rows
