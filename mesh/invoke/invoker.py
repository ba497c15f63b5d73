"""``Invoker``: the sans-IO core that decides where one invocation runs and whether to retry.

Target choice (``plan``): this node first when it hosts a replica (or, when no replica runs
anywhere, when it can start one on demand); then the other replicas —
nodes whose placement entry claims a *running* replica of the deployment and that membership
sees alive — nearest first by Vivaldi RTT estimate (unknown RTT last, node id breaks ties), each
only while its circuit breaker lets calls through. The driver tries them in order, at most
``max_attempts``, within one overall deadline.

Retry rule (``record``): another replica is tried only when the failed attempt certainly did not
run the guest: the connection never came up (the request was never sent), or the target answered
``executed=False`` (``not_hosted``, ``overloaded``, ``unavailable``). After a trap, a guest error,
a timeout, or a stream that broke after the request left, the call is *not* retried: running a
non-idempotent guest twice is worse than one visible error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from mesh.invoke.breaker import Breaker, BreakerConfig
from mesh.invoke.messages import (
    BAD_REQUEST, GUEST_ERROR, INTERNAL, LIMIT, NOT_HOSTED, OK, OVERLOADED, QUOTA, TIMEOUT, TRAP, UNAVAILABLE,
)

# Attempt failures the driver reports that are not reply codes.
CONNECT_FAILED = "connect_failed"  # the stream never came up: the request was not sent
NO_ANSWER = "no_answer"  # no reply before the deadline (the guest may have run)
STREAM_CLOSED = "stream_closed"  # the stream broke after the request left (the guest may have run)
NO_REPLICA = "no_replica"  # nothing to try: no running replica, or every breaker open
BREAKER_OPEN = "breaker_open"

# The HTTP status of a failed call by its final code, one table for both HTTP faces (the control
# API's POST /v1/invoke and the HTTP ingress; docs/DAEMON.md). The guest's own failure is 500; 502
# means no healthy replica could be reached; 429 carries a Retry-After.
HTTP_STATUS = {
    BAD_REQUEST: 400,
    QUOTA: 429, OVERLOADED: 429,
    TRAP: 500, INTERNAL: 500, GUEST_ERROR: 500, LIMIT: 500,
    NO_REPLICA: 502, CONNECT_FAILED: 502, BREAKER_OPEN: 502, STREAM_CLOSED: 502, NOT_HOSTED: 502,
    UNAVAILABLE: 503,
    TIMEOUT: 504, NO_ANSWER: 504,
}


def http_status(code: str) -> int:
    """The HTTP status of a call that failed with ``code`` (502 for a code not in the table)."""
    return HTTP_STATUS.get(code, 502)


# Answers of a healthy node: they close (or keep closed) the target's breaker.
_HEALTHY = frozenset({OK, TRAP, TIMEOUT, LIMIT, GUEST_ERROR, BAD_REQUEST, NOT_HOSTED, OVERLOADED})


@dataclass(frozen=True, slots=True)
class InvokerConfig:
    max_attempts: int = 3  # targets tried for one call (local included)
    default_timeout: float = 30.0  # seconds, when the caller gives none
    max_timeout: float = 600.0


@dataclass(frozen=True, slots=True)
class Plan:
    """Targets in the order to try them; ``skipped`` are replicas whose breaker is open."""

    deployment: str
    targets: tuple[str, ...]
    skipped: tuple[str, ...]


class Invoker:
    """Breakers per target node and the choice of targets; time is always an argument."""

    def __init__(self, node_id: str, config: InvokerConfig = InvokerConfig(), breaker: BreakerConfig = BreakerConfig()) -> None:
        self.node_id = node_id
        self.config = config
        self.breaker_config = breaker
        self.breakers: dict[str, Breaker] = {}

    def breaker(self, node: str) -> Breaker:
        b = self.breakers.get(node)
        if b is None:
            b = self.breakers[node] = Breaker(self.breaker_config)
        return b

    def plan(
        self,
        deployment: str,
        *,
        hosts_local: bool,
        replicas: Iterable[str],
        rtt: Callable[[str], float | None],
        now: float,
        can_start_local: bool = False,
    ) -> Plan:
        """The targets for one call of ``deployment`` (see the module docstring for the order).

        ``can_start_local``: this node could start a replica on demand; it is tried when no replica
        runs anywhere (none claimed running, none behind an open breaker).
        """
        remote: list[tuple[float, str]] = []
        skipped: list[str] = []
        for node in sorted(set(replicas)):
            if node == self.node_id:
                continue
            b = self.breakers.get(node)
            if b is not None and not b.available(now):
                skipped.append(node)
                continue
            r = rtt(node)
            remote.append((r if r is not None and math.isfinite(r) else math.inf, node))
        remote.sort()
        local = hosts_local or (can_start_local and not remote and not skipped)
        targets = ([self.node_id] if local else []) + [n for _, n in remote]
        return Plan(deployment, tuple(targets[: self.config.max_attempts]), tuple(skipped))

    def allow(self, node: str, now: float) -> bool:
        """Take the target's breaker slot before an attempt (this node has none)."""
        return node == self.node_id or self.breaker(node).allow(now)

    def record(self, node: str, code: str, executed: bool, now: float) -> bool:
        """Feed an attempt's outcome to the target's breaker; True when another replica may be tried."""
        if node != self.node_id:
            b = self.breaker(node)
            if code in _HEALTHY:
                b.success(now)
            else:
                b.failure(now)
        return retry_safe(code, executed)

    def states(self, now: float) -> dict[str, str]:
        """Every known target's breaker state at ``now``, by node id."""
        return {n: b.current(now) for n, b in sorted(self.breakers.items())}

    def forget(self, keep: Iterable[str]) -> None:
        """Drop breakers of nodes no longer in ``keep`` (bounded state)."""
        k = set(keep)
        for n in [n for n in self.breakers if n not in k]:
            del self.breakers[n]

    def timeout(self, requested: float | None) -> float:
        """The overall budget of one call, in seconds."""
        if requested is None or not math.isfinite(requested) or requested <= 0:
            return self.config.default_timeout
        return min(requested, self.config.max_timeout)


def retry_safe(code: str, executed: bool) -> bool:
    """True when a failed attempt certainly did not run the guest and another replica may."""
    if code in (OK, BAD_REQUEST):
        return False
    if code == CONNECT_FAILED:
        return True
    return not executed and code not in (NO_ANSWER, STREAM_CLOSED)


def replicas_of(deployment: str, entries: Iterable[tuple[str, Iterable[tuple[str, str]]]], alive: Callable[[str], bool]) -> list[str]:
    """Nodes that claim a running replica of ``deployment`` and are alive.

    ``entries``: ``(node_id, [(deployment, state), ...])`` per placement entry.
    """
    out = []
    for node, claims in entries:
        if any(d == deployment and s == "running" for d, s in claims) and alive(node):
            out.append(node)
    return sorted(out)
