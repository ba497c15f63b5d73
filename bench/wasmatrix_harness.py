"""Our daemon (``wasmatrix node run``) as a loopback cluster for bench/bench_serf.py.

Coded against the command-line contract of issue 10:

    wasmatrix node run --data-dir DIR --bind 127.0.0.1:PORT [--advertise 127.0.0.1:PORT]
                       [--seed 127.0.0.1:PORT ...] [--mesh-secret FILE | --insecure]
                       [--name NAME] [--profile lan|wan|local|vehicle]
    wasmatrix mesh init --out FILE
    wasmatrix members --data-dir DIR --json   -> [{name, id, addr, status, incarnation, ...}, ...]

``DATA_DIR/api.json`` appearing means the node is ready.  Members are read from the control API
(``GET /v1/members`` with ``Authorization: Bearer TOKEN``, same JSON list) with http.client, because
starting ``wasmatrix members`` costs a Python start-up (~0.3 s) per poll; when the API does not
serve that path the cluster falls back to the CLI, and says so (``via``).

Loss: with ``loss`` set, every node advertises the address of its own relay pair
(``bench.serf_harness.LossRelays``, tests/harness/relay.py) with ``--advertise``, exactly as the
Serf side does with ``-advertise``, so both kinds see the same loss per datagram.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.serf_harness import (
    Cluster, DetectionRun, HarnessError, LossRelays, MembersOutputError, Statuses, free_port_pair, kill_proc, statuses_of,
    run_detection,
)
from tests.harness.procs import REPO_ROOT, Proc, ProcessGroup

MEMBER_STATUSES = frozenset({"alive", "suspect", "dead", "left"})
API_TIMEOUT = 2.0
API_BODY_LIMIT = 4 << 20
DEFAULT_COMMAND = (sys.executable, "-m", "mesh.cli")


def parse_members_json(text: str | bytes) -> Statuses:
    """Parse ``wasmatrix members --json`` (or ``GET /v1/members``) into ``{name: status}``."""
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MembersOutputError(f"members output is not JSON: {exc}") from None
    if not isinstance(doc, list):
        raise MembersOutputError("members output must be a JSON list of member objects")
    return statuses_of(doc, MEMBER_STATUSES, "member")


def daemon_available(command: tuple[str, ...] = DEFAULT_COMMAND) -> tuple[bool, str]:
    """Whether ``COMMAND node run --help`` works here, and why not when it does not."""
    try:
        res = subprocess.run([*command, "node", "run", "--help"], capture_output=True, timeout=30,
                             stdin=subprocess.DEVNULL, cwd=REPO_ROOT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{' '.join(command)} node run --help failed: {exc}"
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).decode(errors="replace").strip().splitlines()[-1:]
        return False, f"`{' '.join(command)} node run` is not available here ({' '.join(tail)})"
    return True, ""


class _NoMembersEndpoint(Exception):
    """The control API answered 404 for /v1/members."""


@dataclass
class WasmatrixCluster:
    """N ``wasmatrix node run`` daemons on loopback, joined through node 0 as the one seed."""

    group: ProcessGroup
    n: int
    profile: str | None = None  # None: the daemon's default profile (no --profile flag)
    insecure: bool = False  # False: one mesh file from `wasmatrix mesh init` for every node
    loss: LossRelays | None = None
    command: tuple[str, ...] = DEFAULT_COMMAND
    kind: str = "wasmatrix"
    failed_status: str = "dead"
    via: str = "api"  # "api" (GET /v1/members) or "cli" (wasmatrix members --json)
    names: list[str] = field(default_factory=list)
    data_dirs: list[Path] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)
    killed: set[int] = field(default_factory=set)
    _api: list[tuple[str, int, str] | None] = field(default_factory=list)

    def start(self, ready_timeout: float = 30.0) -> "WasmatrixCluster":
        """Start node 0, wait for its api.json, then the others seeded with node 0."""
        if self.n < 2:
            raise HarnessError("a failure-detection cluster needs at least 2 nodes")
        secret: list[str] = ["--insecure"]
        if not self.insecure:
            mesh = self.group.workdir / "bench.mesh"
            res = subprocess.run([*self.command, "mesh", "init", "--out", str(mesh)], capture_output=True,
                                 timeout=60, stdin=subprocess.DEVNULL, cwd=REPO_ROOT)
            if res.returncode != 0:
                raise HarnessError(f"wasmatrix mesh init failed: {res.stderr.decode(errors='replace')[-500:]}")
            secret = ["--mesh-secret", str(mesh)]
        self.names = [f"w{i}" for i in range(self.n)]
        binds = [free_port_pair() for _ in range(self.n)]
        adverts = self.loss.wire(binds) if self.loss else list(binds)
        self._api = [None] * self.n
        for i in range(self.n):
            d = self.group.workdir / f"data-{self.names[i]}"
            self.data_dirs.append(d)
            args = [*self.command, "node", "run", "--data-dir", str(d), "--bind", f"127.0.0.1:{binds[i]}",
                    "--name", self.names[i], *secret]
            if adverts[i] != binds[i]:
                args += ["--advertise", f"127.0.0.1:{adverts[i]}"]
            if i > 0:
                args += ["--seed", f"127.0.0.1:{adverts[0]}"]
            if self.profile is not None:
                args += ["--profile", self.profile]
            self.procs.append(self.group.start(args, name=f"wasmatrix-{self.names[i]}"))
            if i == 0:
                self._wait_api(0, ready_timeout)
        for i in range(1, self.n):
            self._wait_api(i, ready_timeout)
        return self

    def _wait_api(self, i: int, timeout: float) -> None:
        from mesh.datadir import API_FILE, ApiInfoError, read_api_info

        path = self.data_dirs[i] / API_FILE
        self.procs[i].wait_for_file(path, timeout)
        try:
            info = read_api_info(path)
        except ApiInfoError as exc:
            raise HarnessError(f"{self.names[i]}: {exc}") from None
        host, _, port = info.addr.rpartition(":")
        self._api[i] = (host.strip("[]"), int(port), info.token)

    def statuses(self, i: int) -> Statuses | None:
        """Node i's member list, from its control API (or the CLI after a fallback)."""
        if self.via == "api":
            try:
                return self._statuses_api(i)
            except _NoMembersEndpoint:
                self.via = "cli"  # the API has no /v1/members: every later poll uses the CLI
        return self._statuses_cli(i)

    def _statuses_api(self, i: int) -> Statuses | None:
        api = self._api[i]
        if api is None:
            return None
        host, port, token = api
        conn = http.client.HTTPConnection(host, port, timeout=API_TIMEOUT)
        try:
            conn.request("GET", "/v1/members", headers={"Authorization": f"Bearer {token}"})
            resp = conn.getresponse()
            body = resp.read(API_BODY_LIMIT)
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()
        if resp.status == 404:
            raise _NoMembersEndpoint
        if resp.status != 200:
            return None
        return parse_members_json(body)

    def _statuses_cli(self, i: int) -> Statuses | None:
        try:
            res = subprocess.run([*self.command, "members", "--data-dir", str(self.data_dirs[i]), "--json"],
                                 capture_output=True, timeout=10, stdin=subprocess.DEVNULL, cwd=REPO_ROOT)
        except subprocess.TimeoutExpired:
            return None
        if res.returncode != 0:
            return None
        return parse_members_json(res.stdout)

    def kill(self, i: int) -> None:
        """SIGKILL node i's process group (the PID we started) and reap it."""
        kill_proc(self.procs[i])
        self.killed.add(i)

    def pids(self) -> list[int]:
        """PIDs of the nodes not killed by :meth:`kill`."""
        return [p.pid for i, p in enumerate(self.procs) if i not in self.killed]


def wasmatrix_detection(n: int, profile: str | None = None, *, insecure: bool = False,
                        command: tuple[str, ...] = DEFAULT_COMMAND, **kw: object) -> DetectionRun:
    """One run of our daemon through :func:`run_detection` (keywords: loss, soak, victim, timeout, interval).

    ``profile`` None runs the daemon's default profile (no ``--profile`` flag).
    """
    def make(group: ProcessGroup, relays: LossRelays | None) -> Cluster:
        return WasmatrixCluster(group, n, profile=profile, insecure=insecure, loss=relays, command=command).start()
    return run_detection(make, n, **kw)  # type: ignore[arg-type]
