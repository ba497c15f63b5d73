"""The MQTT bridge: broker topics into the mesh event bus and mesh events out to the broker.

Driven from trio with paho-mqtt 2.x's *threaded* network loop (``loop_start``): paho's own thread
owns the socket (connect, keepalive pings, reconnect with exponential backoff, resending in-flight
QoS-1 messages after a reconnect); every paho callback only hands a small record to the trio loop
with ``TrioToken.run_sync_soon`` (non-blocking, FIFO), and all bridge state lives on the trio
thread. We chose this over paho's external-loop API (``loop_read/loop_write/loop_misc`` on the
socket with ``trio.lowlevel.wait_readable``) because ``loop_forever`` is paho's most used and
tested path: its ``connect``/``reconnect`` are blocking socket calls (DNS, TCP connect up to the
connect timeout) that would stall the daemon's trio loop, and the external loop would have us
re-implement keepalive timing, reconnect backoff and the socket open/close/register-write
callbacks that paho already gets right in its loop.

Semantics (docs/EVENTS.md "MQTT bridge"):

* in: one persistent session (MQTT 3.1.1, ``clean_session=False``, a fixed client id) subscribed
  at QoS 1 to every ``in`` filter, ``manual_ack=True``. A message becomes
  ``bus.publish(topic, payload, {"mqtt": "1"}, source="mqtt")``; its PUBACK is sent only after
  that returned (the event is durably queued), in the order the messages came (MQTT 3.1.1 4.6).
  On :class:`Backpressure` the message is held unacknowledged and the publish retried after
  ``retry_after_s`` — the broker's in-flight window then fills and it stops sending, so the
  pressure reaches the broker instead of dropping anything. A message the bus refuses as invalid
  (``ValueError``: a topic or payload the mesh does not accept) is acknowledged, counted and
  logged (redelivering it could never succeed). When the connection drops before the ack, the
  broker redelivers the message on the next connection (duplicates possible: at least once).
* out: ``bus.tap(pattern)`` for every ``out`` pattern; each event is published at QoS 1 and kept
  by paho until the broker's PUBACK (paho resends unacknowledged QoS-1 messages after a reconnect,
  including after a broker restart). Events that came from the broker (meta ``mqtt=1``) are never
  published back: the bridge keeps topic names, so they would land on the topic they came from.
  An event matching several ``out`` patterns goes out once.
"""

from __future__ import annotations

import math
import socket
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
import trio
from paho.mqtt.client import CallbackAPIVersion, Client, MQTTErrorCode, MQTTMessage, MQTTv311
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mesh.daemon.config import MqttConfig
from mesh.events import Backpressure

PREFIX = "wasmatrix_"
MAX_PENDING_OUT = 10_000  # messages handed to paho and not yet acknowledged; the taps wait (and then drop) beyond
MAX_IN_QUEUE = 10_000  # received messages waiting for the bus; beyond it a message is not acked (redelivered)
IN_CONCURRENCY = 16  # bus publishes in flight at once (acks still go out in arrival order)
MAX_RETRY_WAIT = 5.0  # cap on one Backpressure wait
ERROR_RETRY = 1.0  # wait after any other publish failure (e.g. the event store could not be written)
MAX_INFLIGHT = 100  # paho's window of unacknowledged outgoing QoS-1 messages on the wire
SENT_IDS = 4096  # event ids remembered to send an event matching two out patterns once
TAP_MAXLEN = 1000

IN_RESULTS = ("published", "backpressure", "rejected", "error", "overflow", "stale")
OUT_RESULTS = ("sent", "acked", "looped", "error")


class Bus(Protocol):
    """What the bridge needs of ``daemon.bus`` (mesh/events/bus.py)."""

    async def publish(self, topic: str, data: bytes, meta: dict[str, str] | None = None, *,
                      source: str = "api") -> Any: ...

    def tap(self, pattern: str, maxlen: int = 1000) -> Any: ...


@dataclass(slots=True)
class _Inbound:
    gen: int
    mid: int
    qos: int
    topic: str
    payload: bytes
    done: bool = False


@dataclass(slots=True)
class _Counts:
    messages: dict[tuple[str, str], int] = field(default_factory=dict)
    reconnects: int = 0
    connect_failures: int = 0

    def add(self, direction: str, result: str, n: int = 1) -> None:
        self.messages[(direction, result)] = self.messages.get((direction, result), 0) + n


class MqttBridge:
    """One bridge per daemon: ``await nursery.start(bridge.run)``; cancel the scope to stop it."""

    def __init__(self, cfg: MqttConfig, bus: Bus, client_id: str, *, log: Any = None,
                 reconnect_min: float = 1.0, reconnect_max: float = 30.0) -> None:
        self.cfg = cfg
        self.bus = bus
        self.client_id = client_id
        self.log = (log or structlog.get_logger("wasmatrix.mqtt")).bind(broker=f"{cfg.broker[0]}:{cfg.broker[1]}")
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.connected = False
        self.subscribed = False
        self.ever_connected = False
        self.gen = 0  # connection generation: an ack is only sent on the connection the message came on
        self.counts = _Counts()
        self.pending_in: deque[_Inbound] = deque()  # received, not yet acknowledged, in arrival order
        self.pending_out: dict[int, str] = {}  # paho mid -> event id, until the broker's PUBACK
        self._sent: OrderedDict[str, None] = OrderedDict()
        self._out_room = trio.Event()
        self._connected_ev = trio.Event()
        self.client: Client | None = None
        self.metrics = MqttMetrics(self)

    # ------------------------------------------------------------------ life cycle

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        token = trio.lowlevel.current_trio_token()
        in_send, in_recv = trio.open_memory_channel[_Inbound](MAX_IN_QUEUE)
        self._in_send = in_send

        def soon(fn: Any, *args: Any) -> None:  # on paho's thread: hand over to trio, never block
            try:
                token.run_sync_soon(fn, *args)
            except trio.RunFinishedError:
                pass

        client = Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=False,
                        protocol=MQTTv311, manual_ack=True, reconnect_on_failure=True)
        client.max_inflight_messages_set(MAX_INFLIGHT)
        client.reconnect_delay_set(self.reconnect_min, self.reconnect_max)  # type: ignore[arg-type]
        client.on_connect = lambda c, u, flags, rc, props: soon(self._on_connect, bool(flags.session_present),
                                                               rc.is_failure, str(rc))
        client.on_connect_fail = lambda c, u: soon(self._on_connect_fail)
        client.on_disconnect = lambda c, u, flags, rc, props: soon(self._on_disconnect, str(rc))
        client.on_message = lambda c, u, msg: soon(self._on_message, msg)
        client.on_publish = lambda c, u, mid, rc, props: soon(self._on_puback, mid)
        client.on_socket_open = lambda c, u, sock: no_delay(sock)
        client.on_subscribe = lambda c, u, mid, rcs, props: soon(self._on_suback, [str(r) for r in rcs if r.is_failure])
        self.client = client
        client.connect_async(self.cfg.broker[0], self.cfg.broker[1], keepalive=self.cfg.keepalive)
        client.loop_start()
        self.log.info("mqtt_bridge_started", client_id=self.client_id, inputs=list(self.cfg.inputs),
                      outputs=list(self.cfg.outputs))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._in_loop, in_recv)
                for pattern in dict.fromkeys(self.cfg.outputs):
                    nursery.start_soon(self._out_loop, pattern)
                task_status.started(self)
        finally:
            with trio.CancelScope(shield=True):
                self.connected = False
                client.disconnect()
                with trio.move_on_after(5):
                    await trio.to_thread.run_sync(client.loop_stop, cancellable=True)
                self.log.info("mqtt_bridge_stopped", unacked_out=len(self.pending_out))

    async def wait_connected(self) -> None:
        """Until the bridge holds a connection and the broker confirmed its subscriptions (tests, benchmarks)."""
        while not (self.connected and self.subscribed):
            await self._connected_ev.wait()

    # ------------------------------------------------------------------ paho callbacks, run on the trio thread

    def _on_connect(self, session_present: bool, failed: bool, reason: str) -> None:
        if failed:
            self.counts.connect_failures += 1
            self.log.warning("mqtt_connect_refused", reason=reason)
            return
        self.gen += 1
        if self.ever_connected:
            self.counts.reconnects += 1
        self.ever_connected = True
        self.connected = True
        assert self.client is not None
        self.subscribed = not self.cfg.inputs
        if self.cfg.inputs:
            self.client.subscribe([(f, self.cfg.qos) for f in dict.fromkeys(self.cfg.inputs)])
        self._wake()
        self.log.info("mqtt_connected", session_present=session_present, generation=self.gen)

    def _on_suback(self, refused: list[str]) -> None:
        if refused:
            self.log.warning("mqtt_subscribe_refused", reasons=refused, filters=list(self.cfg.inputs))
        self.subscribed = True
        self._wake()

    def _wake(self) -> None:
        self._connected_ev.set()
        self._connected_ev = trio.Event()

    def _on_connect_fail(self) -> None:
        self.counts.connect_failures += 1
        if self.counts.connect_failures in (1, 10) or self.counts.connect_failures % 100 == 0:
            self.log.warning("mqtt_connect_failed", failures=self.counts.connect_failures)

    def _on_disconnect(self, reason: str) -> None:
        if self.connected:
            self.log.warning("mqtt_disconnected", reason=reason, pending_out=len(self.pending_out),
                             pending_in=len(self.pending_in))
        self.connected = False
        self.subscribed = False

    def _on_message(self, msg: MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = ""  # not UTF-8: the bus refuses it below, counted as rejected
        item = _Inbound(self.gen, msg.mid, msg.qos, topic, bytes(msg.payload))
        try:
            self._in_send.send_nowait(item)
        except trio.WouldBlock:
            self.counts.add("in", "overflow")  # not acknowledged: the broker sends it again after a reconnect
        except trio.ClosedResourceError:
            pass

    def _on_puback(self, mid: int) -> None:
        if self.pending_out.pop(mid, None) is not None:
            self.counts.add("out", "acked")
            self._out_room.set()  # wakes every waiting out loop; the next waiters wait on a fresh event
            self._out_room = trio.Event()

    # ------------------------------------------------------------------ in: broker -> bus

    async def _in_loop(self, recv: trio.MemoryReceiveChannel[_Inbound]) -> None:
        slots = trio.Semaphore(IN_CONCURRENCY)
        async with trio.open_nursery() as nursery:
            async for item in recv:
                await slots.acquire()
                self.pending_in.append(item)
                nursery.start_soon(self._deliver, item, slots)

    async def _deliver(self, item: _Inbound, slots: trio.Semaphore) -> None:
        try:
            while True:
                if item.qos > 0 and item.gen != self.gen:
                    self.counts.add("in", "stale")  # the broker redelivers it on the new connection
                    break
                try:
                    await self.bus.publish(item.topic, item.payload, {"mqtt": "1"}, source="mqtt")
                except Backpressure as exc:
                    self.counts.add("in", "backpressure")
                    wait = exc.retry_after_s if math.isfinite(exc.retry_after_s) else MAX_RETRY_WAIT
                    await trio.sleep(min(max(wait, 0.05), MAX_RETRY_WAIT))
                    continue
                except ValueError as exc:
                    self.counts.add("in", "rejected")
                    self.log.warning("mqtt_message_rejected", topic=item.topic[:120], error=str(exc)[:200])
                except Exception as exc:  # e.g. EventStoreError: not queued, so not acknowledged; try again
                    self.counts.add("in", "error")
                    self.log.warning("mqtt_publish_error", topic=item.topic[:120], error=f"{type(exc).__name__}: {exc}"[:200])
                    await trio.sleep(ERROR_RETRY)
                    continue
                else:
                    self.counts.add("in", "published")
                break
            item.done = True  # not on cancellation: a message the bus did not take is never acknowledged
            self._flush_acks()
        finally:
            slots.release()

    def _flush_acks(self) -> None:
        while self.pending_in and self.pending_in[0].done:
            item = self.pending_in.popleft()
            if item.qos > 0 and item.gen == self.gen and self.client is not None:
                self.client.ack(item.mid, item.qos)

    # ------------------------------------------------------------------ out: bus -> broker

    async def _out_loop(self, pattern: str) -> None:
        tap = self.bus.tap(pattern, maxlen=TAP_MAXLEN)
        try:
            async for ev in tap:
                if ev.meta.get("mqtt") == "1":
                    self.counts.add("out", "looped")
                    continue
                if ev.id in self._sent:
                    continue
                self._sent[ev.id] = None
                if len(self._sent) > SENT_IDS:
                    self._sent.popitem(last=False)
                while len(self.pending_out) >= MAX_PENDING_OUT:
                    await self._out_room.wait()
                self._send(ev)
        finally:
            tap.close()

    def _send(self, ev: Any) -> None:
        assert self.client is not None
        try:
            info = self.client.publish(ev.topic, ev.data, qos=self.cfg.qos)
        except ValueError as exc:  # a mesh topic MQTT does not accept
            self.counts.add("out", "error")
            self.log.warning("mqtt_publish_refused", topic=ev.topic[:120], error=str(exc)[:200])
            return
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            self.counts.add("out", "error")
            self.log.warning("mqtt_publish_failed", topic=ev.topic[:120], rc=str(info.rc))
            return
        # NO_CONN: paho keeps the message and sends it after the next CONNACK.
        self.counts.add("out", "sent")
        if self.cfg.qos > 0:
            self.pending_out[info.mid] = ev.id


def no_delay(sock: Any) -> None:
    """TCP_NODELAY on the broker socket: paho leaves Nagle on, which with the peer's delayed ACK holds
    small QoS-1 messages and PUBACKs back for ~40 ms per hop on Linux."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass  # not a TCP socket (e.g. a websocket wrapper)


class MqttMetrics(Collector):
    """``wasmatrix_mqtt_*`` families (docs/METRICS.md), read at scrape time."""

    def __init__(self, bridge: MqttBridge) -> None:
        self.b = bridge

    def collect(self) -> Iterator[Metric]:
        b = self.b
        yield GaugeMetricFamily(PREFIX + "mqtt_connected", "1 while the MQTT bridge holds a broker connection",
                                value=1 if b.connected else 0)
        m = CounterMetricFamily(PREFIX + "mqtt_messages", "MQTT bridge messages by direction (in: broker to "
                                "mesh, out: mesh to broker) and result", labels=["direction", "result"])
        for d, results in (("in", IN_RESULTS), ("out", OUT_RESULTS)):
            for r in results:
                m.add_metric([d, r], b.counts.messages.get((d, r), 0))
        yield m
        yield CounterMetricFamily(PREFIX + "mqtt_reconnects", "Broker connections made after the first",
                                  value=b.counts.reconnects)
        yield CounterMetricFamily(PREFIX + "mqtt_connect_failures", "Broker connection attempts that failed or were refused",
                                  value=b.counts.connect_failures)
        g = GaugeMetricFamily(PREFIX + "mqtt_pending_acks", "Messages awaiting an acknowledgement: in = received "
                              "and not yet acknowledged to the broker, out = sent and not yet acknowledged by it",
                              labels=["direction"])
        g.add_metric(["in"], len(b.pending_in))
        g.add_metric(["out"], len(b.pending_out))
        yield g
