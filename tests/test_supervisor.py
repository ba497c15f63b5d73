"""The supervisor core (scheduler/supervisor.py): starts, stops, restarts with backoff, failed marks,
version switches with a warm previous version, standbys and on-demand replicas.

Expected times are computed by hand from the documented defaults (base 0.2 s, factor 2, cap 30 s,
5 failures in 60 s mark a replica failed, held 300 s; warm grace 120 s; on-demand idle 300 s).
"""

from __future__ import annotations

import pytest

from scheduler.supervisor import Action, Supervisor, SupervisorConfig, Target


def kinds(actions: list[Action]) -> list[tuple[str, str, str]]:
    return [(a.kind, a.deployment, a.version) for a in actions]


def test_start_then_running_claims_and_stop_when_no_longer_placed() -> None:
    s = Supervisor("n1")
    acts = s.set_targets({"web": Target("web", "1.0.0", 1), "api": Target("api", "2.0.0", 0)}, 10.0)
    assert kinds(acts) == [("start", "api", "2.0.0"), ("start", "web", "1.0.0")]  # sorted by deployment
    assert s.claims() == [("api", "2.0.0", "starting", 0), ("web", "1.0.0", "starting", 1)]
    assert s.serving("web") is None
    assert s.started("web", "1.0.0", 10.5) == []
    assert s.serving("web") == "1.0.0"
    assert s.claims()[1] == ("web", "1.0.0", "running", 1)
    # the same targets again: nothing to do
    assert s.set_targets({"web": Target("web", "1.0.0", 1), "api": Target("api", "2.0.0", 0)}, 11.0) == []
    acts = s.set_targets({"api": Target("api", "2.0.0", 0)}, 12.0)
    assert acts == [Action("stop", "web", versions=("1.0.0",), reason="not placed here")]
    assert s.serving("web") is None
    assert ("web", "1.0.0", "stopping", 1) in s.claims()
    s.stopped("web", 12.2)
    assert [c[0] for c in s.claims()] == ["api"]


def test_restart_backoff_doubles_then_marks_failed_and_the_mark_expires() -> None:
    s = Supervisor("n1")
    s.set_targets({"web": Target("web", "1.0.0")}, 0.0)
    # failure 1 at t=1.0 -> restart at 1.0 + 0.2
    assert s.start_failed("web", "1.0.0", "trap", 1.0) == []
    assert s.next_deadline() == pytest.approx(1.2)
    assert s.claims() == [("web", "1.0.0", "starting", 0)]
    assert s.tick(1.19) == []
    acts = s.tick(1.2)
    assert kinds(acts) == [("start", "web", "1.0.0")] and acts[0].restart == 1
    # failure 2 at t=1.5 -> +0.4 = 1.9; failure 3 at 2.0 -> +0.8 = 2.8; failure 4 at 3.0 -> +1.6 = 4.6
    for t_fail, t_retry in ((1.5, 1.9), (2.0, 2.8), (3.0, 4.6)):
        s.start_failed("web", "1.0.0", "trap", t_fail)
        assert s.next_deadline() == pytest.approx(t_retry)
        assert kinds(s.tick(t_retry)) == [("start", "web", "1.0.0")]
    # failure 5 inside the 60 s window: failed, claimed as failed, held until 5.0 + 300
    acts = s.start_failed("web", "1.0.0", "trap", 5.0)
    assert [a.kind for a in acts] == ["stop"] and "failed after 5 failures" in acts[0].reason
    assert s.claims() == [("web", "1.0.0", "failed", 0)]
    assert s.failed() == frozenset({"web"})
    assert s.next_deadline() == pytest.approx(305.0)
    # still placed here (others have not seen the mark yet): no restart while failed
    assert s.set_targets({"web": Target("web", "1.0.0")}, 6.0) == []
    assert s.tick(304.9) == []
    s.tick(305.0)
    assert s.claims() == [] and s.failed() == frozenset()


def test_failures_outside_the_window_do_not_count() -> None:
    s = Supervisor("n1", SupervisorConfig(max_failures=3, window_s=10.0))
    s.set_targets({"w": Target("w", "1.0.0")}, 0.0)
    s.started("w", "1.0.0", 0.1)
    s.crashed("w", "1.0.0", "trap", 1.0)  # 1 in window -> retry at 1.2
    s.tick(1.2)
    s.started("w", "1.0.0", 1.3)
    s.crashed("w", "1.0.0", "trap", 2.0)  # 2 in window -> +0.4
    assert s.next_deadline() == pytest.approx(2.4)
    s.tick(2.4)
    s.started("w", "1.0.0", 2.5)
    # at t=11.5 the failure at 1.0 left the window: 2 failures (2.0, 11.5) -> +0.4, not failed
    acts = s.crashed("w", "1.0.0", "trap", 11.5)
    assert kinds(acts) == [("unload", "w", "1.0.0")]
    assert s.next_deadline() == pytest.approx(11.9)
    assert s.failed() == frozenset()


def test_backoff_is_capped() -> None:
    cfg = SupervisorConfig(max_failures=100, backoff_max_s=30.0)
    assert [cfg.backoff(n) for n in (1, 2, 3, 8, 9, 20)] == pytest.approx([0.2, 0.4, 0.8, 25.6, 30.0, 30.0])


def test_crash_unloads_at_once_and_restarts_after_backoff() -> None:
    s = Supervisor("n1")
    s.set_targets({"w": Target("w", "1.0.0")}, 0.0)
    s.started("w", "1.0.0", 0.5)
    acts = s.crashed("w", "1.0.0", "unreachable", 2.0)
    assert kinds(acts) == [("unload", "w", "1.0.0")]
    assert s.serving("w") is None and s.claims() == [("w", "1.0.0", "starting", 0)]
    assert kinds(s.tick(2.2)) == [("start", "w", "1.0.0")]
    # a crash report for a version no longer serving is ignored
    assert s.crashed("w", "0.9.0", "trap", 2.3) == []


def test_version_switch_keeps_old_serving_until_new_started_then_rollback_is_a_warm_switch() -> None:
    s = Supervisor("n1")
    s.set_targets({"w": Target("w", "1.0.0")}, 0.0)
    s.started("w", "1.0.0", 1.0)
    acts = s.set_targets({"w": Target("w", "2.0.0")}, 10.0)
    assert kinds(acts) == [("start", "w", "2.0.0")]
    assert s.serving("w") == "1.0.0"  # old keeps serving while the new one starts
    acts = s.started("w", "2.0.0", 11.0)
    assert acts == [Action("switch", "w", "2.0.0", previous="1.0.0", reason="new version started")]
    assert s.serving("w") == "2.0.0"
    assert s.next_deadline() == pytest.approx(131.0)  # 1.0.0 warm until 11 + 120
    # rollback within the grace period: a switch, nothing to start
    acts = s.set_targets({"w": Target("w", "1.0.0")}, 50.0)
    assert acts == [Action("switch", "w", "1.0.0", previous="2.0.0", reason="warm version")]
    assert s.serving("w") == "1.0.0" and s.claims() == [("w", "1.0.0", "running", 0)]
    assert s.next_deadline() == pytest.approx(170.0)  # 2.0.0 warm until 50 + 120
    assert kinds(s.tick(170.0)) == [("unload", "w", "2.0.0")]
    assert s.next_deadline() is None


def test_a_failing_new_version_retries_while_the_old_one_serves() -> None:
    s = Supervisor("n1")
    s.set_targets({"w": Target("w", "1.0.0")}, 0.0)
    s.started("w", "1.0.0", 1.0)
    s.set_targets({"w": Target("w", "2.0.0")}, 10.0)
    assert s.start_failed("w", "2.0.0", "bad blob", 10.5) == []
    assert s.serving("w") == "1.0.0" and s.claims() == [("w", "1.0.0", "running", 0)]
    assert s.next_deadline() == pytest.approx(10.7)
    assert kinds(s.tick(10.7)) == [("start", "w", "2.0.0")]
    s.started("w", "2.0.0", 11.0)
    assert s.serving("w") == "2.0.0"


def test_a_new_version_clears_a_failed_mark() -> None:
    s = Supervisor("n1", SupervisorConfig(max_failures=1))
    s.set_targets({"w": Target("w", "1.0.0")}, 0.0)
    s.start_failed("w", "1.0.0", "trap", 1.0)
    assert s.failed() == frozenset({"w"})
    acts = s.set_targets({"w": Target("w", "1.0.1")}, 2.0)
    assert kinds(acts) == [("start", "w", "1.0.1")]
    assert s.failed() == frozenset() and s.claims() == [("w", "1.0.1", "starting", 0)]


def test_a_failed_replica_stays_claimed_failed_when_placement_moves_it() -> None:
    s = Supervisor("n1", SupervisorConfig(max_failures=1))
    s.set_targets({"w": Target("w", "1.0.0")}, 0.0)
    s.start_failed("w", "1.0.0", "trap", 1.0)
    assert s.set_targets({}, 2.0) == []  # moved elsewhere: the failed mark stays advertised
    assert s.claims() == [("w", "1.0.0", "failed", 0)]


def test_late_start_of_a_replica_no_longer_wanted_is_unloaded() -> None:
    s = Supervisor("n1")
    s.set_targets({"w": Target("w", "1.0.0")}, 0.0)
    s.set_targets({}, 0.1)
    assert kinds(s.started("w", "1.0.0", 0.5)) == [("unload", "w", "1.0.0")]


def test_standby_prepares_once_per_version_and_not_when_placed() -> None:
    s = Supervisor("n1")
    assert kinds(s.set_targets({}, 0.0, standby={"w": "1.0.0"})) == [("prepare", "w", "1.0.0")]
    assert s.set_targets({}, 1.0, standby={"w": "1.0.0"}) == []
    assert kinds(s.set_targets({}, 2.0, standby={"w": "1.1.0"})) == [("prepare", "w", "1.1.0")]
    assert s.claims() == []  # a standby claims nothing


def test_on_demand_replica_is_kept_while_on_demand_and_stops_when_idle() -> None:
    s = Supervisor("n1")
    assert kinds(s.ensure("fn", "1.0.0", 0.0)) == [("start", "fn", "1.0.0")]
    assert s.ensure("fn", "1.0.0", 0.1) == []
    s.started("fn", "1.0.0", 0.2)
    assert s.set_targets({}, 1.0, on_demand=frozenset({"fn"})) == []
    s.touch("fn", 100.0)
    assert s.next_deadline() == pytest.approx(400.0)
    assert s.tick(399.0) == []
    assert [a.kind for a in s.tick(400.0)] == ["stop"]
    # scaled up from zero elsewhere: no longer on demand here -> stopped
    s2 = Supervisor("n2")
    s2.ensure("fn", "1.0.0", 0.0)
    s2.started("fn", "1.0.0", 0.1)
    assert [a.kind for a in s2.set_targets({}, 1.0)] == ["stop"]


def test_claims_version_counter_moves_only_on_change() -> None:
    s = Supervisor("n1")
    v0 = s.version
    s.set_targets({"w": Target("w", "1.0.0")}, 0.0)
    v1 = s.version
    assert v1 > v0
    s.set_targets({"w": Target("w", "1.0.0")}, 1.0)
    assert s.version == v1
    s.started("w", "1.0.0", 1.0)
    assert s.version > v1



# -- properties over random input sequences ----------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.harness.budget import examples

from scheduler.supervisor import BACKOFF, FAILED, RUNNING, STARTING, STOPPING  # noqa: E402

DEPS = ("a", "b")
VERSIONS = ("1.0.0", "2.0.0")
_op = st.one_of(
    st.tuples(st.just("targets"), st.dictionaries(st.sampled_from(DEPS), st.sampled_from(VERSIONS), max_size=2), st.booleans()),
    st.tuples(st.just("started"), st.sampled_from(DEPS), st.sampled_from(VERSIONS)),
    st.tuples(st.just("start_failed"), st.sampled_from(DEPS), st.sampled_from(VERSIONS)),
    st.tuples(st.just("crashed"), st.sampled_from(DEPS), st.sampled_from(VERSIONS)),
    st.tuples(st.just("stopped"), st.sampled_from(DEPS)),
    st.tuples(st.just("ensure"), st.sampled_from(DEPS), st.sampled_from(VERSIONS)),
    st.tuples(st.just("tick"),),
)


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(st.tuples(_op, st.floats(0.0, 40.0)), max_size=40))
def test_supervisor_invariants_hold_for_any_input_sequence(ops: list[tuple[tuple, float]]) -> None:
    s = Supervisor("n1", SupervisorConfig(max_failures=3, window_s=30.0, failed_hold_s=50.0, warm_grace_s=20.0, on_demand_idle_s=25.0))
    now = 0.0
    version = s.version
    for op, dt in ops:
        now += dt
        kind = op[0]
        if kind == "targets":
            acts = s.set_targets({d: Target(d, v) for d, v in op[1].items()}, now,
                                 on_demand=frozenset(DEPS) if op[2] else frozenset(), standby={})
        elif kind == "started":
            acts = s.started(op[1], op[2], now)
        elif kind == "start_failed":
            acts = s.start_failed(op[1], op[2], "x", now)
        elif kind == "crashed":
            acts = s.crashed(op[1], op[2], "x", now)
        elif kind == "stopped":
            acts = s.stopped(op[1], now)
        elif kind == "ensure":
            acts = s.ensure(op[1], op[2], now)
        else:
            acts = s.tick(now)
            d = s.next_deadline()
            assert d is None or d > now  # everything due was handled
        assert all(a.kind in ("start", "prepare", "switch", "stop", "unload") for a in acts)
        assert s.version >= version
        version = s.version
        for dep, r in s.replicas.items():
            assert r.state in (STARTING, RUNNING, BACKOFF, FAILED, STOPPING)
            assert (r.serving is not None) == (r.state == RUNNING), (dep, r)
            assert r.serving not in r.warm
            assert (r.retry_at is not None) <= (r.state in (BACKOFF, RUNNING))
            assert len([t for t in r.failures if now - t < 30.0]) < 3 or r.state == FAILED
        assert s.failed() == frozenset(d for d, r in s.replicas.items() if r.state == FAILED)
        claims = s.claims()
        assert [c[0] for c in claims] == sorted(s.replicas)
        assert all(c[2] in ("starting", "running", "failed", "stopping") for c in claims)


@settings(max_examples=examples(200), deadline=None)
@given(st.lists(st.tuples(_op, st.floats(0.0, 40.0)), max_size=30),
       st.dictionaries(st.sampled_from(DEPS), st.sampled_from(VERSIONS), max_size=2))
def test_with_a_driver_that_succeeds_every_target_ends_up_running_its_version(ops: list[tuple[tuple, float]],
                                                                             final: dict[str, str]) -> None:
    cfg = SupervisorConfig(max_failures=3, window_s=30.0, failed_hold_s=50.0, warm_grace_s=20.0, on_demand_idle_s=25.0)
    s = Supervisor("n1", cfg)
    now = 0.0
    pending: list[Action] = []  # actions of the history not reported on yet
    for op, dt in ops:  # an arbitrary history first (failures, crashes, stray reports)
        now += dt
        if op[0] == "targets":
            pending += s.set_targets({d: Target(d, v) for d, v in op[1].items()}, now)
        elif op[0] in ("started", "start_failed", "crashed"):
            pending += getattr(s, op[0])(*op[1:], *(() if op[0] == "started" else ("x",)), now)
        elif op[0] == "stopped":
            pending += s.stopped(op[1], now)
        elif op[0] == "ensure":
            pending += s.ensure(op[1], op[2], now)
        else:
            pending += s.tick(now)
    # a driver always reports on what it was told: every start of the history failed, every stop ended
    acts: list[Action] = []
    for a in pending:
        if a.kind == "start":
            acts += s.start_failed(a.deployment, a.version, "x", now)
        elif a.kind == "stop":
            acts += s.stopped(a.deployment, now)
    targets = {d: Target(d, v) for d, v in final.items()}
    acts += s.set_targets(targets, now)
    for _ in range(200):  # then a driver that does everything it is told, successfully
        for a in acts:
            if a.kind == "start":
                s.started(a.deployment, a.version, now)
            elif a.kind == "stop":
                s.stopped(a.deployment, now)
        d = s.next_deadline()
        if d is None and not acts:
            break
        now = max(now, d) if d is not None else now
        acts = s.tick(now) + s.set_targets(targets, now)
    assert {dep: (r.state, r.serving) for dep, r in s.replicas.items()} == {dep: (RUNNING, v) for dep, v in final.items()}
