"""Invocation across real daemons in one trio run (issue 11): local, forwarded, traceparent, breaker, retry.

Three ``Daemon`` objects run in-process on loopback (real UDP/TCP sockets, Noise, membership, intent
sync). The workload supervisor (mesh/daemon/workloads.py) is being built on another branch, so b and
c get a small fake executor implementing the ``Workloads`` protocol and write their own placement
entries (a running replica of ``echo``) the way the supervisor will; a hosts nothing. Everything
else is the production path: target choice from the replicated placement document and membership,
``InvokeRequest``/``InvokeReply`` frames over the pooled Noise stream, breakers, retries, logs.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio

from crdt.schema import ReplicaClaim
from mesh.cli import main
from mesh.daemon.config import load_config
from mesh.daemon.node import Daemon
from mesh.metrics import render
from mesh.membership.state import MemberState
from runtime.errors import WasmTrap
from runtime.invocation import InvocationResult
from tests.harness.daemons import run_cli
from tests.harness.promtool import promtool_check

HELLO = Path(__file__).resolve().parents[1] / "runtime" / "examples" / "hello.wasm"
TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class FakeWorkloads:
    """Implements mesh.daemon.invocation.Workloads: hosts ``echo``, answers ``NAME:payload``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[tuple[bytes, str | None]] = []

    def hosts(self, deployment: str) -> bool:
        return deployment == "echo"

    async def invoke_local(self, deployment: str, payload: bytes, *, traceparent: str | None = None) -> Any:
        self.calls.append((payload, traceparent))
        if payload == b"trap":
            raise WasmTrap("unreachable executed", "unreachable")
        await trio.sleep(0)
        return InvocationResult(0, self.name.encode() + b":" + payload)


class NotHosted(Exception):
    """Named like mesh/daemon/workloads.py's refusal (not a LookupError there)."""


class Refusing:
    """A supervisor that hosts nothing and cannot start anything on demand."""

    def hosts(self, deployment: str) -> bool:
        return False

    async def invoke_local(self, deployment: str, payload: bytes, *, traceparent: str | None = None) -> Any:
        raise NotHosted(f"deployment {deployment} has no running replica on this node")


def _cfg(tmp: Path, name: str, seeds: list[str]) -> Any:
    return load_config({"data_dir": str(tmp / name), "bind": "127.0.0.1:0", "insecure": True, "name": name,
                        "seed": seeds, "profile": "lan", "log_level": "info", "zone": f"eu/{name}"})


async def _wait(pred: Any, timeout: float, what: str) -> None:
    with trio.move_on_after(timeout):
        while not pred():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"{what}: not within {timeout} s")


def test_invoke_local_forwarded_traceparent_and_breaker_retry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    global _capsys
    _capsys = capsys
    saved = structlog.get_config()
    structlog.reset_defaults()  # an earlier in-process CLI test may have filtered info logs out
    try:
        with structlog.testing.capture_logs() as logs:
            trio.run(_scenario, tmp_path, logs)
    finally:
        structlog.configure(**saved)


_capsys: Any = None


async def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in this process, on a worker thread (a subprocess per command costs seconds on a loaded machine)."""
    _capsys.readouterr()
    code = await trio.to_thread.run_sync(main, list(args))
    out, err = _capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out, err)


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

        def all_alive() -> bool:
            return all(len([m for m in d.core.swim.members.values() if m.state == MemberState.ALIVE]) == 3 for d in ds.values())

        await _wait(all_alive, 20, "3 daemons see each other alive")

        # No replica anywhere yet: a fails with no_replica, nothing is tried.
        res = await a.invocations.invoke("echo", b"x")
        assert (res["ok"], res["code"], res["mode"], res["attempts"]) == (False, "no_replica", "none", [])

        # A supervisor that runs nothing here and refuses to start anything: one local try, no_replica.
        a.workloads = Refusing()
        res = await a.invocations.invoke("echo", b"x")
        assert (res["ok"], res["code"], res["mode"]) == (False, "no_replica", "none")
        assert [(x["node"], x["code"]) for x in res["attempts"]] == [(a.node_id, "not_hosted")]

        fakes = {n: FakeWorkloads(n) for n in ("b", "c")}
        for n, fake in fakes.items():
            d = ds[n]
            d.workloads = fake
            d.core.intent.set_placement([ReplicaClaim("echo", "1.0.0", "running", 0)], trio.current_time(), wall=time.time())
            d.emit([])

        def a_sees_replicas() -> bool:
            entries = a.core.intent.doc.placements()
            return all(ids[n] in entries for n in ("b", "c"))

        await _wait(a_sees_replicas, 20, "a holds b's and c's placement entries")

        # Local: b hosts a replica, runs it itself; the given traceparent is kept.
        res = await b.invocations.invoke("echo", b"hi", TP)
        assert res["ok"] and res["mode"] == "local" and res["node"] == ids["b"]
        assert res["output_b64"] == "YjpoaQ=="  # base64("b:hi")
        assert res["traceparent"] == TP and fakes["b"].calls[-1] == (b"hi", TP)

        # Forwarded: a hosts nothing, the call runs on b or c over the mesh.
        res = await a.invocations.invoke("echo", b"ping", TP)
        assert res["ok"] and res["mode"] == "forwarded" and res["code"] == "ok"
        target = next(n for n in ("b", "c") if ids[n] == res["node"])
        other = "c" if target == "b" else "b"
        assert res["node_name"] == target
        assert base64.b64decode(res["output_b64"]) == f"{target}:ping".encode()
        payload, served_tp = fakes[target].calls[-1]
        assert payload == b"ping" and served_tp is not None
        trace_id = TP.split("-")[1]
        assert served_tp.split("-")[1] == trace_id and served_tp != TP  # same trace, a's span as parent
        # The trace id is in both nodes' structured logs.
        fwd = [e for e in logs if e["event"] == "invoke_forwarded" and e.get("trace_id") == trace_id]
        served = [e for e in logs if e["event"] == "invoke_served" and e.get("trace_id") == trace_id]
        assert [e["node_id"] for e in fwd] == [ids["a"]] and fwd[0]["target"] == ids[target]
        assert [e["node_id"] for e in served] == [ids[target]] and served[0]["caller"] == ids["a"]
        assert served[0]["traceparent"] == served_tp

        # No traceparent given: a new trace is started and travels the same way.
        res = await a.invocations.invoke("echo", b"new")
        new_trace = res["traceparent"].split("-")[1]
        assert res["ok"] and new_trace != trace_id and len(new_trace) == 32
        assert any(e["event"] == "invoke_served" and e.get("trace_id") == new_trace for e in logs)

        # A trap runs the guest: reported, never retried elsewhere, the target's breaker stays closed.
        res = await a.invocations.invoke("echo", b"trap")
        assert (res["ok"], res["code"], len(res["attempts"])) == (False, "trap", 1)
        assert "unreachable" in res["message"]
        assert a.invocations.invoker.states(trio.current_time()) == {ids[target]: "closed"}

        # The supervisor's digests replace the placements task's own, reach a through gossip and stay.
        ds[other].set_placement_digest("aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc")
        want = "1:aaaaaaaaaaaa:cccccccccccc:bbbbbbbbbbbb"
        await _wait(lambda: a.core.swim.members.peek(ids[other]).meta.agreement == want, 10, "a sees the new digests")
        await trio.sleep(1.5)  # the placements task ran again meanwhile: it no longer writes its own
        assert ds[other].core.meta.agreement == want

        # Through the control API and the CLI, as an operator runs it.
        r = await trio.to_thread.run_sync(lambda: run_cli("invoke", "echo", "--data", "cli", "--api", a.api_addr,
                                                          "--token", a.token))
        assert r.returncode == 0, r.stderr
        assert r.stdout in ("b:cli", "c:cli")
        (tmp_path / "in.txt").write_bytes(b"from a file")
        r = await _cli("invoke", "echo", "--data", f"@{tmp_path}/in.txt", "--json", "--traceparent", TP,
                       "--api", a.api_addr, "--token", a.token)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["mode"] == "forwarded" and out["traceparent"] == TP
        assert out["output"] in ("b:from a file", "c:from a file")
        assert out["node_name"] in ("b", "c") and out["latency_ms"] > 0 and out["attempts"][-1]["code"] == "ok"
        r = await _cli("invoke", "echo", "--data", "trap", "--json", "--api", a.api_addr, "--token", a.token)
        assert r.returncode == 1 and json.loads(r.stdout)["code"] == "trap"
        r = await _cli("invoke", "nothing", "--api", a.api_addr, "--token", a.token)
        assert r.returncode == 1 and "no replica of nothing" in r.stderr
        r = await _cli("invoke", "echo", "--traceparent", "00-bad", "--api", a.api_addr, "--token", a.token)
        assert r.returncode == 2 and "traceparent" in r.stderr
        r = await _cli("invoke", "echo", "--data", f"@{tmp_path}/missing", "--api", a.api_addr, "--token", a.token)
        assert r.returncode == 2 and "no such file" in r.stderr

        # `placements`: the claims b and c wrote, with names, zones, versions, states (an echo deployment now exists).
        r = await _cli("module", "publish", str(HELLO), "--name", "echo", "--version", "1.0.0", "--key",
                       str(tmp_path / "publisher.key"), "--data-dir", str(tmp_path / "b"))
        assert r.returncode == 0, r.stderr
        r = await _cli("deploy", "echo", "--module", "echo", "--version", "1.0.0", "--replicas", "2", "--key",
                       str(tmp_path / "operator.key"), "--data-dir", str(tmp_path / "b"))
        assert r.returncode == 0, r.stderr
        await _wait(lambda: [d.name for d in a.core.intent.doc.deployments()] == ["echo"], 10, "a holds the deployment")
        r = await _cli("placements", "echo", "--json", "--data-dir", str(tmp_path / "a"))
        assert r.returncode == 0, r.stderr
        dep = json.loads(r.stdout)["deployments"][0]
        assert [(x["name"], x["version"], x["state"], x["index"], x["zone"]) for x in dep["running"]] == [
            (n, "1.0.0", "running", 0, f"eu/{n}") for n in sorted(("b", "c"), key=lambda n: ids[n])]
        r = await _cli("placements", "--data-dir", str(tmp_path / "a"))
        assert r.returncode == 0, r.stderr
        assert "echo" in r.stdout and "running" in r.stdout and "eu/b" in r.stdout and "eu/c" in r.stdout

        # Hostile or wrong API bodies: one clear error each, nothing runs.
        from mesh.daemon.api import ApiClient, ApiClientError

        client = ApiClient(a.api_addr, a.token)
        for body, status, words in [
            ({}, 400, "deployment"), ({"deployment": "a b"}, 400, "deployment"),
            ({"deployment": "echo", "payload_b64": "!!"}, 400, "base64"),
            ({"deployment": "echo", "payload_b64": 5}, 400, "base64"),
            ({"deployment": "echo", "payload_b64": base64.b64encode(b"x" * 60_001).decode()}, 413, "60000"),
            ({"deployment": "echo", "timeout_s": -1}, 400, "timeout_s"),
            ({"deployment": "echo", "timeout_s": True}, 400, "timeout_s"),
            ({"deployment": "echo", "traceparent": 7}, 400, "traceparent"),
        ]:
            calls_before = len(fakes["b"].calls) + len(fakes["c"].calls)
            try:
                await trio.to_thread.run_sync(client.post, "/v1/invoke", body)
                raise AssertionError(f"{body} was accepted")
            except ApiClientError as exc:
                assert exc.status == status and words in str(exc), (body, exc.status, str(exc))
            assert len(fakes["b"].calls) + len(fakes["c"].calls) == calls_before
        try:
            await trio.to_thread.run_sync(ApiClient(a.api_addr, "wrong").post, "/v1/invoke", {"deployment": "echo"})
            raise AssertionError("accepted without the token")
        except ApiClientError as exc:
            assert exc.status == 401

        # Kill the nearest replica's daemon (its sockets close; membership has not noticed yet). The
        # RTT estimates a holds are pinned so the killed node stays the nearest (Vivaldi keeps moving).
        pinned = {ids[target]: 0.001, ids[other]: 0.002}
        a.core.estimate_rtt = lambda x, y: pinned.get(y)  # type: ignore[method-assign]
        ds[target].stop()
        await _wait(lambda: ids[target] not in a.conns_out, 10, "a's stream to the stopped node closed")
        outcomes = []
        for i in range(4):
            res = await a.invocations.invoke("echo", f"after-{i}".encode())
            assert res["ok"] and res["node"] == ids[other], res
            outcomes.append([(x["node"], x["code"]) for x in res["attempts"]])
        dead, alive = ids[target], ids[other]
        # Three connection failures, each retried on the other replica; then the breaker is open
        # and the dead node is skipped without an attempt.
        assert outcomes == [[(dead, "connect_failed"), (alive, "ok")]] * 3 + [[(alive, "ok")]]
        assert a.invocations.invoker.states(trio.current_time())[dead] == "open"

        text = render(a.registry)
        promtool_check(text)
        body = text.decode()
        assert f'wasmatrix_invoke_breaker_state{{peer="{dead}"}} 2.0' in body
        assert 'wasmatrix_invoke_retries_total 3.0' in body
        # ping, new, trap, 3 through the CLI, 4 after the kill
        assert 'wasmatrix_invoke_total{mode="forwarded"} 10.0' in body
        assert 'wasmatrix_invoke_total{mode="local"} 0.0' in body
        assert 'wasmatrix_invoke_total{mode="local"} 1.0' in render(b.registry).decode()
        assert 'wasmatrix_invoke_errors_total{reason="trap"} 2.0' in body
        assert 'wasmatrix_invoke_errors_total{reason="no_replica"} 3.0' in body
        assert 'wasmatrix_invoke_latency_seconds_count{mode="forwarded"} 10.0' in body
        # Every invoke family, label and label value is in docs/METRICS.md.
        from prometheus_client.parser import text_string_to_metric_families

        doc = (Path(__file__).parent.parent / "docs" / "METRICS.md").read_text()
        fams = [f for f in text_string_to_metric_families(body) if f.name.startswith("wasmatrix_invoke")]
        assert len(fams) == 8
        for fam in fams:
            assert f"`{fam.name + '_total' if fam.type == 'counter' else fam.name}`" in doc, fam.name
            for smp in fam.samples:
                for label, v in smp.labels.items():
                    if label not in ("le", "peer"):
                        assert f"`{label}`" in doc and v in doc, (fam.name, label, v)
        served_text = render(ds[other].registry).decode()
        assert 'wasmatrix_invoke_served_total{outcome="ok"}' in served_text

        nursery.cancel_scope.cancel()
