"""Prometheus exposition of one node: a custom collector that reads the cores' counters at scrape time.

The cores keep plain ints (``NodeCore.counters``, ``SwimCore.counters``, crdt ``Counters``,
``SecureTransport.counters``) because simulations build thousands of them; this module turns
those into ``wasmatrix_*`` families only when something scrapes. One :class:`NodeCollector`
per node, registered on that node's own ``CollectorRegistry`` (never the global default), and
:func:`render` produces the text body for the ``/metrics`` endpoint.

Consistency rule: a family is emitted iff its source component is attached (the intent core,
the secure transport, a runtime); within an attached component a counter the core does not
keep reads 0, so the set of series only changes when a component is attached or a new reason
appears. Counters no table below knows are still exported, as
``wasmatrix_unmapped_counter_total{layer,counter}``, so nothing is silently lost (the test
suite asserts that series is absent, so a new counter fails it until it is mapped).
Every name is listed in docs/METRICS.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import fields, is_dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from mesh.membership.state import MemberEvent, MemberState
from mesh.wire import Outgoing

if TYPE_CHECKING:
    from mesh.node import NodeCore
    from mesh.transport import SecureTransport

PREFIX = "wasmatrix_"

# -- node (NodeCore.counters) -------------------------------------------------------------------
# counter key -> (metric name without prefix/_total, help); each its own counter family.
_NODE_COUNTERS: dict[str, tuple[str, str]] = {
    "bytes_received": ("received_bytes", "Bytes of membership, sync and blob messages received (plaintext)"),
    "stream_events": ("stream_events", "Stream transport events handed to the node core by its driver"),
    "first_contacts": ("first_contacts", "Trial windows opened to members at addresses no authenticated session vouched for yet"),
}
# Received messages, one family labelled by the transport they came on.
_NODE_RECEIVED = {"datagrams_received": "datagram", "frames_received": "stream"}
# counter key -> drop reason (layer="node").
_NODE_DROPS = {
    "wire_errors": "wire_error",
    "unknown_type": "unknown_type",
    "sender_mismatch": "sender_mismatch",
    "stream_events_unknown": "unknown_stream_event",
    "membership_errors": "membership_error",
    "invoke_datagrams_refused": "invoke_datagram",
    "contacts_refused": "unvouched_address",
    "indirect_pings_refused": "indirect_ping_target",
}
# NodeCore keeps these only when an intent or blob core is attached.
_NODE_INTENT_COUNTERS: dict[str, tuple[str, str]] = {
    "intent_messages_sent": ("intent_sent_messages", "Sync and blob messages the node core encoded for sending"),
    "intent_bytes_sent": ("intent_sent_bytes", "Bytes of sync and blob messages the node core encoded for sending"),
}
_NODE_INTENT_DROPS = {"intent_no_route": "intent_no_route", "intent_errors": "intent_error", "intent_datagrams_refused": "intent_datagram"}

# -- membership (SwimCore.counters) -------------------------------------------------------------
_SWIM_COUNTERS: dict[str, tuple[str, str]] = {
    "probes": ("probes", "Direct probes (pings) started by this node"),
    "indirect_probes": ("indirect_probes", "Indirect probe requests sent to helpers after a missed ack"),
    "refutes": ("refutations", "Times this node refuted a suspicion or death about itself"),
    "push_pulls": ("push_pulls", "Periodic push-pull state exchanges started"),
    "reconnects": ("reconnects", "Push-pull attempts towards dead members (partition healing)"),
    "merge_suspicions": ("merge_suspicions", "Suspicions adopted from a push-pull peer's state"),
    "stale_corrections": ("stale_corrections", "Alive records sent straight back to a member that gossiped a stale suspicion or death"),
}
_SWIM_DROPS = {
    "decode_errors": "decode_error",
    "misdirected_pings": "misdirected_ping",
    "bad_states": "bad_state",
    "bad_names": "bad_name",
    "key_conflicts": "key_conflict",
    "incarnation_jumps": "incarnation_jump",
    "piggyback_bad": "piggyback_bad",
    "piggyback_unknown": "piggyback_unknown",
    "unknown_messages": "unknown_message",
    "relays_dropped": "relay_dropped",
    "piggyback_skipped": "piggyback_skipped",
    "members_refused_full": "member_table_full",
    "members_refused_rate": "member_rate",
}
_STATUSES = (
    ("alive", MemberState.ALIVE),
    ("suspect", MemberState.SUSPECT),
    ("dead", MemberState.DEAD),
    ("left", MemberState.LEFT),
)
_EVENT_KINDS = ("join", "alive", "suspect", "dead", "left", "update", "refute", "reap")

# -- secure transport (SecureTransport.counters, StreamSession.counters) ------------------------
_TRANSPORT_COUNTERS: dict[str, tuple[str, str]] = {
    "handshakes_completed": ("transport_handshakes", "Noise handshakes completed (datagram and stream)"),
    "datagrams_sealed": ("transport_sealed_datagrams", "DATA datagrams encrypted"),
    "datagrams_opened": ("transport_opened_datagrams", "DATA datagrams decrypted and accepted"),
    "stream_frames_opened": ("transport_opened_stream_frames", "Stream frames decrypted and accepted"),
    "rekeys_started": ("transport_rekeys", "Session rekeys started"),
    "handshake_psk_alternate": (
        "transport_alternate_secret_handshakes",
        "Handshakes made with an accepted mesh secret other than the one this node dials with (rotation window)",
    ),
    "sessions_expired": ("transport_expired_sessions", "Sessions dropped at the end of their lifetime"),
    "sessions_revoked": ("transport_revoked_sessions", "Sessions dropped because the peer was revoked"),
}
_TRANSPORT_HS_SENT = {
    "handshake_inits_sent": "xx_init",
    "handshake_ik_inits_sent": "ik_init",
    "handshake_responses_sent": "response",
    "handshake_retransmits": "retransmit",
    "handshake_confirm_resent": "confirm_resent",
}
_TRANSPORT_HS_FAILURES = {
    "handshake_psk_failures": "psk_failure",
    "handshake_replayed": "replayed",
    "handshake_invalid": "invalid",
    "handshake_unexpected": "unexpected",
    "handshake_malformed": "malformed",
    "handshake_bad_static_key": "bad_static_key",
    "handshake_timeouts": "timeout",
    "handshake_responder_timeouts": "responder_timeout",
    "handshake_pending_evicted": "pending_evicted",
}
_REFUSED = "handshake_refused_"
# mesh.transport.handshake.check_peer's reasons; others that appear are added in sorted order.
_REFUSED_REASONS = ("bad_binding", "bad_payload", "not_admitted", "unexpected_peer", "version_mismatch")
_TRANSPORT_DROPS = {
    "datagram_malformed": "malformed",
    "datagram_unknown_session": "unknown_session",
    "datagram_replayed": "replayed",
    "datagram_too_old": "too_old",
    "datagram_decrypt_failures": "decrypt_failure",
    "datagram_no_route": "no_route",
    "datagram_counter_exhausted": "counter_exhausted",
    "queue_dropped": "queue_dropped",
    "stream_oversize_frame": "stream_oversize_frame",
    "stream_undersize_frame": "stream_undersize_frame",
    "stream_decrypt_failures": "stream_decrypt_failure",
}

# -- daemon driver (mesh.daemon: Daemon.counters, keys driver_* and api_*) -------------------------
# The trio driver's own counters: socket I/O it did, input it dropped before any core saw it, and
# the control API. Keys are flat ``driver_<name>`` / ``api_<name>`` ints in one Counter.
_DRIVER_DIRECTIONAL: dict[str, tuple[dict[str, str], str]] = {
    "driver_datagrams": (
        {"driver_datagrams_in": "in", "driver_datagrams_out": "out"},
        "UDP datagrams the driver read from / wrote to its socket (ciphertext, any source)",
    ),
    "driver_stream_bytes": (
        {"driver_stream_bytes_in": "in", "driver_stream_bytes_out": "out"},
        "TCP stream bytes the driver read / wrote (ciphertext)",
    ),
}
_DRIVER_COUNTERS: dict[str, tuple[str, str]] = {
    "driver_stream_handshake_timeouts": (
        "driver_stream_handshake_timeouts", "TCP streams closed because their Noise handshake did not finish in time"
    ),
    "driver_audit_suppressed": (
        "driver_audit_suppressed", "Admission refusals counted but not audited (one per source host and reason per minute)"
    ),
}
_DRIVER_IO_ERRORS = {
    "driver_udp_errors": "udp_receive",
    "driver_stream_io_errors": "stream",
    "driver_connect_failed": "connect",
}
_DRIVER_DROPS = {
    "driver_bad_address": "bad_address",
    "driver_datagram_no_peer": "datagram_no_peer",
    "driver_datagram_send_blocked": "datagram_send_blocked",
    "driver_datagram_send_errors": "datagram_send_error",
    "driver_inbound_refused": "inbound_refused",
    "driver_member_key_mismatch": "member_key_mismatch",
    "driver_send_errors": "send_error",
    "driver_stream_overflow": "stream_overflow",
    "driver_stream_pending_dropped": "stream_pending_full",
    "driver_stream_send_closed": "stream_send_closed",
    "driver_transport_errors": "transport_exception",
}
_DRIVER_CLOSED = "driver_stream_closed_"
# Conn.close reasons in mesh/daemon/node.py; others that appear are added in sorted order.
_DRIVER_CLOSED_REASONS = ("bad_address", "eof", "handshake_timeout", "idle", "overflow", "pool_full", "protocol")
_API_COUNTERS: dict[str, tuple[str, str]] = {
    "api_requests": ("api_requests", "Control API requests read completely (any route, any outcome)"),
    "api_connections_refused": ("api_refused_connections", "Control API connections refused at the connection limit"),
}
_API_OUTCOMES = {
    "api_ok": "ok",
    "api_failed": "failed",
    "api_unauthorized": "unauthorized",
    "api_bad_requests": "bad_request",
    "api_errors": "error",
}
# -- audit log (mesh.audit.AuditCounters) ----------------------------------------------------------
_AUDIT_COUNTERS: dict[str, tuple[str, str]] = {
    "entries_total": ("audit_entries", "Entries appended to the hash-chained audit log"),
    "write_errors_total": ("audit_write_errors", "Audit appends that failed with an I/O error"),
    "invalid_events_total": ("audit_invalid_events", "Audit events with an invalid name (recorded as invalid_event)"),
    "torn_tails_recovered_total": ("audit_torn_tails_recovered", "Torn last lines moved aside when the log was reopened"),
    "dropped_total": ("audit_dropped_events", "Audit events that could not be appended (closed log, I/O error)"),
}

# -- intent (crdt.metrics.Counters) ---------------------------------------------------------------
_CRDT_COUNTERS: dict[str, tuple[str, str]] = {
    "updates_applied": ("crdt_applied_updates", "CRDT updates that changed the local replica"),
    "updates_redundant": ("crdt_redundant_updates", "CRDT updates that were already known"),
    "local_writes": ("crdt_local_writes", "Signed records written by this node"),
    "records_valid": ("crdt_valid_records", "Signed records accepted into the effective view"),
    "bytes_sent": ("sync_sent_bytes", "Sync payload bytes sent (updates, state vectors, digests, chunks)"),
    "bytes_received": ("sync_received_bytes", "Sync payload bytes received"),
    "messages_sent": ("sync_sent_messages", "Sync messages sent"),
    "messages_received": ("sync_received_messages", "Sync messages received"),
    "chunks_sent": ("sync_sent_chunks", "Sync chunks sent for updates larger than one frame"),
    "chunks_received": ("sync_received_chunks", "Sync chunks received"),
    "eager_pushes": ("sync_eager_pushes", "Updates pushed eagerly to peers"),
    "eager_retries": ("sync_eager_retries", "Eager pushes retried"),
    "relays": ("sync_relays", "Updates relayed onward"),
    "anti_entropy_rounds": ("sync_anti_entropy_rounds", "Anti-entropy rounds started"),
    "anti_entropy_in_sync": ("sync_anti_entropy_in_sync", "Anti-entropy rounds that found the peer in sync"),
    "sync_backpressure_events": ("sync_backpressure_events", "Stream backpressure reports that paused eager pushes to a peer"),
    "sync_stream_failures": ("sync_stream_failures", "Sync streams that failed to connect or timed out"),
    "anti_entropy_retries": ("sync_anti_entropy_retries", "Anti-entropy rounds retried with another peer after a stream failure"),
    "sync_answers_held": ("sync_held_answers", "Sync answers held until the newest local write is durable"),
    "writes_acked_after_persist": ("crdt_writes_acked_after_persist", "Local writes acknowledged once persisted"),
    "store_appends": ("store_appends", "Updates appended to the durable store"),
    "store_compactions": ("store_compactions", "Store compactions into one snapshot"),
    "store_corrupt_rows": ("store_corrupt_rows", "Store rows dropped as corrupt or undecodable"),
    "store_damaged": ("store_damaged", "Stores found damaged or lost at open (the node recovers from peers)"),
    "store_rows_salvaged": ("store_salvaged_rows", "Intact rows copied out of a damaged store file"),
    "store_recoveries": ("store_recoveries", "Damaged stores that caught up with peers (local writes allowed again)"),
    "store_writes_refused_recovering": ("store_refused_writes_recovering", "Local writes refused while the store recovers from peers"),
    "blob_bytes_fetched": ("blob_fetched_bytes", "Blob bytes received from peers"),
    "blob_hash_mismatch": ("blob_hash_mismatches", "Fetched blobs whose hash did not match"),
    "blob_fetch_failed": ("blob_fetch_failures", "Blob fetches that failed on every peer"),
    "blob_stream_failovers": ("blob_stream_failovers", "Blob fetches moved to another peer after their stream failed"),
}
_CRDT_DROPS = {
    "updates_malformed": "malformed_update",
    "eager_dropped_backpressure": "backpressure",
    "reassembly_dropped": "reassembly",
    "blob_fetch_refused": "blob_fetch_refused",
    "sync_answers_dropped": "held_answers_full",
    "sync_requests_throttled": "sync_throttled",
}
_CRDT_SPECIAL = frozenset({"records_invalid", "invalid_by_reason"})
_INTENT_KINDS = ("deployments", "kv", "placement", "registry", "routes", "tenant")

# Store fsync latency: sqlite commits on local disks take ~0.1-10 ms, a stalled disk seconds.
FSYNC_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
)


class FsyncHistogram:
    """Cumulative-bucket histogram of store fsync latency in plain floats (no prometheus objects)."""

    __slots__ = ("buckets", "counts", "count", "sum", "invalid")

    def __init__(self, buckets: Iterable[float] = FSYNC_BUCKETS) -> None:
        b = tuple(sorted(float(x) for x in buckets))
        if not b or any(not math.isfinite(x) or x <= 0 for x in b):
            raise ValueError("fsync buckets must be finite and > 0")
        self.buckets = b
        self.counts = [0] * len(b)  # per bucket; made cumulative only at scrape time
        self.count = 0
        self.sum = 0.0
        self.invalid = 0

    def observe(self, seconds: float) -> None:
        """Record one fsync duration; a negative or non-finite value is counted in ``invalid`` and ignored."""
        if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
            self.invalid += 1
            return
        for i, bound in enumerate(self.buckets):
            if seconds <= bound:
                self.counts[i] += 1
                break
        self.count += 1
        self.sum += float(seconds)

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, cumulative count) pairs ending with +Inf, as Prometheus wants them."""
        out: list[tuple[str, int]] = []
        acc = 0
        for bound, n in zip(self.buckets, self.counts):
            acc += n
            out.append((_float_label(bound), acc))
        out.append(("+Inf", self.count))
        return out


def _float_label(x: float) -> str:
    # prometheus_client's own rendering of bucket bounds (repr of the float).
    return repr(float(x))


def _get(counters: Any, key: str) -> float:
    """One counter from a dict, Counter or dataclass; 0 when the core does not keep it."""
    if isinstance(counters, Mapping):
        v = counters.get(key, 0)
    else:
        v = getattr(counters, key, 0)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else 0


def _keys(counters: Any) -> list[str]:
    if isinstance(counters, Mapping):
        return sorted(str(k) for k in counters)
    if is_dataclass(counters):
        return sorted(f.name for f in fields(counters))
    return []


class NodeCollector(Collector):
    """Reads one node's cores at scrape time and yields ``wasmatrix_*`` families in a fixed order."""

    def __init__(
        self,
        node: NodeCore,
        *,
        transport: SecureTransport | None = None,
        stream_counters: Mapping[str, int] | None = None,
        runtime_metrics: Any = None,
        fsync: FsyncHistogram | None = None,
        driver_counters: Mapping[str, int] | None = None,
        audit_counters: Any = None,
    ) -> None:
        self.node = node
        self.transport = transport
        self.stream_counters = stream_counters
        self.driver_counters = driver_counters  # a daemon's own Counter (driver_* and api_* keys)
        self.audit_counters = audit_counters  # mesh.audit.AuditCounters
        self.runtime_metrics = runtime_metrics  # runtime.metrics.RuntimeMetrics (mesh does not import runtime)
        self.fsync = fsync if fsync is not None else FsyncHistogram()
        self.sent_packets = {"datagram": 0, "stream": 0}
        self.sent_bytes = 0
        self.events = {k: 0 for k in _EVENT_KINDS}
        self._registry: CollectorRegistry | None = None

    # -- driver hooks (the cores do not see sends leave, nor fsyncs) ------------------------------

    def observe_fsync(self, seconds: float) -> None:
        """Record how long one store fsync/commit took."""
        self.fsync.observe(seconds)

    def record_sent(self, outgoing: Iterable[Outgoing]) -> None:
        """Count what the driver actually handed to the network."""
        for o in outgoing:
            self.sent_packets["stream" if o.reliable else "datagram"] += 1
            self.sent_bytes += len(o.data)

    def observe_events(self, events: Iterable[MemberEvent]) -> None:
        """Count membership events the driver drained (``NodeCore.drain_events``)."""
        for ev in events:
            kind = ev.kind if ev.kind in self.events else "other"
            self.events[kind] = self.events.get(kind, 0) + 1

    def register(self, registry: CollectorRegistry) -> None:
        """Register on ``registry`` (the node's own); remembered so a runtime sharing it is not exported twice."""
        registry.register(self)
        self._registry = registry

    # -- collection --------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """Yield every family; all reads are of plain attributes, so a scrape never changes a core."""
        node = self.node
        swim = node.swim
        unmapped: list[tuple[str, str, float]] = []
        drops = CounterMetricFamily(
            PREFIX + "dropped", "Messages, updates and datagrams dropped, by layer and reason", labels=["layer", "reason"]
        )

        info = GaugeMetricFamily(PREFIX + "node_info", "Constant 1, labelled with this node's name", labels=["node"])
        info.add_metric([node.name], 1)
        yield info

        # membership state
        members = GaugeMetricFamily(
            PREFIX + "members", "Members in this node's view by status (itself included)", labels=["status"]
        )
        by_state = {s: 0 for _, s in _STATUSES}
        # list(): one C-level copy, so a scrape racing the driving thread never sees the dict resize.
        for m in list(swim.members.values()):
            by_state[m.state] = by_state.get(m.state, 0) + 1
        for label, s in _STATUSES:
            members.add_metric([label], by_state[s])
        yield members
        yield GaugeMetricFamily(PREFIX + "incarnation", "This node's own incarnation number", value=swim.incarnation)
        yield GaugeMetricFamily(
            PREFIX + "awareness_score", "Lifeguard local health score (0 healthy; probe timing scales by score+1)",
            value=swim.awareness.score,
        )
        yield GaugeMetricFamily(
            PREFIX + "broadcast_queue_depth", "Membership updates waiting to be piggybacked", value=len(swim.broadcasts)
        )
        yield from self._counters(swim.counters, _SWIM_COUNTERS)
        suspicions = CounterMetricFamily(
            PREFIX + "suspicions", "Members this node saw become suspect (from drained membership events)"
        )
        suspicions.add_metric([], self.events.get("suspect", 0))
        yield suspicions
        ev = CounterMetricFamily(
            PREFIX + "member_events", "Membership events drained by the driver, by kind", labels=["kind"]
        )
        for kind in sorted(self.events):
            ev.add_metric([kind], self.events[kind])
        yield ev
        self._drops(drops, "membership", swim.counters, _SWIM_DROPS)
        self._unmapped(unmapped, "membership", swim.counters, set(_SWIM_COUNTERS) | set(_SWIM_DROPS))

        # node traffic
        rx = CounterMetricFamily(PREFIX + "received_packets", "Messages received by the node core", labels=["transport"])
        for key, label in sorted(_NODE_RECEIVED.items(), key=lambda kv: kv[1]):
            rx.add_metric([label], _get(node.counters, key))
        yield rx
        tx = CounterMetricFamily(PREFIX + "sent_packets", "Messages the driver sent for this node", labels=["transport"])
        for label in sorted(self.sent_packets):
            tx.add_metric([label], self.sent_packets[label])
        yield tx
        yield from self._counters(node.counters, _NODE_COUNTERS)
        sent_bytes = CounterMetricFamily(PREFIX + "sent_bytes", "Bytes of messages the driver sent for this node")
        sent_bytes.add_metric([], self.sent_bytes)
        yield sent_bytes
        self._drops(drops, "node", node.counters, _NODE_DROPS)
        node_known = set(_NODE_RECEIVED) | set(_NODE_COUNTERS) | set(_NODE_DROPS)
        has_intent = node.intent is not None or node.blobs is not None
        if has_intent:
            yield from self._counters(node.counters, _NODE_INTENT_COUNTERS)
            self._drops(drops, "node", node.counters, _NODE_INTENT_DROPS)
            node_known |= set(_NODE_INTENT_COUNTERS) | set(_NODE_INTENT_DROPS)
        self._unmapped(unmapped, "node", node.counters, node_known)

        # intent core
        if has_intent:
            yield from self._intent(drops, unmapped)

        # secure transport
        if self.transport is not None or self.stream_counters is not None:
            yield from self._transport(drops, unmapped)

        # the daemon's driver and control API
        if self.driver_counters is not None:
            yield from self._driver(drops, unmapped)
        if self.audit_counters is not None:
            yield from self._counters(self.audit_counters, _AUDIT_COUNTERS)
            self._unmapped(unmapped, "audit", self.audit_counters, set(_AUDIT_COUNTERS))

        yield drops

        # store fsync latency
        h = HistogramMetricFamily(PREFIX + "store_fsync_seconds", "Durable store fsync/commit latency")
        h.add_metric([], self.fsync.cumulative(), sum_value=self.fsync.sum)
        yield h
        bad = CounterMetricFamily(
            PREFIX + "store_fsync_invalid_observations", "Fsync durations the driver reported that were negative or not finite"
        )
        bad.add_metric([], self.fsync.invalid)
        yield bad

        if unmapped:
            fam = CounterMetricFamily(
                PREFIX + "unmapped_counter", "A core counter docs/METRICS.md does not map yet", labels=["layer", "counter"]
            )
            for layer, key, v in sorted(unmapped):
                fam.add_metric([layer, key], v)
            yield fam

        # runtime, when it keeps its own registry (when it shares ours, its metrics are already there)
        rm = self.runtime_metrics
        if rm is not None:
            reg = getattr(rm, "registry", None)
            if reg is not None and reg is not self._registry:
                yield from reg.collect()

    def _counters(self, counters: Any, table: Mapping[str, tuple[str, str]]) -> Iterator[Metric]:
        for key, (name, doc) in table.items():
            fam = CounterMetricFamily(PREFIX + name, doc)
            fam.add_metric([], _get(counters, key))
            yield fam

    @staticmethod
    def _drops(drops: CounterMetricFamily, layer: str, counters: Any, table: Mapping[str, str]) -> None:
        for key, reason in sorted(table.items(), key=lambda kv: kv[1]):
            drops.add_metric([layer, reason], _get(counters, key))

    @staticmethod
    def _unmapped(out: list[tuple[str, str, float]], layer: str, counters: Any, known: set[str]) -> None:
        for key in _keys(counters):
            if key not in known:
                out.append((layer, key, _get(counters, key)))

    def _intent(self, drops: CounterMetricFamily, unmapped: list[tuple[str, str, float]]) -> Iterator[Metric]:
        node = self.node
        sub = node.intent if node.intent is not None else node.blobs
        c = getattr(sub, "counters", None)
        if c is None:
            return
        yield from self._counters(c, _CRDT_COUNTERS)
        invalid = CounterMetricFamily(
            PREFIX + "crdt_invalid_records", "Signed records rejected by validation, by reason", labels=["reason"]
        )
        by_reason = getattr(c, "invalid_by_reason", None) or {}
        total = _get(c, "records_invalid")
        named = 0
        for reason in sorted(by_reason):
            n = by_reason[reason]
            named += n
            invalid.add_metric([str(reason)], n)
        # Increments that bypassed Counters.invalid(reason) still show up, under "other".
        invalid.add_metric(["other"], max(0, total - named))
        yield invalid
        self._drops(drops, "sync", c, _CRDT_DROPS)
        self._unmapped(unmapped, "crdt", c, set(_CRDT_COUNTERS) | set(_CRDT_DROPS) | _CRDT_SPECIAL)
        intent = node.intent
        if intent is None:
            return
        doc = getattr(intent, "doc", None)
        if doc is not None:
            # Every signed record held: what a fresh replica would have to download.
            yield GaugeMetricFamily(
                PREFIX + "intent_document_bytes", "Encoded size of every signed intent record this node holds",
                value=doc.encoded_size(),
            )
            recs = GaugeMetricFamily(
                PREFIX + "intent_keys", "Keys with at least one valid record, by document kind", labels=["kind"]
            )
            for kind in _INTENT_KINDS:
                recs.add_metric([kind], len(doc.keys(kind)))
            yield recs
        store = getattr(intent, "store", None)
        if store is not None:
            yield GaugeMetricFamily(PREFIX + "store_rows", "Rows in the durable update log", value=store.row_count())

    def _transport(self, drops: CounterMetricFamily, unmapped: list[tuple[str, str, float]]) -> Iterator[Metric]:
        merged: dict[str, float] = {}
        sources: list[Mapping[str, float]] = []
        if self.transport is not None:
            sources.append(self.transport.counters)
        if self.stream_counters is not None and (self.transport is None or self.stream_counters is not self.transport.counters):
            sources.append(self.stream_counters)
        for src in sources:
            for k in _keys(src):
                merged[k] = merged.get(k, 0) + _get(src, k)
        yield from self._counters(merged, _TRANSPORT_COUNTERS)
        sent = CounterMetricFamily(
            PREFIX + "transport_handshake_messages_sent", "Handshake messages sent, by message", labels=["message"]
        )
        for key, label in sorted(_TRANSPORT_HS_SENT.items(), key=lambda kv: kv[1]):
            sent.add_metric([label], merged.get(key, 0))
        yield sent
        fail = CounterMetricFamily(
            PREFIX + "transport_handshake_failures", "Handshakes that failed or were refused, by reason", labels=["reason"]
        )
        reasons: dict[str, float] = {label: merged.get(key, 0) for key, label in _TRANSPORT_HS_FAILURES.items()}
        refused = set(_REFUSED_REASONS) | {k[len(_REFUSED):] for k in merged if k.startswith(_REFUSED)}
        for r in refused:
            reasons["refused_" + r] = merged.get(_REFUSED + r, 0)
        for label in sorted(reasons):
            fail.add_metric([label], reasons[label])
        yield fail
        self._drops(drops, "transport", merged, _TRANSPORT_DROPS)
        known = set(_TRANSPORT_COUNTERS) | set(_TRANSPORT_HS_SENT) | set(_TRANSPORT_HS_FAILURES) | set(_TRANSPORT_DROPS)
        self._unmapped(unmapped, "transport", {k: v for k, v in merged.items() if not k.startswith(_REFUSED)}, known)
        t = self.transport
        if t is not None:
            yield GaugeMetricFamily(PREFIX + "transport_sessions", "Live Noise sessions", value=t.session_count())
            yield GaugeMetricFamily(
                PREFIX + "transport_pending_handshakes", "Half-open responder handshakes held", value=t.pending_handshakes
            )


    def _driver(self, drops: CounterMetricFamily, unmapped: list[tuple[str, str, float]]) -> Iterator[Metric]:
        # One copy: the API task and the driver tasks share the dict (same thread, but a scrape
        # must not see a key appear between the listing and the reads).
        c = dict(self.driver_counters or {})
        for name, (table, doc) in _DRIVER_DIRECTIONAL.items():
            fam = CounterMetricFamily(PREFIX + name, doc, labels=["direction"])
            for key, label in sorted(table.items(), key=lambda kv: kv[1]):
                fam.add_metric([label], _get(c, key))
            yield fam
        yield from self._counters(c, _DRIVER_COUNTERS)
        io = CounterMetricFamily(
            PREFIX + "driver_io_errors", "Socket errors the driver survived, by kind", labels=["kind"]
        )
        for key, label in sorted(_DRIVER_IO_ERRORS.items(), key=lambda kv: kv[1]):
            io.add_metric([label], _get(c, key))
        yield io
        closed = CounterMetricFamily(
            PREFIX + "driver_streams_closed", "TCP streams the driver closed, by reason", labels=["reason"]
        )
        reasons = set(_DRIVER_CLOSED_REASONS) | {k[len(_DRIVER_CLOSED):] for k in c if k.startswith(_DRIVER_CLOSED)}
        for r in sorted(reasons):
            closed.add_metric([r], _get(c, _DRIVER_CLOSED + r))
        yield closed
        self._drops(drops, "driver", c, _DRIVER_DROPS)
        yield from self._counters(c, _API_COUNTERS)
        out = CounterMetricFamily(
            PREFIX + "api_responses", "Control API answers, by outcome", labels=["outcome"]
        )
        for key, label in sorted(_API_OUTCOMES.items(), key=lambda kv: kv[1]):
            out.add_metric([label], _get(c, key))
        yield out
        known = set(_DRIVER_COUNTERS) | set(_DRIVER_IO_ERRORS) | set(_DRIVER_DROPS) | set(_API_COUNTERS) | set(_API_OUTCOMES)
        for table, _ in _DRIVER_DIRECTIONAL.values():
            known |= set(table)
        rest = {k: v for k, v in c.items() if k not in known and not k.startswith(_DRIVER_CLOSED)}
        self._unmapped(unmapped, "api", {k: v for k, v in rest.items() if k.startswith("api_")}, set())
        self._unmapped(unmapped, "driver", {k: v for k, v in rest.items() if not k.startswith("api_")}, set())


def node_registry(node: NodeCore, **kwargs: Any) -> tuple[CollectorRegistry, NodeCollector]:
    """A fresh per-node registry with one :class:`NodeCollector` registered on it."""
    registry = CollectorRegistry(auto_describe=False)
    collector = NodeCollector(node, **kwargs)
    collector.register(registry)
    return registry, collector


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition (version 0.0.4) of ``registry``, for ``/metrics``."""
    return generate_latest(registry)


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

__all__ = ["CONTENT_TYPE", "FSYNC_BUCKETS", "FsyncHistogram", "NodeCollector", "node_registry", "render"]
