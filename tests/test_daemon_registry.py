"""Registry commands against running daemons (issue 10): a write on one node is visible on all,
acknowledged writes survive SIGKILL, and the CLI's private keys never reach the node.

Trust is given by copying one trust.json into every data dir before start (the offline way);
replicated grants are tested in tests/test_daemon_trust.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness.daemons import Mesh, publisher_and_operator, wait_until
from tests.harness.procs import ProcessGroup, procs  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow  # real daemon processes: run in CI and with WASMATRIX_SLOW=1 (docs/TESTING.md)

HELLO = Path(__file__).resolve().parents[1] / "runtime" / "examples" / "hello.wasm"


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh.cli", *args], capture_output=True, text=True, timeout=60, cwd=cwd)


_setup = publisher_and_operator


def three_nodes(procs: ProcessGroup, tmp_path: Path, names: list[str]) -> Mesh:
    """Keys and trust for ``names``, their daemons started (all through the first) and joined."""
    _setup(tmp_path, names)
    mesh = Mesh(procs, tmp_path)
    seed = mesh.start(names[0])
    for n in names[1:]:
        mesh.start(n, seeds=[seed.addr])
    wait_until(lambda: mesh.converged({n: "alive" for n in names}), 20, f"{len(names)} nodes joined")
    return mesh


def test_a_write_on_one_node_is_visible_on_all_and_survives_sigkill(procs: ProcessGroup, tmp_path: Path) -> None:
    names = ["a", "b", "c"]
    mesh = three_nodes(procs, tmp_path, names)

    t0 = time.monotonic()
    r = _cli("module", "publish", str(HELLO), "--name", "hello", "--version", "1.0.0", "--key", str(tmp_path / "pub.key"),
             "--data-dir", str(tmp_path / "a"), "--capability", "env:GREETING", "--json")
    assert r.returncode == 0, r.stderr
    acked = json.loads(r.stdout)
    assert acked["seq"] == 1
    took = wait_until(lambda: all(mesh.nodes[n].client().get("/v1/module?name=hello") for n in names), 10,
                      "hello 1.0.0 visible on every node", interval=0.005)
    print(f"publish acknowledged and visible on 3 nodes {time.monotonic() - t0:.3f} s after the CLI started "
          f"({took * 1000:.0f} ms after the acknowledgement)")

    # deploy through b, roll forward through c, read everywhere
    r = _cli("deploy", "web", "--module", "hello", "--version", "^1.0.0", "--replicas", "2",
             "--key", str(tmp_path / "op.key"), "--data-dir", str(tmp_path / "b"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["active_version"] == "1.0.0"
    r = _cli("module", "publish", str(HELLO), "--name", "hello", "--version", "1.1.0", "--key", str(tmp_path / "pub.key"),
             "--data-dir", str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr
    wait_until(lambda: len(mesh.nodes["b"].client().get("/v1/module?name=hello")) == 2, 10, "1.1.0 reached b")
    r = _cli("deploy", "web", "--module", "hello", "--version", "^1.0.0", "--replicas", "2",
             "--key", str(tmp_path / "op.key"), "--data-dir", str(tmp_path / "b"), "--json")
    assert json.loads(r.stdout)["active_version"] == "1.1.0"
    r = _cli("rollback", "web", "--key", str(tmp_path / "op.key"), "--data-dir", str(tmp_path / "a"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["active_version"] == "1.0.0"

    # An acknowledged write survives SIGKILL right after the acknowledgement.
    r = _cli("module", "publish", str(HELLO), "--name", "kept", "--version", "1.0.0", "--key", str(tmp_path / "pub.key"),
             "--data-dir", str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr
    mesh.kill("c")
    mesh.kill("a")
    mesh.kill("b")
    mesh.start("c")  # alone: its own store only
    assert [v["version"] for v in mesh.nodes["c"].client().get("/v1/module?name=kept")] == ["1.0.0"]
    assert mesh.nodes["c"].client().get("/v1/deployment?name=web")["active_version"] == "1.0.0"

    # The private keys never travel: nothing the node stored or logged holds them.
    secret = (tmp_path / "pub.key").read_bytes()
    for n in names:
        for f in (tmp_path / n).rglob("*"):
            if f.is_file() and f.name != "node.key":
                assert secret not in f.read_bytes()


def test_remote_errors_are_clear_and_offline_use_of_a_live_data_dir_is_refused(procs: ProcessGroup, tmp_path: Path) -> None:
    _setup(tmp_path, ["a"])
    mesh = Mesh(procs, tmp_path)
    mesh.start("a")
    d = str(tmp_path / "a")
    r = _cli("module", "publish", str(HELLO), "--name", "hello", "--version", "1.0.0", "--key", str(tmp_path / "op.key"), "--data-dir", d)
    assert r.returncode == 1 and "may not write registry" in r.stderr  # operator key, publisher role needed
    r = _cli("module", "publish", str(HELLO), "--name", "hello", "--version", "1.0.0", "--key", str(tmp_path / "pub.key"), "--data-dir", d)
    assert r.returncode == 0, r.stderr
    r = _cli("module", "publish", str(HELLO), "--name", "hello", "--version", "1.0.0", "--key", str(tmp_path / "pub.key"), "--data-dir", d)
    assert r.returncode == 1 and "immutable" in r.stderr
    r = _cli("rollback", "web", "--key", str(tmp_path / "op.key"), "--data-dir", d)
    assert r.returncode == 1 and "web" in r.stderr
    r = _cli("module", "list", "--api", "127.0.0.1:1", "--token", "x" * 43)
    assert r.returncode == 1 and "cannot reach" in r.stderr
