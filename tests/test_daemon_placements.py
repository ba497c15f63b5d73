"""`wasmatrix placements [--explain] [--check]` against three real daemons (issue 11).

Three nodes in two zones, two of them labelled ``tier=edge``; a deployment of 2 replicas that
needs ``tier=edge`` and spreads by site. Every node computes the placement over its own view and
gossips the digests of what its workload lifecycle placed in its metadata; once the mesh converged all
three agree, and a and b run the replicas. ``--explain`` shows
the unlabelled node filtered for the missing label and the two others scored and chosen.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mesh.cli import main
from tests.harness.daemons import Mesh, wait_until
from tests.harness.procs import ProcessGroup, procs  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow  # real daemon processes: run in CI and with WASMATRIX_SLOW=1 (docs/TESTING.md)

HELLO = Path(__file__).resolve().parents[1] / "runtime" / "examples" / "hello.wasm"


def _setup(tmp_path: Path, names: list[str]) -> None:
    first = tmp_path / names[0]
    for role, out in (("publisher", "pub.key"), ("operator", "op.key")):
        assert main(["keygen", "--role", role, "--out", str(tmp_path / out), "--data-dir", str(first)]) == 0
    for n in names[1:]:
        (tmp_path / n).mkdir(mode=0o700)
        shutil.copy(first / "trust.json", tmp_path / n / "trust.json")
    first.chmod(0o700)


def test_three_nodes_agree_on_placements_and_explain_why(procs: ProcessGroup, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    def cli(*args: str) -> tuple[int, str, str]:
        """The CLI in this process (a subprocess per command costs seconds on a loaded machine)."""
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    names = ["a", "b", "c"]
    _setup(tmp_path, names)
    mesh = Mesh(procs, tmp_path)
    zones = {"a": "eu/berlin/r1", "b": "eu/paris/r1", "c": "eu/berlin/r2"}
    labels = {"a": ["tier=edge"], "b": ["tier=edge"], "c": ["tier=core"]}
    extra = {n: ["--zone", zones[n]] + [x for lb in labels[n] for x in ("--label", lb)] for n in names}
    seed = mesh.start("a", extra=extra["a"])
    for n in names[1:]:
        mesh.start(n, seeds=[seed.addr], extra=extra[n])
    wait_until(lambda: mesh.converged({n: "alive" for n in names}), 20, "3 nodes joined")
    ids = {m["name"]: m["id"] for m in mesh.nodes["a"].members()}

    def check(n: str) -> dict:
        return mesh.nodes[n].client().get("/v1/placements/check")

    # Before any deployment the nodes already agree (on an empty set of deployments).
    wait_until(lambda: all(check(n)["agree"] for n in names), 20, "digests before the deploy")
    before = {row["specs"] for row in check("a")["nodes"]}
    assert len(before) == 1

    code, out, err = cli("module", "publish", str(HELLO), "--name", "hello", "--version", "1.0.0", "--key",
                         str(tmp_path / "pub.key"), "--data-dir", str(tmp_path / "a"))
    assert code == 0, err
    # Published on a, deployed through b: b checks the version against its own replica of the
    # registry, which has it once the publish has replicated (a deploy sent sooner is refused, rightly).
    wait_until(lambda: {"name": "hello", "versions": ["1.0.0"], "live": ["1.0.0"]} in mesh.nodes["b"].client().get("/v1/modules"),
               20, "the module replicated to b")
    code, out, err = cli("deploy", "web", "--module", "hello", "--version", "^1.0.0", "--replicas", "2", "--label",
                         "tier=edge", "--spread", "site", "--key", str(tmp_path / "op.key"), "--data-dir", str(tmp_path / "b"))
    assert code == 0, err

    def agree_after_deploy(n: str) -> bool:
        res = check(n)
        return res["agree"] and {row["specs"] for row in res["nodes"]}.isdisjoint(before)

    took = wait_until(lambda: all(agree_after_deploy(n) for n in names), 20, "every node sees all three new digests agree")
    print(f"all 3 nodes agree {took:.2f} s after the deploy was acknowledged")
    code, out, err = cli("placements", "--check", "--json", "--data-dir", str(tmp_path / "c"))
    assert code == 0, err
    res = json.loads(out)
    assert [g["reason"] for g in res["groups"]] == ["reference"]
    assert sorted(res["groups"][0]["nodes"]) == sorted(ids.values())
    digests = {row["agreement"] for row in res["nodes"]}
    assert len(digests) == 1 and digests.pop().startswith("1:")

    # The human table says the same, exit 0.
    code, out, err = cli("placements", "--check", "--data-dir", str(tmp_path / "b"))
    assert code == 0, err
    assert "all nodes agree" in out and "agree: " in out

    # --explain: c lacks the label; a and b are eligible, one replica each (different sites anyway).
    code, out, err = cli("placements", "web", "--explain", "--json", "--data-dir", str(tmp_path / "c"))
    assert code == 0, err
    dep = json.loads(out)["deployments"][0]
    assert dep["deployment"] == "web" and dep["replicas"] == 2 and dep["shortfall"] == 0
    assert sorted(dep["target"]) == sorted([ids["a"], ids["b"]])
    # The claims the lifecycle wrote: a and b run it, as placed.
    def running_rows() -> list[tuple[str, str, str, str]]:
        d = mesh.nodes["c"].client().get("/v1/placements?deployment=web")["deployments"][0]
        return sorted((r["name"], r["version"], r["state"], r["zone"]) for r in d["running"])

    wait_until(lambda: running_rows() == [("a", "1.0.0", "running", zones["a"]), ("b", "1.0.0", "running", zones["b"])],
               30, "a and b claim running replicas")
    code, out, err = cli("placements", "--data-dir", str(tmp_path / "c"))
    assert code == 0, err
    rows = [ln for ln in out.splitlines() if "running" in ln]  # the table: one row per claim, with its zone
    assert len(rows) == 2 and {zones["a"], zones["b"]} == {z for z in zones.values() for ln in rows if z in ln}
    assert all(ln.split()[-2:] == ["running", "alive"] for ln in rows), rows  # STATE, then the claimant's MEMBER status
    cands = {c["name"]: c for c in dep["candidates"]}
    assert cands["c"]["rejected"] == "label tier=edge missing" and cands["c"]["score"] is None
    assert cands["c"]["replica"] is None
    assert {cands["a"]["replica"], cands["b"]["replica"]} == {0, 1}
    assert cands["a"]["rejected"] is None and cands["a"]["score"]["base"] > 0
    code, out, err = cli("placements", "web", "--explain", "--data-dir", str(tmp_path / "a"))
    assert code == 0, err
    assert "label tier=edge missing" in out and "filtered" in out and "score" in out

    # Every node placed the same target, and with the replicas running they still agree.
    targets = {tuple(mesh.nodes[n].client().get("/v1/placements")["deployments"][0]["target"]) for n in names}
    assert len(targets) == 1
    wait_until(lambda: all(check(n)["agree"] for n in names), 20, "digests agree with the replicas running")

    # A deployment nobody has: exit 1 with one line.
    code, out, err = cli("placements", "nope", "--data-dir", str(tmp_path / "a"))
    assert code == 1 and "nope" in err
    code, out, err = cli("placements", "web", "--check", "--data-dir", str(tmp_path / "a"))
    assert code == 2
