"""`wasmatrix node run --http` as a real process (tests/harness/daemons.py): the flags reach the
ingress, `route add` through the node's API, a WASI command answering as a CGI script, the bounds
set by flags, the per-request JSON log line on stderr."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path

import pytest

from tests.harness.daemons import Mesh, publisher_and_operator, run_cli, wait_until
from tests.harness.procs import ProcessGroup, procs  # noqa: F401  (fixture)

HELLO = Path(__file__).resolve().parents[1] / "runtime" / "examples" / "hello.wasm"


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        c.request("GET", path, headers={"Host": "web.test", **(headers or {})})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


@pytest.mark.slow
def test_node_run_http_flags_route_cli_and_cgi(procs: ProcessGroup, tmp_path: Path) -> None:  # noqa: F811
    publisher_and_operator(tmp_path, ["n1"])
    mesh = Mesh(procs, tmp_path, profile="local")
    n1 = mesh.start("n1", extra=["--http", "127.0.0.1:0", "--http-max-connections", "2", "--http-max-head-bytes", "4096"])
    port = int(n1.status()["http"].rsplit(":", 1)[1])
    d = str(n1.data_dir)
    for args in (["module", "publish", str(HELLO), "--name", "hello", "--version", "1.0.0", "--key", str(tmp_path / "pub.key")],
                 ["deploy", "web", "--module", "hello", "--version", "1.0.0", "--replicas", "0", "--key", str(tmp_path / "op.key")],
                 ["route", "add", "--host", "web.test", "--path", "/*", "--method", "GET", "--deployment", "web",
                  "--format", "http", "--key", str(tmp_path / "op.key")]):
        r = run_cli(*args, "--data-dir", d, timeout=60)
        assert r.returncode == 0, r.stderr
    r = run_cli("route", "list", "--data-dir", d)
    assert r.returncode == 0 and "web.test" in r.stdout and "http" in r.stdout
    assert _get(port, "/x", {"Host": "other.test"})[0] == 404
    wait_until(lambda: _get(port, "/hi?a=b")[0] == 200, 30, "the on-demand CGI handler answers")
    st, hd, body = _get(port, "/hi?a=b", {"X-Request-Id": "proc-1"})
    assert st == 200 and b"env: PATH_INFO=/hi" in body and b"env: QUERY_STRING=a=b" in body
    assert hd["x-request-id"] == "proc-1" and len(hd["traceparent"]) == 55
    assert _get(port, "/hi", {"X-Big": "z" * 5000})[0] == 431  # --http-max-head-bytes 4096
    # --http-max-connections 2: a third connection is answered 503 and closed.
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    try:
        wait_until(lambda: n1.metric("wasmatrix_http_connections") == 2, 10, "2 connections held")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            assert s.recv(4096).startswith(b"HTTP/1.1 503 ")
    finally:
        for s in held:
            s.close()
    assert n1.metric("wasmatrix_http_rejected_total", 'reason="connections"') == 1
    assert n1.metric("wasmatrix_http_requests_total", 'code="200",deployment="web"') >= 2
    assert n1.proc is not None

    def logged() -> list[dict]:
        return [x for x in map(json.loads, (ln for ln in n1.proc.stderr().splitlines() if ln.startswith("{")))
                if x.get("event") == "http_request" and x.get("request_id") == "proc-1"]

    wait_until(lambda: len(logged()) == 1, 10, "the request's log line")
    (line,) = logged()
    assert (line["deployment"], line["status"], line["mode"], line["path"]) == ("web", 200, "local", "/hi")
    assert line["start"] <= line["end"] and line["traceparent"] == hd["traceparent"]
