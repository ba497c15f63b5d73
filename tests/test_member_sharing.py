"""Nodes bootstrapped alike share member records until one touches them (copy on access)."""

from __future__ import annotations

import random

import pytest

from mesh.membership import MemberState, NodeMeta, profile
from mesh.membership.messages import Dead, PushPullState, Suspect
from mesh.node import NodeCore

LAN = profile("lan")


def _pair() -> tuple[NodeCore, NodeCore]:
    states = [PushPullState.of(n, n, 0, 0, NodeMeta(cores=i + 1), None) for i, n in enumerate(["a", "b", "c", "d"])]
    a = NodeCore("a", "a", NodeMeta(cores=1), LAN, random.Random(1))
    b = NodeCore("b", "b", NodeMeta(cores=2), LAN, random.Random(2))
    shared = a.swim.bootstrap(states, 0.0)
    assert b.swim.bootstrap(states, 0.0, shared) is shared
    return a, b


def test_bootstrapped_nodes_share_records_and_a_change_stays_private() -> None:
    a, b = _pair()
    # the same record object sits in both tables until one node touches it
    assert a.swim.members.peek("c") is b.swim.members.peek("c")
    a.swim._apply_suspect(Suspect(0, "c", "a"), 1.0)
    a.swim._apply_dead(Dead(0, "d", "a"), 1.0)
    assert a.swim.members["c"].state == MemberState.SUSPECT
    assert a.swim.members["d"].state == MemberState.DEAD
    assert b.swim.members["c"].state == MemberState.ALIVE
    assert b.swim.members["d"].state == MemberState.ALIVE
    assert b.swim.members["c"].meta == NodeMeta(cores=3)
    assert a.swim.members.peek("c") is not b.swim.members.peek("c")


def test_a_write_that_bypasses_the_table_fails_loudly() -> None:
    a, b = _pair()
    shared = dict(b.swim.members.items())["c"]  # a bulk read hands out the shared record
    with pytest.raises(TypeError, match="shared"):
        shared.state = MemberState.DEAD
    assert a.swim.members["c"].state == MemberState.ALIVE


def test_updates_that_change_nothing_leave_records_shared() -> None:
    """Old news (a push-pull row that only brings a coordinate, a gossiped Alive, Suspect or
    Dead at an older or equal incarnation) must not give a node its own copy of a record:
    at 1000 nodes those copies were ~100 KiB per simulated node."""
    from mesh.coords import Coordinate
    from mesh.membership.messages import Alive
    from mesh.wire import Envelope

    a, b = _pair()
    coord = PushPullState.pack_coord(Coordinate((0.001,) * 8, 0.5, 0.0, 1e-5))
    rows = [[n, n, 0, 0, PushPullState.pack_meta(NodeMeta(cores=i + 1)), coord, b""] for i, n in enumerate(["a", "b", "c", "d"])]
    assert a.swim._merge_rows(rows, 1.0, "b") == []
    assert a.swim.coords.get("c") == coord  # the coordinate was learnt...
    assert a.swim.members.peek("c") is b.swim.members.peek("c")  # ...and the record is still shared
    meta_c = b.swim.members.peek("c").meta
    env = Envelope("b", Alive(0, "c", "c", meta_c), (Alive(0, "c", "c", meta_c),))
    a.swim.handle("b", env, 2.0)
    assert a.swim.members.peek("c") is b.swim.members.peek("c")
    # a change still takes a private copy, and the other node keeps the shared one
    a.swim._apply_suspect(Suspect(0, "c", "b"), 3.0)
    assert a.swim.members.peek("c") is not b.swim.members.peek("c")
    assert b.swim.members.peek("c").state == MemberState.ALIVE


def test_bootstrap_skips_validation_only_for_entries_the_shared_records_were_built_from() -> None:
    good = [PushPullState.of(n, n, 0, 0, NodeMeta(cores=2), None) for n in ["a", "b", "c"]]
    a = NodeCore("a", "a", NodeMeta(), LAN, random.Random(1))
    shared = a.swim.bootstrap(good, 0.0)
    # same length, but the last entry is not the one the shared record came from: checked, refused
    bad = [*good[:2], PushPullState("c\x01", "c", 0, 0, good[2].meta_raw, None)]
    b = NodeCore("b", "b", NodeMeta(), LAN, random.Random(2))
    b.swim.bootstrap(bad, 0.0, shared)
    assert b.swim.counters["bad_names"] == 1
    assert sorted(b.swim.members) == ["a", "b"]
    c = NodeCore("c", "c", NodeMeta(), LAN, random.Random(3))
    assert c.swim.bootstrap(good, 0.0, shared) is shared
    assert c.swim.counters["bad_names"] == 0 and sorted(c.swim.members) == ["a", "b", "c"]
    assert c.swim.members.peek("a") is shared[0]  # the shared record itself


def test_bootstrap_keeps_the_nodes_own_record_and_the_entries_order() -> None:
    names = ["c", "a", "b", "d"]
    states = [PushPullState.of(n, n, 0, 0, NodeMeta(cores=2), None) for n in names]
    x = NodeCore("a", "a", NodeMeta(), LAN, random.Random(1))
    shared = x.swim.bootstrap(states, 0.0)
    y = NodeCore("b", "b", NodeMeta(cores=4), LAN, random.Random(2))
    assert y.swim.bootstrap(states, 0.0, shared) is shared
    assert list(y.swim.members) == ["b", "c", "a", "d"]  # itself first, then the entries in order
    assert y.swim.members.peek("b").meta.cores == 4  # its own record, not the entry about it
    assert y.swim.members.peek("c") is shared[0]
    assert y.swim.live_peers() == ["a", "c", "d"] and y.swim.num_members() == 4
    # A node that already knows members takes them entry by entry, keeping what it holds.
    z = NodeCore("z", "z", NodeMeta(), LAN, random.Random(3))
    z.swim.bootstrap([PushPullState.of("d", "d", 5, 0, NodeMeta(), None)], 0.0)
    z.swim.bootstrap(states, 0.0, shared)
    assert list(z.swim.members) == ["z", "d", "c", "a", "b"]
    assert z.swim.members.peek("d").incarnation == 5
