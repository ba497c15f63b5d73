"""Events on real daemons (issue 12, Events): publish → a module runs → its output on the reply topic;
meta and content filters; a trapping module → retries with backoff → dead letter; a full queue → 429
with Retry-After to the publisher; status and metrics; and (subprocess, kill -9) an acknowledged event
survives a crash of its node and is delivered after the restart.

The module is ``runtime/examples/handler.wasm`` (direct ABI): it answers ``n=<calls>:<INPUT UPPERCASED>``
and traps on the input ``trap``.
"""

from __future__ import annotations

import base64
import http.client
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
import trio

from mesh.cli import main
from mesh.daemon.config import load_config
from mesh.daemon.node import Daemon
from mesh.events import Event
from mesh.metrics import render
from tests.cli_helpers import captured_logs, cli_on_thread
from tests.harness.daemons import Mesh, publisher_and_operator, run_cli, wait_until
from tests.harness.procs import ProcessGroup
from tests.harness.promtool import assert_documented, promtool_check

HANDLER = Path(__file__).resolve().parents[1] / "runtime" / "examples" / "handler.wasm"

_capsys: Any = None


async def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return await cli_on_thread(_capsys, *args)


async def _ok(*args: str) -> Any:
    r = await _cli(*args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


async def _next(tap: Any, pred: Any, timeout: float, what: str) -> Event:
    with trio.move_on_after(timeout):
        async for ev in tap:
            if pred(ev):
                return ev  # type: ignore[no-any-return]
    raise AssertionError(f"{what}: not within {timeout} s")


def _raw_publish(d: Daemon, topic: str, data: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    host, _, port = d.api_addr.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    body = json.dumps({"topic": topic, "data_b64": base64.b64encode(data).decode()})
    conn.request("POST", "/v1/publish", body=body, headers={"Authorization": f"Bearer {d.token}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    out = (resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(resp.read()))
    conn.close()
    return out


def test_events_on_a_daemon_reply_filters_dead_letter_and_backpressure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    global _capsys
    _capsys = capsys
    with captured_logs() as logs:
        trio.run(_scenario, tmp_path, logs)


async def _scenario(tmp_path: Path, logs: list[dict[str, Any]]) -> None:
    dd = tmp_path / "a"
    for role in ("publisher", "operator"):
        assert main(["keygen", "--role", role, "--out", str(tmp_path / f"{role}.key"), "--data-dir", str(dd)]) == 0
    dd.chmod(0o700)
    cfg = load_config({"data_dir": str(dd), "bind": "127.0.0.1:0", "insecure": True, "name": "a", "profile": "local",
                       "log_level": "info"})
    op = ("--key", str(tmp_path / "operator.key"), "--data-dir", str(dd))
    async with trio.open_nursery() as nursery:
        a: Daemon = await nursery.start(Daemon(cfg).run)
        await _ok("module", "publish", str(HANDLER), "--name", "handler", "--version", "1.0.0", "--abi", "direct",
                  "--key", str(tmp_path / "publisher.key"), "--data-dir", str(dd))
        await _ok("deploy", "upper", "--module", "handler", "--version", "1.0.0", "--replicas", "0", *op)
        sub = await _ok("subscription", "add", "kitchen", "--topic", "home/+/temp", "--deployment", "upper",
                        "--where", "room=kitchen*", "--contains", "hot", "--reply-topic", "out/kitchen", *op)
        assert sub["signer"] and sub["max_attempts"] == 5 and sub["queue"] == 1000
        await _ok("subscription", "add", "traps", "--topic", "t/trap", "--deployment", "upper", "--max-attempts", "3", *op)
        await _ok("subscription", "add", "tiny", "--topic", "slow/#", "--deployment", "absent", "--queue", "2",
                  "--max-attempts", "50", *op)
        tap = a.bus.tap("#")

        # publish → the on-demand deployment runs → its output on the reply topic
        res = await _ok("publish", "home/k1/temp", "--data", "hot stove", "--meta", "room=kitchen-1", "--data-dir", str(dd))
        assert res["subscriptions"] == 1 and res["topic"] == "home/k1/temp"
        reply = await _next(tap, lambda e: e.topic == "out/kitchen", 30, "the reply event")
        assert reply.data.endswith(b":HOT STOVE") and reply.meta == {"reply_to": res["id"], "deployment": "upper"}
        assert reply.source == "reply"

        # filters: another room, or data without the text, matches no subscription
        assert (await _ok("publish", "home/b1/temp", "--data", "hot bath", "--meta", "room=bath",
                          "--data-dir", str(dd)))["subscriptions"] == 0
        (tmp_path / "cold.txt").write_bytes(b"cold")
        assert (await _ok("publish", "home/k1/temp", "--data", f"@{tmp_path / 'cold.txt'}", "--meta", "room=kitchen-1",
                          "--data-dir", str(dd)))["subscriptions"] == 0
        assert (await _ok("publish", "home/k1/temp/x", "--data", "hot", "--meta", "room=kitchen",
                          "--data-dir", str(dd)))["subscriptions"] == 0

        # a trapping module: retried with backoff, then the event goes to deadletter/traps
        trap = await a.bus.publish("t/trap", b"trap", {"why": "test"})
        dead = await _next(tap, lambda e: e.topic == "deadletter/traps", 30, "the dead letter")
        assert dead.data == b"trap" and dead.meta["event_id"] == trap.id and dead.meta["attempts"] == "3"
        assert dead.meta["why"] == "test"
        retries = [e for e in logs if e["event"] == "event_retry" and e.get("subscription") == "traps"]
        assert [e["attempt"] for e in retries] == [1, 2]
        # The first attempt traps; a trapped on-demand replica is restarted, so a later attempt may
        # also find no replica for a moment (no_replica): either is a failed attempt.
        assert retries[0]["error"].startswith("trap")
        assert dead.meta["last_error"].startswith(("trap", "no_replica"))
        assert 0 <= retries[0]["due_in_s"] <= 0.2 and 0 <= retries[1]["due_in_s"] <= 0.4  # full jitter windows

        # backpressure: a queue of 2 (its deployment does not exist: events wait in retries) → 429 + Retry-After
        for i in range(2):
            status, _, body = await trio.to_thread.run_sync(_raw_publish, a, "slow/x", b"%d" % i)
            assert status == 200 and body["subscriptions"] == 1
        status, headers, body = await trio.to_thread.run_sync(_raw_publish, a, "slow/x", b"2")
        assert status == 429 and int(headers["retry-after"]) >= 1 and "tiny" in body["error"]
        r = await _cli("publish", "slow/y", "--data", "3", "--data-dir", str(dd))
        assert r.returncode == 1 and "429" not in r.stdout and "queued" in r.stderr
        status, _, body = await trio.to_thread.run_sync(_raw_publish, a, "bad/+", b"")
        assert status == 400 and "wildcard" in body["error"]

        rows = {o["name"]: o for o in await _ok("subscription", "list", "--data-dir", str(dd))}
        assert (rows["kitchen"]["delivered"], rows["kitchen"]["depth"]) == (1, 0)
        assert (rows["traps"]["dead_letters"], rows["traps"]["retries"], rows["traps"]["failures"]) == (1, 2, 3)
        assert rows["tiny"]["depth"] == 2 and rows["tiny"]["queue"] == 2
        text = render(a.registry).decode()
        assert "wasmatrix_event_dead_letters_total 1.0" in text
        assert 'wasmatrix_event_deliveries_total{result="delivered",subscription="kitchen"} 1.0' in text
        assert 'wasmatrix_events_shed_total{reason="queue_full"} 2.0' in text
        assert 'wasmatrix_event_queue_depth{subscription="tiny"} 2.0' in text
        promtool_check(text.encode())
        # Every event family, label and label value (but subscription names) is in docs/METRICS.md.
        doc = (Path(__file__).parent.parent / "docs" / "METRICS.md").read_text()
        fams = [f for f in text_string_to_metric_families(text) if f.name.startswith(("wasmatrix_event", "wasmatrix_events"))]
        assert len(fams) == 8
        assert_documented(fams, doc, free=("subscription",), skip=())

        # rm: the subscription and its queue are gone
        await _ok("subscription", "rm", "tiny", *op)
        assert [o["name"] for o in await _ok("subscription", "list", "--data-dir", str(dd))] == ["kitchen", "traps"]
        tap.close()
        nursery.cancel_scope.cancel()


@pytest.mark.slow
def test_an_acknowledged_event_survives_kill_9_and_is_delivered_after_restart(tmp_path: Path) -> None:
    root = tmp_path
    publisher_and_operator(root, ["a"])
    dd = root / "a"
    op = ["--key", str(root / "op.key"), "--data-dir", str(dd)]
    (root / "logs").mkdir()
    with ProcessGroup(root / "logs") as group:
        mesh = Mesh(group, root)
        a = mesh.start("a")
        # The subscription exists, its deployment not yet: every attempt fails (no_replica) and is retried.
        r = run_cli("subscription", "add", "late", "--topic", "jobs/#", "--deployment", "later", "--max-attempts", "100",
                    "--reply-topic", "done/late", *op)
        assert r.returncode == 0, r.stderr
        r = run_cli("publish", "jobs/1", "--data", "payload", "--json", "--data-dir", str(dd))
        assert r.returncode == 0, r.stderr
        eid = json.loads(r.stdout)["id"]
        wait_until(lambda: a.client().get("/v1/subscriptions")[0]["failures"] >= 1, 20, "a failed attempt")
        mesh.kill("a")
        # While it is down: publish the module and deploy it (offline, on the data dir), then restart.
        r = run_cli("module", "publish", str(HANDLER), "--name", "handler", "--version", "1.0.0", "--abi", "direct",
                    "--key", str(root / "pub.key"), "--data-dir", str(dd))
        assert r.returncode == 0, r.stderr
        r = run_cli("deploy", "later", "--module", "handler", "--version", "1.0.0", "--replicas", "0", *op)
        assert r.returncode == 0, r.stderr
        a = mesh.start("a")
        wait_until(lambda: a.client().get("/v1/subscriptions")[0]["delivered"] == 1, 60, "the event delivered after restart")
        row = a.client().get("/v1/subscriptions")[0]
        assert row["depth"] == 0 and row["dead_letters"] == 0
        assert a.metric("wasmatrix_event_deliveries_total", 'result="delivered",subscription="late"') == 1.0
        assert a.proc is not None
        restored = [json.loads(line) for line in a.proc.stderr().splitlines() if '"events_restored"' in line]
        assert [(e["queued"], e["damaged"]) for e in restored] == [(1, 0)]
        assert eid.rsplit("-", 2)[0] == a.status()["id"][:12]  # ids name the publishing node
        # data from stdin (`--data -`)
        r = subprocess.run([sys.executable, "-m", "mesh.cli", "publish", "jobs/2", "--data", "-", "--json", "--data-dir", str(dd)],
                           input="from stdin", capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and json.loads(r.stdout)["subscriptions"] == 1, r.stderr
        wait_until(lambda: a.client().get("/v1/subscriptions")[0]["delivered"] == 2, 30, "the stdin event delivered")
