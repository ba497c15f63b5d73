"""`wasmatrix demo` (issues 10, 11): real daemons on loopback running a workload; a SIGKILLed host
detected by every survivor and its replica failed over; a roll forward and back; a leave.

The demo runs as a subprocess, as a user runs it (bounded 90 s). Its daemons are started by the
demo in their own sessions; the test checks that every PID the demo reports is gone once it exits,
also after a Ctrl-C in the middle, and that its temp dir (under the TMPDIR the test gives it) is
removed. A daemon the demo failed to stop would fail the test and is then killed by that PID.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from mesh.cli import build_parser
from tests.harness.procs import ProcessGroup, pid_alive, procs  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow  # real daemon processes: run in CI and with WASMATRIX_SLOW=1 (docs/TESTING.md)

DEMO_TIMEOUT = 90.0
# The demo runs the daemon's default profile, edge (mesh/membership/config.py, docs/DAEMON.md):
# probe interval 0.4 s, probe timeout 0.2 s, suspicion 4 x max(1, log10 n) probe intervals, at most
# 6x that without any confirmation. With 3 nodes the crashed one is probed within (3 - 1) intervals,
# fails after 0.2 s and is dead after at most 9.6 s of suspicion; 1 s of margin for gossip:
EDGE_BOUND_3 = 2 * 0.4 + 0.2 + 4 * 0.4 * 6 + 1.0  # 11.6 s


def _reap_leftovers(pids: list[int]) -> list[int]:
    """PIDs still running (a failure of the demo); each is killed by that PID so none outlives the test."""
    left = [p for p in pids if pid_alive(p)]
    for p in left:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def _demo_env(tmp_path: Path) -> dict[str, str]:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    return {"TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}


def test_demo_json_three_nodes_crash_detected_by_every_survivor_leave_shown_and_all_cleaned_up(
    procs: ProcessGroup, tmp_path: Path
) -> None:
    env = _demo_env(tmp_path)
    proc = procs.start([sys.executable, "-m", "mesh.cli", "demo", "--nodes", "3", "--json"], name="demo", env=env)
    code = proc.popen.wait(DEMO_TIMEOUT)
    out, err = proc.stdout(), proc.stderr()
    assert out.count("\n") == 1, f"--json prints one JSON line and nothing else:\n{out}\n{err}"
    s = json.loads(out)
    leftovers = _reap_leftovers(s["pids"])
    assert code == 0, (s.get("error"), err)
    assert s["ok"] is True and s["error"] is None
    assert leftovers == [], f"daemons still running after the demo exited: {leftovers}"
    assert list((tmp_path / "tmp").iterdir()) == [], "the demo left its temp dir behind"

    assert (s["nodes"], s["profile"], s["seed"], s["killed"], s["left"]) == (3, "edge", "n1", "n2", "n3")
    assert s["detect_bound_s"] == pytest.approx(EDGE_BOUND_3)
    assert len(s["pids"]) == 3 and len(set(s["pids"])) == 3 and os.getpid() not in s["pids"]

    # Every survivor (n1, n3) saw n2 dead, after a positive time below the profile's bound.
    assert sorted(s["detection"]) == ["n1", "n3"]
    for name, d in s["detection"].items():
        assert d["dead_s"] is not None and 0 < d["dead_s"] < EDGE_BOUND_3, (name, d)
        if d["suspect_s"] is not None:  # suspicion precedes death
            assert 0 < d["suspect_s"] <= d["dead_s"], (name, d)
    dead = sorted(d["dead_s"] for d in s["detection"].values())
    assert s["figures"]["detection_s"] == {"min": dead[0], "median": pytest.approx((dead[0] + dead[1]) / 2, abs=1e-3), "max": dead[1]}
    assert s["figures"]["join_s"] > 0 and s["figures"]["total_s"] < DEMO_TIMEOUT

    # The workload (issue 11): 2 replicas near n1 spread over regions -> n1 (eu) and n2, the only node in us.
    w = s["workload"]
    assert w["hosts"] == ["n1", "n2"]
    calls = {r["from"]: r for r in w["invokes"]}
    assert sorted(calls) == ["n1", "n2", "n3"]
    assert {n: (r["ok"], r["mode"], r["ran_on"]) for n, r in calls.items() if n != "n3"} == {
        "n1": (True, "local", "n1"), "n2": (True, "local", "n2")}
    assert calls["n3"]["ok"] and calls["n3"]["mode"] == "forwarded" and calls["n3"]["ran_on"] in ("n1", "n2")
    assert all(r["output"] == "hello from wasm" and r["calls"] == 5 for r in calls.values()), calls
    assert all(re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]", r["traceparent"]) for r in calls.values())
    # A replicated route, then POST /hello/demo through every node's HTTP ingress: 200 and the module's answer.
    http = {r["via"]: r for r in w["http"]}
    assert sorted(http) == ["n1", "n2", "n3"]
    assert all(r["status"] == 200 and r["body"] == "hello from wasm" for r in http.values()), http
    assert all(re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]", r["traceparent"]) and r["request_id"] for r in http.values())
    assert len({r["http"] for r in http.values()}) == 3
    # n2 (the host that is not the seed) was killed; its replica moved to n3, the only other node.
    assert (w["failover"]["from"], w["failover"]["to"]) == ("n2", "n3") and s["figures"]["failover_ms"] > 0
    after = {r["from"]: (r["ok"], r["mode"]) for r in w["invokes_after_failover"]}
    assert after == {"n1": (True, "local"), "n3": (True, "local")}
    # Rolled forward to 1.1.0 and back to 1.0.0, which both hosts still held warm: each switched.
    rb = w["rollback"]
    assert (rb["from"], rb["to"], rb["hosts"]) == ("1.1.0", "1.0.0", ["n1", "n3"])
    assert sorted(rb["switch_ms"]) == ["n1", "n3"] and all(ms >= 0 for ms in rb["switch_ms"].values())

    # n3 left gracefully: exit 0, shown as left by the remaining node (the seed).
    assert s["leave"]["exit_code"] == 0
    assert list(s["leave"]["seen_left_s"]) == ["n1"] and s["leave"]["seen_left_s"]["n1"] > 0

    # The seed's final view: one row per node, with the ids, loopback addresses and PIDs.
    rows = {m["name"]: m for m in s["members"]}
    assert {n: r["status"] for n, r in rows.items()} == {"n1": "alive", "n2": "dead", "n3": "left"}
    assert sorted(r["pid"] for r in rows.values()) == sorted(s["pids"])
    for r in rows.values():
        assert re.fullmatch(r"[0-9a-f]{16}", r["id"]) and re.fullmatch(r"127\.0\.0\.1:\d+", r["addr"]), r
        assert r["addr"] != "127.0.0.1:0"
    assert len({r["id"] for r in rows.values()}) == 3
    assert rows["n1"]["rtt_ms"] == 0.0


def test_ctrl_c_in_the_middle_stops_every_daemon_and_removes_the_temp_dir(procs: ProcessGroup, tmp_path: Path) -> None:
    env = _demo_env(tmp_path)
    proc = procs.start([sys.executable, "-m", "mesh.cli", "demo", "--nodes", "3"], name="demo", env=env)
    # Interrupt while the demo waits for the survivors to declare the killed node dead (>= 1 s).
    killed = int(proc.wait_for_line(r"SIGKILL n2 \(pid (\d+)\)", timeout=60).group(1))
    pids = [int(p) for p in re.findall(r"up in [\d.]+ s: pid (\d+)", proc.stdout())]
    assert len(pids) == 3 and killed in pids
    assert all(pid_alive(p) for p in pids if p != killed), "the survivors run when Ctrl-C comes"
    os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends to the demo (its daemons are in their own sessions)
    code = proc.popen.wait(30)
    leftovers = _reap_leftovers(pids)
    assert code == 130, proc.stderr()
    assert leftovers == [], f"daemons still running after Ctrl-C: {leftovers}"
    assert "interrupted: stopped 3 daemon(s)" in proc.stdout()
    assert list((tmp_path / "tmp").iterdir()) == [], "the demo left its temp dir behind"


def test_demo_flags() -> None:
    parser = build_parser()
    args = parser.parse_args(["demo"])
    # The daemon's default profile (docs/DAEMON.md, "Profiles"): edge.
    assert (args.nodes, args.profile, args.json, args.keep) == (5, "edge", False, False)
    for bad in (["demo", "--nodes", "2"], ["demo", "--nodes", "21"], ["demo", "--nodes", "x"], ["demo", "--profile", "fast"]):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(bad)
        assert exc.value.code == 2, bad
    # `wasmatrix sim demo` is the simulated one; `demo` is no longer a sim subcommand.
    args = parser.parse_args(["sim", "demo"])
    assert args.scenario == "demo"
