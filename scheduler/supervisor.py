"""The per-node supervisor core: which local replicas to start, stop, restart, switch or give up on.

Sans-IO and deterministic, like ``place``: time is passed in, nothing is read from a clock or
the global random, and every output list is in sorted deployment order. The daemon
(``mesh/daemon/workloads.py``) drives it with trio and performs its actions; the simulator
can drive the same object with simulated time.

Inputs

* ``set_targets(targets, on_demand, now)``: what placement assigns to this node (one
  :class:`Target` per deployment: version and replica index), and which deployments are
  on-demand (``replicas = 0``) so a replica started by ``ensure`` is kept.
* ``ensure(deployment, version, now)``: a cold start for an on-demand deployment.
* reports from the driver: ``started``, ``start_failed``, ``crashed``, ``stopped``, ``touch``.
* ``tick(now)`` whenever ``next_deadline()`` comes due.

Outputs: :class:`Action` values (``start``, ``prepare``, ``switch``, ``stop``, ``unload``) and
the claims (``claims()``) this node writes into its placement entry.

Restart policy (kill-and-restart, seed R5/R6): a failed start or a crash of a replica counts one
failure. With ``n`` failures inside the last ``window_s`` seconds, the replica restarts at
``now + min(backoff_base_s * backoff_factor ** (n - 1), backoff_max_s)``; at ``max_failures``
failures it is marked **failed**: the node stops claiming it as running and claims it with state
``failed`` instead, which every node reads into ``NodeInfo.failed`` so placement moves the
replica elsewhere. A failed mark lasts ``failed_hold_s`` (then the node is eligible again) or
until the deployment's active version changes (new code may not fail).

Versions: a switch to a new active version starts the new version while the old one keeps
serving, then switches; the old version stays loaded ("warm") for ``warm_grace_s`` so a
rollback within that time is a pointer switch. Standbys (``prepare``): nodes ranked right
after the chosen ones fetch the blob and compile it into the cache, so a failover admits
from a warm cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Replica states (local); ``claim_state`` maps them onto crdt.schema.REPLICA_STATES.
STARTING = "starting"
RUNNING = "running"
BACKOFF = "backoff"
FAILED = "failed"
STOPPING = "stopping"

_CLAIM_STATE = {STARTING: "starting", RUNNING: "running", BACKOFF: "starting", FAILED: "failed", STOPPING: "stopping"}


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    """Restart, grace and idle policy (documented defaults, docs/LIFECYCLE.md)."""

    backoff_base_s: float = 0.2
    backoff_factor: float = 2.0
    backoff_max_s: float = 30.0
    max_failures: int = 5  # failures inside window_s that mark a replica failed
    window_s: float = 60.0
    failed_hold_s: float = 300.0  # how long a failed mark keeps this node out of the placement
    warm_grace_s: float = 120.0  # how long a previous version stays loaded after a switch
    on_demand_idle_s: float = 300.0  # an on-demand replica with no call for this long stops

    def backoff(self, failures: int) -> float:
        """Delay before the restart that follows the ``failures``-th failure in the window."""
        return min(self.backoff_base_s * self.backoff_factor ** max(0, failures - 1), self.backoff_max_s)


@dataclass(frozen=True, slots=True)
class Target:
    """One replica placement assigns to this node."""

    deployment: str
    version: str
    index: int = 0


@dataclass(frozen=True, slots=True)
class Action:
    """Something the driver must do.

    ``start``: fetch the blob, verify, admit (compile through the cache), warm the pool, then
    report ``started`` or ``start_failed``. ``prepare``: fetch and compile only (a standby; no
    report needed). ``switch``: serve ``version`` instead of ``previous`` (both loaded).
    ``stop``: stop serving, drain in-flight calls, unload every version in ``versions``, report
    ``stopped``. ``unload``: drop a warm (not serving) version, or a crashed one (no drain).
    """

    kind: str
    deployment: str
    version: str = ""
    previous: str = ""
    versions: tuple[str, ...] = ()
    reason: str = ""
    restart: int = 0  # how many failures preceded this start (0: first start)


@dataclass(slots=True)
class Replica:
    deployment: str
    index: int
    version: str  # the version wanted
    state: str
    serving: str | None = None  # the version that answers calls
    pending: str | None = None  # a version being started (while ``serving`` keeps serving)
    warm: dict[str, float] = field(default_factory=dict)  # version -> unload at
    failures: list[float] = field(default_factory=list)
    retry_at: float | None = None
    failed_until: float | None = None
    on_demand: bool = False
    last_used: float = 0.0


class Supervisor:
    """The lifecycle state machine of one node's local replicas."""

    def __init__(self, node_id: str, config: SupervisorConfig = SupervisorConfig()) -> None:
        self.node_id = node_id
        self.config = config
        self.replicas: dict[str, Replica] = {}
        self.prepared: set[tuple[str, str]] = set()  # (deployment, version) standbys asked for
        self.version = 0  # bumped whenever claims() may have changed

    # -- inputs -----------------------------------------------------------------------

    def set_targets(
        self, targets: dict[str, Target], now: float, *, on_demand: frozenset[str] = frozenset(),
        standby: dict[str, str] | None = None,
    ) -> list[Action]:
        """Reconcile with what placement assigns to this node (``{deployment: Target}``)."""
        out: list[Action] = []
        for dep in sorted(set(self.replicas) | set(targets)):
            t = targets.get(dep)
            r = self.replicas.get(dep)
            if r is None:
                assert t is not None
                self.replicas[dep] = Replica(dep, t.index, t.version, STARTING, last_used=now)
                out.append(Action("start", dep, t.version, reason="placed"))
                self._changed()
                continue
            if t is None:
                if r.on_demand and dep in on_demand:
                    continue
                if r.state == FAILED or r.state == STOPPING:
                    continue
                out += self._stop(r, "not placed here")
                continue
            if r.index != t.index:
                r.index = t.index
                self._changed()
            r.on_demand = False  # placed now: no idle stop
            out += self._retarget(r, t.version, now)
        for dep, version in sorted((standby or {}).items()):
            if dep not in targets and (dep, version) not in self.prepared:
                self.prepared.add((dep, version))
                out.append(Action("prepare", dep, version, reason="standby"))
        return out

    def ensure(self, deployment: str, version: str, now: float) -> list[Action]:
        """Start an on-demand replica here (first request to a scaled-to-zero deployment)."""
        r = self.replicas.get(deployment)
        if r is not None:
            r.last_used = now
            if r.state == FAILED or r.state == STOPPING:
                return []
            return self._retarget(r, version, now)
        self.replicas[deployment] = Replica(deployment, 0, version, STARTING, on_demand=True, last_used=now)
        self._changed()
        return [Action("start", deployment, version, reason="on demand")]

    def touch(self, deployment: str, now: float) -> None:
        """A call reached the replica (keeps an on-demand replica from idling out)."""
        r = self.replicas.get(deployment)
        if r is not None:
            r.last_used = now

    def started(self, deployment: str, version: str, now: float) -> list[Action]:
        """The driver finished a ``start``: ``version`` is loaded and warm."""
        r = self.replicas.get(deployment)
        if r is None or r.state in (STOPPING, FAILED):
            return [Action("unload", deployment, version, reason="no longer wanted")]
        if version == r.serving:
            return []  # a duplicate report
        if version != r.version:
            # Superseded while it started: keep it warm (a rollback may want it back).
            r.warm[version] = now + self.config.warm_grace_s
            if r.pending == version:
                r.pending = None
            return []
        out: list[Action] = []
        prev = r.serving
        if prev is not None and prev != version:
            r.warm[prev] = now + self.config.warm_grace_s
            out.append(Action("switch", deployment, version, previous=prev, reason="new version started"))
        r.serving = version
        r.pending = None
        r.retry_at = None
        r.warm.pop(version, None)
        if r.state != RUNNING:
            r.state = RUNNING
            self._changed()
        elif prev != version:
            self._changed()
        return out

    def start_failed(self, deployment: str, version: str, error: str, now: float) -> list[Action]:
        """The driver could not start ``version`` (fetch, signature, compile or warm-up failed)."""
        r = self.replicas.get(deployment)
        if r is None or r.state in (STOPPING, FAILED) or version != r.version:
            return []
        if r.pending == version and r.serving is not None:
            # A new version failed while the old one keeps serving: retry the new one with backoff.
            r.pending = None
        return self._failure(r, f"start failed: {error}", now)

    def crashed(self, deployment: str, version: str, reason: str, now: float) -> list[Action]:
        """A serving instance crashed or trapped: kill it and restart with backoff."""
        r = self.replicas.get(deployment)
        if r is None or r.serving != version or r.state != RUNNING:
            return []
        r.serving = None
        out = [Action("unload", deployment, version, reason=f"crashed: {reason}")]
        return out + self._failure(r, f"crashed: {reason}", now)

    def stopped(self, deployment: str, now: float) -> list[Action]:
        """The driver finished a ``stop`` (drained and unloaded)."""
        r = self.replicas.get(deployment)
        if r is not None and r.state == STOPPING:
            del self.replicas[deployment]
            self._changed()
        return []

    def tick(self, now: float) -> list[Action]:
        """Restarts, warm-version unloads, failed marks and idle on-demand replicas that came due."""
        out: list[Action] = []
        cfg = self.config
        for dep in sorted(self.replicas):
            r = self.replicas[dep]
            for v in sorted(r.warm):
                if r.warm[v] <= now:
                    del r.warm[v]
                    out.append(Action("unload", dep, v, reason="warm grace over"))
            if r.state in (BACKOFF, RUNNING) and r.retry_at is not None and r.retry_at <= now:
                r.retry_at = None
                if r.state == BACKOFF:
                    r.state = STARTING
                else:  # the previous version kept serving: retry the new one beside it
                    r.pending = r.version
                out.append(Action("start", dep, r.version, reason="restart", restart=len(r.failures)))
                self._changed()
            elif r.state == FAILED and r.failed_until is not None and r.failed_until <= now:
                del self.replicas[dep]  # eligible again: the next placement may pick this node
                self._changed()
                continue
            if r.on_demand and r.state == RUNNING and now - r.last_used >= cfg.on_demand_idle_s:
                out += self._stop(r, "on-demand replica idle")
        return out

    def next_deadline(self) -> float | None:
        ds: list[float] = []
        for r in self.replicas.values():
            ds += r.warm.values()
            if r.state in (BACKOFF, RUNNING) and r.retry_at is not None:
                ds.append(r.retry_at)
            if r.state == FAILED and r.failed_until is not None:
                ds.append(r.failed_until)
            if r.on_demand and r.state == RUNNING:
                ds.append(r.last_used + self.config.on_demand_idle_s)
        return min(ds) if ds else None

    # -- outputs ----------------------------------------------------------------------

    def serving(self, deployment: str) -> str | None:
        r = self.replicas.get(deployment)
        return r.serving if r is not None and r.state == RUNNING else None

    def failed(self) -> frozenset[str]:
        return frozenset(d for d, r in self.replicas.items() if r.state == FAILED)

    def claims(self) -> list[tuple[str, str, str, int]]:
        """``(deployment, version, claim state, index)`` for the placement entry, sorted."""
        out = []
        for dep in sorted(self.replicas):
            r = self.replicas[dep]
            version = r.serving if r.state == RUNNING and r.serving else r.version
            out.append((dep, version, _CLAIM_STATE[r.state], r.index))
        return out

    # -- internals --------------------------------------------------------------------

    def _changed(self) -> None:
        self.version += 1

    def _retarget(self, r: Replica, version: str, now: float) -> list[Action]:
        if r.state == STOPPING:
            return []
        if version == r.version:
            return []
        old_wanted = r.version
        r.version = version
        if r.state == FAILED:
            # A new active version clears the failed mark: start it afresh.
            r.state, r.failures, r.failed_until = STARTING, [], None
            self._changed()
            return [Action("start", r.deployment, version, reason="new version after failure")]
        if r.serving == version:
            r.pending = None
            r.retry_at = None
            self._changed()
            return []
        if r.serving is not None and version in r.warm:
            prev = r.serving
            del r.warm[version]
            r.warm[prev] = now + self.config.warm_grace_s
            r.serving = version
            r.pending = None
            r.retry_at = None
            self._changed()
            return [Action("switch", r.deployment, version, previous=prev, reason="warm version")]
        self._changed()
        if r.retry_at is not None:
            return []  # the pending restart starts the new version
        if r.pending == version or (r.state == STARTING and r.serving is None and old_wanted == version):
            return []
        r.pending = version if r.serving is not None else None
        return [Action("start", r.deployment, version, reason="version changed")]

    def _stop(self, r: Replica, reason: str) -> list[Action]:
        versions = sorted({v for v in (r.serving, r.pending) if v} | set(r.warm) | ({r.version} if r.state == STARTING else set()))
        r.state = STOPPING
        r.serving = None
        r.pending = None
        r.retry_at = None
        r.warm.clear()
        self._changed()
        return [Action("stop", r.deployment, versions=tuple(versions), reason=reason)]

    def _failure(self, r: Replica, why: str, now: float) -> list[Action]:
        cfg = self.config
        r.failures = [t for t in r.failures if now - t < cfg.window_s] + [now]
        n = len(r.failures)
        self._changed()
        if n >= cfg.max_failures:
            r.state = FAILED
            r.retry_at = None
            r.failed_until = now + cfg.failed_hold_s
            versions = sorted({v for v in (r.serving, r.pending) if v} | set(r.warm))
            r.serving = None
            r.pending = None
            r.warm.clear()
            return [Action("stop", r.deployment, versions=tuple(versions), reason=f"failed after {n} failures: {why}")]
        r.retry_at = now + cfg.backoff(n)
        # With a previous version still serving the replica stays running; only the new version
        # waits for its retry.
        r.state = RUNNING if r.serving is not None else BACKOFF
        return []
