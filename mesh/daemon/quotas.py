"""The daemon side of tenant quotas: admission around every invocation, CPU usage gossip, API, metrics.

The rules are :mod:`mesh.invoke.quota`'s (sans-IO); this module feeds it the clocks, the tenants'
limits from the replicated intent (kind ``tenant``), and the CPU labels of the alive members, and
publishes this node's own usage in its metadata (label ``wasmatrix.cpu``).

Admission wraps :meth:`mesh.daemon.invocation.InvokeService.invoke` (:func:`quota_guard`), so the
control API, HTTP ingress and event deliveries all pass through it, before any target is planned.
A refused call is not executed and never retried: the result has ``code`` ``"quota"`` and
``retry_after_s``; ``POST /v1/invoke`` answers it 429 with a ``Retry-After`` header.

CPU time: for a call run here, the guest's run time as the runtime measured it (``duration_s`` of
the result; for a call that failed in the guest, the time the call took here). A forwarded call is
charged by the node that ran it (to its own usage, which it gossips); the caller counts it only
against concurrency and the per-minute rate.
"""

from __future__ import annotations

import functools
import math
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterator

import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from crdt.schema import DEFAULT_TENANT, TenantQuota
from mesh.daemon.api import Request, json_answer
from mesh.errors import ConfigError
from mesh.invoke.quota import CPU_LABEL, MAX_LABEL_CHARS, REASONS, QuotaCore, Rejected, default_limits
from mesh.membership.state import MemberState
from mesh.metrics import PREFIX

if TYPE_CHECKING:
    from mesh.daemon.node import Daemon

QUOTA = "quota"  # the invocation error code (mesh.invoke.messages.QUOTA)
GOSSIP_POLL_S = 0.25  # how often peers' labels are read and our own publication considered
_COUNTED_STATES = (MemberState.ALIVE, MemberState.SUSPECT)  # a suspect may still be running calls


class QuotaService:
    """One per daemon (``daemon.quotas``)."""

    def __init__(self, daemon: "Daemon") -> None:
        self.d = daemon
        self.core = QuotaCore(self.limits)
        self.publish_failures = 0
        self.metrics = QuotaMetrics(self)

    # --- lookups (every call does them: IntentDoc keeps both answers until the view changes) ----

    @property
    def _doc(self) -> Any:
        return self.d.core.intent.doc  # type: ignore[union-attr]

    def limits(self, tenant: str) -> TenantQuota:
        """The tenant's replicated quota record, or the defaults."""
        return self._doc.tenant(tenant) or default_limits(tenant)

    def tenant_of(self, deployment: str) -> str | None:
        """The deployment's tenant; None when this node knows no such deployment."""
        return self._doc.deployment_tenant(deployment)

    def charge(self, deployment: str, cpu_seconds: float) -> None:
        """A call served here for another node used ``cpu_seconds`` of its tenant's budget."""
        tenant = self.tenant_of(deployment)
        if tenant is not None:
            self.core.charge(tenant, cpu_seconds, time.time())

    # --- gossip ---------------------------------------------------------------------------

    def sync(self, now: float) -> None:
        """Read the alive members' CPU labels; publish ours when due."""
        peers: dict[str, str | None] = {}
        for node, m in self.d.core.swim.members.items():
            if node == self.d.node_id:
                continue
            peers[node] = dict(m.meta.labels).get(CPU_LABEL) if m.state in _COUNTED_STATES else None
        self.core.observe_peers(peers)
        if self.d._leaving or self.d._stopping:
            return  # a metadata update now would gossip an Alive over our Left
        text = self.core.publication(now, time.time())
        if text is None:
            return
        from mesh.daemon.node import _meta_fields

        core = self.d.core
        limit = MAX_LABEL_CHARS
        while True:
            labels = dict(core.meta.labels)
            labels[CPU_LABEL] = text
            try:
                meta = type(core.meta)(**{**_meta_fields(core.meta), "labels": tuple(sorted(labels.items()))})
                break
            except ConfigError as exc:  # the metadata is bounded: publish fewer tenants
                self.publish_failures += 1
                limit //= 2
                if limit < 16:
                    self.d.log.warning("quota_usage_not_gossiped", error=str(exc))
                    self.core.published(text, now)  # do not retry before the next interval
                    return
                from mesh.invoke.quota import decode_usage, encode_usage

                day, usage = decode_usage(text)
                text = encode_usage(day, usage, limit)
        core.update_meta(meta, now)
        self.core.published(text, now)
        self.d.emit([])

    async def loop(self) -> None:
        while True:
            await trio.sleep(GOSSIP_POLL_S)
            try:
                self.sync(trio.current_time())
            except Exception as exc:  # a bug here must not end the daemon's nursery
                self.d.log.error("quota_sync_failed", error=f"{type(exc).__name__}: {exc}")

    # --- API ------------------------------------------------------------------------------

    def routes(self) -> dict[tuple[str, str], Any]:
        return {("GET", "/v1/tenants"): self.api_tenants}

    def rows(self) -> list[dict[str, Any]]:
        """Every tenant with a record, in use by a deployment, or with usage: limits and usage as this node sees it."""
        doc = self._doc
        names = {q.name for q in doc.tenants()}
        names |= {dep.spec.tenant for dep in doc.deployments()}
        rows = self.core.usage_rows(trio.current_time(), time.time(), names)
        recorded = {q.name for q in doc.tenants()}
        for r in rows:
            r["record"] = r["tenant"] in recorded
        return rows

    async def api_tenants(self, req: Request) -> tuple[int, str, bytes]:
        return json_answer(self.rows())


def quota_guard(fn: Callable[..., Awaitable[dict[str, Any]]]) -> Callable[..., Awaitable[dict[str, Any]]]:
    """Wrap ``InvokeService.invoke``: admit the call for its deployment's tenant first, release it after.

    The result gains ``tenant`` and ``retry_after_s`` (set on a ``quota`` refusal).
    """

    @functools.wraps(fn)
    async def invoke(self: Any, deployment: str, payload: bytes, traceparent: str | None = None,
                     timeout: float | None = None, **kw: Any) -> dict[str, Any]:
        q: QuotaService = self.d.quotas
        tenant = q.tenant_of(deployment)
        if tenant is None:  # no such deployment here: nothing to count; the call fails as before
            res = await fn(self, deployment, payload, traceparent, timeout, **kw)
            res.update(tenant=DEFAULT_TENANT, retry_after_s=None)
            return res
        decision = q.core.admit(tenant, trio.current_time(), time.time())
        if isinstance(decision, Rejected):
            return _refused(self, deployment, decision, traceparent, str(kw.get("caller", "api")))
        cpu = 0.0
        try:
            res = await fn(self, deployment, payload, traceparent, timeout, **kw)
            me = self.d.node_id
            cpu = sum(a.get("cpu_ms", 0.0) for a in res["attempts"] if a["node"] == me) / 1000
        finally:
            q.core.release(tenant, cpu if math.isfinite(cpu) else 0.0, time.time())
        res.update(tenant=tenant, retry_after_s=None)
        return res

    return invoke


def _refused(svc: Any, deployment: str, r: Rejected, traceparent: str | None, caller: str) -> dict[str, Any]:
    """The result of a call a quota refused (not executed): the shape ``invoke`` answers."""
    from mesh.daemon.invocation import CALLERS, call_trace  # that module imports this one

    tp = call_trace(traceparent).header()
    svc.metrics.observe("none", 0.0, QUOTA, 0)
    svc.metrics.calls[(deployment, caller if caller in CALLERS else "api", QUOTA)] += 1
    svc.d.log.warning("invoke_quota_refused", deployment=deployment, tenant=r.tenant, reason=r.reason,
                      retry_after_s=r.retry_after_s, traceparent=tp)
    return {
        "deployment": deployment, "ok": False, "code": QUOTA, "status": 0, "output_b64": "", "output": b"",
        "message": f"{r.message}; retry in {r.retry_after_s:g} s",
        "node": None, "node_name": None, "mode": "none", "latency_ms": 0.0, "traceparent": tp, "attempts": [],
        "tenant": r.tenant, "retry_after_s": r.retry_after_s, "quota_reason": r.reason,
    }


class QuotaMetrics(Collector):
    def __init__(self, svc: QuotaService) -> None:
        self.s = svc

    def collect(self) -> Iterator[Metric]:
        core = self.s.core
        rej = CounterMetricFamily(PREFIX + "quota_rejections", "Calls refused by a tenant quota, by tenant and reason "
                                  "(concurrency, rate: per node; cpu: the mesh-wide daily budget)", labels=["tenant", "reason"])
        for (tenant, reason), n in sorted(core.rejections.items()):
            rej.add_metric([tenant, reason], n)
        yield rej
        cpu = GaugeMetricFamily(PREFIX + "tenant_cpu_seconds_today",
                                "CPU seconds the tenant's guests used today (UTC), mesh-wide as this node knows it", labels=["tenant"])
        wall = time.time()
        for tenant in core.tenants():
            cpu.add_metric([tenant], core.cpu_used(tenant, wall))
        yield cpu
        yield CounterMetricFamily(PREFIX + "quota_bad_labels", "Members' CPU usage labels that did not decode (ignored)",
                                  value=core.bad_labels)


__all__ = ["QUOTA", "QuotaService", "quota_guard", "REASONS"]
