"""Placement as pure functions of (spec, view): no I/O, no clocks, no random, nothing of mesh/crdt/runtime."""

from scheduler.model import ALIVE, DEAD, DRAINING, FAULT_LEVELS, LEFT, SUSPECT, NodeInfo, Placement, PlacementSpec, ScheduleError, View, Weights
from scheduler.digest import placement_digest, view_digest
from scheduler.place import ARCH_ALIASES, Candidate, Score, arch_compatible, canonical_arch, explain, fault_domain, hrw, place, reject_reason

__all__ = [
    "ALIVE", "DEAD", "DRAINING", "FAULT_LEVELS", "LEFT", "SUSPECT",
    "NodeInfo", "Placement", "PlacementSpec", "ScheduleError", "View", "Weights",
    "ARCH_ALIASES", "Candidate", "Score", "arch_compatible", "canonical_arch", "explain", "fault_domain", "hrw", "place",
    "reject_reason",
    "placement_digest", "view_digest",
]
