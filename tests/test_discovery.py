"""mDNS discovery (mesh/discovery.py): record validation without any network, and real discovery
between processes in network namespaces made by the test (tests/harness/netns.py).

zeroconf is never started on this host's interfaces: the unit tests replace ``Zeroconf`` with a fake
that fails the test if anything tries to open sockets, and the multicast tests run inside namespaces.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from zeroconf import ServiceInfo, ServiceStateChange

import mesh.discovery as discovery
from mesh.discovery import SERVICE_TYPE, MdnsDiscovery, MdnsError, interface_ipv4, parse_peer
from mesh.errors import MeshError
from tests.harness.netns import NetnsLab, namespaces, netns_available
from tests.harness.procs import Proc, pid_alive

SELF = "00000000000000aa"
PEER = "0123456789abcdef"


def record(node_id: object = PEER, *, v: object = "1", port: object = 7946,
           addresses: list[str] | None = None, name: str = "wmx-peer") -> ServiceInfo:
    """A real zeroconf ServiceInfo as a peer would advertise it (building one opens no socket)."""
    props: dict[str, Any] = {}
    if node_id is not None:
        props["id"] = node_id
    if v is not None:
        props["v"] = v
    packed = [socket.inet_pton(socket.AF_INET6 if ":" in a else socket.AF_INET, a)
              for a in (["10.213.1.7"] if addresses is None else addresses)]
    return ServiceInfo(SERVICE_TYPE, f"{name}.{SERVICE_TYPE}", port=port, addresses=packed, properties=props)  # type: ignore[arg-type]


@dataclass
class FakeRecord:
    """A ServiceInfo-like record with fields a real ServiceInfo would refuse to hold."""

    name: str = f"odd.{SERVICE_TYPE}"
    port: Any = 7946
    properties: Any = field(default_factory=lambda: {b"id": PEER.encode(), b"v": b"1"})
    addresses: Any = field(default_factory=lambda: [bytes([10, 0, 0, 9])])


class NoZeroconf:
    """Stands in for zeroconf.Zeroconf in unit tests: opening sockets on the host is a test failure."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("a unit test tried to start zeroconf on the host")


@pytest.fixture
def no_host_mdns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discovery, "Zeroconf", NoZeroconf)


@pytest.fixture
def disc(no_host_mdns: None) -> tuple[MdnsDiscovery, list[tuple[str, str]]]:
    """An MdnsDiscovery on ``lo`` that is never started, and the list its on_found appends to."""
    found: list[tuple[str, str]] = []
    return MdnsDiscovery("lo", SELF, 7946, on_found=lambda nid, addr: found.append((nid, addr))), found


# --- validation ---------------------------------------------------------------------------------


def test_a_valid_record_gives_id_and_host_port() -> None:
    assert parse_peer(record()) == (PEER, "10.213.1.7:7946")


def test_the_first_usable_ipv4_address_is_chosen() -> None:
    rec = record(addresses=["0.0.0.0", "224.0.0.251", "fe80::1", "255.255.255.255", "127.0.0.1", "10.0.0.2", "10.0.0.3"])
    assert parse_peer(rec) == (PEER, "10.0.0.2:7946")
    assert parse_peer(record(addresses=["127.0.0.5"]), allow_loopback=True) == (PEER, "127.0.0.5:7946")


@pytest.mark.parametrize(("rec", "message"), [
    (record(node_id=None), "TXT id must be 16 lowercase hex"),
    (record(node_id=PEER.upper()), "TXT id must be 16 lowercase hex"),
    (record(node_id=PEER[:15]), "TXT id must be 16 lowercase hex"),
    (record(node_id=PEER + "0"), "TXT id must be 16 lowercase hex"),
    (record(node_id="0123456789abcdeg"), "TXT id must be 16 lowercase hex"),
    (record(node_id="é" * 8), "TXT id must be 16 lowercase hex"),
    (record(v=None), "unsupported TXT version"),
    (record(v="2"), "unsupported TXT version"),
    (record(port=0), "port must be 1..65535"),
    (record(addresses=[]), "no usable IPv4 address"),
    (record(addresses=["fe80::1"]), "no usable IPv4 address"),
    (record(addresses=["127.0.0.1"]), "no usable IPv4 address"),
    (record(addresses=["224.0.0.251", "0.0.0.0", "255.255.255.255"]), "no usable IPv4 address"),
    (FakeRecord(port=65536), "port must be 1..65535"),
    (FakeRecord(port=None), "port must be 1..65535"),
    (FakeRecord(port=True), "port must be 1..65535"),
    (FakeRecord(properties=None), "TXT record missing"),
    (FakeRecord(properties={b"id": None, b"v": b"1"}), "TXT id must be 16 lowercase hex"),
    (FakeRecord(addresses=[b"\x0a\x00\x00"]), "no usable IPv4 address"),
])
def test_invalid_records_are_refused_with_the_reason(rec: Any, message: str) -> None:
    with pytest.raises(MdnsError, match=message):
        parse_peer(rec)


def test_mdns_error_is_a_mesh_error() -> None:
    assert issubclass(MdnsError, MeshError)


# --- the handler: counters and callback ---------------------------------------------------------


def test_a_valid_peer_reaches_on_found_and_is_counted(disc: Any) -> None:
    d, found = disc
    d.handle_record(record())
    assert found == [(PEER, "10.213.1.7:7946")]
    assert d.counters == {"mdns_found": 1, "mdns_rejected": 0, "mdns_errors": 0}
    assert d.peers() == {PEER: "10.213.1.7:7946"}


def test_this_node_s_own_record_is_ignored(disc: Any) -> None:
    d, found = disc
    d.handle_record(record(node_id=SELF))
    assert found == []
    assert d.counters == {"mdns_found": 0, "mdns_rejected": 0, "mdns_errors": 0}
    assert d.peers() == {}


def test_invalid_records_are_counted_and_never_reach_on_found(disc: Any) -> None:
    d, found = disc
    for rec in (record(node_id="XYZ"), record(v="9"), FakeRecord(port=-1), FakeRecord(addresses=None),
                FakeRecord(properties={b"id": b"\xff" * 16, b"v": b"1"})):
        d.handle_record(rec)
    assert found == []
    assert d.counters == {"mdns_found": 0, "mdns_rejected": 5, "mdns_errors": 0}


def test_a_failing_callback_is_counted_and_does_not_escape(no_host_mdns: None) -> None:
    def boom(node_id: str, addr: str) -> None:
        raise RuntimeError("daemon queue full")

    d = MdnsDiscovery("lo", SELF, 7946, on_found=boom)
    d.handle_record(record())
    assert d.counters == {"mdns_found": 1, "mdns_rejected": 0, "mdns_errors": 1}


class FakeZc:
    """The part of Zeroconf the browser handler uses: get_service_info."""

    def __init__(self, answer: object) -> None:
        self.answer = answer

    def get_service_info(self, type_: str, name: str, timeout: int = 3000) -> Any:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_browser_events_resolve_report_and_forget_peers(disc: Any) -> None:
    d, found = disc
    name = f"wmx-peer.{SERVICE_TYPE}"
    d._on_change(FakeZc(record()), SERVICE_TYPE, name, ServiceStateChange.Added)
    d._on_change(FakeZc(record(addresses=["10.213.1.8"])), SERVICE_TYPE, name, ServiceStateChange.Updated)
    assert found == [(PEER, "10.213.1.7:7946"), (PEER, "10.213.1.8:7946")]
    assert d.peers() == {PEER: "10.213.1.8:7946"}
    d._on_change(FakeZc(None), SERVICE_TYPE, name, ServiceStateChange.Removed)
    assert d.peers() == {}
    # Our own service name is never looked up (the answer would fail the test if it were).
    d._on_change(FakeZc(AssertionError("looked up self")), SERVICE_TYPE, d.name, ServiceStateChange.Added)
    assert d.counters == {"mdns_found": 2, "mdns_rejected": 0, "mdns_errors": 0}


def test_lookup_timeouts_and_failures_are_counted_as_errors(disc: Any) -> None:
    d, found = disc
    d._on_change(FakeZc(None), SERVICE_TYPE, f"a.{SERVICE_TYPE}", ServiceStateChange.Added)
    d._on_change(FakeZc(OSError("socket closed")), SERVICE_TYPE, f"b.{SERVICE_TYPE}", ServiceStateChange.Updated)
    assert found == []
    assert d.counters == {"mdns_found": 0, "mdns_rejected": 0, "mdns_errors": 2}


# --- interface selection ------------------------------------------------------------------------


@pytest.mark.parametrize("iface", ["", "a/b", "x" * 16, "eth 0", "..", None])
def test_invalid_interface_names_are_refused(iface: Any) -> None:
    with pytest.raises(MdnsError, match="invalid interface name"):
        interface_ipv4(iface)


def test_a_missing_interface_is_refused() -> None:
    with pytest.raises(MdnsError, match="no network interface named 'wmxnope0'"):
        interface_ipv4("wmxnope0")


def test_the_interface_address_is_read_from_the_kernel() -> None:
    assert interface_ipv4("lo") == "127.0.0.1"


@pytest.mark.parametrize(("node_id", "port", "message"), [
    ("ABCDEF0123456789", 7946, "node id must be"), (SELF, 0, "port must be"), (SELF, 70000, "port must be"),
])
def test_the_constructor_refuses_bad_id_and_port(no_host_mdns: None, node_id: str, port: int, message: str) -> None:
    with pytest.raises(MdnsError, match=message):
        MdnsDiscovery("lo", node_id, port, on_found=lambda *_: None)


def test_start_binds_zeroconf_to_the_interface_address_only(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    class RecordingZeroconf:
        def __init__(self, **kwargs: Any) -> None:
            calls.append(kwargs)
            self.registered: list[ServiceInfo] = []
            self.closed = 0

        def register_service(self, info: ServiceInfo) -> None:
            self.registered.append(info)

        def close(self) -> None:
            self.closed += 1

    class FakeBrowser:
        def __init__(self, zc: Any, type_: str, handlers: list[Any]) -> None:
            self.type_ = type_
            self.cancelled = 0

        def cancel(self) -> None:
            self.cancelled += 1

    monkeypatch.setattr(discovery, "Zeroconf", RecordingZeroconf)
    monkeypatch.setattr(discovery, "ServiceBrowser", FakeBrowser)
    d = MdnsDiscovery("lo", SELF, 7946, on_found=lambda *_: None)
    d.start()
    zc, browser = d._zc, d._browser
    assert calls == [{"interfaces": ["127.0.0.1"], "ip_version": discovery.IPVersion.V4Only, "use_asyncio": False}]
    assert browser.type_ == "_wasmatrix._udp.local."
    info = zc.registered[0]
    assert (info.type, info.name, info.port) == ("_wasmatrix._udp.local.", f"wmx-{SELF}._wasmatrix._udp.local.", 7946)
    assert info.properties == {b"id": SELF.encode(), b"v": b"1"}
    assert info.parsed_addresses() == ["127.0.0.1"]
    d.close()
    d.close()
    assert (zc.closed, browser.cancelled) == (1, 1)
    with pytest.raises(MdnsError, match="closed"):
        d.start()


# --- real processes in network namespaces -------------------------------------------------------

_NETNS_REASON = netns_available()
netns = pytest.mark.skipif(_NETNS_REASON is not None, reason=f"netns test: {_NETNS_REASON}")
PORT = 7946
DISCOVERY_BOUND = 10.0


@pytest.fixture
def lab(tmp_path: Any) -> Iterator[NetnsLab]:
    """Three namespaces on a bridge; afterwards (pass or fail) none of them may remain."""
    made = NetnsLab(3, workdir=tmp_path)
    try:
        with made:
            yield made
    finally:
        left = set(made.names + [made.switch]) & set(namespaces())
        assert left == set(), f"namespaces left behind: {sorted(left)}"


def node_id(i: int) -> str:
    return f"{0xA0 + i:016x}"


def start_probe(lab: NetnsLab, i: int, *extra: str, iface: str = "veth0") -> Proc:
    return lab.run(i, [sys.executable, "-m", "tests.harness.mdns_probe", "--iface", iface,
                       "--node-id", node_id(i), "--port", str(PORT), "--lifetime", "60", *extra], name=f"probe{i}")


def events(proc: Proc) -> list[dict[str, Any]]:
    return [json.loads(line) for line in proc.stdout().splitlines() if line.strip()]


def found_by(proc: Proc) -> dict[str, tuple[str, float]]:
    """Peers a probe reported: node id -> (addr, first wall time)."""
    out: dict[str, tuple[str, float]] = {}
    for e in events(proc):
        if e["event"] == "found" and e["id"] not in out:
            out[e["id"]] = (e["addr"], e["wall"])
    return out


def wait_until_found(probes: dict[int, Proc], want: dict[int, set[int]], bound: float) -> None:
    deadline = time.monotonic() + bound
    while True:
        have = {i: {k for k in found_by(p)} for i, p in probes.items()}
        if all({node_id(j) for j in want[i]} <= have[i] for i in want):
            return
        for p in probes.values():
            assert p.popen.poll() is None, f"{p.name} exited: {p.stdout()}\n{p.stderr()[-2000:]}"
        if time.monotonic() > deadline:
            pytest.fail(f"not discovered within {bound}s: have {have}\n"
                        + "\n".join(f"{p.name}: {p.stderr()[-1500:]}" for p in probes.values()))
        time.sleep(0.05)


@netns
@pytest.mark.netns
def test_three_namespaces_discover_each_other_with_no_seed(lab: NetnsLab) -> None:
    launched = time.time()
    probes = {i: start_probe(lab, i) for i in range(3)}
    wait_until_found(probes, {i: {j for j in range(3) if j != i} for i in range(3)}, DISCOVERY_BOUND)
    for i, p in probes.items():
        found = found_by(p)
        assert {k: addr for k, (addr, _) in found.items()} == {
            node_id(j): f"{lab.addresses[j]}:{PORT}" for j in range(3) if j != i}
    slowest = max(wall for p in probes.values() for _, wall in found_by(p).values()) - launched
    print(f"\nmdns: all 3 namespaces discovered each other {slowest:.2f}s after launch")

    lab.link_down(2)
    assert [lab.link_state(i) for i in range(3)] == ["UP", "UP", "DOWN"]
    lab.group.stop_all()
    for p in probes.values():
        last = events(p)[-1]
        assert last["event"] == "stopped" and last["counters"]["mdns_rejected"] == 0, p.stdout()
        assert last["counters"]["mdns_found"] >= 2


@netns
@pytest.mark.netns
@pytest.mark.slow
def test_a_partitioned_node_is_found_after_its_link_comes_back(lab: NetnsLab) -> None:
    lab.link_down(2)
    probes = {i: start_probe(lab, i, "--refresh", "1") for i in range(3)}
    wait_until_found(probes, {0: {1}, 1: {0}}, DISCOVERY_BOUND)
    time.sleep(2.5)  # two more refresh rounds while node 2 stays cut off
    assert node_id(2) not in found_by(probes[0]) and node_id(2) not in found_by(probes[1])
    assert found_by(probes[2]) == {}
    healed = time.time()
    lab.link_up(2)
    wait_until_found(probes, {i: {j for j in range(3) if j != i} for i in range(3)}, DISCOVERY_BOUND)
    slowest = max(found_by(probes[i])[node_id(j)][1] for i in range(3) for j in range(3) if j != i
                  and (i == 2 or j == 2)) - healed
    print(f"\nmdns: partition healed, all found again {slowest:.2f}s after link up")


@netns
@pytest.mark.netns
def test_discovery_refuses_an_interface_without_ipv4_or_missing(lab: NetnsLab) -> None:
    # A veth pair with no address (this kernel has no dummy module); it lives and dies with the namespace.
    lab.check_output(0, ["ip", "link", "add", "nov4", "type", "veth", "peer", "name", "nov4p"])
    lab.check_output(0, ["ip", "link", "set", "nov4", "up"])
    for iface, message in (("nov4", "interface 'nov4' has no IPv4 address"),
                           ("eth9", "no network interface named 'eth9'")):
        p = start_probe(lab, 0, iface=iface)
        assert p.popen.wait(10) == 2
        assert events(p) == [{"event": "error", "error": message + (
            "; mDNS needs one" if iface == "nov4" else " (see `ip link`)")}]


@netns
@pytest.mark.netns
def test_the_lab_removes_namespaces_and_processes_when_the_test_raises(tmp_path: Any) -> None:
    with pytest.raises(RuntimeError, match="test body failed"):
        with NetnsLab(2, workdir=tmp_path) as lab:
            names = [*lab.names, lab.switch]
            assert set(names) <= set(namespaces())
            sleeper = lab.run(1, [sys.executable, "-c", "import time; time.sleep(60)"])
            raise RuntimeError("test body failed")
    assert set(names) & set(namespaces()) == set()
    assert not pid_alive(sleeper.pid)
    assert sleeper.popen.poll() is not None
