"""Membership floods are bounded (issue 9): members per message, per peer per interval, in
the table, piggyback items per envelope; every outgoing push-pull frame stays within MAX_FRAME."""

from __future__ import annotations

import random

import pytest

from mesh.errors import ConfigError
from mesh.membership import MemberState, NodeMeta, profile
from mesh.membership.messages import Alive, Dead, Gossip, PushPull, PushPullState
from mesh.membership.state import SwimCore
from mesh.node import NodeCore
from mesh.wire import MAX_DATAGRAM, MAX_FRAME, MAX_PIGGYBACK, decode, encode, encode_broadcast

LAN = profile("lan")
SEED_ADDR = "10.0.0.1:7946"


def _ghost_frames(count: int, per_frame: int, prefix: str = "g") -> list[bytes]:
    """Push-pull frames from "evil" introducing ``count`` members nobody has heard of."""
    meta = NodeMeta()
    frames = []
    for start in range(0, count, per_frame):
        rows = [PushPullState.of(f"{prefix}{i}", f"h{i}", 0, 0, meta, None) for i in range(start, min(count, start + per_frame))]
        frames.append(encode("evil", PushPull.of(False, True, rows)))
    assert all(len(f) <= MAX_FRAME for f in frames)
    return frames


def _seed(config=LAN) -> NodeCore:
    core = NodeCore("seed", SEED_ADDR, NodeMeta(), config, random.Random(1))
    legit = [PushPullState.of(f"node-{i}", f"10.0.1.{i}:7946", 0, 0, NodeMeta(), None) for i in range(3)]
    core.swim.bootstrap(legit, 0.0)
    return core


def test_push_pull_flood_of_140000_ghosts_is_bounded_and_a_joiner_still_joins() -> None:
    seed = _seed()
    frames = _ghost_frames(140_000, 1_250)
    assert len(frames) == 112
    for f in frames:
        seed.receive("10.6.6.6:7946", f, 1.0, reliable=True)
    assert seed.counters["wire_errors"] == 0
    # One peer introduces at most max_new_members_per_peer (20,000) members at once.
    assert LAN.max_new_members_per_peer == 20_000
    assert len(seed.swim.members) == 4 + 20_000
    assert seed.swim.counters["members_refused_rate"] == 120_000
    assert seed.swim.counters["members_refused_full"] == 0

    # The flooded node's push-pull fits frames; a node joining through it joins.
    joiner = NodeCore("joiner", "10.8.8.8:7946", NodeMeta(), LAN, random.Random(3), seeds=(SEED_ADDR,))
    out = joiner.start(2.0)
    answer = seed.receive("10.8.8.8:7946", out[0].data, 2.1, reliable=True)
    assert len(answer) > 1 and all(o.reliable and len(o.data) <= MAX_FRAME for o in answer)
    for o in answer:
        joiner.receive(SEED_ADDR, o.data, 2.2, reliable=True)
    assert joiner.counters["wire_errors"] == 0
    view = joiner.swim.view()
    assert all(view[n] == MemberState.ALIVE for n in ("seed", "node-0", "node-1", "node-2"))
    assert seed.swim.members["joiner"].state == MemberState.ALIVE
    # The joiner takes at most 20,000 new members from its seed: the 4 it needs come first.
    assert len(joiner.swim.members) == 1 + 20_000
    assert joiner.swim.counters["members_refused_rate"] == 4 + 20_000 - 20_000


def test_per_peer_budget_refills_over_the_push_pull_interval_and_peers_are_independent() -> None:
    cfg = LAN.with_overrides(max_new_members_per_peer=1_000, max_new_members_per_push_pull=400)
    seed = _seed(cfg)
    frames = _ghost_frames(3_000, 1_000)
    seed.receive("x", frames[0], 1.0, reliable=True)
    # One push-pull message adds at most 400 new members.
    assert len(seed.swim.members) == 4 + 400
    assert seed.swim.counters["members_refused_rate"] == 600
    for f in frames[1:]:
        seed.receive("x", f, 1.0, reliable=True)
    assert len(seed.swim.members) == 4 + 1_000  # the peer's bucket is empty
    # Half an interval refills half the bucket (500 tokens), spent 400 per message.
    seed.receive("x", _ghost_frames(600, 600, "h")[0], 1.0 + cfg.push_pull_interval / 2, reliable=True)
    assert len(seed.swim.members) == 4 + 1_400
    seed.receive("x", _ghost_frames(600, 600, "i")[0], 1.0 + cfg.push_pull_interval / 2, reliable=True)
    assert len(seed.swim.members) == 4 + 1_500
    # Gossip draws from the same bucket: evil's Alive about a new member is refused...
    refused = seed.swim.counters["members_refused_rate"]
    seed.receive("x", encode("evil", Alive(0, "late", "l:1", NodeMeta())), 1.0 + cfg.push_pull_interval / 2)
    assert "late" not in seed.swim.members and seed.swim.counters["members_refused_rate"] == refused + 1
    # ... while another peer still introduces members, and members already held still update.
    seed.receive("y", encode("node-0", Alive(0, "fresh", "f:1", NodeMeta())), 1.0 + cfg.push_pull_interval / 2)
    assert seed.swim.members["fresh"].state == MemberState.ALIVE
    seed.receive("x", encode("evil", Alive(5, "g7", "h7", NodeMeta())), 1.0 + cfg.push_pull_interval / 2)
    assert seed.swim.members["g7"].incarnation == 5


def test_member_table_never_exceeds_max_members_and_reaping_frees_room() -> None:
    cfg = LAN.with_overrides(max_members=50, max_new_members_per_peer=30, max_new_members_per_push_pull=30)
    core = SwimCore("a", "a:1", NodeMeta(), cfg, random.Random(1))
    for s in range(5):  # five peers, 30 new members each: 150 offered
        for i in range(30):
            core.handle(f"p{s}", decode(encode(f"p{s}", Alive(0, f"m{s}-{i}", f"h{s}-{i}", NodeMeta()))), 1.0)
    assert len(core.members) == 50
    assert core.counters["members_refused_full"] == 150 - 49
    assert core.counters["members_refused_rate"] == 0
    # Known members still update when the table is full.
    core.handle("p0", decode(encode("p0", Alive(3, "m0-0", "h0-0", NodeMeta()))), 2.0)
    assert core.members["m0-0"].incarnation == 3
    core.handle("p0", decode(encode("p0", Dead(3, "m0-0", "p0"))), 2.0)
    assert core.members["m0-0"].state == MemberState.DEAD
    core.reap(2.0 + cfg.tombstone_time + 1)
    assert "m0-0" not in core.members
    core.handle("p9", decode(encode("p9", Alive(0, "newcomer", "n:1", NodeMeta()))), 2.0 + cfg.tombstone_time + 2)
    assert core.members["newcomer"].state == MemberState.ALIVE
    assert len(core.members) == 50


def test_bootstrap_stops_at_max_members() -> None:
    cfg = LAN.with_overrides(max_members=100)
    core = SwimCore("a", "a:1", NodeMeta(), cfg, random.Random(1))
    core.bootstrap([PushPullState.of(f"n{i}", f"h{i}", 0, 0, NodeMeta(), None) for i in range(150)], 0.0)
    assert len(core.members) == 100 and core.num_members() == 100
    assert core.counters["members_refused_full"] == 51


def test_twenty_thousand_piggybacked_updates_in_one_frame_are_bounded_in_work() -> None:
    items = [encode_broadcast(Alive(0, f"g{i}", f"h{i}", NodeMeta())) for i in range(20_000)]
    env = decode(encode("evil", Gossip(), items), limit=1 << 20)  # a 1 MB frame, decoded anyway
    assert len(env.piggyback) == MAX_PIGGYBACK == 120 and env.skipped_items == 20_000 - 120
    core = SwimCore("a", "a:1", NodeMeta(), LAN, random.Random(1))
    applied = []
    apply = core._apply_update
    core._apply_update = lambda u, now: (applied.append(u), apply(u, now))  # type: ignore[method-assign]
    core.handle("x", env, 1.0)
    assert len(applied) == 120
    assert len(core.members) == 1 + 120
    assert core.counters["piggyback_skipped"] == 20_000 - 120
    # Through a node: a full frame of the smallest updates is skipped past the first 120, counted.
    node = NodeCore("b", "b:1", NodeMeta(), LAN, random.Random(2))
    small = [encode_broadcast(Dead(i, "zz", "y")) for i in range(4_800)]
    data = encode("evil", Gossip(), small)
    assert len(data) <= MAX_FRAME
    node.receive("x", data, 1.0, reliable=True)
    assert node.swim.counters["piggyback_skipped"] == 4_800 - 120


def test_legitimate_join_of_a_mesh_larger_than_the_peer_budget_completes_over_push_pulls() -> None:
    cfg = LAN.with_overrides(max_new_members_per_peer=2_000, max_new_members_per_push_pull=1_000)
    n = 5_000
    seed = NodeCore("seed", SEED_ADDR, NodeMeta(), cfg, random.Random(1))
    seed.swim.bootstrap([PushPullState.of(f"node-{i:05d}", f"10.{i // 250}.{i % 250}.9:1", 0, 0, NodeMeta(), None) for i in range(n)], 0.0)
    joiner = NodeCore("joiner", "10.8.8.8:7946", NodeMeta(), cfg, random.Random(3), seeds=(SEED_ADDR,))
    learnt = []
    t = 1.0
    request = joiner.start(t)
    for _ in range(3):  # ceil(5,001 / 2,000) exchanges, one push-pull interval apart
        answer = seed.receive("10.8.8.8:7946", request[0].data, t, reliable=True)
        assert all(len(o.data) <= MAX_FRAME for o in answer)
        for o in answer:
            joiner.receive(SEED_ADDR, o.data, t, reliable=True)
        learnt.append(len(joiner.swim.members) - 1)
        t += cfg.push_pull_interval
        request = joiner.swim._push_pull_to(SEED_ADDR, join=False, reply=False)
    assert learnt == [2_000, 4_000, n + 1]
    assert all(s == MemberState.ALIVE for s in joiner.swim.view().values())


def test_every_push_pull_frame_fits_with_max_members_filled() -> None:
    meta = NodeMeta(
        arch="aarch64", cores=64, memory_mb=65536, labels=tuple((f"label-{k}", "v" * 20) for k in range(6)), name="n" * 64
    )
    core = NodeCore("a" * 128, "10.0.0.1:7946", NodeMeta(), LAN, random.Random(1))
    states = [
        PushPullState.of(f"{i:06d}" + "x" * 122, f"host-{i:06d}.example.org:7946", 2**40 + i, 0, meta, None, bytes(32))
        for i in range(LAN.max_members + 10)
    ]
    core.swim.bootstrap(states, 0.0)
    assert len(core.swim.members) == LAN.max_members == 100_000
    assert core.swim.counters["members_refused_full"] == 11
    frames = core.swim._push_pull_to("10.9.9.9:7946", join=False, reply=False)
    assert all(len(f.data) <= MAX_FRAME for f in frames)
    assert sum(len(decode(f.data, MAX_FRAME).msg.rows) for f in frames) == LAN.max_members


@pytest.mark.parametrize(
    "overrides",
    [
        {"max_members": 1},
        {"max_members": 2.5},
        {"max_new_members_per_push_pull": 0},
        {"max_new_members_per_peer": 10, "max_new_members_per_push_pull": 20},
        {"max_new_members_per_peer": True},
    ],
)
def test_flood_bounds_are_validated(overrides: dict) -> None:
    with pytest.raises(ConfigError):
        LAN.with_overrides(**overrides)


def test_bounds_defaults_are_above_any_simulated_mesh() -> None:
    assert LAN.max_members >= 10 * 10_000  # bench_sim's largest run is 10,000 nodes
    assert LAN.max_new_members_per_peer > 10_000 + 1  # a 10,000-node mesh is learnt in one push-pull
    assert MAX_PIGGYBACK * 10 == MAX_DATAGRAM
