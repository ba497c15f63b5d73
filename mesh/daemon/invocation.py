"""The trio side of invocation: run a call here or forward it over a Noise stream, serve peers' calls.

``InvokeService`` drives the sans-IO :class:`mesh.invoke.invoker.Invoker` (target order, breakers,
retry rule). Per call:

1. the traceparent is validated (or a new trace is started from OS randomness);
2. the targets are planned: this node when ``daemon.workloads.hosts(deployment)``, then the nodes
   whose placement entry claims a running replica and that membership sees alive, nearest first;
3. each attempt runs locally (``workloads.invoke_local``) or goes to the target as an
   :class:`~mesh.invoke.messages.InvokeRequest` on the pooled stream to that node; the reply comes
   back on the same stream, matched by request id and by the authenticated sender;
4. a failed attempt goes to the next target only when it certainly did not run the guest.

Serving: an ``InvokeRequest`` from a peer runs locally (never forwarded again, so there are no
loops) under the caller's remaining deadline; the answer says whether the guest ran.

Where no replica claims ``running`` yet but the deployment is placed (``replicas`` > 0 and the
lifecycle's last evaluation chose nodes, or has not evaluated it yet), the call waits — within its
own deadline — for a replica to run (``Workloads.expects_replica``/``wait_change``), then proceeds.
An on-demand deployment (replicas = 0) with no replica running anywhere goes to
``Workloads.invoke_local`` here, which cold-starts it (``ensure_local``); a refusal (``NotHosted``:
no such deployment, or a deployment no node can take) ends as ``no_replica`` (HTTP 502).
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from mesh.daemon.api import ApiError, Request, json_answer
from mesh.daemon.workloads import NotHosted
from mesh.invoke.breaker import STATE_VALUE
from mesh.invoke.invoker import (
    BREAKER_OPEN, CONNECT_FAILED, NO_ANSWER, NO_REPLICA, STREAM_CLOSED, Invoker, http_status, replicas_of,
)
from mesh.invoke.messages import (
    BAD_REQUEST, GUEST_ERROR, INTERNAL, LIMIT, MAX_DEADLINE_MS, MAX_INVOKE_PAYLOAD, NOT_HOSTED, OK, OVERLOADED,
    KIND_HTTP, KIND_RAW, QUOTA, TIMEOUT, TRAP, UNAVAILABLE, InvokeReply, InvokeRequest,
)
from mesh.daemon.quotas import quota_guard
from mesh.ingress.cgi import CgiError, HttpCall
from mesh.invoke.trace import TraceContext, call_context, child_traceparent, parse_traceparent
from mesh.membership.state import MemberState
from mesh.metrics import PREFIX, FsyncHistogram
from mesh.wire import Outgoing, encode, is_valid_name

if TYPE_CHECKING:
    from mesh.daemon.node import Conn, Daemon

CALLERS = ("api", "http", "event")  # who asked for a call (the caller label of wasmatrix_invoke_calls_total)
MAX_SERVING = 256  # peer calls run at once; more are answered "overloaded" (not executed)
MAX_PENDING = 1024  # forwarded calls awaiting replies
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ERROR_REASONS = (
    BAD_REQUEST, BREAKER_OPEN, CONNECT_FAILED, GUEST_ERROR, INTERNAL, LIMIT, NO_ANSWER, NO_REPLICA, NOT_HOSTED,
    OVERLOADED, QUOTA, STREAM_CLOSED, TIMEOUT, TRAP, UNAVAILABLE,
)
# runtime error codes (runtime/errors.py WasmError.code) -> (reply code, executed)
_RUNTIME_CODES = {
    "trap": (TRAP, True),
    "timeout": (TIMEOUT, True),
    "limit_exceeded": (LIMIT, True),
    "guest_error": (GUEST_ERROR, True),
    "execution_error": (TRAP, True),
    "concurrency_rejected": (OVERLOADED, False),
    "module_not_loaded": (NOT_HOSTED, False),
}


def call_trace(traceparent: str | None) -> TraceContext:
    """The trace of a call asked for on this node (:func:`mesh.invoke.trace.call_context`): an invalid
    ``traceparent`` is the caller's error, ApiError 400. Shared by ``invoke`` and a quota refusal."""
    try:
        return call_context(traceparent, os.urandom)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


@dataclass(slots=True)
class Attempt:
    node: str
    code: str
    executed: bool
    status: int = 0
    output: bytes = b""
    message: str = ""
    seconds: float = 0.0
    cpu_s: float = 0.0  # guest run time on this node (a local attempt): what the tenant's CPU budget is charged

    def row(self) -> dict[str, Any]:
        return {"node": self.node, "code": self.code, "executed": self.executed, "ms": round(self.seconds * 1000, 3),
                "cpu_ms": round(self.cpu_s * 1000, 3)}


@dataclass(slots=True)
class _Pending:
    node: str
    conn: Any
    done: trio.Event = field(default_factory=trio.Event)
    reply: InvokeReply | None = None
    failure: str | None = None


class InvokeMetrics(Collector):
    """``wasmatrix_invoke_*`` families (docs/METRICS.md), read at scrape time."""

    def __init__(self, service: "InvokeService") -> None:
        self.s = service
        self.total = {"local": 0, "forwarded": 0, "none": 0}
        self.latency = {m: FsyncHistogram(LATENCY_BUCKETS) for m in self.total}
        self.errors = {r: 0 for r in ERROR_REASONS}
        self.retries = 0
        self.served = {"ok": 0, "error": 0}
        self.stray_replies = 0
        self.calls: Counter[tuple[str, str, str]] = Counter()  # (deployment, caller, code) -> calls

    def observe(self, mode: str, seconds: float, code: str, retries: int) -> None:
        self.total[mode] += 1
        self.latency[mode].observe(seconds)
        if code != OK:
            self.errors[code] = self.errors.get(code, 0) + 1
        self.retries += retries

    def collect(self) -> Iterator[Metric]:
        t = CounterMetricFamily(PREFIX + "invoke", "Invocations requested on this node, by where they ran "
                                "(local, forwarded to a peer, none: no target)", labels=["mode"])
        for m in sorted(self.total):
            t.add_metric([m], self.total[m])
        yield t
        h = HistogramMetricFamily(PREFIX + "invoke_latency_seconds", "Invocation latency seen by the caller's node",
                                  labels=["mode"])
        for m in sorted(self.latency):
            h.add_metric([m], self.latency[m].cumulative(), sum_value=self.latency[m].sum)
        yield h
        e = CounterMetricFamily(PREFIX + "invoke_errors", "Invocations that failed, by final reason", labels=["reason"])
        for r in sorted(self.errors):
            e.add_metric([r], self.errors[r])
        yield e
        c = CounterMetricFamily(PREFIX + "invoke_calls", "Invocations requested on this node, by function "
                                "(deployment), caller (api, http, event) and final code", labels=["deployment", "caller", "code"])
        for (dep, who, code), n in sorted(self.calls.items()):
            c.add_metric([dep, who, code], n)
        yield c
        yield CounterMetricFamily(PREFIX + "invoke_retries", "Attempts moved to another replica after a safe failure",
                                  value=self.retries)
        sv = CounterMetricFamily(PREFIX + "invoke_served", "Invocations run here for a peer, by outcome", labels=["outcome"])
        for k in sorted(self.served):
            sv.add_metric([k], self.served[k])
        yield sv
        yield CounterMetricFamily(PREFIX + "invoke_stray_replies",
                                  "Invoke replies matching no pending call (late, or from the wrong node)",
                                  value=self.stray_replies)
        g = GaugeMetricFamily(PREFIX + "invoke_breaker_state",
                              "Circuit breaker per target node: 0 closed, 1 half-open, 2 open", labels=["peer"])
        now = trio.current_time() if self.s.running else 0.0
        for node, st in self.s.invoker.states(now).items():
            g.add_metric([node], STATE_VALUE[st])
        yield g
        yield CounterMetricFamily(PREFIX + "invoke_breaker_transitions", "Circuit breaker state changes, all targets",
                                  value=sum(b.transitions for b in self.s.invoker.breakers.values()))


class InvokeService:
    """One per daemon: ``invoke`` for the API, ``receive`` for invoke messages, ``conn_gone`` for streams."""

    def __init__(self, daemon: "Daemon") -> None:
        self.d = daemon
        self.invoker = Invoker(daemon.node_id)
        self.pending: dict[int, _Pending] = {}
        self.next_id = int.from_bytes(os.urandom(6), "big")
        self.serving = 0
        self.running = False
        self.metrics = InvokeMetrics(self)

    def routes(self) -> dict[tuple[str, str], Any]:
        return {("POST", "/v1/invoke"): self.api_invoke}

    # ------------------------------------------------------------------ calling

    def _replicas(self, deployment: str) -> list[str]:
        intent = self.d.core.intent
        assert intent is not None  # a daemon always keeps the intent documents
        members = self.d.core.swim.members

        def alive(node: str) -> bool:
            m = members.peek(node)
            return m is not None and m.state == MemberState.ALIVE

        entries = ((n, [(r.deployment, r.state) for r in e.replicas]) for n, e in intent.doc.placements().items())
        return replicas_of(deployment, entries, alive)

    def _hosts(self, deployment: str) -> bool:
        try:
            return self.d.workloads.hosts(deployment)
        except Exception as exc:  # a supervisor bug must not fail the call path
            self.d.log.warning("workloads_hosts_failed", deployment=deployment, error=f"{type(exc).__name__}: {exc}")
            return False

    @quota_guard  # tenant quotas (mesh/daemon/quotas.py): admit before planning, release after
    async def invoke(self, deployment: str, payload: bytes, traceparent: str | None = None,
                     timeout: float | None = None, *, http: HttpCall | None = None,
                     caller: str = "api") -> dict[str, Any]:
        """Run ``deployment`` once somewhere; the result object the API answers (see docs/DAEMON.md).

        With ``http`` the call runs in HTTP form (docs/ABI.md "HTTP handlers": CGI env for a WASI
        command, HTTP/1.1 text for a direct handler; ``payload`` is then unused) and is forwarded
        as such. ``caller`` ("api", "http", "event") labels the metrics.
        """
        t0 = time.perf_counter()
        ctx = call_trace(traceparent)
        tp = ctx.header()
        log = self.d.log.bind(deployment=deployment, trace_id=ctx.trace_id, traceparent=tp)
        budget = self.invoker.timeout(timeout)
        start = trio.current_time()
        deadline = start + budget
        replicas = self._replicas(deployment)
        if not replicas and not self._hosts(deployment) and self.d.workloads.expects_replica(deployment):
            # Placed (or about to be) but no replica serves yet: wait for one, within the call's deadline.
            with trio.move_on_at(deadline):
                while not replicas and not self._hosts(deployment) and self.d.workloads.expects_replica(deployment):
                    await self.d.workloads.wait_change()
                    replicas = self._replicas(deployment)
            log.info("invoke_waited_for_start", ms=round((trio.current_time() - start) * 1000, 3), replicas=len(replicas))
        now = trio.current_time()
        plan = self.invoker.plan(
            deployment, hosts_local=self._hosts(deployment), replicas=replicas,
            rtt=lambda n: self.d.core.estimate_rtt(self.d.node_id, n), now=now,
            can_start_local=True,
        )
        attempts: list[Attempt] = []
        for node in plan.targets:
            now = trio.current_time()
            if deadline - now <= 0:
                break
            if not self.invoker.allow(node, now):
                attempts.append(Attempt(node, BREAKER_OPEN, False, message="circuit breaker open"))
                continue
            a0 = time.perf_counter()
            if node == self.d.node_id:
                att = await self._local(deployment, payload, tp, deadline - now, http, quiet=caller == "http")
            else:
                att = await self._forward(node, deployment, http.to_text() if http is not None else payload,
                                          child_traceparent(ctx, os.urandom(8)), deadline - now, log,
                                          KIND_HTTP if http is not None else KIND_RAW)
            att.seconds = time.perf_counter() - a0
            attempts.append(att)
            retry = self.invoker.record(node, att.code, att.executed, trio.current_time())
            if att.code == OK or not retry:
                break
            log.info("invoke_retry", target=node, code=att.code)
        seconds = time.perf_counter() - t0
        last = next((a for a in reversed(attempts) if a.code != BREAKER_OPEN), None)
        if last is not None and last.code == NOT_HOSTED and last.node == self.d.node_id and len(attempts) == 1 \
                and not plan.skipped:
            last = None  # the only try was a local start the supervisor refused: there is no replica
        if last is None:
            behind = sorted(set(plan.skipped) | {a.node for a in attempts if a.code == BREAKER_OPEN})
            code = BREAKER_OPEN if behind else NO_REPLICA
            msg = (f"every replica of {deployment} is behind an open circuit breaker ({', '.join(behind)})"
                   if code == BREAKER_OPEN else f"no replica of {deployment} is running on an alive node")
            last = Attempt("", code, False, message=msg)
        mode = "none" if not last.node else "local" if last.node == self.d.node_id else "forwarded"
        retries = sum(1 for a in attempts if a.code != BREAKER_OPEN) - 1 if attempts else 0
        self.metrics.observe(mode, seconds, last.code, max(0, retries))
        self.metrics.calls[(deployment, caller if caller in CALLERS else "api", last.code)] += 1
        m = self.d.core.swim.members.peek(last.node) if last.node else None
        result = {
            "deployment": deployment, "ok": last.code == OK, "code": last.code, "status": last.status,
            "output_b64": base64.b64encode(last.output).decode(), "output": last.output, "message": last.message,
            "node": last.node or None, "node_name": (m.meta.name if m is not None else "") or None,
            "mode": mode, "latency_ms": round(seconds * 1000, 3), "traceparent": tp,
            "attempts": [a.row() for a in attempts],
        }
        # A call from the HTTP ingress is logged by its http_request line: invoke_done only at debug when ok.
        (log.warning if last.code != OK else log.debug if caller == "http" else log.info)(
            "invoke_done", mode=mode, target=last.node or None, code=last.code, attempts=len(attempts),
            latency_ms=result["latency_ms"])
        return result

    async def _local(self, deployment: str, payload: bytes, tp: str, budget: float,
                     http: HttpCall | None = None, *, quiet: bool = False) -> Attempt:
        c0 = time.perf_counter()
        try:
            with trio.move_on_after(budget) as scope:
                res = await self.d.workloads.invoke_local(deployment, payload, traceparent=tp, http=http, quiet=quiet)
        except NotHosted as exc:  # the supervisor's refusal: the guest did not run
            return Attempt(self.d.node_id, NOT_HOSTED, False, message=str(exc)[:512])
        except Exception as exc:
            code, executed = _RUNTIME_CODES.get(getattr(exc, "code", ""), (INTERNAL, True))
            return Attempt(self.d.node_id, code, executed, message=f"{type(exc).__name__}: {exc}"[:512],
                           cpu_s=time.perf_counter() - c0 if executed else 0.0)
        if scope.cancelled_caught:
            return Attempt(self.d.node_id, TIMEOUT, True, message=f"no result within {budget:.3f} s",
                           cpu_s=time.perf_counter() - c0)
        status = int(res.status)
        if not -(2**31) <= status < 2**31:
            return Attempt(self.d.node_id, INTERNAL, True, message=f"exit status {status} out of range")
        return Attempt(self.d.node_id, OK, True, status=status, output=bytes(res.body), cpu_s=res.duration_s)

    async def _forward(self, node: str, deployment: str, payload: bytes, tp: str, budget: float, log: Any,
                       kind: int = KIND_RAW) -> Attempt:
        m = self.d.core.swim.members.peek(node)
        if m is None or len(self.pending) >= MAX_PENDING:
            return Attempt(node, CONNECT_FAILED if m is None else OVERLOADED, False,
                           message="unknown node" if m is None else "too many calls in flight")
        if len(payload) > MAX_INVOKE_PAYLOAD:
            return Attempt(node, BAD_REQUEST, False, message=f"payload of {len(payload)} bytes exceeds {MAX_INVOKE_PAYLOAD} (one frame)")
        rid = self.next_id = (self.next_id + 1) % (2**63)
        deadline_ms = max(1, min(MAX_DEADLINE_MS, int(budget * 1000)))
        req = InvokeRequest(rid, deployment, payload, tp, deadline_ms, kind)
        conn = self.d._stream_to(Outgoing(m.addr, b"", True, node, m.key or None))
        p = self.pending[rid] = _Pending(node, conn)
        log.info("invoke_forwarded", target=node, target_name=m.meta.name, request_id=rid, forwarded_traceparent=tp)
        try:
            if conn.closed:
                return Attempt(node, CONNECT_FAILED, False, message="stream to the node is closed")
            conn.send_frame(encode(self.d.node_id, req))
            with trio.move_on_after(budget):
                await p.done.wait()
        finally:
            self.pending.pop(rid, None)
        if p.reply is not None:
            r = p.reply
            return Attempt(node, r.code, r.executed, status=r.status, output=r.output, message=r.message)
        if p.failure is not None:
            return Attempt(node, p.failure, p.failure != CONNECT_FAILED,
                           message="could not connect" if p.failure == CONNECT_FAILED else "stream closed before the answer")
        return Attempt(node, NO_ANSWER, True, message=f"no answer within {budget:.3f} s")

    # ------------------------------------------------------------------ driver hooks

    def receive(self, sender: str, msg: Any, stream: Any) -> None:
        """An invoke message the core handed over (requests are served in the daemon's nursery)."""
        if isinstance(msg, InvokeReply):
            p = self.pending.get(msg.request_id)
            if p is None or p.node != sender or p.done.is_set():
                self.metrics.stray_replies += 1
                return
            p.reply = msg
            p.done.set()
        elif isinstance(msg, InvokeRequest):
            if self.serving >= MAX_SERVING:
                self._reply(stream, InvokeReply(msg.request_id, OVERLOADED, False, message="too many calls"))
                self.metrics.served["error"] += 1
                return
            self.serving += 1
            self.d.nursery.start_soon(self._serve, sender, msg, stream)

    def conn_gone(self, conn: "Conn") -> None:
        """A stream ended: calls waiting on it fail (never sent when it never came up)."""
        for p in self.pending.values():
            if p.conn is conn and not p.done.is_set():
                p.failure = STREAM_CLOSED if conn.session.established else CONNECT_FAILED
                p.done.set()

    async def _serve(self, sender: str, req: InvokeRequest, stream: Any) -> None:
        try:
            await self._serve_one(sender, req, stream)
        except Exception as exc:  # a bug here must not end the daemon's nursery: count, log, answer
            self.metrics.served["error"] += 1
            self.d.log.error("invoke_serve_failed", caller=sender, request_id=req.request_id,
                             error=f"{type(exc).__name__}: {exc}")
            self._reply(stream, InvokeReply(req.request_id, INTERNAL, True, message="internal error on the target"))
        finally:
            self.serving -= 1

    async def _serve_one(self, sender: str, req: InvokeRequest, stream: Any) -> None:
        t0 = time.perf_counter()
        m = self.d.core.swim.members.peek(sender)
        ctx = parse_traceparent(req.traceparent)
        assert ctx is not None  # InvokeRequest validates it
        log = self.d.log.bind(deployment=req.deployment, trace_id=ctx.trace_id, traceparent=req.traceparent,
                              caller=sender, caller_name=m.meta.name if m is not None else "", request_id=req.request_id)
        http: HttpCall | None = None
        bad = ""
        if req.kind == KIND_HTTP:
            try:
                http = HttpCall.from_text(req.payload)
            except CgiError as exc:
                bad = f"HTTP call: {exc}"
        if bad:
            att = Attempt(self.d.node_id, BAD_REQUEST, False, message=bad)
        elif not self._hosts(req.deployment):
            att = Attempt(self.d.node_id, NOT_HOSTED, False, message=f"{self.d.node_id} runs no replica of {req.deployment}")
        else:
            att = await self._local(req.deployment, req.payload, req.traceparent, req.deadline_ms / 1000, http)
        self.d.quotas.charge(req.deployment, att.cpu_s)  # the caller charges nothing for a forwarded call
        if len(att.output) > MAX_INVOKE_PAYLOAD:
            att = Attempt(att.node, LIMIT, True, message=f"output of {len(att.output)} bytes exceeds {MAX_INVOKE_PAYLOAD}")
        us = int((time.perf_counter() - t0) * 1e6)
        self._reply(stream, InvokeReply(req.request_id, att.code, att.executed, att.status, att.output,
                                        att.message[:512], us))
        self.metrics.served["ok" if att.code == OK else "error"] += 1
        (log.info if att.code == OK else log.warning)("invoke_served", code=att.code, executed=att.executed,
                                                      duration_ms=round(us / 1000, 3))

    def _reply(self, stream: Any, reply: InvokeReply) -> None:
        stream.send_frame(encode(self.d.node_id, reply))

    # ------------------------------------------------------------------ API

    async def api_invoke(self, req: Request) -> Any:
        body = req.json()
        dep = body.get("deployment")
        if not is_valid_name(dep):
            raise ApiError(400, "give deployment: a deployment name")
        raw = body.get("payload_b64", "")
        if not isinstance(raw, str):
            raise ApiError(400, "payload_b64 must be a base64 string")
        try:
            payload = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "payload_b64 is not valid base64") from None
        if len(payload) > MAX_INVOKE_PAYLOAD:
            raise ApiError(413, f"payload of {len(payload)} bytes exceeds {MAX_INVOKE_PAYLOAD}")
        tp = body.get("traceparent")
        if tp is not None and not isinstance(tp, str):
            raise ApiError(400, "traceparent must be a string")
        timeout = body.get("timeout_s")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not math.isfinite(timeout) or timeout <= 0):
            raise ApiError(400, "timeout_s must be a positive number")
        res = await self.invoke(dep, payload, tp, timeout)
        del res["output"]  # bytes: the JSON answer carries output_b64
        if res["ok"]:
            return json_answer(res)
        res["error"] = res["message"] or res["code"]
        # The HTTP ingress's table (a trap 500, no healthy replica 502, ...); ok answers 200 above.
        status, ctype, out = json_answer(res, http_status(res["code"]))
        if status == 429:  # quota or overloaded; RFC 9110 Retry-After: whole seconds, rounded up
            return status, ctype, out, [("retry-after", str(max(1, math.ceil(res.get("retry_after_s") or 1))))]
        return status, ctype, out
