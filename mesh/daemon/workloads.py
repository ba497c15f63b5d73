"""The daemon's workload lifecycle: placement on every relevant change, a supervisor, a runtime.

One :class:`Workloads` per daemon, running in the daemon's nursery (docs/LIFECYCLE.md):

* **Inputs.** The daemon calls :meth:`Workloads.changed` when an intent record of a kind that
  matters (registry, deployments, placement, trust) becomes visible and
  :meth:`Workloads.member_events` with the membership events it drains. Either wakes the loop.
* **Evaluation.** The loop builds a :class:`scheduler.View` from membership (alive and suspect
  members are eligible, their ``NodeMeta``, Vivaldi coordinates, failed marks and blob holdings
  from the placement document) and a :class:`scheduler.PlacementSpec` per deployment, computes
  ``place(...)`` with the incumbents of the placement document, and hands this node's targets to
  the :class:`scheduler.supervisor.Supervisor`. Every node computes the same placement from the
  same view, so nobody coordinates: each node starts what it is assigned and stops the rest.
* **Actions** run as tasks: ``start`` = blob from the nearest peer holding it → signature and
  hash check (``Runtime.admit``) → compile through the cache → warm the pool; ``stop`` = stop
  serving, drain in-flight calls, unload. Results go back to the supervisor; its claims are
  written into this node's placement entry (``IntentNode.set_placement``).
* **Outputs** other code uses: :meth:`hosts`, :meth:`invoke_local`, :meth:`ensure_local`,
  :attr:`events` (an :class:`EventHub`: recent events and subscriptions, as dicts).

Everything here runs on the trio thread except guest code and compilation (worker threads).
"""

from __future__ import annotations

import math
import time
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator

import structlog
import trio
from prometheus_client import Counter, Gauge, Histogram

from crdt.errors import CrdtError, NotFound
from crdt.schema import ReplicaClaim
from mesh.ingress.cgi import HttpCall, cgi_env
from mesh.membership.state import MemberState
from runtime import Capabilities, Runtime, RuntimeConfig, SignedManifest
from runtime.errors import HostResourceError, WasmError, WasmTrap
from runtime.abi import Abi
from runtime.invocation import InvocationResult, Request
from runtime.kv import LoopKV
from mesh.lifecycle import COORD_LABEL, COORD_THRESHOLD_S, Assignment, active_version, assign, coord_moved, digests, encode_coord
from scheduler.supervisor import Action, Supervisor, SupervisorConfig, Target

if TYPE_CHECKING:
    from mesh.daemon.node import Daemon

WATCHED_KINDS = frozenset({"registry", "deployments", "placement", "trust"})
COORD_MIN_INTERVAL_S = 2.0  # at most one coordinate publication (a metadata update) per this long


class NotHosted(Exception):
    """No running replica of the deployment on this node (and no on-demand start allowed)."""


@dataclass(frozen=True, slots=True)
class WorkloadsConfig:
    """Daemon-side lifecycle settings (the supervisor's own policy is in ``supervisor``)."""

    supervisor: SupervisorConfig = SupervisorConfig()
    standbys: int = 1  # 0: none; else each replica's replacement pre-fetches and pre-compiles (warm failover)
    fetch_timeout_s: float = 30.0
    drain_timeout_s: float = 30.0
    ensure_timeout_s: float = 30.0
    events_kept: int = 1000
    compile_isolation: str = "process"


class EventHub:
    """Lifecycle events as dicts: a bounded ring of recent ones plus waiters for new ones.

    Every event gets ``seq`` (1, 2, ... per node run), ``ts`` (wall clock, seconds), ``mono``
    (``time.monotonic()``: one clock for every process of the host, for benches) and ``node``.
    """

    def __init__(self, node_id: str, keep: int = 1000) -> None:
        self.node_id = node_id
        self.ring: deque[dict[str, Any]] = deque(maxlen=keep)
        self.seq = 0
        self._new = trio.Event()
        self.log = structlog.get_logger("wasmatrix.lifecycle").bind(node_id=node_id)

    def publish(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.seq += 1
        ev = {"seq": self.seq, "ts": round(time.time(), 6), "mono": time.monotonic(), "node": self.node_id, "kind": kind, **fields}
        self.ring.append(ev)
        self._new.set()
        self._new = trio.Event()
        self.log.info("lifecycle_" + kind, **{k: v for k, v in fields.items() if k != "nodes" or len(v) < 16})
        return ev

    def recent(self, after: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        out = [e for e in self.ring if e["seq"] > after]
        return out[-limit:] if limit else out

    async def wait(self, after: int, timeout: float) -> list[dict[str, Any]]:
        """Events with ``seq > after``; waits up to ``timeout`` for the first one (long poll)."""
        with trio.move_on_after(timeout):
            while self.seq <= after:
                await self._new.wait()
        return self.recent(after)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """``async with hub.subscribe() as stream: async for ev in stream`` from now on."""
        start = self.seq

        async def gen() -> AsyncIterator[dict[str, Any]]:
            seen = start
            while True:
                for ev in await self.wait(seen, 3600.0):
                    seen = ev["seq"]
                    yield ev

        yield gen()


class WorkloadMetrics:
    """Lifecycle families on the node's registry (docs/METRICS.md)."""

    def __init__(self, registry: Any) -> None:
        kw = {"registry": registry}
        self.decisions = Counter("wasmatrix_placement_decisions", "Placements computed whose result changed, by deployment", ["deployment"], **kw)
        self.evaluations = Counter("wasmatrix_placement_evaluations", "Placement evaluations (all deployments) run by this node", **kw)
        self.evaluation_seconds = Histogram("wasmatrix_placement_evaluation_seconds",
                                            "Time of one placement evaluation (view, every deployment placed, targets reconciled)",
                                            buckets=(0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0), **kw)
        self.moved = Counter("wasmatrix_replicas_moved", "Replicas whose node changed in a placement decision", ["deployment"], **kw)
        self.running = Gauge("wasmatrix_replicas_running", "Replicas running on this node, by deployment", ["deployment"], **kw)
        self.starts = Counter("wasmatrix_replica_starts", "Replica starts finished on this node, by outcome", ["outcome"], **kw)
        self.stops = Counter("wasmatrix_replica_stops", "Replicas stopped (drained and unloaded) on this node", **kw)
        self.restarts = Counter("wasmatrix_replica_restarts", "Replica restarts scheduled after a failure (backoff)", **kw)
        self.crashes = Counter("wasmatrix_replica_crashes", "Serving instances that crashed or trapped", **kw)
        self.failed = Counter("wasmatrix_replica_failed", "Replicas marked failed (restart budget spent)", **kw)
        self.failovers = Counter("wasmatrix_failovers", "Replicas this node took over from a dead or departed node", **kw)
        self.switches = Counter("wasmatrix_version_switches", "Serving version switches (roll forward or back)", ["warm"], **kw)
        self.errors = Counter("wasmatrix_workload_errors", "Lifecycle steps that failed inside the daemon (counted, never raised), by reason",
                              ["reason"], **kw)
        for r in ("evaluate", "action", "claim"):
            self.errors.labels(reason=r)
        for o in ("ok", "error"):
            self.starts.labels(outcome=o)
        for w in ("true", "false"):
            self.switches.labels(warm=w)


# -- the manager -----------------------------------------------------------------------------


class Workloads:
    """Places, starts, stops and serves this node's replicas (see the module docstring)."""

    def __init__(self, daemon: "Daemon", config: WorkloadsConfig = WorkloadsConfig()) -> None:
        self.d = daemon
        self.config = config
        self.node_id = daemon.node_id
        self.log = structlog.get_logger("wasmatrix.workloads").bind(node_id=self.node_id)
        self.sup = Supervisor(self.node_id, config.supervisor)
        self.events = EventHub(self.node_id, config.events_kept)
        self.metrics = WorkloadMetrics(daemon.registry)
        self.rt: Runtime | None = None
        self._dirty = trio.Event()
        self._state = trio.Event()  # set (and replaced) whenever a replica's state changed
        self._blob_event = trio.Event()
        self._written = -1  # supervisor version of the last placement entry written
        self._placements: dict[str, tuple[str, ...]] = {}  # last placement computed, per deployment
        self.last: Assignment | None = None  # the last evaluation (its inputs too): placements --explain, digests
        self._keys: dict[tuple[str, str], str] = {}  # (deployment, version) -> runtime module key
        self._users: dict[str, set[tuple[str, str]]] = {}  # runtime key -> (deployment, version) using it
        self._loading: dict[str, int] = {}  # runtime key -> loads in flight
        self._inflight: dict[str, int] = {}
        self._drained = trio.Event()
        self._dead_at: dict[str, float] = {}  # node -> time.monotonic() of its death declaration here
        self._taking_over: dict[str, str] = {}  # deployment -> dead node it replaces here
        self._timing: dict[tuple[str, str], dict[str, float]] = {}  # start phases of the last load, for the running event
        self._coord_published: tuple[float, ...] | None = None  # the coordinate last put in our metadata
        self._coord_next = 0.0  # no publication before (trio time)
        self._coord_due: float | None = None  # a publication waits for this time
        self._claims_seen: dict[str, dict[str, tuple[str, str]]] | None = None  # others' claims at the last evaluation
        self._changed_at: float | None = None  # time.monotonic() of the first change not yet evaluated
        self._eval_cause: float | None = None  # ... of the change the current evaluation answers
        self.nursery: trio.Nursery | None = None
        self.evaluations = 0
        self._gauged: set[str] = set()  # deployments with a replicas_running series
        if daemon.core.blobs is not None:
            daemon.core.blobs.on_done = self._blob_done

    # -- inputs from the daemon ------------------------------------------------------------

    def changed(self) -> None:
        """Something placement depends on changed (a record applied, metadata, trust)."""
        if self._changed_at is None:
            self._changed_at = time.monotonic()
        self._dirty.set()

    def record_visible(self, kind: str) -> None:
        if kind in WATCHED_KINDS:
            self.changed()

    def member_events(self, events: list[Any]) -> None:
        for ev in events:
            if ev.node == self.node_id:
                continue
            if ev.kind in ("dead", "left"):
                self._dead_at[ev.node] = time.monotonic()
                self.events.publish("node_" + ev.kind, member=ev.node)
            elif ev.kind in ("join", "alive"):
                self._dead_at.pop(ev.node, None)
        if events:
            self.changed()

    def _blob_done(self, sha256: str, ok: bool, why: str) -> None:
        self._blob_event.set()
        self._blob_event = trio.Event()

    # -- public interface ------------------------------------------------------------------

    def hosts(self, deployment: str) -> bool:
        """True when a replica of ``deployment`` runs (and serves) on this node."""
        return self.sup.serving(deployment) is not None

    def expects_replica(self, deployment: str) -> bool:
        """True while a replica of ``deployment`` should come: the deployment asks for replicas and
        the last evaluation placed it on some node, or has not evaluated it yet (a record just arrived)."""
        intent = self.d.core.intent
        try:
            dep = intent.doc.deployment(deployment)  # type: ignore[union-attr]
        except NotFound:
            return False
        if dep.spec.replicas == 0:
            return False
        last = self.last
        if last is None or (deployment not in last.placements and not last.errors.get(deployment)):
            return True  # not evaluated yet, or its registry record is still on its way
        return bool(last.placements.get(deployment, ((), ""))[0])

    async def wait_change(self) -> None:
        """Return after the next evaluation or local replica state change."""
        await self._state.wait()

    async def invoke_local(self, deployment: str, payload: bytes, *, traceparent: str | None = None,
                           http: HttpCall | None = None, quiet: bool = False) -> InvocationResult:
        """Run one call on this node's replica (on a worker thread); cold-starts an on-demand deployment.

        Raises :class:`NotHosted` when no replica runs here and the deployment is not on demand,
        or a ``runtime.errors.WasmError`` from the guest. A trap counts as a crash of the replica
        (kill and restart with backoff). With ``http`` the guest gets the request in HTTP form
        (docs/ABI.md "HTTP handlers"): CGI env + body on stdin for a WASI command, the HTTP/1.1
        text for a direct handler; ``payload`` is then unused. ``quiet``: the caller writes its own
        line for the call (the HTTP ingress): ``invoke_local`` is then at debug level.
        """
        version = self.sup.serving(deployment)
        if version is None:
            await self.ensure_local(deployment)
            version = self.sup.serving(deployment)
            if version is None:
                raise NotHosted(f"deployment {deployment} has no running replica on this node")
        key = self._keys[(deployment, version)]
        assert self.rt is not None
        self._inflight[deployment] = self._inflight.get(deployment, 0) + 1
        self.sup.touch(deployment, trio.current_time())
        try:
            if http is None:
                request = Request(body=bytes(payload))
            elif self.rt.module(key).abi is Abi.DIRECT:
                request = Request(body=http.to_text())
            else:
                request = Request.build(http.body, env=cgi_env(http))
            res = await self.rt.invoke(key, request)
            if traceparent:
                (self.log.debug if quiet else self.log.info)("invoke_local", deployment=deployment, version=version, traceparent=traceparent,
                              ms=round(res.duration_s * 1000, 3), status=res.status)
            return res
        except WasmError as exc:
            if not isinstance(exc, (WasmTrap, HostResourceError)):
                if traceparent:
                    self.log.info("invoke_local_failed", deployment=deployment, version=version, traceparent=traceparent, code=exc.code)
                raise
            self.log.warning("replica_crashed", deployment=deployment, version=version, error=str(exc)[:200], traceparent=traceparent)
            self.metrics.crashes.inc()
            self.events.publish("crashed", deployment=deployment, version=version, error=str(exc)[:200])
            self._apply(self.sup.crashed(deployment, version, type(exc).__name__, trio.current_time()))
            raise
        finally:
            n = self._inflight[deployment] - 1
            self._inflight[deployment] = n
            if n == 0:
                self._drained.set()
                self._drained = trio.Event()

    async def ensure_local(self, deployment: str) -> None:
        """Cold-start a replica of an on-demand (``replicas = 0``) deployment here; raise NotHosted otherwise."""
        if self.sup.serving(deployment) is not None:
            return
        doc = self.d.core.intent.doc  # type: ignore[union-attr]
        try:
            dep = doc.deployment(deployment)
        except NotFound:
            raise NotHosted(f"no deployment named {deployment!r}") from None
        if dep.spec.replicas != 0:
            raise NotHosted(f"deployment {deployment} has no running replica on this node (it runs {dep.spec.replicas} placed replicas)")
        version = active_version(doc, dep)
        if version is None:
            raise NotHosted(f"deployment {deployment} has no published version matching {dep.spec.version}")
        self._apply(self.sup.ensure(deployment, version, trio.current_time()))
        with trio.move_on_after(self.config.ensure_timeout_s):
            while self.sup.serving(deployment) is None:
                r = self.sup.replicas.get(deployment)
                if r is None or r.state in ("failed", "stopping") or (r.state == "backoff"):
                    break
                await self._state.wait()
        if self.sup.serving(deployment) is None:
            raise NotHosted(f"deployment {deployment} could not be started on this node")

    def replicas(self) -> list[dict[str, Any]]:
        """This node's replicas (local state) for ``GET /v1/workloads``."""
        out = []
        for dep in sorted(self.sup.replicas):
            r = self.sup.replicas[dep]
            out.append({
                "deployment": dep, "index": r.index, "version": r.version, "state": r.state, "serving": r.serving,
                "warm": sorted(r.warm), "failures": len(r.failures), "on_demand": r.on_demand,
                "inflight": self._inflight.get(dep, 0),
            })
        return out

    # -- the loop --------------------------------------------------------------------------

    def _make_runtime(self) -> Runtime:
        cfg = RuntimeConfig(data_dir=Path(self.d.dd.path) / "runtime", compile_isolation=self.config.compile_isolation)
        token = trio.lowlevel.current_trio_token()
        daemon = self.d

        def call(fn: Any) -> Any:  # a worker thread reaches the loop-owned KV through here
            def run() -> Any:
                res = fn()
                daemon.emit([])  # kick the persist loop for a write
                return res
            return trio.from_thread.run_sync(run, trio_token=token)

        def wait(ticket: Any) -> None:
            trio.from_thread.run(daemon.wait_durable, ticket.token, 30.0, trio_token=token)

        kv = LoopKV(daemon.core.intent, call, wait)  # type: ignore[arg-type]
        return Runtime(cfg, kv=kv, registry=daemon.registry)

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.rt = self._make_runtime()
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                task_status.started()
                self._dirty.set()
                while True:
                    deadline = min((d for d in (self.sup.next_deadline(), self._coord_due) if d is not None), default=None)
                    with trio.move_on_at(deadline if deadline is not None else math.inf):
                        await self._dirty.wait()
                    self._dirty = trio.Event()
                    self._eval_cause, self._changed_at = self._changed_at, None
                    now = trio.current_time()
                    actions = self.sup.tick(now)
                    t0 = time.perf_counter()
                    try:
                        actions += self.evaluate(now)
                    except Exception as exc:  # a bug or a bad record must not stop the loop
                        self.metrics.errors.labels(reason="evaluate").inc()
                        self.log.error("placement_evaluate_failed", error=f"{type(exc).__name__}: {exc}")
                    self.metrics.evaluation_seconds.observe(time.perf_counter() - t0)
                    self._apply(actions)
        finally:
            # With calls still on worker threads the engines stay up: their epoch ticker is what
            # interrupts a guest at its timeout, so those calls end and the daemon can exit.
            if self.rt is not None and not any(self._inflight.values()):
                self.rt.close()

    def evaluate(self, now: float) -> list[Action]:
        """Recompute every deployment's placement and reconcile this node's targets."""
        intent = self.d.core.intent
        if intent is None:
            return []
        swim = self.d.core.swim
        self.evaluations += 1
        self.metrics.evaluations.inc()
        placements = intent.doc.placements()
        self._note_claims(placements)
        a = assign(self.node_id, swim, intent.doc, placements, standbys=self.config.standbys)
        self.last = a
        view_d, specs_d, placement_d = digests(a)
        self.d.set_placement_digest(view_d, placement_d, specs_d)  # what this evaluation placed over (rate-limited)
        for dep, err in sorted(a.errors.items()):
            if err:  # not a registry record still on its way: a real error
                self.metrics.errors.labels(reason="evaluate").inc()
                self.log.error("placement_failed", deployment=dep, error=err)
            cur = self.sup.replicas.get(dep)
            if cur is not None and cur.state not in ("stopping", "failed"):
                a.targets[dep] = Target(dep, cur.version, cur.index)  # keep what runs until it can be placed
        for dep, (nodes, version) in sorted(a.placements.items()):
            self._note_placement(dep, nodes, version, swim)
        if a.uses_rtt:
            self._publish_coord(now)
        return self.sup.set_targets(a.targets, now, on_demand=a.on_demand, standby=a.standby)

    def _publish_coord(self, now: float) -> None:
        """Put this node's Vivaldi coordinate in its metadata when it moved by more than the threshold
        (at most every ``COORD_MIN_INTERVAL_S``), so every node scores RTT from the same numbers."""
        c = self.d.core.swim.coordinate_of(self.node_id)
        if c is None:
            return
        mine = tuple(c.to_wire())
        if self._coord_published is not None and coord_moved(self._coord_published, mine) <= COORD_THRESHOLD_S:
            self._coord_due = None
            return
        if now < self._coord_next:
            self._coord_due = self._coord_next  # the loop wakes then and publishes
            return
        meta = self.d.core.meta
        labels = dict(meta.labels)
        labels[COORD_LABEL] = encode_coord(mine)
        self.d.core.update_meta(dc_replace(meta, labels=tuple(sorted(labels.items()))), now)
        self.d.emit([])
        self._coord_published, self._coord_next, self._coord_due = mine, now + COORD_MIN_INTERVAL_S, None

    def _note_placement(self, dep: str, nodes: tuple[str, ...], version: str, swim: Any) -> None:
        prev = self._placements.get(dep)
        if prev == nodes:
            return
        self._placements[dep] = nodes
        moved = sorted(set(prev) - set(nodes)) if prev else []
        self.metrics.decisions.labels(deployment=dep).inc()
        if moved:
            self.metrics.moved.labels(deployment=dep).inc(len(moved))
        self.events.publish("placement", deployment=dep, version=version, nodes=list(nodes), moved_from=moved)
        gone = [n for n in moved if (m := swim.members.peek(n)) is not None and m.state in (MemberState.DEAD, MemberState.LEFT)]
        if gone and self.node_id in nodes and prev is not None and self.node_id not in prev:
            self._taking_over[dep] = gone[0]
            self.metrics.failovers.inc()
            dead_at = self._dead_at.get(gone[0])
            self.events.publish("failover", deployment=dep, version=version, replaces=gone[0],
                                since_death_ms=round((time.monotonic() - dead_at) * 1000, 3) if dead_at else None)

    def _note_claims(self, placements: dict[str, Any]) -> None:
        """Report other nodes' replica changes as their placement entries reach us (``claim`` events),
        so ``wasmatrix events`` on any node shows starts, stops and failures mesh-wide."""
        seen: dict[str, dict[str, tuple[str, str]]] = {}
        for node, entry in placements.items():
            if node != self.node_id:
                seen[node] = {c.deployment: (c.state, c.version) for c in entry.replicas}
        if self._claims_seen is not None:
            for node in sorted(seen):
                before, now = self._claims_seen.get(node, {}), seen[node]
                for dep in sorted(set(before) | set(now)):
                    old, new = before.get(dep), now.get(dep)
                    if old != new:
                        self.events.publish("claim", member=node, deployment=dep, version=(new or old or ("", ""))[1],
                                            state=new[0] if new else "gone", previous=old[0] if old else None)
        self._claims_seen = seen

    # -- actions ---------------------------------------------------------------------------

    def _apply(self, actions: list[Action]) -> None:
        for a in actions:
            try:
                self._perform(a)
            except Exception as exc:  # one action's bug must not stop the others
                self.metrics.errors.labels(reason="action").inc()
                self.log.error("lifecycle_action_failed", action=a.kind, deployment=a.deployment, error=f"{type(exc).__name__}: {exc}")
        self._after_state_change()

    def _perform(self, a: Action) -> None:
        assert self.nursery is not None
        if a.kind == "start":
            if a.restart:
                self.metrics.restarts.inc()
                self.events.publish("restart", deployment=a.deployment, version=a.version, failures=a.restart)
            else:
                self.events.publish("start", deployment=a.deployment, version=a.version, reason=a.reason)
            self.nursery.start_soon(self._start, a)
        elif a.kind == "prepare":
            self.events.publish("prepare", deployment=a.deployment, version=a.version, reason=a.reason)
            self.nursery.start_soon(self._prepare, a)
        elif a.kind == "switch":
            self.metrics.switches.labels(warm="true" if a.reason == "warm version" else "false").inc()
            fields: dict[str, Any] = {}
            if a.reason == "warm version" and self._eval_cause is not None:
                # from the change (e.g. the rollback record applied here) to serving the other version
                fields["since_change_ms"] = round((time.monotonic() - self._eval_cause) * 1000, 3)
            self.events.publish("switch", deployment=a.deployment, version=a.version, previous=a.previous, reason=a.reason, **fields)
        elif a.kind == "stop":
            self.events.publish("stop", deployment=a.deployment, versions=list(a.versions), reason=a.reason)
            if a.reason.startswith("failed after"):
                self.metrics.failed.inc()
                self.events.publish("failed", deployment=a.deployment, reason=a.reason)
            self.nursery.start_soon(self._stop, a)
        elif a.kind == "unload":
            self.events.publish("unload", deployment=a.deployment, version=a.version, reason=a.reason)
            self._release(a.deployment, a.version)

    def _after_state_change(self) -> None:
        """Write the claims when they changed, refresh gauges, wake waiters."""
        if self.sup.version != self._written:
            self._written = self.sup.version
            claims = [ReplicaClaim(d, v, s, i) for d, v, s, i in self.sup.claims()]
            intent = self.d.core.intent
            if intent is not None:
                try:
                    intent.set_placement(claims, trio.current_time(), wall=time.time())
                except CrdtError as exc:
                    self.metrics.errors.labels(reason="claim").inc()
                    self.log.error("placement_claim_failed", error=str(exc))
                self.d.emit([])  # persist kick; the record is pushed once durable
            running: dict[str, int] = {}
            for d, _, s, _ in self.sup.claims():
                running[d] = running.get(d, 0) + (s == "running")
            self._gauged |= set(running)
            for d in sorted(self._gauged):
                self.metrics.running.labels(deployment=d).set(running.get(d, 0))
        self._state.set()
        self._state = trio.Event()

    async def _start(self, a: Action) -> None:
        t0 = time.monotonic()
        try:
            key = await self._load(a.deployment, a.version)
        except Exception as exc:
            err = _one_line(exc)
            self.metrics.starts.labels(outcome="error").inc()
            self.events.publish("start_failed", deployment=a.deployment, version=a.version, error=err)
            acts = self.sup.start_failed(a.deployment, a.version, err, trio.current_time())
            r = self.sup.replicas.get(a.deployment)
            if r is not None and r.retry_at is not None and r.state != "failed":
                self.events.publish("backoff", deployment=a.deployment, version=a.version,
                                    retry_in_ms=round((r.retry_at - trio.current_time()) * 1000, 1), failures=len(r.failures))
            self._apply(acts)
            return
        self._keys[(a.deployment, a.version)] = key
        self._users.setdefault(key, set()).add((a.deployment, a.version))
        self.metrics.starts.labels(outcome="ok").inc()
        acts = self.sup.started(a.deployment, a.version, trio.current_time())
        fields: dict[str, Any] = {"deployment": a.deployment, "version": a.version, "took_ms": round((time.monotonic() - t0) * 1000, 3),
                                  **self._timing.pop((a.deployment, a.version), {})}
        dead = self._taking_over.pop(a.deployment, None)
        if dead is not None and dead in self._dead_at:
            fields["failover_from"] = dead
            fields["since_death_ms"] = round((time.monotonic() - self._dead_at[dead]) * 1000, 3)
        if self.sup.serving(a.deployment) == a.version:
            self.events.publish("running", **fields)
        self._apply(acts)

    async def _prepare(self, a: Action) -> None:
        """A standby: fetch the blob and compile it into the cache, then unload (nothing serves)."""
        try:
            key = await self._load(a.deployment, a.version)
        except Exception as exc:
            self.log.info("standby_prepare_failed", deployment=a.deployment, version=a.version, error=_one_line(exc))
            return
        self._unload_if_unused(key)

    async def _stop(self, a: Action) -> None:
        with trio.move_on_after(self.config.drain_timeout_s):
            while self._inflight.get(a.deployment, 0) > 0:
                await self._drained.wait()
        for v in a.versions:
            self._release(a.deployment, v)
        self.metrics.stops.inc()
        self.events.publish("stopped", deployment=a.deployment, versions=list(a.versions))
        self._apply(self.sup.stopped(a.deployment, trio.current_time()))

    def _release(self, deployment: str, version: str) -> None:
        key = self._keys.pop((deployment, version), None)
        if key is None:
            return
        users = self._users.get(key, set())
        users.discard((deployment, version))
        self._unload_if_unused(key)

    def _unload_if_unused(self, key: str) -> None:
        """Unload a module key no replica uses and no start is loading (two deployments may share one)."""
        if not self._users.get(key) and not self._loading.get(key):
            self._users.pop(key, None)
            if self.rt is not None:
                self.rt.unload(key)

    async def _load(self, deployment: str, version: str) -> str:
        """Fetch, verify, compile and warm ``deployment``'s module at ``version``; the runtime key."""
        assert self.rt is not None
        doc = self.d.core.intent.doc  # type: ignore[union-attr]
        dep = doc.deployment(deployment)
        module = dep.spec.module
        mv = doc.manifest(module, version)
        rec = doc.effective("registry", f"{module}@{version}")
        if rec is None or mv.manifest is None or mv.removed:
            raise NotFound(f"{module} {version} is not in the registry (or was removed)")
        signed = SignedManifest.from_record(rec.payload, rec.signer, rec.signature, rec.seq, prev=rec.prev, wall_ms=rec.wall_ms)
        if rec.signer not in self.rt.trust:
            tk = doc.adapter._key(rec.signer)
            if tk is None:
                raise NotFound(f"publisher key {rec.signer} of {module} {version} is not trusted here")
            self.rt.trust.add(tk.public_raw)
        t0 = time.perf_counter()
        wasm: bytes | None = None
        if self.rt.artifacts is None or not self.rt.artifacts.has(mv.sha256):
            wasm = await self._blob(mv.sha256, mv.size, deployment)
        # else: a standby or an earlier start left the verified blob in the runtime's artifact
        # store; admit reads (and re-hashes) it on its worker thread, one thread hop fewer.
        t1 = time.perf_counter()
        req = dep.spec.capabilities
        grant = Capabilities.build(kv_namespaces=req.kv_namespaces, http_hosts=req.http_hosts, log=req.log,
                                   clocks=req.clocks, random=req.random)
        rt = self.rt
        key = signed.manifest.key
        self._loading[key] = self._loading.get(key, 0) + 1  # no unload of this key while a load is in flight
        try:
            lm = await trio.to_thread.run_sync(lambda: rt.admit(signed, wasm, grant=grant))
        finally:
            self._loading[key] -= 1
            if not self._loading[key]:
                del self._loading[key]
        self._timing[(deployment, version)] = {"blob_ms": round((t1 - t0) * 1000, 3), "admit_ms": round((time.perf_counter() - t1) * 1000, 3)}
        return str(lm.key)

    async def _blob(self, sha: str, size: int, deployment: str) -> bytes:
        store = self.d.blob_store
        if not store.has(sha):
            core = self.d.core
            with trio.fail_after(self.config.fetch_timeout_s):
                for peers in (self._holders(sha), self._alive_peers()):
                    if not peers:
                        continue
                    self.d.emit(core.fetch_blob(sha, peers, trio.current_time(), expected_size=size))
                    while not store.has(sha):
                        ev = self._blob_event
                        st = core.blobs.status(sha) if core.blobs is not None else None
                        if st is None or st.status == "failed":
                            break
                        await ev.wait()
                    if store.has(sha):
                        break
            if not store.has(sha):
                st = core.blobs.status(sha) if core.blobs is not None else None
                raise NotFound(f"blob {sha[:12]} could not be fetched: {st.reason if st else 'no peer to ask'}")
        return await trio.to_thread.run_sync(store.read, sha, 0, size)

    def _holders(self, sha: str) -> list[str]:
        """Alive peers whose claims say they run a version with this blob."""
        doc = self.d.core.intent.doc  # type: ignore[union-attr]
        swim = self.d.core.swim
        out = []
        for node, entry in doc.placements().items():
            m = swim.members.peek(node)
            if node == self.node_id or m is None or m.state not in (MemberState.ALIVE, MemberState.SUSPECT):
                continue
            for c in entry.replicas:
                try:
                    if c.state == "running" and doc.manifest(doc.deployment(c.deployment).spec.module, c.version).sha256 == sha:
                        out.append(node)
                        break
                except NotFound:
                    continue
        return sorted(out)

    def _alive_peers(self) -> list[str]:
        swim = self.d.core.swim
        return sorted(n for n, m in swim.members.items() if n != self.node_id and m.state in (MemberState.ALIVE, MemberState.SUSPECT))


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


__all__ = ["EventHub", "NotHosted", "WorkloadMetrics", "Workloads", "WorkloadsApi", "WorkloadsConfig"]


# -- control API -----------------------------------------------------------------------------

MAX_EVENT_WAIT = 60.0


class WorkloadsApi:
    """``GET /v1/workloads``, ``GET /v1/events`` (long poll) and a local-only invoke for tests and benches."""

    def __init__(self, daemon: "Daemon") -> None:
        self.d = daemon

    def routes(self) -> dict[tuple[str, str], Any]:
        return {
            ("GET", "/v1/workloads"): self.workloads,
            ("GET", "/v1/events"): self.events,
            ("POST", "/v1/workloads/invoke"): self.invoke,
        }

    @property
    def wl(self) -> Workloads:
        return self.d.workloads

    async def workloads(self, req: Any) -> tuple[int, str, bytes]:
        from mesh.daemon.api import json_answer

        doc = self.d.core.intent.doc  # type: ignore[union-attr]
        entries = {n: [c.to_payload() for c in e.replicas] for n, e in sorted(doc.placements().items())}
        return json_answer({
            "node": self.d.node_id, "replicas": self.wl.replicas(), "evaluations": self.wl.evaluations,
            "placements": {k: list(v) for k, v in sorted(self.wl._placements.items())}, "entries": entries,
        })

    async def events(self, req: Any) -> tuple[int, str, bytes]:
        from urllib.parse import parse_qs

        from mesh.daemon.api import ApiError, json_answer

        q = parse_qs(req.query)
        try:
            after = int((q.get("after") or ["0"])[0])
            wait = float((q.get("wait") or ["0"])[0])
            limit = int((q.get("limit") or ["0"])[0]) or None
        except ValueError:
            raise ApiError(400, "after and limit must be integers, wait a number of seconds") from None
        if not 0 <= wait <= MAX_EVENT_WAIT or after < 0 or (limit is not None and limit < 0):
            raise ApiError(400, f"wait must be within 0..{MAX_EVENT_WAIT:g} s; after and limit >= 0")
        hub = self.wl.events
        evs = await hub.wait(after, wait) if wait else hub.recent(after)
        if limit:
            evs = evs[-limit:]
        return json_answer({"node": self.d.node_id, "seq": hub.seq, "events": evs})

    async def invoke(self, req: Any) -> tuple[int, str, bytes]:
        import base64
        from urllib.parse import parse_qs

        from mesh.daemon.api import ApiError, json_answer

        name = (parse_qs(req.query).get("deployment") or [""])[0]
        if not name or len(name) > 64:
            raise ApiError(400, "deployment=NAME is required")
        t0 = time.perf_counter()
        try:
            res = await self.wl.invoke_local(name, req.body)
        except NotHosted as exc:
            raise ApiError(409, str(exc)) from None
        except WasmError as exc:
            # The runtime's status for its error (docs/RUNTIME.md): a trap 500, a timeout 504, like /v1/invoke.
            # ``at``: when the call ended here (this node's monotonic clock), as on success.
            return json_answer({"error": str(exc)[:500], "code": exc.code, "at": time.monotonic()}, exc.http_status)
        return json_answer({
            "body": base64.b64encode(res.body).decode(), "status": res.status,
            "duration_ms": round((time.perf_counter() - t0) * 1000, 3), "at": time.monotonic(),
        })
