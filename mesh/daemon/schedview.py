"""What the scheduler sees, built from this node's state: ``build_view`` and ``build_spec``.

``scheduler`` is pure and knows nothing of membership or the intent documents; this module is
the one translation, shared by everything in the daemon that places (the placements API, the
agreement digests, the workload supervisor), so every caller computes over the same inputs.

The view holds the members this node sees alive or suspect (dead and left members are not
candidates, and keeping them until reaped would make views differ for no placement reason),
with their metadata and the Vivaldi coordinate this node holds for them.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from scheduler import ALIVE, FAULT_LEVELS, SUSPECT, NodeInfo, PlacementSpec, View

from mesh.membership.state import MemberState

if TYPE_CHECKING:
    from crdt.documents import Deployment, IntentDoc
    from mesh.node import NodeCore

_STATUS = {MemberState.ALIVE: ALIVE, MemberState.SUSPECT: SUSPECT}
SPEC_DIGEST_BYTES = 6


def build_view(core: "NodeCore") -> View:
    """The scheduler view of ``core``'s membership (alive and suspect members, sorted by id)."""
    swim = core.swim
    nodes = []
    for name, m in sorted(swim.members.items()):
        status = _STATUS.get(m.state)
        if status is None:
            continue
        meta = m.meta
        c = swim.coordinate_of(name)
        nodes.append(NodeInfo(
            node_id=name, status=status, arch=meta.arch, cores=meta.cores, memory_mb=meta.memory_mb,
            labels=meta.labels, hardware=meta.hardware, zone=meta.fault_domain, geo=meta.geo, load=meta.load,
            coord=tuple(c.to_wire()) if c is not None else None,
        ))
    return View(tuple(nodes))


def build_spec(dep: "Deployment", doc: "IntentDoc | None" = None) -> PlacementSpec:
    """The placement spec of a deployment (its constraints and preferences; the blob for locality)."""
    spec = dep.spec
    c, p = spec.constraints, spec.preferences
    near_label = None
    if p.near_label and "=" in p.near_label:
        k, _, v = p.near_label.partition("=")
        near_label = (k, v)
    blob = None
    if doc is not None:
        try:
            blob = doc.resolve(spec.module, dep.active_version or spec.version).sha256
        except Exception:  # no published version yet: no locality hint
            blob = None
    return PlacementSpec(
        name=dep.name, replicas=spec.replicas, arch=tuple(c.arch), min_memory_mb=c.min_memory_mb,
        labels=tuple(sorted(c.labels.items())), hardware=tuple(c.hardware), near_node=p.near_node,
        near_location=p.near_location, near_label=near_label,
        spread=p.spread if p.spread in FAULT_LEVELS else None, blob=blob,
    )


def spec_digest(deployments: "list[Deployment]") -> str:
    """A short digest of which deployment revisions (and active versions) this node holds."""
    h = hashlib.blake2b(digest_size=SPEC_DIGEST_BYTES)
    for d in sorted(deployments, key=lambda d: d.name):
        cur = d.history[-1] if d.history else None
        sig = f"{cur.signer}.{cur.seq}" if cur is not None else "-"
        h.update(f"{d.name}={sig}@{d.active_version or '-'}".encode())
        h.update(b"\x00")
    return h.hexdigest()


def incumbents(doc: "IntentDoc", deployment: str) -> frozenset[str]:
    """Nodes whose placement entry claims a live (not stopping or failed) replica of ``deployment``."""
    out = set()
    for node, entry in doc.placements().items():
        if any(r.deployment == deployment and r.state not in ("stopping", "failed") for r in entry.replicas):
            out.add(node)
    return frozenset(out)


def deployments_of(doc: "IntentDoc | Any") -> list["Deployment"]:
    """Every live deployment of the document, by name."""
    return sorted(doc.deployments(), key=lambda d: d.name)
