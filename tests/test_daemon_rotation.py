"""Rotating the mesh secret without downtime, with real daemons (issue 10, docs/OPERATIONS.md).

Three daemons run on the old mesh file, each from its own copy. ``wasmatrix mesh rotate --grace 30``
on a copy makes the new file; it is rolled to the nodes one at a time (copy, then SIGHUP). During the
roll no node ever shows a member as anything but alive, and a node started on the old file still
joins through a node that has the new one. After the window a node on the old file cannot join,
and one on the new file can. Every process is killed by its PID at the end; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mesh.daemon.meshsecret import RELOAD_CHECK_SECONDS
from mesh.meshfile import secret_fingerprint
from mesh.meshfile import load as load_meshfile
from tests.harness.daemons import Mesh, Node, wait_until
from tests.harness.procs import ProcessGroup, procs  # noqa: F401  (fixture)

GRACE = 30
JOIN_BOUND = 20.0


def _cli(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh.cli", *args], capture_output=True, text=True, timeout=timeout)


def _install(src: Path, dst: Path) -> None:
    """Copy a mesh file the way an operator's tooling should: a temp file, mode 0600, rename."""
    tmp = dst.with_suffix(".tmp")
    shutil.copyfile(src, tmp)
    os.chmod(tmp, 0o600)
    os.replace(tmp, dst)


def _events(node: Node, event: str) -> list[dict]:
    assert node.proc is not None
    out = []
    for line in node.proc.stderr().splitlines():
        if f'"event": "{event}"' in line or f'"event":"{event}"' in line:
            out.append(json.loads(line))
    return out


def _hold_all_alive(mesh: Mesh, names: list[str], seconds: float, seen: list[str]) -> None:
    """Poll every running node for ``seconds``; record any view in which a member is not alive."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for n in mesh.running():
            view = n.view()
            bad = {m: s for m, s in view.items() if m in names and s != "alive"}
            missing = [m for m in names if m not in view]
            if bad or missing:
                seen.append(f"{n.name}: {bad} missing {missing}")
        time.sleep(0.25)


@pytest.mark.slow
def test_secret_rotation_rolls_without_losing_a_member_and_shuts_out_the_old_secret(
    procs: ProcessGroup, tmp_path: Path
) -> None:
    original = tmp_path / "mesh.json"
    assert _cli("mesh", "init", "--out", str(original)).returncode == 0
    files = {n: tmp_path / f"{n}.mesh.json" for n in ("n0", "n1", "n2", "n3", "n4")}
    for f in files.values():
        _install(original, f)
    mesh = Mesh(procs, tmp_path)
    names = ["n0", "n1", "n2"]
    seed = mesh.start("n0", secret=files["n0"])
    for n in names[1:]:
        mesh.start(n, seeds=[seed.addr], secret=files[n])
    wait_until(lambda: mesh.converged({n: "alive" for n in names}), JOIN_BOUND, "3 nodes alive")
    old = load_meshfile(original)

    rotated = tmp_path / "rotated.json"
    _install(original, rotated)
    r = _cli("mesh", "rotate", "--mesh-secret", str(rotated), "--grace", str(GRACE))
    assert r.returncode == 0, r.stderr
    new = load_meshfile(rotated)
    assert new.previous is not None and new.previous.secret == old.secret
    accept_until = new.previous.accept_until

    # Roll it out one node at a time; the mesh keeps every member alive throughout.
    not_alive: list[str] = []
    for i, n in enumerate(names):
        node = mesh.nodes[n]
        _install(rotated, files[n])
        assert node.proc is not None
        os.kill(node.proc.pid, signal.SIGHUP)
        wait_until(lambda: len(_events(node, "mesh_secret_reloaded")) == 1, 3 * RELOAD_CHECK_SECONDS,
                   f"{n} reloaded its mesh file")
        ev = _events(node, "mesh_secret_reloaded")[0]
        assert ev["sighup"] is True and ev["window_open"] is True
        assert ev["secret"] == secret_fingerprint(new.secret) and ev["dial"] == secret_fingerprint(old.secret)
        assert new.secret.hex() not in node.proc.stderr() and old.secret.hex() not in node.proc.stderr()
        _hold_all_alive(mesh, names, 3.0, not_alive)
        if i == 1:
            # Mid-roll, a node still on the old file joins through n0, which has the new one.
            mesh.start("n3", seeds=[seed.addr], secret=files["n3"])
            wait_until(lambda: mesh.converged({m: "alive" for m in names + ["n3"]}), JOIN_BOUND,
                       "n3 (old file) joined during the window")
            names = names + ["n3"]
            assert time.time() < accept_until, "the roll took longer than the window: raise GRACE"
    assert not_alive == [], f"a member was not alive during the roll: {not_alive[:5]}"

    # The window closes: every rolled node switches to the new secret on its own.
    rolled = [mesh.nodes[n] for n in ("n0", "n1", "n2")]
    wait_until(lambda: all(_events(n, "mesh_secret_switched") for n in rolled),
               max(0.0, accept_until - time.time()) + 3 * RELOAD_CHECK_SECONDS, "the rolled nodes switched")
    for n in rolled:
        ev = _events(n, "mesh_secret_switched")[0]
        assert ev["window_open"] is False and ev["accepted"] == [secret_fingerprint(new.secret)]
    _hold_all_alive(mesh, ["n0", "n1", "n2"], 3.0, not_alive)
    assert not_alive == [], f"a member was not alive at the switch: {not_alive[:5]}"

    # n3 was never given the new file: restarted after the window, it cannot join any more.
    assert mesh.kill("n3", signal.SIGTERM) == 0
    mesh.start("n3", seeds=[seed.addr], secret=files["n3"])
    n3 = mesh.nodes["n3"]
    time.sleep(8)  # several join retries and probe rounds
    assert {m: s for m, s in n3.view().items() if s == "alive"} == {"n3": "alive"}
    assert all(mesh.nodes[n].view()["n3"] == "left" for n in ("n0", "n1", "n2"))
    refused = sum(mesh.nodes[n].metric("wasmatrix_transport_handshake_failures_total", 'reason="psk_failure"')
                  for n in ("n0", "n1", "n2"))
    assert refused >= 1, "n3's handshakes reached the mesh and were refused at message 1"

    # A node given the new file joins.
    _install(rotated, files["n4"])
    mesh.start("n4", seeds=[seed.addr], secret=files["n4"])
    wait_until(lambda: all(mesh.nodes[n].view().get("n4") == "alive" for n in ("n0", "n1", "n2", "n4")),
               JOIN_BOUND, "n4 (new file) joined after the window")
    print(f"rolled 3 nodes in the {GRACE} s window with no member lost; old-file n3 joined mid-roll; "
          f"after the switch n3 refused ({refused:.0f} psk failures), n4 joined")
