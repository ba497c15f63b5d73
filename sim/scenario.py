"""Scenario files: TOML describing a mesh, its network and a schedule of faults.

See ``docs/SIMULATOR.md`` for the format with a complete example. Loading
validates everything up front and raises :class:`ScenarioError` with the
offending key, so a typo never surfaces as a crash half-way through a run.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crdt.messages import MAX_BLOB_CHUNK
from crdt.sync import SyncConfig
from mesh.errors import ConfigError
from mesh.membership.config import MembershipConfig, profile
from scheduler import FAULT_LEVELS, PlacementSpec, Weights


class ScenarioError(ValueError):
    """A scenario file that cannot be run, with the reason."""


# A week of virtual time: longer runs are not experiments, they are hangs.
MAX_DURATION = 7 * 86400.0


ACTIONS = frozenset(
    {
        "crash",
        "restart",
        "leave",
        "join",
        "partition",
        "heal",
        "one_way_loss",
        "clear_loss",
        "slow",
        "clock",
        "meta",
        "link",
        "crash_replica",
    }
)

# Actions that write intent (or fetch blobs); any of them switches intent on for the run.
INTENT_ACTIONS = frozenset({"publish", "deploy", "rollback", "kv", "blob_fetch", "forge"})
ACTIONS = ACTIONS | INTENT_ACTIONS
FORGERIES = ("bad_signature", "unknown_signer", "role")


@dataclass(slots=True, frozen=True)
class LinkModel:
    """One-way latency distribution and impairments of a link (milliseconds, probabilities)."""

    latency_ms: float = 1.0
    jitter_ms: float = 0.0
    distribution: str = "uniform"  # uniform | normal | exponential
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_ms: float = 20.0


@dataclass(slots=True, frozen=True)
class LinkOverride:
    """A link model applied between two node groups."""

    src: str
    dst: str
    model: LinkModel
    symmetric: bool = True


@dataclass(slots=True, frozen=True)
class NetworkSpec:
    """The network: a default link model, optional geometry, per-group overrides."""

    default: LinkModel = LinkModel()
    topology: str = "flat"  # flat | plane
    plane_ms: float = 0.0  # extra one-way latency across the unit square (topology = plane)
    bandwidth_kbps: float = 0.0  # 0 = unlimited; limits stream transfer time per link
    links: tuple[LinkOverride, ...] = ()


_SYNC = SyncConfig()  # the intent table's defaults are the sync core's


@dataclass(slots=True, frozen=True)
class IntentSpec:
    """The ``[intent]`` table: replicated intent on every node (see docs/SIMULATOR_INTENT.md)."""

    fanout: int = _SYNC.fanout
    relay_ttl: int = _SYNC.relay_ttl
    anti_entropy_interval: float = _SYNC.anti_entropy_interval
    blob_chunk_size: int = 32 * 1024
    blob_window: int = 4
    blob_timeout: float = 5.0
    compact_after_rows: int = 1000


@dataclass(slots=True, frozen=True)
class PlacementSimSpec:
    """The ``[placement]`` table: how simulated nodes run what ``scheduler.place`` gives them."""

    start_delay: float = 0.5  # a node runs an assigned replica this long after it computed it (fetch, compile, warm)
    stop_delay: float = 0.0  # ... and stops one it is no longer assigned this long after (drain)
    evaluate_delay: float = 0.1  # a node re-evaluates placement this long after a membership change (debounce)
    incumbents: str = "gossip"  # gossip: running replicas ride node metadata and get the hysteresis bonus | none
    # published: each node publishes its own Vivaldi coordinate in its metadata when it moved more
    # than coord_threshold_ms (checked every coord_interval s), and views use those, so every node
    # scores proximity from the same numbers | local: each node's own copies of others' coordinates
    coordinates: str = "published"
    coord_interval: float = 5.0
    coord_threshold_ms: float = 2.0


@dataclass(slots=True, frozen=True)
class Fault:
    """One timed action of the scenario."""

    at: float
    action: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class Scenario:
    """A complete, validated scenario."""

    name: str
    nodes: int
    profile: MembershipConfig
    duration: float
    seeds: int = 3
    join_window: float = 2.0
    network: NetworkSpec = NetworkSpec()
    faults: tuple[Fault, ...] = ()
    description: str = ""
    arch_mix: tuple[str, ...] = ("x86_64",)
    bootstrap: str = "seeds"  # seeds: join through seed nodes | full: start with the full initial member list
    intent: IntentSpec | None = None  # None: pure membership, no crdt cost at all
    deployments: tuple[PlacementSpec, ...] = ()  # [[deployments]]: each node places them (sim/placement.py)
    placement: PlacementSimSpec | None = None  # set when there are deployments

    def node_name(self, i: int) -> str:
        """The canonical name of node i (zero-padded so names sort in index order)."""
        width = max(3, len(str(self.nodes + self.max_joins() - 1)))
        return f"n{i:0{width}d}"

    def max_joins(self) -> int:
        """Number of nodes added by ``join`` actions."""
        return sum(int(f.args.get("count", 1)) for f in self.faults if f.action == "join")


def _num(d: dict[str, Any], key: str, default: float, lo: float = 0.0, hi: float = math.inf, where: str = "") -> float:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise ScenarioError(f"{where}{key} must be a number in [{lo}, {hi}], got {v!r}")
    return float(v)


def _int(d: dict[str, Any], key: str, default: int, lo: int, hi: int, where: str = "") -> int:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ScenarioError(f"{where}{key} must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def _tables(d: dict[str, Any], key: str, where: str = "") -> list[dict[str, Any]]:
    """``d[key]`` as a list of tables (TOML ``[[key]]``), or a ScenarioError naming the key."""
    v = d.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise ScenarioError(f"{where}{key} must be a list of tables ([[{where}{key}]]), got {_short(v)}")
    return v


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


# Bounds of every membership setting a scenario may override. The floors keep a
# run finite: a timer of 0 (or 1e-9) s would fire forever at one virtual instant.
# 10 ms is below any real deployment's interval and still lets a test go fast.
_PROFILE_BOUNDS: dict[str, tuple[type, float, float]] = {
    "probe_interval": (float, 0.01, 3600.0),
    "probe_timeout": (float, 0.001, 3600.0),
    "indirect_checks": (int, 0, 64),
    "retransmit_mult": (int, 1, 100),
    "suspicion_mult": (int, 1, 100),
    "suspicion_max_timeout_mult": (int, 1, 100),
    "gossip_interval": (float, 0.01, 3600.0),
    "gossip_nodes": (int, 1, 64),
    "gossip_to_the_dead_time": (float, 0.0, 30 * 86400.0),
    "push_pull_interval": (float, 0.1, 86400.0),
    "awareness_max_multiplier": (int, 1, 100),
    "dead_node_reclaim_time": (float, 0.0, 30 * 86400.0),
    "reconnect_interval": (float, 0.01, 86400.0),
    "tombstone_time": (float, 0.0, 30 * 86400.0),
    "stream_timeout": (float, 0.001, 3600.0),
    "incarnation_window": (int, 1, 2**62),
    "max_members": (int, 2, 10_000_000),
    "max_new_members_per_push_pull": (int, 1, 10_000_000),
    "max_new_members_per_peer": (int, 1, 10_000_000),
}


def _profile_overrides(d: dict[str, Any]) -> dict[str, float | int]:
    """Type- and range-check ``profile_overrides`` before the membership config sees it."""
    out: dict[str, float | int] = {}
    w = "profile_overrides."
    for key in sorted(d):
        if key not in _PROFILE_BOUNDS:
            raise ScenarioError(f"unknown profile_overrides key {key!r} (known: {', '.join(sorted(_PROFILE_BOUNDS))})")
        kind, lo, hi = _PROFILE_BOUNDS[key]
        out[key] = _int(d, key, 0, int(lo), int(hi), w) if kind is int else _num(d, key, 0.0, lo, hi, w)
    return out


def _selector(v: Any, where: str) -> None:
    """A node selector: a name, "nA-nB", "random:K", "all", or a list of those."""
    if isinstance(v, list) and v:
        for x in v:
            if not isinstance(x, str):
                raise ScenarioError(f"{where} must be a node name or a list of names, got {_short(v)}")
            _selector(x, where)
        return
    if not isinstance(v, str) or not v:
        raise ScenarioError(f"{where} must be a node name or a non-empty list of names, got {_short(v)}")
    if v.startswith("random:"):
        k = v.split(":", 1)[1]
        if not k.isdigit():
            raise ScenarioError(f"{where} {v!r}: random:K needs a count K >= 0")


def _link(d: dict[str, Any], where: str, base: LinkModel | None = None) -> LinkModel:
    base = base or LinkModel()
    dist = d.get("distribution", base.distribution)
    if dist not in ("uniform", "normal", "exponential"):
        raise ScenarioError(f"{where}distribution must be uniform, normal or exponential")
    return LinkModel(
        latency_ms=_num(d, "latency_ms", base.latency_ms, 0, 60_000, where),
        jitter_ms=_num(d, "jitter_ms", base.jitter_ms, 0, 60_000, where),
        distribution=dist,
        loss=_num(d, "loss", base.loss, 0, 1, where),
        duplicate=_num(d, "duplicate", base.duplicate, 0, 1, where),
        reorder=_num(d, "reorder", base.reorder, 0, 1, where),
        reorder_ms=_num(d, "reorder_ms", base.reorder_ms, 0, 60_000, where),
    )


_KNOWN_TOP = {
    "name",
    "description",
    "nodes",
    "profile",
    "profile_overrides",
    "duration",
    "seeds",
    "join_window",
    "network",
    "faults",
    "arch_mix",
    "bootstrap",
    "intent",
    "deployments",
    "placement",
}

_DEPLOYMENT_KEYS = {"name", "replicas", "arch", "min_memory_mb", "min_cores", "labels", "hardware", "spread", "near",
                    "near_location", "near_label", "weights"}


def _strs(d: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    v = d.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        raise ScenarioError(f"{where}{key} must be a list of non-empty strings, got {_short(v)}")
    return tuple(v)


def _str_table(d: dict[str, Any], key: str, where: str) -> tuple[tuple[str, str], ...]:
    v = d.get(key, {})
    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
        raise ScenarioError(f"{where}{key} must be a table of strings, e.g. {{ tier = \"edge\" }}, got {_short(v)}")
    return tuple(sorted(v.items()))


def _deployments(doc: dict[str, Any]) -> tuple[PlacementSpec, ...]:
    out: list[PlacementSpec] = []
    for i, d in enumerate(_tables(doc, "deployments")):
        w = f"deployments[{i}]."
        unknown = sorted(set(d) - _DEPLOYMENT_KEYS)
        if unknown:
            raise ScenarioError(f"unknown {w[:-1]} key(s): {', '.join(unknown)} (known: {', '.join(sorted(_DEPLOYMENT_KEYS))})")
        name = d.get("name")
        if not isinstance(name, str) or not name or "," in name or not name.isprintable() or len(name) > 64:
            raise ScenarioError(f"{w}name must be 1-64 printable characters without commas, got {_short(name)}")
        if name in {x.name for x in out}:
            raise ScenarioError(f"{w}name {name!r} is used twice")
        spread = d.get("spread")
        if spread is not None and spread not in FAULT_LEVELS:
            raise ScenarioError(f"{w}spread must be one of {', '.join(FAULT_LEVELS)}, got {_short(spread)}")
        near = d.get("near")
        if near is not None and (not isinstance(near, str) or not near):
            raise ScenarioError(f"{w}near must be a node name, got {_short(near)}")
        loc = d.get("near_location")
        if loc is not None:
            if not (isinstance(loc, list) and len(loc) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in loc)
                    and -90 <= loc[0] <= 90 and -180 <= loc[1] <= 180):
                raise ScenarioError(f"{w}near_location must be [latitude, longitude], got {_short(loc)}")
            loc = (float(loc[0]), float(loc[1]))
        near_label = _str_table(d, "near_label", w)
        if len(near_label) > 1:
            raise ScenarioError(f"{w}near_label must hold one key = value, got {len(near_label)}")
        wt = d.get("weights", {})
        if not isinstance(wt, dict) or set(wt) - set(Weights.__slots__):
            raise ScenarioError(f"{w}weights must be a table of {', '.join(Weights.__slots__)}, got {_short(wt)}")
        weights = Weights(**{k: _num(wt, k, 0.0, 0.0, 1e6, w + "weights.") for k in wt})
        out.append(PlacementSpec(
            name=name,
            replicas=_int(d, "replicas", 1, 0, 10_000, w),
            arch=_strs(d, "arch", w),
            min_memory_mb=_int(d, "min_memory_mb", 0, 0, 1 << 40, w),
            min_cores=_int(d, "min_cores", 0, 0, 1 << 16, w),
            labels=_str_table(d, "labels", w),
            hardware=_strs(d, "hardware", w),
            near_node=near,
            near_location=loc,
            near_label=near_label[0] if near_label else None,
            spread=spread,
            weights=weights,
        ))
    return tuple(out)


def _switch_table(doc: dict[str, Any], key: str, on: bool, known: set[str]) -> dict[str, Any] | None:
    """The optional table ``doc[key]`` with only ``known`` keys; None when absent and not ``on``."""
    t = doc.get(key)
    if t is None and not on:
        return None
    t = {} if t is None else t
    if not isinstance(t, dict):
        raise ScenarioError(f"{key} must be a table")
    unknown = sorted(set(t) - known)
    if unknown:
        raise ScenarioError(f"unknown {key} key(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return t


def _placement(doc: dict[str, Any], deployments: tuple[PlacementSpec, ...]) -> PlacementSimSpec | None:
    known = {"start_delay", "stop_delay", "evaluate_delay", "incumbents", "coordinates", "coord_interval", "coord_threshold_ms"}
    t = _switch_table(doc, "placement", bool(deployments), known)
    if t is None:
        return None
    inc = t.get("incumbents", "gossip")
    if inc not in ("gossip", "none"):
        raise ScenarioError(f"placement.incumbents must be 'gossip' or 'none', got {_short(inc)}")
    coords = t.get("coordinates", "published")
    if coords not in ("published", "local"):
        raise ScenarioError(f"placement.coordinates must be 'published' or 'local', got {_short(coords)}")
    w = "placement."
    return PlacementSimSpec(
        coordinates=coords,
        coord_interval=_num(t, "coord_interval", 5.0, 0.1, 3600, w),
        coord_threshold_ms=_num(t, "coord_threshold_ms", 2.0, 0, 10_000, w),
        start_delay=_num(t, "start_delay", 0.5, 0, 3600, w),
        stop_delay=_num(t, "stop_delay", 0.0, 0, 3600, w),
        evaluate_delay=_num(t, "evaluate_delay", 0.1, 0, 3600, w),
        incumbents=inc,
    )


def _intent(doc: dict[str, Any], faults: list[Fault]) -> IntentSpec | None:
    known = {"fanout", "relay_ttl", "anti_entropy_interval", "blob_chunk_size", "blob_window", "blob_timeout", "compact_after_rows"}
    t = _switch_table(doc, "intent", any(f.action in INTENT_ACTIONS for f in faults), known)
    if t is None:
        return None
    w = "intent."
    return IntentSpec(
        fanout=int(_num(t, "fanout", _SYNC.fanout, 1, 64, w)),
        relay_ttl=int(_num(t, "relay_ttl", _SYNC.relay_ttl, 0, 32, w)),
        anti_entropy_interval=_num(t, "anti_entropy_interval", _SYNC.anti_entropy_interval, 0.01, 3600, w),
        blob_chunk_size=int(_num(t, "blob_chunk_size", 32 * 1024, 1024, MAX_BLOB_CHUNK, w)),
        blob_window=int(_num(t, "blob_window", 4, 1, 64, w)),
        blob_timeout=_num(t, "blob_timeout", 5.0, 0.01, 3600, w),
        compact_after_rows=int(_num(t, "compact_after_rows", 1000, 1, 10**9, w)),
    )


def parse(doc: dict[str, Any], default_name: str = "scenario") -> Scenario:
    """Validate a parsed TOML document into a :class:`Scenario`."""
    unknown = sorted(set(doc) - _KNOWN_TOP)
    if unknown:
        raise ScenarioError(f"unknown top-level key(s): {', '.join(unknown)}")
    nodes = doc.get("nodes")
    if not isinstance(nodes, int) or isinstance(nodes, bool) or not 1 <= nodes <= 20_000:
        raise ScenarioError("nodes must be an integer in [1, 20000]")
    if not isinstance(doc.get("profile", "lan"), str):
        raise ScenarioError(f"profile must be a profile name (a string), got {_short(doc['profile'])}")
    try:
        prof = profile(str(doc.get("profile", "lan")))
        overrides = doc.get("profile_overrides", {})
        if not isinstance(overrides, dict):
            raise ScenarioError("profile_overrides must be a table")
        if overrides:
            prof = prof.with_overrides(**_profile_overrides(overrides))
    except ConfigError as exc:
        raise ScenarioError(str(exc)) from None
    duration = _num(doc, "duration", 60.0, 0.001, MAX_DURATION)
    seeds = _int(doc, "seeds", 3, 1, nodes)
    net = doc.get("network", {})
    if not isinstance(net, dict):
        raise ScenarioError("network must be a table")
    default = _link(net, "network.")
    topology = net.get("topology", "flat")
    if topology not in ("flat", "plane"):
        raise ScenarioError("network.topology must be flat or plane")
    links = []
    for i, ld in enumerate(_tables(net, "links", "network.")):
        where = f"network.links[{i}]."
        if "from" not in ld or "to" not in ld:
            raise ScenarioError(f"{where} needs 'from' and 'to' node selectors")
        _selector(ld["from"], f"{where}from")
        _selector(ld["to"], f"{where}to")
        if not isinstance(ld.get("symmetric", True), bool):
            raise ScenarioError(f"{where}symmetric must be true or false")
        links.append(LinkOverride(str(ld["from"]), str(ld["to"]), _link(ld, where, default), bool(ld.get("symmetric", True))))
    network = NetworkSpec(
        default=default,
        topology=topology,
        plane_ms=_num(net, "plane_ms", 0.0, 0, 60_000, "network."),
        bandwidth_kbps=_num(net, "bandwidth_kbps", 0.0, 0, 1e9, "network."),
        links=tuple(links),
    )
    faults = []
    for i, fd in enumerate(_tables(doc, "faults")):
        where = f"faults[{i}]."
        action = fd.get("action")
        if action not in ACTIONS:
            raise ScenarioError(f"{where}action must be one of {', '.join(sorted(ACTIONS))}, got {action!r}")
        at = _num(fd, "at", 0.0, 0, duration, where)
        args = {k: v for k, v in fd.items() if k not in ("at", "action")}
        _check_fault_args(action, args, where)
        faults.append(Fault(at, action, args))
    faults.sort(key=lambda f: f.at)
    arch_mix = doc.get("arch_mix", ["x86_64"])
    if not isinstance(arch_mix, list) or not arch_mix or not all(isinstance(a, str) for a in arch_mix):
        raise ScenarioError("arch_mix must be a non-empty list of architecture names")
    bootstrap = doc.get("bootstrap", "seeds")
    if bootstrap not in ("seeds", "full"):
        raise ScenarioError("bootstrap must be 'seeds' (join through seed nodes) or 'full' (start pre-joined)")
    for key in ("name", "description"):
        if not isinstance(doc.get(key, ""), str):
            raise ScenarioError(f"{key} must be a string, got {_short(doc[key])}")
    deps = _deployments(doc)
    for f in faults:
        if f.action == "crash_replica" and f.args["deployment"] not in {d.name for d in deps}:
            raise ScenarioError(f"crash_replica at {f.at}s: deployment {f.args['deployment']!r} is not in [[deployments]]")
    return Scenario(
        bootstrap=bootstrap,
        name=str(doc.get("name", default_name)),
        description=str(doc.get("description", "")),
        nodes=nodes,
        profile=prof,
        duration=duration,
        seeds=seeds,
        join_window=_num(doc, "join_window", 2.0, 0, duration),
        network=network,
        faults=tuple(faults),
        arch_mix=tuple(arch_mix),
        intent=_intent(doc, faults),
        deployments=deps,
        placement=_placement(doc, deps),
    )


def _check_fault_args(action: str, args: dict[str, Any], where: str) -> None:
    needs_nodes = {"crash", "restart", "leave", "slow", "clock", "meta", "crash_replica"}
    if action in needs_nodes and "node" not in args and "nodes" not in args:
        raise ScenarioError(f"{where}{action} needs 'node' or 'nodes'")
    for key in ("node", "nodes", "from", "to"):
        if key in args:
            _selector(args[key], f"{where}{key}")
    if action == "partition":
        groups = args.get("groups")
        if not isinstance(groups, list) or len(groups) < 2:
            raise ScenarioError(f"{where}partition needs 'groups': a list of at least two node selectors")
        for g in groups:
            _selector(g, f"{where}groups")
    if action in ("one_way_loss", "link") and ("from" not in args or "to" not in args):
        raise ScenarioError(f"{where}{action} needs 'from' and 'to'")
    if action == "one_way_loss":
        _num(args, "loss", 1.0, 0, 1, where)
    if action == "link":
        _link(args, where)
        if not isinstance(args.get("symmetric", True), bool):
            raise ScenarioError(f"{where}symmetric must be true or false")
    if action == "leave":
        _num(args, "grace", 0.0, 0, 86400, where)
    if action == "meta":
        labels = args.get("labels", {})
        if not isinstance(labels, dict) or not all(isinstance(v, (str, int, float, bool)) for v in labels.values()):
            raise ScenarioError(f"{where}labels must be a table of KEY = \"value\", got {_short(labels)}")
        _num(args, "load", 0.0, 0, 1e6, where)
        if not isinstance(args.get("fault_domain", ""), str):
            raise ScenarioError(f"{where}fault_domain must be a string")
    if action == "join":
        _int(args, "count", 1, 1, 20_000, where)
    if action == "slow":
        _num(args, "delay_ms", 100.0, 0, 600_000, where)
    if action == "clock":
        _num(args, "skew", 0.0, -1e6, 1e6, where)
        _num(args, "drift", 0.0, -0.5, 0.5, where)
    if action == "crash_replica":
        _need_str(args, "deployment", where, action)
        _int(args, "fail_starts", 0, 0, 1_000_000, where)
        unknown = sorted(set(args) - {"node", "nodes", "deployment", "fail_starts"})
        if unknown:
            raise ScenarioError(f"{where}crash_replica: unknown key(s) {', '.join(unknown)} (known: deployment, fail_starts, node, nodes)")
    if action in INTENT_ACTIONS:
        _check_intent_args(action, args, where)


def _need_str(args: dict[str, Any], key: str, where: str, action: str) -> None:
    if not isinstance(args.get(key), str) or not args[key]:
        raise ScenarioError(f"{where}{action} needs '{key}' (a non-empty string)")


def _check_intent_args(action: str, args: dict[str, Any], where: str) -> None:
    if "node" not in args and "nodes" not in args:
        raise ScenarioError(f"{where}{action} needs 'node' or 'nodes' (where the write is made)")
    required = {
        "publish": ("module", "version"),
        "deploy": ("name", "module", "version"),
        "rollback": ("name",),
        "kv": ("ns", "key", "value"),
        "blob_fetch": ("module", "version"),
        "forge": ("kind",),
    }[action]
    for key in required:
        _need_str(args, key, where, action)
    from crdt.errors import ValidationError
    from crdt.schema import v_name, v_version, v_version_or_range

    try:
        if action in ("publish", "blob_fetch"):
            v_name(args["module"], "module name")
            v_version(args["version"])
        if action == "publish":
            _int(args, "size", 1024, 1, 50 * 1024 * 1024, where)
            caps = args.get("capabilities", [])
            if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
                raise ScenarioError(f"{where}capabilities must be a list of strings")
        if action == "deploy":
            v_name(args["name"], "deployment name")
            v_name(args["module"], "module name")
            v_version_or_range(args["version"])
            _int(args, "replicas", 1, 0, 10_000, where)
        if action == "rollback" and "to" in args:
            _need_str(args, "to", where, action)
            v_version(args["to"])
    except ValidationError as exc:
        raise ScenarioError(f"{where}{exc}") from None
    if action == "forge" and args["kind"] not in FORGERIES:
        raise ScenarioError(f"{where}forge kind must be one of {', '.join(FORGERIES)}")


# A scenario is a page of TOML; the bound keeps `sim /dev/zero` from eating memory.
MAX_SCENARIO_BYTES = 1 << 20


def read_bounded(path: str | Path, limit: int, what: str) -> bytes:
    """Read at most ``limit`` bytes of ``path``; a ScenarioError names the file when it is not readable or too big."""
    p = Path(path)
    if p.is_dir():
        raise ScenarioError(f"{what} {p} is a directory, not a file")
    try:
        with open(p, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise ScenarioError(f"cannot read {what} {p}: {exc.strerror}") from None
    if len(data) > limit:
        raise ScenarioError(f"{what} {p} is larger than {limit} bytes")
    return data


def load(path: str | Path) -> Scenario:
    """Load and validate a scenario file."""
    p = Path(path)
    raw = read_bounded(p, MAX_SCENARIO_BYTES, "scenario")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"scenario {p} is not UTF-8 TOML text (binary file?): bad byte at offset {exc.start}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{p}: invalid TOML: {exc}") from None
    return parse(doc, default_name=p.stem)


def builtin(name: str) -> Path:
    """Path of a scenario shipped with the package (``sim/scenarios/NAME.toml``)."""
    p = Path(__file__).parent / "scenarios" / f"{name}.toml"
    if not p.exists():
        raise ScenarioError(f"no built-in scenario {name!r}")
    return p
