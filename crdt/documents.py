"""The typed intent documents over one pycrdt ``Doc`` and each node's *effective view* of them.

Nothing else in the code base touches the raw maps. Layout (root maps of the doc):

* ``registry``    slot ``"<name>@<version>␟<signer>␟<seq>"``  append-only signed manifests/tombstones
* ``deployments`` slot ``"<name>␟<signer>␟<seq>"``             append-only revisions (history = rollback)
* ``routes``      slot ``"<route key>␟<signer>␟<seq>"``        append-only routes/tombstones
* ``placement``   slot ``"<node id>"``                          overwritten, single writer (the node)
* ``kv/<ns>``     slot ``"<key>␟<signer>"``                     overwritten by each writer in its own slot

(``␟`` is U+001F.) Append-only slots are never overwritten, so no record — valid or forged —
can hide another: a forged record only adds an invalid slot that the view ignores.

Effective view: among the *valid* records of one document key, the one with the greatest
``(seq, signer key id)`` wins. Sequence numbers are Lamport clocks: a writer picks
``seq = 1 + max(own last seq, every seq it sees for that key)``, so a write that has seen
another write always wins over it, and concurrent writes are ordered by seq then key id,
identically on every node. Two nodes writing the *same slot* concurrently (only possible for
one signer on two nodes at once) fall back to the Yjs map rule: the item of the higher Yjs
client id wins the slot; all nodes still agree because Yjs converges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import structlog
from pycrdt import Doc, Map, get_update

from crdt.errors import NotFound, ValidationError
from crdt.metrics import Counters
from crdt.records import SEP, SignedRecord
from crdt.routes import RouteTable
from crdt.schema import (
    DeploymentRevision,
    DeploymentSpec,
    KvLimits,
    ModuleVersion,
    PlacementEntry,
    RouteSpec,
    kv_record_key,
    manifest_from_payload,
    range_best,
    revision_from,
    v_namespace,
    validate_deployment_payload,
    validate_kv_payload,
    validate_placement_payload,
    validate_registry_payload,
    validate_route_payload,
)
from crdt.trust import TrustConfig, VerifiedRecords

FIXED_ROOTS = ("registry", "deployments", "routes", "placement")
APPEND_KINDS = frozenset({"registry", "deployments", "routes"})
KV_PREFIX = "kv/"


@dataclass(slots=True, frozen=True)
class AuditEvent:
    """An invalid record seen in a document: handed to the audit sink, never acted upon."""

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


VisibleHook = Callable[[SignedRecord, float], None]
AuditSink = Callable[[AuditEvent], None]


def slot_for(rec: SignedRecord) -> tuple[str, str]:
    """``(root map, slot key)`` where a record lives."""
    if rec.kind in APPEND_KINDS:
        return rec.kind, f"{rec.key}{SEP}{rec.signer}{SEP}{rec.seq}"
    if rec.kind == "placement":
        return "placement", rec.key
    ns, _, k = rec.key.partition("/")
    return KV_PREFIX + ns, f"{k}{SEP}{rec.signer}"


class IntentDoc:
    """One node's replica of the intent documents plus its verified effective view."""

    def __init__(
        self,
        trust: TrustConfig,
        *,
        client_id: int,
        kv_limits: KvLimits = KvLimits(),
        counters: Counters | None = None,
        audit_sink: AuditSink | None = None,
        on_visible: VisibleHook | None = None,
        node_id: str = "",
        verified: VerifiedRecords | None = None,
    ) -> None:
        self.trust = trust
        self.verified = verified if verified is not None else VerifiedRecords()
        self.kv_limits = kv_limits
        self.counters = counters if counters is not None else Counters()
        self.audit_sink = audit_sink
        self.on_visible = on_visible
        self.log = structlog.get_logger("crdt.documents").bind(node_id=node_id)
        self.doc: Doc = Doc(client_id=client_id)
        self._maps: dict[str, Map] = {}
        self._subs: list[Any] = []
        # Changed slots per root map, with the value the map event reported (_READ: read the map).
        self._dirty: dict[str, dict[str, Any]] = {}
        self._slots: dict[str, dict[str, SignedRecord | None]] = {}
        self._valid: dict[str, dict[str, dict[str, SignedRecord]]] = {k: {} for k in ("registry", "deployments", "routes", "placement", "kv")}
        self._seen: set[tuple[str, int]] = set()
        self._signer_seq: dict[str, int] = {}
        self._routes: RouteTable | None = None
        self._capture: list[bytes] | None = None
        # The record this node is writing right now, signed by it: (root, slot) -> (bytes, record).
        self._fresh: dict[tuple[str, str], tuple[bytes, SignedRecord]] = {}
        # Running KV usage: namespace -> [live keys, bytes of keys + values], and what each
        # document key currently contributes, so a write never rescans its namespace.
        self._kv_usage: dict[str, list[int]] = {}
        self._kv_counted: dict[str, int] = {}
        self._txn_sub = self.doc.observe(self._on_txn)
        for root in FIXED_ROOTS:
            self._attach(root)

    # --- plumbing --------------------------------------------------------------------

    def _on_txn(self, event: Any) -> None:
        if self._capture is not None:
            self._capture.append(bytes(event.update))

    def _attach(self, root: str) -> Map:
        m = self._maps.get(root)
        if m is not None:
            return m
        m = self.doc.get(root, type=Map)
        self._maps[root] = m
        self._slots[root] = {}
        dirty = self._dirty.setdefault(root, {})

        def on_change(event: Any) -> None:
            # The event already carries each slot's value after the transaction: reading it back
            # from the map would cost two more transactions per slot.
            for slot, change in event.keys.items():
                dirty[slot] = change.get("newValue")  # absent: deleted

        self._subs.append(m.observe(on_change))
        for slot in m.keys():
            dirty.setdefault(slot, _READ)
        return m

    def _root_names(self) -> list[str]:
        # Doc.keys() wraps every root in a Python object (tens of µs per update); the names
        # are enough. pycrdt 0.14 keeps them on its native doc; elsewhere use the public call.
        native = getattr(self.doc, "_doc", None)
        if native is None or not hasattr(native, "roots"):
            return list(self.doc.keys())
        with self.doc.transaction() as txn:
            return list(native.roots(txn._txn))

    def _attach_new_roots(self) -> None:
        for root in sorted(self._root_names()):
            if root.startswith(KV_PREFIX) and root not in self._maps:
                try:
                    v_namespace(root[len(KV_PREFIX):])
                except ValidationError:
                    continue  # a root we do not understand: never read, never acted upon
                self._attach(root)

    def _check(self, root: str, slot: str, raw: Any) -> SignedRecord:
        kind = "kv" if root.startswith(KV_PREFIX) else root
        if not isinstance(raw, (bytes, bytearray)):
            raise _Invalid("malformed", "slot value is not bytes", None)
        raw = bytes(raw)
        fresh = self._fresh.get((root, slot))
        signed_here = fresh is not None and fresh[0] == raw
        digest = b""
        known: SignedRecord | None = None
        if signed_here:
            assert fresh is not None
            rec = fresh[1]
        else:
            # Once per record per node: the digest covers every byte, signature included.
            digest = VerifiedRecords.digest(raw)
            known = self.verified.get(digest)
            if known is not None:
                rec = known
            else:
                try:
                    rec = SignedRecord.decode(raw)
                except ValidationError as exc:
                    raise _Invalid("malformed", str(exc), None) from None
        if rec.kind != kind or slot_for(rec) != (root, slot):
            raise _Invalid("misplaced", f"record {rec.kind}:{rec.key!r:.60} stored at {root}:{slot!r:.60}", rec)
        if self.trust.get(rec.signer) is None:
            raise _Invalid("unknown_signer", f"signer {rec.signer} is not a trusted key", rec)
        if kind == "placement":
            if self.trust.node_key_id(rec.key) != rec.signer:
                raise _Invalid("not_owner", f"placement of {rec.key!r:.60} not signed by that node's key", rec)
        elif not self.trust.may_write(rec.signer, kind):
            roles = ",".join(sorted(r.value for r in self.trust.roles_of(rec.signer))) or "none"
            raise _Invalid("role", f"signer {rec.signer} (roles {roles}) may not write {kind}", rec)
        if not signed_here and known is None:
            if not self.trust.verify(rec.signer, rec.signature, rec.message()):
                raise _Invalid("bad_signature", f"signature by {rec.signer} does not verify", rec)
            self.verified.add(digest, rec)
        try:
            _VALIDATORS[kind](self, rec.key, rec.payload)
        except ValidationError as exc:
            raise _Invalid("schema", str(exc), rec) from None
        return rec

    def _process_dirty(self, now: float) -> int:
        """Re-evaluate changed slots; return how many slots changed in the view."""
        changed = 0
        for root in sorted(self._dirty):
            dirty = self._dirty[root]
            if not dirty:
                continue
            slots = sorted(dirty)
            values = dict(dirty)
            dirty.clear()
            m = self._maps[root]
            table = self._slots[root]
            kind = "kv" if root.startswith(KV_PREFIX) else root
            kv_keys: set[str] = set()
            for slot in slots:
                old = table.pop(slot, None)
                if old is not None:
                    if kind == "kv":
                        kv_keys.add(old.key)
                    byk = self._valid[kind].get(old.key)
                    if byk is not None:
                        byk.pop(slot, None)
                        if not byk:
                            del self._valid[kind][old.key]
                fresh = self._fresh.get((root, slot))
                raw: Any
                if fresh is not None:
                    raw = fresh[0]  # a local set always wins its slot
                else:
                    raw = values[slot]
                    if raw is _READ:
                        raw = m.get(slot)
                changed += 1
                if raw is None:
                    continue
                try:
                    rec = self._check(root, slot, raw)
                except _Invalid as bad:
                    table[slot] = None
                    self.counters.invalid(bad.reason)
                    ev = AuditEvent(root, slot, bad.reason, bad.detail, bad.rec.signer if bad.rec else None, bad.rec.seq if bad.rec else None)
                    self.log.warning("crdt_invalid_record", root=root, slot=slot[:120], reason=bad.reason, detail=bad.detail)
                    if self.audit_sink is not None:
                        self.audit_sink(ev)
                    continue
                table[slot] = rec
                self._valid[kind].setdefault(rec.key, {})[slot] = rec
                if kind == "kv":
                    kv_keys.add(rec.key)
                self.counters.records_valid += 1
                if rec.seq > self._signer_seq.get(rec.signer, 0):
                    self._signer_seq[rec.signer] = rec.seq
                if kind == "routes":
                    self._routes = None
                if rec.write_id not in self._seen:
                    self._seen.add(rec.write_id)
                    if self.on_visible is not None:
                        self.on_visible(rec, now)
            for key in sorted(kv_keys):
                self._recount_kv(key)
        return changed

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

    # --- replication surface ---------------------------------------------------------

    def state_vector(self) -> bytes:
        return self.doc.get_state()

    def diff(self, remote_state: bytes | None = None) -> bytes:
        """Everything this replica has that a replica at ``remote_state`` lacks (Yjs step 2)."""
        return self.doc.get_update(remote_state) if remote_state is not None else self.doc.get_update()

    def apply_update(self, update: bytes, now: float = 0.0) -> bool:
        """Merge a remote update; True if the document changed. Raise ValidationError if undecodable."""
        return self.learn(update, now) is not None

    def learn(self, update: bytes, now: float = 0.0) -> bytes | None:
        """Merge a remote update; return the part of it this replica did not have (None if nothing).

        What a node relays is what it newly learned, never its whole document: the update is
        trimmed against the state vector from before the merge. Raise ValidationError if the
        update does not decode.
        """
        data = bytes(update)
        before = self.doc.get_state()
        try:
            self.doc.apply_update(data)
        except Exception as exc:  # yrs raises ValueError on undecodable input
            self.counters.updates_malformed += 1
            self.log.warning("crdt_malformed_update", size=len(update), error=str(exc)[:200])
            raise ValidationError(f"undecodable CRDT update ({len(update)} bytes): {exc}") from None
        grew = self.doc.get_state() != before
        if grew:  # a new root (KV namespace) only ever arrives with new items
            self._attach_new_roots()
        changed = self._process_dirty(now)
        if not grew and not changed:
            self.counters.updates_redundant += 1
            return None
        self.counters.updates_applied += 1
        if not grew:
            return data
        return get_update(data, before)

    def write(self, rec: SignedRecord, now: float = 0.0, *, signed_here: bool = False) -> bytes:
        """Store a signed record locally; return the Yjs update to persist and push.

        ``signed_here`` says the caller made ``rec`` with :meth:`SignedRecord.create` just now,
        so its signature is not verified again; any other record (a raw or replayed one) is
        checked exactly like a remote record.
        """
        root, slot = slot_for(rec)
        m = self._attach(root)
        raw = rec.encode()
        if signed_here:
            self._fresh[(root, slot)] = (raw, rec)
        self._capture = []
        try:
            with self.doc.transaction(origin="local"):
                m[slot] = raw
            updates = self._capture
            self._process_dirty(now)
        finally:
            self._capture = None
            self._fresh.clear()
        self.counters.local_writes += 1
        if len(updates) == 1:
            return updates[0]
        from pycrdt import merge_updates

        return merge_updates(*updates)

    # --- effective view: generic ----------------------------------------------------------

    def effective(self, kind: str, key: str) -> SignedRecord | None:
        """The winning valid record of one key: greatest ``(seq, signer)``."""
        recs = self._valid[kind].get(key)
        if not recs:
            return None
        if len(recs) == 1:  # the common case: one writer per key
            for only in recs.values():
                return only
        return max(recs.values(), key=lambda r: r.order)

    def history(self, kind: str, key: str) -> list[SignedRecord]:
        """All valid records of one key, oldest first."""
        return sorted(self._valid[kind].get(key, {}).values(), key=lambda r: r.order)

    def keys(self, kind: str) -> list[str]:
        return sorted(self._valid[kind])

    def max_seq_for_key(self, kind: str, key: str) -> int:
        recs = self._valid[kind].get(key)
        return max((r.seq for r in recs.values()), default=0) if recs else 0

    def max_seq_of_signer(self, signer: str) -> int:
        return self._signer_seq.get(signer, 0)

    def has_write(self, signer: str, seq: int) -> bool:
        """True once the write ``(signer, seq)`` is a valid record in this node's view."""
        return (signer, seq) in self._seen

    def invalid_slots(self) -> list[tuple[str, str]]:
        return [(root, s) for root in sorted(self._slots) for s, r in sorted(self._slots[root].items()) if r is None]

    def view_digest(self) -> list[tuple[str, str, str, int]]:
        """A canonical listing of every effective record (for convergence checks)."""
        out = []
        for kind in sorted(self._valid):
            for key in sorted(self._valid[kind]):
                r = self.effective(kind, key)
                assert r is not None
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
        return sorted({k.rsplit("@", 1)[0] for k in self._valid["registry"]})

    def versions(self, name: str, include_removed: bool = True) -> list[ModuleVersion]:
        """Every version of a module, oldest semver first; removed versions stay listed as tombstones."""
        from model.semver import Version

        out = [m for k in self._valid["registry"] if k.rsplit("@", 1)[0] == name if (m := self._manifest_of(k)) is not None]
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

    def deployments(self) -> list[Deployment]:
        out = []
        for name in self.keys("deployments"):
            try:
                out.append(self.deployment(name))
            except NotFound:
                continue
        return out

    # --- routes -------------------------------------------------------------------

    def route_table(self) -> RouteTable:
        if self._routes is None:
            routes = []
            for key in self.keys("routes"):
                rec = self.effective("routes", key)
                if rec is not None and rec.payload.get("deleted") is not True:
                    routes.append(RouteSpec.from_payload(rec.payload))
            self._routes = RouteTable(routes)
        return self._routes

    def routes(self) -> list[RouteSpec]:
        return self.route_table().routes()

    def match(self, host: str, path: str, method: str) -> RouteSpec | None:
        """The route a request goes to, or None (not found)."""
        return self.route_table().match(host, path, method)

    # --- placement ----------------------------------------------------------------

    def placement(self, node_id: str) -> PlacementEntry | None:
        rec = self.effective("placement", node_id)
        return PlacementEntry.from_payload(rec.payload) if rec else None

    def placements(self) -> dict[str, PlacementEntry]:
        return {k: PlacementEntry.from_payload(r.payload) for k in self.keys("placement") if (r := self.effective("placement", k))}

    # --- KV -----------------------------------------------------------------------

    def kv_get(self, ns: str, key: str) -> bytes | None:
        rec = self.effective("kv", kv_record_key(v_namespace(ns), key))
        return None if rec is None else rec.payload["v"]

    def kv_list(self, ns: str, prefix: str = "") -> list[str]:
        head = kv_record_key(v_namespace(ns), prefix)
        out = []
        for k in self.keys("kv"):
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


_READ = object()  # a dirty slot whose value must be read from the map


class _Invalid(Exception):
    def __init__(self, reason: str, detail: str, rec: SignedRecord | None) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.rec = reason, detail, rec


_VALIDATORS: dict[str, Callable[[IntentDoc, str, Any], None]] = {
    "registry": lambda d, k, p: validate_registry_payload(k, p),
    "deployments": lambda d, k, p: validate_deployment_payload(k, p),
    "routes": lambda d, k, p: validate_route_payload(k, p),
    "placement": lambda d, k, p: validate_placement_payload(k, p),
    "kv": lambda d, k, p: validate_kv_payload(k, p, d.kv_limits),
}
