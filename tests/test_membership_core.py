"""SwimCore/NodeCore driven by hand-fed messages: no network, no clock, no threads."""

from __future__ import annotations

import math
import random

import pytest

from mesh.membership import MemberState, NodeMeta, profile
from mesh.membership.messages import Ack, Alive, Dead, Gossip, IndirectPing, Nack, Ping, PushPull, Suspect
from mesh.node import NodeCore
from mesh.wire import decode, encode, encode_broadcast

LAN = profile("lan")


def node(name: str, seeds: tuple[str, ...] = (), cfg=LAN, seed: int = 1) -> NodeCore:
    return NodeCore(name, name, NodeMeta(), cfg, random.Random(f"{seed}{name}"), now=0.0, seeds=seeds)


def deliver(nodes: dict[str, NodeCore], src: str, outs, now: float, drop=lambda o: False) -> list:
    """Deliver outgoing messages instantly; return everything sent in reply (recursively)."""
    sent = []
    queue = [(src, o) for o in outs]
    while queue:
        s, o = queue.pop(0)
        sent.append((s, o))
        if o.dst not in nodes or drop(o):
            continue
        replies = nodes[o.dst].receive(s, o.data, now, o.reliable)
        queue.extend((o.dst, r) for r in replies)
    return sent


def cluster(names: list[str]) -> dict[str, NodeCore]:
    nodes = {n: node(n, seeds=(names[0],) if n != names[0] else ()) for n in names}
    for n in names[1:]:
        deliver(nodes, n, nodes[n].start(0.0), 0.0)
    # one full exchange so everyone knows everyone
    for n in names:
        core = nodes[n]
        for peer in names:
            if peer != n:
                deliver(nodes, n, core.swim._push_pull_to(peer, join=False, reply=False), 0.0)
    return nodes


def msgs(sent, typ):
    return [(s, o, decode(o.data, 1 << 22)) for s, o in sent if decode(o.data, 1 << 22).msg.__class__ is typ]


def test_join_through_seed_builds_full_view() -> None:
    nodes = cluster(["a", "b", "c", "d"])
    for core in nodes.values():
        assert sorted(core.swim.view()) == ["a", "b", "c", "d"]
        assert all(s == MemberState.ALIVE for s in core.swim.view().values())


def test_probe_ack_updates_vivaldi_and_finishes_probe() -> None:
    nodes = cluster(["a", "b"])
    a = nodes["a"]
    t = a.next_deadline()
    assert t is not None
    outs = a.tick(t)
    pings = [o for o in outs if isinstance(decode(o.data).msg, Ping)]
    assert len(pings) == 1 and pings[0].dst == "b"
    ack_out = nodes["b"].receive("a", pings[0].data, t + 0.010)
    (ack,) = ack_out
    env = decode(ack.data)
    assert isinstance(env.msg, Ack) and env.msg.coord is not None
    a.receive("b", ack.data, t + 0.020)
    assert a.swim.vivaldi.updates == 1
    assert a.swim._probe is not None and a.swim._probe.acked
    # b's coordinate as it sent it: packed float32s, kept as received.
    assert a.swim.coords.get("b") == env.msg.coord
    assert a.swim.coordinate_of("b").to_wire() == pytest.approx(nodes["b"].swim.vivaldi.coord.to_wire(), rel=1e-6)
    # no suspicion after the interval
    a.tick(t + 1.5)
    assert a.swim.view()["b"] == MemberState.ALIVE


def test_missed_ack_triggers_indirect_probe_and_nacks_then_suspect() -> None:
    nodes = cluster(["a", "b", "c", "d", "e"])
    a = nodes["a"]
    a.swim._probe_order = ["b"]
    a.swim._probe_index = 0
    t0 = a.swim._next_probe_at
    outs = a.tick(t0)
    assert [decode(o.data).msg.target for o in outs if isinstance(decode(o.data).msg, Ping)] == ["b"]
    # b is silent: after probe_timeout a asks k=3 peers
    outs = a.tick(t0 + LAN.probe_timeout)
    ind = [o for o in outs if isinstance(decode(o.data).msg, IndirectPing)]
    assert len(ind) == 3 and {o.dst for o in ind} <= {"c", "d", "e"}
    # the helpers ping b (which is dead) and send nacks when their own timeout passes
    for o in ind:
        helper = nodes[o.dst]
        relay_out = helper.receive("a", o.data, t0 + 0.6)
        assert any(isinstance(decode(r.data).msg, Ping) and r.dst == "b" for r in relay_out)
        nacks = helper.tick(t0 + 0.6 + LAN.probe_timeout)
        assert [type(decode(r.data).msg) for r in nacks if r.dst == "a"].count(Nack) == 1
        for r in nacks:
            a.receive(o.dst, r.data, t0 + 1.15)
    a.tick(t0 + LAN.probe_interval)
    assert a.swim.view()["b"] == MemberState.SUSPECT
    assert a.swim.awareness.score == 0  # all nacks arrived: our own link is healthy
    assert any(e.kind == "suspect" and e.node == "b" for e in a.drain_events())


def test_indirect_ack_is_relayed_back_to_origin() -> None:
    nodes = cluster(["a", "b", "c"])
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    a.swim._probe_order, a.swim._probe_index = ["b"], 0
    t0 = a.swim._next_probe_at
    a.tick(t0)
    outs = a.tick(t0 + LAN.probe_timeout)
    (ind,) = [o for o in outs if isinstance(decode(o.data).msg, IndirectPing)]
    assert ind.dst == "c"
    (ping,) = c.receive("a", ind.data, t0 + 0.6)
    (ack,) = b.receive("c", ping.data, t0 + 0.61)
    (relayed,) = c.receive("b", ack.data, t0 + 0.62)
    assert relayed.dst == "a" and decode(relayed.data).msg.seq == a.swim._probe.seq
    a.receive("c", relayed.data, t0 + 0.63)
    a.tick(t0 + LAN.probe_interval)
    assert a.swim.view()["b"] == MemberState.ALIVE


# memberlist, lan profile, N = 8 < 10 so log10 is floored at 1:
# min = suspicionMult (4) * 1 * probeInterval (1 s) = 4 s; max = SuspicionMaxTimeoutMult (6) * min = 24 s.
LAN_SMALL_MIN, LAN_SMALL_MAX = 4.0, 24.0


def test_suspicion_timeouts_match_memberlist() -> None:
    assert LAN.suspicion_timeouts(8) == pytest.approx((LAN_SMALL_MIN, LAN_SMALL_MAX))
    assert LAN.suspicion_timeouts(1) == pytest.approx((4.0, 24.0))
    assert LAN.suspicion_timeouts(100) == pytest.approx((8.0, 48.0))  # log10(100) = 2
    assert profile("wan").suspicion_timeouts(1000) == pytest.approx((90.0, 540.0))  # 6 * 3 * 5 s


def test_suspect_times_out_to_dead_and_confirmations_shorten_it() -> None:
    nodes = cluster([f"n{i}" for i in range(8)])
    a = nodes["n0"]
    inc = a.swim.members["n7"].incarnation
    a.receive("n1", encode("n1", Suspect(inc, "n7", "n1")), 10.0)
    timer = a.swim._suspicions["n7"]
    assert timer.deadline == pytest.approx(10.0 + LAN_SMALL_MAX)
    # Lifeguard with k = suspicion_mult - 2 = 2 expected confirmations:
    # timeout = max - (max - min) * log(c + 1) / log(k + 1), measured from the first suspicion.
    a.receive("n2", encode("n2", Suspect(inc, "n7", "n2")), 11.0)
    a.receive("n2", encode("n2", Suspect(inc, "n7", "n2")), 11.0)  # duplicate: no effect
    one = LAN_SMALL_MAX - (LAN_SMALL_MAX - LAN_SMALL_MIN) * math.log(2) / math.log(3)
    assert timer.deadline == pytest.approx(10.0 + one)  # 10 + 11.381 s
    a.receive("n3", encode("n3", Suspect(inc, "n7", "n3")), 12.0)
    assert timer.deadline == pytest.approx(10.0 + LAN_SMALL_MIN)
    a.tick(10.0 + LAN_SMALL_MIN - 0.01)
    assert a.swim.view()["n7"] == MemberState.SUSPECT
    a.tick(10.0 + LAN_SMALL_MIN)
    assert a.swim.view()["n7"] == MemberState.DEAD


def run(nodes: dict[str, NodeCore], start: float, end: float, step: float = 0.05) -> None:
    """Tick every node every ``step`` seconds and deliver everything instantly."""
    now = start
    while now < end:
        now += step
        for n in sorted(nodes):
            deliver(nodes, n, nodes[n].tick(now), now)


def test_refutation_raises_incarnation_and_clears_suspicion() -> None:
    nodes = cluster(["a", "b", "c"])
    a, b = nodes["a"], nodes["b"]
    a.receive("c", encode("c", Suspect(0, "b", "c")), 5.0)
    assert a.swim.view()["b"] == MemberState.SUSPECT
    # b hears that it is suspected and refutes
    b.receive("c", encode("c", Suspect(0, "b", "c")), 5.1)
    assert b.swim.incarnation == 1 and b.swim.counters["refutes"] == 1
    assert b.swim.awareness.score == 1  # having to refute counts against local health
    # The protocol carries b's refutation to a (gossip, or piggyback on probes) well
    # before a's suspicion could expire (4 s at the earliest here).
    run(nodes, 5.1, 6.0)
    assert a.swim.view()["b"] == MemberState.ALIVE
    assert a.swim.members["b"].incarnation == 1
    assert "b" not in a.swim._suspicions


def test_stale_updates_are_ignored() -> None:
    nodes = cluster(["a", "b"])
    a = nodes["a"]
    a.receive("x", encode("x", Alive(5, "b", "b", NodeMeta(cores=9))), 1.0)
    a.receive("x", encode("x", Alive(4, "b", "b", NodeMeta(cores=1))), 1.0)
    assert a.swim.members["b"].meta.cores == 9
    a.receive("x", encode("x", Suspect(3, "b", "x")), 1.0)
    assert a.swim.view()["b"] == MemberState.ALIVE
    a.receive("x", encode("x", Dead(5, "b", "x")), 1.0)
    assert a.swim.view()["b"] == MemberState.DEAD
    a.receive("x", encode("x", Alive(5, "b", "b", NodeMeta())), 1.0)  # same incarnation cannot resurrect
    assert a.swim.view()["b"] == MemberState.DEAD
    a.receive("x", encode("x", Alive(6, "b", "b", NodeMeta())), 1.0)
    assert a.swim.view()["b"] == MemberState.ALIVE


def test_graceful_leave_is_left_not_dead() -> None:
    nodes = cluster(["a", "b", "c"])
    outs = nodes["c"].leave(3.0)
    assert outs, "leave gossips immediately"
    deliver(nodes, "c", outs, 3.0)
    for n in ("a", "b"):
        # gossip_nodes (3) >= the 2 peers: the leave reaches both in its first round.
        assert nodes[n].swim.view()["c"] == MemberState.LEFT
        assert [e.kind for e in nodes[n].drain_events() if e.node == "c"][-1] == "left"
    # a leaving node does not refute its own departure
    nodes["c"].receive("a", encode("a", Dead(0, "c", "a")), 3.1)
    assert nodes["c"].swim.incarnation == 0


def test_leave_gossip_names_the_node_each_datagram_is_for() -> None:
    """The daemon seals a datagram only for a named member (issue 10: the leave went unsent).

    Unnamed, the first round of leave gossip was dropped by the driver; only the one transmission
    left for the next round went out, to one random target, so with a recently dead member among
    the targets the other nodes never heard the leave and declared the leaver dead.
    """
    nodes = cluster(["a", "b", "c", "d"])
    outs = nodes["d"].leave(3.0)
    assert len(outs) == 3  # gossip_nodes = 3 peers, all of them
    assert sorted(o.dst for o in outs) == ["a", "b", "c"]
    assert all(o.node == o.dst for o in outs), [(o.dst, o.node) for o in outs]


def test_push_pull_merge_learns_members_and_treats_remote_dead_as_suspect() -> None:
    a = node("a")
    b = cluster(["b", "c", "d"])["b"]
    b.receive("c", encode("c", Dead(0, "d", "c")), 1.0)
    pp = PushPull.of(False, False, b.swim.local_states())
    outs = a.receive("b", encode("b", pp), 2.0, reliable=True)
    assert any(decode(o.data, 1 << 22).msg.reply for o in outs)
    view = a.swim.view()
    assert view["b"] == MemberState.ALIVE and view["c"] == MemberState.ALIVE
    assert "d" not in view  # a remote death of an unknown node is not news worth adopting
    a.receive("d", encode("d", Alive(0, "d", "d", NodeMeta())), 2.0)
    assert a.swim.view()["d"] == MemberState.ALIVE
    a.receive("b", encode("b", pp), 3.0, reliable=True)
    assert a.swim.view()["d"] == MemberState.SUSPECT  # suspect, so d can still refute


def test_restarted_node_reclaims_its_name_by_refuting_its_tombstone() -> None:
    nodes = cluster(["a", "b"])
    a = nodes["a"]
    a.receive("x", encode("x", Dead(3, "b", "x")), 1.0)  # b was at 3 in an earlier life
    fresh = node("b", seeds=("a",))  # restarted: state lost, incarnation 0
    nodes["b"] = fresh
    deliver(nodes, "b", fresh.start(2.0), 2.0)
    assert fresh.swim.incarnation == 4  # refuted dead@3
    run(nodes, 2.0, 3.0)
    assert a.swim.view()["b"] == MemberState.ALIVE and a.swim.members["b"].incarnation == 4


def test_metadata_update_bumps_incarnation_and_spreads() -> None:
    nodes = cluster(["a", "b", "c"])
    meta = NodeMeta(arch="aarch64", labels=(("gpu", "1"),), load=0.5)
    nodes["a"].update_meta(meta, 1.0)
    assert nodes["a"].swim.incarnation == 1
    now = 1.0
    for _ in range(20):
        now += 0.2
        for n, core in nodes.items():
            deliver(nodes, n, core.tick(now), now)
    for n in ("b", "c"):
        assert nodes[n].swim.members["a"].meta == meta


def test_a_metadata_update_after_leaving_does_not_bring_the_node_back() -> None:
    """A leaving node's metadata update (a daemon loop publishing its coordinate or usage while the
    leave is gossiped) must not be an Alive with a higher incarnation: peers would take it back from
    left to alive, then declare it dead once it is gone (the demo's final view showed it so)."""
    nodes = cluster(["a", "b", "c"])
    deliver(nodes, "c", nodes["c"].leave(3.0), 3.0)
    assert nodes["a"].swim.view()["c"] == MemberState.LEFT
    nodes["c"].update_meta(NodeMeta(labels=(("late", "1"),)), 3.1)
    assert nodes["c"].swim.incarnation == 0
    run(nodes, 3.1, 7.1, step=0.2)  # 20 rounds: the metadata-update test's update spreads in that time
    for n in ("a", "b"):
        assert nodes[n].swim.view()["c"] == MemberState.LEFT, n


def test_garbage_is_counted_not_raised() -> None:
    a = node("a")
    assert a.receive("x", b"\xff\x00garbage", 0.0) == []
    assert a.receive("x", encode("x", Gossip()) + b"trailing", 0.0) == []
    assert a.counters["wire_errors"] == 2


def test_misdirected_ping_after_restart_is_not_acked() -> None:
    a = node("a")
    assert a.receive("x", encode("x", Ping(1, "someone-else")), 0.0) == []
    assert a.swim.counters["misdirected_pings"] == 1


def test_piggyback_stays_within_datagram_budget() -> None:
    nodes = cluster([f"n{i:02d}" for i in range(60)])
    a = nodes["n00"]
    for i in range(60):
        a.swim._queue(f"n{i:02d}", Alive(99, f"n{i:02d}", "x", NodeMeta(labels=(("k", "v" * 50),))), 0.0)
    outs = a.tick(a.next_deadline())
    assert outs and all(len(o.data) <= 1200 for o in outs if not o.reliable)
    assert sum(len(decode(o.data).piggyback) for o in outs if not o.reliable) > 5


def test_retransmit_limit_follows_cluster_size() -> None:
    assert LAN.retransmit_limit(1) == 4
    assert LAN.retransmit_limit(99) == 8
    assert LAN.retransmit_limit(1000) == 16
    assert LAN.push_pull_period(32) == LAN.push_pull_interval
    assert LAN.push_pull_period(1000) == 6 * LAN.push_pull_interval


def test_encode_broadcast_is_deterministic() -> None:
    a = encode_broadcast(Alive(1, "n", "a", NodeMeta(labels=(("a", "1"),))))
    assert a == encode_broadcast(Alive(1, "n", "a", NodeMeta(labels=(("a", "1"),))))


def test_a_node_alone_retries_its_seeds_with_backoff_and_jitter() -> None:
    # Each seed once at the plain interval, then rounds of the list spaced x2 each (+-20 %), at most 60 s.
    import random as _random

    from mesh.membership import NodeMeta, SwimCore
    from mesh.membership.config import profile as _profile

    core = SwimCore("a", "10.0.0.1:7946", NodeMeta(), _profile("lan"), _random.Random(5), 0.0,
                    seeds=["10.0.0.2:7946", "10.0.0.3:7946"])
    now, gaps, tried = 0.0, [], []
    for _ in range(12):
        out = core.tick(now)
        tried += [o.dst for o in out if o.reliable]
        nxt = core._next_join_at
        gaps.append(nxt - now)
        now = nxt
    assert set(tried) == {"10.0.0.2:7946", "10.0.0.3:7946"}
    assert gaps[:2] == [5.0, 5.0]  # the first round: the plain join_retry_interval
    assert 0.8 * 10 <= gaps[2] <= 1.2 * 10 and 0.8 * 20 <= gaps[4] <= 1.2 * 20
    assert all(g <= 60.0 * 1.2 for g in gaps) and max(gaps) >= 0.8 * 60  # capped
    assert len({round(g, 6) for g in gaps[2:]}) > 3  # jittered, not lock-step
