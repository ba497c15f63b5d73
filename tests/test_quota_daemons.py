"""Tenant quotas on real daemons (issue 12, seed 003 R14): concurrency and per-minute limits answer 429
with Retry-After on the control API, and a daily CPU budget burnt on one node (by a call forwarded to
it) refuses calls on the other once the usage arrived there by gossip.

Two ``Daemon`` objects in one trio run on loopback (real sockets, Noise, membership, intent sync, the
workload lifecycle). Quotas and deployments are written with the CLI against the running node.
A one-daemon test (in the default run) changes quotas and a deployment's tenant with the CLI and
checks that each change binds the very next call (the lookups are kept per intent change).
Modules: ``runtime/examples/loop.wasm`` (a WASI command that never ends: every call runs until its
``timeout_ms`` limit) and ``hello.wasm`` (answers at once).
"""

from __future__ import annotations

import http.client
from dataclasses import replace
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from mesh.cli import main
from mesh.daemon.api import ApiError
from mesh.daemon.node import Daemon
from mesh.membership.state import MemberState
from mesh.metrics import render
from tests import test_invoke_daemons as tid

EXAMPLES = Path(__file__).resolve().parents[1] / "runtime" / "examples"


# The daemon config, the polling wait and the in-process CLI of the invocation end-to-end test.
_cfg, _wait, _cli = tid._cfg, tid._wait, tid._cli


def _post_invoke(d: Daemon, deployment: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    """POST /v1/invoke over HTTP (blocking: run on a worker thread): status, headers, JSON body."""
    host, _, port = d.api_addr.rpartition(":")
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=30)
    try:
        conn.request("POST", "/v1/invoke", body=json.dumps({"deployment": deployment}),
                     headers={"Authorization": f"Bearer {d.token}", "Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, json.loads(r.read())
    finally:
        conn.close()


def _get(addr: str, path: str) -> tuple[int, dict[str, str], str]:
    host, _, port = addr.rpartition(":")
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=30)
    try:
        conn.request("GET", path, headers={"Host": "quota.test"})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode("utf-8", "replace")
    finally:
        conn.close()


def _metric(d: Daemon, line_start: str) -> float | None:
    for line in render(d.registry).decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.slow
def test_tenant_quotas_on_two_daemons(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tid._capsys = capsys  # tid._cli reads the command's output through it
    trio.run(_scenario, tmp_path)


async def _scenario(tmp: Path) -> None:
    for role in ("publisher", "operator"):
        assert main(["keygen", "--role", role, "--out", str(tmp / f"{role}.key"), "--data-dir", str(tmp / "a")]) == 0
    (tmp / "b").mkdir(mode=0o700)
    shutil.copy(tmp / "a" / "trust.json", tmp / "b" / "trust.json")
    (tmp / "a").chmod(0o700)
    op, pub, on_a = str(tmp / "operator.key"), str(tmp / "publisher.key"), ("--data-dir", str(tmp / "a"))
    async with trio.open_nursery() as nursery:
        a: Daemon = await nursery.start(Daemon(replace(_cfg(tmp, "a", []), http=("127.0.0.1", 0))).run)  # + HTTP ingress
        b: Daemon = await nursery.start(Daemon(_cfg(tmp, "b", [a.advertise])).run)
        ds = (a, b)
        await _wait(lambda: all(sum(m.state == MemberState.ALIVE for m in d.core.swim.members.values()) == 2 for d in ds),
                    20, "2 daemons see each other alive")

        for tenant, flag, value in (("slow", "--concurrency", "1"), ("rate", "--per-minute", "3"),
                                    ("burn", "--cpu-seconds-per-day", "1")):
            r = await _cli("tenant", "set", tenant, flag, value, "--key", op, *on_a)
            assert r.returncode == 0, r.stderr
        for mod, limit in (("loop", "timeout_ms=1500"), ("hello", "timeout_ms=5000")):
            r = await _cli("module", "publish", str(EXAMPLES / f"{mod}.wasm"), "--name", mod, "--version", "1.0.0",
                           "--limit", limit, "--key", pub, *on_a)
            assert r.returncode == 0, r.stderr
        # Two replicas of slowdep and fast on two nodes: those calls run on the node that admitted them.
        # One replica of burner: the other node's calls are forwarded to it.
        for dep, mod, tenant, n in (("slowdep", "loop", "slow", "2"), ("fast", "hello", "rate", "2"),
                                    ("burner", "loop", "burn", "1")):
            r = await _cli("deploy", dep, "--module", mod, "--version", "1.0.0", "--replicas", n, "--tenant", tenant,
                           "--key", op, *on_a)
            assert r.returncode == 0, r.stderr
        r = await _cli("route", "add", "--host", "*", "--path", "/fast", "--deployment", "fast", "--key", op, *on_a)
        assert r.returncode == 0, r.stderr

        def burner_claimed(d: Daemon) -> bool:
            return any(c.deployment == "burner" and c.state == "running"
                       for e in d.core.intent.doc.placements().values() for c in e.replicas)

        await _wait(lambda: all(d.workloads.hosts(dep) for d in ds for dep in ("slowdep", "fast"))
                    and sum(d.workloads.hosts("burner") for d in ds) == 1 and all(burner_claimed(d) for d in ds)
                    and all(d.core.intent.doc.tenant("burn") is not None for d in ds), 60, "every replica runs")

        # --- concurrency 1: a second call while the first runs is refused, 429 + Retry-After: 1.
        first: dict[str, Any] = {}

        async def slow_call() -> None:
            first.update(await a.invocations.invoke("slowdep", b""))

        nursery.start_soon(slow_call)
        await _wait(lambda: a.quotas.core.in_flight("slow") == 1, 5, "the first slow call is in flight")
        status, headers, body = await trio.to_thread.run_sync(_post_invoke, a, "slowdep")
        assert (status, headers.get("retry-after"), body["code"], body["tenant"]) == (429, "1", "quota", "slow"), body
        assert body["attempts"] == [] and body["retry_after_s"] == 1.0
        await _wait(lambda: bool(first), 10, "the first slow call ends")
        assert first["code"] == "timeout" and first["tenant"] == "slow", first  # it ran (and hit its 1.5 s limit)
        assert a.quotas.core.in_flight("slow") == 0

        # --- 3 per minute: the 4th call is 429 with the exact wait until the oldest second leaves the window.
        for i in range(3):
            res = await a.invocations.invoke("fast", b"")
            assert res["ok"] and res["tenant"] == "rate", res
        t4 = trio.current_time()
        status, headers, body = await trio.to_thread.run_sync(_post_invoke, a, "fast")
        assert (status, body["code"], body["quota_reason"]) == (429, "quota", "rate"), body
        # The first call's second bucket leaves 61 s after it began: between 59 and 61 s from now.
        assert 59.0 < body["retry_after_s"] <= 61.0 and headers["retry-after"] == str(math.ceil(body["retry_after_s"]))
        assert trio.current_time() - t4 < 59.0
        # The same refusal through the HTTP ingress: 429 with Retry-After (mesh/ingress maps code quota).
        status, headers, text = await trio.to_thread.run_sync(_get, a.http_addr, "/fast")
        assert status == 429 and 59 <= int(headers["retry-after"]) <= 61, (status, headers, text)
        res = await b.invocations.invoke("fast", b"")  # per node: b admitted none of those calls
        assert res["ok"], res
        assert _metric(a, 'wasmatrix_quota_rejections_total{reason="rate",tenant="rate"}') == 2.0  # API + HTTP
        assert _metric(a, 'wasmatrix_invoke_calls_total{caller="http",code="quota",deployment="fast"}') == 1.0
        assert _metric(a, 'wasmatrix_quota_rejections_total{reason="concurrency",tenant="slow"}') == 1.0

        # --- CPU budget of 1 s a day, mesh-wide. The node without the replica (caller) forwards one call
        # to the host, which runs it for 1.5 s and charges it to its own usage; the caller refuses its
        # next call once the host's usage reached it by gossip, and the host refuses its own too.
        host = a if a.workloads.hosts("burner") else b
        caller = b if host is a else a
        res = await caller.invocations.invoke("burner", b"")  # nothing used yet anywhere: admitted
        assert (res["code"], res["mode"], res["tenant"]) == ("timeout", "forwarded", "burn"), res
        assert host.quotas.core.own["burn"] >= 1.0  # charged where the guest ran ...
        assert caller.quotas.core.own.get("burn", 0.0) == 0.0  # ... not by the node that forwarded it
        ended = time.monotonic()
        await _wait(lambda: caller.quotas.core.cpu_used("burn", time.time()) >= 1.0, 10,
                    "the host's CPU usage reaches the caller by gossip")
        arrived = time.monotonic() - ended
        midnight = (math.floor(time.time() / 86400) + 1) * 86400
        for d in (caller, host):
            res = await d.invocations.invoke("burner", b"")
            assert (res["code"], res["quota_reason"], res["attempts"]) == ("quota", "cpu", []), res
            assert abs(res["retry_after_s"] - (midnight - time.time())) < 5
        gauge = _metric(caller, 'wasmatrix_tenant_cpu_seconds_today{tenant="burn"}')
        assert gauge is not None and gauge >= 1.0

        # `tenant list --json` against the node: the limits and a's view of the usage.
        r = await _cli("tenant", "list", "--json", *on_a)
        assert r.returncode == 0, r.stderr
        # The daemons of this process log to stdout too: the command's JSON is the array in it.
        doc, _ = json.JSONDecoder().raw_decode(r.stdout[r.stdout.index("[\n  {"):])
        rows = {row["tenant"]: row for row in doc}
        assert (rows["rate"]["per_minute"], rows["rate"]["calls_last_minute"]) == (3, 3)
        assert rows["burn"]["cpu_seconds_today"] >= 1.0
        assert (rows["burn"]["cpu_seconds_today_here"] >= 1.0) == (host is a)
        assert rows["default"]["record"] is False and rows["default"]["max_concurrency"] == 100
        # The quota families pass promtool, and every family, label and value is in docs/METRICS.md.
        from prometheus_client.parser import text_string_to_metric_families

        from tests.harness.promtool import assert_documented, promtool_check

        text = render(a.registry)
        promtool_check(text)
        doc = (Path(__file__).parent.parent / "docs" / "METRICS.md").read_text()
        fams = [f for f in text_string_to_metric_families(text.decode()) if f.name.startswith(("wasmatrix_quota", "wasmatrix_tenant"))]
        assert sorted(f.name for f in fams) == ["wasmatrix_quota_bad_labels", "wasmatrix_quota_rejections",
                                                "wasmatrix_tenant_cpu_seconds_today"]
        assert_documented(fams, doc, free=("tenant",), skip=())
        # a refused 4 calls by quota: concurrency (API), per-minute (API and HTTP), and the CPU budget, whichever
        # node hosts the burner (the host refuses its own call; the caller refuses before forwarding).
        quota_errors = [ln for ln in text.decode().splitlines() if ln.startswith('wasmatrix_invoke_errors_total{reason="quota"}')]
        assert quota_errors == ['wasmatrix_invoke_errors_total{reason="quota"} 4.0'], (host is a, quota_errors)
        print(f"\nCPU usage of the host reached the caller {arrived:.2f} s after the call ended", file=sys.__stderr__)
        nursery.cancel_scope.cancel()


def test_a_quota_change_binds_the_next_call(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The quota check keeps the deployment's tenant and the tenant's limits between intent changes
    (crdt.documents.IntentDoc): `tenant set`, `tenant rm` and `deploy --tenant` against a running
    node must each bind the very next call."""
    tid._capsys = capsys
    trio.run(_change_scenario, tmp_path)


async def _change_scenario(tmp: Path) -> None:
    for role in ("publisher", "operator"):
        assert main(["keygen", "--role", role, "--out", str(tmp / f"{role}.key"), "--data-dir", str(tmp / "a")]) == 0
    (tmp / "a").chmod(0o700)
    op, on_a = str(tmp / "operator.key"), ("--data-dir", str(tmp / "a"))

    async def cli(*args: str) -> None:
        r = await _cli(*args, "--key", op, *on_a)
        assert r.returncode == 0, (args, r.stderr)

    async with trio.open_nursery() as nursery:
        a: Daemon = await nursery.start(Daemon(_cfg(tmp, "a", [])).run)
        r = await _cli("module", "publish", str(EXAMPLES / "hello.wasm"), "--name", "hello", "--version", "1.0.0",
                       "--key", str(tmp / "publisher.key"), *on_a)
        assert r.returncode == 0, r.stderr

        async def call() -> tuple[str, str | None, str]:
            res = await a.invocations.invoke("app", b"")
            return res["code"], res.get("quota_reason"), res["tenant"]

        # On demand (replicas 0): a refused call starts nothing; an admitted one cold-starts hello here.
        await cli("tenant", "set", "t1", "--concurrency", "0")
        await cli("deploy", "app", "--module", "hello", "--version", "1.0.0", "--replicas", "0", "--tenant", "t1")
        assert await call() == ("quota", "concurrency", "t1")
        # A refused call continues the caller's trace, and refuses a malformed one like any call (one function).
        res = await a.invocations.invoke("app", b"", tid.TP)
        assert (res["code"], res["traceparent"]) == ("quota", tid.TP)
        with pytest.raises(ApiError) as exc:
            await a.invocations.invoke("app", b"", "00-bad")
        assert exc.value.status == 400 and "traceparent" in str(exc.value)
        await cli("tenant", "set", "t1", "--concurrency", "5")
        assert await call() == ("ok", None, "t1")
        await cli("tenant", "set", "t1", "--per-minute", "1")  # one call made this minute already
        assert await call() == ("quota", "rate", "t1")
        await cli("tenant", "rm", "t1")  # the defaults again: 10,000 a minute
        assert await call() == ("ok", None, "t1")
        await cli("tenant", "set", "t2", "--cpu-seconds-per-day", "0")
        await cli("deploy", "app", "--module", "hello", "--version", "1.0.0", "--replicas", "0", "--tenant", "t2")
        assert await call() == ("quota", "cpu", "t2")
        await cli("deploy", "app", "--module", "hello", "--version", "1.0.0", "--replicas", "0")
        assert await call() == ("ok", None, "default")
        assert a.quotas.limits("t1").per_minute == 10_000 and a.quotas.limits("t2").cpu_seconds_per_day == 0
        nursery.cancel_scope.cancel()
