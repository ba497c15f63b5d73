"""The security boundary of real `wasmatrix node run` processes on loopback (issue 10, "Security").

* A daemon with the wrong mesh secret (or ``--insecure``) cannot join and learns nothing; the good
  nodes count the PSK failures and audit them, rate-limited.
* Datagrams captured between two daemons (by tests/harness/relay.py relays they advertise) and
  replayed from a third socket are rejected, each by its reason, and get no answer.
* 10,000 random and mutated datagrams and a few hundred hostile TCP connections leave a node
  serving with its view intact and its memory bounded.
* ``/metrics`` of a live daemon passes ``promtool check metrics`` and maps every counter.

Every process is started through the ProcessGroup fixture and killed by its PID at the end, every
relay is stopped by the Relays fixture, also when a test fails. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

from tests.harness.promtool import promtool_check

import contextlib
import io
import json
import os
import random
import signal
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mesh.cli import main
from mesh.daemon.security import RefusalAuditor, stream_refusal
from mesh.meshfile import load as load_meshfile
from mesh.transport import Established, Outgoing, StreamSession
from mesh.transport.framing import frame
from mesh.transport.identity import LocalIdentity
from tests.harness.daemons import Mesh, Node, wait_until
from tests.harness.procs import ProcessGroup, procs  # noqa: F401  (fixture)
from tests.harness.relay import Relays, UdpRelay, relays  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow  # real daemon processes: run in CI and with WASMATRIX_SLOW=1 (docs/TESTING.md)

JOIN_BOUND = 20.0
T_INIT, T_RESP, T_FINAL, T_DATA, T_IK_INIT, T_IK_RESP = 1, 2, 3, 4, 5, 6
# mesh.transport.noise.TransportConfig.max_datagram as the daemon sets it (wire.MAX_DATAGRAM + 29).
REJECTED_UDP = (
    "datagram_malformed", "datagram_unknown_session", "datagram_replayed", "datagram_too_old",
    "datagram_decrypt_failures", "handshake_psk_failures", "handshake_invalid", "handshake_unexpected",
    "handshake_replayed", "handshake_confirm_resent",
)


def _mesh_file(path: Path) -> Path:
    # In-process: a CLI subprocess costs 1.5-2.5 s of imports on a loaded 2-core machine.
    assert _main("mesh", "init", "--out", str(path))[0] == 0
    return path


_PORTS = random.Random()


def node_port() -> int:
    """A loopback port free for UDP and TCP, below the ephemeral range (32768-60999 here).

    free_port() draws from the ephemeral range, where an outbound TCP connection can take the
    TCP twin of a UDP port between the pick and the daemon's bind (seen with 400 fuzz streams).
    """
    for _ in range(200):
        port = _PORTS.randrange(20000, 32000)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            try:
                u.bind(("127.0.0.1", port))
                t.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError("no loopback port free for both UDP and TCP in 20000-32000")


def _main(*args: str) -> tuple[int, str]:
    """``wasmatrix ARGS`` in this process: (exit code, stdout)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(list(args))
    return rc, buf.getvalue()


def _start_all(mesh: Mesh, specs: list[tuple[str, dict[str, Any]]]) -> list[Node]:
    """Start several daemons at once (their start-ups overlap), then wait for each one's API."""
    nodes = [mesh.start(name, wait=False, **kw) for name, kw in specs]
    for n in nodes:
        assert n.proc is not None
        n.proc.wait_for_file(n.data_dir / "api.json", timeout=20)
    return nodes


@pytest.fixture
def mesh_file(tmp_path: Path) -> Path:
    return _mesh_file(tmp_path / "mesh.json")


def scrape(node: Node) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the node's /metrics by (name, sorted labels)."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in text_string_to_metric_families(node.metrics()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def val(sc: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sc.get((name, tuple(sorted(labels.items()))), 0.0)


def udp_counters(node: Node) -> Counter[str]:
    """The node's SecureTransport counters (datagrams only), from /v1/sessions."""
    return Counter(node.client().get("/v1/sessions")["counters"])


def audit_entries(node: Node) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (node.data_dir / "audit.log").read_text().splitlines()]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class CaptureUdpRelay(UdpRelay):
    """A fault-free relay that also keeps a copy of each datagram it relays (bounded)."""

    def __init__(self, target: tuple[str, int], **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self.captured: list[tuple[str, bytes]] = []

    def _ingress(self, d: Any, data: bytes, sock: socket.socket, dest: tuple[str, int]) -> None:
        if len(self.captured) < 20_000:
            self.captured.append((d, bytes(data)))
        super()._ingress(d, data, sock, dest)


def front(group: Relays, port: int) -> tuple[CaptureUdpRelay, int]:
    """A capturing UDP relay and a TCP relay on one loopback port, both forwarding to ``port``."""
    for _ in range(10):
        udp = CaptureUdpRelay(("127.0.0.1", port), max_lifetime=300.0)
        udp.start()
        group._started.append(udp)  # stopped by the fixture, also when the TCP twin cannot bind
        rport = udp.address[1]
        try:
            group.tcp(("127.0.0.1", port), listen_port=rport, max_lifetime=300.0)
        except OSError:
            continue  # that port's TCP twin is taken: try another
        return udp, rport
    raise AssertionError("no loopback port free for both a UDP and a TCP relay")


def relayed_pair(procs: ProcessGroup, group: Relays, root: Path, mesh_file: Path) -> tuple[Mesh, Node, Node, Any]:
    """Nodes a and b that advertise relay addresses, so every datagram between them is captured.

    Returns the mesh, a, b and a function giving the captured datagrams that were sent to b.
    """
    mesh = Mesh(procs, root, mesh_file=mesh_file)
    pa, pb = node_port(), node_port()
    relay_a, ra = front(group, pa)
    relay_b, rb = front(group, pb)
    a, b = _start_all(mesh, [
        ("a", {"port": pa, "extra": ["--advertise", f"127.0.0.1:{ra}"]}),
        ("b", {"port": pb, "seeds": [f"127.0.0.1:{ra}"], "extra": ["--advertise", f"127.0.0.1:{rb}"]}),
    ])
    wait_until(lambda: mesh.converged({"a": "alive", "b": "alive"}), JOIN_BOUND, "a and b see each other alive")

    def to_b() -> list[bytes]:
        # a -> b went either through b's relay (a dialled b) or back through a's (b dialled a).
        return [d for way, d in list(relay_b.captured) if way == "up"] + [
            d for way, d in list(relay_a.captured) if way == "down"
        ]

    return mesh, a, b, to_b


# ---------------------------------------------------------------------------------------------- unit


def test_refusal_auditor_writes_one_entry_per_host_and_reason_per_window() -> None:
    class Sink:
        def __init__(self) -> None:
            self.events: list[dict[str, Any]] = []

        def record(self, event: dict[str, Any]) -> None:
            self.events.append(event)

    sink, counters = Sink(), Counter[str]()
    aud = RefusalAuditor(sink, counters, window=60.0, max_keys=3)
    assert aud.refused("psk_failure", "tcp", "10.0.0.1", 4000, 0.0, 1000.0) is True
    for t in (1.0, 2.0, 59.9):  # same host (any port), same reason, inside the window: counted only
        assert aud.refused("psk_failure", "udp", "10.0.0.1", 4001, t, 1000.0 + t) is False
    assert aud.refused("not_admitted", "udp", "10.0.0.1", 4000, 3.0, 1003.0) is True  # another reason
    assert aud.refused("psk_failure", "udp", "10.0.0.2", 4000, 3.0, 1003.0) is True  # another host
    assert counters["driver_audit_suppressed"] == 3
    assert aud.refused("psk_failure", "udp", "10.0.0.1", 4000, 60.0, 1060.0) is True  # next window
    assert [(e["event"], e["reason"], e["host"], e["suppressed_before"]) for e in sink.events] == [
        ("admission_refused", "psk_failure", "10.0.0.1", 0),
        ("admission_refused", "not_admitted", "10.0.0.1", 0),
        ("admission_refused", "psk_failure", "10.0.0.2", 0),
        ("admission_refused", "psk_failure", "10.0.0.1", 3),
    ]
    assert sink.events[0]["transport"] == "tcp" and sink.events[0]["ts"] == 1000.0
    # Bounded: a flood from many hosts keeps at most max_keys of them.
    for i in range(100):
        aud.refused("psk_failure", "udp", f"10.1.0.{i}", 1, 61.0, 1061.0)
    assert len(aud) == 3
    assert [stream_refusal(r) for r in ("handshake_psk_failures", "handshake_refused_not_admitted", "stream_eof")] == [
        "psk_failure", "not_admitted", None,
    ]


# ---------------------------------------------------------------------------------------------- processes


def test_wrong_secret_and_insecure_nodes_cannot_join_learn_nothing_and_are_audited(
    procs: ProcessGroup, tmp_path: Path, mesh_file: Path
) -> None:
    mesh = Mesh(procs, tmp_path, mesh_file=mesh_file)
    pa = node_port()
    a, b = _start_all(mesh, [("a", {"port": pa}), ("b", {"port": node_port(), "seeds": [f"127.0.0.1:{pa}"]})])
    wait_until(lambda: mesh.converged({"a": "alive", "b": "alive"}), JOIN_BOUND, "a and b joined")
    psk0 = val(scrape(a), "wasmatrix_transport_handshake_failures_total", reason="psk_failure")

    other = _mesh_file(tmp_path / "other-mesh.json")
    open_mesh = Mesh(procs, tmp_path)  # no mesh file: --insecure
    x = mesh.start("x", port=node_port(), seeds=[a.addr, b.addr], secret=other, wait=False)
    y = open_mesh.start("y", port=node_port(), seeds=[a.addr], wait=False)
    for n in (x, y):
        assert n.proc is not None
        n.proc.wait_for_file(n.data_dir / "api.json", timeout=20)
    wait_until(
        lambda: val(scrape(a), "wasmatrix_transport_handshake_failures_total", reason="psk_failure") >= psk0 + 2,
        JOIN_BOUND, "a counted the PSK failures of both intruders",
    )
    # For a while (the intruders keep retrying), neither good node ever lists an intruder.
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        for n in (a, b):
            assert set(n.view()) == {"a", "b"}, n.view()
        time.sleep(0.2)
    # The intruders learned nothing: alone in their views, no session, no completed handshake.
    for intruder in (x, y):
        assert [m["name"] for m in intruder.members()] == [intruder.name]
        sc = scrape(intruder)
        assert val(sc, "wasmatrix_transport_handshakes_total") == 0
        assert intruder.client().get("/v1/sessions")["datagram_sessions"] == []
    assert y.status()["insecure"] is True

    # /metrics of a live good node: valid for promtool, every counter mapped, driver families there.
    text = a.metrics().encode()
    assert b"wasmatrix_unmapped_counter" not in text
    sc = scrape(a)
    assert val(sc, "wasmatrix_driver_datagrams_total", direction="in") > 0
    assert val(sc, "wasmatrix_members", status="alive") == 2
    assert val(sc, "wasmatrix_api_responses_total", outcome="ok") > 0
    assert val(sc, "wasmatrix_dropped_total", layer="driver", reason="transport_exception") == 0
    promtool_check(text)

    # Stop the intruders, then compare a's audit log with its counters: one admission_refused entry
    # per (source host, reason) per minute, every other refusal counted as suppressed.
    mesh.kill("x")
    open_mesh.kill("y")
    time.sleep(0.5)
    sc = scrape(a)
    refusals = sum(v for (name, labels), v in sc.items()
                   if name == "wasmatrix_transport_handshake_failures_total"
                   and (dict(labels)["reason"] == "psk_failure" or dict(labels)["reason"].startswith("refused_")))
    psk = val(sc, "wasmatrix_transport_handshake_failures_total", reason="psk_failure")
    suppressed = val(sc, "wasmatrix_driver_audit_suppressed_total")
    refused = [e for e in audit_entries(a) if e["event"] == "admission_refused"]
    assert [(e["fields"]["reason"], e["fields"]["host"]) for e in refused if e["fields"]["reason"] == "psk_failure"] == [
        ("psk_failure", "127.0.0.1")
    ]
    assert psk >= 2 and len(refused) + suppressed == refusals
    print(f"a: {psk:.0f} PSK failures, {len(refused)} audited, {suppressed:.0f} suppressed")

    # `audit verify` on the stopped node: OK, and the entries are listed.
    assert mesh.kill("a", signal.SIGTERM) == 0
    rc, out = _main("audit", "verify", str(a.data_dir), "--list")
    assert rc == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("OK ")
    events = [ln.split()[2] for ln in lines[1:]]
    assert events[:2] == ["node_key_created", "node_started"]
    assert "admission_refused" in events and events[-2:] == ["node_left", "node_stopped"]
    # Edit one line (the refused host): verify fails with exit 1 naming that entry.
    path = a.data_dir / "audit.log"
    raw = path.read_text().splitlines(keepends=True)
    i = next(k for k, ln in enumerate(raw) if '"event":"admission_refused"' in ln)
    seq = json.loads(raw[i])["seq"]
    raw[i] = raw[i].replace('"host":"127.0.0.1"', '"host":"127.0.0.9"')
    path.write_text("".join(raw))
    rc, out = _main("audit", "verify", str(a.data_dir))
    assert rc == 1
    assert f"BROKEN line {i + 1}: entry seq {seq} was edited" in out


def test_captured_datagrams_replayed_from_a_third_socket_are_rejected(
    procs: ProcessGroup, relays: Relays, tmp_path: Path, mesh_file: Path
) -> None:
    mesh, a, b, to_b = relayed_pair(procs, relays, tmp_path, mesh_file)
    wait_until(lambda: sum(d[0] == T_DATA for d in to_b()) >= 6, 15, "6 DATA datagrams a -> b captured")
    assert a.proc is not None
    os.kill(a.proc.pid, signal.SIGSTOP)  # a sends nothing more: every change at b comes from the replay
    try:
        time.sleep(0.3)  # what a sent before it stopped has landed
        captured = to_b()
        kinds = Counter(d[0] for d in captured)
        before = udp_counters(b)
        attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            attacker.bind(("127.0.0.1", 0))
            for d in captured:
                attacker.sendto(d, ("127.0.0.1", b.port))
            wait_until(lambda: sum(udp_counters(b)[k] for k in REJECTED_UDP) - sum(before[k] for k in REJECTED_UDP)
                       >= len(captured), 10, "b processed every replayed datagram")
            attacker.settimeout(0.5)
            with pytest.raises(socket.timeout):
                attacker.recvfrom(2048)  # not one byte back to the replaying socket
        finally:
            attacker.close()
        after = udp_counters(b)
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    d = {k: after[k] - before[k] for k in set(after) | set(before)}
    print(f"replayed {len(captured)} datagrams {dict(sorted(kinds.items()))}; b's counters moved: "
          f"{dict(sorted((k, v) for k, v in d.items() if v))}")
    assert kinds[T_DATA] >= 6
    # Each replayed datagram is dropped for its reason; nothing was accepted, no handshake completed.
    assert d.get("datagram_replayed", 0) + d.get("datagram_too_old", 0) + d.get("datagram_unknown_session", 0) == kinds[T_DATA]
    assert d.get("handshake_replayed", 0) == kinds[T_INIT] + kinds[T_IK_INIT]
    assert d.get("handshake_unexpected", 0) + d.get("handshake_confirm_resent", 0) == (
        kinds[T_RESP] + kinds[T_IK_RESP] + kinds[T_FINAL]
    )
    assert d.get("datagrams_opened", 0) == 0 and d.get("handshakes_completed", 0) == 0
    assert d.get("datagram_replayed", 0) > 0
    # The view is intact: the two nodes, both alive again once a runs.
    wait_until(lambda: mesh.converged({"a": "alive", "b": "alive"}), JOIN_BOUND, "a and b alive after the replay")


# ---------------------------------------------------------------------------------------------- fuzz


def _mutate(rng: random.Random, real: list[bytes]) -> bytes:
    """One hostile datagram: random bytes, or a real one with bits flipped, cut, extended or retyped."""
    op = rng.randrange(7)
    if op == 0 or not real:
        return rng.randbytes(rng.randrange(0, 1400))
    src = bytearray(rng.choice(real))
    if op == 1:  # bit flips
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(src) * 8)
            src[i // 8] ^= 1 << (i % 8)
    elif op == 2:  # truncation
        src = src[: rng.randrange(len(src))]
    elif op == 3:  # extension (past the datagram limit, too)
        src += rng.randbytes(rng.choice((1, 16, 300, 1300)))
    elif op == 4:  # type byte change
        src[0] = rng.choice((0, T_INIT, T_RESP, T_FINAL, T_DATA, T_IK_INIT, T_IK_RESP, 7, 255))
    elif op == 5:  # the right length for a type, random content (reaches the Noise code)
        kind, length = rng.choice(((T_INIT, 202), (T_RESP, 202), (T_FINAL, 170), (T_IK_INIT, 198), (T_IK_RESP, 154),
                                   (T_DATA, rng.randrange(29, 1229))))
        src = bytearray([kind]) + rng.randbytes(length - 1)
    else:  # a real DATA header (live session index) with another counter or body
        if src[0] == T_DATA and len(src) >= 13:
            src[5:13] = rng.randrange(2**64).to_bytes(8, "big") if rng.random() < 0.5 else src[5:13]
            src[13:] = rng.randbytes(max(16, len(src) - 13))
        else:
            src[0] = T_DATA
    return bytes(src)


def _stream_attack(port: int, psk: bytes, seed: int) -> str:
    """One hostile TCP connection; returns what it did (for the tally)."""
    rng = random.Random(seed)
    op = rng.randrange(7)
    s = socket.create_connection(("127.0.0.1", port), timeout=3.0)
    try:
        s.settimeout(3.0)
        if op == 0:  # garbage
            s.sendall(rng.randbytes(rng.randrange(1, 4000)))
        elif op == 1:  # an empty frame, or one claiming 65535 bytes and stopping short
            s.sendall(b"\x00\x00" if rng.random() < 0.5 else b"\xff\xff" + rng.randbytes(rng.randrange(0, 2000)))
        elif op in (2, 3):  # a real message 1 under a wrong secret (or the right one), bit-flipped
            ident = LocalIdentity.from_seeds(rng.randbytes(32), rng.randbytes(32))
            key = psk if op == 3 else rng.randbytes(32)
            m1 = bytearray(StreamSession(ident, key, lambda n, k: True, initiator=True).start())
            i = rng.randrange(16, len(m1) * 8)
            m1[i // 8] ^= 1 << (i % 8)
            s.sendall(bytes(m1))
        else:  # an insider: the right secret, a real handshake, then hostile frames
            ident = LocalIdentity.from_seeds(rng.randbytes(32), rng.randbytes(32))
            sess = StreamSession(ident, psk, lambda n, k: True, initiator=True)
            s.sendall(sess.start())
            established = False
            while not established:
                data = s.recv(65536)
                if not data:
                    return "closed_early"
                for ev in sess.feed(data):
                    if isinstance(ev, Outgoing):
                        out = bytearray(ev.data)
                        if op == 4:  # message 3 with a flipped bit: handshake_invalid
                            i = rng.randrange(16, len(out) * 8)
                            out[i // 8] ^= 1 << (i % 8)
                            s.sendall(bytes(out))
                            return "bad_msg3"
                        s.sendall(bytes(out))
                    elif isinstance(ev, Established):
                        established = True
            for _ in range(rng.randint(1, 20)):
                if op == 5:  # authenticated frames of random plaintext: the node core's decoders
                    s.sendall(sess.send(rng.randbytes(rng.randrange(0, 3000))))
                else:  # forged transport frames: decrypt failure closes the stream
                    s.sendall(frame(rng.randbytes(rng.randrange(16, 3000))))
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):  # until the node closes (bounded by the socket timeout)
            pass
    except OSError:
        pass  # reset or timeout: the node may close first, that is its right
    finally:
        s.close()
    return f"op{op}"


@pytest.mark.slow
def test_ten_thousand_hostile_datagrams_and_hostile_streams_leave_the_node_serving(
    procs: ProcessGroup, relays: Relays, tmp_path: Path, mesh_file: Path
) -> None:
    mesh, a, b, to_b = relayed_pair(procs, relays, tmp_path, mesh_file)
    wait_until(lambda: sum(d[0] == T_DATA for d in to_b()) >= 10, 15, "real datagrams a -> b captured")
    real = to_b()
    assert b.proc is not None
    pid = b.proc.pid
    rss0, cpu0, t0 = rss_kib(pid), cpu_seconds(pid), time.monotonic()
    before, sc0 = udp_counters(b), scrape(b)
    rng = random.Random(20240610)
    n_udp = 10_000
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(8)]
    try:
        for s in senders:
            s.bind(("127.0.0.1", 0))
        in0 = val(sc0, "wasmatrix_driver_datagrams_total", direction="in")
        for i in range(n_udp):
            senders[i % len(senders)].sendto(_mutate(rng, real), ("127.0.0.1", b.port))
            if i % 500 == 499:  # paced: the node reads a batch before the next (no kernel drops)
                wait_until(lambda: val(scrape(b), "wasmatrix_driver_datagrams_total", direction="in") >= in0 + i + 1,
                           20, f"b read {i + 1} fuzz datagrams", interval=0.02)
    finally:
        for s in senders:
            s.close()
    t_udp = time.monotonic() - t0
    psk = load_meshfile(mesh_file).secret
    with ThreadPoolExecutor(max_workers=16) as pool:  # bounded concurrency
        tally = Counter(pool.map(lambda k: _stream_attack(b.port, psk, k), range(400)))
    t_all = time.monotonic() - t0
    cpu = cpu_seconds(pid) - cpu0
    after, sc1 = udp_counters(b), scrape(b)
    rss1 = rss_kib(pid)
    moved = {k: after[k] - before[k] for k in REJECTED_UDP if after[k] - before[k]}
    stream_fail = {
        labels: v - sc0.get((name, labels), 0.0) for (name, labels), v in sc1.items()
        if name in ("wasmatrix_transport_handshake_failures_total", "wasmatrix_dropped_total") and v - sc0.get((name, labels), 0.0)
    }
    print(f"fuzz: {n_udp} datagrams in {t_udp:.1f} s, 400 streams {dict(sorted(tally.items()))}; "
          f"total {t_all:.1f} s, node CPU {cpu:.1f} s; RSS {rss0 // 1024} -> {rss1 // 1024} MiB")
    print(f"udp rejections: {dict(sorted(moved.items()))}")
    print(f"handshake failures / drops moved: {stream_fail}")

    # Every fuzz datagram was read and rejected for a reason (none delivered, none raised).
    assert sum(moved.values()) == n_udp
    assert val(sc1, "wasmatrix_dropped_total", layer="driver", reason="transport_exception") == 0
    assert val(sc1, "wasmatrix_api_responses_total", outcome="error") == 0
    # The streams were refused by the PSK, by a failed handshake, by frame checks or by decryption.
    assert val(sc1, "wasmatrix_transport_handshake_failures_total", reason="psk_failure") > val(
        sc0, "wasmatrix_transport_handshake_failures_total", reason="psk_failure")
    assert val(sc1, "wasmatrix_dropped_total", layer="transport", reason="stream_decrypt_failure") > 0
    # Memory bounded; the process still runs, answers, keeps its view and admits a new node.
    assert rss1 - rss0 < 50 * 1024, (rss0, rss1)
    assert b.proc.popen.poll() is None and b.status()["id"]
    wait_until(lambda: mesh.converged({"a": "alive", "b": "alive"}), JOIN_BOUND, "a and b still see each other alive")
    mesh.start("c", port=node_port(), seeds=[b.addr])
    wait_until(lambda: mesh.converged({"a": "alive", "b": "alive", "c": "alive"}), JOIN_BOUND, "c joined after the fuzz")
