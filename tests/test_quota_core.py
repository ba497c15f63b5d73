"""The sans-IO tenant quota core (mesh/invoke/quota.py): expectations computed by hand from its rules."""

from __future__ import annotations

import bisect

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.harness.budget import examples

from crdt.errors import ValidationError
from crdt.schema import DeploymentSpec, TenantQuota, validate_tenant_payload
from mesh.invoke.quota import (
    CPU_LABEL, Admitted, QuotaCore, Rejected, decode_usage, encode_usage, utc_day,
)

DAY = 20_000  # a UTC day number; its midnight is DAY * 86400
MIDNIGHT = DAY * 86_400.0


def core(**limits: float) -> QuotaCore:
    return QuotaCore(lambda t: TenantQuota(t, **limits))  # type: ignore[arg-type]


def test_defaults_are_seed_003_r14() -> None:
    q = TenantQuota("acme")
    assert (q.max_concurrency, q.per_minute, q.cpu_seconds_per_day) == (100, 10_000, 3600.0)


def test_deployment_tenant_defaults_and_old_payloads_decode() -> None:
    spec = DeploymentSpec("web", "hello", "1.0.0")
    p = spec.to_payload()
    assert "tenant" not in p  # a default-tenant spec encodes as before tenants existed
    assert DeploymentSpec.from_payload(p).tenant == "default"
    acme = DeploymentSpec("web", "hello", "1.0.0", tenant="acme")
    assert DeploymentSpec.from_payload(acme.to_payload()).tenant == "acme"
    with pytest.raises(ValidationError, match="tenant name"):
        DeploymentSpec("web", "hello", "1.0.0", tenant="Not A Name")


def test_tenant_payload_validation() -> None:
    validate_tenant_payload("acme", TenantQuota("acme", 5, 6, 7.5).to_payload())
    validate_tenant_payload("acme", {"deleted": True, "name": "acme"})
    with pytest.raises(ValidationError, match="does not match"):
        validate_tenant_payload("other", TenantQuota("acme").to_payload())
    with pytest.raises(ValidationError, match="per_minute"):
        validate_tenant_payload("acme", {**TenantQuota("acme").to_payload(), "per_minute": -1})
    with pytest.raises(ValidationError, match="unknown field"):
        validate_tenant_payload("acme", {**TenantQuota("acme").to_payload(), "extra": 1})


def test_concurrency_limit_and_release() -> None:
    c = core(max_concurrency=1)
    assert c.admit("acme", 10.0, MIDNIGHT) == Admitted("acme")
    r = c.admit("acme", 10.1, MIDNIGHT)
    assert isinstance(r, Rejected) and (r.reason, r.retry_after_s) == ("concurrency", 1.0)
    assert c.admit("other", 10.1, MIDNIGHT) == Admitted("other")  # tenants are independent
    c.release("acme", 0.0, MIDNIGHT)
    assert c.admit("acme", 10.2, MIDNIGHT) == Admitted("acme")
    assert c.rejections == {("acme", "concurrency"): 1}


def test_per_minute_window_edges_and_retry_after() -> None:
    c = core(per_minute=3)

    def call(now: float) -> Admitted | Rejected:
        r = c.admit("acme", now, MIDNIGHT)
        if isinstance(r, Admitted):
            c.release("acme", 0.0, MIDNIGHT)
        return r

    assert all(isinstance(call(t), Admitted) for t in (100.2, 100.5, 130.0))
    r = call(130.5)
    # Bucket 100 (the oldest, 2 calls) leaves the 61-bucket window at 100 + 61 = 161.
    assert isinstance(r, Rejected) and r.reason == "rate" and r.retry_after_s == pytest.approx(30.5)
    r = call(160.99)
    assert isinstance(r, Rejected) and r.retry_after_s == pytest.approx(0.01)
    assert isinstance(call(161.0), Admitted)  # window 101..161 holds 130 only, then this one
    assert isinstance(call(161.5), Admitted)
    r = call(161.6)  # window holds 130, 161, 161: bucket 130 leaves at 191
    assert isinstance(r, Rejected) and r.retry_after_s == pytest.approx(29.4)
    assert c.rejections[("acme", "rate")] == 3


def test_rate_retry_after_counts_whole_old_buckets() -> None:
    c = core(per_minute=3)
    for t in (10.0, 10.1, 20.0):
        assert isinstance(c.admit("acme", t, MIDNIGHT), Admitted)
    r = c.admit("acme", 25.0, MIDNIGHT)
    assert isinstance(r, Rejected) and r.retry_after_s == pytest.approx(46.0)  # bucket 10 leaves at 71
    c2 = core(per_minute=2)
    for t in (10.0, 10.1, 20.0):
        c2.admit("acme", t, MIDNIGHT)
    r2 = c2.admit("acme", 25.0, MIDNIGHT)  # window holds 2 (bucket 10); one must leave: at 71
    assert isinstance(r2, Rejected) and r2.retry_after_s == pytest.approx(46.0)


def test_cpu_budget_until_utc_midnight_and_rollover() -> None:
    c = core(cpu_seconds_per_day=1.0)
    wall = MIDNIGHT + 3600.0  # 01:00 UTC
    assert isinstance(c.admit("acme", 1.0, wall), Admitted)
    c.release("acme", 0.6, wall)
    assert isinstance(c.admit("acme", 2.0, wall), Admitted)  # 0.6 < 1.0: admitted (may overrun)
    c.release("acme", 0.5, wall)
    assert c.cpu_used("acme", wall) == pytest.approx(1.1)
    r = c.admit("acme", 3.0, wall)
    assert isinstance(r, Rejected) and r.reason == "cpu" and r.retry_after_s == pytest.approx(82_800.0)
    r = c.admit("acme", 4.0, MIDNIGHT + 86_399.5)
    assert isinstance(r, Rejected) and r.retry_after_s == pytest.approx(0.5)
    assert isinstance(c.admit("acme", 5.0, MIDNIGHT + 86_400.0), Admitted)  # a new UTC day
    assert c.cpu_used("acme", MIDNIGHT + 86_400.0) == 0.0


def test_gossip_merge_days_and_leaving_nodes() -> None:
    c = core(cpu_seconds_per_day=1.0)
    wall = MIDNIGHT + 10.0
    c.admit("acme", 1.0, wall)
    c.release("acme", 0.3, wall)
    c.observe_peers({"b": f"{DAY}:acme=0.4,other=9", "c": None, "d": f"{DAY - 1}:acme=5"})
    assert c.cpu_used("acme", wall) == pytest.approx(0.7)  # d's label is yesterday's: not counted
    assert isinstance(c.admit("acme", 2.0, wall), Admitted)
    c.release("acme", 0.0, wall)
    c.observe_peers({"b": f"{DAY}:acme=0.4,other=9", "c": f"{DAY}:acme=0.35"})
    assert c.cpu_used("acme", wall) == pytest.approx(1.05)
    assert isinstance(c.admit("acme", 3.0, wall), Rejected)
    c.observe_peers({"b": f"{DAY}:acme=0.4,other=9"})  # c left (or died): its usage no longer counts
    assert c.cpu_used("acme", wall) == pytest.approx(0.7)
    assert isinstance(c.admit("acme", 4.0, wall), Admitted)
    c.observe_peers({"b": f"{DAY}:acme=0.5"})  # a newer label replaces the older
    assert c.cpu_used("acme", wall) == pytest.approx(0.8)
    assert c.cpu_used("other", wall) == 0.0


@pytest.mark.parametrize("text", [
    "garbage", f"{DAY}:ACME=1", f"{DAY}:acme=nan", f"{DAY}:acme=-1", "x:acme=1", f"{DAY}:acme", f"{DAY}:acme=1,acme=2",
    f"{DAY}:acme=1e13", f"{DAY}:" + "a" * 200 + "=1",
])
def test_bad_labels_are_ignored_and_counted_once(text: str) -> None:
    c = core()
    c.observe_peers({"b": f"{DAY}:acme=0.5"})
    c.observe_peers({"b": text})
    assert c.bad_labels == 1
    assert c.cpu_used("acme", MIDNIGHT) == 0.0  # the bad label replaced b's earlier usage
    c.observe_peers({"b": text})  # the same text again is not counted again
    assert c.bad_labels == 1


def test_encode_decode_and_size_bound() -> None:
    assert encode_usage(DAY, {"a": 1.0, "b": 2.5, "idle": 0.001}) == f"{DAY}:b=2.5,a=1"
    assert decode_usage(f"{DAY}:b=2.5,a=1") == (DAY, {"b": 2.5, "a": 1.0})
    assert decode_usage(f"{DAY}:") == (DAY, {})
    usage = {f"tenant-{i:02d}-" + "x" * 20: float(i) for i in range(10)}
    text = encode_usage(DAY, usage)
    assert len(text) <= 128
    # "20000:" is 6 characters, each entry "tenant-NN-xx...x=N" 32 (+1 comma): 6 + 32 + 2 * 33 = 104
    # fit, a fourth would make 137. The heaviest go first.
    assert list(decode_usage(text)[1]) == [f"tenant-{i:02d}-" + "x" * 20 for i in (9, 8, 7)]
    assert CPU_LABEL == "wasmatrix.cpu"
    assert utc_day(MIDNIGHT + 86_399.9) == DAY


def test_publication_rate_limit_and_threshold() -> None:
    c = core()
    wall = MIDNIGHT + 100.0
    assert c.publication(0.0, wall) is None  # no usage yet: no label
    c.charge("other", 0.5, wall)
    assert c.publication(0.0, wall) == f"{DAY}:other=0.5"
    c.published(f"{DAY}:other=0.5", 0.0)
    c.charge("acme", 2.0, wall)
    assert c.publication(0.5, wall) is None  # at most once a second
    assert c.publication(1.0, wall) == f"{DAY}:acme=2,other=0.5"
    c.published(f"{DAY}:acme=2,other=0.5", 1.0)
    c.charge("acme", 0.015, wall)  # 0.75 %: below 1 %
    assert c.publication(5.0, wall) is None
    c.charge("acme", 0.01, wall)  # 2.025: 1.25 % over what was published
    assert c.publication(5.0, wall) == f"{DAY}:acme=2.02,other=0.5"
    c.published(f"{DAY}:acme=2.02,other=0.5", 5.0)
    assert c.publication(10.0, MIDNIGHT + 86_400.0) == f"{DAY + 1}:"  # the day changed: usage reset


@settings(max_examples=examples(200), deadline=None)
@given(
    st.integers(min_value=1, max_value=6),
    st.lists(st.one_of(st.floats(min_value=0.0, max_value=3.0, allow_nan=False),
                       st.sampled_from([0.1, 0.5, 0.9, 58.7, 59.0, 59.6, 60.0, 61.0])), min_size=1, max_size=120),
)
def test_property_any_60s_window_holds_at_most_per_minute(limit: int, gaps: list[float]) -> None:
    c = core(per_minute=limit)
    now, admitted = 1000.0, []
    for g in gaps:
        now += g
        if isinstance(c.admit("acme", now, MIDNIGHT), Admitted):
            admitted.append(now)
            c.release("acme", 0.0, MIDNIGHT)
    # The fullest 60-second window starts at an admitted call.
    for i, t in enumerate(admitted):
        assert bisect.bisect_left(admitted, t + 60.0) - i <= limit
