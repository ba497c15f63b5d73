"""After a partition heals: merged hearsay, refutation priority, reconnect, and the simulator's verdict trace.

Issue 8: in the built-in demo six live nodes were declared dead by nodes on their
own side right after the heal (every node merging the other side's state raised
and gossiped its own suspicion, each counted as an independent confirmation, and
the refutation waited behind the post-heal backlog), and a 200-node mesh took up
to 53 virtual seconds to agree again after a 50/50 split.
"""

from __future__ import annotations

import io
import random

import pytest

from mesh.membership import MemberState, NodeMeta, profile
from mesh.membership.broadcast import BroadcastQueue
from mesh.membership.messages import Alive, Dead, PushPull, PushPullState, Suspect
from mesh.membership.state import MemberEvent, SwimCore
from mesh.wire import decode, decode_broadcast, encode
from sim.engine import Simulation
from sim.report import build_report
from sim.scenario import Fault, parse

LAN = profile("lan")
BIG = 1 << 22


def core(name: str, peers: list[str], seed: int = 1) -> SwimCore:
    """A SwimCore that already knows ``peers`` alive at incarnation 0."""
    c = SwimCore(name, name, NodeMeta(), LAN, random.Random(f"{seed}:{name}"), now=0.0)
    c.bootstrap([PushPullState.of(p, p, 0, int(MemberState.ALIVE), NodeMeta(), None) for p in peers], 0.0)
    c.broadcasts = BroadcastQueue(lambda: LAN.retransmit_limit(c.num_members()))  # start with an empty queue
    return c


def state_of(view: dict[str, MemberState]) -> tuple[PushPullState, ...]:
    return tuple(PushPullState.of(n, n, 0, int(s), NodeMeta(), None) for n, s in sorted(view.items()))


def queued(c: SwimCore) -> list[object]:
    """Every update in the node's gossip queue, decoded, in the order it would send them."""
    return [decode_broadcast(b) for b in c.broadcasts.take(BIG)]


# ---------------------------------------------------------------- merge-derived suspicions


def test_merged_dead_state_is_a_local_suspicion_at_the_maximum_timeout_and_is_not_gossiped() -> None:
    names = [f"n{i}" for i in range(10)]
    x = core("n0", names[1:])
    remote = {n: MemberState.ALIVE for n in names} | {"n5": MemberState.DEAD}
    x.merge_states(state_of(remote), 10.0, "n9")
    assert x.view()["n5"] == MemberState.SUSPECT  # hearsay: suspect, so n5 can still refute
    _, hi = LAN.suspicion_timeouts(10)
    assert x._suspicions["n5"].deadline == pytest.approx(10.0 + hi)
    # Gossiping it as our own suspicion is what turned one stale belief into N "independent" ones.
    assert [u for u in queued(x) if isinstance(u, Suspect)] == []
    ev = [e for e in x.events if e.kind == "suspect"]
    assert [(e.node, e.source, e.origin) for e in ev] == [("n5", "n9", "merge")]


def test_merged_state_does_not_confirm_a_running_suspicion() -> None:
    names = [f"n{i}" for i in range(10)]
    x = core("n0", names[1:])
    x.handle("n1", decode(encode("n1", Suspect(0, "n5", "n1"))), 10.0)
    deadline = x._suspicions["n5"].deadline
    for peer, t in (("n7", 11.0), ("n8", 12.0), ("n9", 13.0)):
        x.merge_states(state_of({"n5": MemberState.DEAD}), t, peer)
    assert x._suspicions["n5"].deadline == deadline
    # A real suspicion from another prober still shortens it (Lifeguard's confirmation).
    x.handle("n2", decode(encode("n2", Suspect(0, "n5", "n2"))), 14.0)
    assert x._suspicions["n5"].deadline < deadline


def test_merge_tells_the_suspected_node_directly_and_it_refutes() -> None:
    names = [f"n{i}" for i in range(6)]
    x = core("n0", names[1:])
    outs = x.merge_states(state_of({"n3": MemberState.DEAD, "n4": MemberState.DEAD}), 10.0, "n5")
    notices = {o.dst: decode(o.data).msg for o in outs}
    assert notices == {"n3": Suspect(0, "n3", "n0"), "n4": Suspect(0, "n4", "n0")}
    subject = core("n3", [n for n in names if n != "n3"])
    subject.handle("n0", decode(outs[[o.dst for o in outs].index("n3")].data), 10.01)
    assert subject.incarnation == 1 and subject.counters["refutes"] == 1


def test_merge_notices_are_capped_at_the_retransmit_limit() -> None:
    names = [f"n{i:03d}" for i in range(120)]
    x = core("n000", names[1:])
    outs = x.merge_states(state_of({n: MemberState.DEAD for n in names[1:]}), 10.0, "n001")
    assert len(outs) == LAN.retransmit_limit(120)  # 4 * ceil(log10(121)) = 12
    assert sum(1 for s in x.view().values() if s == MemberState.SUSPECT) == 119


# ---------------------------------------------------------------- refutation priority


def test_refutation_goes_out_ahead_of_a_newer_backlog() -> None:
    names = [f"n{i:03d}" for i in range(300)]
    x = core("n000", names[1:])
    x.handle("n001", decode(encode("n001", Suspect(0, "n000", "n001"))), 10.0)
    assert x.incarnation == 1
    # The post-heal flood: hundreds of updates queued *after* the refutation.
    for i, n in enumerate(names[1:]):
        x.handle("n002", decode(encode("n002", Alive(1, n, n, NodeMeta()))), 10.1 + i * 1e-4)
    limit = LAN.retransmit_limit(x.num_members())
    firsts = []
    while len(firsts) < limit:
        out = x._gossip(11.0)
        assert out
        firsts += [decode(o.data).piggyback[0] for o in out]
    assert firsts[:limit] == [Alive(1, "n000", "n000", NodeMeta())] * limit
    # Then it has had its transmissions, like any update.
    assert "n000" not in x.broadcasts


# ---------------------------------------------------------------- reconnect after a comeback


def _push_pulls(outs: list) -> list[str]:
    return [o.dst for o in outs if o.reliable and isinstance(decode(o.data, BIG).msg, PushPull)]


def _push_pulls_until(x: SwimCore, start: float, end: float) -> list[str]:
    sent: list[str] = []
    t = start
    while t <= end:
        sent += _push_pulls(x.tick(t))
        t += 0.05
    return sent


def _just_after_a_regular_reconnect(x: SwimCore, start: float) -> float:
    """Tick until the periodic reconnect has just run, so the next one is ``reconnect_interval`` away."""
    t = start
    while True:
        before = x.counters["reconnects"]
        x.tick(t)
        if x.counters["reconnects"] > before:
            return t + 0.01
        t += 0.05


def test_a_dead_member_coming_back_triggers_a_prompt_reconnect_to_the_dead() -> None:
    names = [f"n{i:03d}" for i in range(40)]
    x = core("n000", names[1:])
    x._next_push_pull_at = 1e9  # isolate the reconnect path
    for n in names[20:]:
        x.handle(n, decode(encode("n001", Dead(0, n, "n001"))), 5.0)
    t0 = _just_after_a_regular_reconnect(x, 5.0)
    # One of the dead refutes: evidence that the rest of the dead list is alive too.
    x.handle("n020", decode(encode("n020", Alive(1, "n020", "n020", NodeMeta()))), t0)
    due = x.next_deadline()
    assert due is not None and due <= t0 + 1.5 * LAN.probe_interval
    sent = _push_pulls_until(x, t0, t0 + 1.5 * LAN.probe_interval)
    # Serf's coin (failed/alive = 19/21 here, 1/N in the tail) is skipped: a push-pull to a dead member.
    assert len(sent) == 1 and sent[0] in names[21:]


def test_learning_we_were_declared_dead_triggers_a_prompt_reconnect() -> None:
    names = [f"n{i:03d}" for i in range(40)]
    x = core("n000", names[1:])
    x._next_push_pull_at = 1e9
    for n in names[20:]:
        x.handle(n, decode(encode("n001", Dead(0, n, "n001"))), 5.0)
    t0 = _just_after_a_regular_reconnect(x, 5.0)
    x.handle("n030", decode(encode("n030", Dead(0, "n000", "n030"))), t0)
    assert x.incarnation == 1
    sent = _push_pulls_until(x, t0, t0 + 1.5 * LAN.probe_interval)
    assert len(sent) == 1 and sent[0] in names[20:]


# ---------------------------------------------------------------- the simulator's record


def _partition_doc(n: int, heal: float, duration: float) -> dict:
    half = n // 2
    scn = parse({"nodes": n})
    return {
        "nodes": n,
        "profile": "lan",
        "duration": duration,
        "network": {"latency_ms": 2.0, "jitter_ms": 1.0, "loss": 0.01},
        "faults": [
            {"at": 20.0, "action": "partition", "groups": [f"n000-{scn.node_name(half - 1)}", f"{scn.node_name(half)}-{scn.node_name(n - 1)}"]},
            {"at": heal, "action": "heal"},
        ],
    }


def test_trace_records_every_verdict_with_observer_subject_incarnation_and_source() -> None:
    doc = _partition_doc(16, 50.0, 70.0)
    buf = io.StringIO()
    sim = Simulation(parse(doc), 4, trace=buf)
    sim.run()
    report = build_report(sim)
    lines = [ln.split() for ln in buf.getvalue().splitlines() if ln.split()[1] == "V"]
    kinds = {ln[3] for ln in lines}
    assert {"join", "suspect", "dead", "alive", "refute"} <= kinds
    dead = [ln for ln in lines if ln[3] == "dead"]
    # Every dead verdict about a live node is in the trace, with its classification.
    assert sum(1 for ln in dead if ln[8] in ("partition", "other")) == report["false_positives"]
    assert report["verdicts"]["dead"] == len(dead)
    for ln in dead:
        t, _, observer, kind, subject, inc, source, origin, cause = ln
        assert float(t) >= 20.0 and observer != subject and int(inc) >= 0 and source.startswith("n")
    # Each side declared the other dead during the split: observer and decider on one side, subject on the other.
    for ln in dead:
        if ln[8] == "partition":
            assert (ln[2] < "n008") != (ln[4] < "n008") or (ln[6] < "n008") != (ln[4] < "n008")


def test_dead_verdicts_are_partition_effects_only_when_the_decider_was_cut_off_during_its_suspicion() -> None:
    # The classifier alone: the protocol is paused (no run between the hand-fed verdicts) so only these count.
    sim = Simulation(parse({"nodes": 10, "duration": 100.0}), 1)
    sim.run(5.0)
    side_a, side_b = "n000-n004", "n005-n009"

    def at(t: float, node: str, kind: str, subject: str, source: str, origin: str = "") -> None:
        sim.now = t
        sim._observe(sim.nodes[node], [MemberEvent(kind, subject, 0, t, source, origin)])

    sim.now = 20.0
    sim._apply_fault(Fault(20.0, "partition", {"groups": [side_a, side_b]}))
    at(30.0, "n006", "suspect", "n004", "n006")  # n006 cannot reach n004: a failed probe
    at(35.0, "n006", "dead", "n004", "n006")
    sim.now = 40.0
    sim._apply_fault(Fault(40.0, "heal", {}))
    at(45.0, "n003", "dead", "n004", "n006")  # n003 relays n006's decision after the heal
    # After the heal n006 merges stale state about n002 and times it out: n002 was reachable all along.
    at(45.0, "n006", "suspect", "n002", "n007", "merge")
    at(50.0, "n006", "dead", "n002", "n006")
    at(50.5, "n001", "dead", "n002", "n006")
    fps = {(f["observer"], f["node"]): f["across_partition"] for f in sim.false_positives}
    assert fps == {
        ("n006", "n004"): True,
        ("n003", "n004"): True,
        ("n006", "n002"): False,
        ("n001", "n002"): False,
    }
    assert build_report(sim)["false_positives_other"] == 2


def test_urgent_update_is_taken_first_until_its_transmissions_are_used_up() -> None:
    q = BroadcastQueue(lambda: 3)
    q.queue("me", b"M" * 20, urgent=True)
    for i in range(50):
        q.queue(f"k{i:02d}", bytes([i]) * 20)  # newer than "me", same transmit count
    rounds = [q.take(100) for _ in range(4)]
    assert [r[0] for r in rounds[:3]] == [b"M" * 20] * 3
    assert b"M" * 20 not in rounds[3] and "me" not in q
    # Beside it, the ordinary order: fewest transmissions, newest first.
    assert rounds[0][1:] == [bytes([i]) * 20 for i in (49, 48, 47)]


def test_uncounted_take_leaves_every_update_where_it_was() -> None:
    q = BroadcastQueue(lambda: 2)
    q.queue("me", b"M" * 20, urgent=True)
    q.queue("a", b"A" * 20)
    q.queue("b", b"B" * 20)
    assert q.take(1000, count=False) == [b"M" * 20, b"B" * 20, b"A" * 20]
    assert q.take(1000, count=False) == [b"M" * 20, b"B" * 20, b"A" * 20]
    # Counted, each goes out twice (the limit), then it is gone.
    assert [sorted(q.take(1000)) for _ in range(3)] == [[b"A" * 20, b"B" * 20, b"M" * 20]] * 2 + [[]]
    assert len(q) == 0


def test_a_refutation_reaches_the_retransmit_limit_of_live_members_when_half_the_members_are_unreachable() -> None:
    # Issue 8, seed 9 of the 200-node 50/50 split (lan, 1% loss): a node of one side suspected
    # a live peer of its side 2 s into the partition; the peer refuted at once and 98 of its
    # side took the refutation within 1.6 s, but n085, holding the suspicion, got none of the
    # 1188 copies sent (586 of them went to the other side: gossip picks among suspect and
    # recently dead members too, and each copy counted against the 12-transmission limit),
    # and declared it dead 55 s later. A copy sent to a member we hold suspect or dead must
    # not use up a transmission: each update still reaches `limit` members we believe alive.
    names = [f"n{i:02d}" for i in range(40)]
    x = core("n00", names[1:], seed=3)
    for n in names[20:]:
        x.declare_dead(n, 0.5)  # the other side of a partition: dead, but gossiped to for 30 s
    x.broadcasts = BroadcastQueue(lambda: LAN.retransmit_limit(x.num_members()))  # only what follows
    limit = LAN.retransmit_limit(x.num_members())
    assert limit == 8  # 4 * ceil(log10(20 + 1)), memberlist's retransmit limit for 20 live members
    accusation = encode("n01", Suspect(0, "n00", "n01"))
    out = x.handle("n01", decode(accusation), 1.0)
    assert x.incarnation == 1  # refuted
    live_copies, dead_copies = 0, 0
    t = 1.0
    while t < 10.0:
        for o in out:
            if o.reliable:
                continue  # push-pull frames: not gossip
            env = decode(o.data)
            if any(isinstance(u, Alive) and u.node == "n00" and u.incarnation == 1 for u in env.piggyback):
                if o.dst in names[20:]:
                    dead_copies += 1
                else:
                    live_copies += 1
        t += 0.05
        out = x.tick(t)
    assert live_copies == limit
    assert dead_copies > 0  # the dead still hear it (gossip to the dead), on top of the limit


def test_a_stale_suspicion_is_answered_with_the_refutation_its_sender_missed() -> None:
    # The holder of a suspicion that missed the refutation gossips the old Suspect; a node
    # that holds the newer Alive answers it directly, and the holder's timer is cleared.
    names = [f"n{i}" for i in range(8)]
    holder, peer = core("n1", [n for n in names if n != "n1"]), core("n2", [n for n in names if n != "n2"])
    holder.handle("n3", decode(encode("n3", Suspect(0, "n5", "n3"))), 1.0)
    assert holder.view()["n5"] == MemberState.SUSPECT
    peer.handle("n5", decode(encode("n5", Alive(1, "n5", "n5", NodeMeta(), b""))), 1.0)  # the refutation
    out = peer.handle("n1", decode(encode("n1", Suspect(0, "n5", "n3"))), 2.0)  # stale, from the holder
    back = [o for o in out if o.dst == "n1"]
    assert len(back) == 1
    assert [(u.node, u.incarnation) for u in decode(back[0].data).piggyback if isinstance(u, Alive)] == [("n5", 1)]
    holder.handle("n2", decode(back[0].data), 2.01)
    assert holder.view()["n5"] == MemberState.ALIVE and "n5" not in holder._suspicions
    # A stale Dead is answered the same way; a Suspect at the incarnation we hold is not stale.
    out = peer.handle("n1", decode(encode("n1", Dead(0, "n5", "n1"))), 3.0)
    assert [o.dst for o in out] == ["n1"]
    out = peer.handle("n1", decode(encode("n1", Suspect(1, "n5", "n1"))), 4.0)
    assert [o.dst for o in out if o.dst == "n1"] == []
    assert peer.counters["stale_corrections"] == 2  # one per datagram answered (the Suspect, the Dead)


def test_the_suspect_itself_answers_a_stale_accusation_to_its_sender() -> None:
    names = [f"n{i}" for i in range(8)]
    y = core("n5", [n for n in names if n != "n5"])
    y.handle("n3", decode(encode("n3", Suspect(0, "n5", "n3"))), 1.0)
    assert y.incarnation == 1
    out = y.handle("n1", decode(encode("n1", Suspect(0, "n5", "n3"))), 5.0)
    back = [o for o in out if o.dst == "n1"]
    assert len(back) == 1
    assert [(u.node, u.incarnation) for u in decode(back[0].data).piggyback if isinstance(u, Alive)] == [("n5", 1)]
