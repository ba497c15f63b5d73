"""Codec round-trips and hostile-input fuzzing of the envelope decoder."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.coords import Coordinate
from mesh.errors import WireError
from mesh.membership.messages import Ack, Alive, Dead, Gossip, IndirectPing, Nack, Ping, PushPull, PushPullState, Suspect
from mesh.membership.meta import NodeMeta
from mesh.wire import MAX_DATAGRAM, PROTOCOL_VERSION, decode, encode, encode_broadcast

META = NodeMeta(
    arch="aarch64",
    cores=4,
    memory_mb=2048,
    labels=(("site", "depot-7"), ("zone", "eu")),
    fault_domain="eu/depot-7/truck-12",
    geo=(48.1, 11.5),
    load=0.25,
    hardware=("can-bus", "gpu"),
)
COORD = Coordinate((0.001,) * 8, 0.4, 0.0001, 0.00002)

SAMPLES = [
    Ping(7, "n1"),
    IndirectPing(9, "n2", "127.0.0.1:7001", True),
    Ack(7, COORD),
    Ack(8, None),
    Nack(9),
    Suspect(3, "n4", "n5"),
    Alive(4, "n4", "127.0.0.1:7004", META),
    Dead(5, "n4", "n4"),
    PushPull.of(True, False, (PushPullState.of("n4", "a", 2, 1, META, COORD), PushPullState.of("n5", "b", 0, 0, NodeMeta(), None))),
    Gossip(),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: object) -> None:
    pig = [encode_broadcast(Alive(1, "x", "y", META)), encode_broadcast(Suspect(2, "z", "x"))]
    env = decode(encode("sender-1", msg, pig), limit=1 << 20)
    assert env.sender == "sender-1"
    assert env.msg == msg
    assert env.piggyback == (Alive(1, "x", "y", META), Suspect(2, "z", "x"))


def test_rejects_wrong_version_unknown_type_and_oversize() -> None:
    good = msgpack.packb([PROTOCOL_VERSION, 1, "a", [1, "b"], []])
    assert decode(good).msg == Ping(1, "b")
    with pytest.raises(WireError, match="version"):
        decode(msgpack.packb([PROTOCOL_VERSION + 1, 1, "a", [1, "b"], []]))
    with pytest.raises(WireError, match="unknown message type"):
        decode(msgpack.packb([PROTOCOL_VERSION, 250, "a", [], []]))
    with pytest.raises(WireError, match="exceeds"):
        decode(b"\x90" * (MAX_DATAGRAM + 1))
    with pytest.raises(WireError):
        decode(msgpack.packb([PROTOCOL_VERSION, 1, "a", [-1, "b"], []]))  # negative seq
    with pytest.raises(WireError):
        decode(msgpack.packb([PROTOCOL_VERSION, 3, "a", [1, [float("nan")] * 11], []]))  # NaN coordinate


def test_meta_bounds_keep_alive_inside_a_datagram() -> None:
    labels = tuple((f"k{i:02d}", "v" * 20) for i in range(16))
    big = NodeMeta("x86_64", 64, 1 << 20, labels, "r/" * 60, (1.0, 2.0), 1.0, tuple(f"hw{i}" for i in range(16)))
    data = encode("n" * 64, Gossip(), [encode_broadcast(Alive(2**40, "n" * 64, "1.2.3.4:5", big))])
    assert len(data) <= MAX_DATAGRAM


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=1500))
def test_random_bytes_only_raise_wire_error(data: bytes) -> None:
    try:
        decode(data)
    except WireError:
        pass


def _valid_datagrams() -> list[bytes]:
    return [encode("n1", m, [encode_broadcast(Suspect(1, "a", "b"))]) for m in SAMPLES if not isinstance(m, PushPull)]


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(_valid_datagrams()), st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=6), st.integers(0, 3))
def test_mutated_datagrams_only_raise_wire_error(base: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(base)
    for pos, val in flips:
        if data:
            data[pos % len(data)] = val
    if cut:
        data = data[: max(0, len(data) - cut)]
    try:
        decode(bytes(data))
    except WireError:
        pass


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20) | st.binary(max_size=20),
        lambda c: st.lists(c, max_size=6) | st.dictionaries(st.text(max_size=5), c, max_size=4),
        max_leaves=30,
    ),
    st.integers(0, 12),
)
def test_well_formed_msgpack_with_wrong_shapes_only_raise_wire_error(payload: object, type_id: int) -> None:
    data = msgpack.packb([PROTOCOL_VERSION, type_id, "n1", payload, []], use_bin_type=True)
    try:
        decode(data)
    except WireError:
        pass
