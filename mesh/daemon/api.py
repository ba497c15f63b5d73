"""The node's control API: a small HTTP/1.1 JSON server (h11 on trio) and its blocking client.

Routes (JSON bodies; every ``/v1`` route needs ``Authorization: Bearer TOKEN`` with the token from
``DATA_DIR/api.json``):

=======  ==================  ====================================================
GET      /v1/status          node id, name, addresses, incarnation, member counts
GET      /v1/members         one object per known member (see ``wasmatrix members``)
POST     /v1/join            ``{"addr": "HOST:PORT"}``: push-pull with that node
POST     /v1/leave           graceful leave, then the daemon exits 0
POST     /v1/meta            ``{"set": {"k": "v"}, "unset": ["k"]}``: change labels
GET      /v1/intent/head     where a signer's next record goes (mesh/daemon/intentapi.py)
POST     /v1/intent/records  client-signed records, answered once durable (crdt/client.py signs)
POST     /v1/invoke          run a deployment here or on a replica (mesh/daemon/invocation.py)
GET      /v1/placements      targets, claims, --explain; /v1/placements/check: agreement (mesh/daemon/placements.py)
GET      /metrics            Prometheus text (no token: scrapers carry none; bind the API to loopback)
=======  ==================  ====================================================

Hostile clients are bounded: request head <= 16 KiB, body <= 1 MiB, 64 connections, 10 s to send
a request, 30 s idle keep-alive. Errors are JSON ``{"error": "..."}`` with 400/401/404/405/413/500.
"""

from __future__ import annotations

import hmac
import http.client
import json
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import secrets

import h11
import structlog
import trio

MAX_HEAD = 16 << 10
MAX_BODY = 1 << 20
MAX_CONNECTIONS = 64
REQUEST_TIMEOUT = 10.0
IDLE_TIMEOUT = 30.0


class ApiError(Exception):
    """An error answer: ``status`` and a one-line message."""

    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []  # extra response headers, e.g. Retry-After on a 429


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: str
    body: bytes
    auth: bytes = b""

    def json(self) -> dict[str, Any]:
        """The body as a JSON object (400 otherwise)."""
        if not self.body:
            return {}
        try:
            obj = json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "body is not valid JSON") from None
        if not isinstance(obj, dict):
            raise ApiError(400, "body must be a JSON object")
        return obj


# A handler returns (status, content type, body bytes).
Handler = Callable[[Request], Awaitable[tuple[int, str, bytes]]]


class ApiServer:
    """Serves ``routes`` ({(method, path): handler}) with bearer-token auth on ``/v1``."""

    def __init__(self, token: str, routes: dict[tuple[str, str], Handler], counters: dict[str, int], log: Any,
                 body_limits: dict[str, int] | None = None) -> None:
        self.token = token
        self.body_limits = body_limits or {}  # path -> larger body bound (module uploads)
        self.routes = routes
        self.counters = counters
        self.log = log
        self._conns = 0
        for k in ("api_requests", "api_ok", "api_failed", "api_errors", "api_unauthorized", "api_bad_requests",
                  "api_connections_refused"):
            counters.setdefault(k, 0)

    async def serve(self, listeners: list[trio.SocketListener]) -> None:
        await trio.serve_listeners(self._conn, listeners)

    async def _conn(self, stream: trio.SocketStream) -> None:
        if self._conns >= MAX_CONNECTIONS:
            self.counters["api_connections_refused"] += 1
            await stream.aclose()
            return
        self._conns += 1
        try:
            await self._serve_conn(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            pass
        finally:
            self._conns -= 1
            await stream.aclose()

    async def _serve_conn(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        while True:
            req: Request | None = None
            request_id = ""
            structlog.contextvars.clear_contextvars()
            status, ctype, body = 500, "application/json", b""
            extra: list[tuple[str, str]] = []
            try:
                with trio.fail_after(IDLE_TIMEOUT if conn.their_state is h11.IDLE else REQUEST_TIMEOUT):
                    req = await self._read_request(conn, stream)
                if req is None:
                    return
                self.counters["api_requests"] += 1
                # Every log line this request causes carries its id (structlog contextvars are
                # per trio task, and each connection is one task); the client gets it back.
                request_id = secrets.token_hex(8)
                structlog.contextvars.bind_contextvars(request_id=request_id)
                # A handler answers (status, content type, body) or that plus extra headers.
                status, ctype, body, *more = await self._dispatch(req, conn)
                extra = list(more[0]) if more else []
                # A handler's own error answer (e.g. 504 from join) is "failed", not a server error.
                self.counters["api_ok" if status < 400 else "api_failed"] += 1
            except trio.TooSlowError:
                return
            except ApiError as exc:
                if exc.status == 401:
                    self.counters["api_unauthorized"] += 1
                else:
                    self.counters["api_bad_requests"] += 1
                status, body = exc.status, _err(exc.message)
                extra = exc.headers
            except h11.RemoteProtocolError as exc:
                self.counters["api_bad_requests"] += 1
                status, body = exc.error_status_hint, _err(f"bad request: {exc}")
            except Exception as exc:  # a bug in a handler: answer 500, keep serving
                self.counters["api_errors"] += 1
                self.log.error("api_handler_failed", error=f"{type(exc).__name__}: {exc}")
                status, body = 500, _err(f"internal error: {type(exc).__name__}")
            if req is not None:
                # Changes are logged at info, reads at debug (scrapers and pollers read a lot).
                (self.log.info if req.method != "GET" else self.log.debug)(
                    "api_request", method=req.method, path=req.path, status=status)
            if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
                return
            headers = [("content-type", ctype), ("content-length", str(len(body)))]
            if request_id:
                headers.append(("x-request-id", request_id))
            headers.extend(extra)
            if status >= 400 and req is None:
                headers.append(("connection", "close"))
            try:
                await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
                await stream.send_all(conn.send(h11.Data(data=body)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
            except h11.LocalProtocolError:
                return
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _read_request(self, conn: h11.Connection, stream: trio.SocketStream) -> Request | None:
        head: h11.Request | None = None
        body = bytearray()
        limit = MAX_BODY
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                if not data and conn.their_state is h11.IDLE:
                    return None
                continue
            if isinstance(event, h11.ConnectionClosed):
                return None
            if isinstance(event, h11.Request):
                head = event
                limit = self.body_limits.get(event.target.decode("ascii", "replace").partition("?")[0], MAX_BODY)
                for name, value in event.headers:
                    if name == b"content-length" and (len(value) > 12 or int(value) > limit):
                        raise ApiError(413, f"body larger than {limit} bytes")
                continue
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > limit:
                    raise ApiError(413, f"body larger than {limit} bytes")
                continue
            if isinstance(event, h11.EndOfMessage):
                assert head is not None
                target = head.target.decode("ascii", "replace")
                path, _, query = target.partition("?")
                auth = dict(head.headers).get(b"authorization", b"")
                return Request(head.method.decode("ascii", "replace"), path, query, bytes(body), auth)

    async def _dispatch(self, req: Request, conn: h11.Connection) -> Any:
        if req.path.startswith("/v1/"):
            expected = f"Bearer {self.token}".encode()
            if not hmac.compare_digest(req.auth, expected):
                raise ApiError(401, "missing or wrong API token (see DATA_DIR/api.json, or pass --token)")
        handler = self.routes.get((req.method, req.path))
        if handler is None:
            allowed = sorted(m for (m, p) in self.routes if p == req.path)
            if allowed:
                raise ApiError(405, f"{req.method} not allowed on {req.path}; use {', '.join(allowed)}")
            raise ApiError(404, f"no route {req.path}")
        return await handler(req)


def _err(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def json_answer(obj: Any, status: int = 200) -> tuple[int, str, bytes]:
    """A JSON response tuple."""
    return status, "application/json", json.dumps(obj, sort_keys=True).encode()


# ------------------------------------------------------------------------------------------ client


class ApiClientError(Exception):
    """The node could not be reached, or answered with an error (``status`` 0 when unreachable)."""

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body  # the decoded JSON error answer, when there was one


class ApiClient:
    """Blocking client for the CLI: ``ApiClient("127.0.0.1:7947", token).get("/v1/members")``."""

    def __init__(self, addr: str, token: str, timeout: float = 10.0) -> None:
        host, _, port = addr.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.addr = addr
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> Any:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            payload = raw if raw is not None else (None if body is None else json.dumps(body).encode())
            headers = {"Authorization": f"Bearer {self.token}"}
            if payload is not None:
                headers["Content-Type"] = "application/octet-stream" if raw is not None else "application/json"
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            data = resp.read(MAX_BODY * 16)
        except OSError as exc:
            raise ApiClientError(0, f"cannot reach the node API at {self.addr}: {exc.strerror or exc}") from None
        except http.client.HTTPException as exc:
            raise ApiClientError(0, f"bad answer from the node API at {self.addr}: {exc}") from None
        finally:
            conn.close()
        try:
            obj = json.loads(data) if data else None
        except ValueError:
            obj = None
        if resp.status >= 400:
            msg = obj.get("error") if isinstance(obj, dict) else data[:200].decode("utf-8", "replace")
            raise ApiClientError(resp.status, str(msg), obj)
        return obj

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body if body is not None else {})
