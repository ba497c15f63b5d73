"""HTTP ingress end to end (issue 12) on two real daemons in one trio run, serving on ``--http``.

Modules: ``handler.wasm`` (direct ABI, body format: answers ``n=<calls>:<INPUT UPPERCASED>``,
traps on ``trap``, spins on ``loop``), ``httpecho.wasm`` (direct ABI, http format: a CGI-style
answer echoing the request line) and ``hello.wasm`` (a WASI command printing its environment:
a CGI script). Routes are written with the CLI against a running node. Covered: local and
forwarded requests, every status code of the contract, keep-alive and pipelining, traceparent
in/out and across forwarding, the head-size, body-size, slowloris and connection bounds.
"""

from __future__ import annotations

import dataclasses

import shutil
import subprocess
from pathlib import Path
from typing import Any

import h11
import pytest
import structlog
import trio

from mesh.cli import main
from mesh.daemon.config import load_config
from mesh.daemon.node import Daemon
from mesh.membership.state import MemberState
from tests.harness.inproc import cli_in_thread
from tests.harness.inproc import wait_for as _wait

EXAMPLES = Path(__file__).resolve().parents[1] / "runtime" / "examples"
TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE = TP.split("-")[1]


def _cfg(tmp: Path, name: str, seeds: list[str], **http: Any) -> Any:
    return load_config({"data_dir": str(tmp / name), "bind": "127.0.0.1:0", "insecure": True, "name": name,
                        "seed": seeds, "profile": "local", "log_level": "info", "http": "127.0.0.1:0", **http})


_capsys: Any = None


async def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return await cli_in_thread(_capsys, *args)


def _port(d: Daemon) -> int:
    return int(d.http_addr.rsplit(":", 1)[1])


async def _responses(stream: trio.SocketStream, n: int, timeout: float = 20.0) -> list[tuple[int, dict[str, str], bytes]]:
    """Read ``n`` responses from ``stream`` (h11 client side)."""
    conn = h11.Connection(h11.CLIENT)
    # The client sent its requests raw: make h11 believe it sent one GET per response.
    out = []
    with trio.fail_after(timeout):
        for _ in range(n):
            if conn.our_state is h11.DONE:
                conn.start_next_cycle()
            conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
            conn.send(h11.EndOfMessage())
            status, headers, body = 0, {}, bytearray()
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                    continue
                if isinstance(ev, h11.Response):
                    status = ev.status_code
                    headers = {k.decode(): v.decode("latin-1") for k, v in ev.headers}
                elif isinstance(ev, h11.Data):
                    body += ev.data
                elif isinstance(ev, h11.EndOfMessage):
                    break
                elif isinstance(ev, h11.ConnectionClosed):
                    raise AssertionError("connection closed before the response ended")
            out.append((status, headers, bytes(body)))
    return out


async def _http(port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                host: str = "app.test") -> tuple[int, dict[str, str], bytes]:
    hs = {"host": host, "content-length": str(len(body)), **(headers or {})}
    raw = f"{method} {path} HTTP/1.1\r\n".encode() + b"".join(f"{k}: {v}\r\n".encode() for k, v in hs.items()) + b"\r\n" + body
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(raw)
        (res,) = await _responses(stream, 1)
    return res


async def _closed_within(stream: trio.SocketStream, seconds: float) -> bytes:
    """Everything the server sends until it closes; AssertionError if it does not close in time."""
    got = bytearray()
    with trio.fail_after(seconds):
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return bytes(got)
            got += data


def test_ingress_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    global _capsys
    _capsys = capsys
    saved = structlog.get_config()
    structlog.reset_defaults()
    try:
        with structlog.testing.capture_logs() as logs:
            trio.run(_scenario, tmp_path, logs)
    finally:
        structlog.configure(**saved)


async def _scenario(tmp: Path, logs: list[dict[str, Any]]) -> None:
    for role in ("publisher", "operator"):
        assert main(["keygen", "--role", role, "--out", str(tmp / f"{role}.key"), "--data-dir", str(tmp / "a")]) == 0
    (tmp / "b").mkdir(mode=0o700)
    shutil.copy(tmp / "a" / "trust.json", tmp / "b" / "trust.json")
    (tmp / "a").chmod(0o700)
    op = str(tmp / "operator.key")
    async with trio.open_nursery() as nursery:
        a: Daemon = await nursery.start(Daemon(_cfg(tmp, "a", [], http_max_connections=6, http_head_timeout=1.0,
                                                   http_max_head_bytes=8192)).run)
        b: Daemon = await nursery.start(Daemon(_cfg(tmp, "b", [a.advertise])).run)
        ds = {"a": a, "b": b}
        await _wait(lambda: all(len([m for m in d.core.swim.members.values() if m.state == MemberState.ALIVE]) == 2
                                for d in ds.values()), 20, "2 daemons alive")
        pa, pb = _port(a), _port(b)
        assert a.status()["http"] == a.http_addr

        # Modules and deployments (CLI on the running node a).
        for f, name, abi, extra in (("handler", "handler", "direct", []), ("httpecho", "httpecho", "direct", []),
                                    ("hello", "hello", "wasi-command", []),
                                    ("handler", "slow", "direct", ["--limit", "timeout_ms=300"])):
            r = await _cli("module", "publish", str(EXAMPLES / f"{f}.wasm"), "--name", name, "--version", "1.0.0",
                           "--abi", abi, "--key", str(tmp / "publisher.key"), "--data-dir", str(tmp / "a"), *extra)
            assert r.returncode == 0, r.stderr
        for dep, mod, replicas in (("echo", "handler", "1"), ("hecho", "httpecho", "0"), ("cgi", "hello", "0"),
                                   ("slow", "slow", "0")):
            r = await _cli("deploy", dep, "--module", mod, "--version", "1.0.0", "--replicas", replicas,
                           "--key", op, "--data-dir", str(tmp / "a"))
            assert r.returncode == 0, r.stderr

        # Routes with the CLI: add (several methods → one route each), list, rm.
        for args in (["--path", "/echo", "--method", "POST", "--method", "PUT", "--deployment", "echo"],
                     ["--path", "/h/*", "--deployment", "hecho", "--format", "http"],
                     ["--path", "/cgi", "--method", "GET", "--deployment", "cgi", "--format", "http"],
                     ["--path", "/slow", "--deployment", "slow"],
                     ["--path", "/gone", "--deployment", "nosuch"],
                     ["--path", "/tmp", "--deployment", "echo"]):
            r = await _cli("route", "add", "--host", "app.test", *args, "--key", op, "--data-dir", str(tmp / "a"))
            assert r.returncode == 0, r.stderr
        r = await _cli("route", "rm", "--host", "app.test", "--path", "/tmp", "--key", op, "--data-dir", str(tmp / "a"))
        assert r.returncode == 0, r.stderr
        r = await _cli("route", "list", "--json", "--api", b.api_addr, "--token", b.token)
        assert r.returncode == 0, r.stderr
        import json

        await _wait(lambda: len(b.core.intent.doc.routes()) == 6, 10, "routes replicated to b")
        r = await _cli("route", "list", "--json", "--api", b.api_addr, "--token", b.token)
        listed = {(o["method"], o["path"], o["deployment"], o["format"]) for o in json.loads(r.stdout)}
        assert listed == {("POST", "/echo", "echo", "body"), ("PUT", "/echo", "echo", "body"),
                          ("*", "/h/*", "hecho", "http"), ("GET", "/cgi", "cgi", "http"),
                          ("*", "/slow", "slow", "body"), ("*", "/gone", "nosuch", "body")}
        r = await _cli("route", "list", "--data-dir", str(tmp / "a"))
        assert r.returncode == 0 and "/h/*" in r.stdout and "hecho" in r.stdout

        await _wait(lambda: sum(d.workloads.hosts("echo") for d in ds.values()) == 1
                    and all(len([n for n, e in d.core.intent.doc.placements().items()
                                 if any(c.deployment == "echo" and c.state == "running" for c in e.replicas)]) == 1
                            for d in ds.values()), 30, "echo runs on one node, both know it")
        host_name = next(n for n, d in ds.items() if d.workloads.hosts("echo"))
        other_name = "b" if host_name == "a" else "a"
        host, other = ds[host_name], ds[other_name]

        # Local and forwarded, the module's output as the body; traceparent continued and returned.
        st, hd, body = await _http(_port(host), "POST", "/echo", b"hi")
        assert (st, body) == (200, b"n=1:HI") and len(hd["x-request-id"]) == 16
        st, hd, body = await _http(_port(other), "POST", "/echo", b"there", {"traceparent": TP, "x-request-id": "req-1"})
        assert (st, body) == (200, b"n=2:THERE"), body
        assert hd["traceparent"] == TP and hd["x-request-id"] == "req-1"
        (line,) = [e for e in logs if e["event"] == "http_request" and e.get("request_id") == "req-1"]
        assert line["mode"] == "forwarded" and line["node"] == host.node_id and line["status"] == 200
        assert line["deployment"] == "echo" and line["node_id"] == other.node_id and line["tenant"] in (None, "default")
        assert line["start"] <= line["end"] and line["error"] is None
        served = [e for e in logs if e["event"] == "invoke_served" and e.get("trace_id") == TRACE]
        assert [e["node_id"] for e in served] == [host.node_id]
        # An invalid traceparent starts a new trace (no 400 on the ingress).
        st, hd, body = await _http(_port(other), "POST", "/echo", b"x", {"traceparent": "00-nonsense"})
        assert st == 200 and hd["traceparent"].split("-")[1] != TRACE and len(hd["traceparent"]) == 55

        # HTTP format, direct ABI (on-demand cold start on the node asked): status, headers, body from the module.
        st, hd, body = await _http(pb, "PUT", "/h/status/201?q=1", b"payload")
        assert st == 201 and hd["x-echo-method"] == "PUT" and hd["content-type"] == "text/plain", (st, hd, body)
        assert body == b"PUT /h/status/201?q=1 HTTP/1.1\nheaders: 2\nbody: payload"
        # HTTP format, WASI command as a CGI script (no header block in its output: all body, 200).
        st, hd, body = await _http(pa, "GET", "/cgi?x=1&y=2", headers={"x-custom": "yes", "content-type": "text/csv"})
        assert st == 200, body
        for want in (b"env: REQUEST_METHOD=GET", b"env: PATH_INFO=/cgi", b"env: QUERY_STRING=x=1&y=2",
                     b"env: SERVER_NAME=app.test", b"env: HTTP_X_CUSTOM=yes", b"env: CONTENT_TYPE=text/csv",
                     b"env: GATEWAY_INTERFACE=CGI/1.1"):
            assert want in body, (want, body)

        # The same HTTP calls forwarded over the mesh (InvokeRequest kind 1: the request as HTTP/1.1 text):
        # hecho now runs on b, cgi on a; ask the other node.
        def claims(viewer: Daemon, dep: str) -> set[str]:
            return {n for n, e in viewer.core.intent.doc.placements().items()
                    if any(c.deployment == dep and c.state == "running" for c in e.replicas)}

        await _wait(lambda: claims(a, "hecho") == {b.node_id} and claims(b, "cgi") == {a.node_id}, 10,
                    "on-demand claims replicated")
        st, hd, body = await _http(pa, "POST", "/h/status/202", b"fwd", {"x-request-id": "fwd-http"})
        assert (st, hd["x-echo-method"], body) == (202, "POST", b"POST /h/status/202 HTTP/1.1\nheaders: 3\nbody: fwd")
        st, hd, body = await _http(pb, "GET", "/cgi?via=b", headers={"x-request-id": "fwd-cgi", "x-custom": "b"})
        assert st == 200 and b"env: QUERY_STRING=via=b" in body and b"env: HTTP_X_CUSTOM=b" in body, body
        modes = {e["request_id"]: (e["mode"], e["node"]) for e in logs if e["event"] == "http_request"}
        assert modes["fwd-http"] == ("forwarded", b.node_id) and modes["fwd-cgi"] == ("forwarded", a.node_id)

        # Status codes.
        st, hd, body = await _http(pa, "GET", "/nothing-here")
        assert st == 404 and b"no route" in body
        st, hd, body = await _http(pa, "GET", "/echo", host="other.test")
        assert st == 404
        st, hd, body = await _http(pa, "GET", "/echo")
        assert st == 405 and hd["allow"] == "POST, PUT"
        st, hd, body = await _http(pa, "POST", "/h/trap")
        assert st == 500 and body.startswith(b"trap") and host.node_id not in body.decode() and b"/" not in body.split(b":")[0]
        st, hd, body = await _http(pa, "POST", "/gone")
        assert st == 502 and body == b"no healthy replica reachable\n"
        st, hd, body = await _http(pa, "POST", "/slow", b"loop")
        assert st == 504, body
        # 413 from Content-Length, before any body byte is sent; the connection is closed.
        stream = await trio.open_tcp_stream("127.0.0.1", pa)
        async with stream:
            await stream.send_all(b"POST /echo HTTP/1.1\r\nhost: app.test\r\ncontent-length: 2000000\r\n\r\n")
            raw = await _closed_within(stream, 5)
        assert raw.startswith(b"HTTP/1.1 413 ")
        # A body over one mesh frame on a body route is 413 too (60000 bytes).
        st, _, _ = await _http(pa, "POST", "/echo", b"x" * 60_001)
        assert st == 413
        # A chunked body counted while read (http route: the 1 MiB ingress bound).
        stream = await trio.open_tcp_stream("127.0.0.1", pa)
        async with stream:
            await stream.send_all(b"POST /h/x HTTP/1.1\r\nhost: app.test\r\ntransfer-encoding: chunked\r\n\r\n")
            chunk = b"%x\r\n" % 65536 + b"z" * 65536 + b"\r\n"
            with trio.move_on_after(10):
                try:
                    for _ in range(20):
                        await stream.send_all(chunk)
                except trio.BrokenResourceError:
                    pass
            raw = await _closed_within(stream, 5)
        assert raw.startswith(b"HTTP/1.1 413 "), raw[:80]
        # Header flood over the 8 KiB head bound of node a: 431.
        st, _, _ = await _http(pa, "GET", "/echo", headers={"x-big": "a" * 9000})
        assert st == 431
        assert a.ingress.metrics.rejected["head_too_large"] == 1 and a.ingress.metrics.rejected["body_too_large"] == 3

        # Keep-alive and pipelining: two requests in one write, two answers in order on one connection.
        stream = await trio.open_tcp_stream("127.0.0.1", _port(host))
        async with stream:
            await stream.send_all(b"POST /echo HTTP/1.1\r\nhost: app.test\r\ncontent-length: 5\r\n\r\nfirst"
                                  b"GET /nothing HTTP/1.1\r\nhost: app.test\r\n\r\n"
                                  b"PUT /echo HTTP/1.1\r\nhost: app.test\r\ncontent-length: 6\r\n\r\nsecond")
            res = await _responses(stream, 3)
            assert [s for s, _, _ in res] == [200, 404, 200]
            assert res[0][2].endswith(b":FIRST") and res[1][2].startswith(b"no route") and res[2][2].endswith(b":SECOND")
            # and the connection stays open for more
            await stream.send_all(b"POST /echo HTTP/1.1\r\nhost: app.test\r\ncontent-length: 5\r\n\r\nthird")
            (res4,) = await _responses(stream, 1)
            assert res4[0] == 200 and res4[2].endswith(b":THIRD")

        # Slowloris: a head trickled byte by byte is cut off after the head timeout (1 s on a);
        # meanwhile the node answers others.
        slow = await trio.open_tcp_stream("127.0.0.1", pa)
        async with slow:
            t0 = trio.current_time()

            async def trickle() -> None:
                try:
                    for ch in b"GET /echo HTTP/1.1\r\nhost: app.test\r\nx-a: " + b"b" * 100:
                        await slow.send_all(bytes([ch]))
                        await trio.sleep(0.05)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

            async with trio.open_nursery() as n:
                n.start_soon(trickle)
                st, _, _ = await _http(pa, "GET", "/nothing-here")
                assert st == 404
                await _closed_within(slow, 4)
                n.cancel_scope.cancel()
            assert 0.9 <= trio.current_time() - t0 < 4
        assert a.ingress.metrics.rejected["head_timeout"] == 1

        # Connection cap (6 on a): the 7th connection gets 503 and is closed; after they go, service resumes.
        held = [await trio.open_tcp_stream("127.0.0.1", pa) for _ in range(6)]
        await _wait(lambda: a.ingress.metrics.connections == 6, 5, "6 connections held")
        extra = await trio.open_tcp_stream("127.0.0.1", pa)
        async with extra:
            raw = await _closed_within(extra, 5)
        assert raw.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in raw
        assert a.ingress.metrics.rejected["connections"] == 1
        for s in held:
            await s.aclose()
        await _wait(lambda: a.ingress.metrics.connections == 0, 5, "held connections gone")
        st, _, _ = await _http(pa, "GET", "/nothing-here")
        assert st == 404

        # Idle keep-alive: a connection silent after its answer is closed after idle_timeout_s (1 s here),
        # not before; one that keeps sending is served across that time (the timer re-arms per request).
        a.ingress.cfg = dataclasses.replace(a.ingress.cfg, idle_timeout_s=1.0)
        for quiet in (True, False):
            conn = await trio.open_tcp_stream("127.0.0.1", pa)
            async with conn:
                for i in range(1 if quiet else 4):
                    if i:
                        await trio.sleep(0.4)  # 3 x 0.4 s on one connection: more than the idle timeout
                    await conn.send_all(b"GET /nothing-here HTTP/1.1\r\nhost: app.test\r\n\r\n")
                    ((st, _, _),) = await _responses(conn, 1)
                    assert st == 404
                t0 = trio.current_time()
                assert await _closed_within(conn, 5) == b""
                assert trio.current_time() - t0 >= 0.9
        a.ingress.cfg = dataclasses.replace(a.ingress.cfg, idle_timeout_s=30.0)

        # Metrics.
        from mesh.metrics import render

        text = render(a.registry).decode()
        assert 'wasmatrix_http_requests_total{code="404",deployment=""}' in text
        assert 'wasmatrix_http_rejected_total{reason="connections"} 1.0' in text
        assert 'wasmatrix_invoke_calls_total{caller="http",code="ok",deployment="cgi"} 1.0' in text

        # A leaving node answers 503 (its clients retry elsewhere), counted as draining.
        nursery.start_soon(b.leave)
        await _wait(lambda: b._leaving, 5, "b leaving")
        st, _, body = await _http(pb, "POST", "/echo", b"late")
        assert st == 503 and b"leaving" in body and b.ingress.metrics.rejected["draining"] == 1
        for d in ds.values():
            d.stop()
