"""Invocation end to end on three real daemons in one trio run (issue 11): local, forwarded, traceparent,
trap, on-demand cold start, kill of a host (retry, breaker), failover, then success.

Three ``Daemon`` objects run in-process on loopback (real UDP/TCP sockets, Noise, membership, intent
sync) with the real workload lifecycle: a module is published and deployed with the CLI, every node
places it, the hosts fetch, verify, compile and serve it, and their claims tell the others where it
runs. The module is ``runtime/examples/handler.wasm`` (direct ABI): it answers
``n=<calls>:<INPUT UPPERCASED>`` and traps on the input ``trap``. In-process, so the structured logs
of every node can be captured and the RTT estimates the caller holds can be pinned.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from mesh.cli import main
from mesh.daemon.config import load_config
from mesh.daemon.node import Daemon
from mesh.metrics import render
from mesh.membership.state import MemberState
from tests.cli_helpers import captured_logs
from tests.harness.daemons import run_cli
from tests.harness.inproc import cli_in_thread
from tests.harness.inproc import wait_for as _wait
from tests.harness.promtool import assert_documented, promtool_check

HANDLER = Path(__file__).resolve().parents[1] / "runtime" / "examples" / "handler.wasm"
TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _cfg(tmp: Path, name: str, seeds: list[str]) -> Any:
    return load_config({"data_dir": str(tmp / name), "bind": "127.0.0.1:0", "insecure": True, "name": name,
                        "seed": seeds, "profile": "local", "log_level": "info", "zone": f"eu/{name}"})


_capsys: Any = None


async def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in this process, on a worker thread (a subprocess per command costs seconds on a loaded machine)."""
    return await cli_in_thread(_capsys, *args)


def test_invoke_end_to_end_local_forwarded_trap_on_demand_and_failover(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    global _capsys
    _capsys = capsys
    with captured_logs() as logs:
        trio.run(_scenario, tmp_path, logs)


def _body(res: dict[str, Any]) -> bytes:
    return base64.b64decode(res["output_b64"])


async def _scenario(tmp_path: Path, logs: list[dict[str, Any]]) -> None:
    # Operator and publisher keys trusted on every node (the offline way: one trust.json copied).
    for role in ("publisher", "operator"):
        assert main(["keygen", "--role", role, "--out", str(tmp_path / f"{role}.key"), "--data-dir", str(tmp_path / "a")]) == 0
    for n in ("b", "c"):
        (tmp_path / n).mkdir(mode=0o700)
        shutil.copy(tmp_path / "a" / "trust.json", tmp_path / n / "trust.json")
    (tmp_path / "a").chmod(0o700)
    async with trio.open_nursery() as nursery:
        a: Daemon = await nursery.start(Daemon(_cfg(tmp_path, "a", [])).run)
        b: Daemon = await nursery.start(Daemon(_cfg(tmp_path, "b", [a.advertise])).run)
        c: Daemon = await nursery.start(Daemon(_cfg(tmp_path, "c", [a.advertise])).run)
        ds = {"a": a, "b": b, "c": c}
        ids = {n: d.node_id for n, d in ds.items()}
        name_of = {v: k for k, v in ids.items()}

        def all_alive() -> bool:
            return all(len([m for m in d.core.swim.members.values() if m.state == MemberState.ALIVE]) == 3 for d in ds.values())

        await _wait(all_alive, 20, "3 daemons see each other alive")

        # Nothing deployed: the only try is a local start, which the supervisor refuses (no such deployment).
        res = await a.invocations.invoke("web", b"x")
        assert (res["ok"], res["code"], res["mode"]) == (False, "no_replica", "none")
        assert [(x["node"], x["code"]) for x in res["attempts"]] == [(ids["a"], "not_hosted")]

        r = await _cli("module", "publish", str(HANDLER), "--name", "handler", "--version", "1.0.0", "--abi", "direct",
                       "--key", str(tmp_path / "publisher.key"), "--data-dir", str(tmp_path / "a"))
        assert r.returncode == 0, r.stderr
        r = await _cli("deploy", "web", "--module", "handler", "--version", "1.0.0", "--replicas", "2",
                       "--key", str(tmp_path / "operator.key"), "--data-dir", str(tmp_path / "a"))
        assert r.returncode == 0, r.stderr

        # At once, while the replicas are still starting: the call waits for one (within its deadline).
        res = await a.invocations.invoke("web", b"early", timeout=20)
        assert res["ok"] and _body(res) == b"n=1:EARLY", res
        assert [e for e in logs if e["event"] == "invoke_waited_for_start" and e["node_id"] == ids["a"]]

        def running_claims(viewer: Daemon, dep: str) -> set[str]:
            return {n for n, e in viewer.core.intent.doc.placements().items()
                    if any(c.deployment == dep and c.state == "running" for c in e.replicas)}

        def hosts_of(dep: str) -> set[str]:
            return {n for n, d in ds.items() if d.workloads.hosts(dep)}

        await _wait(lambda: len(hosts_of("web")) == 2 and all(len(running_claims(d, "web")) == 2 for d in ds.values()),
                    30, "2 replicas of web running, every node holds both claims")
        hosts = sorted(hosts_of("web"))
        (x_name,) = set(ds) - set(hosts)  # the node without a replica: its calls are forwarded
        x = ds[x_name]
        assert running_claims(x, "web") == {ids[h] for h in hosts}
        # `placements --explain` shows what x's lifecycle placed: both hosts chosen, x their warm standby.
        from mesh.daemon.api import ApiClient, ApiClientError

        ex = await trio.to_thread.run_sync(ApiClient(x.api_addr, x.token).get, "/v1/placements?deployment=web&explain=1")
        (dep,) = ex["deployments"]
        assert sorted(dep["target"]) == sorted(ids[h] for h in hosts) and dep["error"] is None
        assert {c["name"]: (c["replica"] is not None, c["standby"]) for c in dep["candidates"]} == {
            **{h: (True, False) for h in hosts}, x_name: (False, True)}

        # Local: a host runs the call itself; the given traceparent is kept and logged with the call.
        h = ds[hosts[0]]
        res = await h.invocations.invoke("web", b"hi", TP)
        assert res["ok"] and res["mode"] == "local" and res["node"] == ids[hosts[0]], res
        assert _body(res).endswith(b":HI") and res["traceparent"] == TP
        assert [(x_["node"], x_["code"]) for x_ in res["attempts"]] == [(ids[hosts[0]], "ok")]
        assert any(e["event"] == "invoke_local" and e["node_id"] == ids[hosts[0]] and e["traceparent"] == TP for e in logs)

        # Forwarded: x hosts nothing; the call runs on a replica over the mesh.
        res = await x.invocations.invoke("web", b"ping", TP)
        assert res["ok"] and res["mode"] == "forwarded" and res["code"] == "ok", res
        target = name_of[res["node"]]
        other = next(n for n in hosts if n != target)
        assert target in hosts and res["node_name"] == target
        assert _body(res).endswith(b":PING")
        trace_id = TP.split("-")[1]
        # The trace id is in both nodes' structured logs; the target's span has the caller's as parent.
        fwd = [e for e in logs if e["event"] == "invoke_forwarded" and e.get("trace_id") == trace_id]
        served = [e for e in logs if e["event"] == "invoke_served" and e.get("trace_id") == trace_id]
        assert [e["node_id"] for e in fwd] == [ids[x_name]] and fwd[0]["target"] == ids[target]
        assert [e["node_id"] for e in served] == [ids[target]] and served[0]["caller"] == ids[x_name]
        served_tp = served[0]["traceparent"]
        assert served_tp == fwd[0]["forwarded_traceparent"] and served_tp != TP and served_tp.split("-")[1] == trace_id
        assert any(e["event"] == "invoke_local" and e["node_id"] == ids[target] and e["traceparent"] == served_tp for e in logs)

        # No traceparent given: a new trace is started and travels the same way.
        res = await x.invocations.invoke("web", b"new")
        new_trace = res["traceparent"].split("-")[1]
        assert res["ok"] and new_trace != trace_id and len(new_trace) == 32
        assert any(e["event"] == "invoke_served" and e.get("trace_id") == new_trace for e in logs)

        # A trap ran the guest: reported, never retried on the other replica; the target's breaker
        # stays closed (the module's fault, not the node's); the target restarts its replica.
        pinned = {ids[target]: 0.001, ids[other]: 0.002}  # keep `target` the nearest (Vivaldi keeps moving)
        x.core.estimate_rtt = lambda _a, n: pinned.get(n)  # type: ignore[method-assign]
        # Through the control API: a trap is the handler's failure, 500 like the HTTP ingress (502 is for
        # no healthy replica), with the result object and its error.
        try:
            await trio.to_thread.run_sync(ApiClient(x.api_addr, x.token).post, "/v1/invoke",
                                          {"deployment": "web", "payload_b64": base64.b64encode(b"trap").decode()})
            raise AssertionError("a trap answered 200")
        except ApiClientError as exc:
            status, res = exc.status, exc.body
        assert status == 500 and "trap" in res["error"], (status, res)
        assert (res["ok"], res["code"], [a_["node"] for a_ in res["attempts"]]) == (False, "trap", [ids[target]]), res
        try:
            await trio.to_thread.run_sync(ApiClient(x.api_addr, x.token).post, "/v1/invoke", {"deployment": "nothing"})
            raise AssertionError("an unknown deployment answered 200")
        except ApiClientError as exc:
            assert (exc.status, exc.body["code"]) == (502, "no_replica"), (exc.status, exc.body)
        assert x.invocations.invoker.states(trio.current_time())[ids[target]] == "closed"
        await _wait(lambda: any(e["kind"] == "running" for e in ds[target].workloads.events.recent())
                    and len([e for e in ds[target].workloads.events.recent() if e["kind"] == "restart"]) == 1
                    and ds[target].workloads.hosts("web") and len(running_claims(x, "web")) == 2, 15,
                    "the trapped replica restarted and claims running again")

        # Through the control API and the CLI, as an operator runs it. The token is hex: one that
        # began with '-' (1 in 64 urlsafe tokens) read as an option in `--token TOKEN`.
        assert len(x.token) == 64 and set(x.token) <= set("0123456789abcdef")
        r = await trio.to_thread.run_sync(lambda: run_cli("invoke", "web", "--data", "cli", "--api", x.api_addr,
                                                          "--token", x.token))
        assert r.returncode == 0, r.stderr
        assert r.stdout.endswith(":CLI")
        (tmp_path / "in.txt").write_bytes(b"from a file")
        r = await _cli("invoke", "web", "--data", f"@{tmp_path}/in.txt", "--json", "--traceparent", TP,
                       "--api", x.api_addr, "--token", x.token)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["mode"] == "forwarded" and out["traceparent"] == TP and out["output"].endswith(":FROM A FILE")
        assert out["node_name"] in hosts and out["latency_ms"] > 0 and out["attempts"][-1]["code"] == "ok"
        r = await _cli("invoke", "nothing", "--api", x.api_addr, "--token", x.token)
        assert r.returncode == 1 and "no replica of nothing" in r.stderr
        r = await _cli("invoke", "web", "--traceparent", "00-bad", "--api", x.api_addr, "--token", x.token)
        assert r.returncode == 2 and "traceparent" in r.stderr
        r = await _cli("invoke", "web", "--data", f"@{tmp_path}/missing", "--api", x.api_addr, "--token", x.token)
        assert r.returncode == 2 and "no such file" in r.stderr

        # Hostile or wrong API bodies: one clear error each, nothing runs.
        client = ApiClient(x.api_addr, x.token)
        invoked = sum(1 for e in logs if e["event"] == "invoke_done")
        for body, status, words in [
            ({}, 400, "deployment"), ({"deployment": "a b"}, 400, "deployment"),
            ({"deployment": "web", "payload_b64": "!!"}, 400, "base64"),
            ({"deployment": "web", "payload_b64": 5}, 400, "base64"),
            ({"deployment": "web", "payload_b64": base64.b64encode(b"x" * 60_001).decode()}, 413, "60000"),
            ({"deployment": "web", "timeout_s": -1}, 400, "timeout_s"),
            ({"deployment": "web", "timeout_s": True}, 400, "timeout_s"),
            ({"deployment": "web", "traceparent": 7}, 400, "traceparent"),
        ]:
            try:
                await trio.to_thread.run_sync(client.post, "/v1/invoke", body)
                raise AssertionError(f"{body} was accepted")
            except ApiClientError as exc:
                assert exc.status == status and words in str(exc), (body, exc.status, str(exc))
        assert sum(1 for e in logs if e["event"] == "invoke_done") == invoked
        try:
            await trio.to_thread.run_sync(ApiClient(x.api_addr, "wrong").post, "/v1/invoke", {"deployment": "web"})
            raise AssertionError("accepted without the token")
        except ApiClientError as exc:
            assert exc.status == 401

        # On demand (replicas = 0): nothing placed; the first call cold-starts a replica on the calling
        # node (ensure_local); a call from another node then goes to that running replica.
        r = await _cli("deploy", "lazy", "--module", "handler", "--version", "1.0.0", "--replicas", "0",
                       "--key", str(tmp_path / "operator.key"), "--data-dir", str(tmp_path / "a"))
        assert r.returncode == 0, r.stderr
        await _wait(lambda: all(d.workloads.last is not None and "lazy" in d.workloads.last.placements for d in ds.values()),
                    10, "every node evaluated lazy")
        assert hosts_of("lazy") == set()
        res = await x.invocations.invoke("lazy", b"wake")
        assert res["ok"] and res["mode"] == "local" and res["node"] == ids[x_name] and _body(res) == b"n=1:WAKE", res
        assert hosts_of("lazy") == {x_name}
        (rep,) = [r_ for r_ in x.workloads.replicas() if r_["deployment"] == "lazy"]
        assert rep["on_demand"] and rep["state"] == "running"
        await _wait(lambda: running_claims(ds[target], "lazy") == {ids[x_name]}, 10, "the on-demand claim replicated")
        res = await ds[target].invocations.invoke("lazy", b"again")
        assert res["ok"] and res["mode"] == "forwarded" and res["node"] == ids[x_name] and _body(res) == b"n=2:AGAIN", res
        assert hosts_of("lazy") == {x_name}

        # Kill the nearest replica's daemon (its sockets close; membership has not noticed yet).
        before = {k: v for k, v in x.invocations.metrics.total.items()}
        ds[target].stop()
        await _wait(lambda: ids[target] not in x.conns_out, 10, "x's stream to the stopped node closed")
        outcomes = []
        for i in range(4):
            res = await x.invocations.invoke("web", f"after-{i}".encode())
            assert res["ok"] and res["node"] == ids[other], res
            outcomes.append([(a_["node"], a_["code"]) for a_ in res["attempts"]])
        dead, alive = ids[target], ids[other]
        # Three connection failures, each retried on the other replica; then the breaker is open
        # and the dead node is skipped without an attempt.
        assert outcomes == [[(dead, "connect_failed"), (alive, "ok")]] * 3 + [[(alive, "ok")]]
        assert x.invocations.invoker.states(trio.current_time())[dead] == "open"
        assert x.invocations.metrics.total["forwarded"] == before["forwarded"] + 4

        text = render(x.registry)
        promtool_check(text)
        body = text.decode()
        assert f'wasmatrix_invoke_breaker_state{{peer="{dead}"}} 2.0' in body
        assert 'wasmatrix_invoke_retries_total 3.0' in body
        assert 'wasmatrix_invoke_errors_total{reason="trap"} 1.0' in body
        # Every invoke family, label and label value is in docs/METRICS.md.
        from prometheus_client.parser import text_string_to_metric_families

        doc = (Path(__file__).parent.parent / "docs" / "METRICS.md").read_text()
        fams = [f for f in text_string_to_metric_families(body) if f.name.startswith("wasmatrix_invoke")]
        assert len(fams) == 9
        assert 'wasmatrix_invoke_calls_total{caller="api",code="trap",deployment="web"} 1.0' in body
        assert_documented(fams, doc, skip=("le", "peer", "deployment"))  # peer, deployment: ids and names
        assert 'wasmatrix_invoke_served_total{outcome="ok"}' in render(ds[other].registry).decode()

        # Failover: once membership declares the node dead, the survivors place web again; x (the
        # only eligible node left, already a warm standby) starts the replacement and serves locally.
        await _wait(lambda: x.workloads.hosts("web"), 30, "x runs the replacement replica")
        evs = x.workloads.events.recent()
        assert any(e["kind"] == "failover" and e["deployment"] == "web" and e["replaces"] == dead for e in evs)
        res = await x.invocations.invoke("web", b"after failover")
        assert res["ok"] and res["mode"] == "local" and _body(res).endswith(b":AFTER FAILOVER"), res

        nursery.cancel_scope.cancel()
