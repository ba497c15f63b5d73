"""Digest push-pull: a big mesh's periodic exchange sends bucket digests, then only what differs."""

from __future__ import annotations

import random

import pytest

from mesh.coords import Coordinate
from mesh.errors import WireError
from mesh.membership import MemberState, NodeMeta, profile
from mesh.membership.messages import (
    COORD_DIGEST_BYTES,
    DIGEST_BYTES,
    MAX_COORD_PAIRS,
    PushPull,
    PushPullCoords,
    PushPullDigest,
    PushPullState,
)
from mesh.membership.state import DIGEST_MIN_MEMBERS, SwimCore
from mesh.wire import MAX_FRAME, Outgoing, decode, encode

LAN = profile("lan")
N = 200  # members besides the two exchanging nodes: above DIGEST_MIN_MEMBERS
NAMES = [f"m{i:04d}" for i in range(N)]


def _coord(i: int) -> bytes:
    c = Coordinate(tuple(0.001 * ((i + k) % 7) for k in range(8)), 0.4, 0.0, 0.00002)
    return PushPullState.pack_coord(c)  # type: ignore[return-value]


def _core(name: str, seed: int) -> SwimCore:
    x = SwimCore(name, name, NodeMeta(), LAN, random.Random(seed))
    peers = ["a", "b"]
    states = [PushPullState.of(n, n, 0, 0, NodeMeta(), None) for n in [*NAMES, *peers] if n != name]
    x.bootstrap(states, 0.0)
    return x


def _pair() -> tuple[SwimCore, SwimCore]:
    a, b = _core("a", 1), _core("b", 2)
    # Both know every coordinate, each other's included: agreement.
    for x in (a, b):
        for i, n in enumerate(NAMES):
            x.coords[n] = _coord(i)
    a.coords["b"] = PushPullState.pack_coord(b.vivaldi.coord)
    b.coords["a"] = PushPullState.pack_coord(a.vivaldi.coord)
    return a, b


def _open(a: SwimCore, b: SwimCore) -> list[Outgoing]:
    out = a._sync_to(b.addr)
    assert len(out) == 1 and out[0].reliable
    assert isinstance(decode(out[0].data, MAX_FRAME).msg, PushPullDigest)
    return out


def _deliver(dst: SwimCore, src: SwimCore, outs: list[Outgoing], now: float = 1.0) -> list[Outgoing]:
    back: list[Outgoing] = []
    for o in outs:
        assert o.dst == dst.addr and len(o.data) <= MAX_FRAME
        back += dst.handle(src.addr, decode(o.data, MAX_FRAME), now)
    return back


def _kinds(outs: list[Outgoing]) -> list[str]:
    return [type(decode(o.data, MAX_FRAME).msg).__name__ for o in outs]


def _rows(outs: list[Outgoing]) -> int:
    return sum(len(m.rows) for o in outs if isinstance(m := decode(o.data, MAX_FRAME).msg, PushPull))


def test_nodes_that_agree_exchange_two_digests_and_nothing_else() -> None:
    a, b = _pair()
    answer = _deliver(b, a, _open(a, b))
    assert _kinds(answer) == ["PushPullDigest"]
    assert _deliver(a, b, answer) == []


def test_a_newer_member_flows_both_ways_in_its_bucket_only() -> None:
    a, b = _pair()
    # b heard of m0007's refutation (incarnation 1); a holds m0100 dead, b alive.
    b.members["m0007"].incarnation = 1
    a.members["m0100"].state = MemberState.DEAD
    answer = _deliver(b, a, _open(a, b))
    assert _kinds(answer)[0] == "PushPullDigest"
    # Two buckets differ: b sends its entries of those buckets, not its 202 members.
    assert 2 <= _rows(answer) <= 12
    last = _deliver(a, b, answer)
    assert 2 <= _rows(last) <= 12
    _deliver(b, a, last)
    assert a.members.peek("m0007").incarnation == 1
    # a's dead verdict reached b as a (merge-derived) suspicion, as with a full push-pull.
    assert b.members.peek("m0100").state == MemberState.SUSPECT
    assert b.counters["merge_suspicions"] == 1


def test_a_coordinate_one_side_lacks_is_sent_alone() -> None:
    a, b = _pair()
    b.coords.pop("m0042")
    a.coords.pop("m0150")
    answer = _deliver(b, a, _open(a, b))
    assert "PushPullCoords" in _kinds(answer) and _rows(answer) == 0
    last = _deliver(a, b, answer)
    assert _kinds(last) == ["PushPullCoords"]
    _deliver(b, a, last)
    assert a.coords.get("m0150") == _coord(150)
    assert b.coords.get("m0042") == _coord(42)


def test_coordinate_pairs_never_create_members_and_bad_pairs_are_counted() -> None:
    a, _ = _pair()
    a.coords.pop("m0001")
    msg = PushPullCoords(["stranger", _coord(1), "m0001", b"\x00" * 7, 5, _coord(2)])
    a.handle("b", decode(encode("b", msg), MAX_FRAME), 1.0)
    assert a.members.peek("stranger") is None and "stranger" not in a.coords
    assert "m0001" not in a.coords
    assert a.counters["bad_states"] == 2


def test_small_meshes_keep_the_full_exchange() -> None:
    x = SwimCore("a", "a", NodeMeta(), LAN, random.Random(1))
    x.bootstrap([PushPullState.of(f"s{i}", f"s{i}", 0, 0, NodeMeta(), None) for i in range(DIGEST_MIN_MEMBERS - 1)], 0.0)
    out = x._sync_to("s1")
    assert {type(decode(o.data, MAX_FRAME).msg) for o in out} == {PushPull}


def test_digest_decoder_is_strict() -> None:
    good = PushPullDigest(False, bytes(DIGEST_BYTES), bytes(COORD_DIGEST_BYTES))
    assert decode(encode("a", good), MAX_FRAME).msg == good
    for bad in (
        PushPullDigest(False, bytes(DIGEST_BYTES - 8), bytes(COORD_DIGEST_BYTES)),
        PushPullDigest(False, bytes(DIGEST_BYTES), bytes(COORD_DIGEST_BYTES + 4)),
        PushPullDigest(1, bytes(DIGEST_BYTES), bytes(COORD_DIGEST_BYTES)),  # type: ignore[arg-type]
        PushPullCoords(["a"]),  # odd: a name without its coordinate
        PushPullCoords(["a", b""] * (MAX_COORD_PAIRS + 1)),
    ):
        with pytest.raises(WireError):
            decode(encode("a", bad), MAX_FRAME)


def test_largest_coordinate_frame_fits_a_stream_frame() -> None:
    name = "n" * 128
    msg = PushPullCoords([name, b"\x00" * 140] * MAX_COORD_PAIRS)
    assert len(encode(name, msg)) <= MAX_FRAME


def test_a_node_that_does_not_know_the_digest_types_counts_them_and_answers_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # An older version (no types 10 and 11): the exchange is lost, the node keeps running.
    import mesh.wire as wire
    from mesh.node import NodeCore

    a, b = _pair()
    frames = [*_open(a, b), Outgoing("b", encode("a", PushPullCoords(["m0001", _coord(1)])), True)]
    monkeypatch.delitem(wire._REGISTRY, PushPullDigest.TYPE)
    monkeypatch.delitem(wire._REGISTRY, PushPullCoords.TYPE)
    old = NodeCore("b", "b", NodeMeta(), LAN, random.Random(2))
    for f in frames:
        assert old.receive("a", f.data, 1.0, stream=("a", 1)) == []
    assert old.swim.counters["unknown_messages"] == 2
    assert old.counters["wire_errors"] == 0


def test_digest_follows_changes_made_after_it_was_computed() -> None:
    """The digest is kept between exchanges: a member or coordinate change after one must show in the next."""
    import zlib

    from mesh.membership.messages import COORD_BUCKETS, DIGEST_BUCKETS, Alive

    a, _ = _pair()
    d0, c0 = a.state_digest()
    assert a.state_digest() == (d0, c0)  # nothing changed: the same digests
    # A coordinate gained: its bucket's coordinate digest flips by crc32(name) (the documented rule).
    name = "m0003"
    h = zlib.crc32(name.encode())
    raw = a.coords.pop(name)
    d1, c1 = a.state_digest()
    assert d1 == d0 and c1[h % COORD_BUCKETS] == c0[h % COORD_BUCKETS] ^ h
    assert [x for i, x in enumerate(c1) if i != h % COORD_BUCKETS] == [x for i, x in enumerate(c0) if i != h % COORD_BUCKETS]
    a.coords[name] = raw
    assert a.state_digest() == (d0, c0)
    # A member's new incarnation (an Alive through the protocol): only its state bucket changes,
    # to the XOR of hash((crc, incarnation, state)) over the bucket's members.
    a._apply_alive(Alive(1, name, name, NodeMeta()), 2.0)
    d2, c2 = a.state_digest()
    b = h % DIGEST_BUCKETS
    assert c2 == c0 and d2[b] != d0[b]
    assert [x for i, x in enumerate(d2) if i != b] == [x for i, x in enumerate(d0) if i != b]
    expect = 0
    for n, m in a.members.items():
        hn = zlib.crc32(n.encode())
        if hn % DIGEST_BUCKETS == b:
            expect ^= hash((hn, m.incarnation, int(m.state)))
    assert d2[b] == expect & (2**64 - 1)
    # A record changed by hand through the table (get/[]) counts too.
    a.members["m0004"].incarnation = 7
    assert a.state_digest()[0] != d2


def _rule(members: dict[str, tuple[int, int]], held: set[str]) -> tuple[list[int], list[int]]:
    """The digests of the documented rule (SwimCore.state_digest), from (incarnation, state) per member
    and the names whose coordinate is held, written out by hand."""
    import zlib

    from mesh.membership.messages import COORD_BUCKETS, DIGEST_BUCKETS

    d, c = [0] * DIGEST_BUCKETS, [0] * COORD_BUCKETS
    for n, (inc, state) in members.items():
        h = zlib.crc32(n.encode())
        d[h % DIGEST_BUCKETS] ^= hash((h, inc, state))
        if n in held:
            c[h % COORD_BUCKETS] ^= h
    return [x & (2**64 - 1) for x in d], c


def test_digest_follows_members_joining_and_leaving_with_their_coordinates() -> None:
    """Kept current as members come and go: a member's coordinate counts only while it is a member."""
    from mesh.membership.messages import Alive, Dead

    a, _ = _pair()
    expect = {n: (0, 0) for n in [*NAMES, "a", "b"]}
    held = {*NAMES, "a", "b"}  # "a" holds its own coordinate
    assert a.state_digest() == _rule(expect, held)
    # A coordinate held for a name that is not a member does not count ...
    a.coords["x1"] = _coord(1)
    assert a.state_digest() == _rule(expect, held)
    # ... until the name joins (an Alive through the protocol).
    a._apply_alive(Alive(3, "x1", "x1", NodeMeta()), 2.0)
    expect["x1"] = (3, 0)
    held.add("x1")
    assert a.state_digest() == _rule(expect, held)
    # A member declared dead changes state; reaped, it leaves both digests with its coordinate.
    a._apply_dead(Dead(0, "m0005", "a"), 3.0)
    expect["m0005"] = (0, int(MemberState.DEAD))
    assert a.state_digest() == _rule(expect, held)
    a.reap(3.0 + LAN.tombstone_time + 1.0)
    del expect["m0005"]
    held.discard("m0005")
    assert "m0005" not in a.members
    assert a.state_digest() == _rule(expect, held)
    # Removed from the table directly (pop), with its coordinate still held: it no longer counts.
    a.members.pop("m0006")
    del expect["m0006"]
    held.discard("m0006")
    assert a.state_digest() == _rule(expect, held)
    # A bulk change (update) is taken into account too.
    a.members.update({"m0006": a.members.peek("m0007")})
    expect["m0006"] = (0, 0)
    held.add("m0006")
    assert a.state_digest() == _rule(expect, held)


def test_digest_of_nodes_bootstrapped_from_shared_records() -> None:
    """Nodes bootstrapped alike (the simulator's case) each have the digest of their own table:
    their own record counts, not the entry about them."""
    states = [PushPullState.of(n, n, 3 if n == "a" else 0, 0, NodeMeta(), None) for n in [*NAMES, "a", "b"]]
    a = SwimCore("a", "a", NodeMeta(), LAN, random.Random(1))
    shared = a.bootstrap(states, 0.0)
    b = SwimCore("b", "b", NodeMeta(), LAN, random.Random(2))
    assert b.bootstrap(states, 0.0, shared) is shared
    b.coords["m0001"] = _coord(1)
    expect = {n: (0, 0) for n in [*NAMES, "b"]}
    assert a.state_digest() == _rule({**expect, "a": (0, 0)}, {"a"})  # its own record: incarnation 0
    assert b.state_digest() == _rule({**expect, "a": (3, 0)}, {"b", "m0001"})
