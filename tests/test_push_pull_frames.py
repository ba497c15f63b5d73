"""Push-pull of big meshes travels as frames of at most 65,535 bytes (one Noise message each)."""

from __future__ import annotations

import random

from mesh.coords import Coordinate
from mesh.membership import MemberState, NodeMeta, profile
from mesh.membership.messages import Ack, PushPull, PushPullState
from mesh.node import NodeCore
from mesh.transport.stream import MAX_STREAM_PLAINTEXT
from mesh.wire import MAX_FRAME, decode, encode

LAN = profile("lan")
NOISE_MAX = 65_535  # the largest Noise transport message: the seam's frame limit
NOISE_TAG = 16  # a transport message is the plaintext plus this authentication tag


def _meta(i: int) -> NodeMeta:
    return NodeMeta(
        arch=("x86_64", "aarch64")[i % 2],
        cores=4,
        memory_mb=4096,
        labels=(("site", f"depot-{i % 40}"), ("zone", f"r{i % 4}")),
        fault_domain=f"r{i % 4}/s{i % 16}/v{i}",
        geo=(48.0 + i % 7, 11.0 + i % 5),
    )


def _big_node(n: int) -> NodeCore:
    """A node that knows n other members, each with metadata and a coordinate."""
    core = NodeCore("seed", "10.0.0.1:7946", NodeMeta(), LAN, random.Random(1))
    states = [
        PushPullState.of(f"node-{i:05d}", f"10.{i // 250}.{i % 250}.9:7946", i % 3, 0, _meta(i), None) for i in range(n)
    ]
    core.swim.bootstrap(states, 0.0)
    for i in range(n):
        c = Coordinate(tuple(0.001 * ((i + k) % 9) for k in range(8)), 0.3, 0.0001, 0.00002)
        core.swim.coords[f"node-{i:05d}"] = PushPullState.pack_coord(c)  # type: ignore[assignment]
    return core


def decode_coord_of(core: NodeCore, name: str) -> Coordinate | None:
    return core.swim.coordinate_of(name)


def test_frame_limit_is_one_noise_message() -> None:
    assert MAX_FRAME + NOISE_TAG == NOISE_MAX
    assert MAX_FRAME == MAX_STREAM_PLAINTEXT  # what the stream transport accepts in one message


def test_ten_thousand_member_state_fits_frames_and_a_peer_merges_the_full_view() -> None:
    n = 10_000
    seed = _big_node(n)
    frames = seed.swim._push_pull_to("10.9.9.9:7946", join=False, reply=False)
    assert len(frames) > 1  # ~0.9 MB of state cannot be one frame
    assert all(f.reliable and len(f.data) + NOISE_TAG <= NOISE_MAX for f in frames)
    parts = [decode(f.data, MAX_FRAME).msg for f in frames]
    assert [p.part for p in parts] == list(range(len(frames)))
    assert {p.parts for p in parts} == {len(frames)}

    peer = NodeCore("peer", "10.9.9.9:7946", NodeMeta(), LAN, random.Random(2))
    replies = []
    # Every frame is self-contained: delivered in any order, each is merged on arrival.
    for f in reversed(frames):
        replies += peer.receive("10.0.0.1:7946", f.data, 1.0, reliable=True)
    assert peer.counters["wire_errors"] == 0
    view = peer.swim.view()
    assert len(view) == n + 2  # every member, the seed and the peer itself
    assert all(view[f"node-{i:05d}"] == MemberState.ALIVE for i in range(n))
    assert peer.swim.members["node-00007"].meta == _meta(7)
    assert peer.swim.members["node-00007"].incarnation == 7 % 3
    # Coordinates are taken for members already known (as before chunking): a second exchange.
    for f in frames:
        peer.receive("10.0.0.1:7946", f.data, 2.0, reliable=True)
    assert len(peer.swim.coords) == n + 1  # and the seed's own
    assert peer.swim.coordinate_of("node-00003") == decode_coord_of(seed, "node-00003")
    # The peer answered the first exchange once (when part 0 came, here last), with its own
    # state, by then the full view: one set of parts, each within the limit.
    answers = [decode(r.data, MAX_FRAME).msg for r in replies]
    assert all(r.reliable and len(r.data) + NOISE_TAG <= NOISE_MAX for r in replies)
    assert [a.part for a in answers] == list(range(len(replies)))
    assert all(isinstance(a, PushPull) and a.reply and a.parts == len(replies) for a in answers)
    # (it answers before merging part 0: itself plus what parts 1.. taught it)
    assert sum(len(a.rows) for a in answers) == 1 + sum(len(p.rows) for p in parts[1:])


def test_joiner_gets_the_full_state_of_a_big_mesh_in_frames() -> None:
    n = 3_000
    seed = _big_node(n)
    joiner = NodeCore("joiner", "10.8.8.8:7946", NodeMeta(), LAN, random.Random(3), seeds=("10.0.0.1:7946",))
    out = joiner.start(0.0)
    assert len(out) == 1
    answer = seed.receive("10.8.8.8:7946", out[0].data, 0.1, reliable=True)
    assert len(answer) > 1 and all(len(o.data) + NOISE_TAG <= NOISE_MAX for o in answer)
    for o in answer:
        assert not joiner.receive("10.0.0.1:7946", o.data, 0.2, reliable=True)  # a reply asks for none back
    assert joiner.swim.num_members() == n + 2
    assert seed.swim.members["joiner"].state == MemberState.ALIVE


def test_oversized_frame_is_counted_not_raised() -> None:
    peer = NodeCore("peer", "p", NodeMeta(), LAN, random.Random(2))
    rows = [PushPullState.of(f"n{i}", f"a{i}", 0, 0, _meta(i), None) for i in range(2000)]
    data = encode("x", PushPull.of(False, False, rows))
    assert len(data) > MAX_FRAME
    assert peer.receive("x", data, 0.0, reliable=True) == []
    assert peer.counters["wire_errors"] == 1
    assert peer.swim.num_members() == 1


def test_ack_with_a_coordinate_of_the_wrong_dimensionality_is_not_kept() -> None:
    a = NodeCore("a", "a", NodeMeta(), LAN, random.Random(4))
    states = [PushPullState.of("b", "b", 0, 0, NodeMeta(), None)]
    a.swim.bootstrap(states, 0.0)
    out = a.tick(5.0)  # probes b
    ping = decode(out[0].data).msg
    bad = Coordinate((0.01,) * 4, 0.5, 0.0, 0.00001)  # 4 dimensions; ours have 8
    a.receive("b", encode("b", Ack(ping.seq, PushPullState.pack_coord(bad))), 5.01)
    assert "b" not in a.swim.coords
    assert a.estimate_rtt("a", "b") is None


def test_malformed_entries_are_counted_and_the_rest_merged() -> None:
    peer = NodeCore("peer", "p", NodeMeta(), LAN, random.Random(5))
    good = PushPullState.of("n1", "a1", 0, 0, _meta(1), None).to_wire()
    rows = [
        ["n2", "a2", 0, 0],  # too short
        [7, "a3", 0, 0, PushPullState.pack_meta(_meta(3)), None],  # name not a string
        ["n4", "a4", 0, 0, b"\xc1", None],  # metadata that is not msgpack
        ["n5", "a5", -1, 0, PushPullState.pack_meta(_meta(5)), None],  # negative incarnation
        "not a row",
        good,
    ]
    data = encode("x", PushPull(False, True, rows))
    assert peer.receive("x", data, 0.0, reliable=True) == []
    assert peer.swim.counters["bad_states"] == 5
    assert set(peer.swim.view()) == {"peer", "n1"}


def test_blob_server_answers_a_huge_request_within_one_frame() -> None:
    import hashlib

    from crdt.blob import CHUNK, BlobTransfer, MemoryBlobStore
    from crdt.messages import BlobChunk, BlobRequest

    data = bytes(range(256)) * 4096  # 1 MiB
    sha = hashlib.sha256(data).hexdigest()
    store = MemoryBlobStore()
    store.put(sha, data)
    srv = BlobTransfer(store)
    [(dst, msg)] = srv.receive("peer", BlobRequest(sha, 0, 1024 * 1024), 0.0)  # the most a request may ask
    assert dst == "peer" and isinstance(msg, BlobChunk)
    assert msg.data == data[:CHUNK]
    assert len(encode("server", msg)) <= MAX_FRAME


def test_local_states_merge_in_process_into_a_peer_view() -> None:
    # A persisted or in-process member list (bench pre-join, a restart's snapshot) goes
    # through merge_states without the wire: every entry must pass the decoder's checks.
    big = _big_node(50)
    states = big.swim.local_states()
    assert all(type(st.state) is int for st in states)
    fresh = NodeCore("fresh", "fresh", _meta(0), profile("lan"), random.Random(3))
    fresh.swim.merge_states(states, 0.0)
    assert fresh.swim.counters["bad_states"] == 0
    assert len(fresh.swim.live_peers()) == len(states)


def test_ack_coordinate_travels_packed_and_a_non_finite_one_is_ignored_but_the_ack_counts() -> None:
    import struct

    from mesh.errors import WireError

    a = NodeCore("a", "a", NodeMeta(), LAN, random.Random(4))
    a.swim.bootstrap([PushPullState.of("b", "b", 0, 0, NodeMeta(), None)], 0.0)
    ping = decode(a.tick(5.0)[0].data).msg
    nan = struct.pack("<11f", *([0.001] * 8), float("nan"), 0.0, 0.00001)
    a.receive("b", encode("b", Ack(ping.seq, nan)), 5.01)
    assert a.swim._probe is not None and a.swim._probe.acked  # the probe succeeded
    assert "b" not in a.swim.coords and a.swim.vivaldi.updates == 0
    for bad in (b"\x00" * 13, b"\x00" * 12, b"\x00" * 144, [0.1] * 11):
        try:
            decode(encode("b", Ack(1, bad)))  # type: ignore[arg-type]
        except WireError:
            continue
        raise AssertionError(f"ack coordinate {bad!r:.30} decoded")
