"""Prometheus exposition (mesh.metrics) over real cores driven through real protocol exchanges."""

from __future__ import annotations

from tests.harness.promtool import promtool_check

import os
import random
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from mesh.membership import MemberState, NodeMeta, profile
from mesh.membership.messages import Ping
from mesh.metrics import FSYNC_BUCKETS, FsyncHistogram, NodeCollector, node_registry, render
from mesh.node import NodeCore
from mesh.protocol import SYNC_TYPES
from mesh.wire import MAX_FRAME, Outgoing, decode

sys.path.insert(0, str(Path(__file__).parent / "crdt"))
from crdt_helpers import PUBLISHER, key, manifest, trust_for  # noqa: E402
from transport_helpers import OTHER_PSK, transport  # noqa: E402

LAN = profile("lan")
Drop = Callable[[str, Outgoing], bool]


def _no_drop(src: str, o: Outgoing) -> bool:
    return False


class Cluster:
    """Instant delivery between NodeCores; every send and receive goes through the node's collector."""

    def __init__(self, nodes: dict[str, NodeCore]) -> None:
        self.nodes = nodes
        self.metrics: dict[str, tuple[CollectorRegistry, NodeCollector]] = {n: node_registry(c) for n, c in nodes.items()}
        self.now = 0.0
        # What the test itself delivered to each node: the expected received counts.
        self.rx_datagrams = {n: 0 for n in nodes}
        self.rx_frames = {n: 0 for n in nodes}
        self.rx_bytes = {n: 0 for n in nodes}
        self.tx: dict[str, list[Outgoing]] = {n: [] for n in nodes}
        self.drop: Drop = _no_drop

    def send(self, src: str, outs: list[Outgoing]) -> None:
        queue = [(src, o) for o in outs]
        while queue:
            s, o = queue.pop(0)
            self.tx[s].append(o)
            self.metrics[s][1].record_sent([o])
            if o.dst not in self.nodes or self.drop(s, o):
                continue
            if o.reliable:
                self.rx_frames[o.dst] += 1
            else:
                self.rx_datagrams[o.dst] += 1
            self.rx_bytes[o.dst] += len(o.data)
            replies = self.nodes[o.dst].receive(s, o.data, self.now, o.reliable)
            queue.extend((o.dst, r) for r in replies)

    def start(self) -> None:
        for n, c in sorted(self.nodes.items()):
            self.send(n, c.start(self.now))

    def step(self) -> None:
        """Advance to the earliest deadline and run every timer due then."""
        t = min(d for d in (c.next_deadline() for c in self.nodes.values()) if d is not None)
        self.now = max(self.now, t)
        for n, c in sorted(self.nodes.items()):
            d = c.next_deadline()
            if d is not None and d <= self.now:
                self.send(n, c.tick(self.now))
        for n, c in self.nodes.items():
            self.metrics[n][1].observe_events(c.drain_events())

    def run_until(self, cond: Callable[[], bool], limit: float = 60.0) -> None:
        while not cond():
            assert self.now < limit, "condition not reached"
            self.step()

    def scrape(self, name: str) -> dict[str, tuple[str, dict[tuple[tuple[str, str], ...], float]]]:
        """Render and parse one node's exposition: family -> (type, {sorted labels: value})."""
        return parse(render(self.metrics[name][0]))


def parse(text: bytes) -> dict[str, tuple[str, dict[tuple[tuple[str, str], ...], float]]]:
    out: dict[str, tuple[str, dict[tuple[tuple[str, str], ...], float]]] = {}
    for fam in text_string_to_metric_families(text.decode()):
        samples = {}
        for s in fam.samples:
            labels = tuple(sorted(s.labels.items()))
            samples[(("__name__", s.name),) + labels] = s.value
        out[fam.name] = (fam.type, samples)
    return out


def value(scrape: dict, name: str, **labels: str) -> float:
    """One sample by its full sample name (with suffix) and labels."""
    want = (("__name__", name),) + tuple(sorted(labels.items()))
    found = [samples[want] for _, samples in scrape.values() if want in samples]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return found[0]


def mknode(name: str, seeds: tuple[str, ...] = (), **kw: object) -> NodeCore:
    return NodeCore(name, name, NodeMeta(), LAN, random.Random(f"metrics:{name}"), now=0.0, seeds=seeds, **kw)  # type: ignore[arg-type]


# -- membership ----------------------------------------------------------------------------------


def test_one_probe_round_with_ack_is_exported_exactly() -> None:
    cl = Cluster({"a": mknode("a"), "b": mknode("b", seeds=("a",))})
    cl.start()
    pings_from_a: list[Outgoing] = []

    def a_pinged() -> bool:
        pings_from_a[:] = [o for o in cl.tx["a"] if isinstance(decode(o.data).msg, Ping)]
        return len(pings_from_a) == 1

    cl.run_until(a_pinged)
    s = cl.scrape("a")
    # One ping sent, delivered and acked: one probe, no indirect probe, nobody suspected.
    assert value(s, "wasmatrix_probes_total") == 1 == cl.nodes["a"].swim.counters["probes"]
    assert value(s, "wasmatrix_indirect_probes_total") == 0
    assert value(s, "wasmatrix_suspicions_total") == 0
    assert s["wasmatrix_probes"][0] == "counter" and s["wasmatrix_members"][0] == "gauge"
    # Both nodes alive in a's view (itself included), nothing else.
    for status, n in {"alive": 2, "suspect": 0, "dead": 0, "left": 0}.items():
        assert value(s, "wasmatrix_members", status=status) == n
    assert {k: v for k, v in cl.nodes["a"].swim.view().items()} == {"a": MemberState.ALIVE, "b": MemberState.ALIVE}
    assert value(s, "wasmatrix_member_events_total", kind="join") == 1  # b joined a's view once
    # Traffic: exactly what this test delivered to / saw leave a.
    assert value(s, "wasmatrix_received_packets_total", transport="datagram") == cl.rx_datagrams["a"]
    assert value(s, "wasmatrix_received_packets_total", transport="stream") == cl.rx_frames["a"]
    assert value(s, "wasmatrix_received_bytes_total") == cl.rx_bytes["a"]
    sent = cl.tx["a"]
    assert value(s, "wasmatrix_sent_packets_total", transport="datagram") == sum(not o.reliable for o in sent)
    assert value(s, "wasmatrix_sent_packets_total", transport="stream") == sum(o.reliable for o in sent)
    assert value(s, "wasmatrix_sent_bytes_total") == sum(len(o.data) for o in sent)
    assert value(s, "wasmatrix_incarnation") == 0 and value(s, "wasmatrix_awareness_score") == 0
    assert value(s, "wasmatrix_broadcast_queue_depth") == len(cl.nodes["a"].swim.broadcasts)
    assert value(s, "wasmatrix_node_info", node="a") == 1
    # No optional component attached: their families are absent, not zero.
    assert "wasmatrix_transport_handshakes" not in s and "wasmatrix_sync_sent_bytes" not in s
    assert "wasmatrix_unmapped_counter" not in s
    promtool_check(render(cl.metrics["a"][0]))


def test_missed_acks_suspicion_and_refutation_are_exported() -> None:
    cl = Cluster({"a": mknode("a"), "b": mknode("b", seeds=("a",))})
    cl.start()
    # Everything b sends is lost: a's probe fails, and b's refutation cannot reach a yet.
    cl.drop = lambda s, o: s == "b"
    cl.run_until(lambda: cl.nodes["a"].swim.view()["b"] == MemberState.SUSPECT)
    s = cl.scrape("a")
    assert value(s, "wasmatrix_members", status="suspect") == 1
    assert value(s, "wasmatrix_members", status="alive") == 1
    assert value(s, "wasmatrix_suspicions_total") == 1
    # Two members: no helper for an indirect probe, so none were sent.
    assert value(s, "wasmatrix_indirect_probes_total") == 0
    # Lifeguard: a failed probe with no nacks expected raises the score by one.
    assert value(s, "wasmatrix_awareness_score") == 1
    cl.drop = _no_drop
    b = cl.nodes["b"]
    cl.run_until(lambda: b.swim.counters["refutes"] == 1)
    sb = cl.scrape("b")
    # Refuting a suspicion at incarnation 0 moves b to incarnation 1 (max(own, accused) + 1).
    assert value(sb, "wasmatrix_refutations_total") == 1
    assert value(sb, "wasmatrix_incarnation") == 1
    cl.run_until(lambda: cl.nodes["a"].swim.view()["b"] == MemberState.ALIVE)
    s = cl.scrape("a")
    assert value(s, "wasmatrix_members", status="alive") == 2
    assert value(s, "wasmatrix_member_events_total", kind="alive") == 1  # suspect -> alive again
    promtool_check(render(cl.metrics["b"][0]))


def test_bad_datagram_is_a_drop_with_its_reason() -> None:
    a = mknode("a")
    reg, _ = node_registry(a)
    assert a.receive("x", b"\xff\x00garbage", 0.0) == []
    s = parse(render(reg))
    assert value(s, "wasmatrix_dropped_total", layer="node", reason="wire_error") == 1
    assert value(s, "wasmatrix_dropped_total", layer="node", reason="unknown_type") == 0
    assert value(s, "wasmatrix_received_packets_total", transport="datagram") == 1
    assert value(s, "wasmatrix_received_bytes_total") == 9


def test_series_order_is_deterministic_and_per_node_registries_are_independent() -> None:
    def build() -> bytes:
        cl = Cluster({"a": mknode("a"), "b": mknode("b", seeds=("a",))})
        cl.start()
        cl.run_until(lambda: cl.nodes["a"].swim.counters["probes"] == 3)
        return render(cl.metrics["a"][0])

    first = build()
    assert first == build()
    # Two collectors with the same family names on two registries: no clash, and nothing on the global one.
    from prometheus_client import REGISTRY

    assert REGISTRY.get_sample_value("wasmatrix_probes_total") is None


def test_unknown_counter_is_exported_as_unmapped_not_lost() -> None:
    a = mknode("a")
    a.swim.counters["brand_new_rule"] = 4
    reg, _ = node_registry(a)
    s = parse(render(reg))
    assert value(s, "wasmatrix_unmapped_counter_total", layer="membership", counter="brand_new_rule") == 4


def test_daemon_driver_api_and_audit_counters_are_mapped_families() -> None:
    from mesh.audit import AuditCounters

    a = mknode("a")
    c: Counter[str] = Counter({
        "driver_datagrams_in": 7, "driver_datagrams_out": 5, "driver_stream_bytes_in": 300,
        "driver_stream_bytes_out": 200, "driver_stream_handshake_timeouts": 2, "driver_udp_errors": 1,
        "driver_connect_failed": 3, "driver_stream_closed_protocol": 4, "driver_stream_closed_eof": 6,
        "driver_stream_closed_brand_new": 1, "driver_transport_errors": 1, "driver_inbound_refused": 9,
        "driver_audit_suppressed": 11, "api_requests": 10, "api_ok": 6, "api_failed": 1, "api_unauthorized": 2,
        "api_bad_requests": 1, "api_connections_refused": 8,
    })
    reg, _ = node_registry(a, driver_counters=c, audit_counters=AuditCounters(entries_total=12, dropped_total=1))
    text = render(reg)
    s = parse(text)
    assert value(s, "wasmatrix_driver_datagrams_total", direction="in") == 7
    assert value(s, "wasmatrix_driver_datagrams_total", direction="out") == 5
    assert value(s, "wasmatrix_driver_stream_bytes_total", direction="in") == 300
    assert value(s, "wasmatrix_driver_stream_handshake_timeouts_total") == 2
    assert value(s, "wasmatrix_driver_audit_suppressed_total") == 11
    assert value(s, "wasmatrix_driver_io_errors_total", kind="udp_receive") == 1
    assert value(s, "wasmatrix_driver_io_errors_total", kind="connect") == 3
    assert value(s, "wasmatrix_driver_io_errors_total", kind="stream") == 0
    assert value(s, "wasmatrix_driver_streams_closed_total", reason="protocol") == 4
    assert value(s, "wasmatrix_driver_streams_closed_total", reason="idle") == 0  # a known reason reads 0
    assert value(s, "wasmatrix_driver_streams_closed_total", reason="brand_new") == 1  # a new reason still shows
    assert value(s, "wasmatrix_dropped_total", layer="driver", reason="transport_exception") == 1
    assert value(s, "wasmatrix_dropped_total", layer="driver", reason="inbound_refused") == 9
    assert value(s, "wasmatrix_dropped_total", layer="driver", reason="stream_overflow") == 0
    assert value(s, "wasmatrix_api_requests_total") == 10
    assert value(s, "wasmatrix_api_refused_connections_total") == 8
    for outcome, n in {"ok": 6, "failed": 1, "unauthorized": 2, "bad_request": 1, "error": 0}.items():
        assert value(s, "wasmatrix_api_responses_total", outcome=outcome) == n
    assert value(s, "wasmatrix_audit_entries_total") == 12
    assert value(s, "wasmatrix_audit_dropped_events_total") == 1
    assert value(s, "wasmatrix_audit_write_errors_total") == 0
    assert "wasmatrix_unmapped_counter" not in s
    promtool_check(text)
    # A driver or API counter nobody mapped yet is exported under its layer, not lost.
    c["driver_brand_new"] = 3
    c["api_brand_new"] = 2
    s = parse(render(reg))
    assert value(s, "wasmatrix_unmapped_counter_total", layer="driver", counter="driver_brand_new") == 3
    assert value(s, "wasmatrix_unmapped_counter_total", layer="api", counter="api_brand_new") == 2


# -- fsync histogram -----------------------------------------------------------------------------


def test_fsync_histogram_buckets_sum_count_and_bad_input() -> None:
    a = mknode("a")
    reg, col = node_registry(a)
    for sec in (0.0004, 0.003, 0.003, 2.0, 30.0):
        col.observe_fsync(sec)
    col.observe_fsync(-1.0)
    col.observe_fsync(float("nan"))
    s = parse(render(reg))
    assert s["wasmatrix_store_fsync_seconds"][0] == "histogram"
    le = {k: v for k, v in s["wasmatrix_store_fsync_seconds"][1].items() if k[0][1].endswith("_bucket")}
    got = {dict(k)["le"]: v for k, v in le.items()}
    assert got["0.00025"] == 0 and got["0.0005"] == 1 and got["0.0025"] == 1 and got["0.005"] == 3
    assert got["1.0"] == 3 and got["2.5"] == 4 and got["10.0"] == 4 and got["+Inf"] == 5
    assert value(s, "wasmatrix_store_fsync_seconds_count") == 5
    assert value(s, "wasmatrix_store_fsync_seconds_sum") == pytest.approx(0.0004 + 0.006 + 2.0 + 30.0)
    assert value(s, "wasmatrix_store_fsync_invalid_observations_total") == 2
    assert len(got) == len(FSYNC_BUCKETS) + 1
    with pytest.raises(ValueError, match="fsync buckets"):
        FsyncHistogram([0.0])
    promtool_check(render(reg))


# -- secure transport ----------------------------------------------------------------------------


def test_transport_handshake_replay_and_psk_failure_are_exported() -> None:
    ta, tb = transport("a"), transport("b", 1)
    # XXpsk0 handshake a -> b, by hand (as tests/test_transport_noise.py does), then two datagrams.
    (m1,) = ta.connect("b", 0.0, expected_node_id=tb.identity.node_id)
    _, (m2,) = tb.receive_datagram("a", m1.data, 0.0)
    _, (m3,) = ta.receive_datagram("b", m2.data, 0.0)
    _, (confirm,) = tb.receive_datagram("a", m3.data, 0.0)
    assert ta.receive_datagram("b", confirm.data, 0.0) == ([], [])
    got_b: list[bytes] = []
    for text in (b"first", b"second"):
        (d2,) = ta.seal_datagram(tb.identity.node_id, text, 0.0)
        got, _ = tb.receive_datagram("a", d2.data, 0.0)
        got_b += [g.plaintext for g in got]
    assert got_b == [b"first", b"second"]
    assert tb.receive_datagram("a", d2.data, 0.0) == ([], [])  # replayed
    # A node with another mesh secret fails at message 1.
    tc = transport("c", 2, psk=OTHER_PSK)
    (c1,) = tc.seal_datagram(tb.identity.node_id, b"x", 0.0, addr="b")
    assert tb.receive_datagram("c", c1.data, 0.0) == ([], [])

    node_b = mknode("b")
    reg, _ = node_registry(node_b, transport=tb)
    s = parse(render(reg))
    assert value(s, "wasmatrix_transport_handshakes_total") == 1
    assert value(s, "wasmatrix_transport_opened_datagrams_total") == 2
    assert value(s, "wasmatrix_dropped_total", layer="transport", reason="replayed") == 1
    assert value(s, "wasmatrix_transport_handshake_failures_total", reason="psk_failure") == 1
    assert value(s, "wasmatrix_transport_handshake_failures_total", reason="refused_not_admitted") == 0
    assert value(s, "wasmatrix_transport_handshake_messages_sent_total", message="response") == 1
    assert value(s, "wasmatrix_transport_sessions") == 1
    assert value(s, "wasmatrix_transport_pending_handshakes") == 0
    sa = parse(render(node_registry(mknode("a"), transport=ta)[0]))
    assert value(sa, "wasmatrix_transport_handshakes_total") == 1
    assert value(sa, "wasmatrix_transport_sealed_datagrams_total") == 2
    assert value(sa, "wasmatrix_transport_handshake_messages_sent_total", message="xx_init") == 1
    assert "wasmatrix_unmapped_counter" not in s and "wasmatrix_unmapped_counter" not in sa
    promtool_check(render(reg))


# -- intent core and runtime ---------------------------------------------------------------------


def test_intent_sync_bytes_and_document_sizes_are_exported() -> None:
    from crdt.intent import IntentNode

    names = ["n000", "n001"]
    trust = trust_for(names)
    nodes = {}
    for i, nm in enumerate(names):
        intent = IntentNode(nm, key("node:" + nm), trust, random.Random(f"metrics-intent:{nm}"))
        nodes[nm] = mknode(nm, seeds=("n000",) if i else (), intent=intent)
    cl = Cluster(nodes)
    cl.start()
    a, b = nodes["n000"], nodes["n001"]
    assert a.intent is not None and b.intent is not None
    ia, ib = a.intent, b.intent
    ia.publish(manifest("hello", "1.0.0"), PUBLISHER, 0.0)
    cl.run_until(lambda: ib.doc.keys("registry") == ia.doc.keys("registry"))
    sa, sb = cl.scrape("n000"), cl.scrape("n001")
    assert value(sa, "wasmatrix_crdt_local_writes_total") == 1
    assert value(sa, "wasmatrix_intent_keys", kind="registry") == 1 == value(sb, "wasmatrix_intent_keys", kind="registry")
    assert value(sb, "wasmatrix_intent_keys", kind="routes") == 0
    # Lossless two-node link: every sync byte one side sent, the other received.
    assert value(sa, "wasmatrix_sync_sent_bytes_total") == value(sb, "wasmatrix_sync_received_bytes_total")
    assert value(sb, "wasmatrix_sync_sent_bytes_total") == value(sa, "wasmatrix_sync_received_bytes_total")
    assert value(sa, "wasmatrix_sync_sent_messages_total") == value(sb, "wasmatrix_sync_received_messages_total")
    assert value(sa, "wasmatrix_sync_sent_bytes_total") == a.intent.counters.bytes_sent
    assert value(sb, "wasmatrix_intent_document_bytes") == b.intent.doc.encoded_size()
    assert value(sa, "wasmatrix_store_rows") == a.intent.store.row_count()
    assert value(sa, "wasmatrix_crdt_invalid_records_total", reason="other") == 0
    assert value(sa, "wasmatrix_dropped_total", layer="sync", reason="malformed_update") == 0
    # The node core's own view of intent traffic: every sync message it encoded is one a sent.
    sync_out = [o for o in cl.tx["n000"] if decode(o.data, MAX_FRAME).msg.TYPE in SYNC_TYPES]
    assert value(sa, "wasmatrix_intent_sent_messages_total") == len(sync_out)
    assert value(sa, "wasmatrix_intent_sent_bytes_total") == sum(len(o.data) for o in sync_out)
    assert "wasmatrix_unmapped_counter" not in sa
    promtool_check(render(cl.metrics["n000"][0]))


def test_runtime_metrics_on_their_own_registry_are_re_exported() -> None:
    from runtime.metrics import RuntimeMetrics

    rm = RuntimeMetrics()
    rm.admission_rejections.labels(reason="too_large").inc()
    rm.invoke_seconds.labels(module="m").observe(0.001)
    reg, _ = node_registry(mknode("a"), runtime_metrics=rm)
    s = parse(render(reg))
    assert value(s, "wasmatrix_runtime_admission_rejections_total", reason="too_large") == 1
    assert value(s, "wasmatrix_runtime_invoke_seconds_count", module="m") == 1
    promtool_check(render(reg))
    # Sharing the node's registry instead: registered once, not exported twice.
    reg2, col2 = node_registry(mknode("b"))
    rm2 = RuntimeMetrics(reg2)
    col2.runtime_metrics = rm2
    rm2.compiles.inc()
    text = render(reg2).decode()
    assert text.count("# TYPE wasmatrix_runtime_compiles_total counter") == 1


def test_promtool_rejects_a_bad_exposition() -> None:
    """The promtool check itself can fail: a counter without _total is a lint finding."""
    exe = shutil.which("promtool")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("promtool missing in CI: .ci/run must apt-get install prometheus")
        pytest.skip("promtool (Debian package prometheus) not installed")
    bad = b"# HELP wasmatrix_probes Probes\n# TYPE wasmatrix_probes counter\nwasmatrix_probes 1\n"
    res = subprocess.run([exe, "check", "metrics"], input=bad, capture_output=True, timeout=60)
    assert res.returncode != 0
    assert 'counter metrics should have "_total" suffix' in (res.stdout + res.stderr).decode()


def test_every_exported_name_label_and_reason_is_documented() -> None:
    """docs/METRICS.md lists every family, label name and label value a fully attached node exports."""
    from crdt.intent import IntentNode

    doc = (Path(__file__).parent.parent / "docs" / "METRICS.md").read_text()
    intent = IntentNode("n000", key("node:n000"), trust_for(["n000"]), random.Random(3))
    reg, col = node_registry(mknode("n000", intent=intent), transport=transport("a"), stream_counters=Counter())
    col.observe_fsync(0.001)
    families = list(text_string_to_metric_families(render(reg).decode()))
    # 14 membership + 8 node + 1 drops + 35 intent + 12 transport + 2 fsync rows in the tables.
    assert len(families) == 72
    for fam in families:
        shown = fam.name + "_total" if fam.type == "counter" else fam.name
        assert f"`{shown}`" in doc, shown
        assert fam.documentation, fam.name
        for s in fam.samples:
            for label, v in s.labels.items():
                if label in ("le", "node"):
                    continue
                assert f"`{label}`" in doc, (fam.name, label)
                if fam.name != "wasmatrix_crdt_invalid_records" or v == "other":
                    assert v in doc, (fam.name, label, v)


def test_a_counter_the_core_lacks_reads_zero_and_keeps_the_series_set() -> None:
    full = mknode("a")
    reg_full, _ = node_registry(full)
    lacking = mknode("a")
    del lacking.swim.counters["probes"], lacking.counters["wire_errors"]
    reg_lacking, _ = node_registry(lacking)
    s_full, s_lacking = parse(render(reg_full)), parse(render(reg_lacking))
    assert {f: sorted(v[1]) for f, v in s_full.items()} == {f: sorted(v[1]) for f, v in s_lacking.items()}
    assert value(s_lacking, "wasmatrix_probes_total") == 0
    assert value(s_lacking, "wasmatrix_dropped_total", layer="node", reason="wire_error") == 0


def test_stream_session_counters_are_exported_once_even_when_shared_with_the_transport() -> None:
    from mesh.transport import Established, StreamSession
    from transport_helpers import PSK, admit_all, ident

    def exchange(counters_a: Counter[str], frames: int) -> None:
        """A real stream handshake a -> b, then ``frames`` frames b -> a, all counted in ``counters_a``."""
        a = StreamSession(ident("a"), PSK, admit_all, True, counters=counters_a)
        b = StreamSession(ident("b"), PSK, admit_all, False)
        (out_b,) = b.feed(a.start())
        out_a, established = a.feed(out_b.data)
        assert isinstance(established, Established)
        b.feed(out_a.data)
        for i in range(frames):
            a.feed(b.send(b"frame %d" % i))

    t = transport("a")
    exchange(t.counters, 2)  # sessions sharing the transport's Counter
    shared = parse(render(node_registry(mknode("a"), transport=t, stream_counters=t.counters)[0]))
    assert value(shared, "wasmatrix_transport_opened_stream_frames_total") == 2
    assert value(shared, "wasmatrix_transport_handshakes_total") == 1
    own: Counter[str] = Counter()
    exchange(own, 3)  # sessions with their own Counter: added to the transport's
    separate = parse(render(node_registry(mknode("a"), transport=t, stream_counters=own)[0]))
    assert value(separate, "wasmatrix_transport_opened_stream_frames_total") == 5
    assert value(separate, "wasmatrix_transport_handshakes_total") == 2
