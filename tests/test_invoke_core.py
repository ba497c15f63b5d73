"""Invocation cores, sans-IO: circuit breaker transitions, target choice, retry rule, traceparent, agreement.

Expected values are worked out by hand from the documented thresholds (mesh/invoke/breaker.py:
3 consecutive failures open; 5 s cool-down, doubled per failed probe up to 60 s; 1 probe).
"""

from __future__ import annotations

import pytest
import structlog

from mesh import agreement
from mesh.invoke.breaker import CLOSED, HALF_OPEN, OPEN, Breaker, BreakerConfig
from mesh.invoke.invoker import CONNECT_FAILED, NO_ANSWER, STREAM_CLOSED, Invoker, replicas_of, retry_safe
from mesh.invoke.trace import INVALID, call_context, child_traceparent, new_traceparent, parse_traceparent


# ------------------------------------------------------------------ breaker


def test_breaker_opens_after_three_consecutive_failures_and_a_success_resets_the_count() -> None:
    b = Breaker()
    b.failure(0.0)
    b.failure(1.0)
    b.success(1.5)  # resets: two more failures do not open
    b.failure(2.0)
    b.failure(3.0)
    assert b.current(3.0) == CLOSED and b.allow(3.0)
    b.failure(4.0)  # third consecutive
    assert b.current(4.0) == OPEN
    assert not b.allow(4.0) and not b.allow(8.999)


def test_breaker_half_open_after_cooldown_lets_one_probe_and_closes_on_success() -> None:
    b = Breaker()
    for t in (0.0, 0.1, 0.2):
        b.failure(t)
    assert b.current(5.19) == OPEN  # opened at 0.2, cool-down 5 s -> half-open at 5.2
    assert b.current(5.2) == HALF_OPEN
    assert b.allow(5.2)  # the probe
    assert not b.allow(5.3)  # one probe at a time
    b.success(5.4)
    assert b.current(5.4) == CLOSED and b.allow(5.4)
    assert b.transitions == 3  # closed->open->half_open->closed


def test_a_failed_probe_reopens_with_a_doubled_cooldown_capped_at_sixty_seconds() -> None:
    b = Breaker()
    for t in (0.0, 0.0, 0.0):
        b.failure(t)
    # probes fail at each half-open: cool-downs 5 -> 10 -> 20 -> 40 -> 60 -> 60
    t = 0.0
    for cooldown in (5.0, 10.0, 20.0, 40.0, 60.0):
        assert b.current(t + cooldown - 0.001) == OPEN
        t += cooldown
        assert b.allow(t)
        b.failure(t)
        assert b.current(t) == OPEN
    assert b.cooldown == 60.0
    assert b.current(t + 59.999) == OPEN and b.current(t + 60.0) == HALF_OPEN
    b.allow(t + 60.0)
    b.success(t + 60.0)
    assert b.cooldown == 5.0  # reset when it closes


def test_breaker_thresholds_come_from_its_config() -> None:
    b = Breaker(BreakerConfig(failure_threshold=1, open_seconds=2.0, half_open_probes=2))
    b.failure(10.0)
    assert b.current(10.0) == OPEN and b.current(12.0) == HALF_OPEN
    assert b.allow(12.0) and b.allow(12.0) and not b.allow(12.0)


# ------------------------------------------------------------------ target choice


RTT = {"b": 0.030, "c": 0.010, "d": None, "e": 0.020}


def test_local_first_then_remote_replicas_nearest_first_unknown_rtt_last_at_most_three() -> None:
    inv = Invoker("a")
    p = inv.plan("web", hosts_local=True, replicas=["b", "c", "d", "a"], rtt=RTT.get, now=0.0)
    assert p.targets == ("a", "c", "b")  # max_attempts 3 cuts d
    p = inv.plan("web", hosts_local=False, replicas=["d", "b", "c", "e"], rtt=RTT.get, now=0.0)
    assert p.targets == ("c", "e", "b")
    p = inv.plan("web", hosts_local=False, replicas=["d", "b"], rtt=RTT.get, now=0.0)
    assert p.targets == ("b", "d")


def test_a_node_that_can_start_on_demand_is_tried_only_when_no_replica_runs_anywhere() -> None:
    inv = Invoker("a")
    p = inv.plan("web", hosts_local=False, replicas=[], rtt=RTT.get, now=0.0, can_start_local=True)
    assert p.targets == ("a",)
    p = inv.plan("web", hosts_local=False, replicas=["b"], rtt=RTT.get, now=0.0, can_start_local=True)
    assert p.targets == ("b",)
    assert inv.plan("web", hosts_local=False, replicas=[], rtt=RTT.get, now=0.0).targets == ()
    for t in (0.0, 0.1, 0.2):
        inv.record("b", CONNECT_FAILED, False, t)
    p = inv.plan("web", hosts_local=False, replicas=["b"], rtt=RTT.get, now=1.0, can_start_local=True)
    assert p.targets == () and p.skipped == ("b",)  # a replica exists, behind its breaker: no cold start


def test_a_target_whose_breaker_is_open_is_skipped_until_its_cooldown_ends() -> None:
    inv = Invoker("a")
    for t in (0.0, 0.1, 0.2):
        assert inv.record("c", CONNECT_FAILED, False, t) is True
    p = inv.plan("web", hosts_local=False, replicas=["b", "c"], rtt=RTT.get, now=1.0)
    assert p.targets == ("b",) and p.skipped == ("c",)
    p = inv.plan("web", hosts_local=False, replicas=["b", "c"], rtt=RTT.get, now=5.2)
    assert p.targets == ("c", "b")  # half-open: c is nearest, gets the probe
    assert inv.allow("c", 5.2) and not inv.allow("c", 5.2)
    assert inv.states(5.2) == {"c": HALF_OPEN}


def test_a_guest_trap_keeps_the_breaker_closed_and_is_not_retried() -> None:
    inv = Invoker("a")
    for t in range(5):
        assert inv.record("b", "trap", True, float(t)) is False
    assert inv.states(5.0) == {"b": CLOSED}


def test_retry_only_when_the_guest_certainly_did_not_run() -> None:
    assert retry_safe(CONNECT_FAILED, False)
    assert retry_safe("not_hosted", False) and retry_safe("overloaded", False) and retry_safe("unavailable", False)
    assert not retry_safe(NO_ANSWER, True)
    assert not retry_safe(STREAM_CLOSED, True)
    assert not retry_safe("trap", True) and not retry_safe("timeout", True) and not retry_safe("guest_error", True)
    assert not retry_safe("internal", True) and retry_safe("internal", False)
    assert not retry_safe("ok", True) and not retry_safe("bad_request", False)


def test_replicas_are_nodes_claiming_running_and_seen_alive() -> None:
    entries = [
        ("n1", [("web", "running"), ("db", "running")]),
        ("n2", [("web", "starting")]),
        ("n3", [("web", "running")]),
        ("n4", [("db", "running")]),
        ("n5", [("web", "running")]),
    ]
    assert replicas_of("web", entries, alive=lambda n: n != "n5") == ["n1", "n3"]


def test_timeout_default_and_cap() -> None:
    inv = Invoker("a")
    assert inv.timeout(None) == 30.0 and inv.timeout(-1) == 30.0 and inv.timeout(float("nan")) == 30.0
    assert inv.timeout(2.5) == 2.5 and inv.timeout(10_000) == 600.0


# ------------------------------------------------------------------ traceparent


GOOD = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"  # the W3C spec's example


def test_traceparent_parses_the_spec_example_and_refuses_malformed_values() -> None:
    ctx = parse_traceparent(GOOD)
    assert ctx is not None and ctx.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736" and ctx.parent_id == "00f067aa0ba902b7"
    assert ctx.header() == GOOD
    bad = [
        "", "garbage", GOOD.upper(), GOOD[:-1], GOOD + "-x",  # version 00 has exactly 4 fields
        "ff" + GOOD[2:], "00-" + "0" * 32 + "-00f067aa0ba902b7-01", "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", None, 55,
    ]
    for v in bad:
        assert parse_traceparent(v) is None, v
    # a future version may append fields
    assert parse_traceparent("01" + GOOD[2:] + "-what-comes-next") is not None


def test_a_call_continues_a_valid_trace_starts_one_when_none_and_strictly_refuses_a_bad_one() -> None:
    def rand(n: int) -> bytes:
        return bytes([0xab]) * n

    assert call_context(GOOD, rand).header() == GOOD
    assert call_context("01" + GOOD[2:] + "-more", rand).header() == GOOD  # a later version, written as 00
    new = "00-" + "ab" * 16 + "-" + "ab" * 8 + "-01"
    assert call_context(None, rand).header() == new and call_context("", rand).header() == new
    with pytest.raises(ValueError) as exc:
        call_context("00-bad", rand)
    assert str(exc.value) == INVALID and "traceparent" in INVALID
    assert call_context("00-bad", rand, strict=False).header() == new  # the HTTP ingress: a new trace


def test_new_and_child_traceparents_keep_the_trace_and_change_the_span() -> None:
    tp = new_traceparent(bytes(range(16)), bytes(range(8, 16)))
    assert tp == "00-000102030405060708090a0b0c0d0e0f-08090a0b0c0d0e0f-01"
    ctx = parse_traceparent(tp)
    assert ctx is not None
    child = child_traceparent(ctx, b"\xaa" * 8)
    assert child == "00-000102030405060708090a0b0c0d0e0f-aaaaaaaaaaaaaaaa-01"
    assert new_traceparent(bytes(16), bytes(8)) == "00-" + "0" * 31 + "1-" + "0" * 15 + "1-01"
    with pytest.raises(ValueError):
        new_traceparent(b"short", bytes(8))


# ------------------------------------------------------------------ agreement


V1, V2, S1, S2, P1, P2 = "aaaaaaaaaaaa", "bbbbbbbbbbbb", "111111111111", "222222222222", "cccccccccccc", "dddddddddddd"


def test_agreement_groups_say_why_nodes_differ() -> None:
    rows = [
        ("n1", f"1:{V1}:{S1}:{P1}"), ("n2", f"1:{V1}:{S1}:{P1}"), ("n3", f"1:{V1}:{S1}:{P1}"),
        ("n4", f"1:{V2}:{S1}:{P2}"),  # another view
        ("n5", f"1:{V1}:{S2}:{P2}"),  # same view, other deployment revisions
        ("n6", f"1:{V1}:{S1}:{P2}"),  # same inputs, other placement
        ("n7", f"2:{V2}:{S2}:{P2}"),  # another format: versions differ, whatever the rest
        ("n8", ""), ("n9", "not:a:digest"),
    ]
    gs = agreement.groups(rows)
    got = [(g.reason, g.nodes) for g in gs]
    assert got[0] == ("reference", ("n1", "n2", "n3"))
    assert set(got[1:]) == {
        ("views differ", ("n4",)), ("deployments differ", ("n5",)), ("placement differs", ("n6",)),
        ("versions differ", ("n7",)), ("no digest yet", ("n8", "n9")),
    }
    assert not agreement.agree(gs)
    same = agreement.groups([("b", f"1:{V1}:{S1}:{P1}"), ("a", f"1:{V1}:{S1}:{P1}")])
    assert [(g.reason, g.nodes) for g in same] == [("reference", ("a", "b"))] and agreement.agree(same)
    assert not agreement.agree(agreement.groups([("a", "")]))


def test_agreement_reference_is_the_same_whatever_the_row_order() -> None:
    rows = [("a", f"1:{V1}:{S1}:{P1}"), ("b", f"1:{V2}:{S1}:{P1}")]  # a tie: the smaller encoding wins
    assert agreement.groups(rows)[0].nodes == ("a",)
    assert agreement.groups(list(reversed(rows)))[0].nodes == ("a",)
    assert agreement.encode(V1, S1, P1) == f"1:{V1}:{S1}:{P1}"


def test_digests_that_do_not_fit_the_metadata_bound_are_refused_not_raised() -> None:
    import random

    from mesh.daemon.placements import PlacementService
    from mesh.membership import NodeMeta
    from mesh.membership.config import profile
    from mesh.membership.meta import MAX_META_BYTES
    from mesh.node import NodeCore
    from mesh.wire import pack

    labels = tuple((f"k{i:02d}", "v" * 24) for i in range(16))
    meta = NodeMeta(name="n", labels=labels)
    assert len(pack(meta.to_wire())) + 42 > MAX_META_BYTES  # no room for a 40-character digest field

    class Stub:
        _leaving = _stopping = False
        emitted = 0

        def __init__(self) -> None:
            self.core = NodeCore("n", "127.0.0.1:1", meta, profile("local"), random.Random(1))
            self.log = structlog.get_logger("test")

        def emit(self, outs: list) -> None:
            self.emitted += 1

    d = Stub()
    svc = PlacementService(d)  # type: ignore[arg-type]
    svc.wanted = agreement.encode(V1, S1, P1)
    svc._apply(10.0)
    assert svc.too_large == 1 and d.core.meta.agreement == "" and d.emitted == 0
    d.core.update_meta(NodeMeta(name="n"), 10.0)  # labels removed: now it fits
    svc._apply(10.5)  # rate limit: less than a second after the last attempt
    assert d.core.meta.agreement == ""
    svc._apply(11.0)
    assert d.core.meta.agreement == f"1:{V1}:{S1}:{P1}" and d.emitted == 1
    d._leaving = True
    svc.wanted = agreement.encode(V2, S1, P1)
    svc._apply(20.0)  # never while leaving
    assert d.core.meta.agreement == f"1:{V1}:{S1}:{P1}"
