"""Membership under hostile or odd input: issue 8's reproductions, each a regression test."""

from __future__ import annotations

import math
import random

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.harness.budget import examples

from mesh.errors import ConfigError, WireError
from mesh.membership import MembershipConfig, MemberState, NodeMeta, SwimCore, profile
from mesh.membership.messages import (
    Ack,
    Alive,
    Dead,
    Gossip,
    IndirectPing,
    Nack,
    Ping,
    PushPull,
    PushPullState,
    Suspect,
)
from mesh.node import NodeCore
from mesh.wire import MAX_DATAGRAM, PROTOCOL_VERSION, decode, encode, encode_broadcast, is_valid_name, pack
from tests.hostile_datagrams import mutated_datagrams
from tests.membership_driver import MiniNet

LAN = profile("lan")
LOCAL = profile("local")
KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))


def core(
    name: str, cfg: MembershipConfig = LAN, meta: NodeMeta | None = None, seeds: tuple[str, ...] = (), key: bytes = b""
) -> NodeCore:
    return NodeCore(name, name, meta or NodeMeta(), cfg, random.Random(f"7:{name}"), now=0.0, seeds=seeds, key=key)


def pair(cfg: MembershipConfig = LAN, meta: NodeMeta | None = None) -> MiniNet:
    net = MiniNet({"a": core("a", cfg, meta), "b": core("b", cfg, meta, seeds=("a",))})
    net.start()
    return net


def ping_is_answered(node: NodeCore, now: float) -> bool:
    """Send ``node`` a ping; True if it answers with an ack a fresh decoder accepts."""
    outs = node.receive("prober", encode("prober", Ping(4242, node.name)), now)
    acks = [decode(o.data) for o in outs if o.dst == "prober"]
    return any(isinstance(env.msg, Ack) and env.msg.seq == 4242 for env in acks)


# --------------------------------------------------------------------- self-refutation loop


def test_metadata_is_normalised_when_built() -> None:
    meta = NodeMeta(labels=(("zone", "eu"), ("gpu", "1")), load=0.12345, hardware=("tpu", "can"), geo=[1, 2], cores=4)
    assert meta.labels == (("gpu", "1"), ("zone", "eu"))
    assert meta.load == 0.123 and meta.hardware == ("can", "tpu") and meta.geo == (1.0, 2.0)
    assert NodeMeta.from_wire(msgpack.unpackb(pack(meta.to_wire()))) == meta


def test_unnormalised_metadata_does_not_make_a_node_refute_its_own_alive() -> None:
    # Issue 8: 278 refutes in 60 s with two nodes on the local profile, health pinned at worst.
    meta = NodeMeta(labels=(("zone", "eu"), ("gpu", "1")), load=0.12345)
    net = pair(LOCAL, meta)
    net.run_until(60.0)
    for name in ("a", "b"):
        swim = net.nodes[name].swim
        assert swim.counters["refutes"] == 0, name
        assert swim.incarnation == 0 and swim.awareness.score == 0
        assert swim.view() == {"a": MemberState.ALIVE, "b": MemberState.ALIVE}
    assert net.nodes["a"].swim.members["b"].meta == net.nodes["b"].meta


def test_metadata_update_with_unnormalised_values_bumps_the_incarnation_once() -> None:
    net = pair(LOCAL)
    net.run_until(5.0)
    net.nodes["a"].update_meta(NodeMeta(load=0.98765, labels=(("z", "1"), ("a", "2"))), net.now)
    net.run_until(30.0)
    a = net.nodes["a"].swim
    assert a.incarnation == 1 and a.counters["refutes"] == 0
    assert net.nodes["b"].swim.members["a"].meta == NodeMeta(load=0.988, labels=(("a", "2"), ("z", "1")))


# --------------------------------------------------------------------- one crafted message


@pytest.mark.parametrize("kind", [Suspect, Dead])
def test_accusation_at_the_wire_maximum_is_refused_and_the_node_keeps_acking(kind: type) -> None:
    net = pair(LAN)
    net.run_until(3.0)
    b = net.nodes["b"]
    b.receive("a", encode("a", kind(2**63 - 1, "b", "a")), net.now)
    assert b.swim.incarnation == 0
    assert b.swim.counters["incarnation_jumps"] == 1 and b.swim.counters["refutes"] == 0
    assert ping_is_answered(b, net.now)
    net.run_until(30.0)
    # Every ack and gossip of b still decodes at a: b stays alive in a's view at incarnation 0.
    assert net.nodes["a"].counters["wire_errors"] == 0
    assert net.nodes["a"].swim.view()["b"] == MemberState.ALIVE
    assert net.nodes["a"].swim.members["b"].incarnation == 0


def test_accusation_inside_the_window_is_still_refuted() -> None:
    b = core("b", LAN.with_overrides(incarnation_window=100))
    b.receive("a", encode("a", Suspect(100, "b", "a")), 1.0)
    assert b.swim.incarnation == 101 and b.swim.counters["refutes"] == 1
    b.receive("a", encode("a", Suspect(202, "b", "a")), 1.0)  # 101 more than we hold: refused
    assert b.swim.incarnation == 101 and b.swim.counters["incarnation_jumps"] == 1


def test_incarnation_jump_about_another_member_is_refused() -> None:
    net = pair(LAN)
    net.run_until(3.0)
    a = net.nodes["a"]
    a.receive("x", encode("x", Dead(2**40, "b", "x")), net.now)
    assert a.swim.view()["b"] == MemberState.ALIVE and a.swim.members["b"].incarnation == 0
    a.receive("x", encode("x", Alive(2**40, "b", "b", NodeMeta(cores=7))), net.now)
    assert a.swim.members["b"].meta == NodeMeta()
    assert a.swim.counters["incarnation_jumps"] == 2


def test_one_bad_piggybacked_item_no_longer_drops_the_ack() -> None:
    net = pair(LAN)
    net.run_until(3.0)
    a = net.nodes["a"]
    a.swim._probe_order, a.swim._probe_index = ["b"], 0
    t0 = a.swim._next_probe_at
    net.run_until(t0 - 0.0001)
    outs = a.tick(t0)
    (ping,) = [o for o in outs if isinstance(decode(o.data).msg, Ping)]
    seq = decode(ping.data).msg.seq
    # An ack whose piggyback holds an Alive at 2**63 (what the refute used to produce) and a new broadcast type.
    poisoned = pack([6, [2**63, "b", "b", NodeMeta().to_wire(), b""]])
    future = pack([15, ["a", "broadcast", "from", "a", "newer", "version"]])
    good = encode_broadcast(Suspect(0, "c", "b"))
    data = msgpack.packb(
        [PROTOCOL_VERSION, Ack.TYPE, "b", Ack(seq, None).to_payload(), [poisoned, future, good]], use_bin_type=True
    )
    a.receive("b", data, t0 + 0.01)
    assert a.swim._probe is not None and a.swim._probe.acked
    assert a.swim.counters["piggyback_bad"] == 1 and a.swim.counters["piggyback_unknown"] == 1
    assert a.counters["wire_errors"] == 0


def test_unknown_message_type_is_counted_and_its_piggyback_used() -> None:
    a = core("a")
    alive = encode_broadcast(Alive(3, "c", "c", NodeMeta(cores=2)))
    # Type 13 is in the membership range but unknown to this version (a newer peer's message).
    data = msgpack.packb([PROTOCOL_VERSION, 13, "c", [1, 2, 3], [alive]], use_bin_type=True)
    assert a.receive("c", data, 1.0) == []
    assert a.swim.view()["c"] == MemberState.ALIVE and a.swim.members["c"].incarnation == 3
    assert a.swim.counters["unknown_messages"] == 1 and a.counters["wire_errors"] == 0
    # A type outside every known range is counted by the node core as unknown, not as garbage.
    a.receive("c", msgpack.packb([PROTOCOL_VERSION, 200, "c", [], []]), 1.0)
    assert a.counters["unknown_type"] == 1 and a.counters["wire_errors"] == 0


# --------------------------------------------------------------------- config relations / reaping


def test_tombstone_shorter_than_gossip_to_the_dead_is_refused() -> None:
    with pytest.raises(ConfigError, match="gossip_to_the_dead_time"):
        LAN.with_overrides(tombstone_time=10.0)
    with pytest.raises(ConfigError, match="gossip_to_the_dead_time"):
        SwimCore("a", "a", NodeMeta(), MembershipConfig(tombstone_time=10.0, reconnect_interval=5.0), random.Random(1))


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"dead_node_reclaim_time": 7200.0}, "dead_node_reclaim_time"),
        ({"reconnect_interval": 7200.0}, "reconnect_interval"),
        ({"probe_interval": float("nan")}, "probe_interval"),
        ({"gossip_interval": 0.0}, "gossip_interval"),
        ({"push_pull_interval": float("inf")}, "push_pull_interval"),
        ({"tombstone_time": 0.0, "gossip_to_the_dead_time": 0.0}, "tombstone_time"),
        ({"stream_timeout": -1.0}, "stream_timeout"),
        ({"gossip_to_the_dead_time": -1.0}, "gossip_to_the_dead_time"),
        ({"incarnation_window": 0}, "incarnation_window"),
        ({"gossip_nodes": 2.5}, "gossip_nodes"),
    ],
)
def test_config_relations_are_validated(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        LAN.with_overrides(**overrides)


def test_every_profile_is_valid() -> None:
    for name in ("lan", "wan", "local", "vehicle"):
        profile(name).validate()


def test_reap_forgets_a_member_everywhere() -> None:
    cfg = LAN.with_overrides(tombstone_time=30.0, gossip_to_the_dead_time=30.0, reconnect_interval=10.0)
    a = SwimCore("a", "a", NodeMeta(), cfg, random.Random(1))
    a.handle("b", decode(encode("b", Alive(0, "b", "b", NodeMeta()))), 0.0)
    a.handle("c", decode(encode("c", Dead(0, "b", "c"))), 1.0)
    assert "b" in a._recent_dead
    a.reap(40.0)
    assert "b" not in a.members and "b" not in a._recent_dead and "b" not in a._suspicions
    # Gossip rounds after the reap have nobody to address and must not fail.
    a._queue("x", Suspect(0, "x", "a"), 40.0)
    assert a.tick(40.5) == []


def test_tick_survives_a_long_run_with_tombstone_equal_to_gossip_to_the_dead() -> None:
    cfg = LOCAL.with_overrides(tombstone_time=15.0, gossip_to_the_dead_time=15.0, reconnect_interval=5.0)
    net = MiniNet({n: core(n, cfg, seeds=("a",) if n != "a" else ()) for n in ("a", "b", "c")})
    net.start()
    net.run_until(5.0)
    del net.nodes["c"]  # crashes
    net.run_until(80.0)
    for n in ("a", "b"):
        assert "c" not in net.nodes[n].swim.members  # declared dead, then reaped
        assert any(e.kind == "reap" and e.node == "c" for e in net.nodes[n].drain_events())


# --------------------------------------------------------------------- memberlist alignment


def _probe_setup(names: list[str]) -> tuple[MiniNet, NodeCore, float]:
    net = MiniNet({n: core(n, LAN, seeds=("a",) if n != "a" else ()) for n in names})
    net.start()
    net.run_until(3.0)
    a = net.nodes["a"]
    a.swim._probe_order, a.swim._probe_index = ["b"], 0
    return net, a, a.swim._next_probe_at


def test_probe_timeout_is_not_scaled_by_local_health() -> None:
    net, a, t0 = _probe_setup(["a", "b", "c"])
    a.swim.awareness.score = 3
    assert [decode(o.data).msg.target for o in a.tick(t0) if isinstance(decode(o.data).msg, Ping)] == ["b"]
    assert a.next_deadline() == pytest.approx(t0 + LAN.probe_timeout)
    outs = a.tick(t0 + LAN.probe_timeout)
    assert [o.dst for o in outs if isinstance(decode(o.data).msg, IndirectPing)] == ["c"]
    # ... while the interval is: the next probe starts (3 + 1) intervals later.
    assert a.swim._next_probe_at == pytest.approx(t0 + 4 * LAN.probe_interval)


def test_indirect_success_improves_local_health() -> None:
    net, a, t0 = _probe_setup(["a", "b", "c"])
    a.swim.awareness.score = 3
    a.tick(t0)
    (ind,) = [o for o in a.tick(t0 + LAN.probe_timeout) if isinstance(decode(o.data).msg, IndirectPing)]
    c, b = net.nodes["c"], net.nodes["b"]
    (ping,) = c.receive("a", ind.data, t0 + 0.51)
    (ack,) = b.receive("c", ping.data, t0 + 0.52)
    (relayed,) = c.receive("b", ack.data, t0 + 0.53)
    assert decode(relayed.data).msg.coord is None
    a.receive("c", relayed.data, t0 + 0.54)
    assert a.swim.awareness.score == 2


def test_relay_sends_nack_at_80_percent_but_relays_a_late_ack_until_the_full_timeout() -> None:
    net, a, _ = _probe_setup(["a", "b", "c"])
    c, b = net.nodes["c"], net.nodes["b"]
    t = 10.0
    (ping,) = c.receive("a", encode("a", IndirectPing(77, "b", "b", True)), t)
    nacks = c.tick(t + 0.8 * LAN.probe_timeout)
    assert [(o.dst, decode(o.data).msg) for o in nacks if isinstance(decode(o.data).msg, Nack)] == [("a", Nack(77))]
    (ack,) = b.receive("c", ping.data, t + 0.85 * LAN.probe_timeout)
    (relayed,) = c.receive("b", ack.data, t + 0.9 * LAN.probe_timeout)
    assert relayed.dst == "a" and decode(relayed.data).msg == Ack(77, None)
    # After the full timeout the relay is gone: a later ack is not relayed.
    (ping2,) = c.receive("a", encode("a", IndirectPing(78, "b", "b", True)), 20.0)
    c.tick(20.0 + LAN.probe_timeout)
    (ack2,) = b.receive("c", ping2.data, 20.0 + 1.01 * LAN.probe_timeout)
    assert c.receive("b", ack2.data, 20.0 + 1.02 * LAN.probe_timeout) == []


# --------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["\x084", "n\x13", "a b", "n" * 129, "\u202e", ""])
def test_invalid_names_never_become_members(name: str) -> None:
    a = core("a")
    meta_raw = PushPullState.pack_meta(NodeMeta())
    pig = pack([Alive.TYPE, [1, name, "addr", NodeMeta().to_wire(), b""]])
    a.receive("b", msgpack.packb([PROTOCOL_VERSION, Gossip.TYPE, "b", [], [pig]], use_bin_type=True), 1.0)
    entry = [name, "addr", 0, 0, meta_raw, None, b""]
    a.receive(
        "b",
        msgpack.packb([PROTOCOL_VERSION, PushPull.TYPE, "b", [False, True, [entry], 0, 1], []], use_bin_type=True),
        1.0,
        True,
    )
    # Paths that bypass the decoder: a persisted member list and a hand-built Alive.
    a.swim.bootstrap([PushPullState(name, "addr", 0, 0, meta_raw, None)], 1.0)
    a.swim._apply_alive(Alive(1, name, "addr", NodeMeta()), 1.0)
    assert sorted(a.swim.members) == ["a"]
    assert a.swim.counters["piggyback_bad"] == 1 and a.swim.counters["bad_names"] == 2
    assert a.swim.counters["bad_states"] == 1  # the push-pull entry, skipped (a frame's other entries merge)


@pytest.mark.parametrize("name, addr", [("bad\x00name", "x"), ("ok", "has space"), ("ok", "")])
def test_a_node_cannot_be_built_with_an_invalid_name_or_address(name: str, addr: str) -> None:
    with pytest.raises(ConfigError, match="invalid node"):
        SwimCore(name, addr, NodeMeta(), LAN, random.Random(1))


def _feed_mutated(a: NodeCore, n: int, seed: int) -> float:
    """Feed ``a`` the ``n`` mutated datagrams of ``seed`` 1 ms apart, ticking after each; return the last time."""
    now = 0.0
    for data in mutated_datagrams(n, seed=seed):
        now += 0.001
        a.receive("b", data, now)
        a.tick(now)
    return now


def _assert_names_clean(node: NodeCore, budget_incarnation: int) -> None:
    swim = node.swim
    assert all(is_valid_name(n) for n in swim.members)
    assert all(is_valid_name(e.node) and (e.source == "" or is_valid_name(e.source)) for e in swim.events)
    assert swim.incarnation <= budget_incarnation
    assert swim.view()["a"] == MemberState.ALIVE


def test_mutated_datagrams_leave_no_phantom_with_a_bad_name() -> None:
    a = core("a")
    now = _feed_mutated(a, 3000, seed=8)
    _assert_names_clean(a, budget_incarnation=3000 * (LAN.incarnation_window + 1))
    assert ping_is_answered(a, now)


@pytest.mark.slow
def test_hundred_thousand_mutated_datagrams_leave_no_phantom_with_a_bad_name() -> None:
    a = core("a")
    now = _feed_mutated(a, 100_000, seed=9)
    _assert_names_clean(a, budget_incarnation=100_000 * (LAN.incarnation_window + 1))
    assert ping_is_answered(a, now)


# --------------------------------------------------------------------- public keys


def test_alive_and_push_pull_carry_the_public_key() -> None:
    net = MiniNet({"a": core("a", key=KEY_A), "b": core("b", seeds=("a",), key=KEY_B), "c": core("c", seeds=("a",))})
    net.start()
    net.run_until(10.0)
    for n in ("a", "b", "c"):
        swim = net.nodes[n].swim
        assert (swim.member_key("a"), swim.member_key("b"), swim.member_key("c")) == (KEY_A, KEY_B, b"")
        assert swim.member_key("nobody") is None
    assert all(net.nodes[n].swim.counters["refutes"] == 0 for n in net.nodes)


def test_key_change_for_a_known_name_is_refused_and_counted() -> None:
    a = core("a")
    a.receive("b", encode("b", Alive(1, "b", "b", NodeMeta(), KEY_B)), 1.0)
    a.receive("x", encode("x", Alive(1, "b", "b", NodeMeta(), KEY_A)), 1.1)  # same incarnation
    a.receive("x", encode("x", Alive(2, "b", "b", NodeMeta(cores=3), KEY_A)), 1.2)  # higher incarnation
    a.receive("x", encode("x", Alive(3, "b", "b", NodeMeta(cores=3))), 1.3)  # key erased
    assert a.swim.member_key("b") == KEY_B and a.swim.members["b"].incarnation == 1
    assert a.swim.counters["key_conflicts"] == 3
    a.receive("b", encode("b", Alive(2, "b", "b", NodeMeta(cores=5), KEY_B)), 1.4)
    assert a.swim.members["b"].meta.cores == 5


def test_unknown_key_is_learnt_from_the_first_keyed_alive() -> None:
    a = core("a")
    a.receive("b", encode("b", Alive(0, "b", "b", NodeMeta())), 1.0)
    assert a.swim.member_key("b") == b""
    a.receive("b", encode("b", Alive(1, "b", "b", NodeMeta(), KEY_B)), 1.1)
    assert a.swim.member_key("b") == KEY_B and a.swim.counters["key_conflicts"] == 0


def test_new_key_may_reclaim_a_name_dead_past_the_reclaim_time() -> None:
    cfg = LAN.with_overrides(dead_node_reclaim_time=60.0)
    a = NodeCore("a", "a", NodeMeta(), cfg, random.Random(1))
    a.receive("b", encode("b", Alive(1, "b", "b", NodeMeta(), KEY_B)), 1.0)
    a.receive("c", encode("c", Dead(1, "b", "c")), 2.0)
    a.receive("b", encode("b", Alive(2, "b", "b", NodeMeta(), KEY_A)), 30.0)  # too soon
    assert a.swim.view()["b"] == MemberState.DEAD and a.swim.counters["key_conflicts"] == 1
    a.receive("b", encode("b", Alive(2, "b", "b", NodeMeta(), KEY_A)), 63.0)
    assert a.swim.view()["b"] == MemberState.ALIVE and a.swim.member_key("b") == KEY_A


def test_alive_about_ourselves_with_another_key_is_refuted() -> None:
    a = core("a", key=KEY_A)
    a.receive("x", encode("x", Alive(0, "a", "a", NodeMeta(), KEY_B)), 1.0)
    assert a.swim.incarnation == 1 and a.swim.counters["refutes"] == 1


def test_node_key_must_be_32_bytes() -> None:
    with pytest.raises(ConfigError, match="32-byte"):
        core("a", key=b"short")


# --------------------------------------------------------------------- properties

_real = st.sampled_from(["a", "b", "c", "d"])
_invented = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-:@+", min_size=1, max_size=128)
_names = st.one_of(_real, _real, _invented)
_incarnations = st.one_of(st.integers(0, 5), st.integers(0, 2**63 - 1), st.just(2**63 - 1), st.just(2**32))
_coord_vals = st.floats(allow_nan=True, allow_infinity=True) | st.floats(-1e6, 1e6)


@st.composite
def _metas(draw: st.DrawFn) -> NodeMeta:
    try:
        return NodeMeta(
            arch=draw(st.sampled_from(["x86_64", "aarch64", "r" * 32])),
            cores=draw(st.integers(0, 1 << 16)),
            labels=tuple(
                draw(
                    st.dictionaries(st.text("kz", min_size=1, max_size=5), st.text("v", max_size=8), max_size=4)
                ).items()
            ),
            load=draw(st.floats(0, 1e6)),
        )
    except ConfigError:
        return NodeMeta()


@st.composite
def _messages(draw: st.DrawFn) -> object:
    kind = draw(st.sampled_from(["alive", "suspect", "dead", "ping", "ack", "nack", "ind", "pp"]))
    if kind == "alive":
        return Alive(
            draw(_incarnations), draw(_names), draw(_names), draw(_metas()), draw(st.sampled_from([b"", KEY_A, KEY_B]))
        )
    if kind == "suspect":
        return Suspect(draw(_incarnations), draw(_names), draw(_names))
    if kind == "dead":
        return Dead(draw(_incarnations), draw(_names), draw(_names))
    if kind == "ping":
        return Ping(draw(st.integers(0, 2**32 - 1)), draw(_names))
    if kind == "ack":
        vals = draw(st.lists(_coord_vals, min_size=11, max_size=11))
        return ("raw-ack", draw(st.integers(0, 40)), vals)
    if kind == "nack":
        return Nack(draw(st.integers(0, 40)))
    if kind == "ind":
        return IndirectPing(draw(st.integers(0, 2**32 - 1)), draw(_names), draw(_names), draw(st.booleans()))
    states = draw(st.lists(st.tuples(_names, _incarnations, st.integers(0, 3)), max_size=30))
    return PushPull.of(
        False, draw(st.booleans()), tuple(PushPullState.of(n, n, i, s, NodeMeta(), None) for n, i, s in states)
    )


def _encode_hostile(sender: str, msg: object, pig: list[bytes]) -> tuple[bytes, bool]:
    if isinstance(msg, tuple):  # an Ack with arbitrary (possibly NaN/inf) coordinate floats
        _, seq, vals = msg
        data = msgpack.packb([PROTOCOL_VERSION, Ack.TYPE, sender, [seq, vals], pig], use_bin_type=True)
    else:
        data = encode(sender, msg, pig)
    # What does not fit a datagram goes as a stream frame, so thousands of items do reach the core.
    return data, isinstance(msg, PushPull) or len(data) > MAX_DATAGRAM


def _about_me(msg: object) -> list[int]:
    """Incarnations a message states about node "a"."""
    if isinstance(msg, (Alive, Suspect, Dead)) and msg.node == "a":
        return [msg.incarnation]
    if isinstance(msg, PushPull):
        return [s.incarnation for s in msg.states() if s.node == "a"]
    return []


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    st.lists(
        st.tuples(_names, _messages(), st.lists(_messages(), max_size=6), st.integers(0, 3000), st.floats(0.0, 2.0)),
        min_size=1,
        max_size=25,
    )
)
def test_hostile_but_decodable_messages_never_break_a_node(steps: list) -> None:
    a = core("a", key=KEY_A)
    now = 0.0
    highest_claim = 0
    for sender, msg, pig_msgs, flood, dt in steps:
        now += dt
        pig = [encode_broadcast(m) for m in pig_msgs if not isinstance(m, (tuple, PushPull))]
        # Thousands of piggybacked items: many tiny Suspects about a real peer.
        pig += [encode_broadcast(Suspect(i, "d", "c")) for i in range(flood)]
        for m in (msg, *pig_msgs):
            highest_claim = max([highest_claim, *_about_me(m)])
        data, reliable = _encode_hostile(sender, msg, pig)
        a.receive(sender, data, now, reliable)  # must not raise
        a.tick(now)
        a.tick(now + 0.25)
        assert a.swim.view()["a"] == MemberState.ALIVE  # never declares itself dead
        # A refutation answers the highest claim with claim + 1, never more, and stays decodable.
        assert a.swim.incarnation <= highest_claim + 1
        assert a.swim.incarnation < 2**63 - 1
        assert ping_is_answered(a, now)
    # The node's own Alive still decodes everywhere.
    env = decode(encode("a", Gossip(), [encode_broadcast(Alive(a.swim.incarnation, "a", "a", a.meta, KEY_A))]))
    assert env.piggyback[0].incarnation == a.swim.incarnation
    assert all(is_valid_name(n) for n in a.swim.members)


_printable = st.characters(blacklist_categories=("Cc", "Cs", "Cf", "Co", "Cn", "Zl", "Zp"))


def _txt(max_size: int, min_size: int = 0) -> st.SearchStrategy[str]:
    return st.text(_printable, min_size=min_size, max_size=max_size)


@st.composite
def _any_meta(draw: st.DrawFn) -> NodeMeta:
    kwargs = dict(
        arch=draw(_txt(32, 1)),
        cores=draw(st.integers(0, 1 << 16)),
        memory_mb=draw(st.integers(0, 1 << 40)),
        labels=draw(st.dictionaries(_txt(12, 1), _txt(16), max_size=6).map(lambda d: list(d.items()))),
        fault_domain=draw(_txt(60)),
        geo=draw(st.none() | st.tuples(st.floats(-90, 90), st.floats(-180, 180))),
        load=draw(st.floats(0, 1e6)),
        hardware=draw(st.lists(_txt(12, 1), max_size=6)),
    )
    try:
        return NodeMeta(**kwargs)
    except ConfigError:  # over the encoded-size bound, say: not a meta a node can be configured with
        assume(False)
        raise


@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(_any_meta())
def test_any_meta_a_node_can_be_built_with_round_trips(meta: NodeMeta) -> None:
    assert NodeMeta.from_wire(meta.to_wire()) == meta
    assert PushPullState.of("n", "n", 0, 0, meta, None).decoded_meta() == meta
    env = decode(encode("n", Gossip(), [encode_broadcast(Alive(1, "n", "n", meta))]))
    assert env.piggyback == (Alive(1, "n", "n", meta),)
    assert (
        NodeMeta(
            meta.arch, meta.cores, meta.memory_mb, meta.labels, meta.fault_domain, meta.geo, meta.load, meta.hardware
        )
        == meta
    )
    assert (
        math.isfinite(meta.load)
        and len(encode("n" * 128, Gossip(), [encode_broadcast(Alive(2**63 - 1, "n" * 128, "x" * 256, meta, KEY_A))]))
        <= MAX_DATAGRAM
    )


def test_wire_error_is_the_only_decoder_failure_for_a_bad_meta() -> None:
    with pytest.raises(WireError, match="non-printable"):
        NodeMeta.from_wire(["x86_64", 1, 1, [], "a\x07b", None, 0.0, []])


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"load": float("nan")}, "load"),
        ({"load": -1.0}, "load"),
        ({"cores": True}, "cores"),
        ({"labels": (("a\x1b[31m", "x"),)}, "label key"),
        ({"labels": (("k", "1"), ("k", "2"))}, "duplicate"),
        ({"labels": tuple((f"k{i}", "v") for i in range(17))}, "labels"),
        ({"fault_domain": "eu\nsite"}, "fault_domain"),
        ({"geo": (91.0, 0.0)}, "latitude"),
        ({"arch": ""}, "arch"),
    ],
)
def test_metadata_a_peer_could_not_decode_cannot_be_built(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        NodeMeta(**kwargs)


def test_overlapping_relays_each_nack_once_at_80_percent_and_expire_at_the_timeout() -> None:
    c = core("c")
    T = LAN.probe_timeout
    c.receive("b", encode("b", Alive(1, "b", "b", NodeMeta())), 9.0)  # c relays only to a member it knows at that address
    c.receive("a", encode("a", IndirectPing(1, "b", "b", True)), 10.0)
    c.receive("a", encode("a", IndirectPing(2, "b", "b", False)), 10.1)  # an origin that wants no nack
    c.receive("a", encode("a", IndirectPing(3, "b", "b", True)), 10.2)

    def nacks(t: float) -> list[int]:
        return [decode(o.data).msg.seq for o in c.tick(t) if isinstance(decode(o.data).msg, Nack)]

    assert nacks(10.0 + 0.8 * T) == [1]
    assert nacks(10.2 + 0.8 * T - 0.001) == []
    assert nacks(10.2 + 0.8 * T) == [3]
    assert nacks(10.2 + T) == []
    assert c.swim._relays == {}


def test_push_pull_dead_entry_beyond_the_window_does_not_pin_a_member() -> None:
    net = pair(LAN)
    net.run_until(3.0)
    a = net.nodes["a"]
    entry = PushPullState.of("b", "b", 2**63 - 1, int(MemberState.DEAD), NodeMeta(), None)
    a.receive("x", encode("x", PushPull.of(False, True, (entry,))), net.now, True)
    assert a.swim.view()["b"] == MemberState.ALIVE and a.swim.members["b"].incarnation == 0
    assert a.swim.counters["incarnation_jumps"] == 1


def test_piggyback_of_a_message_type_beyond_the_membership_range_is_used() -> None:
    # A rolling upgrade: a newer peer sends a message type this version has never heard
    # of (outside every known range); the membership updates riding on it still count.
    a = core("a")
    alive = encode_broadcast(Alive(5, "d", "d", NodeMeta(cores=4)))
    data = msgpack.packb([PROTOCOL_VERSION, 200, "d", ["new", "fields"], [alive]], use_bin_type=True)
    assert a.receive("d", data, 1.0) == []
    assert a.counters["unknown_type"] == 1 and a.counters["wire_errors"] == 0
    assert a.swim.view()["d"] == MemberState.ALIVE and a.swim.members["d"].incarnation == 5
