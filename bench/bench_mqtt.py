"""Events through mosquitto (issue 12): throughput and end-to-end latency of broker -> mesh event ->
module -> reply event -> broker, against a bare echo client through the same broker in the same run.

Run: PYTHONPATH=. python bench/bench_mqtt.py [--messages 2000] [--seconds 10] [--window 16]

One mosquitto on loopback (persistence off, ``set_tcp_nodelay true``; every client sets TCP_NODELAY too), started and stopped by this script (by PID).

* baseline: a separate Python process with a paho client subscribed to ``sensors/#`` that, for each
  message, publishes the upper-cased payload prefixed ``n=0:`` on ``out/<rest>`` (QoS 1 both ways):
  two broker hops and one client, no mesh, no wasm — what MQTT round trips cost on this machine.
* bridge: the bridge alone, in its own process: ``MqttBridge`` over an in-memory bus whose publish
  on ``sensors/X`` emits the upper-cased data on ``out/X`` to the taps (no event queue, no wasm);
* mesh: a ``wasmatrix node run --mqtt`` daemon (separate process) bridging ``sensors/#`` in and
  ``out/#`` out; a subscription on ``sensors/t1`` runs ``runtime/examples/handler.wasm`` (direct ABI:
  answers ``n=<calls>:<INPUT UPPERCASED>``) and replies on ``out/t1``. Each message: PUBLISH to the
  broker, bridge -> ``bus.publish`` (durably queued) -> PUBACK, delivery -> invoke -> reply event ->
  tap -> PUBLISH to the broker -> the driver.

The driver (this process, paho) publishes QoS-1 messages with at most ``--window`` outstanding (sent,
output not yet back) until ``--messages`` are done or ``--seconds`` pass, after a warm-up, and
measures each message from its publish to the arrival of its output. Prints messages/s and
p50/p99 latency for both, and the ratios. Never asserts.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tests.harness.daemons import Mesh, publisher_and_operator, wait_until  # noqa: E402
from tests.harness.mosquitto import Broker, MqttClient, mosquitto_binary  # noqa: E402
from tests.harness.procs import ProcessGroup  # noqa: E402

HANDLER = Path(__file__).resolve().parents[1] / "runtime" / "examples" / "handler.wasm"

ECHO = r"""
import socket, sys
from paho.mqtt.client import CallbackAPIVersion, Client, MQTTv311
port = int(sys.argv[1])
c = Client(CallbackAPIVersion.VERSION2, client_id="bench-echo", clean_session=True, protocol=MQTTv311)
c.max_inflight_messages_set(100)
def on_connect(client, userdata, flags, rc, props):
    client.subscribe("sensors/#", qos=1)
def on_subscribe(client, userdata, mid, rcs, props):
    print("ready", flush=True)
def on_message(client, userdata, msg):
    client.publish("out/" + msg.topic.split("/", 1)[1], b"n=0:" + msg.payload.upper(), qos=1)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.on_socket_open = lambda client, userdata, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
c.connect("127.0.0.1", port, keepalive=30)
c.loop_forever()
"""

# The bridge alone: MqttBridge over an in-memory bus whose publish on sensors/X emits, to the taps, the
# upper-cased data as a reply event on out/X (what the subscription + module do, minus queue and wasm).
BRIDGE_ONLY = r"""
import sys, trio
from mesh.daemon.config import MqttConfig
from mesh.events import Event
from mesh.events.topics import matches
from mesh.mqtt import MqttBridge

class Tap:
    def __init__(self, pattern):
        self.pattern = pattern
        self.send, self.recv = trio.open_memory_channel(1000)
    def __aiter__(self):
        return self
    async def __anext__(self):
        return await self.recv.receive()
    def close(self):
        pass

class EchoBus:
    def __init__(self):
        self.taps, self.n = [], 0
    async def publish(self, topic, data, meta=None, *, source="api"):
        self.n += 1
        ev = Event(f"e-{self.n}", topic, data, meta or {}, source, 0.0)
        out = Event(f"r-{self.n}", "out/" + topic.split("/", 1)[1], b"n=0:" + data.upper(), {"reply_to": ev.id}, "reply", 0.0)
        for e in (ev, out):
            for t in self.taps:
                if matches(t.pattern, e.topic):
                    t.send.send_nowait(e)
        return ev
    def tap(self, pattern, maxlen=1000):
        t = Tap(pattern)
        self.taps.append(t)
        return t

async def main():
    bridge = MqttBridge(MqttConfig(("127.0.0.1", int(sys.argv[1])), ("sensors/#",), ("out/#",)), EchoBus(), "bench-bridge")
    async with trio.open_nursery() as n:
        await n.start(bridge.run)
        await bridge.wait_connected()
        print("ready", flush=True)

trio.run(main)
"""


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


class Driver:
    """Publishes ``sensors/t1`` with a bounded window and times each output on ``out/t1``."""

    def __init__(self, broker: Broker, name: str) -> None:
        self.sent: dict[bytes, float] = {}
        self.lat: list[float] = []
        self.cv = threading.Condition()
        self.client = MqttClient(broker, name, subscribe=("out/#",), clean=True)
        self.client.client.on_message = self._on_message

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        now = time.perf_counter()
        key = bytes(msg.payload).split(b":", 1)[-1]
        with self.cv:
            t0 = self.sent.pop(key, None)
            if t0 is not None:
                self.lat.append(now - t0)
                self.cv.notify_all()

    def run(self, prefix: str, count: int, seconds: float, window: int) -> tuple[int, float, list[float]]:
        self.lat = []
        t_start = time.perf_counter()
        deadline = t_start + seconds
        i = 0
        while i < count and time.perf_counter() < deadline:
            with self.cv:
                while len(self.sent) >= window and time.perf_counter() < deadline:
                    self.cv.wait(0.05)
                if len(self.sent) >= window:
                    break
                payload = f"{prefix}{i:07d}".encode()
                self.sent[payload.upper()] = time.perf_counter()
            self.client.publish("sensors/t1", payload)
            i += 1
        with self.cv:  # the stragglers, bounded
            while self.sent and time.perf_counter() < deadline + 5:
                self.cv.wait(0.05)
            lost, self.sent = len(self.sent), {}
        elapsed = time.perf_counter() - t_start
        return i - lost, elapsed, list(self.lat)


def _report(name: str, done: int, elapsed: float, lat: list[float]) -> tuple[float, float, float]:
    rate = done / elapsed if elapsed else 0.0
    p50, p99 = _pct(lat, 0.5) * 1e3, _pct(lat, 0.99) * 1e3
    print(f"{name:<10} {done:>7} {rate:>10.0f} {p50:>9.2f} {p99:>9.2f}")
    return rate, p50, p99


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=2000, help="messages per measured run (default 2000)")
    ap.add_argument("--seconds", type=float, default=10.0, help="time bound per measured run (default 10)")
    ap.add_argument("--window", type=int, default=16, help="messages outstanding at once (default 16)")
    ap.add_argument("--warmup", type=int, default=50)
    args = ap.parse_args()
    if mosquitto_binary() is None:
        print("mosquitto is not installed (Debian package `mosquitto`)")
        return
    root = Path(tempfile.mkdtemp(prefix="wasmatrix-bench-mqtt-"))
    from mesh.cli import main as cli

    with ProcessGroup(root) as group:
        broker = Broker(group, root / "broker", mosquitto_binary() or "")
        broker.conf.write_text(broker.conf.read_text().replace("persistence true", "persistence false"))
        broker.start()
        def against(script: str, name: str) -> tuple[int, float, list[float]]:
            """Measure with ``script`` (a Python process printing ``ready``) answering on the broker."""
            proc = group.start([sys.executable, "-c", script, str(broker.port)], name=name)
            proc.wait_for_line("ready", timeout=10)
            drv = Driver(broker, f"bench-driver-{name}")
            drv.run("w", args.warmup, 10, args.window)
            out = drv.run(name[0], args.messages, args.seconds, args.window)
            drv.client.close()
            group.stop(proc)
            return out

        base = against(ECHO, "echo")  # the baseline: a bare echo client through the same broker
        bridge_only = against(BRIDGE_ONLY, "bridge")  # the bridge alone (in-memory echo bus, no queue, no wasm)

        # Mesh: a daemon with the bridge, a subscription running handler.wasm.
        publisher_and_operator(root, ["a"])
        mesh = Mesh(group, root, profile="local", extra=["--log-level", "warning"])
        a = mesh.start("a", extra=["--mqtt", broker.addr, "--mqtt-in", "sensors/#", "--mqtt-out", "out/#"])
        dd = str(a.data_dir)
        for argv in (["module", "publish", str(HANDLER), "--name", "handler", "--version", "1.0.0", "--abi", "direct",
                      "--key", str(root / "pub.key")],
                     ["deploy", "web", "--module", "handler", "--version", "1.0.0", "--replicas", "1",
                      "--key", str(root / "op.key")],
                     ["subscription", "add", "t1", "--topic", "sensors/t1", "--deployment", "web", "--reply-topic",
                      "out/t1", "--queue", "10000", "--key", str(root / "op.key")]):
            if cli([*argv, "--data-dir", dd, "--json"]) != 0:
                raise SystemExit(f"wasmatrix {' '.join(argv)} failed")
        wait_until(lambda: a.metric("wasmatrix_mqtt_connected") == 1, 20, "the bridge connected")
        drv = Driver(broker, "bench-driver-2")
        done = 0
        for _ in range(30):  # until the first outputs come back (the replica starts on demand)
            done, _, _ = drv.run("w", 5, 2, 5)
            if done == 5:
                break
        drv.run("w", args.warmup, 10, args.window)
        res = drv.run("m", args.messages, args.seconds, args.window)
        drv.client.close()

    print(f"bench_mqtt: {args.window} messages in flight, QoS 1, mosquitto on loopback; latency = publish to output back")
    print("baseline = a bare paho echo client (separate process) republishing each message upper-cased: no mesh, no wasm")
    print(f"{'run':<10} {'done':>7} {'msgs/s':>10} {'p50_ms':>9} {'p99_ms':>9}")
    rb, b50, b99 = _report("baseline", *base)
    ro, o50, o99 = _report("bridge", *bridge_only)
    rm, m50, m99 = _report("mesh", *res)
    if rb and rm:
        print(f"ratio mesh/baseline: throughput {rm / rb:.3f}x, p50 {m50 / b50:.1f}x, p99 {m99 / b99:.1f}x")
        print(f"ratio bridge/baseline: throughput {ro / rb:.3f}x, p50 {o50 / b50:.1f}x, p99 {o99 / b99:.1f}x "
              "(bridge = MqttBridge over an in-memory echo bus: the bridge's own cost, no event queue, no wasm)")


if __name__ == "__main__":
    main()
