"""The delivery core: per-subscription bounded queues, retries with backoff, dead letters, backpressure.

Sans-IO and deterministic: every method takes ``now`` (the driver's monotonic clock) and the only
randomness is the seeded ``random.Random`` given at construction. The driver
(:mod:`mesh.events.bus`) persists, invokes and republishes; this core decides.

Life of an event in one subscription's queue::

    admit ──(driver persisted it)──> durable ──take_due──> in flight ──complete(ok)──> delivered
      │                                 ^                      │
      └─ Backpressure (queue full,      └── retry at due ──────┤ complete(failed), attempts < max
         storm): nothing queued                                └─ attempts == max ──> dead: the driver
                                                                   republishes on deadletter/<sub>

Retry schedule ("full jitter", as in the AWS Architecture Blog's *Exponential Backoff and
Jitter*): after the n-th failed attempt (n >= 1) the next attempt is due after

    delay(n) = U(0, 1) * min(cap, base * 2 ** (n - 1))        base = 0.2 s, cap = 30 s

(``rng.random()`` for U), or later when the failure said so (a quota's Retry-After). Full jitter
spreads the retries of many events that failed together (a module that trapped on a storm) over
the whole window instead of synchronising them.

Backpressure: an event is admitted only if every subscription it matches has room (all or
nothing: a publisher never wonders which subscribers got it); otherwise :class:`Backpressure`
with a Retry-After estimate. The storm policy is a token bucket per topic on publish (``rate``
events/s, ``burst``): beyond it the publish is shed with reason ``storm``. Both are counted in
``shed`` by reason.
"""

from __future__ import annotations

import heapq
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Iterable

from crdt.schema import SubscriptionSpec
from mesh.events.event import Backpressure, Event
from model.topics import matches

DELIVERED, RETRY, DEAD = "delivered", "retry", "dead"
DEADLETTER_PREFIX = "deadletter/"


@dataclass(slots=True, frozen=True)
class RetryPolicy:
    """Full-jitter exponential backoff (see the module docstring)."""

    base: float = 0.2
    cap: float = 30.0

    def bound(self, failures: int) -> float:
        """The upper end of the delay window after ``failures`` failed attempts (>= 1)."""
        return min(self.cap, self.base * 2.0 ** min(max(failures, 1) - 1, 62))

    def delay(self, failures: int, rng: random.Random) -> float:
        return rng.random() * self.bound(failures)


@dataclass(slots=True, frozen=True)
class StormPolicy:
    """Per-topic token bucket on publish: ``rate`` events/s sustained, ``burst`` at once."""

    rate: float = 2000.0
    burst: float = 4000.0
    max_topics: int = 10_000  # buckets kept (least recently used out: a full bucket is the default)


@dataclass(slots=True)
class Pending:
    """One event in one subscription's queue."""

    event: Event
    seq: int
    attempts: int = 0  # failed attempts so far
    due: float = 0.0
    last_error: str = ""
    durable: bool = False
    in_flight: bool = False
    dead: bool = False  # attempts exhausted: waiting for the dead letter to be published


@dataclass(slots=True, frozen=True)
class Delivery:
    """What the driver must do now: invoke the subscription's deployment, or (``dead``) publish the dead letter."""

    subscription: str
    deployment: str
    event: Event
    attempt: int  # 1-based number of this attempt
    dead: bool = False
    last_error: str = ""


@dataclass(slots=True)
class SubStats:
    delivered: int = 0
    failures: int = 0  # failed attempts
    retries: int = 0  # failed attempts that were scheduled again
    dead_letters: int = 0


@dataclass(slots=True)
class _Sub:
    spec: SubscriptionSpec
    queue: dict[str, Pending] = field(default_factory=dict)  # event id -> pending, admission order
    heap: list[tuple[float, int, str]] = field(default_factory=list)  # (due, seq, event id); stale entries skipped
    in_flight: int = 0
    stats: SubStats = field(default_factory=SubStats)


def accepts(spec: SubscriptionSpec, event: Event) -> bool:
    """The subscription's filters: topic pattern, every ``where`` glob on the meta, ``contains`` on the data."""
    if not matches(spec.topic, event.topic):
        return False
    for k, glob in spec.where.items():
        v = event.meta.get(k)
        if v is None or not fnmatchcase(v, glob):
            return False
    return not spec.contains or spec.contains.encode() in event.data


class DeliveryCore:
    """Every subscription's queue on this node (see the module docstring)."""

    def __init__(self, rng: random.Random, retry: RetryPolicy = RetryPolicy(), storm: StormPolicy = StormPolicy(),
                 concurrency: int = 8) -> None:
        self.rng = rng
        self.retry = retry
        self.storm = storm
        self.concurrency = concurrency  # deliveries in flight per subscription
        self.subs: dict[str, _Sub] = {}
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # topic -> (tokens, at)
        self.shed: dict[str, int] = {"queue_full": 0, "storm": 0, "unsubscribed": 0, "deadletter_loop": 0, "reply_loop": 0}
        self.published = 0
        self._seq = 0

    # ------------------------------------------------------------------ subscriptions

    def set_subscriptions(self, specs: Iterable[SubscriptionSpec]) -> list[tuple[str, str]]:
        """Adopt the current subscriptions; returns ``(subscription, event id)`` of events dropped with a
        removed subscription (the driver deletes them from the store; counted as ``unsubscribed``)."""
        new = {s.name: s for s in specs}
        dropped: list[tuple[str, str]] = []
        for name in sorted(set(self.subs) - set(new)):
            sub = self.subs.pop(name)
            dropped.extend((name, eid) for eid, p in sub.queue.items())
            self.shed["unsubscribed"] += len(sub.queue)
        for name in sorted(new):
            if name in self.subs:
                self.subs[name].spec = new[name]
            else:
                self.subs[name] = _Sub(new[name])
        return dropped

    def matching(self, event: Event) -> list[str]:
        """Names of the subscriptions whose filters accept ``event``, sorted."""
        return [n for n in sorted(self.subs) if accepts(self.subs[n].spec, event)]

    # ------------------------------------------------------------------ publish

    def admit(self, event: Event, now: float) -> list[str]:
        """Queue ``event`` (not yet dispatchable: see :meth:`durable`) in every matching subscription.

        Raises :class:`Backpressure` (nothing queued) when one of them is full or the topic's
        storm bucket is empty. Returns the subscriptions it was queued in.
        """
        names = self.matching(event)
        if event.topic.startswith(DEADLETTER_PREFIX) and event.topic[len(DEADLETTER_PREFIX):] in names:
            # A subscription's own dead letters would come back to it forever.
            names.remove(event.topic[len(DEADLETTER_PREFIX):])
            self.shed["deadletter_loop"] += 1
        for n in names:
            sub = self.subs[n]
            if len(sub.queue) >= sub.spec.queue:
                self.shed["queue_full"] += 1
                raise Backpressure(
                    f"subscription {n} has {len(sub.queue)} events queued (its limit); retry later",
                    self._retry_after(sub, now), "queue_full", n)
        self._take_token(event.topic, now)
        for n in names:
            self._seq += 1
            self.subs[n].queue[event.id] = Pending(event, self._seq, due=now)
        self.published += 1
        return names

    def _take_token(self, topic: str, now: float) -> None:
        tokens, at = self.buckets.pop(topic, (self.storm.burst, now))
        tokens = min(self.storm.burst, tokens + (now - at) * self.storm.rate)
        if tokens < 1.0 - 1e-9:  # (float: a refill of exactly one token must count)
            self.buckets[topic] = (tokens, now)
            self.shed["storm"] += 1
            raise Backpressure(f"topic {topic} is over its publish rate ({self.storm.rate:g}/s); events shed",
                               (1.0 - tokens) / self.storm.rate, "storm")
        self.buckets[topic] = (tokens - 1.0, now)
        while len(self.buckets) > self.storm.max_topics:
            self.buckets.popitem(last=False)

    def _retry_after(self, sub: _Sub, now: float) -> float:
        """When the full queue may have room: the earliest scheduled attempt, at least 1 s, at most the backoff cap.

        O(1) (the heap's top, possibly a stale entry: an estimate): it runs on every refused publish of a storm.
        """
        soonest = sub.heap[0][0] - now if sub.heap else 1.0
        return max(1.0, min(self.retry.cap, soonest))

    def durable(self, event_id: str, names: Iterable[str], now: float) -> None:
        """The driver made the event durable: it may now be delivered."""
        for n in names:
            sub = self.subs.get(n)
            p = sub.queue.get(event_id) if sub else None
            if sub is not None and p is not None and not p.durable:
                p.durable = True
                p.due = now
                heapq.heappush(sub.heap, (now, p.seq, event_id))

    def abort(self, event_id: str, names: Iterable[str]) -> None:
        """The driver could not persist the event: forget it (the publisher got an error)."""
        for n in names:
            sub = self.subs.get(n)
            if sub is not None:
                sub.queue.pop(event_id, None)

    def restore(self, name: str, event: Event, now: float) -> bool:
        """An event the store kept across a restart; False if its subscription is gone (drop it)."""
        sub = self.subs.get(name)
        if sub is None:
            self.shed["unsubscribed"] += 1
            return False
        if event.id in sub.queue:
            return True
        self._seq += 1
        sub.queue[event.id] = Pending(event, self._seq, due=now, durable=True)
        heapq.heappush(sub.heap, (now, self._seq, event.id))
        return True

    # ------------------------------------------------------------------ delivery

    def take_due(self, now: float) -> list[Delivery]:
        """Deliveries to start now (each subscription at most ``concurrency`` in flight), oldest first."""
        out: list[Delivery] = []
        for name in sorted(self.subs):
            sub = self.subs[name]
            while sub.heap and sub.in_flight < self.concurrency and sub.heap[0][0] <= now:
                due, seq, eid = heapq.heappop(sub.heap)
                p = sub.queue.get(eid)
                if p is None or p.seq != seq or p.in_flight or p.due != due:
                    continue  # stale heap entry
                p.in_flight = True
                sub.in_flight += 1
                out.append(Delivery(name, sub.spec.deployment, p.event, p.attempts + 1, p.dead, p.last_error))
        return out

    def complete(self, name: str, event_id: str, now: float, ok: bool, error: str = "", not_before: float = 0.0) -> str:
        """An attempt ended: ``delivered`` (drop it from the store), ``retry`` or ``dead`` (publish the dead letter,
        then :meth:`dead_lettered`)."""
        sub = self.subs.get(name)
        p = sub.queue.get(event_id) if sub else None
        if sub is None or p is None:
            return DELIVERED  # the subscription went away meanwhile: nothing left to do
        sub.in_flight -= 1
        p.in_flight = False
        if ok:
            del sub.queue[event_id]
            sub.stats.delivered += 1
            return DELIVERED
        p.attempts += 1
        p.last_error = error[:512]
        sub.stats.failures += 1
        if p.attempts >= sub.spec.max_attempts:
            p.dead = True
            p.in_flight = True  # held until the driver republished it
            sub.in_flight += 1
            return DEAD
        sub.stats.retries += 1
        self._schedule(sub, p, max(now + self.retry.delay(p.attempts, self.rng), not_before))
        return RETRY

    def due_at(self, name: str, event_id: str) -> float | None:
        p = self.subs[name].queue.get(event_id) if name in self.subs else None
        return p.due if p is not None else None

    def _schedule(self, sub: _Sub, p: Pending, at: float) -> None:
        p.due = at
        heapq.heappush(sub.heap, (at, p.seq, p.event.id))

    def dead_lettered(self, name: str, event_id: str) -> None:
        """The dead letter is published (durably): the event leaves the queue."""
        sub = self.subs.get(name)
        if sub is not None and sub.queue.pop(event_id, None) is not None:
            sub.in_flight -= 1
            sub.stats.dead_letters += 1

    def defer(self, name: str, event_id: str, at: float) -> None:
        """Publishing the dead letter was refused (backpressure): try again at ``at``."""
        sub = self.subs.get(name)
        p = sub.queue.get(event_id) if sub else None
        if sub is not None and p is not None and p.in_flight:
            sub.in_flight -= 1
            p.in_flight = False
            self._schedule(sub, p, at)

    def next_deadline(self) -> float | None:
        """When :meth:`take_due` next has something (None: nothing scheduled)."""
        best: float | None = None
        for sub in self.subs.values():
            if sub.heap and sub.in_flight < self.concurrency:
                t = sub.heap[0][0]
                best = t if best is None else min(best, t)
        return best

    # ------------------------------------------------------------------ status

    def status(self) -> list[dict[str, object]]:
        """One row per subscription: spec fields and queue depth, in flight, delivered, retries, dead letters."""
        rows = []
        for name in sorted(self.subs):
            s = self.subs[name]
            rows.append({
                "name": name, "topic": s.spec.topic, "deployment": s.spec.deployment, "queue_limit": s.spec.queue,
                "depth": len(s.queue), "in_flight": s.in_flight, "delivered": s.stats.delivered,
                "failures": s.stats.failures, "retries": s.stats.retries, "dead_letters": s.stats.dead_letters,
            })
        return rows
