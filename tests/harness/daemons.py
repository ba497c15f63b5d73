"""Run real `wasmatrix node run` processes for process tests and talk to their control API.

``Mesh`` starts daemons on loopback through a :class:`~tests.harness.procs.ProcessGroup` (every
process killed by its PID at the end, also on failure), waits for each node's ``api.json``, and
reads members, status and metrics over the API with a short timeout. Polls are bounded in time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from mesh.daemon.api import ApiClient, ApiClientError
from tests.harness.procs import Proc, ProcessGroup


@dataclass
class Node:
    """One daemon of a test mesh."""

    name: str
    data_dir: Path
    port: int  # 0 until the first start picked one (the daemon binds port 0: no race with other processes)
    proc: Proc | None = None
    args: list[str] = field(default_factory=list)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, timeout: float = 3.0) -> ApiClient:
        info = json.loads((self.data_dir / "api.json").read_text())
        return ApiClient(info["addr"], info["token"], timeout=timeout)

    def members(self) -> list[dict[str, Any]]:
        return self.client().get("/v1/members")

    def status(self) -> dict[str, Any]:
        return self.client().get("/v1/status")

    def view(self) -> dict[str, str]:
        """{display name: status} as this node sees the mesh."""
        return {m["name"]: m["status"] for m in self.members()}

    def metrics(self) -> str:
        info = json.loads((self.data_dir / "api.json").read_text())
        with urllib.request.urlopen(f"http://{info['addr']}/metrics", timeout=3) as resp:
            return resp.read().decode()

    def metric(self, name: str, labels: str = "") -> float:
        """The value of one sample (``name{labels}``) of /metrics, 0 when absent."""
        key = f"{name}{{{labels}}}" if labels else name
        for line in self.metrics().splitlines():
            if line.startswith(key + " "):
                return float(line.split()[-1])
        return 0.0


def run_cli(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """``wasmatrix ARGS`` as a subprocess of this interpreter (text output captured)."""
    return subprocess.run([sys.executable, "-m", "mesh.cli", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def mesh_file(tmp_path: Path) -> Path:
    """A fresh mesh file (``wasmatrix mesh init``) in the test's temp dir."""
    out = tmp_path / "mesh.json"
    r = run_cli("mesh", "init", "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out


def publisher_and_operator(root: Path, names: list[str]) -> None:
    """Keys ``root/pub.key`` (publisher) and ``root/op.key`` (operator) trusted by every data dir
    ``root/NAME`` (the offline way: one trust.json copied into each before start)."""
    first = root / names[0]
    for role, out in (("publisher", "pub.key"), ("operator", "op.key")):
        r = run_cli("keygen", "--role", role, "--out", str(root / out), "--data-dir", str(first), timeout=60)
        assert r.returncode == 0, r.stderr
    for n in names[1:]:
        (root / n).mkdir(mode=0o700)
        shutil.copy(first / "trust.json", root / n / "trust.json")
    first.chmod(0o700)


def wait_until(pred: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> float:
    """Poll ``pred`` until true; return the seconds it took; AssertionError naming ``what`` on timeout."""
    t0 = time.monotonic()
    last_exc: Exception | None = None
    while True:
        try:
            if pred():
                return time.monotonic() - t0
        except (ApiClientError, OSError, ValueError, KeyError) as exc:  # a node restarting: keep polling
            last_exc = exc
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not within {timeout} s" + (f" (last error: {last_exc})" if last_exc else ""))
        time.sleep(interval)


class Mesh:
    """A set of daemons on loopback sharing one mesh secret (or ``--insecure``)."""

    def __init__(self, group: ProcessGroup, root: Path, *, mesh_file: Path | None = None, profile: str | None = None,
                 extra: list[str] | None = None) -> None:
        self.group = group
        self.root = root
        self.mesh_file = mesh_file
        self.profile = profile
        self.extra = extra or []
        self.nodes: dict[str, Node] = {}

    def start(self, name: str, *, seeds: list[str] = (), port: int | None = None, extra: list[str] | None = None,
              secret: Path | None = None, wait: bool = True) -> Node:
        node = self.nodes.get(name)
        if node is None:
            node = Node(name, self.root / name, port or 0)
            self.nodes[name] = node
        args = [sys.executable, "-m", "mesh.cli", "node", "run", "--data-dir", str(node.data_dir),
                "--bind", node.addr, "--name", name] + (["--profile", self.profile] if self.profile else [])
        secret = secret or self.mesh_file
        args += ["--mesh-secret", str(secret)] if secret else ["--insecure"]
        for s in seeds:
            args += ["--seed", s]
        args += self.extra + (extra or [])
        node.args = args
        (node.data_dir / "api.json").unlink(missing_ok=True)
        node.proc = self.group.start(args, name=f"{name}-{len([p for p in self.group.procs if p.name.startswith(name + '-')])}")
        if wait:
            node.proc.wait_for_file(node.data_dir / "api.json", timeout=20)
            if node.port == 0:
                node.port = int(node.status()["addr"].rsplit(":", 1)[1])
        return node

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int | None:
        """Send ``sig`` to the node's process (by its PID) and wait for it to exit."""
        node = self.nodes[name]
        assert node.proc is not None
        os.kill(node.proc.pid, sig)
        code = node.proc.popen.wait(timeout)
        if sig == signal.SIGKILL:
            (node.data_dir / "api.json").unlink(missing_ok=True)  # a killed node cannot remove it
        return code

    def running(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.proc is not None and n.proc.popen.poll() is None]

    def converged(self, expect: dict[str, str], among: list[Node] | None = None) -> bool:
        """True when every running node (or ``among``) sees exactly ``expect`` ({name: status})."""
        return all(n.view() == expect for n in (among or self.running()))
