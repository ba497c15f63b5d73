"""The probe path encodes Ping and Ack from their fields (no message object): the bytes must be
exactly what encoding the message object gives, so peers of any version decode them alike."""

from __future__ import annotations

import random
import struct

from mesh.membership import NodeMeta, profile
from mesh.membership.messages import Ack, Ping, PushPullState, coord_ok, coord_values
from mesh.membership.state import SwimCore
from mesh.wire import MAX_DATAGRAM, decode, encode, with_piggyback

LAN = profile("lan")


def _pair() -> tuple[SwimCore, SwimCore]:
    a = SwimCore("a", "a", NodeMeta(), LAN, random.Random(1))
    b = SwimCore("b", "b", NodeMeta(), LAN, random.Random(2))
    for x, y in ((a, b), (b, a)):
        x.bootstrap([PushPullState.of(y.name, y.addr, 0, 0, NodeMeta(), None)], 0.0)
    return a, b


def test_probe_ping_and_its_ack_are_the_message_encodings() -> None:
    a, b = _pair()
    outs = a.tick(a.next_deadline())  # type: ignore[arg-type]
    pings = [o for o in outs if isinstance(decode(o.data, MAX_DATAGRAM).msg, Ping)]
    assert len(pings) == 1 and pings[0].dst == "b"
    env = decode(pings[0].data, MAX_DATAGRAM)
    assert env.sender == "a" and env.msg == Ping(env.msg.seq, "b")
    items = [x for x in decode_items(pings[0].data)]
    assert pings[0].data == with_piggyback(encode("a", Ping(env.msg.seq, "b")), items)
    acks = b.handle("a", env, 0.5)
    assert len(acks) == 1 and acks[0].dst == "a"
    aenv = decode(acks[0].data, MAX_DATAGRAM)
    coord = PushPullState.pack_coord(b.vivaldi.coord)
    assert aenv.msg == Ack(env.msg.seq, coord)
    assert acks[0].data == with_piggyback(encode("b", Ack(env.msg.seq, coord)), decode_items(acks[0].data))


def decode_items(data: bytes) -> list[bytes]:
    """The raw piggybacked items of an envelope (msgpack: the last array of the envelope)."""
    import msgpack

    return list(msgpack.unpackb(data, raw=False)[4])


def test_coord_values_accepts_exactly_finite_values_within_a_million() -> None:
    def raw(*vals: float) -> bytes:
        return struct.pack(f"<{len(vals)}f", *vals)

    zeros = [0.0] * 10
    assert coord_values(raw(0.001, *zeros), 8) == (struct.unpack("<f", struct.pack("<f", 0.001))[0], *zeros)
    assert coord_ok(raw(1e6, *zeros), 8) and coord_ok(raw(-1e6, *zeros), 8)
    # every value within bounds but their norm far above a million (the slow path)
    assert coord_ok(raw(*([4e5, -4e5] * 5), 4e5), 8)
    assert not coord_ok(raw(1e6 + 0.0625, *zeros), 8)  # the next float32 above a million
    assert not coord_ok(raw(*zeros, -1e6 - 0.0625), 8)
    for bad in (float("nan"), float("inf"), float("-inf")):
        assert not coord_ok(raw(*zeros[:5], bad, *zeros[5:]), 8)
    assert not coord_ok(raw(*zeros), 8)  # 10 values: not 8 dimensions + 3
    assert not coord_ok(raw(0.0, *zeros) + b"\0\0", 8)  # not a whole number of float32s
