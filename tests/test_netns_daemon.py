"""`wasmatrix node run --mdns veth0` in network namespaces on one bridge (issue 10, discovery):
nodes with no seed find each other by mDNS, a link set down partitions one, the heal converges,
and a node with another mesh secret is discovered but never admitted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness.netns import NetnsLab, namespaces, netns_available
from tests.harness.procs import REPO_ROOT, Proc

_REASON = netns_available()
pytestmark = [pytest.mark.netns, pytest.mark.slow,
              pytest.mark.skipif(_REASON is not None, reason=f"netns test: {_REASON}")]
BOUND = 30.0
# Runs inside a node's namespace (its API listens on that namespace's loopback): prints the node's
# member view, {name: status}, as a JSON line whenever it changes; ends by itself after 120 s.
_WATCH = """
import json, sys, time
from mesh.daemon.api import ApiClient, ApiClientError
from mesh.datadir import ApiInfoError, resolve_api
end, last, client = time.monotonic() + 120, None, None
while time.monotonic() < end:
    try:
        client = client or (lambda i: ApiClient(i.addr, i.token, timeout=2))(resolve_api(sys.argv[1], None, None))
        view = {r["name"]: r["status"] for r in client.get("/v1/members")}
    except (ApiInfoError, ApiClientError, OSError):
        view = None
    if view is not None and view != last:
        print(json.dumps({"wall": time.time(), "view": view}), flush=True)
        last = view
    time.sleep(0.1)
"""


def mesh_file(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "mesh.cli", "mesh", "init", "--out", str(path)],
                   check=True, capture_output=True, cwd=REPO_ROOT, timeout=30)
    return path


def view(watcher: Proc) -> dict[str, str]:
    lines = watcher.stdout().splitlines()
    return json.loads(lines[-1])["view"] if lines else {}


def wait_for(lab: NetnsLab, watchers: dict[int, Proc], ok: Callable[[dict[int, dict[str, str]]], bool],
             what: str) -> float:
    """Seconds until ``ok`` holds for the member views; fails with every view and log after BOUND."""
    start = time.monotonic()
    while True:
        seen = {i: view(w) for i, w in watchers.items()}
        if ok(seen):
            return time.monotonic() - start
        if time.monotonic() - start > BOUND:
            logs = "\n".join(f"{p.name}: {p.stderr()[-1500:]}" for p in lab.group.procs)
            pytest.fail(f"{what} not within {BOUND}s: {seen}\n{logs}")
        time.sleep(0.05)


def test_daemons_discover_each_other_by_mdns_partition_and_heal(tmp_path: Path) -> None:
    good, other = mesh_file(tmp_path / "mesh.json"), mesh_file(tmp_path / "other.json")
    alive3 = {"n0": "alive", "n1": "alive", "n2": "alive"}
    with NetnsLab(4, workdir=tmp_path) as lab:
        made = [*lab.names, lab.switch]
        for i in range(4):
            lab.run(i, [sys.executable, "-m", "mesh.cli", "node", "run", "--data-dir", str(tmp_path / f"d{i}"),
                        "--bind", f"{lab.addresses[i]}:7946", "--mesh-secret", str(other if i == 3 else good),
                        "--mdns", lab.iface, "--name", f"n{i}"], name=f"d{i}")
        watchers = {i: lab.run(i, [sys.executable, "-c", _WATCH, str(tmp_path / f"d{i}")], name=f"w{i}")
                    for i in range(4)}
        took = wait_for(lab, watchers, lambda v: all(v[i] == alive3 for i in range(3)), "mDNS join")
        print(f"\nnode run --mdns: 3 daemons all alive everywhere {took:.1f}s after launch")
        # n3 advertises on the same link with another mesh secret: discovered, never admitted.
        assert view(watchers[3]) == {"n3": "alive"}
        rows = json.loads(lab.check_output(0, [sys.executable, "-m", "mesh.cli", "members", "--data-dir",
                                               str(tmp_path / "d0"), "--json"], timeout=20))
        assert sorted((r["name"], r["status"], r["addr"]) for r in rows) == [
            (f"n{i}", "alive", f"{lab.addresses[i]}:7946") for i in range(3)]

        lab.link_down(2)
        took = wait_for(lab, watchers, lambda v: v[0].get("n2") == v[1].get("n2") == "dead", "partition detected")
        print(f"node run --mdns: n0 and n1 marked n2 dead {took:.1f}s after its link went down")
        lab.link_up(2)
        took = wait_for(lab, watchers, lambda v: all(v[i] == alive3 for i in range(3)), "heal")
        print(f"node run --mdns: partition healed {took:.1f}s after link up")
        assert view(watchers[3]) == {"n3": "alive"}
    assert set(made) & set(namespaces()) == set()
