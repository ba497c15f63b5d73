"""Replicated trust between real daemons (issue 10): a grant made on one node is trusted on all;
a revoked node is refused at the handshake by every node, shown dead, and cannot rejoin.

Processes are started through the ProcessGroup fixture and killed by PID, also on failure.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crdt.keys import load_signing_key
from tests.harness.daemons import Mesh, Node, wait_until
from tests.harness.procs import ProcessGroup, procs  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow  # real daemon processes: run in CI and with WASMATRIX_SLOW=1 (docs/TESTING.md)

JOIN_BOUND = 20.0
# lan profile: a member is declared dead at once on revocation; a bound for gossip and probes.
REVOKE_BOUND = 15.0


def _cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh.cli", *args], capture_output=True, text=True, timeout=timeout)


def _grants(node: Node) -> dict[str, list[str]]:
    return {g["key_id"]: g["roles"] for g in node.client().get("/v1/trust")["grants"]}


def _refused(node: Node) -> float:
    return node.metric("wasmatrix_transport_handshake_failures_total", 'reason="refused_not_admitted"')


def test_a_grant_is_trusted_everywhere_and_a_revoked_node_is_refused(procs: ProcessGroup, tmp_path: Path) -> None:
    mf = tmp_path / "mesh.json"
    r = _cli("mesh", "init", "--out", str(mf))
    assert r.returncode == 0, r.stderr
    admin_key = Path(str(mf) + ".admin.key")
    admin = load_signing_key(admin_key)
    mesh = Mesh(procs, tmp_path, mesh_file=mf)
    a = mesh.start("a")
    b = mesh.start("b", seeds=[a.addr])
    c = mesh.start("c", seeds=[a.addr])
    names = ["a", "b", "c"]
    wait_until(lambda: mesh.converged({n: "alive" for n in names}), JOIN_BOUND, "3 nodes see each other alive")
    roots = a.client().get("/v1/trust")["roots"]
    assert [x["key_id"] for x in roots] == [admin.key_id]

    # keygen on a with the mesh admin key: a replicated, admin-signed grant
    key_out = tmp_path / "pub.key"
    t_cli = time.monotonic()
    r = _cli("keygen", "--role", "publisher", "--out", str(key_out), "--admin-key", str(admin_key),
             "--data-dir", str(a.data_dir), "--json")
    assert r.returncode == 0, r.stderr
    t_cli = time.monotonic() - t_cli
    info = json.loads(r.stdout)
    kid = load_signing_key(key_out).key_id
    assert info["key_id"] == kid and info["granted_by"] == admin.key_id
    assert _grants(a)[kid] == ["publisher"]  # answered once durable on a
    took = wait_until(lambda: all(_grants(n).get(kid) == ["publisher"] for n in (b, c)), 10, "b and c trust the key", interval=0.02)
    print(f"keygen --admin-key took {t_cli * 1000:.0f} ms; b and c trusted the key {took * 1000:.0f} ms after it returned")

    # keygen --admin-key with a key that is not an admin: refused (403), no key file left behind
    bad_out = tmp_path / "bad.key"
    r = _cli("keygen", "--role", "admin", "--out", str(bad_out), "--admin-key", str(key_out), "--data-dir", str(a.data_dir))
    assert r.returncode == 1 and "role" in r.stderr and not bad_out.exists()

    # trust list on b shows the root and the grant
    r = _cli("trust", "list", "--data-dir", str(b.data_dir))
    assert r.returncode == 0, r.stderr
    assert admin.key_id in r.stdout and kid in r.stdout and "publisher" in r.stdout

    # revoke node c
    c_id = c.status()["id"]
    refused_before = _refused(a) + _refused(b)
    r = _cli("revoke", c_id, "--key", str(admin_key), "--reason", "decommissioned", "--data-dir", str(a.data_dir), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["revoked"] == c_id
    wait_until(lambda: all(n.view().get("c") == "dead" for n in (a, b)), REVOKE_BOUND, "a and b show c dead")
    for n in (a, b):
        revs = n.client().get("/v1/trust")["revocations"]
        assert [x["id"] for x in revs] == [c_id] and revs[0]["reason"] == "decommissioned"
    wait_until(lambda: _refused(a) + _refused(b) > refused_before, REVOKE_BOUND, "c's handshakes are refused")

    # a restarted c cannot rejoin: a refuses it, a and b keep it dead
    mesh.kill("c")
    refused_before = _refused(a) + _refused(b)
    mesh.start("c", seeds=[a.addr, b.addr])
    wait_until(lambda: _refused(a) + _refused(b) > refused_before, REVOKE_BOUND, "the restarted c is refused")
    time.sleep(3)
    assert a.view().get("c") == "dead" and b.view().get("c") == "dead"
    assert {m["name"]: m["status"] for m in c.members()}.get("a") != "alive"
