"""The MQTT bridge (mesh/mqtt) against a real mosquitto on loopback, with a small in-memory bus.

The bus here implements the two calls of the serving contract the bridge uses (``publish`` and
``tap``). With ``echo`` it stands in for a subscription whose module upper-cases its input: an
event on ``sensors/X`` is followed by one on ``out/X`` carrying the upper-cased data and
``reply_to`` meta — so these tests cover the bridge alone; tests/test_mqtt_daemon.py runs the real
event bus, subscription and module in a daemon.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from mesh.daemon.config import DaemonConfigError, MqttConfig, load_config
from mesh.events import Backpressure, Event
from mesh.events.store import EventStoreError
from mesh.events.topics import matches
from mesh.metrics import render
from mesh.mqtt import MqttBridge
from tests.harness.promtool import assert_documented, promtool_check
from tests.harness.mosquitto import Broker, MqttClient, broker  # noqa: F401  (fixture)

TIMEOUT = 30.0


class FakeTap:
    def __init__(self, bus: "FakeBus", pattern: str, maxlen: int) -> None:
        self.bus, self.pattern = bus, pattern
        self.send, self.recv = trio.open_memory_channel[Event](maxlen)

    def push(self, ev: Event) -> None:
        self.send.send_nowait(ev)

    def __aiter__(self) -> "FakeTap":
        return self

    async def __anext__(self) -> Event:
        try:
            return await self.recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    def close(self) -> None:
        self.send.close()
        self.bus.taps.remove(self)


class FakeBus:
    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.events: list[Event] = []
        self.taps: list[FakeTap] = []
        self.refuse = 0  # the next N publishes raise Backpressure
        self.store_fail = 0  # the next N publishes raise EventStoreError (after the Backpressure ones)
        self.gate: trio.Event | None = None  # publish waits for it (never returns while unset)
        self.calls = 0

    async def publish(self, topic: str, data: bytes, meta: dict[str, str] | None = None, *, source: str = "api") -> Event:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.refuse:
            self.refuse -= 1
            raise Backpressure("subscription queue full", 0.05)
        if self.store_fail:
            self.store_fail -= 1
            raise EventStoreError("events.sqlite: disk I/O error")
        if topic.endswith("/bad"):  # stands in for the bus's topic and data checks
            raise ValueError(f"topic {topic!r} refused")
        return self.emit(topic, data, meta or {}, source)

    def emit(self, topic: str, data: bytes, meta: dict[str, str], source: str) -> Event:
        ev = Event(f"fake-{len(self.events) + 1}", topic, bytes(data), dict(meta), source, 0.0)
        self.events.append(ev)
        for t in list(self.taps):
            if matches(t.pattern, topic):
                t.push(ev)
        if self.echo and topic.startswith("sensors/"):
            self.emit("out/" + topic.split("/", 1)[1], data.upper(), {"reply_to": ev.id}, "event")
        return ev

    def tap(self, pattern: str, maxlen: int = 1000) -> FakeTap:
        t = FakeTap(self, pattern, maxlen)
        self.taps.append(t)
        return t


def _bridge(b: Broker, bus: FakeBus, inputs: tuple[str, ...] = ("sensors/#",), outputs: tuple[str, ...] = ("out/#",),
            client_id: str = "bridge-test") -> MqttBridge:
    return MqttBridge(MqttConfig(("127.0.0.1", b.port), inputs, outputs), bus, client_id,
                      reconnect_min=0.1, reconnect_max=0.5)  # type: ignore[arg-type]


@asynccontextmanager
async def _running(bridge: MqttBridge, *, connected: bool = True) -> AsyncIterator[trio.Nursery]:
    """The bridge running (and, with ``connected``, subscribed) for the block; stopped after it."""
    async with trio.open_nursery() as n:
        await n.start(bridge.run)
        if connected:
            with trio.fail_after(TIMEOUT):
                await bridge.wait_connected()
        yield n
        n.cancel_scope.cancel()


async def _until(pred: Any, what: str, timeout: float = TIMEOUT) -> None:
    with trio.move_on_after(timeout):
        while not pred():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"{what}: not within {timeout} s")


def _sample(text: str, key: str) -> float:
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{key} not in /metrics")


def test_in_and_out_through_mosquitto(broker: Broker) -> None:
    ext = MqttClient(broker, "ext-1", subscribe=("out/#", "sensors/#"))
    bus = FakeBus(echo=True)

    async def main() -> None:
        bridge = _bridge(broker, bus)
        async with _running(bridge):
            ext.publish("sensors/t1", b"hello")
            await _until(lambda: ext.payloads("out/t1") == [b"HELLO"], "the echo of sensors/t1 on out/t1")
            # The broker message became one bus event with the contract's meta and source.
            came = [e for e in bus.events if e.topic == "sensors/t1"]
            assert [(e.data, e.meta, e.source) for e in came] == [(b"hello", {"mqtt": "1"}, "mqtt")]
            # Mesh events: on an out pattern -> to the broker; from the broker (mqtt=1) -> never back; others -> no.
            bus.emit("out/x", b"mesh", {}, "api")
            bus.emit("out/loop", b"came-from-broker", {"mqtt": "1"}, "mqtt")
            bus.emit("elsewhere/x", b"not-bridged", {}, "api")
            await _until(lambda: ext.payloads("out/x") == [b"mesh"], "out/x on the broker")
            await _until(lambda: bridge.counts.messages.get(("out", "acked")) == 2, "two PUBACKs")
            await trio.sleep(0.3)  # time for a wrongly bridged message to arrive
            assert ext.payloads("out/loop") == [] and [t for t, _ in ext.received if t.startswith("elsewhere")] == []
            text = render(_registry(bridge)).decode()
            assert _sample(text, "wasmatrix_mqtt_connected") == 1
            assert _sample(text, 'wasmatrix_mqtt_messages_total{direction="in",result="published"}') == 1
            assert _sample(text, 'wasmatrix_mqtt_messages_total{direction="out",result="acked"}') == 2
            assert _sample(text, 'wasmatrix_mqtt_messages_total{direction="out",result="looped"}') == 1
            assert _sample(text, 'wasmatrix_mqtt_pending_acks{direction="out"}') == 0
            promtool_check(text.encode())
            _documented(text)

    try:
        trio.run(main)
    finally:
        ext.close()


def _documented(text: str) -> None:
    """docs/METRICS.md lists every MQTT family, label and label value the bridge exports."""
    from prometheus_client.parser import text_string_to_metric_families

    doc = (Path(__file__).parent.parent / "docs" / "METRICS.md").read_text()
    section = doc[doc.index("### MQTT bridge"):]
    section = section[:section.index("\n### ")]
    fams = list(text_string_to_metric_families(text))
    assert len(fams) == 5
    assert_documented(fams, section)


def _registry(bridge: MqttBridge) -> Any:
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry(auto_describe=False)
    reg.register(bridge.metrics)
    return reg


def test_ack_only_after_publish_returned_and_backpressure_holds_the_message(broker: Broker,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import mesh.mqtt.bridge as bridge_module

    monkeypatch.setattr(bridge_module, "ERROR_RETRY", 0.05)
    ext = MqttClient(broker, "ext-2")

    async def main() -> None:
        # 1. The bus never returns: the message must stay unacknowledged at the broker.
        stuck = FakeBus()
        stuck.gate = trio.Event()
        bridge = _bridge(broker, stuck, outputs=())
        async with _running(bridge):
            ext.publish("sensors/a", b"first")
            await _until(lambda: stuck.calls == 1, "the bridge handed the message to the bus")
            assert len(bridge.pending_in) == 1
        # 2. A new bridge process with the same client id: the broker redelivers the unacknowledged message.
        #    This bus refuses it twice (Backpressure), then fails to store it once: the bridge waits and
        #    retries each time, then acks.
        bus = FakeBus()
        bus.refuse, bus.store_fail = 2, 1
        bridge = _bridge(broker, bus, outputs=())
        async with _running(bridge, connected=False):
            await _until(lambda: [e.data for e in bus.events] == [b"first"], "the redelivered message published")
            assert bridge.counts.messages[("in", "backpressure")] == 2
            assert bridge.counts.messages[("in", "error")] == 1
            assert bus.calls == 4
            await _until(lambda: not bridge.pending_in, "acknowledged")
        # 3. Acknowledged now: a third bridge gets nothing again.
        bus3 = FakeBus()
        bridge = _bridge(broker, bus3, outputs=())
        async with _running(bridge):
            ext.publish("sensors/b", b"second")
            await _until(lambda: [e.data for e in bus3.events] == [b"second"], "the next message")

    try:
        trio.run(main)
    finally:
        ext.close()


def test_invalid_message_is_acked_counted_and_not_redelivered(broker: Broker) -> None:
    """A message the bus refuses as invalid (ValueError) would fail forever: acknowledged, counted, logged."""
    ext = MqttClient(broker, "ext-3")

    async def run_once(bus: FakeBus, send: list[tuple[str, bytes]]) -> MqttBridge:
        bridge = _bridge(broker, bus, outputs=())
        async with _running(bridge):
            for topic, data in send:
                ext.publish(topic, data)
            await _until(lambda: bus.calls == len(send) and not bridge.pending_in, "every message handled")
        return bridge

    async def main() -> None:
        bridge = await run_once(FakeBus(), [("sensors/bad", b"x"), ("sensors/ok", b"y")])
        assert bridge.counts.messages == {("in", "rejected"): 1, ("in", "published"): 1}
        bus = FakeBus()
        await run_once(bus, [("sensors/next", b"z")])  # nothing redelivered before it
        assert [e.topic for e in bus.events] == ["sensors/next"]

    try:
        trio.run(main)
    finally:
        ext.close()


def test_broker_restart_mid_stream_loses_no_acknowledged_message(broker: Broker) -> None:
    n_msgs = 50
    out = MqttClient(broker, "ext-listener", subscribe=("out/#",))
    pub = MqttClient(broker, "ext-publisher")
    bus = FakeBus(echo=True)
    infos: list[tuple[bytes, int]] = []

    async def main() -> None:
        bridge = _bridge(broker, bus)
        async with _running(bridge) as n:
            for i in range(n_msgs):
                payload = f"m{i:03d}".encode()
                infos.append((payload, pub.publish("sensors/t1", payload)))
                if i == n_msgs // 3:  # down for 0.5 s while the publisher keeps going (its client queues)
                    n.start_soon(trio.to_thread.run_sync, broker.restart, 0.5)
                await trio.sleep(0.02)
            await _until(lambda: all(pub.is_acked(mid) for _, mid in infos), "the broker acknowledged every publish")
            want = {p.upper() for p, _ in infos}
            await _until(lambda: want <= set(out.payloads("out/t1")), "every acknowledged message's output")
            assert bridge.counts.reconnects >= 1
            await _until(lambda: not bridge.pending_out, "the bridge's outputs all acknowledged")

    try:
        trio.run(main)
    finally:
        out.close()
        pub.close()
    acked = [p for p, mid in infos if pub.is_acked(mid)]
    assert len(acked) == n_msgs
    got = set(out.payloads("out/t1"))
    assert [p for p in acked if p.upper() not in got] == []


# ---------------------------------------------------------------------- configuration


def _load(tmp_path: Path, toml: str | None = None, **flags: Any) -> Any:
    base: dict[str, Any] = {"data_dir": str(tmp_path / "d"), "bind": "127.0.0.1:0", "insecure": True}
    if toml is not None:
        (tmp_path / "c.toml").write_text(toml)
        base["config"] = str(tmp_path / "c.toml")
    base.update(flags)
    return load_config(base)


def test_config_flags_and_toml(tmp_path: Path) -> None:
    assert _load(tmp_path).mqtt is None
    cfg = _load(tmp_path, mqtt="127.0.0.1:1883", mqtt_in=["sensors/#", "a/+/b"], mqtt_out=["out/#"])
    assert cfg.mqtt == MqttConfig(("127.0.0.1", 1883), ("sensors/#", "a/+/b"), ("out/#",), None, 1, 60)
    toml = '[mqtt]\nbroker = "localhost:1883"\nin = ["x/#"]\nout = ["y/#"]\nclient-id = "b1"\nqos = 0\nkeepalive = 30\n'
    assert _load(tmp_path, toml).mqtt == MqttConfig(("localhost", 1883), ("x/#",), ("y/#",), "b1", 0, 30)
    # Flags override the file's keys.
    assert _load(tmp_path, toml, mqtt_in=["z"]).mqtt.inputs == ("z",)


@pytest.mark.parametrize("flags,toml,msg", [
    ({"mqtt": "127.0.0.1"}, None, "--mqtt '127.0.0.1': expected HOST:PORT"),
    ({"mqtt": "127.0.0.1:1883"}, None, "--mqtt: bridges nothing; add --mqtt-in FILTER and/or --mqtt-out PATTERN"),
    ({"mqtt_in": ["a/#"]}, None, "--mqtt-in needs the broker: --mqtt HOST:PORT (or broker in [mqtt])"),
    ({"mqtt": "127.0.0.1:1883", "mqtt_in": ["a/#/b"]}, None, "--mqtt-in: topic pattern 'a/#/b': '#' must be the whole last level"),
    ({"mqtt": "127.0.0.1:1883", "mqtt_out": ["a/b+"]}, None, "--mqtt-out: topic pattern 'a/b+': '+' must be a whole level"),
    ({"mqtt": "127.0.0.1:1883", "mqtt_in": ["a"], "mqtt_client_id": "has space"}, None,
     "--mqtt-client-id 'has space': 1-64 printable ASCII characters, no spaces"),
    ({}, '[mqtt]\nbroker = "127.0.0.1:1"\nin = ["a"]\nqos = 2\n', "qos (in"),
    ({}, '[mqtt]\nbroker = "127.0.0.1:1"\nin = ["a"]\nkeepalive = 1\n', "5..3600"),
    ({}, '[mqtt]\nbrokr = "127.0.0.1:1"\n', "unknown key(s) brokr"),
    ({}, 'mqtt = "127.0.0.1:1"\n', "expected a [mqtt] table"),
])
def test_config_errors_are_one_line(tmp_path: Path, flags: dict[str, Any], toml: str | None, msg: str) -> None:
    with pytest.raises(DaemonConfigError) as ei:
        _load(tmp_path, toml, **flags)
    text = str(ei.value)
    assert msg in text and "\n" not in text, text


def test_outgoing_kept_while_the_broker_is_down_and_bounded(broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    """Events published while the broker is away wait in paho (at most MAX_PENDING_OUT unacknowledged;
    the out loop waits for room) and all reach the broker after it came back."""
    import mesh.mqtt.bridge as bridge_module

    monkeypatch.setattr(bridge_module, "MAX_PENDING_OUT", 2)
    listener = MqttClient(broker, "ext-4", subscribe=("out/#",))
    bus = FakeBus()

    async def main() -> None:
        bridge = _bridge(broker, bus, inputs=())
        async with _running(bridge):
            await trio.to_thread.run_sync(broker.stop)
            await _until(lambda: not bridge.connected, "the bridge saw the broker go")
            for i in range(5):
                bus.emit(f"out/k{i}", f"v{i}".encode(), {}, "api")
            await _until(lambda: len(bridge.pending_out) == 2, "two messages waiting for a PUBACK")
            await trio.sleep(0.2)
            assert len(bridge.pending_out) == 2 and bridge.counts.messages[("out", "sent")] == 2  # the rest wait
            await trio.to_thread.run_sync(broker.start)
            await _until(lambda: bridge.counts.messages.get(("out", "acked")) == 5, "all five acknowledged")

    try:
        trio.run(main)
        wait_for = time.monotonic() + TIMEOUT
        while sorted(listener.payloads()) != [f"v{i}".encode() for i in range(5)] and time.monotonic() < wait_for:
            time.sleep(0.05)
        assert sorted(listener.payloads()) == [f"v{i}".encode() for i in range(5)]
    finally:
        listener.close()
