"""Do all nodes agree? Parse the digests nodes gossip in their metadata and group them, with why.

Every node's workload lifecycle puts, after each evaluation (``mesh.lifecycle.digests``),
``FORMAT:VIEW:SPECS:PLACEMENT`` into its ``NodeMeta.agreement``:

* ``FORMAT`` — the placement algorithm's format version (:data:`AGREEMENT_FORMAT`); nodes on
  different versions may place differently for the same inputs;
* ``VIEW`` — ``scheduler.view_digest(with_coords=True)`` of the view it placed over (members that
  can hold a replica, status, metadata, published coordinates, failed marks);
* ``SPECS`` — which deployment revisions and active versions it holds (``mesh.lifecycle.spec_digest``);
* ``PLACEMENT`` — ``scheduler.placement_digest`` of the targets it computed.

:func:`groups` sorts nodes into agreeing groups; the largest is the reference and every other
group says why it differs, in the order a cause explains the rest: versions differ, then views
differ, then deployments differ, else (same inputs, different targets) the placement itself
differs — incumbents or coordinates seen differently, or a bug.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

AGREEMENT_FORMAT = "1"
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class Digests:
    format: str
    view: str
    specs: str
    placement: str

    def encode(self) -> str:
        return f"{self.format}:{self.view}:{self.specs}:{self.placement}"


def parse(field: str) -> Digests | None:
    """The digests of a metadata field, or None (empty, or not in a format this node reads)."""
    parts = field.split(":")
    if len(parts) != 4 or not parts[0] or any(not p or not set(p) <= _HEX for p in parts[1:]) or len(parts[0]) > 8:
        return None
    return Digests(*parts)


def encode(view: str, specs: str, placement: str) -> str:
    """The metadata field for these digests, in this node's format."""
    return Digests(AGREEMENT_FORMAT, view, specs, placement).encode()


@dataclass(frozen=True, slots=True)
class Group:
    digests: Digests | None
    nodes: tuple[str, ...]
    reason: str  # "reference", or why this group differs from it


def _why(d: Digests | None, ref: Digests) -> str:
    if d is None:
        return "no digest yet"
    if d.format != ref.format:
        return "versions differ"
    if d.view != ref.view:
        return "views differ"
    if d.specs != ref.specs:
        return "deployments differ"
    return "placement differs"


def groups(rows: Iterable[tuple[str, str]]) -> list[Group]:
    """Group ``(node, agreement field)`` rows; the reference group first, then the others by size."""
    by: dict[Digests | None, list[str]] = {}
    for node, field in rows:
        by.setdefault(parse(field), []).append(node)
    known = [(d, sorted(ns)) for d, ns in by.items() if d is not None]
    if not known:
        return [Group(None, tuple(sorted(by.get(None, []))), "no digest yet")] if by else []
    # The largest group is the reference; ties broken by the digests, so every caller picks the same.
    known.sort(key=lambda kv: (-len(kv[1]), kv[0].encode()))
    ref = known[0][0]
    out = [Group(ref, tuple(known[0][1]), "reference")]
    out += [Group(d, tuple(ns), _why(d, ref)) for d, ns in known[1:]]
    if None in by:
        out.append(Group(None, tuple(sorted(by[None])), "no digest yet"))
    return out


def agree(gs: list[Group]) -> bool:
    """True when every node reported digests and all are equal."""
    return len(gs) == 1 and gs[0].digests is not None
