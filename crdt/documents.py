"""The typed intent documents over one node's :class:`~crdt.signedlog.SignedLog` and its *effective view*.

Nothing else in the code base reads the log's records directly. Every value is a chained
signed record (:mod:`crdt.logrecord`) in a slot ``(kind, key)``:

* ``registry``    key ``"<name>@<version>"``  a manifest, later a removal record ``{removed, ...}``
* ``deployments`` key ``"<name>"``             one record per revision (the slot's history = rollback)
* ``routes``      key ``"<route key>"``         a route, or ``{deleted: true}``
* ``placement``   key ``"<node id>"``           written only by that node's key
* ``kv``          key ``"<ns>/<key>"``          ``{v: bytes}`` or ``{v: null}`` (deleted)
* ``tenant``      key ``"<tenant name>"``        a :class:`~crdt.schema.TenantQuota`, or ``{deleted: true, name}``

The view is a deterministic function of the set of records this node has verified, which no
remote operation can shrink (see :mod:`crdt.signedlog`): per slot, each signer's own latest
in-view record is its candidate, and across signers the greatest ``(wall_ms, tombstone, signer)``
wins. Deletions are signed records too, so a deleted entry can neither come back by a replay
nor disappear by a raw delete: there is no delete operation on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

import structlog

from crdt.errors import NotFound
from crdt.keys import SigningKey
from crdt.logrecord import LogRecord
from crdt.metrics import Counters
from crdt.routes import RouteTable
from crdt.schema import (
    DEFAULT_TENANT,
    DeploymentRevision,
    DeploymentSpec,
    KvLimits,
    ModuleVersion,
    PlacementEntry,
    RouteSpec,
    TenantQuota,
    kv_record_key,
    manifest_from_payload,
    range_best,
    revision_from,
    v_namespace,
)
from crdt.meshtrust import MeshTrust
from crdt.signedlog import AddResult, LogAudit, Revocation, SignedLog, schema_validator
from crdt.trust import TrustConfig

if TYPE_CHECKING:
    from crdt.schema import SubscriptionSpec

# Refusals that a later trust record can lift: such records are parked and offered again.
_PARK_REASONS = frozenset({"unknown_signer", "role"})
MAX_PARKED = 1024
MAX_CACHED_NAMES = 4096  # names a per-name answer cache holds before it starts over

KINDS = ("registry", "deployments", "routes", "placement", "kv", "trust")
KINDS += ("subscriptions",)  # events: operator-signed subscriptions (crdt.schema.SubscriptionSpec)
KINDS += ("tenant",)  # quotas: operator-signed tenant limits (crdt.schema.TenantQuota)


@dataclass(slots=True, frozen=True)
class AuditEvent:
    """An invalid record or an equivocation: handed to the audit sink, never acted upon.

    ``root`` is ``"log"``, ``slot`` the position ``signer:seq`` (empty when the record did not
    even decode), ``reason`` one of the names counted in ``Counters.invalid_by_reason``.
    ``root`` ``"store"`` reports the node's own store: ``reason`` ``store_damaged`` (what was
    lost, at start-up) or ``store_recovered`` (peers' heads caught up; writes allowed again).
    """

    root: str
    slot: str
    reason: str
    detail: str
    signer: str | None
    seq: int | None


@dataclass(slots=True, frozen=True)
class Deployment:
    """The effective state of one deployment."""

    name: str
    spec: DeploymentSpec
    active_version: str | None
    revision: int  # number of revisions so far (1-based index of the current one)
    history: tuple[DeploymentRevision, ...]


VisibleHook = Callable[[LogRecord, float], None]
AuditSink = Callable[[AuditEvent], None]


class IntentDoc:
    """One node's verified signed records plus the typed effective view over them."""

    def __init__(
        self,
        trust: TrustConfig,
        *,
        client_id: int = 0,  # accepted for compatibility: there is no Yjs client any more
        kv_limits: KvLimits = KvLimits(),
        counters: Counters | None = None,
        audit_sink: AuditSink | None = None,
        on_visible: VisibleHook | None = None,
        node_id: str = "",
        verified: Any = None,  # accepted for compatibility: the log keeps its own cache
        revocations: dict[str, Revocation] | None = None,
        roots: Iterable[bytes] = (),
    ) -> None:
        self.trust = trust
        self.kv_limits = kv_limits
        self.counters = counters if counters is not None else Counters()
        self.audit_sink = audit_sink
        self.on_visible = on_visible
        self.log = structlog.get_logger("crdt.documents").bind(node_id=node_id)
        # Roots (the mesh file's admin keys) + replicated grants and revocations + trust.json.
        self.adapter = MeshTrust(trust, roots, revocations)
        self.records = SignedLog(self.adapter, validator=schema_validator(kv_limits), counters=self.counters)
        self._routes: RouteTable | None = None
        self._placements: dict[str, PlacementEntry] | None = None  # placements(), rebuilt like the route table
        # tenant() and deployment_tenant() answers (every invocation's quota check asks both), kept
        # until a record of their kind enters the view (or refresh()): bounded, cleared when full.
        self._tenants: dict[str, TenantQuota | None] = {}
        self._deployment_tenants: dict[str, str | None] = {}
        # Running KV usage: namespace -> [live keys, bytes of keys + values], and what each
        # document key currently contributes, so a write never rescans its namespace.
        self._kv_usage: dict[str, list[int]] = {}
        self._kv_counted: dict[str, int] = {}
        # Records refused only because their signer is not (yet) trusted or lacks the role:
        # offered again whenever the replicated trust changes (a grant may arrive after the
        # records it authorises). Bounded; oldest out. Sync would fetch them again anyway.
        self._parked: dict[bytes, bytes] = {}
        self._last_wall = 0.0
        # Records that entered the store path through a re-offer: the owner persists them.
        self.adopt_sink: Callable[[bytes], None] | None = None
        self._in_trust_update = False

    # --- intake ----------------------------------------------------------------------

    def add(self, data: bytes, now_wall: float, now: float = 0.0) -> AddResult:
        """Verify one encoded record from a peer (or the store) and fold it into the view; never raises."""
        self._last_wall = max(self._last_wall, now_wall)
        res = self.records.add(data, now_wall)
        if res.status == "rejected" and res.reason in _PARK_REASONS and isinstance(data, (bytes, bytearray)):
            self._park(bytes(data), res.record_id)
        return self._digest(res, now)

    def _park(self, data: bytes, rid: bytes) -> None:
        if rid in self._parked:
            return
        self._parked[rid] = data
        while len(self._parked) > MAX_PARKED:
            del self._parked[next(iter(self._parked))]

    def parked_count(self) -> int:
        return len(self._parked)

    def update_trust(self, now: float = 0.0) -> bool:
        """Re-derive the replicated trust; on a change refresh the view and re-offer parked records."""
        if self._in_trust_update:
            return False
        self._in_trust_update = True
        changed_any = False
        try:
            for _ in range(64):  # each round adopts at least one record or ends
                changed = self.adapter.recompute(self.records)
                changed_any |= changed
                if changed:
                    self.refresh()
                adopted = False
                if self._parked:
                    parked = sorted(self._parked.items(), key=lambda kv: (LogRecord.decode(kv[1]).signer, LogRecord.decode(kv[1]).seq, kv[0]))
                    for rid, data in parked:
                        res = self.records.add(data, self._last_wall)
                        if res.status == "rejected" and res.reason in _PARK_REASONS:
                            continue
                        del self._parked[rid]
                        if res.stored:
                            adopted = True
                            if self.adopt_sink is not None:
                                self.adopt_sink(data)
                        self._digest(res, now)
                if not adopted and not changed:
                    break
        finally:
            self._in_trust_update = False
        if changed_any:
            self.log.info("trust_changed", generation=self.adapter.generation, grants=len(self.adapter.grants), revocations=len(self.adapter.revoked))
        return changed_any

    def append(self, signer: SigningKey, kind: str, key: str, payload: Any, now_wall: float, now: float = 0.0) -> tuple[LogRecord, AddResult]:
        """Sign our next record for ``kind:key`` and add it (raises LogError/ValidationError on a local fault)."""
        rec, res = self.records.append(signer, kind, key, payload, now_wall)
        if res.status in ("accepted", "pending"):
            self.counters.local_writes += 1
        return rec, self._digest(res, now)

    def release_due(self, now_wall: float, now: float = 0.0) -> list[AddResult]:
        """Apply held records whose wall time has come (see :meth:`SignedLog.release_due`)."""
        return [self._digest(r, now) for r in self.records.release_due(now_wall)]

    def _digest(self, res: AddResult, now: float) -> AddResult:
        """Audit, usage totals, route cache and the on-visible hook for one add."""
        recount = False
        for ev in res.audit:
            self._audit(ev)
            if ev.event == "equivocation":
                recount = True  # that signer's records from the fork on left the view
        kv_keys: set[str] = set()
        trust = recount
        for r in res.visible:
            if r.kind == "trust":
                trust = True
            elif r.kind == "kv":
                kv_keys.add(r.key)
            elif r.kind == "routes":
                self._routes = None
            elif r.kind == "placement":
                self._placements = None
            elif r.kind == "tenant":
                self._tenants.clear()
            elif r.kind == "deployments":
                self._deployment_tenants.clear()
        if recount:
            self.refresh()
        else:
            for k in sorted(kv_keys):
                self._recount_kv(k)
        if self.on_visible is not None:
            for r in res.visible:
                self.on_visible(r, now)
        if trust:
            self.update_trust(now)
        return res

    def _audit(self, ev: LogAudit) -> None:
        slot = f"{ev.signer}:{ev.seq}" if ev.signer is not None else ""
        self.log.warning("crdt_invalid_record" if ev.event == "invalid" else "crdt_equivocation", slot=slot, reason=ev.reason, detail=ev.detail[:200])
        if self.audit_sink is not None:
            self.audit_sink(AuditEvent("log", slot, ev.reason, ev.detail, ev.signer, ev.seq))

    def refresh(self) -> None:
        """Recompute every cached derivation (route table, placements, tenants, KV usage): after a fork, a revocation or a trust change."""
        self._routes = None
        self._placements = None
        self._tenants.clear()
        self._deployment_tenants.clear()
        self._kv_usage.clear()
        self._kv_counted.clear()
        for k in self.records.slots("kv"):
            self._recount_kv(k)

    def revoke(self, signer: str, at_ms: int, through_seq: int) -> None:
        """Revoke a key locally: its records with ``wall_ms >= at_ms`` or ``seq > through_seq`` leave the view."""
        self.adapter.revoke(signer, at_ms, through_seq)
        self.refresh()
        self.update_trust()

    def _recount_kv(self, key: str) -> None:
        """Move one KV document key's contribution to its namespace's running usage."""
        rec = self.effective("kv", key)
        ns, _, k = key.partition("/")
        v = rec.payload["v"] if rec is not None else None
        new = -1 if v is None else len(v) + len(k)  # -1: no live value
        old = self._kv_counted.pop(key, -1)
        if new >= 0:
            self._kv_counted[key] = new
        if new == old:
            return
        usage = self._kv_usage.setdefault(ns, [0, 0])
        if old >= 0:
            usage[0] -= 1
            usage[1] -= old
        if new >= 0:
            usage[0] += 1
            usage[1] += new

    # --- effective view: generic ----------------------------------------------------------

    def effective(self, kind: str, key: str) -> LogRecord | None:
        """The winning record of one key: greatest ``(wall_ms, tombstone, signer)`` among each signer's latest."""
        r = self.records.winner(kind, key)
        return None if r is None or r.tombstone else r

    def history(self, kind: str, key: str) -> list[LogRecord]:
        """All in-view records of one key, oldest (losing) first."""
        return [r for r in self.records.history(kind, key) if not r.tombstone]

    def keys(self, kind: str) -> list[str]:
        """Keys of ``kind`` with a winning record, sorted."""
        return [k for k in self.records.slots(kind) if self.effective(kind, k) is not None]

    def max_seq_of_signer(self, signer: str) -> int:
        """The highest seq of ``signer`` this node holds (its next write takes the one after)."""
        return self.records.next_seq_for(signer) - 1

    def has_write(self, signer: str, seq: int) -> bool:
        """True once the write ``(signer, seq)`` is a record in this node's view."""
        return self.records.in_view(signer, seq)

    def encoded_size(self) -> int:
        """Bytes of every record held, encoded: what a fresh replica downloads."""
        return sum(len(r) for r in self.records.export())

    def invalid_slots(self) -> list[tuple[str, str]]:
        """Always empty: invalid records are never stored (they are counted and audited instead)."""
        return []

    def view_digest(self) -> list[tuple[str, str, str, int]]:
        """A canonical listing of every effective record (for convergence checks)."""
        out = []
        for kind in KINDS:
            for key in self.records.slots(kind):
                r = self.records.winner(kind, key)
                if r is not None:
                    out.append((kind, key, r.signer, r.seq))
        return out

    # --- registry -----------------------------------------------------------------

    def _manifest_of(self, key: str) -> ModuleVersion | None:
        rec = self.effective("registry", key)
        if rec is None:
            return None
        if rec.payload.get("removed") is True:
            prior = [r for r in self.history("registry", key) if r.payload.get("removed") is not True]
            p = rec.payload
            if not prior:
                return ModuleVersion(p["name"], p["version"], None, rec.signer, removed=True, removed_at=float(p["removed_at"]), removed_reason=p["reason"])
            base = prior[-1]
            return ModuleVersion(
                p["name"], p["version"], manifest_from_payload(base.payload), base.signer, base.seq, base.signature,
                True, float(p["removed_at"]), p["reason"],
            )
        m = manifest_from_payload(rec.payload)
        return ModuleVersion(m.name, m.version, m, rec.signer, rec.seq, rec.signature)

    def modules(self) -> list[str]:
        """Names of every module with at least one version record (removed ones included)."""
        return sorted({k.rsplit("@", 1)[0] for k in self.keys("registry")})

    def versions(self, name: str, include_removed: bool = True) -> list[ModuleVersion]:
        """Every version of a module, oldest semver first; removed versions stay listed as tombstones."""
        from model.semver import Version

        out = [m for k in self.records.slots("registry") if k.rsplit("@", 1)[0] == name if (m := self._manifest_of(k)) is not None]
        out.sort(key=lambda m: Version.parse(m.version))
        return [m for m in out if include_removed or not m.removed]

    def manifest(self, name: str, version: str) -> ModuleVersion:
        m = self._manifest_of(f"{name}@{version}")
        if m is None:
            raise NotFound(f"module {name} has no version {version} (see `wasmatrix module show {name}`)")
        return m

    def resolve(self, module: str, version_or_range: str) -> ModuleVersion:
        """The highest non-removed version of ``module`` matching an exact version or range."""
        live = [m.version for m in self.versions(module, include_removed=False)]
        best = range_best(version_or_range, live)
        if best is None:
            raise NotFound(f"no published, non-removed version of {module} matches {version_or_range!r} (have: {', '.join(live) or 'none'})")
        return self.manifest(module, best)

    # --- deployments --------------------------------------------------------------

    def deployment(self, name: str) -> Deployment:
        hist = [revision_from(r) for r in self.history("deployments", name)]
        if not hist or hist[-1].spec is None:
            raise NotFound(f"no deployment named {name!r}")
        cur = hist[-1]
        assert cur.spec is not None
        return Deployment(name, cur.spec, cur.active_version, len(hist), tuple(hist))

    def deployment_tenant(self, name: str) -> str | None:
        """The tenant whose quotas the deployment's calls count against; None when the view has no such deployment.

        Kept until a deployments record enters the view (every invocation asks).
        """
        try:
            return self._deployment_tenants[name]
        except KeyError:
            pass
        rec = self.effective("deployments", name)
        spec = rec.payload.get("spec") if rec is not None else None
        tenant = str(spec.get("tenant", DEFAULT_TENANT)) if isinstance(spec, dict) else None
        if len(self._deployment_tenants) >= MAX_CACHED_NAMES:
            self._deployment_tenants.clear()
        self._deployment_tenants[name] = tenant
        return tenant

    def deployments(self) -> list[Deployment]:
        out = []
        for name in self.records.slots("deployments"):
            try:
                out.append(self.deployment(name))
            except NotFound:
                continue
        return out

    # --- routes -------------------------------------------------------------------

    def route_table(self) -> RouteTable:
        """The routes of the view; rebuilt whenever a routes record enters or leaves it."""
        if self._routes is None:
            routes = []
            for key in self.records.slots("routes"):
                rec = self.effective("routes", key)
                if rec is not None and rec.payload.get("deleted") is not True:
                    routes.append(RouteSpec.from_payload(rec.payload))
            self._routes = RouteTable(routes)
        return self._routes

    def routes(self) -> list[RouteSpec]:
        return self.route_table().routes()

    def subscriptions(self) -> list[SubscriptionSpec]:
        """The live event subscriptions of the view, by name."""
        from crdt.schema import SubscriptionSpec

        out = []
        for key in self.records.slots("subscriptions"):
            rec = self.effective("subscriptions", key)
            if rec is not None and rec.payload.get("deleted") is not True:
                out.append(SubscriptionSpec.from_payload(rec.payload))
        return sorted(out, key=lambda s: s.name)

    def match(self, host: str, path: str, method: str) -> RouteSpec | None:
        """The route a request goes to, or None (not found)."""
        return self.route_table().match(host, path, method)

    # --- tenants ------------------------------------------------------------------

    def tenant(self, name: str) -> TenantQuota | None:
        """The tenant's quota record, or None (no record, or removed: the defaults apply).

        Parsed once per change: kept until a tenant record enters the view (every invocation asks).
        """
        try:
            return self._tenants[name]
        except KeyError:
            pass
        rec = self.effective("tenant", name)
        q = None if rec is None or rec.payload.get("deleted") is True else TenantQuota.from_payload(rec.payload)
        if len(self._tenants) >= MAX_CACHED_NAMES:
            self._tenants.clear()
        self._tenants[name] = q
        return q

    def tenants(self) -> list[TenantQuota]:
        """Every tenant with a quota record, by name."""
        return [q for k in self.records.slots("tenant") if (q := self.tenant(k)) is not None]

    # --- placement ----------------------------------------------------------------

    def placement(self, node_id: str) -> PlacementEntry | None:
        rec = self.effective("placement", node_id)
        return PlacementEntry.from_payload(rec.payload) if rec else None

    def placements(self) -> dict[str, PlacementEntry]:
        """Every node's placement entry; parsed once per change of the view (every invocation reads it)."""
        if self._placements is None:
            self._placements = {k: PlacementEntry.from_payload(r.payload) for k in self.records.slots("placement")
                                if (r := self.effective("placement", k))}
        return dict(self._placements)

    # --- KV -----------------------------------------------------------------------

    def kv_get(self, ns: str, key: str) -> bytes | None:
        rec = self.effective("kv", kv_record_key(v_namespace(ns), key))
        return None if rec is None else rec.payload["v"]

    def kv_list(self, ns: str, prefix: str = "") -> list[str]:
        head = kv_record_key(v_namespace(ns), prefix)
        out = []
        for k in self.records.slots("kv"):
            if k.startswith(head):
                rec = self.effective("kv", k)
                if rec is not None and rec.payload["v"] is not None:
                    out.append(k.split("/", 1)[1])
        return out

    def kv_usage(self, ns: str) -> tuple[int, int]:
        """``(live keys, bytes of keys + values)`` of a namespace in the effective view.

        A running total kept by every change of the view (local and remote, overwrites and
        deletions included), so the limit check of a write costs O(1), not O(namespace).
        """
        n, size = self._kv_usage.get(v_namespace(ns), (0, 0))
        return n, size
