"""The Serf comparison harness (bench/serf_harness.py, bench/wasmatrix_harness.py): parsing, timing, cleanup.

No timed asserts: the figures are printed by bench/bench_serf.py; these tests check that the harness
reads member listings as the formats define them, times "until EVERY other agent reports it failed",
counts false positives, and leaves no process behind.
"""

from __future__ import annotations

import http.client
import json
import sys
from pathlib import Path

import pytest

from bench.serf_harness import (
    HarnessError, LossRelays, MembersOutputError, SerfCluster, parse_serf_members, read_cpu_seconds,
    read_rss_kib, serf_binary, time_detection, wait_converged, watch_false_positives,
)
from bench.wasmatrix_harness import WasmatrixCluster, daemon_available, parse_members_json, wasmatrix_detection
from tests.harness.procs import ProcessGroup, pid_alive

# Captured from `serf members -rpc-addr=... -format=json` (Serf 0.8.2, Debian bookworm) after s1
# was killed with SIGKILL and its failure detected.
SERF_SAMPLE = """{
  "members": [
    {
      "name": "s0",
      "addr": "127.0.0.1:17946",
      "port": 17946,
      "tags": {},
      "status": "alive",
      "protocol": {
        "max": 5,
        "min": 2,
        "version": 5
      }
    },
    {
      "name": "s1",
      "addr": "127.0.0.1:17947",
      "port": 17947,
      "tags": {},
      "status": "failed",
      "protocol": {
        "max": 5,
        "min": 2,
        "version": 5
      }
    }
  ]
}
"""


def test_serf_members_json_sample_parses_to_name_status() -> None:
    assert parse_serf_members(SERF_SAMPLE) == {"s0": "alive", "s1": "failed"}
    assert parse_serf_members(SERF_SAMPLE.encode()) == {"s0": "alive", "s1": "failed"}


@pytest.mark.parametrize("text, why", [
    ("Error connecting to Serf agent: dial tcp 127.0.0.1:1: connect: connection refused", "not JSON"),
    ('[{"name": "s0", "status": "alive"}]', "'members' list"),
    ('{"members": {"s0": "alive"}}', "'members' list"),
    ('{"members": [{"name": "s0"}]}', "string name and status"),
    ('{"members": [{"name": 7, "status": "alive"}]}', "string name and status"),
    ('{"members": [{"name": "s0", "status": "dead"}]}', "unknown status 'dead'"),
    ('{"members": [{"name": "s0", "status": "alive"}, {"name": "s0", "status": "failed"}]}', "listed twice"),
    (b"\xff\xfe", "not JSON"),
])
def test_serf_members_malformed_output_is_a_clear_error(text: str | bytes, why: str) -> None:
    with pytest.raises(MembersOutputError, match=why):
        parse_serf_members(text)


def test_wasmatrix_members_json_follows_the_cli_contract() -> None:
    # Issue 10: `members --json` prints a list of {name, id, addr, status, incarnation, zone, labels, rtt_ms}.
    rows = [
        {"name": "w0", "id": "a" * 16, "addr": "127.0.0.1:7001", "status": "alive", "incarnation": 0,
         "zone": "", "labels": {}, "rtt_ms": 0.1},
        {"name": "w1", "id": "b" * 16, "addr": "127.0.0.1:7002", "status": "dead", "incarnation": 3,
         "zone": "eu/a/1", "labels": {"k": "v"}, "rtt_ms": None},
        {"name": "w2", "id": "c" * 16, "addr": "127.0.0.1:7003", "status": "suspect", "incarnation": 1,
         "zone": "", "labels": {}, "rtt_ms": 0.4},
        {"name": "w3", "id": "d" * 16, "addr": "127.0.0.1:7004", "status": "left", "incarnation": 2,
         "zone": "", "labels": {}, "rtt_ms": 0.3},
    ]
    assert parse_members_json(json.dumps(rows)) == {"w0": "alive", "w1": "dead", "w2": "suspect", "w3": "left"}
    with pytest.raises(MembersOutputError, match="JSON list"):
        parse_members_json(json.dumps({"members": rows}))
    with pytest.raises(MembersOutputError, match="unknown status 'failed'"):
        parse_members_json(json.dumps([dict(rows[0], status="failed")]))


class FakeClock:
    """Time that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class ScriptedCluster:
    """Three agents whose views are a function of the fake time since the kill."""

    kind = "fake"
    failed_status = "dead"

    def __init__(self, clock: FakeClock, s0_sees_at: float, s1_sees_at: float) -> None:
        self.clock = clock
        self.names = ["s0", "s1", "s2"]
        self.kills: list[tuple[int, float]] = []
        self.s0_sees_at, self.s1_sees_at = s0_sees_at, s1_sees_at

    def statuses(self, i: int) -> dict[str, str] | None:
        t = self.clock.now
        if not self.kills:
            return {"s0": "alive", "s1": "alive", "s2": "alive"}
        if i == 0:
            # s0 briefly suspects s1 (not a false positive), then sees s2 dead.
            return {"s0": "alive", "s1": "suspect" if t == 0.5 else "alive",
                    "s2": "dead" if t >= self.s0_sees_at else "alive"}
        if i == 1:
            if t == 1.5:
                return None  # one missed answer must not count as anything
            # s1 wrongly shows s0 dead for one round: a false positive.
            return {"s0": "dead" if t == 2.0 else "alive", "s1": "alive",
                    "s2": "dead" if t >= self.s1_sees_at else "suspect"}
        raise AssertionError(f"the killed agent {i} was polled")

    def kill(self, i: int) -> None:
        self.kills.append((i, self.clock.now))

    def pids(self) -> list[int]:
        return []


def test_detection_is_the_time_until_the_last_observer_reports_the_victim_failed() -> None:
    clock = FakeClock()
    cluster = ScriptedCluster(clock, s0_sees_at=1.0, s1_sees_at=2.5)
    det = time_detection(cluster, 2, timeout=10.0, interval=0.5, clock=clock, sleep=clock.sleep)
    assert cluster.kills == [(2, 0.0)]
    assert det.victim == "s2"
    assert det.per_observer == {"s0": 1.0, "s1": 2.5}
    assert det.seconds == 2.5
    assert det.false_positives == [(2.0, "s1", "s0")]
    assert det.suspect_sightings == 1
    assert det.rounds == 6  # rounds ending at 0, 0.5, 1.0, 1.5, 2.0, 2.5


def test_detection_that_never_completes_raises_after_the_bound() -> None:
    clock = FakeClock()
    cluster = ScriptedCluster(clock, s0_sees_at=1.0, s1_sees_at=float("inf"))
    with pytest.raises(HarnessError, match=r"\['s1'\] did not report s2 failed within 5.0s"):
        time_detection(cluster, 2, timeout=5.0, interval=0.5, clock=clock, sleep=clock.sleep)


def test_convergence_needs_every_agent_to_list_every_agent_alive() -> None:
    clock = FakeClock()

    class Joining:
        kind, failed_status, names = "fake", "dead", ["a", "b", "c"]

        def statuses(self, i: int) -> dict[str, str] | None:
            # c is known to everyone from t=1.0 on, and only a lists it before that.
            if clock.now >= 1.0 or i == 0:
                return {"a": "alive", "b": "alive", "c": "alive"}
            return {"a": "alive", "b": "alive"}

    assert wait_converged(Joining(), timeout=5.0, interval=0.25, clock=clock, sleep=clock.sleep) == 1.0
    clock.now = 0.0
    with pytest.raises(HarnessError, match="did not converge within 0.5s"):
        wait_converged(Joining(), timeout=0.5, interval=0.25, clock=clock, sleep=clock.sleep)


def test_proc_readers_take_vmrss_and_utime_plus_stime(tmp_path: Path) -> None:
    import os

    d = tmp_path / "4242"
    d.mkdir()
    (d / "status").write_text("Name:\tserf\nVmPeak:\t  900000 kB\nVmRSS:\t   10240 kB\nThreads:\t9\n")
    # proc(5): pid (comm) state ppid ... field 14 utime, 15 stime in clock ticks; comm may hold ") ".
    fields = ["S", "1"] + ["0"] * 9 + ["250", "50"] + ["0"] * 30
    (d / "stat").write_text(f"4242 (odd) name) {' '.join(fields)}\n")
    assert read_rss_kib(4242, tmp_path) == 10240
    assert read_cpu_seconds(4242, tmp_path) == pytest.approx(300 / os.sysconf("SC_CLK_TCK"))
    (d / "status").write_text("Name:\tkthreadd\n")
    with pytest.raises(HarnessError, match="no VmRSS"):
        read_rss_kib(4242, tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(serf_binary() is None, reason="serf is not installed (Debian package serf; .ci/run installs it)")
def test_three_serf_agents_detect_a_kill_and_leave_nothing_behind(tmp_path: Path) -> None:
    with ProcessGroup(tmp_path) as group:
        cluster = SerfCluster(group, 3, serf=serf_binary() or "serf").start()
        pids = [p.pid for p in cluster.procs]
        wait_converged(cluster, timeout=30.0)
        det = time_detection(cluster, 2, timeout=60.0)
        assert det.victim == "s2"
        assert sorted(det.per_observer) == ["s0", "s1"]
        assert det.false_positives == []
        assert not pid_alive(pids[2])
        assert cluster.pids() == pids[:2]
        for i in (0, 1):
            assert cluster.statuses(i) == {"s0": "alive", "s1": "alive", "s2": "failed"}
    assert [pid for pid in pids if pid_alive(pid)] == []


FAKE_DAEMON = (sys.executable, str(Path(__file__).parent / "fake_wasmatrix_daemon.py"))


@pytest.mark.slow
def test_wasmatrix_harness_runs_a_contract_speaking_daemon_end_to_end(tmp_path: Path) -> None:
    # A stand-in speaking the daemon's CLI contract checks the benchmark harness's wiring (mesh init,
    # node run flags, api.json, GET /v1/members, kill by PID, cleanup) without the real daemon's start-up.
    assert daemon_available(FAKE_DAEMON) == (True, "")
    with ProcessGroup(tmp_path) as group:
        cluster = WasmatrixCluster(group, 3, command=FAKE_DAEMON).start()
        pids = [p.pid for p in cluster.procs]
        assert (tmp_path / "bench.mesh").read_text() == "fake mesh file\n"
        wait_converged(cluster, timeout=20.0)
        det = time_detection(cluster, 2, timeout=20.0)
        assert cluster.via == "api"
        assert (det.victim, sorted(det.per_observer), det.false_positives) == ("w2", ["w0", "w1"], [])
        assert cluster.statuses(0) == {"w0": "alive", "w1": "alive", "w2": "dead"}
        assert cluster._statuses_cli(1) == {"w0": "alive", "w1": "alive", "w2": "dead"}
    assert [pid for pid in pids if pid_alive(pid)] == []


@pytest.mark.slow
def test_loss_relays_sit_in_front_of_every_agent_and_drop_datagrams(tmp_path: Path) -> None:
    relays = LossRelays(0.1, lifetime=60.0)
    try:
        with ProcessGroup(tmp_path) as group:
            cluster = WasmatrixCluster(group, 3, command=FAKE_DAEMON, insecure=True, loss=relays).start()
            wait_converged(cluster, timeout=20.0)
            fps, _ = watch_false_positives(cluster, 2.0)
            assert fps == []
            # Every member is known by its relay's address, not its bind address.
            relay_ports = sorted(f"127.0.0.1:{r.address[1]}" for r in relays.udp)
            host, port, token = cluster._api[0]
            conn = http.client.HTTPConnection(host, port, timeout=5)
            conn.request("GET", "/v1/members", headers={"Authorization": f"Bearer {token}"})
            rows = json.loads(conn.getresponse().read())
            conn.close()
            assert sorted(r["addr"] for r in rows) == relay_ports
        st = relays.stats()
        assert st["received"] > 100
        assert 0 < st["dropped"] < st["received"]
    finally:
        relays.stop()


@pytest.mark.slow
def test_wasmatrix_detection_takes_node_count_and_profile_and_counts_loss() -> None:
    run = wasmatrix_detection(3, "lan", command=FAKE_DAEMON, loss=0.1, soak=1.0, timeout=20.0)
    assert (run.detection.victim, sorted(run.detection.per_observer)) == ("w2", ["w0", "w1"])
    assert run.false_positives == []
    assert run.polled_via == "api"
    assert run.relay_stats is not None and 0 < run.relay_stats["dropped"] < run.relay_stats["received"]
