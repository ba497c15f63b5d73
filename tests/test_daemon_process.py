"""Real `wasmatrix node run` processes on loopback (issue 10): join, detect a crash, rejoin, leave.

Every process is started through the ProcessGroup fixture and killed by its PID at the end, also
when a test fails. The daemons run the default profile (edge). Each wait is bounded; the bounds
come from the slower lan numbers (memberlist's DefaultLANConfig: probe interval 1 s, suspicion
4 x max(1, log10 n) probe intervals, at most 6x that without confirmations; edge halves them),
plus margin for process start-up on a loaded 2-core machine.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness.daemons import Mesh, mesh_file, run_cli, wait_until  # noqa: F401  (mesh_file: fixture)
from tests.harness.procs import ProcessGroup, procs  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow  # real daemon processes: run in CI and with WASMATRIX_SLOW=1 (docs/TESTING.md)

# lan: a crash is detected after one failed probe (<= 1 s + 0.5 s timeout) plus the suspicion
# timeout, 4 s at this size with confirmations, at most 6 x 4 = 24 s without any.
DETECT_BOUND = 30.0
JOIN_BOUND = 20.0


_cli = run_cli


def test_five_daemons_join_detect_a_crash_rejoin_and_leave(procs: ProcessGroup, tmp_path: Path, mesh_file: Path) -> None:
    mesh = Mesh(procs, tmp_path, mesh_file=mesh_file)
    seed = mesh.start("n0")
    for i in range(1, 5):
        mesh.start(f"n{i}", seeds=[seed.addr])
    names = [f"n{i}" for i in range(5)]
    wait_until(lambda: mesh.converged({n: "alive" for n in names}), JOIN_BOUND, "5 nodes see each other alive")

    # `members --json` through the CLI, as an operator runs it: the documented fields.
    r = _cli("members", "--data-dir", str(mesh.nodes["n3"].data_dir), "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert sorted(r_["name"] for r_ in rows) == names
    assert set(rows[0]) == {"name", "id", "addr", "status", "incarnation", "zone", "labels", "rtt_ms"}
    ids = {r_["name"]: r_["id"] for r_ in rows}
    assert all(len(i) == 16 for i in ids.values()) and len(set(ids.values())) == 5

    # SIGKILL n2: every other node marks it dead.
    inc_before = next(r_["incarnation"] for r_ in rows if r_["name"] == "n2")
    mesh.kill("n2")
    others = [mesh.nodes[n] for n in names if n != "n2"]
    took = wait_until(lambda: all(n.view().get("n2") == "dead" for n in others), DETECT_BOUND, "n2 marked dead by all")
    assert all(v == "alive" for n in others for k, v in n.view().items() if k != "n2"), "no false positive"
    print(f"crash detected by all 4 survivors in {took:.2f} s")

    # Restart n2 on the same data dir: same id, higher incarnation, alive everywhere again.
    mesh.start("n2", seeds=[seed.addr])
    wait_until(lambda: mesh.converged({n: "alive" for n in names}), JOIN_BOUND, "n2 rejoined")
    rows = mesh.nodes["n0"].members()
    n2 = next(r_ for r_ in rows if r_["name"] == "n2")
    assert n2["id"] == ids["n2"]
    assert n2["incarnation"] > inc_before

    # SIGTERM n4: a graceful leave, shown as `left` (never `dead`), exit code 0 within a few seconds.
    t0 = time.monotonic()
    assert mesh.kill("n4", signal.SIGTERM, timeout=10) == 0
    assert time.monotonic() - t0 < 5
    rest = [mesh.nodes[n] for n in ("n0", "n1", "n2", "n3")]
    wait_until(lambda: all(n.view().get("n4") == "left" for n in rest), 20, "n4 shown as left")
    assert not (mesh.nodes["n4"].data_dir / "api.json").exists()


def test_a_second_process_on_the_same_data_dir_is_refused(procs: ProcessGroup, tmp_path: Path) -> None:
    mesh = Mesh(procs, tmp_path)
    a = mesh.start("a")
    r = _cli("node", "run", "--data-dir", str(a.data_dir), "--bind", "127.0.0.1:0", "--insecure")
    assert r.returncode == 1
    assert f"in use by process {a.proc.pid}" in r.stderr


def test_restart_keeps_identity_and_rejoins_known_members_with_every_seed_down(
    procs: ProcessGroup, tmp_path: Path, mesh_file: Path
) -> None:
    mesh = Mesh(procs, tmp_path, mesh_file=mesh_file)
    seed = mesh.start("s")
    a = mesh.start("a", seeds=[seed.addr])
    b = mesh.start("b", seeds=[seed.addr])
    wait_until(lambda: mesh.converged({"s": "alive", "a": "alive", "b": "alive"}), JOIN_BOUND, "3 nodes joined")
    a_id = a.status()["id"]
    wait_until(lambda: (a.data_dir / "members.json").exists()
               and len(json.loads((a.data_dir / "members.json").read_text())["members"]) == 2, 15,
               "a's membership snapshot lists both peers")
    mesh.kill("s")  # the only seed is gone for good
    assert mesh.kill("a", signal.SIGTERM) == 0
    mesh.start("a", seeds=[seed.addr])  # the seed is dead; the snapshot still knows b
    assert a.status()["id"] == a_id
    wait_until(lambda: a.view().get("b") == "alive" and b.view().get("a") == "alive", JOIN_BOUND,
               "a rejoined through b from its snapshot")


def test_bad_flags_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mesh.cli import main

    cases = [
        (["--data-dir", str(tmp_path / "x"), "--bind", "127.0.0.1:7946"], "mesh-secret"),
        (["--data-dir", str(tmp_path / "x"), "--bind", "nonsense", "--insecure"], "--bind"),
        (["--data-dir", str(tmp_path / "x"), "--bind", "127.0.0.1:0", "--insecure", "--profile", "fast"], "--profile"),
        (["--data-dir", str(tmp_path / "x"), "--bind", "127.0.0.1:0", "--insecure", "--geo", "91,0"], "--geo"),
        (["--data-dir", str(tmp_path / "x"), "--bind", "0.0.0.0:7946", "--insecure"], "--advertise"),
        (["--data-dir", str(tmp_path / "x"), "--bind", "127.0.0.1:0", "--insecure", "--config", str(tmp_path / "no.toml")], "--config"),
        (["--data-dir", str(tmp_path / "x"), "--bind", "127.0.0.1:0", "--insecure", "--label", "novalue"], "--label"),
    ]
    for args, needle in cases:
        assert main(["node", "run", *args]) == 2, args
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, (args, err)
    (tmp_path / "bad.toml").write_text('bind = "127.0.0.1:0"\ninsecure = true\nprofile = 7\n')
    assert main(["node", "run", "--data-dir", str(tmp_path / "x"), "--config", str(tmp_path / "bad.toml")]) == 2
    err = capsys.readouterr().err
    assert "profile (in" in err and "bad.toml" in err, err
    assert main(["members", "--data-dir", str(tmp_path / "nothing-runs-here")]) == 2
    assert "api.json" in capsys.readouterr().err


def test_every_log_line_a_request_causes_carries_its_request_id(procs: ProcessGroup, tmp_path: Path) -> None:
    import http.client

    mesh = Mesh(procs, tmp_path)
    a = mesh.start("a")
    info = json.loads((a.data_dir / "api.json").read_text())
    host, port = info["addr"].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("POST", "/v1/meta", body=json.dumps({"set": {"rack": "r7"}}),
                 headers={"Authorization": f"Bearer {info['token']}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    rid = resp.getheader("x-request-id")
    assert rid and len(rid) == 16
    wait_until(lambda: '"api_request"' in a.proc.stderr(), 5, "the request was logged")
    lines = [json.loads(line) for line in a.proc.stderr().splitlines() if line.startswith("{")]
    caused = [entry for entry in lines if entry.get("request_id") == rid]
    assert {e["event"] for e in caused} >= {"member_update", "api_request"}, caused
    assert all(e["node_id"] == a.status()["id"] for e in lines)
    # Lines no request caused (start-up, gossip) carry none.
    assert not any("request_id" in e for e in lines if e["event"] in ("node_started", "member_join"))


def test_flags_override_the_toml_config_file(tmp_path: Path) -> None:
    from mesh.daemon.config import load_config

    toml = tmp_path / "node.toml"
    toml.write_text(
        'data_dir = "%s"\nbind = "127.0.0.1:7000"\nseed = ["127.0.0.1:7001", "127.0.0.1:7002"]\ninsecure = true\n'
        'name = "from-file"\nzone = "eu/berlin/truck-7"\nlabel = ["fleet=north"]\nprofile = "wan"\ngeo = "52.5,13.4"\n'
        % (tmp_path / "d")
    )
    cfg = load_config({"config": str(toml), "profile": "lan", "name": "from-flag", "seed": None, "label": None})
    assert (cfg.profile, cfg.name) == ("lan", "from-flag")  # flags win
    assert cfg.seeds == ("127.0.0.1:7001", "127.0.0.1:7002") and cfg.bind == ("127.0.0.1", 7000)  # the file fills the rest
    assert cfg.labels == (("fleet", "north"),) and cfg.geo == (52.5, 13.4) and cfg.zone == "eu/berlin/truck-7"
    meta = cfg.meta()
    assert (meta.name, meta.fault_domain, meta.label("fleet")) == ("from-flag", "eu/berlin/truck-7", "north")
    cfg = load_config({"config": str(toml), "seed": ["127.0.0.1:9"]})
    assert cfg.seeds == ("127.0.0.1:9",)


def test_join_meta_set_and_leave_through_the_cli(procs: ProcessGroup, tmp_path: Path) -> None:
    mesh = Mesh(procs, tmp_path)
    a, b = mesh.start("a"), mesh.start("b")  # no seeds: each alone
    assert a.view() == {"a": "alive"} and b.view() == {"b": "alive"}
    r = _cli("join", "--data-dir", str(b.data_dir), a.addr, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["joined"] is True
    wait_until(lambda: a.view() == b.view() == {"a": "alive", "b": "alive"}, JOIN_BOUND, "a and b joined")
    r = _cli("meta", "set", "--data-dir", str(b.data_dir), "rack=r7", "fleet=north")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: next(m for m in a.members() if m["name"] == "b")["labels"] == {"rack": "r7", "fleet": "north"},
               10, "b's labels reached a")
    r = _cli("meta", "set", "--data-dir", str(b.data_dir), "rack=")  # k= removes k
    assert r.returncode == 0, r.stderr
    wait_until(lambda: next(m for m in a.members() if m["name"] == "b")["labels"] == {"fleet": "north"}, 10, "rack removed")
    assert _cli("meta", "set", "--data-dir", str(b.data_dir), "novalue").returncode == 2
    r = _cli("leave", "--data-dir", str(b.data_dir))
    assert r.returncode == 0, r.stderr
    assert b.proc is not None and b.proc.popen.wait(10) == 0
    wait_until(lambda: a.view().get("b") == "left", 10, "b shown as left on a")
    r = _cli("join", "--data-dir", str(a.data_dir), "127.0.0.1:1")  # nobody there
    assert r.returncode == 1 and "no answer" in r.stderr
