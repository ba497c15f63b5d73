"""StreamSession and StreamFramer: handshake as first frames, chunking, oversize, tampering, fuzz."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.harness.budget import examples

from mesh.transport import (
    MAX_STREAM_PLAINTEXT,
    Closed,
    Established,
    FrameTooLarge,
    Message,
    Outgoing,
    StreamSession,
    TransportError,
)
from mesh.transport.framing import StreamFramer, frame
from transport_helpers import OTHER_PSK, PSK, admit_all, ident


def pair(
    psk_b: bytes = PSK, admit_a=admit_all, admit_b=admit_all, expected: str | None = None, max_frame: int = 65535
) -> tuple[StreamSession, StreamSession, list, list]:
    """Run the handshake between an initiator a and a responder b; return both and their events."""
    a = StreamSession(ident("a"), PSK, admit_a, True, expected_node_id=expected, max_frame=max_frame)
    b = StreamSession(ident("b"), psk_b, admit_b, False, max_frame=max_frame)
    ev_b = b.feed(a.start())
    ev_a: list = []
    out_b = [e.data for e in ev_b if isinstance(e, Outgoing)]
    if out_b:
        ev_a = a.feed(out_b[0])
        out_a = [e.data for e in ev_a if isinstance(e, Outgoing)]
        if out_a:
            ev_b += b.feed(out_a[0])
    return a, b, ev_a, ev_b


def test_handshake_and_both_directions() -> None:
    a, b, ev_a, ev_b = pair(expected=ident("b").node_id)
    assert [type(e) for e in ev_a] == [Outgoing, Established]
    assert [type(e) for e in ev_b] == [Outgoing, Established]
    assert ev_a[1].peer.node_id == ident("b").node_id and ev_b[1].peer.node_id == ident("a").node_id
    assert b.feed(a.send(b"ping")) == [Message(b"ping")]
    assert a.feed(b.send(b"pong")) == [Message(b"pong")]
    # Frame layout: 2-byte big-endian length, then ciphertext + 16-byte tag.
    f = a.send(b"12345")
    assert f[:2] == (5 + 16).to_bytes(2, "big") and len(f) == 2 + 5 + 16


@settings(max_examples=60, deadline=None)
@given(
    msgs=st.lists(st.binary(max_size=3000), min_size=1, max_size=20),
    cuts=st.lists(st.integers(min_value=1, max_value=5000), max_size=60),
)
def test_random_chunking_reassembles_exactly(msgs: list[bytes], cuts: list[int]) -> None:
    a = StreamSession(ident("a"), PSK, admit_all, True)
    b = StreamSession(ident("b"), PSK, admit_all, False)
    # Every byte the initiator writes (handshake and data) goes as one stream, cut at random points.
    (m2,) = [e.data for e in b.feed(a.start()) if isinstance(e, Outgoing)]
    ev_a = a.feed(m2)
    stream = b"".join(e.data for e in ev_a if isinstance(e, Outgoing)) + b"".join(a.send(m) for m in msgs)
    pos, events = 0, []
    for c in cuts:
        events += b.feed(stream[pos : pos + c])
        pos += c
    events += b.feed(stream[pos:])
    assert isinstance(events[0], Established)
    assert all(isinstance(e, Message) for e in events[1:])
    assert [e.plaintext for e in events[1:] if isinstance(e, Message)] == msgs


@settings(max_examples=examples(100), deadline=None)
@given(bodies=st.lists(st.binary(max_size=600), max_size=15), cuts=st.lists(st.integers(0, 700), max_size=40))
def test_framer_random_chunking(bodies: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frame(x) for x in bodies)
    f = StreamFramer()
    pos, got = 0, []
    for c in cuts:
        got += f.feed(stream[pos : pos + c])
        pos += c
    got += f.feed(stream[pos:])
    assert got == bodies and f.buffered == 0 and f.error is None


def test_oversize_frame_closes_with_counter() -> None:
    a, b, _, _ = pair(max_frame=1024)
    # A length prefix of 2000 is refused as soon as the prefix arrives, before any body is buffered.
    assert b.feed((2000).to_bytes(2, "big")) == [Closed("stream_oversize_frame")]
    assert b.counters["stream_oversize_frame"] == 1 and b.closed == "stream_oversize_frame"
    assert b.feed(a.send(b"after")) == []  # closed: everything later is ignored
    with pytest.raises(TransportError):
        b.send(b"x")


def test_send_too_large_raises_clear_error() -> None:
    a, _, _, _ = pair()
    assert MAX_STREAM_PLAINTEXT == 65535 - 16
    assert len(a.send(b"\0" * MAX_STREAM_PLAINTEXT)) == 2 + 65535
    with pytest.raises(FrameTooLarge):
        a.send(b"\0" * (MAX_STREAM_PLAINTEXT + 1))


def test_send_before_established_raises() -> None:
    a = StreamSession(ident("a"), PSK, admit_all, True)
    with pytest.raises(TransportError):
        a.send(b"x")


def test_tampered_frame_closes_session() -> None:
    a, b, _, _ = pair()
    f = bytearray(a.send(b"payload"))
    f[5] ^= 1
    assert b.feed(bytes(f)) == [Closed("stream_decrypt_failures")]
    assert b.counters["stream_decrypt_failures"] == 1


def test_replayed_or_reordered_frame_closes_session() -> None:
    a, b, _, _ = pair()
    f1, f2 = a.send(b"one"), a.send(b"two")
    assert b.feed(f2) == [Closed("stream_decrypt_failures")]  # implicit nonce: out of order fails
    a, b, _, _ = pair()
    f1 = a.send(b"one")
    assert b.feed(f1) == [Message(b"one")]
    assert b.feed(f1) == [Closed("stream_decrypt_failures")]


def test_wrong_psk_responder_writes_nothing() -> None:
    a, b, ev_a, ev_b = pair(psk_b=OTHER_PSK)
    assert ev_b == [Closed("handshake_psk_failures")] and ev_a == []
    assert b.counters["handshake_psk_failures"] == 1


def test_unexpected_peer_refused_before_message3() -> None:
    a, b, ev_a, ev_b = pair(expected=ident("c").node_id)
    assert ev_a == [Closed("handshake_refused_unexpected_peer")]  # no Outgoing: message 3 never sent
    assert [type(e) for e in ev_b] == [Outgoing]
    assert not b.established


def test_not_admitted_refused_on_both_sides() -> None:
    _, _, ev_a, _ = pair(admit_a=lambda n, k: False)
    assert ev_a == [Closed("handshake_refused_not_admitted")]
    _, b, ev_a, ev_b = pair(admit_b=lambda n, k: n != ident("a").node_id)
    assert [type(e) for e in ev_a] == [Outgoing, Established]
    assert ev_b[-1] == Closed("handshake_refused_not_admitted") and b.peer is None


def test_shared_counters() -> None:
    c: Counter[str] = Counter()
    a = StreamSession(ident("a"), PSK, admit_all, True, counters=c)
    b = StreamSession(ident("b"), OTHER_PSK, admit_all, False, counters=c)
    b.feed(a.start())
    assert c["handshake_psk_failures"] == 1


@settings(max_examples=examples(200), deadline=None)
@given(chunks=st.lists(st.binary(max_size=400), max_size=8))
def test_fuzz_feed_never_raises(chunks: list[bytes]) -> None:
    fresh = StreamSession(ident("b"), PSK, admit_all, False)
    a, b, _, _ = pair()
    init = StreamSession(ident("a"), PSK, admit_all, True)
    init.start()
    for s in (fresh, b, a, init):
        for c in chunks:
            for e in s.feed(c):
                assert not isinstance(e, (Message, Established))


def test_low_order_ephemeral_from_psk_holder_closes_responder() -> None:
    from mesh.transport.handshake import PROLOGUE_TCP, encode_hello, handshake_state, new_handshake

    class LowOrder:
        public_bytes = bytes(32)

    conn = new_handshake(ident("a"), PSK, True, PROLOGUE_TCP)
    handshake_state(conn).e = LowOrder()
    b = StreamSession(ident("b"), PSK, admit_all, False)
    assert b.feed(frame(bytes(conn.write_message(encode_hello(0))))) == [Closed("handshake_invalid")]
