"""A partition splits a deployment's host from its standby: each side keeps one replica running;
after the heal every node computes the same placement and the surplus replica stops (issue 11)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.harness.daemons import Node, mesh_file, publisher_and_operator, wait_until  # noqa: F401  (fixture)
from tests.harness.procs import ProcessGroup, procs  # noqa: F401  (fixture)
from tests.harness.relaymesh import RelayMesh

HANDLER = Path(__file__).resolve().parents[1] / "runtime" / "examples" / "handler.wasm"


def _ok(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "mesh.cli", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def _running(nodes: list[Node], dep: str) -> set[str]:
    out = set()
    for n in nodes:
        for r in n.client().get("/v1/workloads")["replicas"]:
            if r["deployment"] == dep and r["state"] == "running":
                out.add(n.name)
    return out


def _events(n: Node) -> list[dict[str, Any]]:
    return n.client().get("/v1/events")["events"]


@pytest.mark.slow
def test_each_side_of_a_partition_serves_and_the_surplus_stops_after_the_heal(procs: ProcessGroup, tmp_path: Path,
                                                                              mesh_file: Path) -> None:  # noqa: F811
    names = ["a", "b", "c", "d"]
    publisher_and_operator(tmp_path, names)
    with RelayMesh(procs, tmp_path, mesh_file=mesh_file) as rm:
        rm.start("a")
        for n in names[1:]:
            rm.start(n, seeds=[rm.addr("a")])
        wait_until(lambda: rm.mesh.converged({n: "alive" for n in names}), 40, "4 nodes alive")
        nodes = {n: rm.mesh.nodes[n] for n in names}
        ids = {n: nodes[n].status()["id"] for n in names}
        by_id = {v: k for k, v in ids.items()}
        d = str(tmp_path / "a")
        _ok("module", "publish", str(HANDLER), "--name", "handler", "--version", "1.0.0", "--abi", "direct",
            "--key", str(tmp_path / "pub.key"), "--data-dir", d)
        _ok("deploy", "solo", "--module", "handler", "--version", "1.0.0", "--replicas", "1",
            "--key", str(tmp_path / "op.key"), "--data-dir", d)
        wait_until(lambda: len(_running(list(nodes.values()), "solo")) == 1, 40, "solo running")
        (host,) = _running(list(nodes.values()), "solo")
        # the standby (next in the ranking) prepared the blob and the compiled module
        wait_until(lambda: any(e["kind"] == "prepare" for n in names if n != host for e in _events(nodes[n])), 20, "a standby")
        (standby,) = [n for n in names if n != host and any(e["kind"] == "prepare" for e in _events(nodes[n]))]
        rest = [n for n in names if n not in (host, standby)]
        side_1, side_2 = [host, rest[0]], [standby, rest[1]]
        rm.partition(side_1, side_2)
        # side 2 declares the host dead and starts the replacement on the standby; side 1 keeps its replica
        wait_until(lambda: _running([nodes[n] for n in side_2], "solo") == {standby}, 60, "side 2 runs its own replica")
        assert _running([nodes[n] for n in side_1], "solo") == {host}
        rm.heal()
        wait_until(lambda: rm.mesh.converged({n: "alive" for n in names}), 60, "healed")
        wait_until(lambda: len(_running(list(nodes.values()), "solo")) == 1, 30, "the surplus replica stopped")
        (kept,) = _running(list(nodes.values()), "solo")
        assert kept in (host, standby)
        # every node computed the same placement and its document says only the kept node runs it
        wait_until(lambda: all(nodes[n].client().get("/v1/workloads")["placements"]["solo"] == [ids[kept]] for n in names),
                   20, "all nodes agree on the placement")
        for n in names:
            entries = nodes[n].client().get("/v1/workloads")["entries"]
            holders = {by_id[k] for k, cs in entries.items() for c in cs if c["deployment"] == "solo" and c["state"] == "running"}
            assert holders == {kept}, (n, json.dumps(entries))
        loser = standby if kept == host else host
        assert any(e["kind"] == "stopped" and e["deployment"] == "solo" for e in _events(nodes[loser]))
