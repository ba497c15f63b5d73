"""Client-signed records through a running daemon (issue 10): GET /v1/intent/head, POST /v1/intent/records.

The key stays with the client (crdt.client signs); the node verifies like a peer's record, answers
once the record is durable and pushes it to the mesh.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from crdt.client import head, sign_next, submit
from crdt.keys import SigningKey
from crdt.trust import Role, TrustConfig
from mesh.daemon.api import ApiClientError
from tests.harness.daemons import Mesh, wait_until
from tests.harness.procs import ProcessGroup, procs  # noqa: F401  (fixture)

from crdt.schema import RouteSpec

pytestmark = pytest.mark.slow  # real daemon processes: run in CI and with WASMATRIX_SLOW=1 (docs/TESTING.md)


def _route(path: str) -> tuple[str, dict]:
    p = {"host": "*", "path": path, "method": "*", "deployment": "web", "priority": 0}
    return RouteSpec.from_payload(p).key, p


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh.cli", *args], capture_output=True, text=True, timeout=30)


def test_client_signed_records_are_stored_durably_and_replicate(procs: ProcessGroup, tmp_path: Path) -> None:
    mf = tmp_path / "mesh.json"
    assert _cli("mesh", "init", "--out", str(mf)).returncode == 0
    key = SigningKey.generate()
    for name in ("a", "b"):  # the operator key trusted locally (trust.json), as offline keygen does
        t = TrustConfig()
        t.add_key(key.public_raw, [Role.OPERATOR])
        (tmp_path / name).mkdir()
        t.save(tmp_path / name / "trust.json")

    mesh = Mesh(procs, tmp_path, mesh_file=mf)
    a = mesh.start("a")
    b = mesh.start("b", seeds=[a.addr])
    wait_until(lambda: mesh.converged({"a": "alive", "b": "alive"}), 20, "a and b see each other")
    api_a, api_b = a.client(), b.client()
    k1, p1 = _route("/a/*")
    k2, p2 = _route("/b/*")
    k3, p3 = _route("/c/*")

    assert head(api_a, key.key_id, "routes", k1) == (1, b"", 0)
    r1 = sign_next(api_a, key, "routes", k1, p1)
    r2 = sign_next(None, key, "routes", k2, p2, after=r1)
    res = submit(api_a, [r1, r2])
    assert [x["seq"] for x in res] == [1, 2]
    seq, prev, wall = head(api_a, key.key_id, "routes", k1)
    assert (seq, prev) == (3, r2.id) and wall >= r1.wall_ms + 1
    # replicated: b knows the chain head
    wait_until(lambda: head(api_b, key.key_id)[0] == 3, 10, "b holds both records")

    # the same record again: not the signer's next position (412: sign again), nothing new
    with pytest.raises(ApiClientError) as ei:
        submit(api_a, [r1])
    assert ei.value.status == 412
    assert head(api_a, key.key_id)[0] == 3
    # a stranger's record: 403; garbage: 400
    stranger = SigningKey.generate()
    with pytest.raises(ApiClientError) as ei:
        submit(api_a, [sign_next(api_a, stranger, "routes", k1, p1)])
    assert ei.value.status == 403 and "unknown_signer" in str(ei.value)
    with pytest.raises(ApiClientError) as ei:
        api_a.post("/v1/intent/records", {"records": ["!!!"]})
    assert ei.value.status == 400
    with pytest.raises(ApiClientError) as ei:
        api_a.post("/v1/intent/records", {"records": ["AAAA"]})
    assert ei.value.status == 400

    # acknowledged means durable: SIGKILL a right after the answer, restart, the chain is there
    r3 = sign_next(api_a, key, "routes", k3, p3)
    assert submit(api_a, [r3])[0]["seq"] == 3
    mesh.kill("a")
    mesh.start("a", seeds=[b.addr])
    assert head(a.client(), key.key_id)[0] == 4
