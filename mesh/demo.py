"""`wasmatrix demo`: a real mesh of local daemons on loopback running a workload through a crash.

The demo creates a fresh mesh file (:func:`mesh.meshfile.init_mesh`) in a temp dir, starts N
``wasmatrix node run`` processes (``sys.executable -m mesh.cli``) bound to ``127.0.0.1:0``: the
first is the seed, whose real address it reads from ``GET /v1/status``; the others join through it.
Once every node sees all N alive it SIGKILLs one node and polls every survivor's control API,
showing which node saw it ``suspect``, then ``dead``, and when; then it SIGTERMs another (a
graceful leave, shown as ``left``). It prints the seed's view of the mesh and the measured figures
(join time; detection time by every survivor: min/median/max).

Between the join and the leave it runs a workload the way a user would, with the same CLI
commands (run in-process, shown as ``$ wasmatrix ...``): keys are made and trusted before the
daemons start; ``greeter`` 1.0.0 (the bundled ``hello`` WASI command) is published and deployed as
``web`` with 2 replicas, a proximity preference for the seed and spread over regions; the demo
waits until two nodes claim running replicas in the placement document, invokes ``web`` from every
node (local on a host, forwarded over a Noise stream elsewhere), SIGKILLs the *other* host, and
measures from the daemons' own lifecycle events the time from the first death declaration to the
replacement running; then invokes again from every survivor. It publishes 1.1.0 (the bundled
``handler``, direct ABI), rolls the deployment forward, rolls it back and reports each host's
warm switch time.

Every process is started by this module and stopped by the PID it started (SIGTERM, then SIGKILL
after a bounded wait), also on Ctrl-C, SIGTERM or any error; the temp dir is removed unless
``--keep``. The daemons write their logs to ``ROOT/NAME.log``.

Times are measured by polling the API every :data:`POLL_INTERVAL` seconds, so each figure is late by
at most one poll sweep (a few ms per node on loopback).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from mesh.daemon.api import ApiClient, ApiClientError
from mesh.daemon.config import DEFAULT_PROFILE
from mesh.datadir import API_FILE, DataDirError, read_api_info
from mesh.errors import MeshError
from mesh.membership.config import PROFILES, MembershipConfig
from runtime.bundled import example_path

MIN_NODES = 3
MAX_NODES = 20
DEFAULT_NODES = 5
POLL_INTERVAL = 0.05
START_TIMEOUT = 30.0  # a daemon process writes api.json (Python start-up on a loaded machine)
JOIN_TIMEOUT = 30.0  # every node sees every other alive
LEAVE_TIMEOUT = 10.0  # a SIGTERMed node exits and every remaining node shows it left
STOP_GRACE = 5.0  # SIGTERM at cleanup, then SIGKILL
PLACE_TIMEOUT = 30.0  # a deployment's replicas fetched, compiled and running (a compile on a loaded machine)
FAILOVER_TIMEOUT = 20.0  # after every survivor declared the host dead, its replacement runs
INVOKES_PER_NODE = 5
DEPLOYMENT = "web"
HTTP_PATH = "/hello/*"  # the demo's route: POST /hello/... on any node's ingress runs the deployment
MODULE = "greeter"
# Zones ("region/site/unit") and a kind label per node, cycled: two regions so spread can separate.
ZONES = ("eu/berlin/bus-1", "us/austin/truck-7", "eu/paris/depot-1", "us/austin/truck-9", "eu/berlin/bus-2")


class DemoError(Exception):
    """The demo could not do a step (a daemon died, a wait timed out)."""


def detection_bound(cfg: MembershipConfig, n: int) -> float:
    """Seconds within which every survivor must mark a SIGKILLed member dead, in a healthy mesh of ``n``.

    The first probe of the dead member comes within one round over the other members
    (``(n - 1)`` probe intervals) and fails after ``probe_timeout``; the suspicion then times out
    after at most the Lifeguard maximum (``suspicion_max_timeout_mult`` x the minimum, reached only
    without any confirmation), and the ``dead`` gossip reaches everyone within a few gossip
    intervals (1 s of margin covers it and process scheduling).
    """
    _, hi = cfg.suspicion_timeouts(n)
    return round((n - 1) * cfg.probe_interval + cfg.probe_timeout + hi + 1.0, 3)


@dataclass
class DemoNode:
    """One daemon the demo started."""

    name: str
    data_dir: Path
    log_path: Path
    popen: subprocess.Popen[bytes]
    started: float
    id: str = ""
    addr: str = ""
    http: str = ""  # the node's HTTP ingress address (every demo node serves --http on a free port)
    api: ApiClient | None = None
    ready_s: float | None = None
    exit_code: int | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def view(self) -> dict[str, dict[str, Any]]:
        """{display name: member row} as this node sees the mesh (ApiClientError when unreachable)."""
        assert self.api is not None
        return {row["name"]: row for row in self.api.get("/v1/members")}

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C / SIGTERM / SIGHUP while the daemons are being stopped, then deliver them."""
    got: list[int] = []
    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        try:
            previous[sig] = signal.signal(sig, lambda signum, frame: got.append(signum))
        except ValueError:  # not the main thread: no handlers to swap
            break
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if got:
            raise KeyboardInterrupt


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3), "max": round(max(values), 3)}


@dataclass
class Demo:
    """Run the demo once: ``summary = Demo(...).run()``; processes and temp dir cleaned up in ``run``."""

    nodes: int = DEFAULT_NODES
    profile: str = DEFAULT_PROFILE
    keep: bool = False
    say: Callable[[str], None] = lambda line: None
    status: Callable[[str], None] = lambda line: None
    root: Path | None = None
    started: list[DemoNode] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ processes

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The daemons run the very code this process runs, wherever it was imported from.
        pkg_parent = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join([pkg_parent] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env.pop("WASMATRIX_DATA_DIR", None)
        env.pop("WASMATRIX_DEBUG_PACKETS", None)
        return env

    def _spawn(self, name: str, seed: str | None) -> DemoNode:
        assert self.root is not None
        data_dir = self.root / name
        log_path = self.root / f"{name}.log"
        zone = self.zone_of(name)
        args = [sys.executable, "-m", "mesh.cli", "node", "run", "--data-dir", str(data_dir),
                "--bind", "127.0.0.1:0", "--mesh-secret", str(self.root / "mesh.json"),
                "--name", name, "--profile", self.profile, "--zone", zone,
                "--label", f"kind={zone.split('/')[-1].split('-')[0]}", "--http", "127.0.0.1:0"]
        if seed:
            args += ["--seed", seed]
        with open(log_path, "wb") as log:
            # A new session: Ctrl-C in the terminal reaches only the demo, which stops its daemons itself.
            popen = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=str(self.root),
                                     env=self._child_env(), start_new_session=True)
        node = DemoNode(name, data_dir, log_path, popen, time.monotonic())
        self.started.append(node)
        return node

    def zone_of(self, name: str) -> str:
        i = int(name[1:]) - 1
        z = ZONES[i % len(ZONES)]
        return z if i < len(ZONES) else f"{z}-{i // len(ZONES)}"

    def cli(self, *args: str) -> Any:
        """Run ``wasmatrix ARGS --json`` in this process (as a user would in a shell); its JSON answer."""
        from mesh.cli import main as cli_main

        self.say("[dim]$ wasmatrix " + " ".join(a if " " not in a else repr(a) for a in args) + "[/]")
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli_main([*args, "--json"])
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 2
        if code != 0:
            raise DemoError(f"wasmatrix {' '.join(args)} exited with {code}: {(err.getvalue() or out.getvalue()).strip()[-400:]}")
        text = out.getvalue().strip()
        try:
            return json.loads(text)
        except ValueError:
            pass
        try:
            return json.loads(text.splitlines()[-1])
        except (ValueError, IndexError):
            raise DemoError(f"wasmatrix {' '.join(args)} printed no JSON: {out.getvalue()[-200:]!r}") from None

    def _try_ready(self, node: DemoNode) -> bool:
        """True once the node's api.json exists and its status answers (reads id and addr)."""
        if not node.running():
            raise DemoError(f"{node.name} (pid {node.pid}) exited with {node.popen.returncode} before its API came up:\n"
                            f"{node.log_tail()}")
        if not (node.data_dir / API_FILE).exists():
            return False
        try:
            info = read_api_info(node.data_dir / API_FILE)
            api = ApiClient(info.addr, info.token, timeout=2.0)
            st = api.get("/v1/status")
        except (DataDirError, ApiClientError):
            return False  # written a moment ago, or not answering yet
        node.api, node.id, node.addr, node.http = api, st["id"], st["addr"], st.get("http") or ""
        node.ready_s = time.monotonic() - node.started
        return True

    def _wait(self, what: str, timeout: float, step: Callable[[], bool]) -> float:
        """Call ``step`` every poll until it returns True; the seconds it took; DemoError on timeout."""
        t0 = time.monotonic()
        while not step():
            if time.monotonic() - t0 > timeout:
                raise DemoError(f"{what}: not within {timeout:g} s")
            time.sleep(POLL_INTERVAL)
        return time.monotonic() - t0

    def stop_all(self) -> None:
        """SIGTERM every daemon still running (by the PID started), wait, SIGKILL what remains; reap all."""
        live = [n for n in self.started if n.running()]
        for n in live:
            try:
                n.popen.send_signal(signal.SIGTERM)  # Popen never signals a PID it has already reaped
            except OSError:
                pass
        deadline = time.monotonic() + STOP_GRACE
        for n in live:
            try:
                n.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                n.popen.kill()
        for n in self.started:
            try:
                n.popen.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
                pass

    # ------------------------------------------------------------------ the demo

    def run(self) -> dict[str, Any]:
        """Run every step; return the summary (``ok`` False with ``error`` when a step failed)."""
        if not MIN_NODES <= self.nodes <= MAX_NODES:
            raise ValueError(f"nodes must be in {MIN_NODES}..{MAX_NODES}")
        cfg = PROFILES[self.profile]
        t_start = time.monotonic()
        self.root = Path(tempfile.mkdtemp(prefix="wasmatrix-demo-"))
        names = [f"n{i}" for i in range(1, self.nodes + 1)]
        seed_name = names[0]
        self.summary = {
            "ok": False, "error": None, "nodes": self.nodes, "profile": self.profile,
            "seed": seed_name, "killed": None, "left": None,
            "detect_bound_s": detection_bound(cfg, self.nodes), "members": [], "detection": {}, "leave": {},
            "workload": {}, "figures": {}, "pids": [], "data_dir": str(self.root) if self.keep else None,
        }
        try:
            self._run(names, seed_name, cfg)
            self.summary["ok"] = True
        except DemoError as exc:
            self.summary["error"] = str(exc)
        except (OSError, MeshError) as exc:  # the temp dir, the mesh file, spawning a process
            self.summary["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            self.summary["pids"] = [n.pid for n in self.started]
            with _signals_deferred():  # a Ctrl-C now is delivered once every daemon is gone and the dir removed
                self.stop_all()
                self.summary["figures"]["total_s"] = round(time.monotonic() - t_start, 3)
                if not self.keep:
                    shutil.rmtree(self.root, ignore_errors=True)
        return self.summary

    def _keys(self, names: list[str]) -> None:
        """A publisher and an operator key, trusted by every data dir before its daemon starts."""
        assert self.root is not None
        first = self.root / names[0]
        for role in ("publisher", "operator"):
            key = self.cli("keygen", "--role", role, "--out", str(self.root / f"{role}.key"), "--data-dir", str(first))
            self.say(f"  {role} key {key['key_id']} in {self.root / (role + '.key')}")
        for name in names[1:]:
            (self.root / name).mkdir(mode=0o700)
            shutil.copy(first / "trust.json", self.root / name / "trust.json")
        first.chmod(0o700)

    def _run(self, names: list[str], seed_name: str, cfg: MembershipConfig) -> None:
        from mesh.meshfile import init_mesh

        assert self.root is not None
        mesh, _ = init_mesh(self.root / "mesh.json", now_wall=time.time())
        self.say(f"mesh [bold]{mesh.mesh_id}[/]: a fresh secret in {self.root}/mesh.json; "
                 f"{self.nodes} daemons on 127.0.0.1, profile {self.profile}")
        self._keys(names)

        # 1. The seed, then everyone else through it.
        seed = self._spawn(seed_name, None)
        self.status(f"starting the seed {seed_name} (pid {seed.pid})")
        self._wait(f"{seed_name} API up", START_TIMEOUT, lambda: self._try_ready(seed))
        self.say(f"{seed_name} up in {seed.ready_s:.2f} s: pid {seed.pid}, addr {seed.addr}, id {seed.id} (the seed)")
        t_join = time.monotonic()
        joiners = [self._spawn(name, seed.addr) for name in names[1:]]
        pending = list(joiners)

        def all_up() -> bool:
            for n in list(pending):
                if self._try_ready(n):
                    pending.remove(n)
                    self.say(f"{n.name} up in {n.ready_s:.2f} s: pid {n.pid}, addr {n.addr}, id {n.id}")
            self.status(f"starting {len(pending)} more daemon(s), joining through {seed.addr}")
            return not pending

        self._wait("every daemon's API up", START_TIMEOUT, all_up)
        startup_s = time.monotonic() - t_join
        everyone = [seed] + joiners
        full: set[str] = set()

        def joined() -> bool:
            for n in everyone:
                if n.name in full:
                    continue
                try:
                    alive = sum(1 for r in n.view().values() if r["status"] == "alive")
                except ApiClientError:
                    continue
                if alive == self.nodes:
                    full.add(n.name)
                    self.say(f"{n.name} sees all {self.nodes} alive at +{time.monotonic() - t_join:.2f} s")
            self.status(f"joining: {len(full)}/{self.nodes} nodes see all {self.nodes} alive")
            return len(full) == self.nodes

        self._wait(f"every node sees all {self.nodes} alive", JOIN_TIMEOUT, joined)
        join_s = time.monotonic() - t_join
        self.summary["figures"].update(startup_s=round(startup_s, 3), join_s=round(join_s, 3))
        self.say(f"[bold green]mesh formed[/]: {self.nodes} nodes in {join_s:.2f} s from spawning the joiners "
                 f"(their APIs were up after {startup_s:.2f} s)")

        # 2. A workload: publish, deploy 2 replicas near the seed spread over regions, invoke from everywhere.
        seed_dir = str(seed.data_dir)
        self.cli("module", "publish", str(example_path("hello")), "--name", MODULE, "--version", "1.0.0",
                 "--key", str(self.root / "publisher.key"), "--data-dir", seed_dir)
        t_deploy = time.monotonic()
        dep = self.cli("deploy", DEPLOYMENT, "--module", MODULE, "--version", "^1.0.0", "--replicas", "2",
                       "--near-node", seed_name, "--spread", "region", "--key", str(self.root / "operator.key"),
                       "--data-dir", seed_dir)
        self.say(f"deployed [bold]{DEPLOYMENT}[/] = {MODULE} {dep['active_version']}: 2 replicas, near {seed_name}, "
                 f"spread over regions")
        hosts = self._wait_running(everyone, "1.0.0", 2)
        place_s = time.monotonic() - t_deploy
        self.summary["workload"]["hosts"] = sorted(hosts)
        self.summary["figures"]["placed_s"] = round(place_s, 3)
        self.say(f"[bold green]placed[/]: replicas running on {', '.join(f'{h} ({self.zone_of(h)})' for h in sorted(hosts))} "
                 f"{place_s:.2f} s after the deploy (blob fetched from a peer, verified, compiled, warmed)")
        rows = self._invoke_all(everyone, b"ping", "from every node")
        self.summary["workload"]["invokes"] = rows
        for mode in ("local", "forwarded"):
            self.summary["figures"][f"invoke_{mode}_ms"] = _stats([r["latency_ms"] for r in rows if r["mode"] == mode])
        self._http(everyone)

        # 3. SIGKILL the host that is not the seed: detection, then failover to a replacement.
        killed_name = next((h for h in sorted(hosts) if h != seed_name), sorted(hosts)[-1])
        self.summary["killed"] = killed_name
        killed = next(n for n in everyone if n.name == killed_name)
        survivors = [n for n in everyone if n is not killed]
        bound = self.summary["detect_bound_s"]
        detection: dict[str, dict[str, float | None]] = {n.name: {"suspect_s": None, "dead_s": None} for n in survivors}
        self.summary["detection"] = detection
        t_kill = time.monotonic()
        killed.popen.send_signal(signal.SIGKILL)
        killed.exit_code = killed.popen.wait(5.0)
        self.say(f"[bold red]SIGKILL[/] {killed_name} (pid {killed.pid}); every survivor must mark it dead "
                 f"within {bound:g} s ({self.profile} profile bound)")

        def detected() -> bool:
            for n in survivors:
                d = detection[n.name]
                if d["dead_s"] is not None:
                    continue
                try:
                    row = n.view().get(killed_name)
                except ApiClientError:
                    continue
                now = time.monotonic() - t_kill
                state = row["status"] if row else "absent"
                if state == "suspect" and d["suspect_s"] is None:
                    d["suspect_s"] = round(now, 3)
                    self.say(f"  +{now:6.2f} s  {n.name} sees {killed_name} [yellow]suspect[/]")
                if state == "dead":
                    d["dead_s"] = round(now, 3)
                    self.say(f"  +{now:6.2f} s  {n.name} sees {killed_name} [red]dead[/]")
                if not n.running():
                    raise DemoError(f"{n.name} (pid {n.pid}) exited with {n.popen.returncode}:\n{n.log_tail()}")
            done = sum(1 for d in detection.values() if d["dead_s"] is not None)
            self.status(f"waiting for the survivors to declare {killed_name} dead: {done}/{len(survivors)} "
                        f"(+{time.monotonic() - t_kill:.1f} s)")
            return done == len(survivors)

        self._wait(f"every survivor marks {killed_name} dead", bound, detected)
        dead_times = [d["dead_s"] for d in detection.values() if d["dead_s"] is not None]
        suspect_times = [d["suspect_s"] for d in detection.values() if d["suspect_s"] is not None]
        self.summary["figures"]["detection_s"] = _stats(dead_times)
        self.summary["figures"]["suspect_s"] = _stats(suspect_times)
        st = self.summary["figures"]["detection_s"]
        self.say(f"[bold green]crash detected[/] by all {len(survivors)} survivors: "
                 f"min {st['min']:.2f} s, median {st['median']:.2f} s, max {st['max']:.2f} s")
        self._failover(survivors, killed, hosts)
        self.summary["workload"]["invokes_after_failover"] = self._invoke_all(survivors, b"still there?", "after the failover")

        # 4. Roll forward to 1.1.0, then back: the previous version is still warm on every host.
        self._roll(survivors)

        # 5. SIGTERM another: a graceful leave, shown as left (never dead).
        leaver_name = next(n.name for n in reversed(survivors) if n.name != seed_name)
        self.summary["left"] = leaver_name
        leaver = next(n for n in everyone if n.name == leaver_name)
        remaining = [n for n in survivors if n is not leaver]
        leave: dict[str, float | None] = {n.name: None for n in remaining}
        self.summary["leave"] = {"seen_left_s": leave, "exit_code": None, "exit_s": None}
        t_leave = time.monotonic()
        leaver.popen.send_signal(signal.SIGTERM)
        self.say(f"[bold]SIGTERM[/] {leaver_name} (pid {leaver.pid}): a graceful leave")

        def left() -> bool:
            if leaver.exit_code is None and not leaver.running():
                leaver.exit_code = leaver.popen.returncode
                self.summary["leave"].update(exit_code=leaver.exit_code, exit_s=round(time.monotonic() - t_leave, 3))
                self.say(f"  +{time.monotonic() - t_leave:6.2f} s  {leaver_name} exited with {leaver.exit_code}")
            for n in remaining:
                if leave[n.name] is not None:
                    continue
                try:
                    row = n.view().get(leaver_name)
                except ApiClientError:
                    continue
                if row and row["status"] == "dead":
                    raise DemoError(f"{n.name} marked the leaving {leaver_name} dead, not left")
                if row and row["status"] == "left":
                    now = time.monotonic() - t_leave
                    leave[n.name] = round(now, 3)
                    self.say(f"  +{now:6.2f} s  {n.name} sees {leaver_name} [blue]left[/]")
            done = sum(1 for v in leave.values() if v is not None)
            self.status(f"waiting for {leaver_name} to leave: {done}/{len(remaining)} see it left")
            return done == len(remaining) and leaver.exit_code is not None

        self._wait(f"{leaver_name} exits and every remaining node shows it left", LEAVE_TIMEOUT, left)
        if leaver.exit_code != 0:
            raise DemoError(f"{leaver_name} exited with {leaver.exit_code} after SIGTERM, expected 0:\n{leaver.log_tail()}")
        self.summary["figures"]["leave_s"] = _stats([v for v in leave.values() if v is not None])

        # 6. The seed's view of the mesh.
        try:
            view = seed.view()
        except ApiClientError as exc:
            raise DemoError(f"the seed stopped answering: {exc}") from None
        pid_of = {n.name: n.pid for n in everyone}
        self.summary["members"] = [
            {"name": name, "id": row["id"], "addr": row["addr"], "pid": pid_of.get(name), "status": row["status"],
             "rtt_ms": row["rtt_ms"]}
            for name, row in sorted(view.items(), key=lambda kv: int(kv[0][1:]) if kv[0][1:].isdigit() else 0)
        ]
        if {m["name"]: m["status"] for m in self.summary["members"]}.get(killed_name) != "dead":
            raise DemoError(f"the seed no longer shows {killed_name} dead")


    # ------------------------------------------------------------------ workload steps

    def _running(self, node: DemoNode) -> list[dict[str, Any]]:
        """The placement document's rows for the demo deployment as ``node`` sees it."""
        assert node.api is not None
        items = node.api.get(f"/v1/placements?deployment={DEPLOYMENT}")
        items = items.get("deployments", items) if isinstance(items, dict) else items
        return [r for item in items if item["deployment"] == DEPLOYMENT for r in item["running"]]

    def _wait_running(self, nodes: list[DemoNode], version: str, count: int) -> set[str]:
        """Until every node in ``nodes`` sees ``count`` alive members claim ``version`` running; their names."""
        hosts: set[str] = set()

        def placed() -> bool:
            seen = []
            for n in nodes:
                try:
                    rows = self._running(n)
                except ApiClientError:
                    return False
                seen.append({r["name"] or r["node"] for r in rows
                             if r["state"] == "running" and r["version"] == version and r["member"] == "alive"})
            self.status(f"waiting for {count} replicas of {DEPLOYMENT} {version} to run: "
                        f"{len(seen[0]) if seen else 0}/{count} seen by {nodes[0].name}")
            if all(len(x) == count for x in seen) and all(x == seen[0] for x in seen):
                hosts.clear()
                hosts.update(seen[0])
                return True
            return False

        self._wait(f"{count} replicas of {DEPLOYMENT} {version} running as every node sees it", PLACE_TIMEOUT, placed)
        return hosts

    def _invoke(self, node: DemoNode, payload: bytes) -> dict[str, Any]:
        assert node.api is not None
        try:
            return node.api.post("/v1/invoke", {"deployment": DEPLOYMENT, "payload_b64": base64.b64encode(payload).decode(),
                                               "timeout_s": 10})
        except ApiClientError as exc:
            raise DemoError(f"invoke {DEPLOYMENT} on {node.name} failed: {exc}") from None

    def _invoke_all(self, nodes: list[DemoNode], payload: bytes, what: str) -> list[dict[str, Any]]:
        """``INVOKES_PER_NODE`` calls of the deployment through each node's API; one row per node."""
        rows = []
        for n in nodes:
            self.status(f"invoking {DEPLOYMENT} on {n.name}")
            results = [self._invoke(n, payload) for _ in range(INVOKES_PER_NODE)]
            last = results[-1]
            out = base64.b64decode(last["output_b64"]).decode(errors="replace").strip().splitlines()
            rows.append({"from": n.name, "ran_on": last["node_name"], "mode": last["mode"],
                         "ok": all(r["ok"] for r in results), "calls": len(results),
                         "latency_ms": round(statistics.median(r["latency_ms"] for r in results), 3),
                         "output": out[0][:60] if out else "", "traceparent": last["traceparent"]})
        modes = {r["mode"] for r in rows}
        self.say(f"[bold green]invoked[/] {DEPLOYMENT} {INVOKES_PER_NODE}x {what}: "
                 + ", ".join(f"{r['from']}→{r['ran_on']} ({r['mode']}, {r['latency_ms']:.2f} ms)" for r in rows))
        if not all(r["ok"] for r in rows):
            bad = next(r for r in rows if not r["ok"])
            raise DemoError(f"an invoke of {DEPLOYMENT} from {bad['from']} failed")
        if "local" not in modes or ("forwarded" not in modes and len(nodes) > 2):
            raise DemoError(f"expected local calls on hosts and forwarded calls elsewhere, got modes {sorted(modes)}")
        return rows

    def _http(self, nodes: list[DemoNode]) -> None:
        """A replicated route to the deployment, then HTTP requests through every node's ingress."""
        self.cli("route", "add", "--host", "*", "--path", HTTP_PATH, "--method", "POST", "--deployment", DEPLOYMENT,
                 "--key", str(self.root / "operator.key"), "--data-dir", str(nodes[0].data_dir))  # type: ignore[operator]
        self.say(f"route [bold]POST *{HTTP_PATH}[/] → {DEPLOYMENT}: replicated to every node's --http ingress")
        rows: dict[str, dict[str, Any]] = {}

        def served() -> bool:
            for n in nodes:
                if n.name in rows:
                    continue
                try:
                    status, headers, body, ms = _http_post(n.http, HTTP_PATH.replace("*", "demo"), b"http")
                except OSError:
                    continue
                if status == 404:  # the route has not reached this node yet
                    continue
                rows[n.name] = {"via": n.name, "http": n.http, "status": status, "ms": round(ms, 3),
                                "body": body.decode(errors="replace").strip().splitlines()[0][:60] if body.strip() else "",
                                "traceparent": headers.get("traceparent", ""), "request_id": headers.get("x-request-id", "")}
                if status != 200:
                    raise DemoError(f"POST {HTTP_PATH} through {n.name}'s ingress ({n.http}) answered {status}: {body[:200]!r}")
                self.say(f"  {n.name} ingress {n.http}: {status} in {ms:.2f} ms: {rows[n.name]['body']}")
            self.status(f"waiting for the route on every ingress: {len(rows)}/{len(nodes)}")
            return len(rows) == len(nodes)

        self._wait(f"POST {HTTP_PATH} answered 200 through every node's ingress", PLACE_TIMEOUT, served)
        self.summary["workload"]["http"] = [rows[n.name] for n in nodes]
        self.summary["figures"]["http_ms"] = _stats([r["ms"] for r in rows.values()])
        self.say(f"[bold green]served over HTTP[/] through all {len(nodes)} ingresses (run here or forwarded to a replica)")

    def _events(self, node: DemoNode) -> list[dict[str, Any]]:
        assert node.api is not None
        return node.api.get("/v1/events")["events"]

    def _failover(self, survivors: list[DemoNode], killed: DemoNode, hosts: set[str]) -> None:
        """Until a survivor runs the replacement; the time from the first death declaration to it running."""
        found: dict[str, Any] = {}

        def replaced() -> bool:
            declared, runs = [], []
            for n in survivors:
                try:
                    evs = self._events(n)
                except ApiClientError:
                    continue
                declared += [e["mono"] for e in evs if e["kind"] == "node_dead" and e.get("member") == killed.id]
                runs += [(e, n) for e in evs if e["kind"] == "running" and e.get("deployment") == DEPLOYMENT
                         and e.get("failover_from") == killed.id]
            self.status(f"waiting for a replacement of {killed.name}'s replica")
            if declared and runs:
                ev, node = min(runs, key=lambda x: x[0]["mono"])
                found.update(node=node.name, ms=round((ev["mono"] - min(declared)) * 1000, 3), took_ms=ev.get("took_ms"))
                return True
            return False

        self._wait(f"a replacement for {killed.name}'s replica runs", FAILOVER_TIMEOUT, replaced)
        self.summary["workload"]["failover"] = {"from": killed.name, "to": found["node"], "start_ms": found["took_ms"]}
        self.summary["figures"]["failover_ms"] = found["ms"]
        self.say(f"[bold green]failover[/]: {found['node']} runs the replica {killed.name} had, "
                 f"{found['ms']:.1f} ms after the first survivor declared {killed.name} dead "
                 f"(its start took {found['took_ms'] or 0:.1f} ms)")
        self._wait_running(survivors, "1.0.0", 2)

    def _roll(self, nodes: list[DemoNode]) -> None:
        """Publish 1.1.0 and roll forward; roll back to 1.0.0 (still warm): each host's switch time."""
        assert self.root is not None
        seed_dir = str(nodes[0].data_dir)
        self.cli("module", "publish", str(example_path("handler")), "--name", MODULE, "--version", "1.1.0",
                 "--abi", "direct", "--key", str(self.root / "publisher.key"), "--data-dir", seed_dir)
        t0 = time.monotonic()
        dep = self.cli("deploy", DEPLOYMENT, "--module", MODULE, "--version", "^1.0.0", "--replicas", "2",
                       "--near-node", nodes[0].name, "--spread", "region", "--key", str(self.root / "operator.key"),
                       "--data-dir", seed_dir)
        hosts = self._wait_running(nodes, dep["active_version"], 2)
        forward_s = time.monotonic() - t0
        out = base64.b64decode(self._invoke(nodes[0], b"ping")["output_b64"]).decode(errors="replace")
        self.say(f"[bold green]rolled forward[/] to {dep['active_version']} on {', '.join(sorted(hosts))} in {forward_s:.2f} s "
                 f"(a cold start of the new version); it answers {out.strip()!r}")
        by_name = {n.name: n for n in nodes}
        marks = {h: max((e["seq"] for e in self._events(by_name[h])), default=0) for h in hosts}
        t1 = time.monotonic()
        back = self.cli("rollback", DEPLOYMENT, "--key", str(self.root / "operator.key"), "--data-dir", seed_dir)
        hosts_back = self._wait_running(nodes, back["active_version"], 2)
        back_s = time.monotonic() - t1
        switches = {}
        for h in sorted(hosts_back & set(marks)):
            evs = [e for e in self._events(by_name[h]) if e["seq"] > marks[h] and e["kind"] == "switch"
                   and e.get("version") == back["active_version"] and e.get("since_change_ms") is not None]
            if evs:
                switches[h] = evs[0]["since_change_ms"]
        out = base64.b64decode(self._invoke(nodes[0], b"ping")["output_b64"]).decode(errors="replace")
        self.summary["workload"]["rollback"] = {"from": dep["active_version"], "to": back["active_version"],
                                                "hosts": sorted(hosts_back), "switch_ms": switches}
        self.summary["figures"].update(roll_forward_s=round(forward_s, 3), rollback_visible_s=round(back_s, 3))
        self.say(f"[bold green]rolled back[/] to {back['active_version']}: every node sees both hosts serve it "
                 f"{back_s:.2f} s after the rollback was acknowledged; warm switch on each host: "
                 + (", ".join(f"{h} {ms:.2f} ms" for h, ms in switches.items()) or "-")
                 + f"; it answers {out.strip().splitlines()[0] if out.strip() else ''!r}")


# ---------------------------------------------------------------------- rendering


def _http_post(addr: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes, float]:
    """POST ``body`` to ``http://ADDR/PATH`` (loopback): status, lower-case headers, body, milliseconds."""
    import http.client

    host, port = addr.rsplit(":", 1)
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "text/plain"})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data, (time.perf_counter() - t0) * 1000
    finally:
        conn.close()


def _print_summary(console: Any, s: dict[str, Any]) -> None:
    from rich.table import Table

    if s["members"]:
        t = Table(title=f"the mesh as the seed {s['seed']} sees it", title_justify="left", header_style="bold")
        for col in ("node", "id", "addr", "pid", "status", "rtt_ms"):
            t.add_column(col, no_wrap=True, justify="right" if col in ("pid", "rtt_ms") else "left")
        colour = {"alive": "green", "suspect": "yellow", "dead": "red", "left": "blue"}
        for m in s["members"]:
            st = m["status"]
            t.add_row(m["name"], m["id"], m["addr"], str(m["pid"] or "-"), f"[{colour.get(st, 'white')}]{st}[/]",
                      "-" if m["rtt_ms"] is None else f"{m['rtt_ms']:.2f}")
        console.print(t)
    f = s["figures"]
    w = s.get("workload") or {}
    if w.get("invokes"):
        t = Table(title=f"{DEPLOYMENT} invoked {INVOKES_PER_NODE}x from every node (replicas on {', '.join(w['hosts'])})",
                  title_justify="left", header_style="bold")
        for col in ("from", "ran on", "mode", "median latency", "answer"):
            t.add_column(col, no_wrap=col != "answer", justify="right" if col == "median latency" else "left")
        for r in w["invokes"]:
            t.add_row(r["from"], r["ran_on"] or "-", r["mode"], f"{r['latency_ms']:.2f} ms", r["output"])
        console.print(t)
    if w.get("http"):
        t = Table(title=f"POST {HTTP_PATH.replace('*', 'demo')} through every node's HTTP ingress", title_justify="left",
                  header_style="bold")
        for col in ("via", "ingress", "status", "latency", "answer"):
            t.add_column(col, no_wrap=col != "answer", justify="right" if col in ("status", "latency") else "left")
        for r in w["http"]:
            t.add_row(r["via"], r["http"], str(r["status"]), f"{r['ms']:.2f} ms", r["body"])
        console.print(t)
    if s["detection"]:
        t = Table(title=f"{s['killed']} SIGKILLed: seen by each survivor", title_justify="left", header_style="bold")
        t.add_column("survivor")
        t.add_column("suspect after", justify="right")
        t.add_column("dead after", justify="right")
        for name, d in s["detection"].items():
            t.add_row(name, "-" if d["suspect_s"] is None else f"{d['suspect_s']:.2f} s",
                      "-" if d["dead_s"] is None else f"{d['dead_s']:.2f} s")
        console.print(t)
    lines = []
    if "join_s" in f:
        lines.append(f"join: every node saw all {s['nodes']} alive {f['join_s']:.2f} s after the joiners were spawned "
                     f"(APIs up after {f['startup_s']:.2f} s)")
    for key, what in (("detection_s", f"crash detection ({s['killed']} dead) by every survivor"),
                      ("suspect_s", "first suspicion"), ("leave_s", f"graceful leave ({s['left']} left)")):
        st = f.get(key)
        if st:
            lines.append(f"{what}: min {st['min']:.2f} s, median {st['median']:.2f} s, max {st['max']:.2f} s")
    if "placed_s" in f:
        lines.append(f"placement: 2 replicas of {DEPLOYMENT} running {f['placed_s']:.2f} s after the deploy")
    for mode in ("local", "forwarded"):
        st = f.get(f"invoke_{mode}_ms")
        if st:
            lines.append(f"invoke {mode} (measured by the node): median {st['median']:.2f} ms (min {st['min']:.2f}, max {st['max']:.2f})")
    st = f.get("http_ms")
    if st:
        lines.append(f"HTTP through the ingress (client side, one connection each): median {st['median']:.2f} ms "
                     f"(min {st['min']:.2f}, max {st['max']:.2f})")
    if "failover_ms" in f:
        fo = w["failover"]
        lines.append(f"failover: {fo['to']} ran {fo['from']}'s replica {f['failover_ms']:.1f} ms after the first death declaration")
    if "rollback_visible_s" in f:
        rb = w["rollback"]
        sw = ", ".join(f"{h} {ms:.2f} ms" for h, ms in rb["switch_ms"].items()) or "-"
        lines.append(f"rollback {rb['from']} -> {rb['to']}: warm switch {sw}; seen on every node after {f['rollback_visible_s']:.2f} s "
                     f"(roll forward, a cold start: {f['roll_forward_s']:.2f} s)")
    lines.append(f"detection bound for {s['nodes']} nodes, {s['profile']} profile: {s['detect_bound_s']:g} s; "
                 f"demo wall time {f['total_s']:.1f} s")
    for line in lines:
        console.print(line, soft_wrap=True)


def run_cli(nodes: int, profile: str, as_json: bool, keep: bool) -> int:
    """`wasmatrix demo`: 0 every step happened as expected, 1 a step failed, 130 interrupted."""
    from rich.console import Console

    console = Console(highlight=False)
    status_box: list[Any] = []

    def say(line: str) -> None:
        if not as_json:
            console.print(line, soft_wrap=True)

    def status(line: str) -> None:
        if status_box:
            status_box[0].update(line)

    demo = Demo(nodes=nodes, profile=profile, keep=keep, say=say, status=status)
    previous = {}

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds through Demo.run's cleanup

    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            previous[sig] = signal.signal(sig, on_signal)
        except ValueError:  # not the main thread: Ctrl-C handling stays as it is
            pass
    try:
        if as_json:
            summary = demo.run()
        else:
            console.print("[bold]WasmMatrix demo[/]: a real mesh of local daemons "
                          "(for the simulated 300-node mesh run `wasmatrix sim demo`)", soft_wrap=True)
            with console.status("starting") as box:
                status_box.append(box)
                summary = demo.run()
    except OSError as exc:  # no temp dir: nothing was started
        print(f"wasmatrix demo: cannot create a temp dir: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if not as_json:
            console.print(f"interrupted: stopped {len(demo.started)} daemon(s) "
                          f"(pids {', '.join(str(n.pid) for n in demo.started) or '-'})", soft_wrap=True)
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if as_json:
        print(json.dumps(summary, sort_keys=True))
    else:
        console.print()
        _print_summary(console, summary)
        console.print(f"stopped {len(summary['pids'])} daemons (pids {', '.join(map(str, summary['pids']))})", soft_wrap=True)
        if keep:
            console.print(f"data dirs and logs kept in {summary['data_dir']} (NAME/ is a data dir, NAME.log its log)", soft_wrap=True)
        if summary["error"]:
            console.print(f"[bold red]demo failed[/]: {summary['error']}", soft_wrap=True)
    return 0 if summary["ok"] else 1

