"""A per-target circuit breaker: closed, open, half-open. Pure: time is an argument.

Why: a replica that stopped answering (a killed process, a partition the failure detector has
not declared yet) would otherwise cost every caller a full connect timeout. After
``failure_threshold`` consecutive failures the breaker *opens*: the target is skipped for
``open_seconds``. Then it is *half-open*: at most ``half_open_probes`` calls go through as probes;
a success closes it, a failure opens it again with the cool-down doubled (capped at
``max_open_seconds``), so a long-dead target costs one probe per minute at most.

What counts: connection failures, no answer before the deadline and the target's own internal
errors are failures; any answer of a healthy runtime (including a guest trap: the module, not the
node, is at fault) is a success.
"""

from __future__ import annotations

from dataclasses import dataclass

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"
STATES = (CLOSED, OPEN, HALF_OPEN)
STATE_VALUE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}  # the gauge's encoding


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failure_threshold: int = 3  # consecutive failures that open a closed breaker
    open_seconds: float = 5.0  # first cool-down before a probe
    max_open_seconds: float = 60.0  # the cool-down doubles on every failed probe, up to this
    half_open_probes: int = 1  # calls let through at once while half-open


class Breaker:
    """One target's breaker; ``allow(now)`` before a call, ``success``/``failure`` after it."""

    __slots__ = ("config", "state", "failures", "opened_at", "cooldown", "probes", "transitions")

    def __init__(self, config: BreakerConfig = BreakerConfig()) -> None:
        self.config = config
        self.state = CLOSED
        self.failures = 0  # consecutive, while closed
        self.opened_at = 0.0
        self.cooldown = config.open_seconds
        self.probes = 0  # probes in flight while half-open
        self.transitions = 0

    def _to(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.transitions += 1

    def current(self, now: float) -> str:
        """The state at ``now`` (an open breaker whose cool-down passed reads half-open)."""
        if self.state == OPEN and now >= self.opened_at + self.cooldown:
            self._to(HALF_OPEN)
            self.probes = 0
        return self.state

    def available(self, now: float) -> bool:
        """Would :meth:`allow` let a call through at ``now`` (without taking a probe slot)."""
        st = self.current(now)
        return st == CLOSED or (st == HALF_OPEN and self.probes < self.config.half_open_probes)

    def allow(self, now: float) -> bool:
        """May a call go to this target now? Half-open: takes one probe slot."""
        st = self.current(now)
        if st == CLOSED:
            return True
        if st == HALF_OPEN and self.probes < self.config.half_open_probes:
            self.probes += 1
            return True
        return False

    def success(self, now: float) -> None:
        """The target answered as a healthy node."""
        self.failures = 0
        self.probes = 0
        self.cooldown = self.config.open_seconds
        self._to(CLOSED)

    def failure(self, now: float) -> None:
        """The target failed a call (connect, no answer, internal error)."""
        st = self.current(now)
        if st == HALF_OPEN:
            self.cooldown = min(self.cooldown * 2, self.config.max_open_seconds)
            self._open(now)
        elif st == CLOSED:
            self.failures += 1
            if self.failures >= self.config.failure_threshold:
                self._open(now)
        # already open: a late failure of a call let through before it opened changes nothing

    def _open(self, now: float) -> None:
        self.opened_at = now
        self.failures = 0
        self.probes = 0
        self._to(OPEN)
