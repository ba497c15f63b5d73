"""Replicated intent in the simulator: keys, durable stores, intent actions, convergence.

The simulator stays the driver: every node's ``NodeCore`` gets a real
``crdt.intent.IntentNode`` and ``crdt.blob.BlobTransfer``; this module only plays
the parts a real deployment keeps outside the core:

* **identities** — every node has an Ed25519 key derived from the run's seed
  (``sha256(f"{seed}:{name}")``), and one trust configuration, shared by all
  nodes, admits them all and trusts the publisher and operator keys the
  actions sign with: one of each *per acting node* (``{seed}:publisher:{name}``),
  because a key is one writer — one key signing at two nodes without syncing
  in between is equivocation, which freezes the key everywhere. The
  configuration holds no per-record state: each node verifies each record
  itself, once, in its own log's cache, so the simulated CPU cost per node is
  the real one.
* **durable state** — each node's ``MemoryStore`` (one row per signed record) and blob
  store belong to the simulator and survive a crash; a restarted node builds
  a fresh core on top of them, exactly like a daemon reopening its data dir.
  The core only sees an ``EffectStore``: the simulator performs its persist
  effects ``PERSIST_DELAY`` later (a worker thread's fsync) and then reports
  them done, which is when writes are acknowledged; a crash in between loses
  the unacknowledged writes (``intent_unacked_lost``), never an acknowledged one.
* **stream lifecycle** — a stream frame sent to a crashed node comes back as
  ``connect_failed`` one round trip later, one into a partition as ``timed_out``
  after the profile's ``stream_timeout``.
* **clocks** — timers run on each node's (skewed, drifting) monotonic clock;
  record timestamps come from its separately skewed wall clock.
* **operators** — the scenario actions ``publish``, ``deploy``, ``rollback``,
  ``kv``, ``blob_fetch`` and ``forge`` call the node's public write API at the
  scheduled virtual time.
* **measurement** — the ``on_visible`` hook of every node records when each
  acknowledged write became visible where; the report derives convergence
  times, lost writes and forged writes that (must never) become visible.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any

from crdt.blob import BlobTransfer, MemoryBlobStore
from crdt.errors import CrdtError
from crdt.keys import SigningKey
from crdt.intent import IntentNode
from crdt.heads import RecordPush
from crdt.logrecord import LogRecord
from crdt.schema import DeploymentSpec, Manifest, deployment_payload
from crdt.store import EffectStore, MemoryStore
from crdt.sync import SyncConfig
from crdt.trust import Role, TrustConfig
from model import CapabilityRequest, SpecError
from sim.scenario import Fault, IntentSpec

if TYPE_CHECKING:
    from mesh.node import NodeCore
    from sim.engine import SimNode, Simulation

# Forged writes use sequence numbers no honest writer reaches, so their write ids never
# collide with a real write of the same signer.
FORGED_SEQ_BASE = 10**12
# How long a simulated worker thread takes to make a batch of persist effects durable (one fsync).
PERSIST_DELAY = 0.002


def derive_key(label: str) -> SigningKey:
    """A deterministic Ed25519 key: the seed is SHA-256 of ``label`` (e.g. ``"7:n003"``)."""
    return SigningKey.from_seed(hashlib.sha256(label.encode()).digest())


def blob_bytes(seed: int, module: str, version: str, size: int) -> bytes:
    """The deterministic content of a simulated module binary."""
    return hashlib.shake_256(f"{seed}:blob:{module}@{version}".encode()).digest(size)


@dataclass(slots=True)
class WriteRecord:
    """One acknowledged write and where it became visible (first time, current incarnation)."""

    action: str
    kind: str
    key: str
    node: str
    signer: str
    seq: int
    acked_at: float
    visible: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "kind": self.kind, "key": self.key[:120], "node": self.node,
                "signer": self.signer, "seq": self.seq, "acked_at": round(self.acked_at, 6)}


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 100]) of ``values``; None when empty."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100.0 * len(s)) - 1))
    return s[k]


def content_digest(node: IntentNode) -> str:
    """Hash of every record the node holds (stored and held), in signer/seq order."""
    h = hashlib.blake2b(digest_size=16)
    for r in node.doc.records.export():
        h.update(len(r).to_bytes(4, "big") + r)
    return h.hexdigest()


def fingerprint(node: IntentNode) -> tuple[tuple[tuple[str, int, bytes], ...], str, str]:
    """(per-signer heads, content digest, effective-view digest) of one replica."""
    heads = tuple((s, q, i) for s, (q, i) in sorted(node.doc.records.heads().items()))
    view = hashlib.blake2b(repr(node.doc.view_digest()).encode(), digest_size=16).hexdigest()
    return heads, content_digest(node), view


class IntentHarness:
    """The simulator's side of replicated intent (one per simulation)."""

    def __init__(self, sim: Simulation, spec: IntentSpec) -> None:
        self.sim = sim
        self.spec = spec
        seed = sim.seed
        sc = sim.scenario
        self.publisher = derive_key(f"{seed}:publisher")
        self.operator = derive_key(f"{seed}:operator")
        self.stranger = derive_key(f"{seed}:stranger")  # never trusted: signs forged writes
        self.trust = TrustConfig()
        self.trust.add_key(self.publisher.public_raw, [Role.PUBLISHER])
        self.trust.add_key(self.operator.public_raw, [Role.OPERATOR])
        self._role_keys: dict[tuple[str, str], SigningKey] = {}
        self.node_keys: dict[str, SigningKey] = {}
        for i in range(sc.nodes + sc.max_joins()):
            name = sc.node_name(i)
            k = self.node_keys[name] = derive_key(f"{seed}:{name}")
            self.trust.admit_node(name, k.public_raw)
        self.sync_config = SyncConfig(fanout=spec.fanout, relay_ttl=spec.relay_ttl, anti_entropy_interval=spec.anti_entropy_interval)
        self.stores: dict[str, MemoryStore] = {}
        self.blob_stores: dict[str, MemoryBlobStore] = {}
        self.writes: dict[tuple[str, int], WriteRecord] = {}
        self.failed: list[dict[str, Any]] = []
        self.forged: dict[tuple[str, int], str] = {}
        self.forged_seen = 0  # on_visible calls for forged writes (must stay 0)
        self.blob_results: list[dict[str, Any]] = []
        self.blob_started = 0
        self.retired: dict[str, int] = {}  # counters of cores replaced by a restart
        self._capture: list[LogRecord] | None = None
        self._capture_node = ""
        self._wall = 0.0  # the acting node's wall clock during an action
        self.unacked: dict[tuple[str, int], WriteRecord] = {}  # written, persist effect not yet done
        self.unacked_lost = 0  # writes that died unacknowledged in a crash (allowed, never "lost")
        self._persist_due: set[tuple[str, int]] = set()  # (node, generation) with a persist event queued
        self._stream_due: set[tuple[str, int, str, str]] = set()

    # ------------------------------------------------------------------ cores

    def make(self, name: str, generation: int) -> tuple[IntentNode, BlobTransfer]:
        """The intent sub-cores of a (re)booting node, on top of its durable stores."""
        old = self.sim.nodes[name].core
        if old is not None:
            self._retire(old)
        spec = self.spec
        rng = random.Random(f"{self.sim.seed}:{name}:{generation}:intent")
        node = IntentNode(
            name,
            self.node_keys[name],
            self.trust,
            rng,
            wall=self.sim.nodes[name].wall(self.sim.now),
            store=EffectStore.over(self.stores.setdefault(name, MemoryStore())),
            sync_config=self.sync_config,
            on_visible=partial(self._visible, name),
            compact_after_rows=spec.compact_after_rows,
        )
        blobs = BlobTransfer(
            self.blob_stores.setdefault(name, MemoryBlobStore()),
            chunk_size=spec.blob_chunk_size,
            window=spec.blob_window,
            request_timeout=spec.blob_timeout,
            counters=node.counters,
            on_done=partial(self._blob_done, name),
            node_id=name,
            deferred_puts=True,
        )
        return node, blobs

    def _retire(self, core: NodeCore) -> None:
        for k, v in core.counters.items():
            if k.startswith("intent_"):
                self.retired[k] = self.retired.get(k, 0) + v
        if core.intent is not None:
            for k, v in core.intent.counters.as_dict().items():
                if isinstance(v, int):
                    self.retired["crdt_" + k] = self.retired.get("crdt_" + k, 0) + v

    def on_crash(self, name: str) -> None:
        """In-memory state is gone: visibility restarts with the next incarnation."""
        for w in self.writes.values():
            w.visible.pop(name, None)
        # Persist effects not yet done die with the process: their writes were never acknowledged.
        for wid in [wid for wid, w in self.unacked.items() if w.node == name]:
            del self.unacked[wid]
            self.unacked_lost += 1

    # ------------------------------------------------------------------ driver duties

    def after(self, node: SimNode) -> None:
        """After every core call: queue the persist worker if the core produced effects."""
        core = node.core
        if core is None or core.intent is None:
            return
        store = core.intent.store
        key = (node.name, node.generation)
        pending = isinstance(store, EffectStore) and store.has_effects()
        if not pending and core.blobs is not None:
            pending = core.blobs.has_puts()
        if pending and key not in self._persist_due:
            from sim.engine import _STOP

            self._persist_due.add(key)
            self.sim._push(self.sim.now + PERSIST_DELAY, _STOP, (node.name, ("persist",), node.generation))

    def stream_failed(self, node: SimNode, peer: str) -> None:
        """A stream frame from ``node`` cannot reach ``peer``: report it the way a socket would."""
        if not node.up or node.core is None:
            return
        sim = self.sim
        if peer in sim.nodes and sim._blocked(node.name, peer):
            kind, delay = "timed_out", sim.scenario.profile.stream_timeout
        else:
            kind, delay = "connect_failed", 2 * sim.scenario.network.default.latency_ms / 1000.0
        key = (node.name, node.generation, peer, kind)
        if key in self._stream_due:
            return  # one report per failed stream burst
        from sim.engine import _STOP

        self._stream_due.add(key)
        sim._push(sim.now + delay, _STOP, (node.name, ("stream", kind, peer), node.generation))

    def driver_event(self, node: SimNode, what: tuple[Any, ...]) -> None:
        """Run a driver event for an up node of the current generation."""
        sim = self.sim
        core = node.core
        local = node.local(sim.now)
        if what[0] == "persist":
            self._persist_due.discard((node.name, node.generation))
            outs = []
            for put in core.take_blob_puts():
                try:
                    self.blob_stores[node.name].put(put.sha256, put.data)
                except CrdtError as exc:  # the store's own hash check: report, the fetch fails
                    outs += core.blob_stored(put.sha256, local, str(exc))
                    continue
                outs += core.blob_stored(put.sha256, local)
            effects = core.take_effects()
            if effects:
                disk = self.stores[node.name]
                for e in effects:
                    e.apply(disk)
                outs += core.persisted(effects[-1].token, local)
                for ack in core.take_acks():
                    w = self.unacked.pop((ack.signer, ack.seq), None)
                    if w is not None:
                        w.acked_at = sim.now
                        self.writes[(ack.signer, ack.seq)] = w
            sim._after(node, outs)
        elif what[0] == "stream":
            _, kind, peer = what
            self._stream_due.discard((node.name, node.generation, peer, kind))
            sim._after(node, core.stream_event(peer, kind, local))

    # ------------------------------------------------------------------ hooks

    def role_key(self, role: str, node: str) -> SigningKey:
        """The publisher or operator key the actions at ``node`` sign with (trusted on first use;
        deterministic, so the same as a trust file listing every such key from the start)."""
        k = self._role_keys.get((role, node))
        if k is None:
            k = self._role_keys[(role, node)] = derive_key(f"{self.sim.seed}:{role}:{node}")
            self.trust.add_key(k.public_raw, [Role.PUBLISHER if role == "publisher" else Role.OPERATOR])
        return k

    def _visible(self, name: str, rec: LogRecord, _local_now: float) -> None:
        if self._capture is not None and name == self._capture_node:
            self._capture.append(rec)
        w = self.writes.get(rec.write_id) or self.unacked.get(rec.write_id)
        if w is not None:
            w.visible.setdefault(name, self.sim.now)
        elif rec.write_id in self.forged:
            self.forged_seen += 1

    def _blob_done(self, name: str, sha256: str, ok: bool, reason: str) -> None:
        self.blob_results.append({"node": name, "sha256": sha256[:16], "ok": ok, "reason": reason, "at": round(self.sim.now, 6)})

    # ------------------------------------------------------------------ actions

    def apply(self, f: Fault) -> None:
        """Run one intent action at every node its selector names."""
        sim = self.sim
        for n in sim._fault_nodes(f):
            node = sim.nodes[n]
            core = node.core
            if not node.up or node.left or core is None or core.intent is None:
                self._fail(f, n, "node is down")
                continue
            local = max(0.0, node.local(sim.now))
            self._capture, self._capture_node = [], n
            self._wall = node.wall(sim.now)
            try:
                outs = getattr(self, "_do_" + f.action)(node, core, core.intent, local, f.args)
            except (CrdtError, SpecError) as exc:  # SpecError: a bad manifest field in the scenario
                self._fail(f, n, f"{exc.__class__.__name__}: {exc}")
                outs = []
            finally:
                captured, self._capture = self._capture, None
            if f.action in ("publish", "deploy", "rollback", "kv"):
                for rec in captured:  # the write just made, visible locally at once, acknowledged once durable
                    if rec.write_id not in self.writes and rec.write_id not in self.unacked:
                        w = WriteRecord(f.action, rec.kind, rec.key, n, rec.signer, rec.seq, sim.now)
                        w.visible[n] = sim.now
                        self.unacked[rec.write_id] = w
            sim._after(node, outs)

    def _fail(self, f: Fault, node: str, why: str) -> None:
        self.failed.append({"at": round(self.sim.now, 6), "action": f.action, "node": node, "error": why[:200]})

    def _do_publish(self, node: SimNode, core: NodeCore, intent: IntentNode, now: float, a: dict[str, Any]) -> list[Any]:
        module, version, size = str(a["module"]), str(a["version"]), int(a.get("size", 1024))
        data = blob_bytes(self.sim.seed, module, version, size)
        sha = hashlib.sha256(data).hexdigest()
        manifest = Manifest(
            module, version, sha, size, CapabilityRequest.from_strings(a.get("capabilities", ())),
            created_at=self._wall, description=str(a.get("description", "")),
        )
        # The publishing node holds the binary first, then announces it in the registry.
        self.blob_stores[node.name].put(sha, data)
        intent.publish(manifest, self.role_key("publisher", node.name), now, wall=self._wall)
        return []

    def _do_deploy(self, node: SimNode, core: NodeCore, intent: IntentNode, now: float, a: dict[str, Any]) -> list[Any]:
        spec = DeploymentSpec(str(a["name"]), str(a["module"]), str(a["version"]), int(a.get("replicas", 1)))
        intent.set_deployment(spec, self.role_key("operator", node.name), now, wall=self._wall)
        return []

    def _do_rollback(self, node: SimNode, core: NodeCore, intent: IntentNode, now: float, a: dict[str, Any]) -> list[Any]:
        to = a.get("to")
        intent.rollback(str(a["name"]), self.role_key("operator", node.name), now, to_version=str(to) if to is not None else None, wall=self._wall)
        return []

    def _do_kv(self, node: SimNode, core: NodeCore, intent: IntentNode, now: float, a: dict[str, Any]) -> list[Any]:
        intent.now = max(intent.now, now)  # KV writes take the node's clock from the node
        intent.set(str(a["ns"]), str(a["key"]), str(a["value"]).encode())
        return []

    def _do_blob_fetch(self, node: SimNode, core: NodeCore, intent: IntentNode, now: float, a: dict[str, Any]) -> list[Any]:
        m = intent.doc.manifest(str(a["module"]), str(a["version"]))
        if self.blob_stores[node.name].has(m.sha256):
            self.blob_results.append({"node": node.name, "sha256": m.sha256[:16], "ok": True, "reason": "already held", "at": round(self.sim.now, 6)})
            return []
        src = a.get("from")
        peers = self.sim.select(src) if src is not None else core.swim.live_peers()
        size = m.size

        def verify(data: bytes) -> None:
            if len(data) != size:
                raise ValueError(f"blob has {len(data)} bytes, manifest says {size}")

        self.blob_started += 1
        return core.fetch_blob(m.sha256, [p for p in peers if p != node.name], now, size, verify)

    def _do_forge(self, node: SimNode, core: NodeCore, intent: IntentNode, now: float, a: dict[str, Any]) -> list[Any]:
        """A compromised node sends every live peer a record it may not write (a hostile peer's push).

        The record goes straight to the peers (a faulty node does not run the honest write
        path): each must refuse it, store nothing and forward nothing.
        """
        kind = str(a["kind"])
        name = str(a.get("name", "web"))
        seq = FORGED_SEQ_BASE + len(self.forged) + 1
        spec = DeploymentSpec(name, "forged", "6.6.6", 999)
        payload = deployment_payload(spec, "6.6.6", "set", self._wall)
        wall_ms = int(self._wall * 1000)
        prev = bytes(32)
        if kind == "unknown_signer":
            rec = LogRecord.create(self.stranger, seq, prev, "deployments", name, payload, wall_ms)
        elif kind == "role":
            rec = LogRecord.create(self.node_keys[node.name], seq, prev, "deployments", name, payload, wall_ms)
        else:  # bad_signature: an operator's key id, a signature that does not verify
            good = LogRecord.create(self.role_key("operator", node.name), seq, prev, "deployments", name, payload, wall_ms)
            rec = replace(good, signature=bytes(b ^ 0x5A for b in good.signature))
        self.forged[rec.write_id] = kind
        peers = [p for p in core.swim.live_peers() if p != node.name]
        return core._translate([(p, RecordPush((rec.encode(),), 0, 0)) for p in peers], None, None)

    # ------------------------------------------------------------------ results

    def live_intents(self) -> list[tuple[str, IntentNode]]:
        out = []
        for n in self.sim.live_names():
            core = self.sim.nodes[n].core
            if core is not None and core.intent is not None:
                out.append((n, core.intent))
        return out

    def converged(self) -> bool:
        """All live replicas hold identical record sets (heads, content) and the same view."""
        fps = {fingerprint(i) for _, i in self.live_intents()}
        return len(fps) <= 1

    def lost_writes(self) -> list[WriteRecord]:
        """Acknowledged writes missing from at least one live node's effective view."""
        live = self.live_intents()
        return [w for wid, w in sorted(self.writes.items()) if not all(i.has_write(w.signer, w.seq) for _, i in live)]

    def forged_visible(self) -> int:
        """(node, forged write) pairs present in an effective view: must be 0."""
        live = self.live_intents()
        return sum(1 for wid in self.forged for _, i in live if i.has_write(*wid)) + self.forged_seen

    def convergence(self) -> dict[str, Any]:
        """Time from each write's ack to its visibility at every node live at the end."""
        live = self.live_intents()
        names = [n for n, _ in live]
        times: list[float] = []
        converged = 0
        for wid in sorted(self.writes):
            w = self.writes[wid]
            if not all(i.has_write(w.signer, w.seq) for _, i in live):
                continue
            converged += 1
            seen = [w.visible.get(n) for n in names]
            if all(t is not None for t in seen):
                times.append(max([w.acked_at, *[t for t in seen if t is not None]]) - w.acked_at)

        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 6)

        return {
            "p50": r(percentile(times, 50)),
            "p99": r(percentile(times, 99)),
            "max": r(max(times) if times else None),
            "writes": len(self.writes),
            "converged_writes": converged,
        }

    def totals(self) -> dict[str, int]:
        """Node-core intent counters and crdt counters, summed over every core that ever ran."""
        out = dict(self.retired)
        for n in self.sim.order:
            core = self.sim.nodes[n].core
            if core is None:
                continue
            for k, v in core.counters.items():
                if k.startswith("intent_"):
                    out[k] = out.get(k, 0) + v
            if core.intent is not None:
                for k, v in core.intent.counters.as_dict().items():
                    if isinstance(v, int):
                        out["crdt_" + k] = out.get("crdt_" + k, 0) + v
        return dict(sorted(out.items()))

    def report(self) -> dict[str, Any]:
        """The intent fields of the simulation report."""
        totals = self.totals()
        lost = self.lost_writes()
        return {
            "intent_converged": self.converged(),
            "intent_convergence_seconds": self.convergence(),
            "sync_bytes_sent": totals.get("intent_bytes_sent", 0),
            "sync_messages_sent": totals.get("intent_messages_sent", 0),
            "intent_lost_writes": [w.to_json() for w in lost[:20]],
            "intent_lost_write_count": len(lost),
            "intent_unacked_lost": self.unacked_lost,
            "intent_failed_writes": self.failed[:50],
            "intent_failed_write_count": len(self.failed),
            "intent_forged_writes": len(self.forged),
            "intent_forged_visible": self.forged_visible(),
            "blob_fetches": {
                "started": self.blob_started,
                "done": sum(1 for b in self.blob_results if b["ok"]),
                "failed": sum(1 for b in self.blob_results if not b["ok"]),
                "results": self.blob_results[:20],
            },
            "intent_counters": {k: v for k, v in totals.items() if k.startswith(("intent_", "crdt_records", "crdt_anti", "crdt_eager", "crdt_updates", "crdt_blob", "crdt_store"))},
        }
