"""Typed values of the intent documents and their strict validation (to and from record payloads)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from crdt.errors import SemverError, ValidationError
from model.errors import SemverError as ModelSemverError
from model.errors import SpecError
from model.manifest import KV_NAMESPACE_RE, NAME_RE, CapabilityRequest, Limits, Manifest
from model.semver import Range, Version, best_match

__all__ = [  # Manifest is the shared model's, re-exported for the registry's readers
    "Constraints", "DeploymentRevision", "DeploymentSpec", "KvLimits", "Manifest", "ModuleVersion", "PlacementEntry",
    "Preferences", "ReplicaClaim", "RouteSpec", "TenantQuota", "deployment_payload", "kv_record_key", "manifest_from_payload",
    "range_best", "registry_key", "revision_from", "route_key", "v_namespace", "validate_deployment_payload",
    "validate_kv_payload", "validate_placement_payload", "validate_registry_payload", "validate_route_payload", "validate_tenant_payload",
]

LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")
MAX_REPLICAS = 10_000
METHODS = frozenset({"*", "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
REPLICA_STATES = frozenset({"claimed", "fetching", "starting", "running", "stopping", "failed"})


def v_name(x: Any, what: str = "name") -> str:
    if not isinstance(x, str) or not NAME_RE.match(x):
        raise ValidationError(
            f"{what} {x!r:.70} is invalid: use 1-64 lowercase letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )
    return x


def v_text(x: Any, what: str, max_len: int = 1024, allow_empty: bool = True) -> str:
    if not isinstance(x, str) or len(x) > max_len or (not allow_empty and not x):
        raise ValidationError(f"{what} must be a string of at most {max_len} characters")
    return x


def v_int(x: Any, what: str, lo: int = 0, hi: int = 2**62) -> int:
    if not isinstance(x, int) or isinstance(x, bool) or not lo <= x <= hi:
        raise ValidationError(f"{what} must be an integer in [{lo}, {hi}], got {x!r:.40}")
    return x


def v_num(x: Any, what: str, lo: float = -1e15, hi: float = 1e15) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or not lo <= x <= hi:
        raise ValidationError(f"{what} must be a finite number in [{lo}, {hi}]")
    return float(x)


def v_strlist(x: Any, what: str, max_items: int = 64, max_len: int = 128) -> tuple[str, ...]:
    if not isinstance(x, (list, tuple)) or len(x) > max_items:
        raise ValidationError(f"{what} must be a list of at most {max_items} strings")
    return tuple(v_text(s, f"{what} item", max_len, allow_empty=False) for s in x)


def v_labels(x: Any, what: str = "labels") -> dict[str, str]:
    if not isinstance(x, dict) or len(x) > 64:
        raise ValidationError(f"{what} must be a map of at most 64 label names to strings")
    out: dict[str, str] = {}
    for k, v in sorted(x.items()):
        if not isinstance(k, str) or not LABEL_RE.match(k):
            raise ValidationError(f"{what} key {k!r:.40} is not a valid label name")
        out[k] = v_text(v, f"{what}[{k}]", 128)
    return out


def _model(fn: Any, *args: Any) -> Any:
    """Call the shared model, turning its errors into this package's (documents catch ValidationError)."""
    try:
        return fn(*args)
    except ModelSemverError as exc:
        raise SemverError(str(exc)) from None
    except SpecError as exc:
        raise ValidationError(str(exc)) from None


def v_version(x: Any) -> str:
    _model(Version.parse, x)
    return x


def v_version_or_range(x: Any) -> str:
    if not isinstance(x, str):
        raise ValidationError("version must be a semver version or range string")
    _model(Range.parse, x)
    return x


def _fields(p: Any, what: str, required: set[str], optional: set[str] = frozenset()) -> dict[str, Any]:  # type: ignore[assignment]
    if not isinstance(p, dict):
        raise ValidationError(f"{what} must be a map")
    missing = required - set(p)
    extra = set(p) - required - set(optional)
    if missing:
        raise ValidationError(f"{what} misses field(s) {', '.join(sorted(missing))}")
    if extra:
        raise ValidationError(f"{what} has unknown field(s) {', '.join(sorted(extra))}")
    return p


# --- registry --------------------------------------------------------------------------


def manifest_from_payload(p: Any) -> Manifest:
    """Validate a registry payload as the shared ``model.Manifest`` (the one manifest validation)."""
    m: Manifest = _model(Manifest.from_payload, p)
    return m


@dataclass(slots=True, frozen=True)
class ModuleVersion:
    """A registry entry in a node's view: the published manifest with the record that signed it.

    ``manifest`` is None only for a removal tombstone of a version this node never saw published.
    ``publisher``, ``seq`` and ``signature`` are the registry record's, so ``runtime.SignedManifest``
    can be rebuilt from them and admitted as is.
    """

    name: str
    version: str
    manifest: Manifest | None
    publisher: str = ""
    seq: int = 0
    signature: bytes = b""
    removed: bool = False
    removed_at: float | None = None
    removed_reason: str = ""

    @property
    def sha256(self) -> str:
        return self.manifest.sha256 if self.manifest else ""

    @property
    def size(self) -> int:
        return self.manifest.size if self.manifest else 0

    @property
    def created_at(self) -> float:
        return self.manifest.created_at if self.manifest else 0.0

    @property
    def description(self) -> str:
        return self.manifest.description if self.manifest else ""


def registry_key(name: str, version: str) -> str:
    return f"{name}@{version}"


def validate_registry_payload(key: str, p: Any) -> None:
    """A registry record is a manifest or a tombstone ``{removed, removed_at, reason, name, version}``."""
    if isinstance(p, dict) and p.get("removed") is True:
        _fields(p, "tombstone", {"removed", "removed_at", "reason", "name", "version"})
        v_num(p["removed_at"], "removed_at", 0)
        v_text(p["reason"], "removal reason", 256)
        name, version = v_name(p["name"], "module name"), v_version(p["version"])
    else:
        m = manifest_from_payload(p)
        name, version = m.name, m.version
    if key != registry_key(name, version):
        raise ValidationError(f"registry key {key!r:.80} does not match {name}@{version}")


DEFAULT_TENANT = "default"
# Seed 003 R14: 100 concurrent executions, 10,000 invocations a minute, one CPU-hour a day.
DEFAULT_MAX_CONCURRENCY = 100
DEFAULT_PER_MINUTE = 10_000
DEFAULT_CPU_SECONDS_PER_DAY = 3600.0
MAX_QUOTA = 10**9


# --- deployments -----------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Constraints:
    """Hard constraints: every one must hold on a node for it to be eligible."""

    arch: tuple[str, ...] = ()
    min_memory_mb: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    hardware: tuple[str, ...] = ()

    def to_payload(self) -> dict[str, Any]:
        return {"arch": list(self.arch), "min_memory_mb": self.min_memory_mb, "labels": dict(self.labels), "hardware": list(self.hardware)}

    @classmethod
    def from_payload(cls, p: Any) -> "Constraints":
        _fields(p, "constraints", {"arch", "min_memory_mb", "labels", "hardware"})
        return cls(
            v_strlist(p["arch"], "arch", 16, 32),
            v_int(p["min_memory_mb"], "min_memory_mb", 0, 2**40),
            v_labels(p["labels"]),
            v_strlist(p["hardware"], "hardware tags", 32, 64),
        )


@dataclass(slots=True, frozen=True)
class Preferences:
    """Soft placement preferences: proximity and fault-domain spread."""

    near_location: tuple[float, float] | None = None  # (lat, lon)
    near_label: str | None = None  # "key=value"
    near_node: str | None = None
    spread: str | None = None  # fault-domain level, e.g. "region", "site", "vehicle"

    def to_payload(self) -> dict[str, Any]:
        return {
            "near_location": list(self.near_location) if self.near_location else None,
            "near_label": self.near_label,
            "near_node": self.near_node,
            "spread": self.spread,
        }

    @classmethod
    def from_payload(cls, p: Any) -> "Preferences":
        _fields(p, "placement preferences", {"near_location", "near_label", "near_node", "spread"})
        loc = p["near_location"]
        if loc is not None:
            if not isinstance(loc, (list, tuple)) or len(loc) != 2:
                raise ValidationError("near_location must be [latitude, longitude]")
            loc = (v_num(loc[0], "latitude", -90, 90), v_num(loc[1], "longitude", -180, 180))
        opt = lambda k, n: None if p[k] is None else v_text(p[k], n, 128, False)  # noqa: E731
        return cls(loc, opt("near_label", "near_label"), opt("near_node", "near_node"), opt("spread", "spread"))


@dataclass(slots=True, frozen=True)
class DeploymentSpec:
    """What an operator asks for: which module/version, how many replicas, where, with what grants."""

    name: str
    module: str
    version: str  # exact version or semver range
    replicas: int = 1  # 0 = on demand
    constraints: Constraints = field(default_factory=Constraints)
    preferences: Preferences = field(default_factory=Preferences)
    # What the operator lets this deployment use, in the manifest's own terms: a node grants a
    # module the intersection of its manifest's request, this, and the node's policy.
    capabilities: CapabilityRequest = field(default_factory=CapabilityRequest)
    limits: Limits | None = None  # a ceiling below the manifest's limits; None: the manifest's
    tenant: str = DEFAULT_TENANT  # whose quotas (kind "tenant" records) the deployment's calls count against

    def __post_init__(self) -> None:
        v_name(self.name, "deployment name")
        v_name(self.tenant, "tenant name")
        v_name(self.module, "module name")
        v_version_or_range(self.version)
        v_int(self.replicas, "replicas", 0, MAX_REPLICAS)
        if not isinstance(self.capabilities, CapabilityRequest):
            raise ValidationError("deployment capabilities must be a CapabilityRequest")
        if self.limits is not None and not isinstance(self.limits, Limits):
            raise ValidationError("deployment limits must be a Limits or None")

    def to_payload(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "version": self.version,
            "replicas": self.replicas,
            "constraints": self.constraints.to_payload(),
            "preferences": self.preferences.to_payload(),
            "capabilities": self.capabilities.to_payload(),
            "limits": self.limits.to_payload() if self.limits is not None else None,
            # Only when not the default: a default-tenant spec encodes (and digests) as before tenants.
            **({"tenant": self.tenant} if self.tenant != DEFAULT_TENANT else {}),
        }

    @classmethod
    def from_payload(cls, p: Any) -> "DeploymentSpec":
        # ``tenant`` is optional: a payload written before tenants existed belongs to "default".
        _fields(p, "deployment spec", {"name", "module", "version", "replicas", "constraints", "preferences", "capabilities", "limits"},
                {"tenant"})
        return cls(
            name=p["name"],
            module=p["module"],
            version=p["version"],
            replicas=p["replicas"],
            constraints=Constraints.from_payload(p["constraints"]),
            preferences=Preferences.from_payload(p["preferences"]),
            capabilities=_model(CapabilityRequest.from_payload, p["capabilities"]),
            limits=None if p["limits"] is None else _model(Limits.from_payload, p["limits"]),
            tenant=p.get("tenant", DEFAULT_TENANT),
        )


@dataclass(slots=True, frozen=True)
class DeploymentRevision:
    """One revision of a deployment as written (spec + active version pointer)."""

    spec: DeploymentSpec | None  # None for a deletion
    active_version: str | None
    reason: str  # "set", "rollback", "delete"
    written_at: float
    signer: str
    seq: int

    @property
    def deleted(self) -> bool:
        return self.spec is None


def deployment_payload(spec: DeploymentSpec | None, active: str | None, reason: str, now: float) -> dict[str, Any]:
    return {"spec": spec.to_payload() if spec else None, "active_version": active, "reason": reason, "written_at": now}


def validate_deployment_payload(key: str, p: Any) -> None:
    _fields(p, "deployment record", {"spec", "active_version", "reason", "written_at"})
    if p["reason"] not in ("set", "rollback", "delete"):
        raise ValidationError("deployment reason must be set, rollback or delete")
    v_num(p["written_at"], "written_at", 0)
    if p["spec"] is None:
        if p["reason"] != "delete":
            raise ValidationError("a deployment record without spec must be a delete")
        return
    spec = DeploymentSpec.from_payload(p["spec"])
    if spec.name != key:
        raise ValidationError(f"deployment key {key!r:.60} does not match spec name {spec.name!r}")
    if p["active_version"] is not None:
        v_version(p["active_version"])
        if not Range.parse(spec.version).matches(p["active_version"]):
            raise ValidationError(f"active version {p['active_version']} does not satisfy {spec.version}")


def revision_from(rec: Any) -> DeploymentRevision:
    p = rec.payload
    spec = DeploymentSpec.from_payload(p["spec"]) if p["spec"] is not None else None
    return DeploymentRevision(spec, p["active_version"], p["reason"], float(p["written_at"]), rec.signer, rec.seq)


# --- routes ----------------------------------------------------------------------------

ROUTE_FORMATS = ("body", "http")
HOST_RE = re.compile(r"^(\*|(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*)$")


@dataclass(slots=True, frozen=True)
class RouteSpec:
    """``host`` is exact, ``*.suffix`` or ``*``; ``path`` is exact or a ``/prefix/*``; ``method`` or ``*``."""

    host: str
    path: str
    method: str
    deployment: str
    priority: int = 0
    format: str = "body"  # what the handler gets: "body" (request body in, response body out) or "http" (docs/ABI.md)

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or self.host != self.host.lower() or not HOST_RE.match(self.host) or len(self.host) > 253:
            raise ValidationError(f"route host {self.host!r:.60} must be a lowercase hostname, *.suffix or *")
        if not isinstance(self.path, str) or not self.path.startswith("/") or len(self.path) > 1024 or "*" in self.path[:-1]:
            raise ValidationError(f"route path {self.path!r:.60} must start with '/' and may only end in '*'")
        if self.path.endswith("*") and not self.path.endswith("/*"):
            raise ValidationError("a prefix route path must end in '/*'")
        if self.method not in METHODS:
            raise ValidationError(f"route method {self.method!r:.20} must be one of {', '.join(sorted(METHODS))}")
        v_name(self.deployment, "deployment name")
        v_int(self.priority, "priority", -1000, 1000)
        if self.format not in ROUTE_FORMATS:
            raise ValidationError(f"route format {self.format!r:.20} must be one of {', '.join(ROUTE_FORMATS)}")

    @property
    def key(self) -> str:
        return route_key(self.host, self.path, self.method)

    def to_payload(self) -> dict[str, Any]:
        p = {"host": self.host, "path": self.path, "method": self.method, "deployment": self.deployment, "priority": self.priority}
        if self.format != "body":  # older records carry no format; "body" is written as they were
            p["format"] = self.format
        return p

    @classmethod
    def from_payload(cls, p: Any) -> "RouteSpec":
        _fields(p, "route", {"host", "path", "method", "deployment", "priority"}, {"format"})
        return cls(p["host"], p["path"], p["method"], p["deployment"], p["priority"], p.get("format", "body"))


def route_key(host: str, path: str, method: str) -> str:
    return f"{method} {host}{path}"


def _deleted(key: str, p: Any, what: str) -> bool:
    """True for a valid deletion payload ``{deleted: true, key}`` (routes, subscriptions)."""
    if not (isinstance(p, dict) and p.get("deleted") is True):
        return False
    _fields(p, f"{what} tombstone", {"deleted", "key"})
    if p["key"] != key:
        raise ValidationError(f"{what} tombstone key mismatch")
    return True


def validate_route_payload(key: str, p: Any) -> None:
    if _deleted(key, p, "route"):
        return
    r = RouteSpec.from_payload(p)
    if r.key != key:
        raise ValidationError(f"route key {key!r:.60} does not match {r.key!r:.60}")


# --- tenants ---------------------------------------------------------------------------



@dataclass(slots=True, frozen=True)
class TenantQuota:
    """A tenant's limits (kind ``tenant``, key = name, operator-signed). A tenant without a record has the defaults.

    ``max_concurrency`` and ``per_minute`` hold per node (each node counts the calls it admits);
    ``cpu_seconds_per_day`` holds mesh-wide (usage is gossiped), per UTC day.
    """

    name: str
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    per_minute: int = DEFAULT_PER_MINUTE
    cpu_seconds_per_day: float = DEFAULT_CPU_SECONDS_PER_DAY

    def __post_init__(self) -> None:
        v_name(self.name, "tenant name")
        v_int(self.max_concurrency, "max_concurrency", 0, MAX_QUOTA)
        v_int(self.per_minute, "per_minute", 0, MAX_QUOTA)
        object.__setattr__(self, "cpu_seconds_per_day", v_num(self.cpu_seconds_per_day, "cpu_seconds_per_day", 0, 1e12))

    def to_payload(self) -> dict[str, Any]:
        return {"name": self.name, "max_concurrency": self.max_concurrency, "per_minute": self.per_minute,
                "cpu_seconds_per_day": self.cpu_seconds_per_day}

    @classmethod
    def from_payload(cls, p: Any) -> "TenantQuota":
        _fields(p, "tenant quota", {"name", "max_concurrency", "per_minute", "cpu_seconds_per_day"})
        return cls(p["name"], p["max_concurrency"], p["per_minute"], p["cpu_seconds_per_day"])


def validate_tenant_payload(key: str, p: Any) -> None:
    """A tenant record is a :class:`TenantQuota` or a removal ``{deleted: true, name}`` (back to the defaults)."""
    if isinstance(p, dict) and p.get("deleted") is True:
        _fields(p, "tenant tombstone", {"deleted", "name"})
        if p["name"] != key:
            raise ValidationError("tenant tombstone name mismatch")
        v_name(key, "tenant name")
        return
    q = TenantQuota.from_payload(p)
    if q.name != key:
        raise ValidationError(f"tenant key {key!r:.60} does not match {q.name!r}")


# --- placement -------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class ReplicaClaim:
    deployment: str
    version: str
    state: str
    index: int = 0

    def to_payload(self) -> dict[str, Any]:
        return {"deployment": self.deployment, "version": self.version, "state": self.state, "index": self.index}

    @classmethod
    def from_payload(cls, p: Any) -> "ReplicaClaim":
        _fields(p, "replica claim", {"deployment", "version", "state", "index"})
        if p["state"] not in REPLICA_STATES:
            raise ValidationError(f"replica state must be one of {', '.join(sorted(REPLICA_STATES))}")
        return cls(v_name(p["deployment"], "deployment name"), v_version(p["version"]), p["state"], v_int(p["index"], "index", 0, MAX_REPLICAS))


@dataclass(slots=True, frozen=True)
class PlacementEntry:
    """What one node claims and runs; written only by that node."""

    node_id: str
    replicas: tuple[ReplicaClaim, ...]
    updated_at: float

    def to_payload(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "replicas": [r.to_payload() for r in self.replicas], "updated_at": self.updated_at}

    @classmethod
    def from_payload(cls, p: Any) -> "PlacementEntry":
        _fields(p, "placement entry", {"node_id", "replicas", "updated_at"})
        reps = p["replicas"]
        if not isinstance(reps, list) or len(reps) > 4096:
            raise ValidationError("placement replicas must be a list of at most 4096 claims")
        return cls(v_text(p["node_id"], "node id", 256, False), tuple(ReplicaClaim.from_payload(r) for r in reps), v_num(p["updated_at"], "updated_at", 0))


def validate_placement_payload(key: str, p: Any) -> None:
    e = PlacementEntry.from_payload(p)
    if e.node_id != key:
        raise ValidationError("placement entry node id does not match its key")


# --- KV --------------------------------------------------------------------------------

NS_RE = KV_NAMESPACE_RE  # one namespace spelling: what a manifest requests is what KV stores


@dataclass(slots=True, frozen=True)
class KvLimits:
    """Per-namespace limits, enforced on every local write and (per value) on every remote record."""

    max_key_len: int = 256
    # A value travels in one signed record of at most 60,000 bytes (crdt.logrecord), with its key,
    # signer, chain link and signature: 56 KiB leaves room for the longest key.
    max_value_bytes: int = 56 * 1024
    max_keys: int = 10_000
    max_namespace_bytes: int = 8 * 1024 * 1024


def v_namespace(ns: Any) -> str:
    if not isinstance(ns, str) or not NS_RE.match(ns):
        raise ValidationError(f"KV namespace {ns!r:.60} must be 1-64 of [a-z0-9._-], starting alphanumeric")
    return ns


def kv_record_key(ns: str, key: str) -> str:
    return f"{ns}/{key}"


def validate_kv_payload(key: str, p: Any, limits: KvLimits) -> None:
    _fields(p, "kv value", {"v"})
    ns, _, k = key.partition("/")
    v_namespace(ns)
    if not k or len(k) > limits.max_key_len:
        raise ValidationError(f"KV key must be 1-{limits.max_key_len} characters")
    v = p["v"]
    if v is not None and (not isinstance(v, bytes) or len(v) > limits.max_value_bytes):
        raise ValidationError(f"KV value must be bytes of at most {limits.max_value_bytes} bytes or a deletion")


def range_best(spec_version: str, versions: list[str]) -> str | None:
    """The highest version in ``versions`` satisfying an exact version or range."""
    best: str | None = _model(best_match, spec_version, versions)
    return best


# --- subscriptions (events) ------------------------------------------------------------

MAX_SUB_QUEUE = 100_000
MAX_SUB_ATTEMPTS = 100


@dataclass(slots=True, frozen=True)
class SubscriptionSpec:
    """A deployment subscribed to events: topic pattern, filters, reply topic, retry and queue bounds.

    ``where`` maps event metadata keys to shell-style globs (every one must match); ``contains`` is
    a substring the event data must contain ("" = any); ``reply_topic`` (None = none) receives the
    deployment's output of each successful delivery.
    """

    name: str
    topic: str
    deployment: str
    where: dict[str, str] = field(default_factory=dict)
    contains: str = ""
    reply_topic: str | None = None
    max_attempts: int = 5
    queue: int = 1000

    def __post_init__(self) -> None:
        from model.topics import META_KEY_RE, validate_pattern, validate_topic

        v_name(self.name, "subscription name")
        _model(validate_pattern, self.topic)
        v_name(self.deployment, "deployment name")
        if not isinstance(self.where, dict) or len(self.where) > 32:
            raise ValidationError("subscription where must be a map of at most 32 KEY: GLOB filters")
        for k, g in self.where.items():
            if not isinstance(k, str) or not META_KEY_RE.match(k):
                raise ValidationError(f"where key {k!r:.40} must be 1-64 of [A-Za-z0-9_.:-]")
            v_text(g, f"where[{k}]", 256)
        v_text(self.contains, "contains", 1024)
        if self.reply_topic is not None:
            _model(validate_topic, self.reply_topic)
            from model.topics import matches

            if matches(self.topic, self.reply_topic):
                raise ValidationError(f"reply topic {self.reply_topic!r} matches the subscription's own pattern "
                                      f"{self.topic!r}: every reply would run the deployment again, forever")
        v_int(self.max_attempts, "max_attempts", 1, MAX_SUB_ATTEMPTS)
        v_int(self.queue, "queue", 1, MAX_SUB_QUEUE)

    def to_payload(self) -> dict[str, Any]:
        return {"name": self.name, "topic": self.topic, "deployment": self.deployment, "where": dict(sorted(self.where.items())),
                "contains": self.contains, "reply_topic": self.reply_topic, "max_attempts": self.max_attempts, "queue": self.queue}

    @classmethod
    def from_payload(cls, p: Any) -> "SubscriptionSpec":
        _fields(p, "subscription", {"name", "topic", "deployment", "where", "contains", "reply_topic", "max_attempts", "queue"})
        return cls(p["name"], p["topic"], p["deployment"], p["where"], p["contains"], p["reply_topic"], p["max_attempts"], p["queue"])


def validate_subscription_payload(key: str, p: Any) -> None:
    """A subscription record is a spec or a tombstone ``{deleted: true, key}``."""
    if _deleted(key, p, "subscription"):
        return
    s = SubscriptionSpec.from_payload(p)
    if s.name != key:
        raise ValidationError(f"subscription key {key!r:.60} does not match its name {s.name!r}")
