"""Per-tenant quotas (seed 003 R14), sans-IO: concurrency, invocations per minute, CPU seconds per day.

Every input that depends on time is an argument: ``now`` is the monotonic clock (windows, rate
limits of the gossip label), ``wall`` the wall clock (the UTC day of the CPU budget). The core
never reads a clock, so the same calls give the same answers.

Three limits per tenant (``crdt.schema.TenantQuota``; a tenant without a record has the defaults):

* **Concurrency** (``max_concurrency``, per node): calls admitted here and not yet released.
  A refusal's Retry-After is :data:`CONCURRENCY_RETRY_S` (nobody knows when a call ends).
* **Invocations per minute** (``per_minute``, per node): a sliding window of one-second buckets.
  A call at time ``t`` is admitted while fewer than ``per_minute`` calls were admitted in the
  buckets ``floor(t) - 60 .. floor(t)`` (the current second and the 60 before it). That window
  covers every real 60-second window ending at ``t`` whatever its phase, so *any* 60-second window
  holds at most ``per_minute`` admitted calls; the price is that a call leaves the count between
  60 and 61 s after it was admitted. Retry-After is exact for this rule: the time until enough of
  the oldest buckets have left the window (a bucket ``b`` leaves at ``b + 61``).
* **CPU seconds per UTC day** (``cpu_seconds_per_day``, mesh-wide): this node's own usage today
  plus the latest usage every other alive node publishes in its membership metadata (the label
  :data:`CPU_LABEL`, see :func:`encode_usage`). A tenant at or over budget is refused until the
  next UTC midnight (Retry-After = seconds until then). The check is before the call, so one call
  in flight may overrun the budget by its own length; the next is refused.

Concurrency and the per-minute rate are enforced by each node on the calls it admits (a mesh of
N nodes admits up to N times the per-node figure): they protect one node's capacity. The CPU budget
is the mesh's: usage from other nodes arrives within a gossip round of their publication, which
happens at most once per :data:`PUBLISH_MIN_INTERVAL_S` and when a tenant's usage moved by at least
:data:`PUBLISH_MIN_CHANGE` (relative) or the day changed.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from crdt.schema import DEFAULT_TENANT, TenantQuota

__all__ = [
    "Admitted", "CPU_LABEL", "QuotaCore", "Rejected", "decode_usage", "encode_usage", "utc_day",
    "CONCURRENCY", "CPU", "RATE", "REASONS",
]

CPU_LABEL = "wasmatrix.cpu"  # metadata label: "<utc day>:<tenant>=<seconds>,..." (see encode_usage)
MAX_LABEL_CHARS = 128  # a NodeMeta label value's bound (mesh/membership/meta.py)
DAY_S = 86_400.0
WINDOW_BUCKETS = 61  # one-second buckets counted: the current one and the 60 before it
CONCURRENCY_RETRY_S = 1.0
PUBLISH_MIN_INTERVAL_S = 1.0
PUBLISH_MIN_CHANGE = 0.01  # 1 %
PUBLISH_MIN_ABS_S = 0.01  # changes below 10 ms are not worth a metadata update
MAX_PEER_TENANTS = 64  # entries a decoded label may carry (a 128-char label holds fewer anyway)
MAX_SECONDS = 1e12

CONCURRENCY, RATE, CPU = "concurrency", "rate", "cpu"
REASONS = (CONCURRENCY, CPU, RATE)

_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$")  # crdt.schema's name rule (model NAME_RE)


@dataclass(slots=True, frozen=True)
class Admitted:
    tenant: str


@dataclass(slots=True, frozen=True)
class Rejected:
    tenant: str
    reason: str  # CONCURRENCY | RATE | CPU
    retry_after_s: float
    message: str


def utc_day(wall: float) -> int:
    """Days since the epoch of the UTC day containing ``wall``."""
    return int(wall // DAY_S)


def _fmt(x: float) -> str:
    s = f"{x:.2f}".rstrip("0").rstrip(".")
    return s or "0"


def encode_usage(day: int, usage: Mapping[str, float], limit: int = MAX_LABEL_CHARS) -> str:
    """``"<day>:<tenant>=<seconds>,..."``, the tenants with the most usage first, as many as fit in ``limit``.

    Seconds carry two decimals. Tenants with no usage are left out. Tenants that do not fit are
    left out too (their usage on this node is then not seen elsewhere): with names of a few
    characters, about ten tenants fit.
    """
    out = f"{day}:"
    first = True
    for t, v in sorted(usage.items(), key=lambda kv: (-kv[1], kv[0])):
        if v < 0.005:
            continue
        item = f"{'' if first else ','}{t}={_fmt(v)}"
        if len(out) + len(item) > limit:
            continue  # a shorter name further down may still fit
        out += item
        first = False
    return out


def decode_usage(text: str) -> tuple[int, dict[str, float]]:
    """The inverse of :func:`encode_usage`; ValueError on anything malformed."""
    if not isinstance(text, str) or len(text) > MAX_LABEL_CHARS:
        raise ValueError("not a string of at most 128 characters")
    day_s, sep, rest = text.partition(":")
    if not sep or not day_s.isdigit() or len(day_s) > 9:
        raise ValueError("no '<day>:' prefix")
    usage: dict[str, float] = {}
    if rest:
        items = rest.split(",")
        if len(items) > MAX_PEER_TENANTS:
            raise ValueError("too many tenants")
        for item in items:
            name, eq, val = item.partition("=")
            if not eq or not _NAME.match(name) or name in usage:
                raise ValueError(f"bad entry {item[:40]!r}")
            v = float(val)  # ValueError on garbage
            if not math.isfinite(v) or not 0 <= v <= MAX_SECONDS:
                raise ValueError(f"bad seconds {val[:20]!r}")
            usage[name] = v
    return int(day_s), usage


_DEFAULTS: dict[str, TenantQuota] = {}


def default_limits(tenant: str) -> TenantQuota:
    """The defaults for ``tenant`` (built and validated once per name; bounded)."""
    q = _DEFAULTS.get(tenant)
    if q is None:
        if len(_DEFAULTS) >= 4096:
            _DEFAULTS.clear()
        q = _DEFAULTS[tenant] = TenantQuota(tenant)
    return q


@dataclass(slots=True)
class _Tenant:
    in_flight: int = 0
    buckets: deque[list[int]] = field(default_factory=deque)  # [second, admitted] oldest first
    in_window: int = 0


class QuotaCore:
    """One node's quota state. ``limits_of(tenant)`` gives a tenant's :class:`TenantQuota` (the intent's)."""

    def __init__(self, limits_of: Callable[[str], TenantQuota] | None = None) -> None:
        self.limits_of = limits_of or default_limits
        self._t: dict[str, _Tenant] = {}
        self.day: int | None = None
        self.own: dict[str, float] = {}  # CPU seconds used on this node today, by tenant
        self.peers: dict[str, tuple[int, dict[str, float]]] = {}  # node -> (day, usage) from its label
        self._peer_text: dict[str, str] = {}
        self.bad_labels = 0
        self.rejections: dict[tuple[str, str], int] = {}
        self.calls_today: dict[str, int] = {}
        self._published: tuple[int, dict[str, float]] | None = None
        self._publish_next = -math.inf

    # --- admission -------------------------------------------------------------------

    def _tenant(self, tenant: str) -> _Tenant:
        t = self._t.get(tenant)
        if t is None:
            t = self._t[tenant] = _Tenant()
        return t

    def _roll(self, wall: float) -> None:
        day = int(wall // DAY_S)
        if day != self.day:
            self.day = day
            self.own.clear()
            self.calls_today.clear()

    def _prune(self, t: _Tenant, now: float) -> None:
        lo = math.floor(now) - (WINDOW_BUCKETS - 1)
        while t.buckets and t.buckets[0][0] < lo:
            t.in_window -= t.buckets.popleft()[1]

    def cpu_used(self, tenant: str, wall: float) -> float:
        """CPU seconds ``tenant`` used today, mesh-wide as this node knows it."""
        self._roll(wall)
        return self._used(tenant)

    def _used(self, tenant: str) -> float:
        used = self.own.get(tenant, 0.0)
        if self.peers:
            day = self.day
            used += sum(u.get(tenant, 0.0) for d, u in self.peers.values() if d == day)
        return used

    def admit(self, tenant: str, now: float, wall: float) -> Admitted | Rejected:
        """Admit one call of ``tenant`` (then :meth:`release` it exactly once) or refuse it."""
        q = self.limits_of(tenant)
        self._roll(wall)
        t = self._tenant(tenant)
        self._prune(t, now)
        used = self._used(tenant)
        if used >= q.cpu_seconds_per_day:
            assert self.day is not None
            wait = (self.day + 1) * DAY_S - wall
            return self._reject(tenant, CPU, wait, f"tenant {tenant} used {used:.2f} of its {_fmt(q.cpu_seconds_per_day)} "
                                                    "CPU seconds today (UTC)")
        if t.in_flight >= q.max_concurrency:
            return self._reject(tenant, CONCURRENCY, CONCURRENCY_RETRY_S,
                                f"tenant {tenant} has {t.in_flight} calls running on this node (limit {q.max_concurrency})")
        if t.in_window >= q.per_minute:
            return self._reject(tenant, RATE, self._rate_retry(t, q.per_minute, now),
                                f"tenant {tenant} made {t.in_window} calls on this node in the last minute (limit {q.per_minute})")
        sec = math.floor(now)
        if t.buckets and t.buckets[-1][0] == sec:
            t.buckets[-1][1] += 1
        else:
            t.buckets.append([sec, 1])
        t.in_window += 1
        t.in_flight += 1
        self.calls_today[tenant] = self.calls_today.get(tenant, 0) + 1
        return Admitted(tenant)

    def _rate_retry(self, t: _Tenant, limit: int, now: float) -> float:
        """Seconds until one more call fits: the oldest buckets leave the window at ``bucket + 61``."""
        excess = t.in_window - limit + 1  # calls that must leave
        for sec, n in t.buckets:
            excess -= n
            if excess <= 0:
                return max(0.0, sec + WINDOW_BUCKETS - now)
        return float(WINDOW_BUCKETS)  # a limit of 0: never; a minute is as good an answer as any

    def _reject(self, tenant: str, reason: str, retry: float, message: str) -> Rejected:
        k = (tenant, reason)
        self.rejections[k] = self.rejections.get(k, 0) + 1
        return Rejected(tenant, reason, round(max(0.0, retry), 3), message)

    def release(self, tenant: str, cpu_seconds: float, wall: float) -> None:
        """An admitted call ended; ``cpu_seconds`` is what the guest used on this node (0 if it ran elsewhere)."""
        t = self._t.get(tenant)
        if t is not None and t.in_flight > 0:
            t.in_flight -= 1
        self.charge(tenant, cpu_seconds, wall)

    def charge(self, tenant: str, cpu_seconds: float, wall: float) -> None:
        """Count CPU seconds a guest of ``tenant`` used on this node (a call served for another node, too)."""
        self._roll(wall)
        if cpu_seconds > 0 and math.isfinite(cpu_seconds):
            self.own[tenant] = self.own.get(tenant, 0.0) + cpu_seconds

    def in_flight(self, tenant: str) -> int:
        t = self._t.get(tenant)
        return t.in_flight if t is not None else 0

    def calls_last_minute(self, tenant: str, now: float) -> int:
        t = self._t.get(tenant)
        if t is None:
            return 0
        self._prune(t, now)
        return t.in_window

    def tenants(self) -> list[str]:
        """Tenants this node has state or usage for (own or peers'), sorted."""
        names = set(self._t) | set(self.own)
        for _, u in self.peers.values():
            names |= set(u)
        return sorted(names)

    # --- gossip ----------------------------------------------------------------------

    def observe_peers(self, labels: Mapping[str, str | None]) -> None:
        """The CPU labels of the alive members other than this node (None: the member published none).

        Replaces the peer view: a member no longer given (dead, left) no longer counts. A malformed
        label is ignored (counted once per distinct text in :attr:`bad_labels`).
        """
        for node in [n for n in self.peers if labels.get(n) is None]:
            del self.peers[node]
        for node in [n for n in self._peer_text if labels.get(n) is None]:
            del self._peer_text[node]
        for node, text in sorted(labels.items()):
            if text is None or self._peer_text.get(node) == text:
                continue
            self._peer_text[node] = text
            try:
                self.peers[node] = decode_usage(text)
            except ValueError:
                self.bad_labels += 1
                self.peers.pop(node, None)

    def publication(self, now: float, wall: float, force: bool = False) -> str | None:
        """The label text to publish now, or None (too soon since the last one, or nothing moved enough)."""
        self._roll(wall)
        assert self.day is not None
        if now < self._publish_next and not force:
            return None
        cur = {t: v for t, v in self.own.items() if v >= 0.005}
        last = self._published
        if last is None and not cur:
            return None  # nothing used since start: no label at all (membership shows only the operator's)
        if last is not None and last[0] == self.day and not force:
            old = last[1]
            moved = any(
                abs(cur.get(t, 0.0) - old.get(t, 0.0)) >= max(PUBLISH_MIN_ABS_S, PUBLISH_MIN_CHANGE * old.get(t, 0.0))
                for t in set(cur) | set(old)
            )
            if not moved:
                return None
        return encode_usage(self.day, cur)

    def published(self, text: str, now: float) -> None:
        """The driver put ``text`` (from :meth:`publication`) in this node's metadata at ``now``."""
        self._published = decode_usage(text)
        self._publish_next = now + PUBLISH_MIN_INTERVAL_S

    def usage_rows(self, now: float, wall: float, names: Iterable[str] = ()) -> list[dict[str, object]]:
        """One row per tenant (the given names and every tenant with state): limits and usage as this node sees it."""
        out = []
        for name in sorted(set(names) | set(self.tenants()) | {DEFAULT_TENANT}):
            q = self.limits_of(name)
            out.append({
                "tenant": name, "max_concurrency": q.max_concurrency, "per_minute": q.per_minute,
                "cpu_seconds_per_day": q.cpu_seconds_per_day,
                "in_flight": self.in_flight(name), "calls_last_minute": self.calls_last_minute(name, now),
                "cpu_seconds_today": round(self.cpu_used(name, wall), 3),
                "cpu_seconds_today_here": round(self.own.get(name, 0.0), 3),
            })
        return out
