"""The events core: MQTT topic grammar (spec 4.7 examples), filters, backoff, dead letters, backpressure, storms."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio

from crdt.errors import ValidationError
from crdt.schema import SubscriptionSpec
from mesh.events import Backpressure, Event
from mesh.events.bus import EventBus
from mesh.events.delivery import DEAD, DELIVERED, RETRY, DeliveryCore, RetryPolicy, StormPolicy, accepts
from mesh.events.store import EventStore
from mesh.events.topics import matches, validate_pattern, validate_topic
from model.errors import SpecError


# --- topics: the examples of MQTT 3.1.1 section 4.7 -------------------------------------

@pytest.mark.parametrize("pattern,topic,expected", [
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/#", "sport", True),
    ("sport/tennis/#", "sport/tennis", True),
    ("#", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player2", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("sport/+", "sport/tennis/player1", False),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("#", "$SYS/broker/load", False),
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("$SYS/#", "$SYS/broker/load", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("sport/tennis", "sport/tennis", True),
    ("sport/tennis", "Sport/tennis", False),  # topics are case-sensitive
])
def test_mqtt_spec_matching_examples(pattern: str, topic: str, expected: bool) -> None:
    assert validate_pattern(pattern) == pattern
    assert matches(pattern, topic) is expected


@pytest.mark.parametrize("pattern", ["sport/tennis#", "sport/tennis/#/ranking", "sport+", "#/a", "a/b+/c", "", "a\x00b", "x" * 257])
def test_invalid_patterns_refused(pattern: str) -> None:
    with pytest.raises(SpecError):
        validate_pattern(pattern)


@pytest.mark.parametrize("topic", ["sport/+", "sport/#", "", "a\nb", "y" * 257])
def test_invalid_topics_refused(topic: str) -> None:
    with pytest.raises(SpecError):
        validate_topic(topic)


def test_valid_patterns_of_the_spec() -> None:
    for p in ("+", "+/tennis/#", "sport/+/player1", "#", "/+", "+/+"):
        assert validate_pattern(p) == p


# --- filters ----------------------------------------------------------------------------

def _ev(eid: str, topic: str = "home/kitchen/temp", data: bytes = b"", meta: dict[str, str] | None = None) -> Event:
    return Event(eid, topic, data, meta or {}, "api", 0.0)


def test_filters_on_meta_globs_and_content() -> None:
    spec = SubscriptionSpec("alarms", "home/#", "d", where={"room": "kitchen*", "sev": "high"}, contains="ALARM")
    assert accepts(spec, _ev("1", data=b"an ALARM here", meta={"room": "kitchen-2", "sev": "high"}))
    assert not accepts(spec, _ev("2", data=b"an alarm here", meta={"room": "kitchen-2", "sev": "high"}))  # case-sensitive
    assert not accepts(spec, _ev("3", data=b"ALARM", meta={"room": "bathroom", "sev": "high"}))
    assert not accepts(spec, _ev("4", data=b"ALARM", meta={"room": "kitchen"}))  # a missing key never matches
    assert not accepts(spec, _ev("5", topic="office/temp", data=b"ALARM", meta={"room": "kitchen", "sev": "high"}))


def test_subscription_spec_validation() -> None:
    with pytest.raises(ValidationError):
        SubscriptionSpec("s", "a/#/b", "d")
    with pytest.raises(ValidationError):
        SubscriptionSpec("s", "a/b", "d", reply_topic="out/+")
    with pytest.raises(ValidationError):
        SubscriptionSpec("s", "a/b", "d", max_attempts=0)
    with pytest.raises(ValidationError):
        SubscriptionSpec("s", "a/b", "d", queue=0)
    with pytest.raises(ValidationError):
        SubscriptionSpec("S p", "a/b", "d")
    with pytest.raises(ValidationError, match="forever"):
        SubscriptionSpec("s", "a/+", "d", reply_topic="a/out")  # its own replies would match it
    s = SubscriptionSpec("s", "a/+", "d", {"k": "v*"}, "x", "out/a", 7, 10)
    assert SubscriptionSpec.from_payload(s.to_payload()) == s


# --- retry schedule -----------------------------------------------------------------------

def test_backoff_window_doubles_from_base_to_cap() -> None:
    r = RetryPolicy(base=0.2, cap=30.0)
    # 0.2 * 2**(n-1): 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, then capped at 30
    assert [r.bound(n) for n in range(1, 10)] == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0])
    assert r.bound(500) == 30.0
    rng = random.Random(3)
    for n in range(1, 12):
        for _ in range(50):
            assert 0.0 <= r.delay(n, rng) <= r.bound(n)


def _core(seed: int = 42, **kw: object) -> DeliveryCore:
    return DeliveryCore(random.Random(seed), **kw)  # type: ignore[arg-type]


def test_failed_attempts_retry_with_full_jitter_then_dead_letter_after_max_attempts() -> None:
    core = _core(42)
    core.set_subscriptions([SubscriptionSpec("s", "t/#", "d", max_attempts=3)])
    ev = _ev("e1", "t/x")
    assert core.admit(ev, 10.0) == ["s"]
    assert core.take_due(10.0) == []  # not durable yet: nothing is delivered before the ack
    core.durable("e1", ["s"], 10.0)
    [d] = core.take_due(10.0)
    assert (d.subscription, d.deployment, d.event.id, d.attempt) == ("s", "d", "e1", 1)
    assert core.take_due(10.0) == []  # in flight
    assert core.complete("s", "e1", 11.0, False, "trap: boom") == RETRY
    # random.Random(42).random() == 0.6394267984578837; window after 1 failure: 0.2 s
    assert core.next_deadline() == pytest.approx(11.0 + 0.6394267984578837 * 0.2)
    assert core.take_due(11.1) == []
    [d] = core.take_due(11.2)
    assert d.attempt == 2
    assert core.complete("s", "e1", 12.0, False, "trap: boom") == RETRY
    due = core.next_deadline()
    assert due is not None and 12.0 <= due <= 12.4  # window after 2 failures: 0.4 s
    [d] = core.take_due(due)
    assert d.attempt == 3
    assert core.complete("s", "e1", 13.0, False, "trap: last") == DEAD
    assert core.status()[0]["depth"] == 1  # held until the dead letter is out
    core.dead_lettered("s", "e1")
    row = core.status()[0]
    assert (row["depth"], row["in_flight"], row["failures"], row["retries"], row["dead_letters"]) == (0, 0, 3, 2, 1)


def test_quota_retry_after_delays_the_next_attempt() -> None:
    core = _core(1)
    core.set_subscriptions([SubscriptionSpec("s", "t", "d")])
    core.admit(_ev("e", "t"), 0.0)
    core.durable("e", ["s"], 0.0)
    core.take_due(0.0)
    assert core.complete("s", "e", 1.0, False, "quota", not_before=6.0) == RETRY
    assert core.next_deadline() == 6.0


def test_concurrency_bound_per_subscription_and_fifo_order() -> None:
    core = _core(concurrency=2)
    core.set_subscriptions([SubscriptionSpec("s", "t", "d")])
    for i in range(5):
        core.admit(_ev(f"e{i}", "t"), 0.0)
        core.durable(f"e{i}", ["s"], 0.0)
    assert [d.event.id for d in core.take_due(0.0)] == ["e0", "e1"]
    assert core.complete("s", "e0", 0.1, True) == DELIVERED
    assert [d.event.id for d in core.take_due(0.1)] == ["e2"]


# --- backpressure -------------------------------------------------------------------------

def test_full_queue_refuses_the_publish_everywhere_with_retry_after() -> None:
    core = _core()
    core.set_subscriptions([SubscriptionSpec("small", "t/#", "d", queue=2), SubscriptionSpec("big", "t/#", "d")])
    for i in range(2):
        assert core.admit(_ev(f"e{i}", "t/a"), 0.0) == ["big", "small"]
    with pytest.raises(Backpressure) as bp:
        core.admit(_ev("e2", "t/a"), 0.0)
    assert bp.value.reason == "queue_full" and bp.value.subscription == "small"
    assert bp.value.retry_after_s >= 1.0
    depth = {r["name"]: r["depth"] for r in core.status()}
    assert depth == {"big": 2, "small": 2}  # all or nothing: "big" did not get e2 either
    assert core.shed["queue_full"] == 1
    # an event the full subscription does not match still goes through
    assert core.admit(_ev("e3", "u"), 0.0) == []


def test_storm_policy_sheds_beyond_the_topic_bucket_and_refills() -> None:
    core = _core(storm=StormPolicy(rate=10.0, burst=3.0))
    for i in range(3):
        core.admit(_ev(f"a{i}", "storm/x"), 5.0)
    with pytest.raises(Backpressure) as bp:
        core.admit(_ev("a3", "storm/x"), 5.0)
    assert bp.value.reason == "storm"
    assert bp.value.retry_after_s == pytest.approx(0.1)  # one token at 10/s
    core.admit(_ev("b0", "calm/y"), 5.0)  # per topic: another topic is unaffected
    core.admit(_ev("a4", "storm/x"), 5.1)  # refilled one token
    assert core.shed["storm"] == 1
    assert core.published == 5


def test_removed_subscription_drops_its_queue_counted() -> None:
    core = _core()
    core.set_subscriptions([SubscriptionSpec("s", "t", "d")])
    core.admit(_ev("e", "t"), 0.0)
    assert core.set_subscriptions([]) == [("s", "e")]
    assert core.shed["unsubscribed"] == 1


def test_own_dead_letters_do_not_loop_back() -> None:
    core = _core()
    core.set_subscriptions([SubscriptionSpec("dl", "deadletter/#", "d"), SubscriptionSpec("other", "deadletter/#", "d")])
    assert core.admit(_ev("e", "deadletter/dl"), 0.0) == ["other"]
    assert core.shed["deadletter_loop"] == 1


# --- the bus in memory ---------------------------------------------------------------------

def test_bus_delivers_replies_and_dead_letters_in_memory() -> None:
    calls: list[bytes] = []

    async def invoke(dep: str, data: bytes, timeout: float) -> dict[str, object]:
        calls.append(data)
        if data == b"trap":
            return {"ok": False, "code": "trap", "message": "unreachable executed"}
        return {"ok": True, "code": "ok", "output": data.upper()}

    subs = [SubscriptionSpec("up", "in/+", "upper", reply_topic="out/up", max_attempts=2)]

    async def main() -> None:
        bus = EventBus("0123456789abcdef", invoke=invoke, subscriptions=lambda: subs, rng=random.Random(5),
                       retry=RetryPolicy(base=0.01, cap=0.05))
        async with trio.open_nursery() as n:
            await n.start(bus.run)
            tap = bus.tap("#", maxlen=10)
            with pytest.raises(ValueError):
                await bus.publish("in/+", b"x")
            e1 = await bus.publish("in/a", b"hello", {"k": "v"})
            seen: list[Event] = []
            with trio.fail_after(5):
                async for ev in tap:
                    seen.append(ev)
                    if ev.topic == "out/up":
                        break
            assert [e.topic for e in seen] == ["in/a", "out/up"]
            assert seen[1].data == b"HELLO" and seen[1].meta == {"reply_to": e1.id, "deployment": "upper"}
            e2 = await bus.publish("in/b", b"trap")
            with trio.fail_after(5):
                async for ev in tap:
                    if ev.topic.startswith("deadletter/"):
                        break
            assert ev.topic == "deadletter/up" and ev.data == b"trap"
            assert ev.meta["attempts"] == "2" and ev.meta["event_id"] == e2.id
            assert ev.meta["last_error"] == "trap: unreachable executed"
            assert calls == [b"hello", b"trap", b"trap"]
            row = bus.status()[0]
            assert (row["delivered"], row["dead_letters"], row["depth"]) == (1, 1, 0)
            tap.close()
            n.cancel_scope.cancel()

    trio.run(main)


def test_tap_is_bounded_and_counts_drops() -> None:
    async def main() -> None:
        bus = EventBus("n1")
        tap = bus.tap("a/#", maxlen=2)
        for i in range(5):
            await bus.publish("a/b", str(i).encode())
        await bus.publish("zzz", b"not matched")
        assert [e.data for e in tap.queue] == [b"0", b"1"]
        assert tap.dropped == 3 and bus.tap_drops == 3

    trio.run(main)


def test_a_cycle_of_subscriptions_through_reply_topics_is_cut_after_8_hops() -> None:
    calls: list[str] = []

    async def invoke(dep: str, data: bytes, timeout: float) -> dict[str, object]:
        calls.append(dep)
        return {"ok": True, "code": "ok", "output": data}

    # ping replies on b, pong (subscribed to b) replies on a: a cycle
    subs = [SubscriptionSpec("ping", "a", "p1", reply_topic="b"), SubscriptionSpec("pong", "b", "p2", reply_topic="a")]

    async def main() -> None:
        bus = EventBus("n", invoke=invoke, subscriptions=lambda: subs, rng=random.Random(1))
        tap = bus.tap("#", maxlen=100)
        async with trio.open_nursery() as n:
            await n.start(bus.run)
            await bus.publish("a", b"x")
            with trio.fail_after(5):
                while bus.core.shed["reply_loop"] == 0:
                    await trio.sleep(0.01)
            await trio.sleep(0.05)
            n.cancel_scope.cancel()
        hops = [e.meta.get("hops") for e in tap.queue]
        # the event, its reply (no hops), then replies of replies numbered 2..8; the 9th is cut
        assert hops == [None, None, "2", "3", "4", "5", "6", "7", "8"]
        assert [e.topic for e in tap.queue] == ["a", "b", "a", "b", "a", "b", "a", "b", "a"]
        assert len(calls) == 9 and bus.core.shed["reply_loop"] == 1

    trio.run(main)


def test_store_keeps_queued_events_across_a_bus_restart_and_forgets_them_once_delivered(tmp_path: Path) -> None:
    subs = [SubscriptionSpec("s", "jobs/#", "d", max_attempts=100)]
    fail = [True]

    async def invoke(dep: str, data: bytes, timeout: float) -> dict[str, object]:
        return {"ok": False, "code": "no_replica", "message": "none"} if fail[0] else {"ok": True, "code": "ok", "output": b""}

    async def first() -> str:
        store = EventStore(tmp_path)
        bus = EventBus("n1", invoke=invoke, store=store, subscriptions=lambda: subs, rng=random.Random(2))
        async with trio.open_nursery() as n:
            await n.start(bus.run)
            ev = await bus.publish("jobs/1", b"payload", {"k": "v"})
            assert store.count() == 1  # acknowledged: the row is committed
            await bus.publish("other", b"no subscriber")
            with trio.fail_after(5):
                while bus.status()[0]["failures"] < 2:
                    await trio.sleep(0.01)
            n.cancel_scope.cancel()
        store.close()
        return ev.id

    async def second(eid: str) -> None:
        fail[0] = False
        store = EventStore(tmp_path)
        rows, damaged = store.load()
        assert [(s, e.id, e.data, e.meta) for s, e in rows] == [("s", eid, b"payload", {"k": "v"})] and damaged == 0
        bus = EventBus("n1", invoke=invoke, store=store, subscriptions=lambda: subs, rng=random.Random(3))
        async with trio.open_nursery() as n:
            await n.start(bus.run)
            assert bus.restored == 1
            with trio.fail_after(5):
                while store.count():
                    await trio.sleep(0.01)
            assert bus.status()[0]["delivered"] == 1
            n.cancel_scope.cancel()
        store.close()

    eid = trio.run(first)
    trio.run(second, eid)


def test_a_damaged_event_store_is_set_aside_and_a_fresh_one_opened(tmp_path: Path) -> None:
    (tmp_path / "events.sqlite").write_bytes(b"this is not a database" * 100)
    store = EventStore(tmp_path)
    assert store.moved_aside == tmp_path / "events.sqlite.corrupt-1"
    assert store.moved_aside.read_bytes().startswith(b"this is not a database")
    store.apply([("s", _ev("e1", "t", b"x"))], [])
    assert store.count() == 1
    store.close()


def test_retry_after_of_a_full_queue_is_the_time_to_its_next_scheduled_attempt() -> None:
    core = _core()
    core.set_subscriptions([SubscriptionSpec("s", "t", "d", queue=1)])
    core.admit(_ev("e", "t"), 0.0)
    core.durable("e", ["s"], 0.0)
    core.take_due(0.0)
    core.complete("s", "e", 1.0, False, "quota", not_before=12.0)
    with pytest.raises(Backpressure) as bp:
        core.admit(_ev("f", "t"), 2.0)
    assert bp.value.retry_after_s == pytest.approx(10.0)  # due at 12, asked at 2
    with pytest.raises(Backpressure) as bp:
        core.admit(_ev("g", "t"), 11.9)
    assert bp.value.retry_after_s == 1.0  # at least 1 s
