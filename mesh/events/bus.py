"""The event bus a daemon runs (``daemon.bus``): publish, taps, and the delivery tasks.

:class:`EventBus` drives the sans-IO :class:`~mesh.events.delivery.DeliveryCore`:

* ``publish`` validates, admits the event into every matching subscription's queue (or raises
  :class:`~mesh.events.Backpressure`), persists those rows (group commit on a worker thread,
  fsync) and only then returns: an acknowledged event survives a crash of this node;
* the dispatcher starts the deliveries the core says are due, at most ``concurrency`` in flight
  per subscription, each through ``daemon.invocations.invoke(deployment, data, caller="event")``
  (which runs locally, forwards to the nearest replica or cold-starts an on-demand deployment);
* a success deletes the row and publishes the output on the subscription's ``reply_topic``; a
  failure is retried per the core's schedule; the last failure publishes the event on
  ``deadletter/<subscription>`` (meta ``attempts``, ``last_error``) before its row is deleted;
* taps (``bus.tap(pattern)``) see every event published on this node after it was acknowledged.

Without a store (tests, benches) events live in memory only.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterator

import structlog
import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from crdt.schema import SubscriptionSpec
from mesh.events.delivery import DEAD, DEADLETTER_PREFIX, DELIVERED, Delivery, DeliveryCore, RetryPolicy, StormPolicy
from mesh.events.event import MAX_META, Backpressure, Event, check_event_input
from mesh.events.store import EventStore, EventStoreError
from model.errors import SpecError
from model.topics import matches, validate_pattern

if TYPE_CHECKING:
    from mesh.daemon.node import Daemon

InvokeFn = Callable[[str, bytes, float], Awaitable[dict[str, Any]]]
INVOKE_TIMEOUT = 30.0  # seconds one delivery attempt may take
REFRESH_SECONDS = 5.0  # subscriptions re-read at least this often (besides on every subscription record)
PREFIX = "wasmatrix_"
MAX_HOPS = 8  # replies of replies (subscriptions chained through reply topics) before the chain is cut


class Tap:
    """A local observer of the events published on this node whose topic matches ``pattern``.

    An async iterator of :class:`Event`; bounded (``maxlen``): when the reader falls behind, new
    events are dropped and counted in ``dropped`` (the bus's ``wasmatrix_event_tap_drops_total``).
    """

    def __init__(self, bus: "EventBus", pattern: str, maxlen: int) -> None:
        self.bus = bus
        self.pattern = pattern
        self.maxlen = maxlen
        self.queue: deque[Event] = deque()
        self.dropped = 0
        self.closed = False
        self._ready = trio.Event()

    def offer(self, ev: Event) -> None:
        if self.closed:
            return
        if len(self.queue) >= self.maxlen:
            self.dropped += 1
            self.bus.tap_drops += 1
            return
        self.queue.append(ev)
        self._ready.set()

    def __aiter__(self) -> "Tap":
        return self

    async def __anext__(self) -> Event:
        while not self.queue:
            if self.closed:
                raise StopAsyncIteration
            await self._ready.wait()
            self._ready = trio.Event()
        return self.queue.popleft()

    def close(self) -> None:
        """Stop observing; a reader waiting in ``async for`` ends."""
        self.closed = True
        self.bus._taps.discard(self)
        self._ready.set()


@dataclass
class _Write:
    adds: list[tuple[str, Event]]
    deletes: list[tuple[str, str]]
    done: trio.Event = field(default_factory=trio.Event)
    error: Exception | None = None


class EventBus:
    """Publish, tap and deliver events on one node (see the module docstring)."""

    def __init__(
        self, node_id: str, *, invoke: InvokeFn | None = None, store: EventStore | None = None,
        subscriptions: Callable[[], list[SubscriptionSpec]] = list, rng: random.Random | None = None,
        retry: RetryPolicy = RetryPolicy(), storm: StormPolicy = StormPolicy(), concurrency: int = 8,
        invoke_timeout: float = INVOKE_TIMEOUT, log: Any = None, wall: Callable[[], float] = time.time,
    ) -> None:
        self.node_id = node_id
        self.invoke_fn = invoke
        self.store = store
        self.subscriptions_fn = subscriptions
        self.core = DeliveryCore(rng or random.Random(), retry, storm, concurrency)
        self.invoke_timeout = invoke_timeout
        self.log = log or structlog.get_logger("wasmatrix.events")
        self.wall = wall
        self._prefix = node_id[:12] or "local"
        self._boot = int(wall() * 1000)  # ids stay unique across restarts without a stored counter
        self._counter = 0
        self._taps: set[Tap] = set()
        self._writes: list[_Write] = []
        self._write_kick = trio.Event()
        self._wake = trio.Event()
        self._writer_running = False
        self._subs_dirty = True
        self.tap_drops = 0
        self.store_errors = 0
        self.restored = 0
        self.deliveries: dict[tuple[str, str], int] = {}  # (subscription, result) -> count
        self.metrics = EventMetrics(self)
        self.running = False

    @classmethod
    def for_daemon(cls, daemon: "Daemon") -> "EventBus":
        """The daemon's bus: its node id, the data dir's event store, its intent's subscriptions, its invoke path."""
        intent = daemon.core.intent
        assert intent is not None

        def subs() -> list[SubscriptionSpec]:
            return intent.doc.subscriptions()

        svc = daemon.invocations

        async def call(deployment: str, data: bytes, timeout: float) -> dict[str, Any]:
            return await svc.invoke(deployment, data, timeout=timeout, caller="event")  # type: ignore[no-any-return]

        return cls(daemon.node_id, invoke=call, store=EventStore(daemon.dd.path), subscriptions=subs,
                   rng=random.Random(daemon.rng.getrandbits(64)), log=daemon.log)

    # ------------------------------------------------------------------ publishing

    async def publish(self, topic: str, data: bytes, meta: dict[str, str] | None = None, *, source: str = "api") -> Event:
        """Queue an event durably in every matching subscription and tell the taps; returns it once acknowledged.

        Raises :class:`Backpressure` (a full queue, the storm policy) and ``ValueError`` (a bad
        topic, data or meta); ``EventStoreError`` when the store cannot be written (not acknowledged).
        """
        return (await self.publish_counted(topic, data, meta, source=source))[0]

    async def publish_counted(self, topic: Any, data: Any, meta: Any = None, *, source: str = "api") -> tuple[Event, list[str]]:
        """:meth:`publish`, also returning the subscriptions the event was queued in."""
        topic, data, meta = check_event_input(topic, data, meta)
        if not isinstance(source, str) or not 1 <= len(source) <= 64:
            raise ValueError("source must be a string of 1-64 characters")
        self._refresh_subscriptions()
        self._counter += 1
        ev = Event(f"{self._prefix}-{self._boot:x}-{self._counter}", topic, data, meta, source, self.wall())
        names = self.core.admit(ev, trio.current_time())
        if names and self.store is not None:
            try:
                await self._persist([(n, ev) for n in names], [])
            except EventStoreError:
                self.core.abort(ev.id, names)
                raise
        self.core.durable(ev.id, names, trio.current_time())
        if names:
            self._wake.set()
        for t in list(self._taps):
            if matches(t.pattern, topic):
                t.offer(ev)
        return ev, names

    def tap(self, pattern: str, maxlen: int = 1000) -> Tap:
        """Observe every event published on this node whose topic matches ``pattern`` (ValueError if invalid)."""
        try:
            validate_pattern(pattern)
        except SpecError as exc:
            raise ValueError(str(exc)) from None
        if not isinstance(maxlen, int) or maxlen < 1:
            raise ValueError("maxlen must be a positive integer")
        t = Tap(self, pattern, maxlen)
        self._taps.add(t)
        return t

    # ------------------------------------------------------------------ persistence (group commit)

    async def _persist(self, adds: list[tuple[str, Event]], deletes: list[tuple[str, str]], wait: bool = True) -> None:
        if self.store is None:
            return
        w = _Write(adds, deletes)
        self._writes.append(w)
        self._write_kick.set()
        if not self._writer_running:
            await self._flush()
        if wait:
            # Shielded: once handed to the writer the rows commit anyway, so the event stays queued
            # (delivered, at least once) rather than lingering in the store unknown to the core.
            with trio.CancelScope(shield=True):
                await w.done.wait()
            if w.error is not None:
                raise w.error

    def _delete(self, sub: str, eid: str) -> None:
        """Drop a delivered or dead-lettered row (not awaited: a crash before it only means a duplicate)."""
        if self.store is None:
            return
        self._writes.append(_Write([], [(sub, eid)]))
        self._write_kick.set()

    async def _flush(self) -> None:
        batch, self._writes = self._writes, []
        if not batch or self.store is None:
            return
        adds = [a for w in batch for a in w.adds]
        deletes = [d for w in batch for d in w.deletes]
        err: Exception | None = None
        try:
            await trio.to_thread.run_sync(self.store.apply, adds, deletes)
        except EventStoreError as exc:
            err = exc
            self.store_errors += 1
            self.log.error("event_store_failed", error=str(exc), adds=len(adds), deletes=len(deletes))
        except BaseException:  # cancelled before the thread ran it: nothing was written
            err = EventStoreError("the event bus stopped before the event was written")
            raise
        finally:
            for w in batch:
                w.error = err
                w.done.set()

    async def _writer(self) -> None:
        self._writer_running = True
        try:
            while True:
                await self._write_kick.wait()
                self._write_kick = trio.Event()
                await self._flush()
        finally:
            self._writer_running = False
            # Publishers still waiting would wait for ever (their wait is shielded): refuse them;
            # deletions stay for close().
            for w in [w for w in self._writes if w.adds]:
                w.error = EventStoreError("the event bus stopped before the event was written")
                w.done.set()
            self._writes = [w for w in self._writes if not w.adds]

    # ------------------------------------------------------------------ subscriptions

    def subscriptions_changed(self) -> None:
        """A subscription record became visible: re-read them before the next publish or dispatch."""
        self._subs_dirty = True
        self._wake.set()

    def _refresh_subscriptions(self) -> None:
        if not self._subs_dirty:
            return
        self._subs_dirty = False
        try:
            specs = self.subscriptions_fn()
        except Exception as exc:  # a bad record never stops the bus: keep the previous set
            self.log.warning("event_subscriptions_unreadable", error=f"{type(exc).__name__}: {exc}")
            return
        for name, eid in self.core.set_subscriptions(specs):
            self._delete(name, eid)

    # ------------------------------------------------------------------ running

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Reload the queued events, then deliver until cancelled."""
        self._refresh_subscriptions()
        if self.store is not None:
            rows, damaged = await trio.to_thread.run_sync(self.store.load)
            now = trio.current_time()
            gone = []
            for name, ev in rows:
                if self.core.restore(name, ev, now):
                    self.restored += 1
                else:
                    gone.append((name, ev.id))
            for name, eid in gone:
                self._delete(name, eid)
            if rows or damaged:
                self.log.info("events_restored", queued=self.restored, dropped=len(gone), damaged=damaged)
            if self.store.moved_aside is not None:
                self.log.error("event_store_damaged", moved_to=str(self.store.moved_aside),
                               detail="the event store was not a database: set aside, queued events in it are lost")
        self.running = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                nursery.start_soon(self._refresher)
                task_status.started()
                await self._dispatch(nursery)
        finally:
            self.running = False

    async def _refresher(self) -> None:
        while True:
            await trio.sleep(REFRESH_SECONDS)
            self.subscriptions_changed()

    async def _dispatch(self, nursery: trio.Nursery) -> None:
        while True:
            self._wake = trio.Event()
            self._refresh_subscriptions()
            for d in self.core.take_due(trio.current_time()):
                nursery.start_soon(self._deliver, d)
            at = self.core.next_deadline()
            with trio.move_on_at(at if at is not None else math.inf):
                await self._wake.wait()

    def _count(self, sub: str, result: str) -> None:
        self.deliveries[(sub, result)] = self.deliveries.get((sub, result), 0) + 1

    async def _deliver(self, d: Delivery) -> None:
        try:
            if d.dead:
                await self._dead_letter(d.subscription, d.event, d.attempt - 1, d.last_error)
                return
            ok, error, not_before = await self._attempt(d)
            outcome = self.core.complete(d.subscription, d.event.id, trio.current_time(), ok, error, not_before)
            self._count(d.subscription, "delivered" if ok else "failed")
            if outcome == DELIVERED:
                self._delete(d.subscription, d.event.id)
            elif outcome == DEAD:
                await self._dead_letter(d.subscription, d.event, d.attempt, error)
            else:
                self.log.info("event_retry", subscription=d.subscription, event_id=d.event.id, attempt=d.attempt, error=error[:200],
                              due_in_s=round((self.core.due_at(d.subscription, d.event.id) or 0) - trio.current_time(), 3))
        finally:
            self._wake.set()

    async def _attempt(self, d: Delivery) -> tuple[bool, str, float]:
        """One invocation: (ok, error, not before) — the reply is published before a success counts."""
        if self.invoke_fn is None:
            return False, "no_invoker: this bus cannot run deployments", 0.0
        try:
            res = await self.invoke_fn(d.deployment, d.event.data, self.invoke_timeout)
        except Exception as exc:  # the invoke path answers errors as results; anything else is a bug there
            self.log.warning("event_invoke_raised", subscription=d.subscription, error=f"{type(exc).__name__}: {exc}")
            return False, f"internal: {type(exc).__name__}: {exc}", 0.0
        if not res.get("ok"):
            ra = res.get("retry_after_s")
            not_before = trio.current_time() + float(ra) if isinstance(ra, (int, float)) and ra > 0 else 0.0
            return False, f"{res.get('code')}: {res.get('message') or ''}".rstrip(": "), not_before
        spec = self.core.subs[d.subscription].spec if d.subscription in self.core.subs else None
        if spec is not None and spec.reply_topic:
            out = res.get("output") or b""
            meta = {"reply_to": d.event.id, "deployment": d.deployment}
            if "reply_to" in d.event.meta:  # a reply to a reply: count the chain, cut a cycle of subscriptions
                hops = int(d.event.meta.get("hops", "1")) + 1 if d.event.meta.get("hops", "1").isdigit() else MAX_HOPS + 1
                if hops > MAX_HOPS:
                    self.core.shed["reply_loop"] = self.core.shed.get("reply_loop", 0) + 1
                    self.log.warning("event_reply_loop", subscription=d.subscription, event_id=d.event.id, hops=hops)
                    return True, "", 0.0
                meta["hops"] = str(hops)
            try:
                await self.publish(spec.reply_topic, bytes(out), meta, source="reply")
            except Backpressure as bp:
                return False, f"reply refused: {bp}", trio.current_time() + bp.retry_after_s
            except (ValueError, EventStoreError) as exc:
                return False, f"reply not published: {exc}", 0.0
        return True, "", 0.0

    async def _dead_letter(self, sub: str, ev: Event, attempts: int, error: str) -> None:
        ours = {"attempts": str(attempts), "last_error": error[:256], "subscription": sub, "topic": ev.topic, "event_id": ev.id}
        keep = [k for k in sorted(ev.meta) if k not in ours][: MAX_META - len(ours)]
        meta = {**{k: ev.meta[k] for k in keep}, **ours}
        try:
            await self.publish(DEADLETTER_PREFIX + sub, ev.data, meta, source="deadletter")
        except Backpressure as bp:
            self.core.defer(sub, ev.id, trio.current_time() + bp.retry_after_s)
            self.log.warning("event_deadletter_deferred", subscription=sub, event_id=ev.id, retry_after_s=bp.retry_after_s)
            return
        except (ValueError, EventStoreError) as exc:
            self.core.defer(sub, ev.id, trio.current_time() + 1.0)
            self.log.error("event_deadletter_failed", subscription=sub, event_id=ev.id, error=str(exc))
            return
        self.core.dead_lettered(sub, ev.id)
        self._count(sub, "dead_letter")
        self._delete(sub, ev.id)
        self.log.warning("event_dead_lettered", subscription=sub, event_id=ev.id, attempts=attempts, last_error=error[:200])

    # ------------------------------------------------------------------ status

    def status(self) -> list[dict[str, Any]]:
        """``GET /v1/subscriptions``: one row per subscription with its queue and counters."""
        self._refresh_subscriptions()
        return self.core.status()

    def close(self) -> None:
        """At shutdown (after the tasks ended): write what the writer had not yet (deletions of
        delivered events, so a clean restart does not deliver them again), then close the store."""
        if self.store is None:
            return
        batch, self._writes = self._writes, []
        try:
            self.store.apply([a for w in batch for a in w.adds], [d for w in batch for d in w.deletes])
        except EventStoreError as exc:
            self.log.error("event_store_failed", error=str(exc), at="shutdown")
        self.store.close()


class EventMetrics(Collector):
    """``wasmatrix_event*`` families (docs/METRICS.md), read at scrape time."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus

    def collect(self) -> Iterator[Metric]:
        b, core = self.bus, self.bus.core
        yield CounterMetricFamily(PREFIX + "events_published", "Events acknowledged by publish on this node (any source)",
                                  value=core.published)
        d = CounterMetricFamily(PREFIX + "event_deliveries", "Delivery attempts by subscription and result "
                                "(delivered, failed, dead_letter)", labels=["subscription", "result"])
        for (sub, result), n in sorted(b.deliveries.items()):
            d.add_metric([sub, result], n)
        yield d
        subs = [core.subs[n] for n in sorted(core.subs)]
        yield CounterMetricFamily(PREFIX + "event_retries", "Failed delivery attempts scheduled again (backoff)",
                                  value=sum(s.stats.retries for s in subs))
        yield CounterMetricFamily(PREFIX + "event_dead_letters", "Events republished on deadletter/<subscription> after max attempts",
                                  value=sum(s.stats.dead_letters for s in subs))
        q = GaugeMetricFamily(PREFIX + "event_queue_depth", "Events queued (waiting, retrying or in flight) per subscription",
                              labels=["subscription"])
        for name in sorted(core.subs):
            q.add_metric([name], len(core.subs[name].queue))
        yield q
        s = CounterMetricFamily(PREFIX + "events_shed", "Events refused or dropped, by reason (queue_full, storm: the "
                                "publisher got 429; unsubscribed: queued for a removed subscription; deadletter_loop, "
                                "reply_loop)",
                                labels=["reason"])
        for reason in sorted(core.shed):
            s.add_metric([reason], core.shed[reason])
        yield s
        yield CounterMetricFamily(PREFIX + "event_tap_drops", "Events a slow local tap (e.g. the MQTT bridge) did not take",
                                  value=b.tap_drops)
        yield CounterMetricFamily(PREFIX + "event_store_errors", "Failed writes of the event store (publishes refused)",
                                  value=b.store_errors)
