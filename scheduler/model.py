"""The scheduler's inputs and outputs: plain frozen values, no I/O, nothing of mesh/crdt/runtime.

``mesh`` builds a :class:`View` from its membership table, Vivaldi coordinates, node metadata
and the replicated placement document, and a :class:`PlacementSpec` from a deployment record.
Every node that holds the same view and spec computes the same :class:`Placement`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Node statuses a view may carry; only ALIVE nodes are eligible.
ALIVE = "alive"
SUSPECT = "suspect"
DRAINING = "draining"
DEAD = "dead"
LEFT = "left"
STATUSES = frozenset({ALIVE, SUSPECT, DRAINING, DEAD, LEFT})

# Fault-domain levels of a node's zone path ("region/site/unit"): a spec's ``spread`` names one.
FAULT_LEVELS = ("region", "site", "unit")


class ScheduleError(ValueError):
    """A view or spec the scheduler cannot work with (e.g. two rows with one node id)."""


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What the scheduler knows of one node (one row of the view)."""

    node_id: str
    status: str = ALIVE
    arch: str = "x86_64"
    cores: int = 1
    memory_mb: int = 1024  # memory available to workloads
    labels: tuple[tuple[str, str], ...] = ()
    hardware: tuple[str, ...] = ()
    zone: str = ""  # fault-domain path "region/site/unit" (any prefix of it)
    geo: tuple[float, float] | None = None  # (latitude, longitude)
    load: float = 0.0  # 0 idle .. 1 saturated (may exceed 1)
    # Vivaldi coordinate in its wire form: (vec..., error, adjustment, height), seconds.
    coord: tuple[float, ...] | None = None
    blobs: frozenset[str] = frozenset()  # sha256 of module blobs this node holds
    kv_namespaces: frozenset[str] = frozenset()  # KV namespaces this node holds
    failed: frozenset[str] = frozenset()  # deployments this node marked failed (restart budget spent)


@dataclass(frozen=True, slots=True)
class View:
    """The nodes a placement is computed over (any order: ``place`` sorts)."""

    nodes: tuple[NodeInfo, ...]


@dataclass(frozen=True, slots=True)
class Weights:
    """Weights of the soft score (documented defaults; a spec may override them)."""

    proximity: float = 1.0  # closeness to the origin / named location (RTT or geo distance), score in [0, 1]
    locality: float = 0.5  # node holds the module blob (+0.5) / the named KV namespace (+0.5)
    # Fault-domain spread is a strict preference (no second replica in a domain while an
    # eligible node in an unused domain exists); any value > 0 turns it on, 0 switches it off.
    spread: float = 2.0
    load: float = 0.3  # prefer idle nodes: score 1 - load (load clamped to [0, 1])
    # Bonus of a node that already runs a replica: a challenger must beat an incumbent by more
    # than this to take its place, so coordinate noise cannot flap a placement. With the default
    # proximity scale (20 ms) an RTT error below hysteresis * 20 ms / (2 * proximity) = 3 ms
    # never moves a replica.
    hysteresis: float = 0.3


@dataclass(frozen=True, slots=True)
class PlacementSpec:
    """What a deployment asks of placement (built from a deployment record by ``mesh``)."""

    name: str
    replicas: int
    arch: tuple[str, ...] = ()  # node architectures allowed (aliases accepted); () = any
    min_memory_mb: int = 0
    min_cores: int = 0
    labels: tuple[tuple[str, str], ...] = ()  # every one must be on the node
    hardware: tuple[str, ...] = ()  # every tag must be on the node
    near_node: str | None = None  # proximity origin: a node id (e.g. where the request came from)
    near_location: tuple[float, float] | None = None  # (lat, lon)
    near_label: tuple[str, str] | None = None  # prefer nodes near nodes carrying this label
    spread: str | None = None  # one of FAULT_LEVELS
    blob: str | None = None  # module blob sha256 (data locality)
    kv_namespace: str | None = None  # KV namespace the workload uses (data locality)
    weights: Weights = field(default_factory=Weights)


@dataclass(frozen=True, slots=True)
class Placement:
    """The target: ``nodes[i]`` runs replica ``i``; fewer than ``wanted`` when too few nodes qualify."""

    deployment: str
    wanted: int
    nodes: tuple[str, ...]

    @property
    def shortfall(self) -> int:
        return max(0, self.wanted - len(self.nodes))
