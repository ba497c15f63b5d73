"""Short digests nodes gossip so anyone can check that all nodes agree (``placements --check``).

Two nodes with equal view digests hold the same scheduling-relevant view; with equal placement
digests they computed the same targets. Digests are BLAKE2b over a canonical text form, so they
do not depend on dict/set order or Python's hash seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from scheduler.model import NodeInfo, Placement, View

DIGEST_BYTES = 6  # 12 hex characters: collisions are irrelevant at fleet sizes, and it fits node metadata


def _h(parts: Iterable[str]) -> str:
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for p in parts:
        h.update(p.encode())
        h.update(b"\x00")
    return h.hexdigest()


def _row(n: NodeInfo) -> str:
    # What placement depends on except the Vivaldi coordinate and load, which drift continuously
    # and differ slightly between nodes; they move placements only through the score, and the
    # placement digest shows when they did.
    return "|".join(
        (
            n.node_id, n.status, n.arch, str(n.cores), str(n.memory_mb),
            ",".join(f"{k}={v}" for k, v in sorted(n.labels)), ",".join(sorted(n.hardware)), n.zone,
            ",".join(sorted(n.failed)),
        )
    )


def view_digest(view: View, with_coords: bool = False) -> str:
    """Digest of the scheduling-relevant view; ``with_coords`` adds coordinates and load, for
    views built from *published* coordinates (identical on every node, docs/SCHEDULER.md)."""
    if not with_coords:
        return _h(_row(n) for n in sorted(view.nodes, key=lambda n: n.node_id))
    return _h(f"{_row(n)}|{n.coord!r}|{n.load!r}|{n.geo!r}" for n in sorted(view.nodes, key=lambda n: n.node_id))


def placement_digest(placements: Iterable[Placement]) -> str:
    return _h(f"{p.deployment}={','.join(p.nodes)}" for p in sorted(placements, key=lambda p: p.deployment))
