"""The trio driver: one ``NodeCore`` over Noise-secured UDP datagrams and TCP streams.

One nursery tree (see docs/DAEMON.md):

* ``_udp_loop``: every datagram goes through ``SecureTransport.receive_datagram``; each authenticated
  plaintext becomes ``core.receive(addr, plaintext, now, peer=node_id)``.
* ``_tcp_accept`` / :class:`Conn`: every TCP connection is a ``StreamSession`` (XXpsk0 as the first
  three frames); each frame becomes ``core.receive(..., peer=node_id, stream=conn)`` and answers go
  back on that connection. Outbound streams are pooled per node id (bounded, idle ones closed).
* ``_timer_loop``: ``tick`` the core and the transport when ``next_deadline()`` comes.
* ``_persist_loop``: the core's persist effects run on a worker thread (one sqlite transaction and
  fsync per batch); then ``persisted()`` releases acks and held answers.
* the control API and ``/metrics`` (mesh/daemon/api.py), the membership snapshot, signals.

Every core call happens on the trio thread. Nothing from the network raises out of a task: bad
bytes are dropped and counted by the transport, the core or here (``driver_*`` counters).
"""

from __future__ import annotations

import errno
import json
import math
import os
import random
import secrets
import signal
import socket
import threading
import time
from collections import Counter, deque
from typing import Any

import structlog
import trio

from crdt.blob import BlobTransfer, DirBlobStore
from crdt.errors import StoreError
from crdt.intent import IntentNode
from crdt.store import EffectStore, SqliteStore
from crdt.trust import TrustConfig
from mesh.audit import AuditLog
from mesh.daemon.api import ApiError, ApiServer, Request, json_answer
from mesh.daemon.intentapi import IntentApi
from mesh.daemon.invocation import InvokeService
from mesh.daemon.quotas import QuotaService
from mesh.daemon.placements import PlacementService
from mesh.daemon.workloads import Workloads, WorkloadsApi
from mesh.events.api import EventsApi
from mesh.events.bus import EventBus
from mesh.daemon.config import DaemonConfig, format_hostport, parse_hostport, DaemonConfigError
from mesh.daemon.security import RefusalAuditor, stream_refusal
from mesh.datadir import DataDir
from mesh.errors import ConfigError
from mesh.membership import NodeMeta
from mesh.membership.state import MemberState
from mesh.daemon.meshsecret import RELOAD_CHECK_SECONDS, MeshSecrets
from mesh.meshfile import secret_fingerprint
from mesh.metrics import node_registry, render
from mesh.node import NodeCore
from mesh.transport import (
    DATAGRAM_OVERHEAD,
    Closed,
    Established,
    Message,
    SecureTransport,
    StreamSession,
    TransportConfig,
)
from mesh.transport import Outgoing as StreamBytes
from mesh.transport.identity import node_id_of
from mesh.wire import MAX_DATAGRAM, Outgoing
from crdt.files import atomic_write

INSECURE_PSK = b"wasmatrix-insecure-test-mesh-psk"  # 32 bytes: --insecure meshes are open to anyone
assert len(INSECURE_PSK) == 32
VERSION = "0.1.0"
MAX_OUTBOUND = 256  # pooled outbound streams
STREAM_IDLE = 60.0  # an outbound stream with no traffic for this long is closed
MAX_STREAM_BUFFER = 8 << 20  # queued bytes per stream before it is reported backpressured
HARD_STREAM_BUFFER = 32 << 20  # ... and closed
MAX_PENDING_FRAMES = 256  # frames queued while a stream handshakes
LEAVE_GRACE = 3.0  # at most this long a leaving node waits for its leave broadcasts to go out
LEAVE_PROPAGATE = 0.5  # then this long (Serf's LeavePropagateDelay is 1 s)
SNAPSHOT_INTERVAL = 10.0
DEBUG_PACKETS = os.environ.get("WASMATRIX_DEBUG_PACKETS") == "1"


def _addr_key(addr: Any) -> str:
    host, port = addr[0], addr[1]
    return format_hostport(host, port)


class Conn:
    """One TCP connection with its Noise stream session; the core's opaque stream handle."""

    def __init__(self, daemon: "Daemon", session: StreamSession, addr: str, outbound: bool, node: str | None) -> None:
        self.daemon = daemon
        self.session = session
        self.addr = addr
        self.outbound = outbound
        self.node = node  # expected node id (outbound), or the authenticated one once established
        self.peer: str | None = None
        self.pending: list[bytes] = []  # plaintexts waiting for the handshake
        self.out: deque[bytes] = deque()
        self.out_bytes = 0
        self.backpressured = False
        self.wake = trio.Event()
        self.closed = False
        self.last_active = trio.current_time()
        self.stream: trio.SocketStream | None = None
        self.cancel: trio.CancelScope | None = None

    def __repr__(self) -> str:  # appears in logs; never holds key material
        return f"Conn({self.addr}, peer={self.peer}, outbound={self.outbound})"

    def send_frame(self, plaintext: bytes) -> None:
        """Queue one plaintext frame (sync; the writer task sends it)."""
        if self.closed:
            self.daemon.counters["driver_stream_send_closed"] += 1
            return
        if not self.session.established:
            if len(self.pending) >= MAX_PENDING_FRAMES:
                self.daemon.counters["driver_stream_pending_dropped"] += 1
                return
            self.pending.append(plaintext)
            return
        self._queue(self.session.send(plaintext))

    def _queue(self, data: bytes) -> None:
        self.out.append(data)
        self.out_bytes += len(data)
        self.wake.set()
        if self.out_bytes > HARD_STREAM_BUFFER:
            self.daemon.counters["driver_stream_overflow"] += 1
            self.close("overflow")
        elif self.out_bytes > MAX_STREAM_BUFFER and not self.backpressured and self.peer:
            self.backpressured = True
            self.daemon.stream_event(self.peer, "backpressure")

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.daemon.counters[f"driver_stream_closed_{reason}"] += 1
        self.wake.set()
        if self.cancel is not None:
            self.cancel.cancel()

    async def run(self, stream: trio.SocketStream) -> None:
        d = self.daemon
        self.stream = stream
        try:
            with trio.CancelScope() as scope:
                self.cancel = scope
                if self.outbound:
                    self._queue(self.session.start())
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, stream)
                    nursery.start_soon(self._handshake_timeout)
                    await self._reader(stream)
                    nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            d.counters["driver_stream_io_errors"] += 1
        finally:
            if not self.closed:
                self.closed = True
                d.counters["driver_stream_closed_eof"] += 1
            d.conn_gone(self)
            with trio.CancelScope(shield=True):
                with trio.move_on_after(1):
                    await stream.aclose()

    async def _handshake_timeout(self) -> None:
        await trio.sleep(self.daemon.stream_timeout)
        if not self.session.established:
            self.daemon.counters["driver_stream_handshake_timeouts"] += 1
            if self.node:
                self.daemon.stream_event(self.node, "timed_out")
            self.close("handshake_timeout")

    async def _writer(self, stream: trio.SocketStream) -> None:
        while not self.closed:
            while self.out:
                data = self.out.popleft()
                self.out_bytes -= len(data)
                await stream.send_all(data)
                self.last_active = trio.current_time()
                self.daemon.counters["driver_stream_bytes_out"] += len(data)
            if self.backpressured and self.out_bytes <= MAX_STREAM_BUFFER // 2 and self.peer:
                self.backpressured = False
                self.daemon.stream_event(self.peer, "drained")
            self.wake = trio.Event()
            if self.out:
                continue
            await self.wake.wait()
        # closed: flush what is queued (e.g. a last answer), bounded
        with trio.move_on_after(1):
            while self.out:
                await stream.send_all(self.out.popleft())

    async def _reader(self, stream: trio.SocketStream) -> None:
        d = self.daemon
        while not self.closed:
            data = await stream.receive_some(65536)
            if not data:
                return
            self.last_active = trio.current_time()
            d.counters["driver_stream_bytes_in"] += len(data)
            for ev in self.session.feed(data):
                if isinstance(ev, StreamBytes):
                    self._queue(ev.data)
                elif isinstance(ev, Established):
                    self.peer = ev.peer.node_id
                    if self.outbound and self.node is None:
                        d.adopt(self)
                    pending, self.pending = self.pending, []
                    for p in pending:
                        self._queue(self.session.send(p))
                elif isinstance(ev, Message):
                    d.deliver_frame(self, ev.plaintext)
                elif isinstance(ev, Closed):
                    d.log.info("stream_closed", peer=self.peer or self.node, addr=self.addr, reason=ev.reason)
                    refusal = stream_refusal(ev.reason)
                    if refusal is not None:
                        d.handshake_refused(refusal, "tcp", self.addr)
                    if self.outbound and not self.session.established and self.node:
                        d.stream_event(self.node, "connect_failed")
                    self.close("protocol")
                    return


class Daemon:
    """A running node. ``await Daemon(cfg).run()`` until SIGTERM/SIGINT, ``leave`` or a fatal error."""

    def __init__(self, cfg: DaemonConfig) -> None:
        self.cfg = cfg
        self.counters: Counter[str] = Counter()
        self.log = structlog.get_logger("wasmatrix.node")
        self.started_wall = time.time()
        self.conns_out: dict[str, Conn] = {}  # node id (or address for a seed) -> outbound stream
        self.conns_in: set[Conn] = set()
        self.visible_at: dict[tuple[str, int], float] = {}  # (signer, seq) -> time.monotonic(), bounded
        self._wake = trio.Event()
        self._persist_kick = trio.Event()
        self._durable = trio.Event()  # set (and replaced) after every persisted batch
        self._snapshot_dirty = True
        self._stopping = False
        self._leaving = False
        self.api_addr = ""
        self.http_addr = ""
        # Hex, not token_urlsafe: a token starting with '-' reads as an option in `--token TOKEN`.
        self.token = secrets.token_hex(32)
        self.stream_timeout = cfg.membership_config().stream_timeout
        self.fatal: str | None = None
        self._audit_synced = -1
        self.revoked_seen: set[str] = set()

    # ------------------------------------------------------------------ start-up (sync, before the loop)

    def _open(self) -> None:
        cfg = self.cfg
        self.dd = DataDir(cfg.data_dir).open()
        self.identity = self.dd.identity
        self.node_id = self.dd.node_id
        self.log = self.log.bind(node_id=self.node_id, **({"insecure": True} if cfg.insecure else {}))
        self.audit = AuditLog(self.dd.audit_path, self.node_id, time.time)
        if self.dd.identity_created:
            self.audit.append("node_key_created", {"node_id": self.node_id}, now_wall=time.time())
        self.secrets: MeshSecrets | None = None
        if cfg.mesh_secret is not None:
            self.secrets = MeshSecrets(cfg.mesh_secret, time.time())
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload request, never a kill (see _mesh_secret_loop)
            self.psk, self.accepted_psks = self.secrets.dial, self.secrets.accepted
            self.mesh_id = self.secrets.mesh.mesh_id
            self.secret_fp = secret_fingerprint(self.secrets.mesh.secret)
            self.trust_roots = [a.public_key for a in self.secrets.mesh.admins]
        else:
            self.psk, self.mesh_id, self.secret_fp = INSECURE_PSK, "insecure", "insecure"
            self.accepted_psks = (INSECURE_PSK,)
            self.trust_roots = []  # no mesh file, no admin keys: no replicated grants
        snap = self._read_snapshot()
        self.incarnation = int(snap.get("incarnation", 0)) + 1 if snap else 0
        self.known = [a for a in snap.get("members", []) if isinstance(a, str)][:256] if snap else []
        self.rng = random.Random(secrets.randbits(64))

    def _read_snapshot(self) -> dict[str, Any]:
        p = self.dd.members_path
        try:
            obj = json.loads(p.read_bytes()[: 4 << 20])
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, UnicodeDecodeError):
            self.log.warning("snapshot_unreadable", path=str(p))
            return {}
        if not isinstance(obj, dict) or obj.get("node_id") != self.node_id:
            return {}
        inc = obj.get("incarnation")
        if type(inc) is not int or not 0 <= inc < 2**62:
            return {}
        return obj

    def _build_core(self, advertise: str, now: float) -> None:
        cfg = self.cfg
        trust_path = self.dd.path / "trust.json"
        self.trust = TrustConfig.load(trust_path)
        self.trust.admit_node(self.node_id, self.identity.public.ed25519_public)
        self.store = SqliteStore(self.dd.path)
        self.blob_store = DirBlobStore(self.dd.path / "blobs")
        intent = IntentNode(
            self.node_id, self.dd.signing_key, self.trust, random.Random(self.rng.getrandbits(64)),
            store=EffectStore.over(self.store), audit_sink=self._audit_record, roots=self.trust_roots,
            on_visible=self._on_visible,
        )
        self.trust_gen = -1
        blobs = BlobTransfer(self.blob_store, counters=intent.counters, node_id=self.node_id, deferred_puts=True)
        seeds = list(cfg.seeds) + [a for a in self.known if a not in cfg.seeds and a != advertise]
        self.core = NodeCore(
            self.node_id, advertise, cfg.meta(), cfg.membership_config(), self.rng, now=now, seeds=seeds,
            incarnation=self.incarnation, intent=intent, blobs=blobs, key=self.identity.public.ed25519_public,
        )
        self.refusals = RefusalAuditor(self.audit, self.counters)
        self.transport = SecureTransport(
            self.identity, self.psk, self._admit, random.Random(self.rng.getrandbits(64)),
            TransportConfig(max_datagram=MAX_DATAGRAM + DATAGRAM_OVERHEAD), accepted_psks=self.accepted_psks,
            on_refused=lambda reason, addr: self.handshake_refused(reason, "udp", _addr_key(addr)),
            on_established=lambda peer, addr: self.core.vouch(peer, _addr_key(addr)),
        )
        # Reflection guard: a message to a node we hold a session with rides that session (see NodeCore).
        self.core.session_with = lambda node, reliable: (
            node in self.conns_out if reliable else self.transport.peer_addr(node) is not None
        )
        self.stream_counters: Counter[str] = Counter()
        self.registry, self.metrics = node_registry(
            self.core, transport=self.transport, stream_counters=self.stream_counters,
            driver_counters=self.counters, audit_counters=self.audit.counters,
        )
        self.core.invoke_inbox = []
        self.quotas = QuotaService(self)
        self.invocations = InvokeService(self)
        self.placements = PlacementService(self)
        self.registry.register(self.invocations.metrics)
        self.registry.register(self.quotas.metrics)

    def _on_visible(self, rec: Any, now: float) -> None:
        # When each record became visible here, on the host's monotonic clock (CLOCK_MONOTONIC,
        # shared by every process on the machine): GET /v1/intent/visible, for propagation benches.
        self.visible_at[(rec.signer, rec.seq)] = time.monotonic()
        if hasattr(self, "workloads"):
            self.workloads.record_visible(rec.kind)
        if rec.kind == "subscriptions" and hasattr(self, "bus"):
            self.bus.subscriptions_changed()
        if len(self.visible_at) > 10_000:
            self.visible_at.pop(next(iter(self.visible_at)))

    def _audit_record(self, ev: Any) -> None:
        """The intent audit sink: an invalid record or an equivocation, into the hash-chained audit log."""
        if ev.root == "store":  # store_damaged / store_recovered
            self.audit.append(ev.reason, {"detail": ev.detail[:400]}, now_wall=time.time())
            return
        self.audit.append("record_" + ("equivocation" if ev.reason == "equivocation" else "invalid"), {
            "slot": ev.slot, "reason": ev.reason, "detail": ev.detail[:200], "signer": ev.signer, "seq": ev.seq,
        }, now_wall=time.time())

    def _admit(self, node_id: str, ed25519_public: bytes) -> bool:
        # A node id named by a replicated revocation is refused at every handshake.
        return node_id_of(ed25519_public) == node_id and not self._revoked_node(node_id)

    def _revoked_node(self, node_id: str) -> bool:
        core = getattr(self, "core", None)
        return core is not None and core.intent is not None and core.intent.doc.adapter.node_revoked(node_id)

    def _trust_changed(self) -> None:
        """The replicated trust changed: cut the sessions and streams of revoked nodes and declare them dead."""
        adapter = self.core.intent.doc.adapter  # type: ignore[union-attr]
        self.trust_gen = adapter.generation
        now = trio.current_time()
        for node_id in sorted(adapter.revoked):
            if node_id == self.node_id:
                self.log.error("node_revoked_self", detail="this node's id is revoked: every peer refuses it")
                continue
            if node_id not in self.revoked_seen:
                self.revoked_seen.add(node_id)
                e = adapter.revoked[node_id]
                self.log.warning("node_revoked", peer=node_id, reason=e.reason, signer=e.signer)
                self.audit.append("node_revoked", {"peer": node_id, "reason": e.reason[:120], "signer": e.signer}, now_wall=time.time())
            self.transport.revoke(node_id)
            for conn in [c for c in list(self.conns_out.values()) + list(self.conns_in) if node_id in (c.peer, c.node)]:
                conn.close("revoked")
            if self.core.swim.declare_dead(node_id, now):
                self.counters["driver_revoked_declared_dead"] += 1

    def handshake_refused(self, reason: str, transport: str, addr: str) -> None:
        """A transport refused a handshake from/to ``addr``: audit it (rate-limited, docs/DAEMON.md)."""
        try:
            host, port = parse_hostport(addr, "address")
        except DaemonConfigError:
            host, port = addr, 0
        if self.refusals.refused(reason, transport, host, port, trio.current_time(), time.time()):
            self.log.warning("admission_refused", reason=reason, transport=transport, addr=addr)

    # ------------------------------------------------------------------ run

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> int:
        cfg = self.cfg
        self._open()
        try:
            udp, tcp_listeners, advertise = await self._bind()
            now = trio.current_time()
            self._build_core(advertise, now)
            api_listeners = await trio.open_tcp_listeners(cfg.api[1], host=cfg.api[0])
            api_port = api_listeners[0].socket.getsockname()[1]
            self.api_addr = format_hostport(cfg.api[0], api_port)
            self.advertise = advertise
            self.log.info(
                "node_started", name=cfg.name, addr=advertise, api=self.api_addr, profile=cfg.profile,
                incarnation=self.incarnation, seeds=list(cfg.seeds), mesh_id=self.mesh_id, secret=self.secret_fp,
            )
            if cfg.insecure:
                self.log.warning("insecure_mode", detail="no mesh secret: any process that can reach this port can join")
            self.audit.append("node_started", {"addr": advertise, "incarnation": self.incarnation}, now_wall=time.time())
            from model.manifest import MAX_MODULE_BYTES

            self.workloads = Workloads(self)
            self.bus = EventBus.for_daemon(self)  # events (mesh/events, docs/EVENTS.md)
            self.registry.register(self.bus.metrics)
            api = ApiServer(self.token, self._routes(), self.counters, self.log, body_limits={"/v1/blobs": MAX_MODULE_BYTES})
            http_listeners = await self._open_http()
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                self.udp = udp
                nursery.start_soon(self._udp_loop)
                nursery.start_soon(self._tcp_accept, tcp_listeners)
                nursery.start_soon(self._timer_loop)
                nursery.start_soon(self._persist_loop)
                nursery.start_soon(self._snapshot_loop)
                nursery.start_soon(self._signals)
                nursery.start_soon(api.serve, api_listeners)
                if http_listeners:
                    nursery.start_soon(self.ingress.serve, http_listeners)
                nursery.start_soon(self.placements.loop)
                nursery.start_soon(self.quotas.loop)
                self.invocations.running = True
                await nursery.start(self.workloads.run)
                await nursery.start(self.bus.run)
                if cfg.mqtt is not None:
                    await nursery.start(self._mqtt_bridge)
                if cfg.mdns:
                    nursery.start_soon(self._mdns)
                if self.secrets is not None:
                    nursery.start_soon(self._mesh_secret_loop)
                self.emit(self.core.start(now))
                self.dd.write_api_info(self.api_addr, self.token)
                task_status.started(self)
        finally:
            await self._shutdown()
        if self.fatal:
            self.log.error("node_stopped", reason=self.fatal)
            return 1
        self.log.info("node_stopped", reason="left" if self._leaving else "shutdown")
        return 0

    async def _mqtt_bridge(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The MQTT bridge between ``cfg.mqtt.broker`` and ``self.bus`` (mesh/mqtt, docs/EVENTS.md)."""
        from mesh.mqtt import MqttBridge

        assert self.cfg.mqtt is not None
        bridge = MqttBridge(self.cfg.mqtt, self.bus, self.cfg.mqtt.client_id or f"wasmatrix-{self.node_id[:16]}",
                            log=self.log)
        self.mqtt = bridge
        self.registry.register(bridge.metrics)
        await bridge.run(task_status=task_status)

    async def _bind(self) -> tuple[trio.socket.SocketType, list[trio.SocketListener], str]:
        cfg = self.cfg
        host, port = cfg.bind
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # UDP and TCP share one port number: bind UDP first (port 0 picks one), then TCP on it.
        for attempt in range(20):
            raw = socket.socket(family, socket.SOCK_DGRAM)
            try:
                raw.bind((host, port))
            except OSError as exc:
                raw.close()
                raise DaemonConfigError(f"--bind {format_hostport(host, port)}: {exc.strerror}") from None
            bound = raw.getsockname()[1]
            try:
                listeners = await trio.open_tcp_listeners(bound, host=host)
            except OSError as exc:
                raw.close()
                if port == 0 and exc.errno == errno.EADDRINUSE:
                    continue  # that UDP port's TCP twin is taken: draw another
                raise DaemonConfigError(f"--bind {format_hostport(host, bound)} (tcp): {exc.strerror}") from None
            break
        else:
            raise DaemonConfigError(f"--bind {format_hostport(host, port)}: no port free for both UDP and TCP")
        raw.setblocking(False)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._udp_raw = raw
        udp = trio.socket.from_stdlib_socket(raw)
        adv = cfg.advertise or (host, bound)
        return udp, listeners, format_hostport(*adv)

    async def _shutdown(self) -> None:
        with trio.CancelScope(shield=True):
            try:
                if hasattr(self, "core") and not self.fatal:
                    await self._flush_persist()
                    self._write_snapshot_sync()
            except Exception as exc:  # shutdown must finish
                self.log.error("shutdown_flush_failed", error=str(exc))
            if hasattr(self, "dd"):
                self.dd.clear_api_info()
            if hasattr(self, "audit"):
                try:
                    self.audit.append("node_stopped", {"reason": self.fatal or ("left" if self._leaving else "shutdown")}, now_wall=time.time())
                    self.audit.close()
                except Exception:
                    pass
            if hasattr(self, "store"):
                self.store.close()
            if hasattr(self, "bus"):
                self.bus.close()
            if hasattr(self, "_udp_raw"):
                self._udp_raw.close()
            if hasattr(self, "dd"):
                self.dd.close()

    def stop(self, reason: str | None = None) -> None:
        """End the node (fatal ``reason`` → exit 1)."""
        if reason:
            self.fatal = reason
        self._stopping = True
        self.nursery.cancel_scope.cancel()

    # ------------------------------------------------------------------ sending

    def emit(self, outs: list[Outgoing]) -> None:
        """Send what a core call returned, then do the after-call duties."""
        now = trio.current_time()
        sent = 0
        for o in outs:
            try:
                if o.stream is not None:
                    conn: Conn = o.stream
                    conn.send_frame(o.data)
                elif o.reliable:
                    self._stream_to(o).send_frame(o.data)
                else:
                    if o.node is None:
                        self.counters["driver_datagram_no_peer"] += 1
                        continue
                    addr = self._resolve(o.dst)
                    if addr is None:
                        continue
                    if DEBUG_PACKETS:
                        self.log.debug("dgram_out", dst=o.dst, node=o.node, n=len(o.data), t=o.data[:40].hex())
                    for dg in self.transport.seal_datagram(o.node, o.data, now, addr=addr):
                        self._send_datagram(dg.addr, dg.data)
                sent += 1
            except Exception as exc:  # one bad message never stops the others
                self.counters["driver_send_errors"] += 1
                self.log.warning("send_failed", dst=o.dst, error=f"{type(exc).__name__}: {exc}")
        if sent:
            self.metrics.record_sent(outs)
        self._after_call()

    def _after_call(self) -> None:
        core = self.core
        intent = core.intent
        if (intent is not None and intent.store.has_effects()) or (core.blobs is not None and core.blobs.has_puts()):  # type: ignore[attr-defined]
            self._persist_kick.set()
        if intent is not None and intent.doc.adapter.generation != self.trust_gen:
            self._trust_changed()
        events = core.drain_events()
        if events:
            self.metrics.observe_events(events)
            self._snapshot_dirty = True
            for ev in events:
                self._on_member_event(ev)
            if hasattr(self, "workloads"):
                self.workloads.member_events(events)
        self._wake.set()

    def _on_member_event(self, ev: Any) -> None:
        if ev.node == self.node_id:
            if ev.kind in ("refute", "update"):
                self.log.info("member_" + ev.kind, member=ev.node, incarnation=ev.incarnation)
            return
        m = self.core.swim.members.peek(ev.node)
        name = m.meta.name if m is not None else ""
        if ev.kind in ("join", "alive") and self._revoked_node(ev.node):
            self.core.swim.declare_dead(ev.node, trio.current_time())  # gossip cannot bring a revoked node back
            self.counters["driver_revoked_declared_dead"] += 1
        elif ev.kind in ("join", "alive") and m is not None and m.key:
            if node_id_of(m.key) == ev.node:
                self.trust.admit_node(ev.node, m.key)
            else:
                self.counters["driver_member_key_mismatch"] += 1
        fields: dict[str, Any] = {"member": ev.node, "member_name": name, "incarnation": ev.incarnation}
        if ev.source:
            fields["source"] = ev.source
        self.log.info("member_" + ev.kind, **fields)

    def _resolve(self, dst: str) -> tuple[str, int] | None:
        try:
            host, port = parse_hostport(dst, "address")
        except DaemonConfigError:
            self.counters["driver_bad_address"] += 1
            return None
        return host, port

    def _send_datagram(self, addr: Any, data: bytes) -> None:
        try:
            self._udp_raw.sendto(data, addr)
            self.counters["driver_datagrams_out"] += 1
        except BlockingIOError:
            self.counters["driver_datagram_send_blocked"] += 1
        except OSError as exc:
            self.counters["driver_datagram_send_errors"] += 1
            self.log.debug("datagram_send_failed", addr=str(addr), error=exc.strerror)

    def _stream_to(self, o: Outgoing) -> Conn:
        key = o.node or o.dst
        conn = self.conns_out.get(key)
        if conn is not None and not conn.closed:
            return conn
        if len(self.conns_out) >= MAX_OUTBOUND:
            idle = min(self.conns_out.values(), key=lambda c: c.last_active)
            idle.close("pool_full")
            self.conns_out.pop(next(k for k, c in self.conns_out.items() if c is idle), None)
        session = StreamSession(
            self.identity, self.psk, self._admit, initiator=True, expected_node_id=o.node,
            expected_ed25519=o.key, counters=self.stream_counters,
        )
        conn = Conn(self, session, o.dst, True, o.node)
        self.conns_out[key] = conn
        self.nursery.start_soon(self._dial, conn)
        return conn

    async def _dial(self, conn: Conn) -> None:
        addr = self._resolve(conn.addr)
        if addr is None:
            conn.close("bad_address")
            self.conn_gone(conn)
            return
        try:
            with trio.fail_after(self.stream_timeout):
                stream = await trio.open_tcp_stream(addr[0], addr[1])
        except (OSError, trio.TooSlowError) as exc:
            self.counters["driver_connect_failed"] += 1
            self.log.debug("connect_failed", addr=conn.addr, node=conn.node, error=str(exc))
            conn.closed = True
            self.conn_gone(conn)
            if conn.node:
                self.stream_event(conn.node, "connect_failed")
            return
        await conn.run(stream)

    def adopt(self, conn: Conn) -> None:
        """A stream dialled by address (a seed) turned out to be ``conn.peer``: pool it under the node id."""
        assert conn.peer is not None
        if self.conns_out.get(conn.addr) is conn:
            del self.conns_out[conn.addr]
        self.conns_out.setdefault(conn.peer, conn)

    def conn_gone(self, conn: Conn) -> None:
        for k in [k for k, c in self.conns_out.items() if c is conn]:
            del self.conns_out[k]
        self.conns_in.discard(conn)
        if hasattr(self, "invocations"):
            self.invocations.conn_gone(conn)
        if conn.peer and not self._stopping:
            self.stream_event(conn.peer, "closed")

    def stream_event(self, peer: str, kind: str) -> None:
        if self._stopping:
            return
        self.emit(self.core.stream_event(peer, kind, trio.current_time()))

    # ------------------------------------------------------------------ receiving

    async def _udp_loop(self) -> None:
        udp = self.udp
        while True:
            try:
                data, addr = await udp.recvfrom(65536)
            except OSError as exc:  # e.g. ICMP port unreachable surfacing as ECONNREFUSED
                self.counters["driver_udp_errors"] += 1
                self.log.debug("udp_error", error=exc.strerror)
                continue
            self.counters["driver_datagrams_in"] += 1
            now = trio.current_time()
            addr = (addr[0], addr[1])
            try:
                delivered, replies = self.transport.receive_datagram(addr, data, now)
            except Exception as exc:  # the transport never raises on bytes; if it does, it is a bug: count it
                self.counters["driver_transport_errors"] += 1
                self.log.error("transport_error", error=f"{type(exc).__name__}: {exc}")
                continue
            for dg in replies:
                self._send_datagram(dg.addr, dg.data)
            src = _addr_key(addr)
            outs: list[Outgoing] = []
            for dv in delivered:
                if DEBUG_PACKETS:
                    self.log.debug("dgram_in", src=src, peer=dv.peer, n=len(dv.plaintext), t=dv.plaintext[:40].hex())
                if dv.plaintext:
                    outs += self.core.receive(src, dv.plaintext, now, False, peer=dv.peer)
            self.emit(outs)

    async def _tcp_accept(self, listeners: list[trio.SocketListener]) -> None:
        async def handle(stream: trio.SocketStream) -> None:
            if len(self.conns_in) >= MAX_OUTBOUND * 2:
                self.counters["driver_inbound_refused"] += 1
                await stream.aclose()
                return
            try:
                peer = stream.socket.getpeername()
                addr = _addr_key(peer)
            except OSError:
                await stream.aclose()
                return
            session = StreamSession(self.identity, self.psk, self._admit, initiator=False, counters=self.stream_counters,
                                    accepted_psks=self.accepted_psks)
            conn = Conn(self, session, addr, False, None)
            self.conns_in.add(conn)
            await conn.run(stream)

        await trio.serve_listeners(handle, listeners)

    def deliver_frame(self, conn: Conn, plaintext: bytes) -> None:
        self.emit(self.core.receive(conn.addr, plaintext, trio.current_time(), True, peer=conn.peer, stream=conn))
        for sender, msg, stream in self.core.take_invocations():
            self.invocations.receive(sender, msg, stream)

    def set_placement_digest(self, view_digest: str, placement_digest: str, spec_digest: str = "") -> None:
        """Gossip the digests of the view and placement this node computed (``placements --check``).

        The workload lifecycle calls it after every evaluation with the inputs it placed over;
        rate-limited to one metadata update per second (a newer value waits, the last one wins).
        """
        self.placements.set_digest(view_digest, placement_digest, spec_digest)

    # ------------------------------------------------------------------ timers and disk

    async def _timer_loop(self) -> None:
        while True:
            now = trio.current_time()
            d1 = self.core.next_deadline()
            d2 = self.transport.next_deadline()
            d = min(x for x in (d1, d2, now + 1.0) if x is not None)
            if d <= now:
                outs = self.core.tick(now, time.time()) if d1 is not None and d1 <= now else []
                if d2 is not None and d2 <= now:
                    for dg in self.transport.tick(now):
                        self._send_datagram(dg.addr, dg.data)
                self.emit(outs)
                await trio.sleep(0)
                continue
            self._wake = trio.Event()
            with trio.move_on_at(d):
                await self._wake.wait()
            self._housekeeping(trio.current_time())

    def _housekeeping(self, now: float) -> None:
        for conn in list(self.conns_out.values()):
            if not conn.out and now - conn.last_active > STREAM_IDLE:
                conn.close("idle")

    async def _persist_loop(self) -> None:
        while True:
            await self._persist_kick.wait()
            self._persist_kick = trio.Event()
            await self._flush_persist()

    async def _flush_persist(self) -> None:
        core = self.core
        effects = core.take_effects()
        if effects:
            t0 = time.perf_counter()
            try:
                await trio.to_thread.run_sync(self.store.run, effects)
            except StoreError as exc:
                self.log.error("store_failed", error=str(exc))
                self.stop(f"store failed: {exc}")
                return
            self.metrics.observe_fsync(time.perf_counter() - t0)
            self.emit(core.persisted(effects[-1].token, trio.current_time()))
            core.take_acks()
            self._durable.set()
            self._durable = trio.Event()
        for put in core.take_blob_puts():
            err = None
            try:
                await trio.to_thread.run_sync(self.blob_store.put, put.sha256, put.data)
            except OSError as exc:
                err = exc.strerror or str(exc)
            self.emit(core.blob_stored(put.sha256, trio.current_time(), err))

    async def wait_durable(self, token: int, timeout: float) -> None:
        """Wait until the persist effect ``token`` is durable (then the write is acknowledged)."""
        with trio.fail_after(timeout):
            while not self.core.intent.durable(token):  # type: ignore[union-attr]
                await self._durable.wait()

    async def _snapshot_loop(self) -> None:
        while True:
            await trio.sleep(SNAPSHOT_INTERVAL if not self._snapshot_dirty else 1.0)
            if self.audit.counters.entries_total != self._audit_synced:
                self._audit_synced = self.audit.counters.entries_total
                await trio.to_thread.run_sync(self.audit.sync)  # batched durability (mesh/audit.py)
            if self._snapshot_dirty:
                self._snapshot_dirty = False
                data = self._snapshot_bytes()
                await trio.to_thread.run_sync(atomic_write, self.dd.members_path, data)

    def _snapshot_bytes(self) -> bytes:
        swim = self.core.swim
        addrs = sorted(
            m.addr for n, m in swim.members.items()
            if n != self.node_id and m.state in (MemberState.ALIVE, MemberState.SUSPECT)
        )
        doc = {"node_id": self.node_id, "incarnation": swim.incarnation, "members": addrs, "written_at": time.time()}
        return (json.dumps(doc, sort_keys=True) + "\n").encode()

    def _write_snapshot_sync(self) -> None:
        atomic_write(self.dd.members_path, self._snapshot_bytes())

    # ------------------------------------------------------------------ signals, leave

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for sig in signals:
                self.log.info("signal", signal=signal.Signals(sig).name)
                await self.leave()
                return

    async def leave(self) -> None:
        """Graceful leave: announce it, keep gossiping it for a moment, flush, stop."""
        if self._leaving:
            return
        self._leaving = True
        now = trio.current_time()
        self.emit(self.core.leave(now))
        self.audit.append("node_left", {"incarnation": self.core.swim.incarnation}, now_wall=time.time())
        # Like Serf: gossip the leave until its broadcasts are out (bounded), then a short
        # propagation delay so a peer still mid-handshake with us gets it too.
        with trio.move_on_after(LEAVE_GRACE):
            while len(self.core.swim.broadcasts) or self.transport.pending_handshakes:
                await trio.sleep(0.05)
        await trio.sleep(LEAVE_PROPAGATE)
        self.stop()

    async def _mesh_secret_loop(self) -> None:
        """Reload the mesh file on SIGHUP and when it changes on disk; switch secrets at accept_until."""
        assert self.secrets is not None
        with trio.open_signal_receiver(signal.SIGHUP) as hups:
            hup = hups.__aiter__()
            while True:
                forced = False
                with trio.move_on_after(RELOAD_CHECK_SECONDS):
                    await hup.__anext__()
                    forced = True
                change = self.secrets.poll(time.time(), force=forced)
                if change is None:
                    continue
                if change.error:
                    self.counters["driver_mesh_secret_reload_failures"] += 1
                    self.log.error("mesh_secret_reload_failed", error=change.error, sighup=forced)
                    continue
                self.psk, self.accepted_psks = change.dial, change.accepted
                self.transport.set_psks(change.dial, change.accepted)
                self.secret_fp = secret_fingerprint(self.secrets.mesh.secret)
                # Streams keyed with a secret no longer accepted end now; datagram sessions at
                # their next rekey (docs/OPERATIONS.md, rotating the mesh secret).
                for conn in list(self.conns_out.values()) + list(self.conns_in):
                    if conn.session.psk not in change.accepted:
                        conn.close("secret_retired")
                self.counters["driver_mesh_secret_reloads" if change.reloaded else "driver_mesh_secret_switches"] += 1
                self.log.info("mesh_secret_reloaded" if change.reloaded else "mesh_secret_switched", sighup=forced,
                              **change.log_fields(self.secrets.mesh, time.time()))

    async def _mdns(self) -> None:
        from mesh.discovery import MdnsDiscovery, MdnsError, interface_ipv4

        send, recv = trio.open_memory_channel[tuple[str, str]](64)
        token = trio.lowlevel.current_trio_token()

        def found(node_id: str, addr: str) -> None:  # on zeroconf's thread
            try:
                trio.from_thread.run_sync(send.send_nowait, (node_id, addr), trio_token=token)
            except (trio.WouldBlock, trio.RunFinishedError, trio.Cancelled):
                self.counters["driver_mdns_dropped"] += 1

        iface = self.cfg.mdns
        adv_host, port = parse_hostport(self.advertise, "advertise")
        try:
            ip = interface_ipv4(iface)  # type: ignore[arg-type]
            if adv_host != ip:
                # mDNS announces the interface's address: peers must reach us there.
                raise MdnsError(f"the node is reached at {self.advertise} but {iface} has {ip}; "
                                f"bind (or --advertise) {ip}:{port}, or 0.0.0.0 with --advertise {ip}:{port}")
            disc = MdnsDiscovery(iface, self.node_id, port, on_found=found)  # type: ignore[arg-type]
            await trio.to_thread.run_sync(disc.start)
        except (MdnsError, OSError) as exc:
            self.log.error("mdns_failed", iface=iface, error=str(exc))
            self.stop(f"--mdns {iface}: {exc}")
            return
        self.mdns = disc
        self.log.info("mdns_started", iface=iface, addr=f"{ip}:{port}")

        async def refresh_while_alone() -> None:
            # zeroconf stops querying after its start-up burst; a node alone (a healed link, a
            # late neighbour) asks again, with backoff and jitter.
            delay = 1.0
            while True:
                await trio.sleep(delay * (0.75 + 0.5 * self.rng.random()))
                if self.core.swim.num_members() <= 1:
                    await trio.to_thread.run_sync(disc.refresh)
                    delay = min(delay * 2, 30.0)
                else:
                    delay = 1.0

        try:
            async with trio.open_nursery() as n:
                n.start_soon(refresh_while_alone)
                async for node_id, addr in recv:
                    if node_id == self.node_id:
                        continue
                    m = self.core.swim.members.peek(node_id)
                    if m is None or m.state in (MemberState.DEAD, MemberState.LEFT):
                        self.log.info("mdns_found", peer=node_id, addr=addr)
                        self.emit(self.core.swim.join([addr], trio.current_time()))
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(disc.close)

    async def _open_http(self) -> list[trio.SocketListener]:
        """The HTTP ingress's listeners when ``--http`` is given (mesh/ingress/server.py)."""
        if self.cfg.http is None:
            return []
        from mesh.ingress.server import Ingress

        host, port = self.cfg.http
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.http_addr = format_hostport(host, listeners[0].socket.getsockname()[1])
        self.ingress = Ingress(self, self.cfg.http_bounds)
        self.registry.register(self.ingress.metrics)
        self.log.info("http_ingress_listening", http=self.http_addr)
        return listeners

    # ------------------------------------------------------------------ control API

    def _routes(self) -> dict[tuple[str, str], Any]:
        return IntentApi(self).routes() | {
            ("GET", "/v1/status"): self._api_status,
            ("GET", "/v1/members"): self._api_members,
            ("POST", "/v1/join"): self._api_join,
            ("POST", "/v1/leave"): self._api_leave,
            ("POST", "/v1/meta"): self._api_meta,
            ("GET", "/v1/sessions"): self._api_sessions,
            ("GET", "/metrics"): self._api_metrics,
            **IntentApi(self).routes(),
            **self.invocations.routes(),
            **self.quotas.routes(),
            **self.placements.routes(),
            **WorkloadsApi(self).routes(),
            **EventsApi(self).routes(),
        }

    def member_rows(self) -> list[dict[str, Any]]:
        swim = self.core.swim
        rows = []
        for name, m in sorted(swim.members.items()):
            rtt = swim.estimate_rtt(self.node_id, name) if name != self.node_id else 0.0
            rows.append({
                "name": m.meta.name,
                "id": name,
                "addr": m.addr,
                "status": m.state.name.lower(),
                "incarnation": m.incarnation,
                "zone": m.meta.fault_domain,
                "labels": dict(m.meta.labels),
                "rtt_ms": None if rtt is None or not math.isfinite(rtt) else round(rtt * 1000, 3),
            })
        return rows

    def status(self) -> dict[str, Any]:
        swim = self.core.swim
        counts = Counter(m.state.name.lower() for m in swim.members.values())
        return {
            "id": self.node_id,
            "name": self.cfg.name,
            "addr": self.advertise,
            "api": self.api_addr,
            "http": self.http_addr or None,
            "incarnation": swim.incarnation,
            "profile": self.cfg.profile,
            "zone": self.cfg.zone,
            "members": {k: counts.get(k, 0) for k in ("alive", "suspect", "dead", "left")},
            "health": swim.awareness.score if hasattr(swim, "awareness") else None,
            "mesh_id": self.mesh_id,
            "insecure": self.cfg.insecure,
            "sessions": self.transport.session_count(),
            "streams": {"outbound": len(self.conns_out), "inbound": len(self.conns_in)},
            "uptime_s": round(time.time() - self.started_wall, 3),
            "version": VERSION,
            "pid": os.getpid(),
            "data_dir": str(self.dd.path),
            # Set while a damaged or lost intent store catches up with peers (intent writes get 503).
            "store_recovering": self.core.intent.recovering if self.core.intent is not None else None,
        }

    async def _api_status(self, req: Request) -> tuple[int, str, bytes]:
        return json_answer(self.status())

    async def _api_members(self, req: Request) -> tuple[int, str, bytes]:
        return json_answer(self.member_rows())

    async def _api_join(self, req: Request) -> tuple[int, str, bytes]:
        body = req.json()
        addrs = body.get("addrs") or ([body["addr"]] if "addr" in body else [])
        if not isinstance(addrs, list) or not addrs or len(addrs) > 64:
            raise ApiError(400, "give addr: HOST:PORT (or addrs: a list of up to 64)")
        try:
            norm = [format_hostport(*parse_hostport(a, "addr")) for a in addrs]
        except DaemonConfigError as exc:
            raise ApiError(400, str(exc)) from None
        before = self.core.swim.num_members()
        self.emit(self.core.swim.join(norm, trio.current_time()))
        with trio.move_on_after(min(5.0, 2 * self.stream_timeout)):
            while self.core.swim.num_members() <= before:
                await trio.sleep(0.05)
        joined = self.core.swim.num_members() > before
        self.log.info("join_requested", addrs=norm, joined=joined)
        return json_answer({"joined": joined, "members": self.core.swim.num_members()}, 200 if joined else 504)

    async def _api_leave(self, req: Request) -> tuple[int, str, bytes]:
        self.nursery.start_soon(self.leave)
        return json_answer({"leaving": True})

    async def _api_meta(self, req: Request) -> tuple[int, str, bytes]:
        body = req.json()
        set_ = body.get("set") or {}
        unset = body.get("unset") or []
        if not isinstance(set_, dict) or not isinstance(unset, list):
            raise ApiError(400, "set must be an object and unset a list")
        labels = dict(self.core.meta.labels)
        for k in unset:
            labels.pop(str(k), None)
        for k, v in set_.items():
            if not isinstance(v, str):
                raise ApiError(400, f"label {k!r:.40}: value must be a string")
            labels[str(k)] = v
        try:
            meta = NodeMeta(**{**_meta_fields(self.core.meta), "labels": tuple(sorted(labels.items()))})
        except ConfigError as exc:
            raise ApiError(400, str(exc)) from None
        self.core.update_meta(meta, trio.current_time())
        self.emit([])
        self.workloads.changed()
        self.audit.append("meta_changed", {"labels": dict(meta.labels)}, now_wall=time.time())
        return json_answer({"labels": dict(meta.labels), "incarnation": self.core.swim.incarnation})

    async def _api_sessions(self, req: Request) -> tuple[int, str, bytes]:
        t = self.transport
        rows = []
        for peer in t.peers():
            addr = t.peer_addr(peer)
            m = self.core.swim.members.peek(peer)
            rows.append({"peer": peer, "name": m.meta.name if m else "", "addr": _addr_key(addr) if addr else None})
        streams = [{"peer": c.peer or c.node, "addr": c.addr, "outbound": c.outbound, "established": c.session.established}
                   for c in list(self.conns_out.values()) + sorted(self.conns_in, key=lambda c: c.addr)]
        return json_answer({"datagram_sessions": rows, "streams": streams, "counters": dict(sorted(t.counters.items()))})

    async def _api_metrics(self, req: Request) -> tuple[int, str, bytes]:
        return 200, "text/plain; version=0.0.4; charset=utf-8", render(self.registry)


def _meta_fields(meta: NodeMeta) -> dict[str, Any]:
    return {f: getattr(meta, f) for f in NodeMeta.__dataclass_fields__}


def configure_logging(level: str, stream: Any = None) -> None:
    """structlog JSON lines: one event name per line, ISO timestamps, context bound by the daemon."""
    import logging
    import sys

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
