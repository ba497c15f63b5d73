"""Codec round-trips and hostile-input fuzzing of the envelope decoder."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.harness.budget import examples

from mesh.coords import Coordinate
from mesh.errors import WireError
from mesh.membership.messages import Ack, Alive, Dead, Gossip, IndirectPing, Nack, Ping, PushPull, PushPullState, Suspect
from mesh.membership.meta import NodeMeta
from mesh.errors import ConfigError
from mesh.membership.meta import MAX_META_BYTES
from mesh.wire import (
    MAX_ADDR,
    MAX_DATAGRAM,
    MAX_NAME,
    PROTOCOL_VERSION,
    Unknown,
    decode,
    encode,
    encode_broadcast,
    envelope_overhead,
    pack,
    piggyback_cost,
)

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
    Ack(7, PushPullState.pack_coord(COORD)),
    Ack(8, None),
    Nack(9),
    Suspect(3, "n4", "n5"),
    Alive(4, "n4", "127.0.0.1:7004", META),
    Alive(4, "n4", "127.0.0.1:7004", META, b"k" * 32),
    Dead(5, "n4", "n4"),
    PushPull.of(
        True,
        False,
        (PushPullState.of("n4", "a", 2, 1, META, COORD, b"p" * 32), PushPullState.of("n5", "b", 0, 0, NodeMeta(), None)),
    ),
    Gossip(),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: object) -> None:
    pig = [encode_broadcast(Alive(1, "x", "y", META)), encode_broadcast(Suspect(2, "z", "x"))]
    env = decode(encode("sender-1", msg, pig), limit=1 << 20)
    assert env.sender == "sender-1"
    assert env.msg == msg
    assert env.piggyback == (Alive(1, "x", "y", META), Suspect(2, "z", "x"))


def test_rejects_wrong_version_and_oversize() -> None:
    good = msgpack.packb([PROTOCOL_VERSION, 1, "a", [1, "b"], []])
    assert decode(good).msg == Ping(1, "b")
    with pytest.raises(WireError, match="version"):
        decode(msgpack.packb([PROTOCOL_VERSION + 1, 1, "a", [1, "b"], []]))
    with pytest.raises(WireError, match="out of range"):
        decode(msgpack.packb([PROTOCOL_VERSION, 1000, "a", [], []]))
    with pytest.raises(WireError, match="exceeds"):
        decode(b"\x90" * (MAX_DATAGRAM + 1))
    with pytest.raises(WireError):
        decode(msgpack.packb([PROTOCOL_VERSION, 1, "a", [-1, "b"], []]))  # negative seq
    with pytest.raises(WireError):
        decode(msgpack.packb([PROTOCOL_VERSION, 3, "a", [1, [float("nan")] * 11], []]))  # NaN coordinate


def _largest_meta() -> NodeMeta:
    """Metadata padded to exactly MAX_META_BYTES encoded."""
    labels = tuple((f"k{i:02d}", "v" * 12) for i in range(16))
    hardware = tuple(f"hw{i:02d}" for i in range(16))
    base = NodeMeta("x" * 32, 1 << 16, 1 << 40, labels, "", (89.5, -179.5), 999999.999, hardware)
    pad = MAX_META_BYTES - len(pack(base.to_wire()))
    domain = "r" * min(pad - 1, 200) if pad > 32 else "r" * pad
    return NodeMeta(base.arch, base.cores, base.memory_mb, base.labels, domain, base.geo, base.load, base.hardware)


def test_largest_alive_fits_one_gossip_datagram() -> None:
    big = _largest_meta()
    assert MAX_META_BYTES - 2 <= len(pack(big.to_wire())) <= MAX_META_BYTES
    name, addr = "n" * MAX_NAME, "a" * MAX_ADDR
    item = encode_broadcast(Alive(2**63 - 1, name, addr, big, b"k" * 32))
    # SwimCore._gossip's budget for piggyback in a Gossip datagram from the longest name.
    assert piggyback_cost(item) <= MAX_DATAGRAM - envelope_overhead(name) - 8
    data = encode(name, Gossip(), [item])
    assert len(data) <= MAX_DATAGRAM
    assert decode(data).piggyback == (Alive(2**63 - 1, name, addr, big, b"k" * 32),)


def test_metadata_over_the_size_bound_is_refused_when_built() -> None:
    labels = tuple((f"k{i:02d}", "v" * 20) for i in range(16))
    with pytest.raises(ConfigError, match="encodes to"):
        NodeMeta("x86_64", 64, 1 << 20, labels, "r/" * 60, (1.0, 2.0), 1.0, tuple(f"hw{i}" for i in range(16)))


def test_unknown_message_type_decodes_to_unknown_with_usable_piggyback() -> None:
    pig = [encode_broadcast(Suspect(2, "z", "x"))]
    env = decode(msgpack.packb([PROTOCOL_VERSION, 14, "a", ["from", "the", "future"], pig], use_bin_type=True))
    assert env.msg == Unknown(14) and env.msg.TYPE == 14
    assert env.piggyback == (Suspect(2, "z", "x"),)


def test_bad_and_unknown_piggyback_items_are_skipped_and_counted() -> None:
    good = encode_broadcast(Alive(1, "x", "y", META))
    unknown = pack([15, ["new", "broadcast"]])
    bad_payload = pack([5, [2**63, "n", "m"]])  # Suspect with an incarnation beyond the wire bound
    bad_name = pack([5, [1, "n\x13", "m"]])
    not_bin = "text"
    data = msgpack.packb([PROTOCOL_VERSION, 9, "a", [], [bad_payload, good, unknown, bad_name, not_bin]], use_bin_type=True)
    env = decode(data)
    assert env.piggyback == (Alive(1, "x", "y", META),)
    assert (env.bad_items, env.unknown_items) == (3, 1)


@pytest.mark.parametrize("name", ["\x084", "n\x13", "", "a b", "é", "n" * (MAX_NAME + 1), "x\n"])
def test_invalid_names_are_wire_errors(name: str) -> None:
    with pytest.raises(WireError, match="name"):
        decode(msgpack.packb([PROTOCOL_VERSION, 1, "a", [1, name], []]))  # Ping target
    with pytest.raises(WireError, match="name"):
        decode(msgpack.packb([PROTOCOL_VERSION, 9, name, [], []]))  # envelope sender
    entry = [name, "addr", 0, 0, PushPullState.pack_meta(NodeMeta()), None, b""]
    with pytest.raises(WireError, match="name"):
        PushPullState.from_wire(entry)  # how every received push-pull entry is validated


@pytest.mark.parametrize("key", [b"k" * 31, b"k" * 33, "k" * 32])
def test_public_key_must_be_empty_or_32_bytes(key: object) -> None:
    alive = pack([6, [1, "n", "addr", NodeMeta().to_wire(), key]])
    env = decode(encode("a", Gossip(), [alive]))
    assert env.piggyback == () and env.bad_items == 1
    entry = ["n", "addr", 0, 0, PushPullState.pack_meta(NodeMeta()), None, key]
    with pytest.raises(WireError, match="key"):
        PushPullState.from_wire(entry)


@settings(max_examples=examples(400), deadline=None)
@given(st.binary(max_size=1500))
def test_random_bytes_only_raise_wire_error(data: bytes) -> None:
    try:
        decode(data)
    except WireError:
        pass


def _valid_datagrams() -> list[bytes]:
    return [encode("n1", m, [encode_broadcast(Suspect(1, "a", "b"))]) for m in SAMPLES if not isinstance(m, PushPull)]


@settings(max_examples=examples(600), deadline=None)
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


@settings(max_examples=examples(300), deadline=None)
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


def test_piggyback_beyond_what_a_datagram_can_hold_is_skipped_and_counted() -> None:
    from mesh.wire import MAX_PIGGYBACK

    items = [encode_broadcast(Suspect(i, "n", "m")) for i in range(MAX_PIGGYBACK + 100)]
    env = decode(encode("a", Gossip(), items), limit=1 << 20)  # only a stream frame can carry this many
    assert len(env.piggyback) == MAX_PIGGYBACK == MAX_DATAGRAM // 10
    assert env.skipped_items == 100 and env.bad_items == 0
    assert env.piggyback[-1] == Suspect(MAX_PIGGYBACK - 1, "n", "m")


def test_no_node_can_piggyback_more_than_max_piggyback_items() -> None:
    """MAX_PIGGYBACK is what the smallest broadcast allows in a full datagram: 1200 // 10."""
    from mesh.membership.messages import Dead
    from mesh.wire import MAX_PIGGYBACK, MIN_PIGGYBACK_COST, piggyback_cost

    smallest = [encode_broadcast(Suspect(0, "a", "b")), encode_broadcast(Dead(0, "a", "b"))]
    assert [piggyback_cost(x) for x in smallest] == [MIN_PIGGYBACK_COST, MIN_PIGGYBACK_COST] == [10, 10]
    assert MAX_PIGGYBACK == 120
    # A datagram packed with the smallest broadcasts holds fewer than MAX_PIGGYBACK of them.
    n = 0
    while len(encode("a", Gossip(), [smallest[0]] * (n + 1))) <= MAX_DATAGRAM:
        n += 1
    assert n < MAX_PIGGYBACK


def test_with_piggyback_is_byte_for_byte_encode() -> None:
    """Splicing a piggyback into an encoded message gives exactly what encode() gives
    (the array and bin headers of every size class: fixarray/array16, bin8/bin16/bin32)."""
    import random

    from mesh.membership.messages import Gossip, Ping
    from mesh.wire import encode, with_piggyback

    r = random.Random(5)
    for i in range(400):
        n_items = r.choice([0, 1, 3, 15, 16, 17, 40])
        pig = [bytes(r.randrange(256) for _ in range(r.choice([0, 1, 200, 255, 256, 300, 65535, 65536]))) for _ in range(n_items)] if i % 50 == 0 else [bytes(r.randrange(256) for _ in range(r.choice([0, 1, 30, 255, 256]))) for _ in range(n_items)]
        msg = Ping(r.randrange(2**32), f"n{i}") if i % 2 else Gossip()
        assert with_piggyback(encode("sender", msg), pig) == encode("sender", msg, pig)


def test_meta_display_name_round_trips_and_old_eight_field_meta_still_decodes():
    from mesh.membership.meta import NodeMeta

    m = NodeMeta(name="truck-7", fault_domain="eu/berlin/truck-7")
    assert NodeMeta.from_wire(m.to_wire()) == m
    old = m.to_wire()[:8]  # a peer from before the display name existed
    assert NodeMeta.from_wire(old).name == ""
    newer = m.to_wire() + ["", "a field from a newer peer"]  # 10th: agreement (empty), 11th: unknown
    assert NodeMeta.from_wire(newer) == m


def test_meta_agreement_field_round_trips_and_is_absent_from_the_wire_when_empty():
    from mesh.errors import ConfigError, WireError
    from mesh.membership.meta import NodeMeta

    plain = NodeMeta(name="n1")
    assert len(plain.to_wire()) == 9  # byte-identical to the encoding before the field existed
    m = NodeMeta(name="n1", agreement="1:0123456789ab:ba9876543210:00112233aabb")
    assert len(m.to_wire()) == 10
    assert NodeMeta.from_wire(m.to_wire()) == m
    assert NodeMeta.from_wire(m.to_wire()[:9]).agreement == ""
    with pytest.raises(ConfigError):
        NodeMeta(agreement="x" * 65)
    with pytest.raises(WireError):
        NodeMeta.from_wire(plain.to_wire() + ["x" * 65])
