"""Reflection: gossip naming ghost members at someone else's address, or an IndirectPing with an
address of the sender's choosing, must not make a node send traffic there (issue 9)."""

from __future__ import annotations

import random

from mesh.membership import MemberState, NodeMeta
from mesh.membership.config import LAN
from mesh.membership.messages import Alive, IndirectPing
from mesh.node import FIRST_CONTACT_BACKOFF, FIRST_CONTACT_WINDOW, NodeCore
from mesh.wire import decode, encode, encode_broadcast
from tests.membership_driver import MiniNet

VICTIM = "192.0.2.99:7946"  # nobody of the mesh: TEST-NET-1


def _node(name: str, seeds: tuple[str, ...] = ()) -> NodeCore:
    return NodeCore(name, f"10.0.0.{ord(name[0]) - 96}:7946", NodeMeta(), LAN, random.Random(f"r:{name}"), now=0.0, seeds=seeds)


def _hear_from(a: NodeCore, name: str, inc: int, now: float) -> list:
    """``name`` (authenticated, from its own address) tells ``a`` it is alive."""
    addr = f"10.0.0.{ord(name[0]) - 96}:7946"
    return a.receive(addr, encode(name, Alive(inc, name, addr, NodeMeta())), now, peer=name)


def _attack(a: NodeCore, now: float, inc: int, ghosts: int) -> None:
    """Admitted node e gossips ``ghosts`` members, all at the victim's address (re-asserting them as alive)."""
    updates = [encode_broadcast(Alive(inc, f"ghost{i}", VICTIM, NodeMeta())) for i in range(ghosts)]
    for i in range(0, len(updates), 15):
        env = encode("e", Alive(inc, "e", "10.0.0.5:7946", NodeMeta()), updates[i:i + 15])
        a.receive("10.0.0.5:7946", env, now, peer="e")


def _to_victim(outs: list) -> int:
    return sum(1 for o in outs if o.dst == VICTIM)


def test_ghost_members_at_a_victim_address_get_first_contacts_with_backoff_not_probes() -> None:
    a = _node("a")
    for t, who in enumerate("bcde"):
        _hear_from(a, who, 1, 0.1 * t)
    victim_times: list[float] = []
    honest_dsts: set[str] = set()
    windows: list[float] = []
    now, inc = 1.0, 1
    while now < 121.0:
        if int(now * 10) % 50 == 0:  # every 5 s the attacker re-asserts 200 ghosts (refuting any suspicion)
            inc += 1
            _attack(a, now, inc, 200)
            for who in "bcde":  # the honest members keep talking to a (so they stay vouched and alive)
                _hear_from(a, who, 1, now)
        before = a.counters.get("first_contacts", 0)
        outs = a.tick(now)
        victim_times += [now] * _to_victim(outs)
        honest_dsts.update(o.dst for o in outs if o.dst != VICTIM)
        if a.counters.get("first_contacts", 0) > before:
            windows.append(now)
        now = round(now + 0.1, 1)
    # 200 ghosts are most of the table: without the guard a probes one of them nearly every probe
    # interval and gossips to them, so the victim hears from a in almost every second after the
    # attack (in all 116 seconds on the old code). With it, only inside trial windows: 3 s each,
    # then 5, 10, 20, 40, 80 s of silence (in the daemon one handshake per window: the transport
    # dials an address once and queues what is sealed meanwhile).
    seconds = {int(t) for t in victim_times}
    assert len(seconds) <= 5 * FIRST_CONTACT_WINDOW + 5, sorted(seconds)
    assert 5.0 <= windows[0] < 5.5  # the first attack is at 5 s
    assert all(any(w <= t < w + FIRST_CONTACT_WINDOW for w in windows) for t in victim_times)
    gaps = [b - a_ for a_, b in zip(windows, windows[1:])]
    want = [FIRST_CONTACT_WINDOW + FIRST_CONTACT_BACKOFF * 2**k for k in range(len(gaps))]
    assert len(gaps) == 4 and all(w <= g < w + 0.25 for g, w in zip(gaps, want)), (gaps, want)
    assert a.counters["contacts_refused"] > 0
    # The honest members (vouched by their own messages) are still contacted.
    assert honest_dsts == {f"10.0.0.{i}:7946" for i in (2, 3, 4, 5)}
    assert a.vouched("b") == "10.0.0.2:7946"


def test_indirect_ping_to_an_address_of_the_requesters_choosing_is_refused() -> None:
    a = _node("a")
    for t, who in enumerate("bc"):
        _hear_from(a, who, 1, 0.1 * t)
    # b asks a to probe c, but at the victim's address (or a name nobody has): a sends nothing.
    out = a.receive("10.0.0.2:7946", encode("b", IndirectPing(7, "c", VICTIM, True)), 1.0, peer="b")
    out += a.receive("10.0.0.2:7946", encode("b", IndirectPing(8, "nobody", VICTIM, True)), 1.0, peer="b")
    assert _to_victim(out) == 0 and _to_victim(a.tick(1.5)) == 0
    assert a.counters["indirect_pings_refused"] == 2
    # The genuine request (c at c's address) is relayed.
    out = a.receive("10.0.0.2:7946", encode("b", IndirectPing(9, "c", "10.0.0.3:7946", True)), 2.0, peer="b")
    assert [o.dst for o in out] == ["10.0.0.3:7946"] and decode(out[0].data).msg.target == "c"


def test_an_honest_mesh_never_holds_a_message_back() -> None:
    names = "abcdef"
    nodes = {n: NodeCore(n, n, NodeMeta(), LAN, random.Random(f"h:{n}"), now=0.0, seeds=("a",) if n != "a" else ())
             for n in names}
    net = MiniNet(nodes)
    net.start()
    net.run_until(90.0)
    for n, core in nodes.items():
        assert core.swim.view() == {m: MemberState.ALIVE for m in names}, n
        assert core.counters["contacts_refused"] == 0, n
        # Every member was learned through gossip or push-pull and is vouched by its own messages.
        assert all(core.vouched(m) == m for m in names if m != n), (n, core._vouched)
    assert sum(c.counters["first_contacts"] for c in nodes.values()) <= len(names) * (len(names) - 1)


def test_the_simulator_mode_skips_the_guard() -> None:
    a = _node("a")
    a.name_outgoing = False  # the simulator: its network authenticates, addresses are names
    _attack(a, 1.0, 2, 50)
    sent = sum(_to_victim(a.tick(1.0 + 0.1 * i)) for i in range(200))
    assert sent > 10 and a.counters["first_contacts"] == 0


def test_a_completed_handshake_vouches_and_the_responder_never_amplifies() -> None:
    from tests.transport_helpers import ident, transport

    told: list[tuple[str, object]] = []
    a, b = transport("a"), transport("b", 1)
    a.on_established = lambda peer, addr: told.append(("a", peer, addr))
    b.on_established = lambda peer, addr: told.append(("b", peer, addr))
    (m1,) = a.connect("b-addr", 0.0)
    _, (m2,) = b.receive_datagram("a-addr", m1.data, 0.0)
    # Amplification <= 1: the only datagram sent to an address not yet authenticated (message 2,
    # possibly to a spoofed source) is no larger than the message 1 that asked for it.
    assert len(m2.data) <= len(m1.data)
    _, (m3,) = a.receive_datagram("b-addr", m2.data, 0.0)
    _, (confirm,) = b.receive_datagram("a-addr", m3.data, 0.0)
    a.receive_datagram("b-addr", confirm.data, 0.0)
    assert told == [("b", ident("a").node_id, "a-addr"), ("a", ident("b").node_id, "b-addr")]
    # The node core takes the report as proof of the member's address.
    core = _node("c")
    _hear_from(core, "b", 1, 0.0)
    core._vouched.clear()
    core.vouch("b", "10.0.0.9:1")  # not the address membership holds for b: ignored
    assert core.vouched("b") is None
    core.vouch("b", "10.0.0.2:7946")
    assert core.vouched("b") == "10.0.0.2:7946"


def test_a_member_behind_a_relay_is_reached_over_its_session() -> None:
    """b's messages reach a from another address than b advertises (NAT, a relay): a never vouches
    b at its advertised address, but the driver holds a session with b, so nothing is held back."""
    a = _node("a")
    a.receive("10.0.0.77:40000", encode("b", Alive(1, "b", "10.0.0.2:7946", NodeMeta())), 0.0, peer="b")
    assert a.vouched("b") is None
    a.session_with = lambda node, reliable: node == "b"
    sent = 0
    for i in range(1, 600):
        outs = a.tick(0.1 * i)
        sent += sum(1 for o in outs if o.dst == "10.0.0.2:7946")
    assert sent >= 10 and a.counters["contacts_refused"] == 0 and a.counters["first_contacts"] == 0
    # Without the session the same member gets only first-contact trials.
    a.session_with = lambda node, reliable: False
    for i in range(600, 1200):
        a.tick(0.1 * i)
    assert a.counters["contacts_refused"] > 0 and a.counters["first_contacts"] >= 1
