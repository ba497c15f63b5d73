"""What placement assigns, computed from a node's membership and replicated documents (sans-IO).

The daemon's lifecycle (``mesh/daemon/workloads.py``) calls :func:`assign` on every relevant
change and hands this node's share to its :class:`scheduler.supervisor.Supervisor`; a simulator
can call the same function over its own ``SwimCore`` and ``IntentDoc``. Nothing here reads a
clock, does I/O or imports trio or the runtime: the result depends only on the arguments, so two
nodes holding the same membership and documents compute the same placement.

* :func:`build_view`: the scheduler's :class:`scheduler.View` from membership (status, ``NodeMeta``,
  Vivaldi coordinates) and the placement document (failed marks, blobs held).
* :func:`placement_spec`: a deployment's constraints and preferences as a :class:`scheduler.PlacementSpec`.
* :func:`incumbents`: the nodes claiming a deployment in the placement document.
* :func:`digests`: what a node gossips so anyone can check that all nodes agree
  (``NodeMeta.agreement``, ``wasmatrix placements --check``, mesh/agreement.py).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

from crdt.errors import CrdtError, NotFound
from mesh.invoke.quota import CPU_LABEL
from mesh.membership.state import MemberState
from scheduler import (
    ALIVE, DEAD, DRAINING, FAULT_LEVELS, LEFT, SUSPECT, NodeInfo, Placement, PlacementSpec, View, place, placement_digest,
    view_digest,
)
from scheduler.supervisor import Target

# Claim states that make a node an incumbent of a deployment (it holds or is starting a replica).
HOLDING = frozenset({"claimed", "fetching", "starting", "running"})
MEMBER_STATUS = {MemberState.ALIVE: ALIVE, MemberState.SUSPECT: SUSPECT, MemberState.DEAD: DEAD, MemberState.LEFT: LEFT}
# Published Vivaldi coordinates (docs/SCHEDULER.md, "published coordinates"): every node scores RTT
# proximity from the coordinate each node put in its own metadata, so all nodes use the same numbers.
COORD_LABEL = "wasmatrix.coord"  # metadata label: the node's published Vivaldi coordinate (ms)
COORD_THRESHOLD_S = 0.002  # republish when the coordinate moved by more than this
# A node carrying this label (``wasmatrix meta set drain=true``) is DRAINING: no new replicas, and
# placement moves the ones it runs (it stops them as the others start the replacements).
DRAIN_LABEL = ("drain", "true")
# Spread levels a deployment may name beyond the scheduler's own (seed 000 speaks of vehicles).
SPREAD_ALIASES = {"vehicle": "unit", "zone": "site", "dc": "site", "datacenter": "site"}


def encode_coord(c: tuple[float, ...]) -> str:
    """vec..., adjustment, height in ms with 2 decimals (the error is not used for RTT)."""
    return ",".join(f"{x * 1000.0:.2f}" for x in (*c[:-3], c[-2], c[-1]))


_COORDS: dict[str, tuple[float, ...] | None] = {}  # published text -> coordinate (every node decodes the same texts)


def decode_coord(text: str) -> tuple[float, ...] | None:
    """A published coordinate label back in wire form (error 0); None if malformed."""
    c = _COORDS.get(text, ())
    if c != ():
        return c  # type: ignore[return-value]
    try:
        xs = [float(x) / 1000.0 for x in text.split(",")]
        c = (*xs[:-2], 0.0, xs[-2], xs[-1]) if len(xs) >= 3 and all(abs(x) < 1e6 for x in xs) else None
    except ValueError:
        c = None
    if len(_COORDS) > 100_000:
        _COORDS.clear()
    _COORDS[text] = c
    return c


def coord_moved(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """How far (seconds of RTT, at most) a coordinate moved: vector distance + |d adjustment| + |d height|."""
    if len(a) != len(b):
        return float("inf")
    return math.dist(a[:-3], b[:-3]) + abs(a[-2] - b[-2]) + abs(a[-1] - b[-1])


def uses_rtt(spec: Any) -> bool:
    """True when a deployment scores proximity by RTT (then nodes publish their coordinates)."""
    p = spec.preferences
    return bool(p.near_node or p.near_label)


def build_view(swim: Any, placements: dict[str, Any], module_of: dict[str, str], sha_of: dict[tuple[str, str], str]) -> View:
    """The scheduler's view from membership and the placement document.

    Statuses are membership's: a suspect member keeps the replicas it runs (``place`` lets a
    suspect incumbent stay, so a false suspicion moves nothing; failover starts at the death
    declaration) but gets no new ones. Coordinates are the *published* ones (``COORD_LABEL`` in
    each member's metadata), the same numbers on every node; a member that published none has none.
    """
    rows = []
    for name, m in sorted(swim.members.items()):
        meta = m.meta
        labels = meta.labels
        coord = None
        if any(k == COORD_LABEL for k, _ in labels):
            coord = decode_coord(dict(labels)[COORD_LABEL])
            labels = tuple(kv for kv in labels if kv[0] != COORD_LABEL)
        if any(k == CPU_LABEL for k, _ in labels):  # tenant CPU usage (quotas): not a placement property
            labels = tuple(kv for kv in labels if kv[0] != CPU_LABEL)
        entry = placements.get(name)
        failed: set[str] = set()
        blobs: set[str] = set()
        if entry is not None:
            for c in entry.replicas:
                if c.state == "failed":
                    failed.add(c.deployment)
                elif c.state == "running":
                    sha = sha_of.get((module_of.get(c.deployment, ""), c.version))
                    if sha:
                        blobs.add(sha)
        status = MEMBER_STATUS.get(m.state, DEAD)
        if status == ALIVE and DRAIN_LABEL in meta.labels:
            status = DRAINING
        rows.append(NodeInfo(
            node_id=name, status=status, arch=meta.arch, cores=meta.cores, memory_mb=meta.memory_mb,
            labels=labels, hardware=meta.hardware, zone=meta.fault_domain, geo=meta.geo, load=meta.load,
            coord=coord, blobs=frozenset(blobs), failed=frozenset(failed),
        ))
    return View(tuple(rows))


def placement_spec(dep: Any, sha: str | None, kv_namespace: str | None, names: dict[str, str]) -> PlacementSpec:
    """A deployment's constraints and preferences as a :class:`PlacementSpec` (``names``: display name -> node id)."""
    s = dep.spec
    c, p = s.constraints, s.preferences
    near_label = None
    if p.near_label and "=" in p.near_label:
        k, _, v = p.near_label.partition("=")
        near_label = (k, v)
    spread = SPREAD_ALIASES.get(p.spread, p.spread) if p.spread else None
    near_node = names.get(p.near_node, p.near_node) if p.near_node else None
    return PlacementSpec(
        name=s.name, replicas=s.replicas, arch=tuple(c.arch), min_memory_mb=c.min_memory_mb,
        labels=tuple(sorted(c.labels.items())), hardware=tuple(c.hardware), near_node=near_node,
        near_location=p.near_location, near_label=near_label, spread=spread if spread in FAULT_LEVELS else None,
        blob=sha, kv_namespace=kv_namespace,
    )


def incumbents(deployment: str, placements: dict[str, Any]) -> frozenset[str]:
    """Nodes whose placement entry claims (holds or is starting) a replica of ``deployment``."""
    out = set()
    for node, entry in placements.items():
        if any(c.deployment == deployment and c.state in HOLDING for c in entry.replicas):
            out.add(node)
    return frozenset(out)


@dataclass(slots=True)
class Assignment:
    """The result of :func:`assign` for one node."""

    placements: dict[str, tuple[tuple[str, ...], str]] = field(default_factory=dict)  # deployment -> (nodes, version)
    targets: dict[str, Target] = field(default_factory=dict)  # what this node runs
    standby: dict[str, str] = field(default_factory=dict)  # deployment -> version this node prepares
    on_demand: frozenset[str] = frozenset()  # deployments with replicas = 0
    errors: dict[str, str] = field(default_factory=dict)  # deployments not placed now: "" (waiting) or the error
    uses_rtt: bool = False  # some deployment scores RTT proximity: nodes should publish their coordinates
    # The inputs it placed over (``wasmatrix placements --explain`` and the agreement digests show these):
    view: View = View(())
    specs: dict[str, PlacementSpec] = field(default_factory=dict)  # deployment -> spec placed
    spares: dict[str, tuple[str, ...]] = field(default_factory=dict)  # deployment -> its standbys (``replacements``)
    incumbents: dict[str, frozenset[str]] = field(default_factory=dict)
    revisions: str = ""  # spec_digest of the deployments it read


def replacements(spec: PlacementSpec, view: View, inc: frozenset[str], chosen: tuple[str, ...]) -> tuple[str, ...]:
    """For each node of ``chosen`` (in order), the node ``place`` picks in its stead when it is gone
    from the view; nodes already chosen or already listed are not repeated."""
    out: list[str] = []
    for gone in chosen:
        rest = View(tuple(n for n in view.nodes if n.node_id != gone))
        for n in place(spec, rest, inc - {gone}).nodes:
            if n not in chosen and n not in out:
                out.append(n)
                break
    return tuple(out)


def active_version(doc: Any, dep: Any) -> str | None:
    """The version a deployment runs: its active version, else the best published match of its range."""
    if dep.active_version:
        return str(dep.active_version)
    try:
        return str(doc.resolve(dep.spec.module, dep.spec.version).version)
    except CrdtError:
        return None


def assign(node_id: str, swim: Any, doc: Any, placements: dict[str, Any] | None = None, *, standbys: int = 1) -> Assignment:
    """Place every deployment of ``doc`` over ``swim``'s membership; this node's targets and standbys.

    For each deployment ``place(spec, view, incumbents)`` is its placement. With ``standbys`` > 0
    the standbys are :func:`replacements`: for each chosen node, the node ``place`` picks in its
    stead once it is gone. They prepare the module (blob fetched, compiled) so a failover admits
    from a warm cache. Asking ``place`` for ``replicas + 1`` nodes instead would pick the next node
    in *spread* order, which is in another fault domain than the replica that fails over when the
    spread is strict (a dead replica in region A is replaced in region A).
    """
    placements = doc.placements() if placements is None else placements
    deps = sorted(doc.deployments(), key=lambda d: d.name)
    module_of = {d.name: d.spec.module for d in deps}
    sha_of: dict[tuple[str, str], str] = {}
    versions: dict[str, str] = {}
    for d in deps:
        v = active_version(doc, d)
        if v is None:
            continue
        versions[d.name] = v
        try:
            sha_of[(d.spec.module, v)] = doc.manifest(d.spec.module, v).sha256
        except NotFound:
            continue
    for entry in placements.values():  # versions others run (their blobs) count for locality
        for c in entry.replicas:
            mod = module_of.get(c.deployment)
            if mod is not None and (mod, c.version) not in sha_of:
                try:
                    sha_of[(mod, c.version)] = doc.manifest(mod, c.version).sha256
                except NotFound:
                    pass
    view = build_view(swim, placements, module_of, sha_of)
    names = {m.meta.name: n for n, m in swim.members.items() if m.meta.name}
    out = Assignment(uses_rtt=any(uses_rtt(d.spec) for d in deps), view=view, revisions=spec_digest(deps))
    on_demand: set[str] = set()
    for d in deps:
        version = versions.get(d.name)
        try:
            if version is None:
                raise NotFound(f"no published version of {d.spec.module} matches {d.spec.version}")
            if d.spec.replicas == 0:
                on_demand.add(d.name)
                out.placements[d.name] = ((), version)
                continue
            # NotFound: the registry record has not arrived yet; its arrival wakes the caller again.
            mv = doc.manifest(d.spec.module, version)
            caps = mv.manifest.capabilities if mv.manifest else None
            spec = placement_spec(d, mv.sha256, caps.kv_namespaces[0] if caps and caps.kv_namespaces else None, names)
            inc = incumbents(d.name, placements)
            chosen = place(spec, view, inc).nodes
            spare = replacements(spec, view, inc, chosen)[: max(0, standbys) * len(chosen)] if standbys > 0 else ()
        except Exception as exc:  # one deployment that cannot be placed now leaves the others alone
            out.errors[d.name] = "" if isinstance(exc, CrdtError) else f"{type(exc).__name__}: {exc}"[:300]
            continue
        out.specs[d.name], out.incumbents[d.name], out.spares[d.name] = spec, inc, spare
        out.placements[d.name] = (chosen, version)
        if node_id in chosen:
            out.targets[d.name] = Target(d.name, version, chosen.index(node_id))
        elif node_id in spare:
            out.standby[d.name] = version
    out.on_demand = frozenset(on_demand)
    return out


def spec_digest(deployments: list[Any]) -> str:
    """A short digest of which deployment revisions (and active versions) a node holds."""
    h = hashlib.blake2b(digest_size=6)
    for d in sorted(deployments, key=lambda d: d.name):
        cur = d.history[-1] if d.history else None
        sig = f"{cur.signer}.{cur.seq}" if cur is not None else "-"
        h.update(f"{d.name}={sig}@{d.active_version or '-'}".encode())
        h.update(b"\x00")
    return h.hexdigest()


def digests(a: Assignment) -> tuple[str, str, str]:
    """(view, specs, placement) digests of one evaluation, for ``NodeMeta.agreement``.

    The view digest covers the members that can hold a replica (dead and departed members are
    never candidates, and nodes reap them at different times) with their *published* coordinates,
    load and position, which are the same numbers on every node. The placement digest covers the
    nodes chosen per deployment (standbys excluded; an on-demand deployment places none).
    """
    live = View(tuple(n for n in a.view.nodes if n.status not in (DEAD, LEFT)))
    chosen = [Placement(name, len(nodes), nodes) for name, (nodes, _) in a.placements.items()]
    return view_digest(live, with_coords=True), a.revisions, placement_digest(chosen)


__all__ = [
    "COORD_LABEL", "COORD_THRESHOLD_S", "Assignment", "DRAIN_LABEL", "HOLDING", "MEMBER_STATUS", "SPREAD_ALIASES", "active_version", "assign",
    "build_view", "coord_moved", "decode_coord", "digests", "encode_coord", "incumbents", "placement_spec", "replacements",
    "spec_digest", "uses_rtt",
]
