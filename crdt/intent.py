"""IntentNode: the node-facing facade (typed writes, durable ack, sync) that NodeCore embeds.

Every write is a chained signed record (:mod:`crdt.logrecord`) added to the node's
:class:`~crdt.signedlog.SignedLog` through :class:`~crdt.documents.IntentDoc`; the store keeps
one row per record and a restart re-verifies every row.

Clocks: every method takes ``now``, the node's *monotonic* clock, which drives timers and
nothing else. Values stored inside replicated records (a record's ``wall_ms``, a deployment's
``written_at``, a tombstone's ``removed_at``, a placement's timestamp) come from the *wall*
clock the driver passes separately (``wall=`` on a write, or the latest reading the node core
handed over in :attr:`IntentNode.wall`), and remote records are judged against it (a record
more than 30 s ahead is held back). A driver with a single clock (the offline CLI writer) may
omit it; then ``now`` is used for both.

Durability: with a disk store (``SqliteStore``, ``MemoryStore``) a write is appended and
committed before the method returns its :class:`WriteAck`. With an
:class:`~crdt.store.EffectStore` (an event-loop driver) the write returns a
:class:`PendingWrite`; its :class:`WriteAck` only comes out of :meth:`IntentNode.persisted`,
once the driver reports the persist effect done, and only then is the record pushed to peers.
Either way: acknowledged means durable.

Threads: an IntentNode is owned by one thread, the node's loop. Host functions running on
worker threads reach the KV methods through ``runtime.kv.LoopKV``, which marshals each call
onto that loop.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Iterable

import structlog

from crdt.documents import AuditSink, Deployment, IntentDoc, VisibleHook
from crdt.errors import Conflict, KvLimitError, NotFound, PermissionDenied, ValidationError
from crdt.keys import SigningKey
from crdt.heads import MAX_HEADS_PER_MESSAGE, HeadsDigest, HeadsMessage, RecordBatch
from crdt.metrics import Counters
from crdt.records import check_key
from crdt.schema import (
    DeploymentSpec,
    KvLimits,
    Manifest,
    PlacementEntry,
    ReplicaClaim,
    RouteSpec,
    TenantQuota,
    deployment_payload,
    kv_record_key,
    manifest_from_payload,
    registry_key,
    route_key,
    v_namespace,
)
from crdt.store import MemoryStore, PersistEffect, UpdateStore
from crdt.sync import Outgoing, SyncConfig, SyncCore
from crdt.trust import TrustConfig

if TYPE_CHECKING:
    from crdt.schema import SubscriptionSpec


@dataclass(slots=True, frozen=True)
class WriteAck:
    """Returned once a write is durably stored and queued for push; ``(signer, seq)`` identifies it."""

    kind: str
    key: str
    signer: str
    seq: int


@dataclass(slots=True, frozen=True)
class PreparedWrite:
    """The fields of a record a remote signer must sign (``IntentNode.prepare``)."""

    kind: str
    key: str
    payload: Any
    tombstone: bool
    seq: int
    prev: bytes
    wall_ms: int


class _Captured(Exception):
    def __init__(self, prepared: PreparedWrite) -> None:
        self.prepared = prepared


class _CaptureSigner:
    """Stands in for a private key: the write runs to the signature, which it captures instead."""

    def __init__(self, key_id: str) -> None:
        self.key_id = key_id

    def sign(self, message: bytes) -> bytes:
        from crdt.logrecord import unpack_signing_bytes

        kind, key, tombstone, payload, seq, prev, wall_ms = unpack_signing_bytes(message, self.key_id)
        raise _Captured(PreparedWrite(kind, key, payload, tombstone, seq, prev, wall_ms))


@dataclass(slots=True, frozen=True)
class PendingWrite:
    """A write applied locally whose persist effect ``token`` is not yet durable: not an acknowledgement."""

    kind: str
    key: str
    signer: str
    seq: int
    token: int


_MAX_HELD = 1024  # answers waiting for durability (one fsync each, normally a handful)
# Row causes that mean the stored bytes themselves are damaged (anything else, e.g. a role
# the trust file no longer grants, is a judgement of an intact record).
_CORRUPT = frozenset({"malformed", "oversize", "bad_signature"})


def _carries_records(msg: Any) -> bool:
    """True for answers that carry records of our own log (possibly a write not durable yet)."""
    return isinstance(msg, RecordBatch)


@dataclass(slots=True, frozen=True)
class RetentionPolicy:
    """Removal rules: tombstones stay listed forever; their blobs become collectable after a grace period."""

    blob_grace_seconds: float = 7 * 24 * 3600.0
    refuse_if_active: bool = True


class IntentNode:
    """One node's replicated intent: signed log + typed view + durable store + SyncCore.

    ``now`` is always passed in; ``rng`` is the node's seeded random source (peer choice).
    ``wall`` is the wall clock at start-up, against which stored records are re-verified
    (None: the store's own records are not judged for their time).
    """

    def __init__(
        self,
        node_id: str,
        node_key: SigningKey,
        trust: TrustConfig,
        rng: random.Random,
        *,
        store: UpdateStore | None = None,
        sync_config: SyncConfig = SyncConfig(),
        kv_limits: KvLimits = KvLimits(),
        audit_sink: AuditSink | None = None,
        on_visible: VisibleHook | None = None,
        compact_after_rows: int = 1000,
        counters: Counters | None = None,
        wall: float | None = None,
        roots: Iterable[bytes] = (),
    ) -> None:
        self.node_id = node_id
        self.node_key = node_key
        self.trust = trust
        self.counters = counters if counters is not None else Counters()
        self.store: UpdateStore = store if store is not None else MemoryStore(self.counters)
        prior = getattr(self.store, "counters", None)
        if prior is not None and prior is not self.counters:  # one set of counters per node
            for f in ("store_corrupt_rows", "store_damaged", "store_rows_salvaged"):  # what opening the store found
                setattr(self.counters, f, getattr(self.counters, f) + getattr(prior, f))
            self.store.counters = self.counters  # type: ignore[attr-defined]
        self.log = structlog.get_logger("crdt.intent").bind(node_id=node_id)
        rows = self.store.load()
        # The boot epoch still counts starts (operators read it); records need no client id.
        self.epoch = self.store.epoch() + 1
        self.store.set_epoch(self.epoch)
        self.compact_after_rows = compact_after_rows
        self.now = 0.0
        self.wall: float | None = wall
        self._deferred = bool(getattr(self.store, "deferred", False))
        self._unacked: deque[tuple[int, WriteAck, bytes]] = deque()  # token order
        # Answers computed while local writes were not durable yet: (token to wait for, reply_to, messages).
        self._held: list[tuple[int, Any, list[Outgoing]]] = []
        self.doc = IntentDoc(
            trust, kv_limits=kv_limits, counters=self.counters, audit_sink=audit_sink, on_visible=on_visible, node_id=node_id, roots=roots,
        )
        # A store is not trusted: every row is verified again. Without a wall clock the rows'
        # own times are accepted (they were judged when they arrived).
        load_wall = wall if wall is not None else (2**53 - 1) / 1000
        corrupt = 0
        for row in rows:
            res = self.doc.add(row, load_wall, 0.0)
            if res.status == "rejected" and res.reason in _CORRUPT:
                corrupt += 1
        if corrupt:
            self.counters.store_corrupt_rows += corrupt
            self.log.error("crdt_store_rows_undecodable", count=corrupt)
        self.sync = SyncCore(node_id, self.doc, rng, sync_config, self.store, self.counters)
        # Store recovery: a damaged or lost store may have lost records of our own signers, so
        # the next seq we would hand out may already be held by peers (reusing it is
        # equivocation and freezes the key mesh-wide). Until peers showed us that we hold
        # everything they hold, every local write fails with StoreRecovering (see recovering()).
        self._recovered_by: set[str] = set()
        self._live_count = 2  # until tick() tells: assume peers, so one answer alone does not end recovery
        damage = getattr(self.store, "damage", None)
        if damage is not None or corrupt:
            what = damage.describe() if damage is not None else f"{corrupt} stored records undecodable"
            self.recovering = what
            self.doc.records.write_gate = (
                f"the intent store was damaged ({what}): local writes wait until peers' heads show "
                "this node holds every record they hold (so it never reuses a sequence number); "
                "the node catches up by anti-entropy within seconds once peers answer"
            )
            self.log.error("crdt_store_recovering", damage=what, intact_records=len(rows) - corrupt)
            self._audit("store_damaged", what)
        else:
            self.recovering = None
        # Records adopted after a trust change (parked until their grant arrived) are stored too.
        self.doc.adopt_sink = self.store.append

    # --- driving (NodeCore / simulator) -------------------------------------------------

    def receive(self, src: str, msg: Any, now: float, reply_to: Any = None) -> list[Outgoing]:
        """Handle one sync message from the authenticated node ``src``.

        An answer that carries a diff of our document while some local write is not durable
        yet is computed now but held until that write is (see :meth:`take_released`, which
        hands ``reply_to`` back with it): a write must never leave the node before it is
        durable, or a crash could let the restarted node reissue its ``(signer, seq)``.
        """
        self.now = max(self.now, now)
        out = self.sync.receive(src, msg, now, self._stamp(now, None))
        if self.recovering is not None and isinstance(msg, (HeadsDigest, HeadsMessage)):
            self._recovery_evidence(src, msg)
        if self._unacked and any(_carries_records(m) for _, m in out):
            if len(self._held) >= _MAX_HELD:
                # The disk is not keeping up (or the driver stopped persisting): drop, the
                # peer's next anti-entropy round asks again.
                self.counters.sync_answers_dropped += 1
                return []
            self._held.append((self._unacked[-1][0], reply_to, out))
            self.counters.sync_answers_held += 1
            return []
        return out

    def _recovery_evidence(self, src: str, msg: HeadsDigest | HeadsMessage) -> None:
        """Peer ``src`` showed its heads: if we hold everything it holds, count it towards recovery.

        Evidence is a digest equal to ours, or a complete heads page (one page: every signer
        the peer has) from which we miss nothing. Recovery ends once ``min(2, live peers)``
        distinct peers gave it (two, so one peer that lacks our newest records, e.g. a fresh
        node, cannot end it alone where another could still hold them).
        """
        log = self.doc.records
        if isinstance(msg, HeadsDigest):
            ok = msg.digest == log.heads_digest()
        else:
            complete = len(msg.heads) + len(msg.forks) < MAX_HEADS_PER_MESSAGE
            ok = complete and not log.missing_from(msg.as_heads(), msg.as_forks())
        if not ok:
            return
        self._recovered_by.add(src)
        if len(self._recovered_by) >= min(2, max(1, self._live_count)):
            self.log.warning("crdt_store_recovered", damage=self.recovering, peers=sorted(self._recovered_by),
                             heads={s: q for s, (q, _) in log.heads().items()})
            self._audit("store_recovered", f"caught up with {', '.join(sorted(self._recovered_by))} after: {self.recovering}")
            self.counters.store_recoveries += 1
            self.recovering = None
            log.write_gate = None

    def _audit(self, reason: str, detail: str) -> None:
        sink = self.doc.audit_sink
        if sink is not None:
            from crdt.documents import AuditEvent

            sink(AuditEvent("store", "-", reason, detail[:400], None, None))

    def tick(self, now: float, live_peers: list[str]) -> list[Outgoing]:
        """Run the sync timers (eager push, anti-entropy) and apply held records that came due."""
        self.now = max(self.now, now)
        self._live_count = sum(1 for p in live_peers if p != self.node_id)
        if self.doc.records.held_count():
            for data, res in self.doc.records.release_due_records(self._stamp(now, None)):
                self.doc._digest(res, now)
                if res.stored:
                    self.store.append(data)
        return self.sync.tick(now, live_peers)

    def stream_event(self, peer: str, kind: str, now: float) -> list[Outgoing]:
        """A stream to ``peer`` failed, closed, timed out or is backpressured: tell sync (its reaction runs on the next tick)."""
        self.now = max(self.now, now)
        self.sync.stream_event(peer, kind, now)
        return []

    # --- durability (effect stores) -----------------------------------------------------

    def take_effects(self) -> list[PersistEffect]:
        """Persist effects for the driver to perform off the loop, oldest first (empty for disk stores)."""
        take = getattr(self.store, "take", None)
        return take() if self._deferred and take is not None else []

    def persisted(self, token: int, now: float) -> list[WriteAck]:
        """The driver made every effect up to ``token`` durable: acknowledge and push those writes."""
        self.now = max(self.now, now)
        self.store.persisted(token)  # type: ignore[attr-defined]
        acks: list[WriteAck] = []
        while self._unacked and self._unacked[0][0] <= token:
            _, ack, update = self._unacked.popleft()
            # Pushed only once durable: a crash before this point loses a write nobody was told about.
            self.sync.local_update(update, now)
            acks.append(ack)
        self.counters.writes_acked_after_persist += len(acks)
        return acks

    def take_released(self) -> list[tuple[Any, list[Outgoing]]]:
        """Held answers whose writes are now durable, with the ``reply_to`` given to :meth:`receive`."""
        durable = int(getattr(self.store, "durable_token", 0))
        ready = [(r, out) for t, r, out in self._held if t <= durable]
        if ready:
            self._held = [h for h in self._held if h[0] > durable]
        return ready

    def durable(self, token: int) -> bool:
        """True once the persist effect ``token`` (and every earlier one) is durable."""
        return not self._deferred or int(getattr(self.store, "durable_token", 0)) >= token

    def unacked(self) -> int:
        """Writes applied locally that wait for their persist effect."""
        return len(self._unacked)

    def _stamp(self, now: float, wall: float | None) -> float:
        """The wall-clock time to store in a record (falls back to ``now`` for single-clock drivers)."""
        if wall is not None:
            return wall
        return self.wall if self.wall is not None else now

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has work (sync timers, a held future record coming due)."""
        d = self.sync.next_deadline()
        release = self.doc.records.next_release()
        if release is not None:
            # The release time is on the wall clock; timers run on the monotonic one.
            at = self.now + max(0.0, release - self._stamp(self.now, None))
            d = at if d is None else min(d, at)
        return d

    def maybe_compact(self) -> bool:
        """Nothing to compact: records are never superseded in storage (one row per record)."""
        return False

    def has_write(self, signer: str, seq: int) -> bool:
        """Convergence check: is the write ``(signer, seq)`` visible in this node's effective view?"""
        return self.doc.has_write(signer, seq)

    # --- writing for a remote signer (the CLI keeps its private key) ----------------------

    def prepare(self, signer_id: str, write: Any) -> "PreparedWrite":
        """Run ``write(signer)`` (any write method, e.g. ``lambda k: node.publish(m, k, now)``) up to the
        point where the record would be signed, and return what the holder of ``signer_id``'s
        private key must sign: the same checks as a local write (roles, conflicts, resolution of
        version ranges), the same sequence number, chain link and wall time. Nothing is stored.
        """
        capture = _CaptureSigner(signer_id)
        try:
            write(capture)
        except _Captured as cap:
            return cap.prepared
        raise ValidationError("the write produced no record to sign")

    def submit(self, data: bytes, now: float, *, wall: float | None = None) -> WriteAck | PendingWrite:
        """Add a record a client signed after :meth:`prepare`, as a local write of its signer.

        Refused (nothing stored) unless it is exactly the signer's next position here: a record
        for a position another write took since, or with a stale chain link, would fork the
        signer's chain and freeze its key mesh-wide (``Conflict``: prepare again).
        """
        from crdt.logrecord import LogRecord

        rec = LogRecord.decode(data)
        st = self.doc.records
        st.check_gate()
        if rec.seq != st.next_seq_for(rec.signer) or rec.prev != st.chain_head(rec.signer):
            raise Conflict(f"key {rec.signer} wrote seq {rec.seq} meanwhile or the record is stale; prepare it again")
        self.now = max(self.now, now)
        res = self.doc.add(data, self._stamp(now, wall), now)
        if res.status not in ("accepted",):
            msg = f"{rec.kind} {rec.key!r:.80} refused: {res.reason or res.status}"
            if res.reason in ("unknown_signer", "role", "not_owner", "revoked"):
                raise PermissionDenied(msg)
            raise ValidationError(msg)
        return self._store_local(rec.kind, rec.key, rec.signer, rec.seq, data, now)

    # --- writing ------------------------------------------------------------------------

    def _commit(
        self, kind: str, key: str, payload: Any, signer: SigningKey | None, now: float, wall: float | None = None,
    ) -> WriteAck | PendingWrite:
        signer = signer or self.node_key
        why = self.doc.adapter.check(signer.key_id, kind, key)
        if why == "not_owner":
            raise PermissionDenied(f"only node {key}'s own key may write its placement")
        if why is not None:
            roles = ", ".join(sorted(r.value for r in self.doc.adapter.roles_of(signer.key_id))) or "none"
            hint = ("only a mesh admin key (the mesh file's, or one granted admin) may write trust records" if kind == "trust"
                    else "add a suitable role to the trust config")
            raise PermissionDenied(f"key {signer.key_id} (roles: {roles}) may not write {kind}; {hint}")
        self.now = max(self.now, now)
        rec, res = self.doc.append(signer, kind, key, payload, self._stamp(now, wall), now)
        if res.status == "rejected":  # the same checks a receiver runs: nothing was stored, no seq used
            raise ValidationError(f"{kind} {key!r:.80} refused: {res.reason}")
        return self._store_local(kind, key, signer.key_id, rec.seq, rec.encode(), now)

    def _store_local(self, kind: str, key: str, signer: str, seq: int, data: bytes, now: float) -> WriteAck | PendingWrite:
        token = self.store.append(data)  # disk store: committed here; effect store: queued
        ack = WriteAck(kind, key, signer, seq)
        self.log.debug("crdt_local_write", kind=kind, key=key[:120], signer=signer, seq=seq)
        if self._deferred:
            self._unacked.append((token, ack, data))
            return PendingWrite(kind, key, signer, seq, token)
        self.sync.local_update(data, now)
        return ack

    def head(self, signer: str, kind: str, key: str, now: float, wall: float | None = None) -> tuple[int, bytes, int]:
        """``(next seq, prev id, minimum wall_ms)`` for ``signer``'s next record in ``kind:key`` (see SignedLog.next_position)."""
        return self.doc.records.next_position(signer, kind, key, int(self._stamp(now, wall) * 1000))

    def publish(self, manifest: Manifest, signer: SigningKey, now: float, *, wall: float | None = None) -> WriteAck | PendingWrite:
        """Add a module version to the registry; versions are immutable and never republished."""
        manifest_from_payload(manifest.to_payload())
        key = registry_key(manifest.name, manifest.version)
        if self.doc.effective("registry", key) is not None:
            raise Conflict(f"{manifest.name} {manifest.version} is already published; versions are immutable, publish a new version")
        return self._commit("registry", key, manifest.to_payload(), signer, now, wall)

    def remove_version(
        self, name: str, version: str, signer: SigningKey, now: float, reason: str = "",
        policy: RetentionPolicy = RetentionPolicy(), *, wall: float | None = None,
    ) -> WriteAck | PendingWrite:
        """Tombstone a version (it stays listed as removed)."""
        m = self.doc.manifest(name, version)
        if m.removed:
            raise Conflict(f"{name} {version} is already removed")
        if policy.refuse_if_active:
            users = [d.name for d in self.doc.deployments() if d.spec.module == name and d.active_version == version]
            if users:
                raise Conflict(f"{name} {version} is active in deployment(s) {', '.join(users)}; roll them forward first")
        payload = {"removed": True, "removed_at": self._stamp(now, wall), "reason": reason, "name": name, "version": version}
        return self._commit("registry", registry_key(name, version), payload, signer, now, wall)

    def collectable_blobs(self, wall: float, policy: RetentionPolicy = RetentionPolicy()) -> list[str]:
        """sha256 of removed versions whose grace period (measured on the wall clock ``wall``) has passed and that no live version shares."""
        live, dead = set(), set()
        for name in self.doc.modules():
            for m in self.doc.versions(name):
                if not m.removed:
                    live.add(m.sha256)
                elif m.removed_at is not None and wall - m.removed_at >= policy.blob_grace_seconds:
                    dead.add(m.sha256)
        return sorted(dead - live)

    def set_deployment(
        self, spec: DeploymentSpec, signer: SigningKey, now: float, active_version: str | None = None, *, wall: float | None = None,
    ) -> WriteAck | PendingWrite:
        """Create or update a deployment; the active version is the best published match unless given."""
        if active_version is None:
            active_version = self.doc.resolve(spec.module, spec.version).version
        else:
            m = self.doc.manifest(spec.module, active_version)
            if m.removed:
                raise Conflict(f"{spec.module} {active_version} was removed")
        payload = deployment_payload(spec, active_version, "set", self._stamp(now, wall))
        from crdt.schema import validate_deployment_payload

        validate_deployment_payload(spec.name, payload)
        return self._commit("deployments", spec.name, payload, signer, now, wall)

    def rollback(
        self, name: str, signer: SigningKey, now: float, to_version: str | None = None, *, wall: float | None = None,
    ) -> WriteAck | PendingWrite:
        """Point a deployment back at an earlier version (default: the previous distinct active version)."""
        dep = self.doc.deployment(name)
        hist = [h for h in dep.history if h.spec is not None]
        if to_version is None:
            prior = [h for h in hist if h.active_version and h.active_version != dep.active_version]
            if not prior:
                raise NotFound(f"deployment {name} has no earlier version to roll back to")
            target = prior[-1]
        else:
            m = self.doc.manifest(dep.spec.module, to_version)
            if m.removed:
                raise Conflict(f"{dep.spec.module} {to_version} was removed and cannot be rolled back to")
            same = [h for h in hist if h.active_version == to_version]
            target = same[-1] if same else replace(hist[-1], spec=replace(dep.spec, version=to_version), active_version=to_version)
        assert target.spec is not None
        payload = deployment_payload(target.spec, target.active_version, "rollback", self._stamp(now, wall))
        return self._commit("deployments", name, payload, signer, now, wall)

    def delete_deployment(self, name: str, signer: SigningKey, now: float, *, wall: float | None = None) -> WriteAck | PendingWrite:
        """Delete a deployment (a signed record with no spec)."""
        self.doc.deployment(name)
        return self._commit("deployments", name, deployment_payload(None, None, "delete", self._stamp(now, wall)), signer, now, wall)

    def set_route(self, route: RouteSpec, signer: SigningKey, now: float) -> WriteAck | PendingWrite:
        """Create or replace a route."""
        return self._commit("routes", route.key, route.to_payload(), signer, now)

    def delete_route(self, host: str, path: str, method: str, signer: SigningKey, now: float) -> WriteAck | PendingWrite:
        """Delete a route (a signed tombstone)."""
        key = route_key(host, path, method)
        rec = self.doc.effective("routes", key)
        if rec is None or rec.payload.get("deleted") is True:
            raise NotFound(f"no route {key}")
        return self._commit("routes", key, {"deleted": True, "key": key}, signer, now)

    def set_tenant(self, quota: TenantQuota, signer: SigningKey, now: float, *, wall: float | None = None) -> WriteAck | PendingWrite:
        """Create or replace a tenant's quotas (operator or admin)."""
        return self._commit("tenant", quota.name, quota.to_payload(), signer, now, wall)

    def delete_tenant(self, name: str, signer: SigningKey, now: float, *, wall: float | None = None) -> WriteAck | PendingWrite:
        """Remove a tenant's quota record (a signed tombstone): the defaults apply again."""
        if self.doc.tenant(name) is None:
            raise NotFound(f"no quota record for tenant {name!r} (it has the defaults)")
        return self._commit("tenant", name, {"deleted": True, "name": name}, signer, now, wall)

    def set_subscription(self, spec: "SubscriptionSpec", signer: SigningKey, now: float, *, wall: float | None = None) -> WriteAck | PendingWrite:
        """Create or replace an event subscription (operators; docs/EVENTS.md)."""
        from crdt.schema import validate_subscription_payload

        validate_subscription_payload(spec.name, spec.to_payload())
        return self._commit("subscriptions", spec.name, spec.to_payload(), signer, now, wall)

    def delete_subscription(self, name: str, signer: SigningKey, now: float, *, wall: float | None = None) -> WriteAck | PendingWrite:
        """Delete a subscription (a signed tombstone record)."""
        rec = self.doc.effective("subscriptions", name)
        if rec is None or rec.payload.get("deleted") is True:
            raise NotFound(f"no subscription {name} (see `wasmatrix subscription list`)")
        return self._commit("subscriptions", name, {"deleted": True, "key": name}, signer, now, wall)

    def set_placement(self, replicas: list[ReplicaClaim], now: float, *, wall: float | None = None) -> WriteAck | PendingWrite:
        """Replace this node's own placement entry."""
        entry = PlacementEntry(self.node_id, tuple(replicas), self._stamp(now, wall))
        return self._commit("placement", self.node_id, entry.to_payload(), self.node_key, now, wall)

    # --- KV (structurally satisfies runtime's KVStore protocol) --------------------------

    def get(self, ns: str, key: str) -> bytes | None:
        """Value of ``key`` in namespace ``ns`` or None."""
        return self.doc.kv_get(ns, key)

    def set(self, ns: str, key: str, value: bytes) -> PendingWrite | None:
        """Write a value, signed by this node's key, within the namespace limits.

        With an effect store the write is not durable yet: the returned :class:`PendingWrite`
        is what ``runtime.kv.LoopKV`` waits on before the guest's call returns.
        """
        r = self._kv_write(ns, key, bytes(value))
        return r if isinstance(r, PendingWrite) else None

    def delete(self, ns: str, key: str) -> PendingWrite | None:
        """Delete a key (a signed tombstone in this node's slot)."""
        if self.doc.kv_get(ns, key) is not None:
            r = self._kv_write(ns, key, None)
            return r if isinstance(r, PendingWrite) else None
        return None

    def list(self, ns: str, prefix: str = "") -> list[str]:
        """Live keys of ``ns`` starting with ``prefix``, sorted."""
        return self.doc.kv_list(ns, prefix)

    def _kv_write(self, ns: str, key: str, value: bytes | None) -> WriteAck | PendingWrite:
        lim = self.doc.kv_limits
        v_namespace(ns)
        check_key(key, "KV key", lim.max_key_len)
        if value is not None:
            if len(value) > lim.max_value_bytes:
                raise KvLimitError(f"value of {len(value)} bytes exceeds the {lim.max_value_bytes}-byte limit of namespace {ns}")
            n, size = self.doc.kv_usage(ns)
            old = self.doc.kv_get(ns, key)
            if old is None and n + 1 > lim.max_keys:
                raise KvLimitError(f"namespace {ns} already holds {n} keys (limit {lim.max_keys}); delete some first")
            new_size = size - (len(old) + len(key) if old is not None else 0) + len(value) + len(key)
            if new_size > lim.max_namespace_bytes:
                raise KvLimitError(f"namespace {ns} would hold {new_size} bytes (limit {lim.max_namespace_bytes})")
        return self._commit("kv", kv_record_key(ns, key), {"v": value}, self.node_key, self.now)

    # --- reading (delegated) ---------------------------------------------------------

    def deployment(self, name: str) -> Deployment:
        return self.doc.deployment(name)

    def match(self, host: str, path: str, method: str) -> RouteSpec | None:
        return self.doc.match(host, path, method)
