"""InvokeRequest / InvokeReply on the wire: round trip, strict decoding of hostile payloads, stream-only."""

from __future__ import annotations

import random

import pytest

from mesh.errors import WireError
from mesh.invoke.messages import MAX_INVOKE_PAYLOAD, InvokeReply, InvokeRequest
from mesh.wire import MAX_FRAME, PROTOCOL_VERSION, Unknown, decode, encode, pack

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_request_and_reply_round_trip_and_the_largest_fit_one_stream_frame() -> None:
    req = InvokeRequest(2**63 - 1, "web-" + "x" * 124, b"\xff" * MAX_INVOKE_PAYLOAD, TP, 600_000)
    data = encode("n" * 128, req)
    assert len(data) <= MAX_FRAME
    env = decode(data, MAX_FRAME)
    assert env.msg == req and env.sender == "n" * 128
    rep = InvokeReply(7, "ok", True, -1, b"\x00" * MAX_INVOKE_PAYLOAD, "m" * 512, 2**40)
    data = encode("n" * 128, rep)
    assert len(data) <= MAX_FRAME
    assert decode(data, MAX_FRAME).msg == rep
    small = InvokeReply(8, "not_hosted", False, message="no replica")
    assert decode(encode("b", small), MAX_FRAME).msg == small


def test_http_kind_round_trips_and_a_raw_call_keeps_the_five_field_form() -> None:
    from mesh.invoke.messages import KIND_HTTP

    http = InvokeRequest(3, "web", b"GET / HTTP/1.1\r\n\r\n", TP, 1000, KIND_HTTP)
    assert decode(encode("b", http), MAX_FRAME).msg == http
    assert http.to_payload()[5] == 1
    raw = InvokeRequest(4, "web", b"x", TP, 1000)
    assert len(raw.to_payload()) == 5 and decode(encode("b", raw), MAX_FRAME).msg.kind == 0


def _env(type_id: int, payload: object) -> bytes:
    return pack([PROTOCOL_VERSION, type_id, "peer", payload, []])


GOOD_REQ = [1, "web", b"in", TP, 1000]
GOOD_REP = [1, "ok", True, 0, b"out", "", 5]


@pytest.mark.parametrize("payload", [
    GOOD_REQ[:4],  # too few fields
    GOOD_REQ + [1, 1],  # too many
    GOOD_REQ + [2],  # unknown kind
    GOOD_REQ + [True],  # bool is not a kind
    GOOD_REQ + ["http"],
    [-1, "web", b"", TP, 1000],  # negative id
    [True, "web", b"", TP, 1000],  # bool is not an id
    [1, "we b", b"", TP, 1000],  # invalid deployment name
    [1, "w" * 129, b"", TP, 1000],
    [1, "web", "text not bytes", TP, 1000],
    [1, "web", b"x" * (MAX_INVOKE_PAYLOAD + 1), TP, 1000],  # payload over the bound
    [1, "web", b"", "00-" + "0" * 32 + "-00f067aa0ba902b7-01", 1000],  # zero trace id
    [1, "web", b"", TP + "-x", 1000],
    [1, "web", b"", None, 1000],
    [1, "web", b"", TP, 0],  # no budget
    [1, "web", b"", TP, 600_001],
    [1, "web", b"", TP, 1.5],
])
def test_hostile_requests_decode_to_a_wire_error(payload: list) -> None:
    with pytest.raises(WireError):
        decode(_env(InvokeRequest.TYPE, payload), MAX_FRAME)


@pytest.mark.parametrize("payload", [
    GOOD_REP[:6],
    [1, "exploded", True, 0, b"", "", 0],  # unknown code
    [1, "ok", 1, 0, b"", "", 0],  # executed must be a bool
    [1, "ok", True, 2**31, b"", "", 0],
    [1, "ok", True, 0, b"x" * (MAX_INVOKE_PAYLOAD + 1), "", 0],
    [1, "ok", True, 0, b"", "m" * 513, 0],
    [1, "ok", True, 0, b"", "", -1],
    [1, "o" * 1000, True, 0, b"", "", 0],
])
def test_hostile_replies_decode_to_a_wire_error(payload: list) -> None:
    with pytest.raises(WireError):
        decode(_env(InvokeReply.TYPE, payload), MAX_FRAME)


def test_seeded_mutations_of_valid_frames_never_raise_anything_but_wire_error() -> None:
    rng = random.Random(11)
    frames = [encode("a", InvokeRequest(*GOOD_REQ)), encode("a", InvokeReply(*GOOD_REP))]
    decoded = errors = 0
    for _ in range(3000):
        data = bytearray(rng.choice(frames))
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            decode(bytes(data), MAX_FRAME)
            decoded += 1
        except WireError:
            errors += 1
    assert decoded + errors == 3000 and errors > 0


def test_an_older_node_sees_an_unknown_type_and_a_newer_type_does_not_break_us() -> None:
    env = decode(_env(52, [1, 2, 3]), MAX_FRAME)  # a type a future version may add
    assert isinstance(env.msg, Unknown) and env.msg.TYPE == 52


def test_node_core_hands_invoke_frames_to_the_driver_only_on_streams() -> None:
    from mesh.membership import NodeMeta
    from mesh.membership.config import profile
    from mesh.node import NodeCore

    core = NodeCore("b", "127.0.0.1:2", NodeMeta(), profile("local"), random.Random(1))
    data = encode("a", InvokeRequest(*GOOD_REQ))
    assert core.receive("127.0.0.1:1", data, 0.0, stream="S1", peer="a") == []
    assert core.take_invocations() == []  # no driver inbox: an unknown type
    assert core.counters["unknown_type"] == 1
    core.invoke_inbox = []
    core.receive("127.0.0.1:1", data, 0.0, stream="S1", peer="a")
    core.receive("127.0.0.1:1", data, 0.0, False, peer="a")  # a datagram: refused
    got = core.take_invocations()
    assert got == [("a", InvokeRequest(*GOOD_REQ), "S1")]
    assert core.counters["invoke_datagrams_refused"] == 1
    assert core.take_invocations() == []
    forged = encode("c", InvokeRequest(*GOOD_REQ))  # envelope sender disagrees with the session
    core.receive("127.0.0.1:1", forged, 0.0, stream="S1", peer="a")
    assert core.take_invocations() == [] and core.counters["sender_mismatch"] == 1
