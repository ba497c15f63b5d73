"""Loopback clusters for the failure-detection benchmark: HashiCorp Serf agents, and the shared timing.

A *cluster* here is N agents on 127.0.0.1 that each answer "what status do you give every member?".
Two kinds implement it: :class:`SerfCluster` (Debian's ``serf``, polled with
``serf members -format=json``, a Go binary that answers in ~10 ms) and
``bench/wasmatrix_harness.py``'s ``WasmatrixCluster`` (polled over its control API).  The timing
(:func:`wait_converged`, :func:`time_detection`) and the idle sampling (:func:`sample_idle`) are
written once against that interface so both sides are measured by the same code in the same run.

Every process is started through ``tests/harness/procs.py``'s ProcessGroup: a new session per
agent, killed by the PID we started (never by name), and stopped on exit also when a step fails.
Every wait is bounded in time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol

from tests.harness.procs import Proc, ProcessGroup, free_port
from tests.harness.relay import Relays, UdpRelay

# Serf's member statuses (serf/serf.go MemberStatus.String); "failed" is what memberlist's dead becomes.
SERF_STATUSES = frozenset({"none", "alive", "leaving", "left", "failed"})
# Bounds on one `serf members` call: it answers in ~10 ms on loopback, a hung agent must not hang us.
SERF_CALL_TIMEOUT = 2.0
SERF_OUTPUT_LIMIT = 4 << 20


class HarnessError(RuntimeError):
    """A cluster could not be started, did not converge, or answered with something unreadable."""


class MembersOutputError(HarnessError):
    """A member listing (Serf JSON, our daemon's JSON) did not have the expected shape."""


Statuses = dict[str, str]  # member name -> status as the observer reports it


class Cluster(Protocol):
    """What the timing code needs from N running agents."""

    kind: str  # "serf" or "wasmatrix", for tables and messages
    failed_status: str  # the status an observer gives a member it has declared failed
    names: list[str]  # member names, index i is agent i

    def statuses(self, i: int) -> Statuses | None:
        """Agent i's view of every member, or None when it did not answer this time."""
        ...

    def kill(self, i: int) -> None:
        """SIGKILL agent i (by the PID we started) and reap it."""
        ...

    def pids(self) -> list[int]:
        """PIDs of the agents still running, index order."""
        ...


# ---- Serf -------------------------------------------------------------------------------------


def parse_serf_members(text: str | bytes) -> Statuses:
    """Parse ``serf members -format=json`` into ``{name: status}``; MembersOutputError if malformed."""
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MembersOutputError(f"serf members output is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("members"), list):
        raise MembersOutputError("serf members output must be an object with a 'members' list")
    return statuses_of(doc["members"], SERF_STATUSES, "serf member")


def statuses_of(entries: list[Any], allowed: Iterable[str], what: str) -> Statuses:
    """``{name: status}`` of member objects; MembersOutputError names ``what`` on a malformed entry."""
    allowed = frozenset(allowed)
    out: Statuses = {}
    for m in entries:
        if not isinstance(m, dict) or not isinstance(m.get("name"), str) or not isinstance(m.get("status"), str):
            raise MembersOutputError(f"{what} entry without string name and status: {m!r:.200}")
        if m["status"] not in allowed:
            raise MembersOutputError(f"{what} {m['name']!r} has unknown status {m['status']!r}")
        if m["name"] in out:
            raise MembersOutputError(f"{what} {m['name']!r} listed twice")
        out[m["name"]] = m["status"]
    return out


def serf_binary() -> str | None:
    """Path of the ``serf`` executable, or None."""
    return shutil.which("serf")


def ensure_serf(install: bool = True) -> str:
    """Return the ``serf`` path; when missing and we are root, ``apt-get install -y serf`` first."""
    path = serf_binary()
    if path:
        return path
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "serf"]
        if subprocess.run(cmd, env=env, capture_output=True, timeout=600).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
            subprocess.run(cmd, env=env, capture_output=True, timeout=600)
        path = serf_binary()
        if path:
            return path
    raise HarnessError("serf is not installed: run `apt-get install -y serf` (Debian package serf)")


def free_port_pair() -> int:
    """A loopback port free for both UDP and TCP a moment ago (Serf and our daemon use both)."""
    for _ in range(100):
        port = free_port("udp")
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise HarnessError("no loopback port free for both UDP and TCP after 100 tries")


@dataclass
class LossRelays:
    """One relay pair per agent so every datagram to it crosses one lossy hop (UDP; TCP unfaulted).

    Agent i binds ``binds[i]`` and advertises ``adverts[i]``, where a UdpRelay with ``loss`` and a
    fault-free TcpRelay listen and forward to the agent.  Peers learn and dial only advertised
    addresses (the seed is given by its advertised address too), so each datagram to agent i enters
    through its relay: ``loss`` applies once per datagram whoever sends it, and replies that go back
    to the relay's upstream socket cross it once more on the way down (also with ``loss``).
    """

    loss: float
    lifetime: float = 600.0
    relays: Relays = field(default_factory=Relays)
    udp: list[UdpRelay] = field(default_factory=list)

    def wire(self, binds: Sequence[int]) -> list[int]:
        """Start the relays in front of ``binds``; return the ports to advertise."""
        adverts = [free_port_pair() for _ in binds]
        for i, (bind, advert) in enumerate(zip(binds, adverts)):
            target = ("127.0.0.1", bind)
            self.udp.append(self.relays.udp(target, listen_port=advert, seed=i, loss=self.loss,
                                            max_lifetime=self.lifetime))
            self.relays.tcp(target, listen_port=advert, max_lifetime=self.lifetime)
        return adverts

    def stats(self) -> dict[str, int]:
        """Datagrams received and dropped by the UDP relays, both directions summed."""
        return {"received": sum(r.count("received") for r in self.udp),
                "dropped": sum(r.count("dropped") for r in self.udp)}

    def stop(self) -> None:
        """Stop every relay (bounded)."""
        self.relays.stop_all()


@dataclass
class SerfCluster:
    """N Serf agents on loopback, ``-profile=PROFILE``, all joined through agent 0."""

    group: ProcessGroup
    n: int
    profile: str = "lan"
    serf: str = "serf"
    loss: LossRelays | None = None  # set: agents advertise relay addresses (see LossRelays)
    kind: str = "serf"
    failed_status: str = "failed"
    names: list[str] = field(default_factory=list)
    bind_ports: list[int] = field(default_factory=list)
    rpc_ports: list[int] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)
    killed: set[int] = field(default_factory=set)

    def start(self, ready_timeout: float = 10.0) -> "SerfCluster":
        """Start agent 0, wait for its RPC, then the others with ``-join`` to agent 0."""
        if self.n < 2:
            raise HarnessError("a failure-detection cluster needs at least 2 agents")
        self.names = [f"s{i}" for i in range(self.n)]
        self.bind_ports = [free_port_pair() for _ in range(self.n)]
        self.rpc_ports = [free_port("tcp") for _ in range(self.n)]
        adverts = self.loss.wire(self.bind_ports) if self.loss else list(self.bind_ports)
        for i in range(self.n):
            args = [self.serf, "agent", f"-node={self.names[i]}", f"-bind=127.0.0.1:{self.bind_ports[i]}",
                    f"-rpc-addr=127.0.0.1:{self.rpc_ports[i]}", f"-profile={self.profile}", "-log-level=warn"]
            if adverts[i] != self.bind_ports[i]:
                args.append(f"-advertise=127.0.0.1:{adverts[i]}")
            if i > 0:
                args.append(f"-join=127.0.0.1:{adverts[0]}")
            proc = self.group.start(args, name=f"serf-{self.names[i]}")
            self.procs.append(proc)
            if i == 0:
                # -join exits at once when the seed does not answer yet: wait for agent 0's RPC.
                self._wait_rpc(0, ready_timeout)
        return self

    def _wait_rpc(self, i: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.statuses(i) is None:
            if self.procs[i].popen.poll() is not None:
                raise HarnessError(self.procs[i]._why("exited before its RPC answered"))
            if time.monotonic() >= deadline:
                raise HarnessError(self.procs[i]._why(f"RPC did not answer within {timeout}s"))
            time.sleep(0.02)

    def statuses(self, i: int) -> Statuses | None:
        """``serf members -format=json`` against agent i, parsed; None if it did not answer."""
        try:
            res = subprocess.run(
                [self.serf, "members", f"-rpc-addr=127.0.0.1:{self.rpc_ports[i]}", "-format=json"],
                capture_output=True, timeout=SERF_CALL_TIMEOUT, stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            return None
        if res.returncode != 0:
            return None
        return parse_serf_members(res.stdout[:SERF_OUTPUT_LIMIT])

    def kill(self, i: int) -> None:
        """SIGKILL agent i's process group (the PID we started) and reap it."""
        kill_proc(self.procs[i])
        self.killed.add(i)

    def pids(self) -> list[int]:
        """PIDs of the agents not killed by :meth:`kill`."""
        return [p.pid for i, p in enumerate(self.procs) if i not in self.killed]


def kill_proc(proc: Proc, timeout: float = 5.0) -> None:
    """SIGKILL the process group whose ID is ``proc.pid`` (new session: only ours) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        raise HarnessError(f"{proc.name} (pid {proc.pid}) survived SIGKILL for {timeout}s") from None


# ---- timing shared by both sides --------------------------------------------------------------


def poll_all(cluster: Cluster, observers: Sequence[int], pool: ThreadPoolExecutor) -> dict[int, Statuses | None]:
    """Ask every observer at once (one thread each) so a round costs one call, not N."""
    futures = {i: pool.submit(cluster.statuses, i) for i in observers}
    return {i: f.result() for i, f in futures.items()}


def wait_converged(cluster: Cluster, timeout: float = 30.0, interval: float = 0.05,
                   clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> float:
    """Wait until every agent lists every name as alive; return the seconds it took."""
    t0 = clock()
    n = len(cluster.names)
    want = dict.fromkeys(cluster.names, "alive")
    last: dict[int, Statuses | None] = {}
    with ThreadPoolExecutor(max_workers=n) as pool:
        while True:
            last = poll_all(cluster, range(n), pool)
            if all(v == want for v in last.values()):
                return clock() - t0
            if clock() - t0 >= timeout:
                raise HarnessError(f"{cluster.kind} cluster of {n} did not converge within {timeout}s; "
                                   f"last views: {last}")
            sleep(interval)


@dataclass(slots=True)
class Detection:
    """One kill -9: when each other agent first reported the victim failed, and what else it said."""

    kind: str
    victim: str
    seconds: float  # until the LAST observer reported the victim failed (the figure compared)
    per_observer: dict[str, float]  # observer name -> seconds until it reported the victim failed
    false_positives: list[tuple[float, str, str]]  # (seconds, observer, member) live member shown failed
    suspect_sightings: int  # observations of a live member as "suspect" (not a false positive by itself)
    rounds: int
    round_seconds: float  # median duration of one polling round: the resolution of every figure


def time_detection(cluster: Cluster, victim: int, timeout: float = 60.0, interval: float = 0.02,
                   clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> Detection:
    """SIGKILL agent ``victim``; poll every other agent until all report it failed.

    The time stamp of an observer's detection is the end of the polling round that first showed
    it (an upper bound, late by at most one round); the same code measures both kinds.
    """
    n = len(cluster.names)
    vname = cluster.names[victim]
    observers = [i for i in range(n) if i != victim]
    live = {cluster.names[i] for i in observers}
    seen: dict[str, float] = {}
    false_pos: list[tuple[float, str, str]] = []
    suspects = 0
    durations: list[float] = []
    with ThreadPoolExecutor(max_workers=len(observers)) as pool:
        t0 = clock()
        cluster.kill(victim)
        while True:
            r0 = clock()
            # Every observer, every round, also after it saw the victim fail: false positives count until the end.
            views = poll_all(cluster, observers, pool)
            t = clock()
            durations.append(t - r0)
            for i, view in views.items():
                if view is None:
                    continue
                oname = cluster.names[i]
                for member, status in sorted(view.items()):
                    if member in live and status == cluster.failed_status:
                        false_pos.append((t - t0, oname, member))
                    elif member in live and status == "suspect":
                        suspects += 1
                if view.get(vname) == cluster.failed_status and oname not in seen:
                    seen[oname] = t - t0
            if len(seen) == len(observers):
                break
            if t - t0 >= timeout:
                missing = sorted(live - set(seen))
                raise HarnessError(f"{cluster.kind}: {missing} did not report {vname} failed within {timeout}s")
            sleep(interval)
    durations.sort()
    return Detection(cluster.kind, vname, max(seen.values()), dict(sorted(seen.items())), false_pos,
                     suspects, len(durations), durations[len(durations) // 2])


def watch_false_positives(cluster: Cluster, seconds: float, interval: float = 0.2,
                          clock: Callable[[], float] = time.monotonic,
                          sleep: Callable[[float], None] = time.sleep) -> tuple[list[tuple[float, str, str]], int]:
    """Poll every agent for ``seconds`` while nobody fails: (live members shown failed, suspect sightings)."""
    n = len(cluster.names)
    names = set(cluster.names)
    false_pos: list[tuple[float, str, str]] = []
    suspects = 0
    with ThreadPoolExecutor(max_workers=n) as pool:
        t0 = clock()
        while clock() - t0 < seconds:
            views = poll_all(cluster, range(n), pool)
            t = clock() - t0
            for i, view in sorted(views.items()):
                for member, status in sorted((view or {}).items()):
                    if member in names and status == cluster.failed_status:
                        false_pos.append((t, cluster.names[i], member))
                    elif member in names and status == "suspect":
                        suspects += 1
            sleep(interval)
    return false_pos, suspects


# ---- one measured run, any kind ---------------------------------------------------------------

MakeCluster = Callable[[ProcessGroup, "LossRelays | None"], Cluster]  # returns a STARTED cluster


@contextmanager
def cluster_session(make: MakeCluster, loss: float = 0.0, lifetime: float = 600.0,
                    prefix: str = "bench-") -> Iterator[tuple[Cluster, LossRelays | None]]:
    """A started cluster; every process it made (by PID), its relays and its temp dir are gone on exit."""
    relays = LossRelays(loss, lifetime=lifetime) if loss > 0 else None
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        with ProcessGroup(workdir) as group:
            yield make(group, relays), relays
    finally:
        if relays is not None:
            relays.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass(slots=True)
class DetectionRun:
    """A fresh cluster's run: convergence, the soak under loss, and the timed kill."""

    detection: Detection
    converged_seconds: float
    soak_false_positives: list[tuple[float, str, str]]
    soak_suspect_sightings: int
    relay_stats: dict[str, int] | None
    polled_via: str  # "serf-cli", "api" or "cli"

    @property
    def false_positives(self) -> list[tuple[float, str, str]]:
        """Live members shown failed, during the soak and during the detection."""
        return self.soak_false_positives + self.detection.false_positives


def run_detection(make: MakeCluster, n: int, *, loss: float = 0.0, soak: float = 0.0, victim: int | None = None,
                  timeout: float = 60.0, interval: float = 0.02) -> DetectionRun:
    """Start a cluster with ``make``, wait for convergence, watch ``soak`` s, kill ``victim`` (default the last)."""
    with cluster_session(make, loss, lifetime=soak + 3 * timeout + 120) as (cluster, relays):
        if len(cluster.names) != n:
            raise HarnessError(f"asked for {n} agents, the cluster has {len(cluster.names)}")
        conv = wait_converged(cluster, timeout=timeout)
        soak_fp: list[tuple[float, str, str]] = []
        soak_sus = 0
        if soak > 0:
            soak_fp, soak_sus = watch_false_positives(cluster, soak)
        det = time_detection(cluster, n - 1 if victim is None else victim, timeout=timeout, interval=interval)
        return DetectionRun(det, conv, soak_fp, soak_sus, relays.stats() if relays else None,
                            getattr(cluster, "via", "serf-cli"))


def serf_detection(n: int, profile: str = "lan", *, serf: str = "serf", **kw: object) -> DetectionRun:
    """One Serf run of :func:`run_detection` (keywords: loss, soak, victim, timeout, interval)."""
    def make(group: ProcessGroup, relays: LossRelays | None) -> Cluster:
        return SerfCluster(group, n, profile=profile, serf=serf, loss=relays).start()
    return run_detection(make, n, **kw)  # type: ignore[arg-type]


# ---- idle resource use ------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def read_rss_kib(pid: int, proc_root: Path = Path("/proc")) -> int:
    """VmRSS of ``pid`` in KiB from /proc/PID/status."""
    for line in (proc_root / str(pid) / "status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise HarnessError(f"/proc/{pid}/status has no VmRSS line (kernel thread or zombie?)")


def read_cpu_seconds(pid: int, proc_root: Path = Path("/proc")) -> float:
    """utime + stime of ``pid`` (all its threads) in seconds, from /proc/PID/stat."""
    stat = (proc_root / str(pid) / "stat").read_text()
    # Fields after the parenthesised command name; utime and stime are fields 14 and 15 (1-based).
    rest = stat.rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / _CLK_TCK


@dataclass(slots=True, frozen=True)
class Usage:
    """One process over an idle window."""

    pid: int
    rss_max_mib: float
    cpu_percent: float  # of one core, averaged over the window


def sample_idle(pids: Sequence[int], seconds: float = 30.0, step: float = 1.0,
                clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], None] = time.sleep) -> list[Usage]:
    """Sample RSS every ``step`` and CPU over ``seconds`` for each pid (all at once, same window)."""
    rss: dict[int, int] = {p: read_rss_kib(p) for p in pids}
    cpu0 = {p: read_cpu_seconds(p) for p in pids}
    t0 = clock()
    while clock() - t0 < seconds:
        sleep(min(step, max(0.0, seconds - (clock() - t0))))
        for p in pids:
            rss[p] = max(rss[p], read_rss_kib(p))
    wall = clock() - t0
    return [Usage(p, rss[p] / 1024, 100.0 * (read_cpu_seconds(p) - cpu0[p]) / wall) for p in pids]

