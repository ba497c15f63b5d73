"""The process-test harness: fault-injecting loopback relay and the process helper, on real sockets."""

from __future__ import annotations

import math
import socket
import statistics
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.harness.procs import ProcessGroup, ProcError, free_port, pid_alive, procs  # noqa: F401
from tests.harness.relay import Relays, RelayError, TcpRelay, UdpRelay, relays  # noqa: F401

SEQ = struct.Struct("!I")


@contextmanager
def udp_echo() -> Iterator[tuple[tuple[str, int], list[tuple[str, int]]]]:
    """A loopback UDP echo server in a thread; yields its address and the sources it saw."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)
    stop = threading.Event()
    sources: list[tuple[str, int]] = []

    def run() -> None:
        deadline = time.monotonic() + 30.0  # bounded even if the test forgets to stop it
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                data, src = sock.recvfrom(65535)
            except TimeoutError:
                continue
            sources.append(src)
            sock.sendto(data, src)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield sock.getsockname(), sources
    finally:
        stop.set()
        t.join(2.0)
        sock.close()
        assert not t.is_alive(), "echo thread did not stop"


def client() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


def send_seqs(sock: socket.socket, dest: tuple[str, int], seqs: range) -> None:
    for i in seqs:
        sock.sendto(SEQ.pack(i), dest)


def drain(sock: socket.socket, quiet: float = 0.15, bound: float = 3.0) -> list[int]:
    """Receive sequence numbers until nothing arrives for ``quiet`` seconds (at most ``bound``)."""
    got: list[int] = []
    sock.settimeout(quiet)
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        try:
            data = sock.recv(64)
        except TimeoutError:
            break
        got.append(SEQ.unpack(data)[0])
    return got


def binomial_bounds(n: int, p: float, sigmas: float = 5.0) -> tuple[float, float]:
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    return mean - sigmas * sd, mean + sigmas * sd


def test_udp_delay_shows_in_rtt() -> None:
    # 25 ms +- 2.5 ms each way: RTT 50 ms +- 5 ms, plus scheduling slack on a shared machine.
    with udp_echo() as (echo, _), UdpRelay(echo, seed=1, delay=0.025, jitter=0.0025) as relay, \
            client() as c:
        c.settimeout(1.0)
        rtts = []
        for i in range(15):
            t0 = time.monotonic()
            c.sendto(SEQ.pack(i), relay.address)
            assert SEQ.unpack(c.recv(64))[0] == i
            rtts.append(time.monotonic() - t0)
    # A relay may be late but never early: every RTT is at least the smallest possible delay.
    assert min(rtts) >= 0.045
    assert statistics.median(rtts) < 0.100
    assert relay.count("delayed") == 30


def test_udp_without_faults_forwards_everything_and_nats_per_client() -> None:
    with udp_echo() as (echo, sources), UdpRelay(echo) as relay, client() as a, client() as b:
        send_seqs(a, relay.address, range(0, 20))
        send_seqs(b, relay.address, range(100, 120))
        assert sorted(drain(a)) == list(range(20))
        assert sorted(drain(b)) == list(range(100, 120))
        # Two clients -> two distinct upstream sources at the target, none of them the clients.
        assert len(set(sources)) == 2
        assert not set(sources) & {a.getsockname(), b.getsockname()}


def test_udp_loss_is_binomial_and_counters_match_client() -> None:
    n, p = 1000, 0.3
    received: list[int] = []
    with udp_echo() as (echo, sources), UdpRelay(echo, seed=7) as relay, client() as c:
        relay.set("up", loss=p)
        # Batches of 50 keep well inside the default socket buffers, so only the relay drops.
        for start in range(0, n, 50):
            send_seqs(c, relay.address, range(start, start + 50))
            received += drain(c, quiet=0.03)
        received += drain(c)  # stragglers from the last batch on a busy machine
    lo, hi = binomial_bounds(n, p)
    dropped = relay.count("dropped", "up")
    assert lo <= dropped <= hi
    assert dropped == n - len(received)
    assert len(sources) == n - dropped
    assert len(set(received)) == len(received)
    assert relay.count("dropped", "down") == 0
    assert relay.count("forwarded", "down") == len(received)


def test_udp_loss_is_reproducible_with_the_same_seed() -> None:
    runs = []
    for _ in range(2):
        with udp_echo() as (echo, _), UdpRelay(echo, seed=42, loss=0.5) as relay, client() as c:
            send_seqs(c, relay.address, range(40))
            runs.append(sorted(drain(c)))
    assert runs[0] == runs[1]
    assert len(runs[0]) < 40


def test_udp_duplication_seen_by_sequence_numbers() -> None:
    n, p = 200, 0.5
    with udp_echo() as (echo, _), UdpRelay(echo, seed=3) as relay, client() as c:
        relay.set("up", duplicate=p)
        got = []
        for start in range(0, n, 50):
            send_seqs(c, relay.address, range(start, start + 50))
            got += drain(c, quiet=0.03)
        got += drain(c)
    counts = Counter(got)
    assert set(counts) == set(range(n))
    extra = sum(k - 1 for k in counts.values())
    assert max(counts.values()) == 2
    lo, hi = binomial_bounds(n, p)
    assert lo <= extra <= hi
    assert extra == relay.count("duplicated")


def test_udp_reordering_seen_by_sequence_numbers() -> None:
    n, p = 200, 0.2
    with udp_echo() as (echo, _), UdpRelay(echo, seed=5) as relay, client() as c:
        relay.set("up", reorder=p)
        send_seqs(c, relay.address, range(n))
        # Wait until the relay has read all n, then let a few in-order datagrams flush the held ones.
        assert relay.wait_until(lambda r: r.count("received", "up") == n)
        relay.set("up", reorder=0.0)
        send_seqs(c, relay.address, range(n, n + 3))
        got = drain(c)
    assert sorted(got) == list(range(n + 3))
    late, highest = 0, -1
    for s in got:
        if s < highest:
            late += 1
        highest = max(highest, s)
    lo, hi = binomial_bounds(n, p)
    assert lo <= late <= hi
    assert late == relay.count("reordered")


def test_udp_partition_drops_everything_and_heal_restores() -> None:
    with udp_echo() as (echo, sources), UdpRelay(echo) as relay, client() as c:
        relay.partition()
        send_seqs(c, relay.address, range(20))
        assert drain(c) == []
        assert relay.count("dropped", "up") == 20
        assert sources == []
        # One-way: requests reach the target, replies are lost.
        relay.heal()
        relay.partition("down")
        send_seqs(c, relay.address, range(20, 30))
        assert drain(c) == []
        assert len(sources) == 10
        assert relay.count("dropped", "down") == 10
        relay.heal()
        send_seqs(c, relay.address, range(30, 40))
        assert sorted(drain(c)) == list(range(30, 40))


def test_udp_block_clients_cuts_only_those_clients_both_ways() -> None:
    with udp_echo() as (echo, sources), UdpRelay(echo) as relay, client() as a, client() as b:
        relay.block_clients([a.getsockname()])
        send_seqs(a, relay.address, range(10))
        send_seqs(b, relay.address, range(100, 110))
        assert drain(a) == []
        assert sorted(drain(b)) == list(range(100, 110))
        assert len(sources) == 10  # only b's datagrams reached the target
        assert relay.count("dropped", "up") == 10
        assert relay.stats()["relay"]["blocked"] == 10
        # Blocked after its requests went through: the answers to a are dropped on the way down.
        relay.block_clients([])
        relay.set("up", delay=0.2)
        send_seqs(a, relay.address, range(20, 25))
        assert relay.wait_until(lambda r: r.count("received", "up") == 25)
        relay.block_clients([a.getsockname()])
        assert relay.wait_until(lambda r: r.count("forwarded", "up") == 15, timeout=3.0)
        assert drain(a) == []
        assert relay.wait_until(lambda r: r.count("dropped", "down") == 5, timeout=3.0)
        relay.block_clients(())
        relay.set("up", delay=0.0)
        send_seqs(a, relay.address, range(30, 35))
        assert sorted(drain(a)) == list(range(30, 35))


@pytest.mark.parametrize("host", ["10.0.0.1", "192.168.1.1", "8.8.8.8", "2001:db8::1", "example.com"])
def test_relay_refuses_non_loopback_target(host: str) -> None:
    with pytest.raises(RelayError, match="127.0.0.0/8 or ::1"):
        UdpRelay((host, 9))
    with pytest.raises(RelayError, match="127.0.0.0/8 or ::1"):
        TcpRelay((host, 9))


def test_relay_refuses_non_loopback_listen_address() -> None:
    with pytest.raises(RelayError, match="non-loopback address 0.0.0.0"):
        UdpRelay(("127.0.0.1", 9), listen_host="0.0.0.0")


def test_relay_rejects_bad_fault_values() -> None:
    with pytest.raises(RelayError, match="loss=1.5"):
        UdpRelay(("127.0.0.1", 9), loss=1.5)
    with pytest.raises(RelayError, match="unknown fault"):
        UdpRelay(("127.0.0.1", 9), los=0.1)


@contextmanager
def tcp_echo() -> Iterator[tuple[str, int]]:
    """A loopback TCP echo server in a thread (one connection at a time, bounded)."""
    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.settimeout(0.05)
    stop = threading.Event()

    def run() -> None:
        deadline = time.monotonic() + 30.0
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = lsock.accept()
            except TimeoutError:
                continue
            conn.settimeout(0.05)
            with conn:
                while not stop.is_set() and time.monotonic() < deadline:
                    try:
                        data = conn.recv(65536)
                    except TimeoutError:
                        continue
                    except OSError:
                        break
                    if not data:
                        break
                    conn.sendall(data)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield lsock.getsockname()
    finally:
        stop.set()
        t.join(2.0)
        lsock.close()
        assert not t.is_alive(), "tcp echo thread did not stop"


def recv_exactly(sock: socket.socket, n: int, bound: float = 5.0) -> bytes:
    buf = bytearray()
    deadline = time.monotonic() + bound
    while len(buf) < n and time.monotonic() < deadline:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def test_tcp_bytes_intact_in_order_with_delay() -> None:
    payload = bytes(range(256)) * 1024  # 256 KiB, position-dependent so reordering would show
    with tcp_echo() as echo, TcpRelay(echo, seed=2, delay=0.02, jitter=0.01) as relay:
        with socket.create_connection(relay.address, timeout=5.0) as c:
            t0 = time.monotonic()
            c.sendall(b"x")
            assert recv_exactly(c, 1) == b"x"
            first_rtt = time.monotonic() - t0
            # Send in pieces while reading, so neither side blocks on a full buffer.
            got = bytearray()
            for i in range(0, len(payload), 16384):
                c.sendall(payload[i:i + 16384])
                got += recv_exactly(c, 16384)
    assert bytes(got) == payload
    assert first_rtt >= 0.02  # two legs of at least 10 ms each
    assert relay.count("bytes_forwarded", "up") == len(payload) + 1
    assert relay.count("bytes_forwarded", "down") == len(payload) + 1


def test_tcp_order_kept_with_many_chunks_in_flight() -> None:
    # 100 numbered 1 KiB writes 1 ms apart, each jittered by up to +-10 ms: without order
    # preservation later chunks would overtake earlier ones.
    pieces = [i.to_bytes(4, "big") * 256 for i in range(100)]
    with tcp_echo() as echo, TcpRelay(echo, seed=9, delay=0.015, jitter=0.01) as relay:
        with socket.create_connection(relay.address, timeout=5.0) as c:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            writer_error: list[BaseException] = []

            def write() -> None:
                try:
                    for piece in pieces:
                        c.sendall(piece)
                        time.sleep(0.001)
                except OSError as exc:  # reported to the main thread below
                    writer_error.append(exc)

            w = threading.Thread(target=write, daemon=True)
            w.start()
            got = recv_exactly(c, 100 * 1024)
            w.join(5.0)
    assert writer_error == []
    assert got == b"".join(pieces)
    assert relay.count("chunks", "up") > 1  # precondition: the writes really were separate chunks


def test_tcp_bandwidth_cap_slows_transfer() -> None:
    # 64 KiB up and 64 KiB back at 1 MiB/s per direction. The echo sends each chunk back as it
    # arrives, so the two directions overlap: the bound is one direction's 62.5 ms plus the
    # last chunk back (2 x 62.5 ms only when the upload arrived as one chunk). Uncapped, the
    # round trip takes about a millisecond here.
    payload = b"b" * 65536
    with tcp_echo() as echo, TcpRelay(echo, bandwidth=1024 * 1024) as relay:
        with socket.create_connection(relay.address, timeout=5.0) as c:
            t0 = time.monotonic()
            c.sendall(payload)
            assert recv_exactly(c, len(payload)) == payload
            elapsed = time.monotonic() - t0
        # (the relay counts a chunk after its sendall returns, so the last one may be counted a moment late)
        relay.wait_until(lambda r: r.count("bytes_forwarded", "down") >= len(payload))
        up, down = relay.count("bytes_forwarded", "up"), relay.count("bytes_forwarded", "down")
    assert (up, down) == (len(payload), len(payload))
    assert elapsed >= len(payload) / (1024 * 1024)


def test_tcp_cut_closes_and_partition_stalls_until_heal() -> None:
    with tcp_echo() as echo, TcpRelay(echo) as relay:
        with socket.create_connection(relay.address, timeout=2.0) as c:
            c.sendall(b"ping")
            assert recv_exactly(c, 4) == b"ping"
            relay.cut()
            assert c.recv(16) == b""  # EOF: the relay closed our connection
        assert relay.stats()["relay"]["cut"] == 1
        with socket.create_connection(relay.address, timeout=2.0) as c:
            relay.partition()
            c.sendall(b"held")
            c.settimeout(0.2)
            with pytest.raises(TimeoutError):
                c.recv(16)
            relay.heal()
            c.settimeout(2.0)
            assert recv_exactly(c, 4) == b"held"


def test_relay_stops_within_bound_when_body_raises() -> None:
    relay = UdpRelay(("127.0.0.1", free_port("udp")))
    with pytest.raises(KeyError):
        with relay:
            thread = relay._thread
            raise KeyError("test body failed")
    assert thread is not None and not thread.is_alive()


SLEEPER = "import time; print('ready', flush=True); time.sleep(60)"


def test_procs_killed_by_pid_when_body_raises(tmp_path: Path) -> None:
    started: list[int] = []
    with pytest.raises(ZeroDivisionError):
        with ProcessGroup(tmp_path, term_timeout=2.0) as group:
            p = group.python(SLEEPER, name="sleeper")
            p.wait_for_line(r"^ready$", timeout=5.0)
            started.append(p.pid)
            assert pid_alive(p.pid)
            raise ZeroDivisionError
    assert len(started) == 1
    assert not pid_alive(started[0])
    assert (tmp_path / "sleeper.stdout").read_text() == "ready\n"


def test_procs_sigkill_after_bound_when_sigterm_ignored(tmp_path: Path) -> None:
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)")
    with ProcessGroup(tmp_path, term_timeout=0.3) as group:
        p = group.python(code)
        p.wait_for_line("ready", timeout=5.0)
    assert p.popen.returncode == -9
    assert not pid_alive(p.pid)


def test_procs_fixture_and_pythonpath(procs: ProcessGroup, tmp_path: Path) -> None:
    marker = tmp_path / "root.txt"
    p = procs.python(
        "import sys, tests.harness.procs as m, pathlib;"
        f"pathlib.Path({str(marker)!r}).write_text(str(m.REPO_ROOT))"
    )
    procs_root = p.wait_for_file(marker, timeout=5.0).read_text()
    assert procs_root == str(Path(__file__).resolve().parents[1])


def test_procs_wait_for_line_reports_early_exit(procs: ProcessGroup) -> None:
    p = procs.python("import sys; print('boom', file=sys.stderr); sys.exit(3)")
    with pytest.raises(ProcError, match=r"exited with 3(.|\n)*boom"):
        p.wait_for_line("ready", timeout=5.0)


def test_free_port_is_bindable_on_loopback() -> None:
    for kind, stype in (("udp", socket.SOCK_DGRAM), ("tcp", socket.SOCK_STREAM)):
        port = free_port(kind)
        with socket.socket(socket.AF_INET, stype) as s:
            s.bind(("127.0.0.1", port))
            assert s.getsockname()[1] == port


def test_procs_kill_reaches_grandchildren(tmp_path: Path) -> None:
    # A daemon that forks helpers: they share its process group, so they go with it.
    code = ("import subprocess, sys, time;"
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            "print('child', c.pid, flush=True); time.sleep(60)")
    with ProcessGroup(tmp_path, term_timeout=2.0) as group:
        p = group.python(code)
        child = int(p.wait_for_line(r"^child (\d+)$", timeout=5.0).group(1))
        assert pid_alive(child)
    # The grandchild is reparented to init and reaped there; poll briefly for that.
    deadline = time.monotonic() + 2.0
    while pid_alive(child) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not pid_alive(child)


def test_relay_thread_ends_by_itself_after_max_lifetime() -> None:
    relay = UdpRelay(("127.0.0.1", free_port("udp")), max_lifetime=0.1)
    relay.start()
    try:
        assert relay._thread is not None
        relay._thread.join(1.0)
        assert not relay._thread.is_alive()
    finally:
        relay.stop()


def test_udp_relay_on_ipv6_loopback() -> None:
    try:
        srv = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        srv.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no ::1 on this host: {exc}")
    with srv, UdpRelay(srv.getsockname()[:2], listen_host="::1") as relay, \
            socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as c:
        c.sendto(b"hi", relay.address)
        srv.settimeout(2.0)
        data, src = srv.recvfrom(64)
        assert data == b"hi"
        srv.sendto(b"back", src)
        c.settimeout(2.0)
        assert c.recv(64) == b"back"


def test_tcp_target_down_closes_client_and_counts() -> None:
    with TcpRelay(("127.0.0.1", free_port("tcp"))) as relay:
        with socket.create_connection(relay.address, timeout=2.0) as c:
            c.settimeout(2.0)
            assert c.recv(16) == b""  # the relay could not reach the target and closed us
        assert relay.wait_until(lambda r: r.stats()["relay"].get("connect_errors") == 1)


def test_tcp_relay_refuses_datagram_faults() -> None:
    with pytest.raises(RelayError, match="byte stream"):
        TcpRelay(("127.0.0.1", 9), loss=0.1)


def test_tcp_partition_holds_new_connections_until_heal() -> None:
    with tcp_echo() as echo, TcpRelay(echo) as relay:
        relay.partition()
        # The kernel completes the handshake from the backlog; the relay does not accept yet.
        with socket.create_connection(relay.address, timeout=2.0) as c:
            c.sendall(b"late")
            c.settimeout(0.2)
            with pytest.raises(TimeoutError):
                c.recv(16)
            assert relay.stats()["relay"].get("accepted", 0) == 0
            relay.heal()
            c.settimeout(2.0)
            assert recv_exactly(c, 4) == b"late"
        assert relay.stats()["relay"]["accepted"] == 1


def test_relays_fixture_stops_everything(relays: Relays) -> None:
    with udp_echo() as (echo, _), client() as c:
        a = relays.udp(echo, delay=0.01)
        b = relays.udp(a.address, loss=1.0)  # relays chain: b drops everything before a
        c.sendto(b"x", a.address)
        c.settimeout(2.0)
        assert c.recv(16) == b"x"
        c.sendto(b"y", b.address)
        assert drain(c) == []
        threads = [a._thread, b._thread]
        relays.stop_all()
    assert all(t is not None and not t.is_alive() for t in threads)


def test_relay_start_on_taken_port_raises_and_leaks_nothing() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        relay = UdpRelay(("127.0.0.1", 9), listen_port=taken.getsockname()[1])
        with pytest.raises(OSError, match="[Aa]ddress already in use"):
            relay.start()
        assert relay._thread is None
        assert relay._wake_w is not None and relay._wake_w.fileno() == -1  # closed
