"""The HTTP ingress: h11 on trio, serving the replicated routes on ``--http HOST:PORT``.

Per request: the head is read (bounded in bytes and time), the route is matched by Host, path and
method (``crdt/routes.py``: priority, then specificity), the body is read (bounded), and the call
goes through ``daemon.invocations.invoke(..., caller="http")`` — local when this node hosts a replica,
else forwarded to the nearest healthy one, else an on-demand cold start. The result maps to a
status (:func:`answer_for`, docs/DAEMON.md "HTTP ingress"). Keep-alive and pipelining are h11's:
requests on one connection are answered one after another, in order.

Bounds (:class:`IngressConfig`, flags ``--http-*`` / TOML ``http_*``), each refusal counted in
``wasmatrix_http_rejected_total{reason}``:

* head larger than ``max_head_bytes`` → 431 (``head_too_large``);
* body larger than ``max_body_bytes`` → 413, refused from Content-Length before reading, a chunked
  body counted while read (``body_too_large``); the connection is then closed;
* more than ``max_connections`` open connections → 503 and close (``connections``);
* the full request head must arrive within ``head_timeout_s`` of its first byte (slowloris): the
  connection is closed (``head_timeout``); an idle keep-alive connection is closed after
  ``idle_timeout_s`` (not a rejection);
* the body and the call together have ``request_timeout_s`` (``body_timeout`` when the body is
  late; a call over the deadline is a 504);
* a malformed request → 400 (``bad_request``); a leaving node → 503 (``draining``).
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterator

import h11
import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from mesh.ingress.cgi import CgiError, HttpAnswer, HttpCall, parse_output
from mesh.invoke.invoker import http_status
from mesh.invoke.messages import MAX_INVOKE_PAYLOAD
from mesh.invoke.trace import call_context
from mesh.metrics import PREFIX, FsyncHistogram

if TYPE_CHECKING:
    from mesh.daemon.node import Daemon

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
REJECT_REASONS = ("bad_request", "body_timeout", "body_too_large", "connections", "draining", "head_timeout",
                  "head_too_large")
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")
_REASON = {400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           413: "Content Too Large", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


_OVER_CAP = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\nretry-after: 1\r\n"
             b"connection: close\r\ncontent-length: 21\r\n\r\ntoo many connections\n")


@dataclass(slots=True, frozen=True)
class IngressConfig:
    """The ingress's bounds (docs/DAEMON.md); every one is a flag and a TOML key."""

    max_head_bytes: int = 16 << 10
    max_body_bytes: int = 1 << 20
    max_connections: int = 512
    head_timeout_s: float = 10.0
    idle_timeout_s: float = 30.0
    request_timeout_s: float = 30.0


class IngressMetrics(Collector):
    """``wasmatrix_http_*`` (docs/METRICS.md), read at scrape time."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}
        self.seconds: dict[str, FsyncHistogram] = {}
        self.connections = 0
        self.rejected = {r: 0 for r in REJECT_REASONS}

    def observe(self, deployment: str, status: int, seconds: float) -> None:
        k = (deployment, str(status))
        self.requests[k] = self.requests.get(k, 0) + 1
        h = self.seconds.get(deployment)
        if h is None:
            h = self.seconds[deployment] = FsyncHistogram(LATENCY_BUCKETS)
        h.observe(seconds)

    def collect(self) -> Iterator[Metric]:
        c = CounterMetricFamily(PREFIX + "http_requests", "HTTP ingress requests answered, by deployment (empty: no "
                                "route) and status code", labels=["deployment", "code"])
        for (dep, code), n in sorted(self.requests.items()):
            c.add_metric([dep, code], n)
        yield c
        h = HistogramMetricFamily(PREFIX + "http_request_seconds", "HTTP ingress request time, head read to answer "
                                  "sent, by deployment", labels=["deployment"])
        for dep, hist in sorted(self.seconds.items()):
            h.add_metric([dep], hist.cumulative(), sum_value=hist.sum)
        yield h
        yield GaugeMetricFamily(PREFIX + "http_connections", "Open HTTP ingress connections", value=self.connections)
        r = CounterMetricFamily(PREFIX + "http_rejected", "HTTP ingress requests or connections refused by a bound",
                                labels=["reason"])
        for reason in sorted(self.rejected):
            r.add_metric([reason], self.rejected[reason])
        yield r


class _Reject(Exception):
    def __init__(self, status: int, reason: str, message: str, close: bool = True) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.close = status, reason, message, close


def answer_for(res: dict[str, Any], fmt: str) -> tuple[HttpAnswer, str]:
    """The HTTP answer of an invoke result (contract table) and the error text to log ("" when fine)."""
    code = res["code"]
    if code == "ok":
        out: bytes = res["output"]
        if res.get("status", 0) != 0:
            return _text(500, f"handler exited with status {res['status']}"), f"exit status {res['status']}"
        if fmt != "http":
            return HttpAnswer(200, (), out), ""
        try:
            return parse_output(out), ""
        except CgiError as exc:
            return _text(500, str(exc)), str(exc)
    status = http_status(code)  # one table with POST /v1/invoke (mesh/invoke/invoker.py)
    msg = _public_message(code, res.get("message") or "")
    ans = _text(status, msg)
    if status == 429:
        retry = res.get("retry_after_s")
        secs = 1 if code == "overloaded" or retry is None else max(1, int(-(-float(retry) // 1)))
        ans = HttpAnswer(status, ans.headers + (("retry-after", str(secs).encode()),), ans.body)
    return ans, f"{code}: {res.get('message') or ''}"[:512]


def _public_message(code: str, message: str) -> str:
    """The error text a client sees: the code and the first line of the reason, without the host's
    exception type, node ids or file paths."""
    if code in ("no_replica", "connect_failed", "breaker_open", "stream_closed", "not_hosted"):
        return "no healthy replica reachable"
    if code in ("timeout", "no_answer"):
        return "the handler did not answer in time"
    if code in ("quota", "overloaded"):
        return "too many requests: try again later" if code == "overloaded" else (message.splitlines() or ["quota exceeded"])[0][:200]
    line = (message.splitlines() or [""])[0]
    line = re.sub(r"^[A-Za-z_][A-Za-z0-9_.]*(Error|Trap|Exceeded|Exception): ", "", line)
    line = re.sub(r"(/[^\s/]+)+/?", "<path>", line)
    return f"{code}: {line[:200]}" if line else code


def _text(status: int, text: str) -> HttpAnswer:
    return HttpAnswer(status, (("content-type", b"text/plain; charset=utf-8"),), (text + "\n").encode())


class Ingress:
    """One per daemon when ``--http`` is given."""

    def __init__(self, daemon: "Daemon", config: IngressConfig | None = None) -> None:
        self.d = daemon
        self.cfg = config or IngressConfig()
        self.metrics = IngressMetrics()

    async def serve(self, listeners: list[trio.SocketListener]) -> None:
        await trio.serve_listeners(self._conn, listeners)

    async def _conn(self, stream: trio.SocketStream) -> None:
        m = self.metrics
        if m.connections >= self.cfg.max_connections:
            m.rejected["connections"] += 1
            with trio.move_on_after(1.0):
                try:
                    await stream.send_all(_OVER_CAP)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
            await stream.aclose()
            return
        m.connections += 1
        try:
            await self._serve_conn(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            pass
        finally:
            m.connections -= 1
            await _linger_close(stream)

    async def _serve_conn(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.cfg.max_head_bytes)
        # One idle timer for the connection's life, armed only while waiting for a request's first
        # byte (a scope per request cost ~5 % of the loop); when it fires the connection closes.
        with trio.CancelScope() as idle:
            while True:
                try:
                    head = await self._read_head(conn, stream, idle)
                except _Reject as rej:
                    self.metrics.rejected[rej.reason] += 1
                    if rej.status:
                        await self._send(conn, stream, _text(rej.status, rej.message), [], close=True)
                    return
                if head is None:
                    return
                keep = await self._handle(conn, stream, head)
                if not keep or conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    return

    async def _read_head(self, conn: h11.Connection, stream: trio.SocketStream,
                         idle: trio.CancelScope) -> h11.Request | None:
        """The next request head; None when the client closed. Staying idle longer than
        ``idle_timeout_s`` cancels ``idle`` (the connection's scope: it closes)."""
        if not conn.trailing_data[0]:
            # Idle keep-alive: wait for the first byte of the next request.
            idle.deadline = trio.current_time() + self.cfg.idle_timeout_s
            try:
                data = await stream.receive_some(65536)
            finally:
                idle.deadline = math.inf
            conn.receive_data(data)
            if not data:
                return None
        try:
            event = conn.next_event()
            if event is h11.NEED_DATA:  # a head in several pieces: the rest within head_timeout_s
                with trio.fail_after(self.cfg.head_timeout_s):
                    while event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                        event = conn.next_event()
            if isinstance(event, h11.Request):
                # h11 bounds only an incomplete head; one that arrived whole is measured here.
                size = len(event.method) + len(event.target) + 12 + sum(len(n) + len(v) + 4 for n, v in event.headers)
                if size > self.cfg.max_head_bytes:
                    raise _Reject(431, "head_too_large", f"request head larger than {self.cfg.max_head_bytes} bytes")
                return event
            return None  # ConnectionClosed (or a client that half-closed mid-head)
        except trio.TooSlowError:
            raise _Reject(0, "head_timeout", "request head too slow") from None
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:
                raise _Reject(431, "head_too_large", f"request head larger than {self.cfg.max_head_bytes} bytes") from None
            raise _Reject(exc.error_status_hint or 400, "bad_request", f"bad request: {exc}") from None

    async def _read_body(self, conn: h11.Connection, stream: trio.SocketStream, limit: int,
                         event: Any = None) -> bytes:
        """The request body (``event``: h11's next event when the caller already took it); ``_Reject``
        413 once it passes ``limit`` bytes (counted while read)."""
        body = bytearray()
        while True:
            if event is None:
                event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
                event = None
                continue
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > limit:
                    raise _Reject(413, "body_too_large", f"body larger than {limit} bytes")
                event = None
                continue
            if isinstance(event, h11.EndOfMessage):
                return bytes(body)
            raise _Reject(400, "bad_request", "connection closed before the body ended")

    async def _handle(self, conn: h11.Connection, stream: trio.SocketStream, head: h11.Request) -> bool:
        """Answer one request; False when the connection must close."""
        t0 = time.perf_counter()
        start_wall = time.time()
        deadline = trio.current_time() + self.cfg.request_timeout_s
        hdrs = head.headers
        method = head.method.decode("ascii", "replace")
        target = head.target.decode("ascii", "replace")
        host = ""
        tp_in = rid_in = None
        length = None
        for name, value in hdrs:
            if name == b"host" and not host:
                host = value.decode("ascii", "replace")
            elif name == b"traceparent":
                tp_in = value.decode("ascii", "replace")
            elif name == b"x-request-id":
                rid_in = value
            elif name == b"content-length":
                length = value
        request_id = rid_in.decode() if rid_in is not None and _REQUEST_ID.fullmatch(rid_in) else secrets.token_hex(8)
        tp = call_context(tp_in, secrets.token_bytes, strict=False).header()  # invalid: a new trace (never a 400 here)
        path, _, query = target.partition("?")
        deployment, res, fmt, error = "", None, "body", ""
        close = False
        try:
            if not path.startswith("/"):
                raise _Reject(400, "bad_request", "request target must be a path (origin form)", close=False)
            if self.d._leaving or getattr(self.d, "_stopping", False):
                raise _Reject(503, "draining", "this node is leaving the mesh: retry on another node")
            table = self.d.core.intent.doc.route_table()  # type: ignore[union-attr]
            route = table.match(host, path, method)
            if route is None:
                allowed = table.allowed(host, path)
                if allowed:
                    ans = _text(405, f"{method} not allowed here; use {', '.join(allowed)}")
                    ans = HttpAnswer(405, ans.headers + (("allow", ", ".join(allowed).encode()),), ans.body)
                else:
                    ans = _text(404, f"no route for {method} {host or '-'}{path}")
                error = ans.body.decode().strip()
                # Drain a small body so the connection stays usable; a big one closes it.
                close = not await self._discard_body(conn, stream, length, deadline)
            else:
                deployment, fmt = route.deployment, route.format
                limit = min(self.cfg.max_body_bytes, MAX_INVOKE_PAYLOAD if fmt == "body" else self.cfg.max_body_bytes)
                if length is not None and (len(length) > 12 or int(length) > limit):
                    raise _Reject(413, "body_too_large", f"body larger than {limit} bytes")
                if conn.they_are_waiting_for_100_continue:
                    await stream.send_all(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
                event = conn.next_event()
                if type(event) is h11.EndOfMessage:  # no body (a GET): no timer needed
                    body = b""
                else:
                    with trio.move_on_at(deadline) as scope:
                        body = await self._read_body(conn, stream, self.cfg.max_body_bytes, event)
                    if scope.cancelled_caught:
                        raise _Reject(408, "body_timeout", "request body too slow")
                if fmt == "body" and len(body) > MAX_INVOKE_PAYLOAD:
                    raise _Reject(413, "body_too_large", f"body larger than {MAX_INVOKE_PAYLOAD} bytes")
                call = HttpCall(method, path, query, tuple((n.decode("ascii"), bytes(v)) for n, v in hdrs), body, host) \
                    if fmt == "http" else None
                if call is not None and len(call.to_text()) > MAX_INVOKE_PAYLOAD:
                    raise _Reject(413, "body_too_large", f"request larger than {MAX_INVOKE_PAYLOAD} bytes as HTTP text")
                res = await self.d.invocations.invoke(deployment, body, tp, max(0.001, deadline - trio.current_time()),
                                                      http=call, caller="http")
                tp = res.get("traceparent") or tp
                ans, error = answer_for(res, fmt)
        except _Reject as rej:
            self.metrics.rejected[rej.reason] += 1
            ans, error, close = _text(rej.status, rej.message), rej.message, close or rej.close
        except Exception as exc:  # a bug must not end the connection task silently: 500, logged
            self.d.log.error("http_handler_failed", error=f"{type(exc).__name__}: {exc}", request_id=request_id)
            ans, error, close = _text(500, "internal error"), f"{type(exc).__name__}: {exc}", True
        extra = [("x-request-id", request_id.encode()), ("traceparent", tp.encode())]
        sent = await self._send(conn, stream, ans, extra, close=close, head_only=method == "HEAD")
        seconds = time.perf_counter() - t0
        self.metrics.observe(deployment, ans.status, seconds)
        log = self.d.log
        level = logging.INFO if ans.status < 500 else logging.WARNING
        if getattr(log, "is_enabled_for", None) is None or log.is_enabled_for(level):  # else: no line to build
            node = res.get("node") if res else None
            fields = dict(request_id=request_id, method=method, host=host, path=path, deployment=deployment or None,
                          node=node, node_name=res.get("node_name") if res else None,
                          tenant=res.get("tenant") if res else None, mode=res.get("mode") if res else None,
                          start=_iso(start_wall), end=_iso(time.time()), status=ans.status,
                          ms=round(seconds * 1000, 3), traceparent=tp, error=error or None)
            (log.info if level == logging.INFO else log.warning)("http_request", **fields)
        return sent and not close

    async def _discard_body(self, conn: h11.Connection, stream: trio.SocketStream, length: bytes | None,
                            deadline: float) -> bool:
        """Read and drop a request body up to 64 KiB (True: the connection can go on)."""
        if length is not None and (len(length) > 12 or int(length) > 65536):
            return False
        if conn.they_are_waiting_for_100_continue:
            return False
        with trio.move_on_at(deadline):
            try:
                await self._read_body(conn, stream, 65536)
                return True
            except _Reject:
                return False
        return False

    async def _send(self, conn: h11.Connection, stream: trio.SocketStream, ans: HttpAnswer,
                    extra: list[tuple[str, bytes]], *, close: bool, head_only: bool = False) -> bool:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return False
        headers: list[tuple[str, bytes]] = list(ans.headers)
        if not any(n == "content-type" for n, _ in headers):
            headers.append(("content-type", b"text/plain; charset=utf-8"))
        headers += [("content-length", str(len(ans.body)).encode()), ("x-content-type-options", b"nosniff")] + extra
        if close:
            headers.append(("connection", b"close"))
        try:
            data = conn.send(h11.Response(status_code=ans.status, headers=[(n.encode("ascii"), v) for n, v in headers],
                                          reason=_REASON.get(ans.status, "")))
            if not head_only:
                data += conn.send(h11.Data(data=ans.body))
            data += conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            self.d.log.warning("http_answer_unsendable", error=str(exc)[:200])
            return False
        with trio.move_on_after(self.cfg.request_timeout_s) as scope:
            await stream.send_all(data)
        return not scope.cancelled_caught


async def _linger_close(stream: trio.SocketStream) -> None:
    """Close after a refusal without losing the answer: send FIN, then read and drop what the client
    still sends (at most 1 s and 1 MiB) so that unread data does not turn the close into a reset
    that destroys the 413 before the client read it."""
    with trio.move_on_after(1.0):
        try:
            await stream.send_eof()
            n = 0
            while n < (1 << 20):
                data = await stream.receive_some(65536)
                if not data:
                    break
                n += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
    with trio.move_on_after(1.0):
        await stream.aclose()


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
