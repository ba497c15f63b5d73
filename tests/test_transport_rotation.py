"""Rotating the mesh secret without downtime: several accepted PSKs, one to dial with (docs/TRANSPORT.md).

During a rotation window, nodes holding the new mesh file dial with the *previous* secret (every
node still knows it) and accept both; nodes still holding the old file dial with and accept the old
one. When the window closes, new-file nodes dial with and accept the new secret only, and an
old-file node is shut out.
"""

from __future__ import annotations

import pytest

from mesh.errors import ConfigError
from mesh.transport import Delivered, Outgoing, SecureTransport, StreamSession, TransportConfig, TransportError
from mesh.transport.stream import Closed, Established
from transport_helpers import Net, admit_all, ident, transport

OLD = bytes(range(32))
NEW = bytes(range(100, 132))
STRANGER = bytes(range(200, 232))


def in_window(name: str, seed: int) -> SecureTransport:
    """A node holding the rotated file while the window is open."""
    t = transport(name, seed, psk=OLD)
    t.set_psks(OLD, [NEW, OLD])
    return t


def talk(net: Net, a: str, b: str, msg: bytes, ik: bool, until: float) -> bool:
    """Dial ``b`` from ``a`` (IKpsk2 if ``ik``), send ``msg``; True if ``b`` got it by ``until``."""
    ta, tb = net.nodes[a], net.nodes[b]
    pub = tb.identity.public
    net.send(a, ta.connect(b, net.now, expected_node_id=pub.node_id, expected_x25519=pub.x25519_public if ik else None))
    net.send(a, ta.seal_datagram(pub.node_id, msg, net.now, addr=b))
    net.run(until)
    return Delivered(ta.identity.node_id, msg) in net.delivered[b]


def test_xx_responder_accepts_each_listed_psk_and_counts_the_alternate() -> None:
    for send, alternate in ((NEW, 0), (OLD, 1)):
        a = transport("a", 0, psk=send)
        b = transport("b", 1, psk=NEW)
        b.set_psks(NEW, [NEW, OLD])
        net = Net({"a": a, "b": b})
        assert talk(net, "a", "b", b"hi", ik=False, until=5.0)
        assert b.counters["handshake_psk_failures"] == 0
        assert b.counters["handshake_psk_alternate"] == alternate
    a = transport("a", 0, psk=STRANGER)
    b = transport("b", 1, psk=NEW)
    b.set_psks(NEW, [NEW, OLD])
    (m1,) = a.connect("b", 0.0)
    assert b.receive_datagram("a", m1.data, 0.0) == ([], [])  # silence, no state
    assert b.counters["handshake_psk_failures"] == 1 and b.pending_handshakes == 0


@pytest.mark.parametrize("ik", [False, True])
def test_old_file_and_new_file_nodes_interoperate_during_the_window(ik: bool) -> None:
    nodes = {"old1": transport("old1", 1, psk=OLD), "old2": transport("old2", 2, psk=OLD),
             "new1": in_window("new1", 3), "new2": in_window("new2", 4)}
    net = Net(nodes, seed=7)
    for a in sorted(nodes):
        for b in sorted(nodes):
            if a != b:
                assert talk(net, a, b, f"{a}->{b}".encode(), ik, net.now + 5.0), f"{a} -> {b}"
    # Everyone dials with the old secret, so every handshake is a first-choice match and IKpsk2
    # (whose PSK enters only at message 2) never has to fall back to XX.
    assert all(t.counters["handshake_psk_failures"] == 0 for t in nodes.values())
    assert all(t.counters["handshake_invalid"] == 0 for t in nodes.values())
    assert all(t.counters["handshake_inits_sent"] == (0 if ik else 3) for t in nodes.values())


@pytest.mark.parametrize("ik", [False, True])
def test_after_the_window_an_old_file_node_is_shut_out(ik: bool) -> None:
    new1, new2 = in_window("new1", 3), in_window("new2", 4)
    new1.set_psks(NEW)
    new2.set_psks(NEW)
    old = transport("old", 1, psk=OLD)
    net = Net({"old": old, "new1": new1, "new2": new2}, seed=3)
    assert talk(net, "new1", "new2", b"fresh", ik, 5.0)
    assert not talk(net, "old", "new1", b"let me in", ik, 20.0)
    assert not talk(net, "new2", "old", b"hello?", ik, 40.0)
    assert old.peers() == [] and new1.peers() == [new2.identity.node_id]
    assert old.counters["handshake_timeouts"] >= 1 and new2.counters["handshake_timeouts"] >= 1
    # XX from the old node is refused at message 1 (silence); its IK message 2 does not authenticate.
    assert new1.counters["handshake_psk_failures"] >= 1
    if ik:
        assert old.counters["handshake_invalid"] >= 1


def test_ik_falls_back_to_xx_when_the_two_ends_dial_with_different_secrets() -> None:
    # Clocks a little apart at the end of the window: a already dials with the new secret, b still
    # dials with the old one and accepts both. IKpsk2 mixes the PSK at message 2, which the
    # responder writes with its own dial secret (it cannot tell which one the initiator holds), so
    # those attempts fail at the initiator; the XXpsk0 fallback lets b try both on message 1.
    a = transport("a", 0, psk=NEW)
    b = in_window("b", 1)
    net = Net({"a": a, "b": b})
    assert talk(net, "a", "b", b"hi", ik=True, until=10.0)
    assert a.counters["handshake_ik_inits_sent"] == 2 and a.counters["handshake_invalid"] == 2
    assert a.counters["handshake_inits_sent"] == 1 and b.counters["handshake_psk_alternate"] == 1


def test_sessions_made_before_the_switch_end_by_reject_after() -> None:
    cfg = TransportConfig()
    old = transport("old", 1, psk=OLD, config=cfg)
    new = in_window("new", 2)
    net = Net({"old": old, "new": new})
    assert talk(net, "old", "new", b"in window", ik=False, until=2.0)
    new.set_psks(NEW)  # the window closed at new
    # The established session keeps working (no downtime at the switch) ...
    net.send("old", old.seal_datagram(new.identity.node_id, b"after switch", net.now))
    net.run(net.now + 1.0)
    assert Delivered(old.identity.node_id, b"after switch") in net.delivered["new"]
    # ... but no rekey can succeed, and at reject_after_seconds the old node is out.
    t = net.now
    while t < cfg.reject_after_seconds + 10:
        t += 5.0
        net.send("old", old.seal_datagram(new.identity.node_id, b"x", net.now))
        net.run(t)
    assert old.counters["rekeys_started"] >= 1
    assert new.identity.node_id not in old.peers() and old.identity.node_id not in new.peers()
    late = net.now
    net.send("old", old.seal_datagram(new.identity.node_id, b"too late", late))
    net.run(late + 20.0)
    assert Delivered(old.identity.node_id, b"too late") not in net.delivered["new"]


def test_set_psks_refuses_bad_settings() -> None:
    t = transport("a")
    with pytest.raises(ConfigError, match="one of the accepted"):
        t.set_psks(NEW, [OLD])
    with pytest.raises(ConfigError, match="at most 2"):
        t.set_psks(OLD, [OLD, NEW, STRANGER])
    with pytest.raises(ConfigError, match="32 bytes"):
        t.set_psks(OLD, [OLD, b"short"])
    t.set_psks(OLD, [NEW, OLD, NEW])  # duplicates collapse; the dial secret is tried first
    assert t.psk == OLD and t.accepted_psks == (OLD, NEW)
    with pytest.raises(TransportError, match="one of the accepted"):
        StreamSession(ident("a"), NEW, admit_all, False, accepted_psks=[OLD])


def stream_pair(send: bytes, accepted: list[bytes], resp_send: bytes) -> tuple[StreamSession, StreamSession, list]:
    a = StreamSession(ident("a"), send, admit_all, True)
    b = StreamSession(ident("b"), resp_send, admit_all, False, accepted_psks=accepted)
    events = b.feed(a.start())
    out = [e.data for e in events if isinstance(e, Outgoing)]
    if out:
        ev_a = a.feed(out[0])
        out_a = [e.data for e in ev_a if isinstance(e, Outgoing)]
        events += b.feed(out_a[0]) if out_a else []
    return a, b, events


@pytest.mark.parametrize("send", [OLD, NEW])
def test_stream_responder_accepts_either_secret_in_the_window(send: bytes) -> None:
    a, b, events = stream_pair(send, [NEW, OLD], OLD)
    assert any(isinstance(e, Established) for e in events)
    assert a.established and b.established and b.psk == send
    assert b.counters["handshake_psk_alternate"] == (0 if send == OLD else 1)
    assert b.feed(a.send(b"frame"))[0].plaintext == b"frame"


def test_stream_responder_refuses_a_secret_it_does_not_accept() -> None:
    _, b, events = stream_pair(OLD, [NEW], NEW)
    assert events == [Closed("handshake_psk_failures")] and not b.established
