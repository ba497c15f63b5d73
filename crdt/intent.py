"""IntentNode: the node-facing facade (typed writes, durable ack, sync) that NodeCore embeds."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

import structlog

from crdt.documents import AuditSink, Deployment, IntentDoc, VisibleHook
from crdt.errors import Conflict, KvLimitError, NotFound, PermissionDenied, ValidationError
from crdt.keys import SigningKey
from crdt.metrics import Counters
from crdt.records import SignedRecord, check_key
from crdt.schema import (
    DeploymentSpec,
    KvLimits,
    Manifest,
    PlacementEntry,
    ReplicaClaim,
    RouteSpec,
    deployment_payload,
    kv_record_key,
    manifest_from_payload,
    registry_key,
    route_key,
    v_namespace,
)
from crdt.store import MemoryStore, UpdateStore
from crdt.sync import Outgoing, SyncConfig, SyncCore
from crdt.trust import TrustConfig


@dataclass(slots=True, frozen=True)
class WriteAck:
    """Returned once a write is durably stored and queued for push; ``(signer, seq)`` identifies it."""

    kind: str
    key: str
    signer: str
    seq: int


@dataclass(slots=True, frozen=True)
class RetentionPolicy:
    """Removal rules: tombstones stay listed forever; their blobs become collectable after a grace period."""

    blob_grace_seconds: float = 7 * 24 * 3600.0
    refuse_if_active: bool = True


class IntentNode:
    """One node's replicated intent: documents + durable store + SyncCore.

    ``now`` is always passed in; ``rng`` is the node's seeded random source (Yjs client id,
    peer choice).
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
    ) -> None:
        self.node_id = node_id
        self.node_key = node_key
        self.trust = trust
        self.counters = counters if counters is not None else Counters()
        self.store: UpdateStore = store if store is not None else MemoryStore(self.counters)
        prior = getattr(self.store, "counters", None)
        if prior is not None and prior is not self.counters:  # one set of counters per node
            self.counters.store_corrupt_rows += prior.store_corrupt_rows
            self.store.counters = self.counters  # type: ignore[attr-defined]
        self.log = structlog.get_logger("crdt.intent").bind(node_id=node_id)
        # A fresh Yjs client id per start: a dropped corrupt row must never let us reuse clocks.
        self.doc = IntentDoc(
            trust, client_id=rng.getrandbits(52), kv_limits=kv_limits, counters=self.counters,
            audit_sink=audit_sink, on_visible=on_visible, node_id=node_id,
        )
        self.sync = SyncCore(node_id, self.doc, rng, sync_config, self.store, self.counters)
        self.compact_after_rows = compact_after_rows
        self.now = 0.0
        self._seq: dict[str, int] = {}
        for row in self.store.load():
            try:
                self.doc.apply_update(row, 0.0)
            except ValidationError:
                self.counters.store_corrupt_rows += 1
                self.log.error("crdt_store_row_undecodable", size=len(row))

    # --- driving (NodeCore / simulator) -------------------------------------------------

    def receive(self, src: str, msg: Any, now: float) -> list[Outgoing]:
        self.now = max(self.now, now)
        return self.sync.receive(src, msg, now)

    def tick(self, now: float, live_peers: list[str]) -> list[Outgoing]:
        self.now = max(self.now, now)
        out = self.sync.tick(now, live_peers)
        self.maybe_compact()
        return out

    def next_deadline(self) -> float | None:
        return self.sync.next_deadline()

    def maybe_compact(self) -> bool:
        """Fold the update log into one snapshot once it has ``compact_after_rows`` rows."""
        if self.store.row_count() < self.compact_after_rows:
            return False
        self.store.compact(self.doc.diff())
        return True

    def has_write(self, signer: str, seq: int) -> bool:
        """Convergence check: is the write ``(signer, seq)`` visible in this node's effective view?"""
        return self.doc.has_write(signer, seq)

    # --- writing ------------------------------------------------------------------------

    def _commit(self, kind: str, key: str, payload: Any, signer: SigningKey | None, now: float) -> WriteAck:
        signer = signer or self.node_key
        if kind == "placement":
            if self.trust.node_key_id(key) != signer.key_id:
                raise PermissionDenied(f"only node {key}'s own key may write its placement")
        elif not self.trust.may_write(signer.key_id, kind):
            roles = ", ".join(sorted(r.value for r in self.trust.roles_of(signer.key_id))) or "none"
            raise PermissionDenied(
                f"key {signer.key_id} (roles: {roles}) may not write {kind}; add a suitable role to the trust config"
            )
        self.now = max(self.now, now)
        seq = 1 + max(self._seq.get(signer.key_id, 0), self.doc.max_seq_of_signer(signer.key_id), self.doc.max_seq_for_key(kind, key))
        rec = SignedRecord.create(signer, kind, key, payload, seq)
        self._seq[signer.key_id] = seq
        update = self.doc.write(rec, now, signed_here=True)
        self.store.append(update)  # durable before we acknowledge
        self.sync.local_update(update, now)
        self.log.info("crdt_local_write", kind=kind, key=key[:120], signer=signer.key_id, seq=seq)
        return WriteAck(kind, key, signer.key_id, seq)

    def publish(self, manifest: Manifest, signer: SigningKey, now: float) -> WriteAck:
        """Add a module version to the registry; versions are immutable and never republished."""
        manifest_from_payload(manifest.to_payload())
        key = registry_key(manifest.name, manifest.version)
        if self.doc.effective("registry", key) is not None:
            raise Conflict(f"{manifest.name} {manifest.version} is already published; versions are immutable, publish a new version")
        return self._commit("registry", key, manifest.to_payload(), signer, now)

    def remove_version(self, name: str, version: str, signer: SigningKey, now: float, reason: str = "", policy: RetentionPolicy = RetentionPolicy()) -> WriteAck:
        """Tombstone a version (it stays listed as removed)."""
        m = self.doc.manifest(name, version)
        if m.removed:
            raise Conflict(f"{name} {version} is already removed")
        if policy.refuse_if_active:
            users = [d.name for d in self.doc.deployments() if d.spec.module == name and d.active_version == version]
            if users:
                raise Conflict(f"{name} {version} is active in deployment(s) {', '.join(users)}; roll them forward first")
        payload = {"removed": True, "removed_at": now, "reason": reason, "name": name, "version": version}
        return self._commit("registry", registry_key(name, version), payload, signer, now)

    def collectable_blobs(self, now: float, policy: RetentionPolicy = RetentionPolicy()) -> list[str]:
        """sha256 of removed versions whose grace period has passed and that no live version shares."""
        live, dead = set(), set()
        for name in self.doc.modules():
            for m in self.doc.versions(name):
                if not m.removed:
                    live.add(m.sha256)
                elif m.removed_at is not None and now - m.removed_at >= policy.blob_grace_seconds:
                    dead.add(m.sha256)
        return sorted(dead - live)

    def set_deployment(self, spec: DeploymentSpec, signer: SigningKey, now: float, active_version: str | None = None) -> WriteAck:
        """Create or update a deployment; the active version is the best published match unless given."""
        if active_version is None:
            active_version = self.doc.resolve(spec.module, spec.version).version
        else:
            m = self.doc.manifest(spec.module, active_version)
            if m.removed:
                raise Conflict(f"{spec.module} {active_version} was removed")
        payload = deployment_payload(spec, active_version, "set", now)
        from crdt.schema import validate_deployment_payload

        validate_deployment_payload(spec.name, payload)
        return self._commit("deployments", spec.name, payload, signer, now)

    def rollback(self, name: str, signer: SigningKey, now: float, to_version: str | None = None) -> WriteAck:
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
        payload = deployment_payload(target.spec, target.active_version, "rollback", now)
        return self._commit("deployments", name, payload, signer, now)

    def delete_deployment(self, name: str, signer: SigningKey, now: float) -> WriteAck:
        self.doc.deployment(name)
        return self._commit("deployments", name, deployment_payload(None, None, "delete", now), signer, now)

    def set_route(self, route: RouteSpec, signer: SigningKey, now: float) -> WriteAck:
        return self._commit("routes", route.key, route.to_payload(), signer, now)

    def delete_route(self, host: str, path: str, method: str, signer: SigningKey, now: float) -> WriteAck:
        key = route_key(host, path, method)
        rec = self.doc.effective("routes", key)
        if rec is None or rec.payload.get("deleted") is True:
            raise NotFound(f"no route {key}")
        return self._commit("routes", key, {"deleted": True, "key": key}, signer, now)

    def set_placement(self, replicas: list[ReplicaClaim], now: float) -> WriteAck:
        """Replace this node's own placement entry."""
        entry = PlacementEntry(self.node_id, tuple(replicas), now)
        return self._commit("placement", self.node_id, entry.to_payload(), self.node_key, now)

    # --- KV (structurally satisfies runtime's KVStore protocol) --------------------------

    def get(self, ns: str, key: str) -> bytes | None:
        """Value of ``key`` in namespace ``ns`` or None."""
        return self.doc.kv_get(ns, key)

    def set(self, ns: str, key: str, value: bytes) -> None:
        """Write a value, signed by this node's key, within the namespace limits."""
        self._kv_write(ns, key, bytes(value))

    def delete(self, ns: str, key: str) -> None:
        """Delete a key (a signed tombstone in this node's slot)."""
        if self.doc.kv_get(ns, key) is not None:
            self._kv_write(ns, key, None)

    def list(self, ns: str, prefix: str = "") -> list[str]:
        """Live keys of ``ns`` starting with ``prefix``, sorted."""
        return self.doc.kv_list(ns, prefix)

    def _kv_write(self, ns: str, key: str, value: bytes | None) -> WriteAck:
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
