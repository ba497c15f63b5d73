"""A real ``mosquitto`` broker on loopback for the MQTT bridge tests and benchmark.

The broker listens on 127.0.0.1 on a port free a moment ago, accepts anonymous clients and keeps
QoS-1 session state (subscriptions, queued and in-flight messages of ``clean_session=False``
clients) in a persistence file under the test's temp dir, saved on every change and at shutdown, so
``restart()`` (SIGTERM, then a new process on the same port) keeps every message the broker had
acknowledged. The process is started through a :class:`ProcessGroup`: killed by its PID at the end,
also on failure. ``mosquitto_binary()`` is None when the Debian package is not installed (CI
installs it); the fixture then skips with that reason.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import time
from collections.abc import Iterator
from typing import Any
from pathlib import Path

import pytest

from tests.harness.procs import Proc, ProcError, ProcessGroup, free_port

CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def mosquitto_binary() -> str | None:
    """The broker executable, or None when the ``mosquitto`` package is not installed."""
    for c in CANDIDATES:
        if Path(c).is_file():
            return c
    return shutil.which("mosquitto")


class Broker:
    """One mosquitto on ``127.0.0.1:port``; ``stop()``/``start()``/``restart()`` keep port and state."""

    def __init__(self, group: ProcessGroup, root: Path, binary: str, port: int | None = None) -> None:
        self.group = group
        self.root = root
        self.binary = binary
        self.port = port or free_port("tcp")
        self.proc: Proc | None = None
        self.starts = 0
        root.mkdir(parents=True, exist_ok=True)
        (root / "data").mkdir(exist_ok=True)
        self.conf = root / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "set_tcp_nodelay true\n"
            "persistence true\n"
            f"persistence_location {root / 'data'}/\n"
            "autosave_on_changes true\n"
            "autosave_interval 1\n"  # with autosave_on_changes: save after every change
            "max_queued_messages 100000\n"
            f"user {getpass.getuser()}\n"  # run as root: stay root (own the persistence dir)
            "log_dest stdout\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
        )

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        assert self.proc is None or self.proc.popen.poll() is not None, "broker already running"
        self.starts += 1
        self.proc = self.group.start([self.binary, "-c", str(self.conf)], name=f"mosquitto-{self.starts}")
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.popen.poll() is not None:
                raise ProcError(f"mosquitto exited with {self.proc.popen.returncode}: {self.proc.stdout()[-1000:]}"
                                f"{self.proc.stderr()[-1000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise ProcError(f"mosquitto not listening on {self.addr} within {timeout} s") from None
                time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM (mosquitto saves its persistence file), SIGKILL after a bound; by PID."""
        if self.proc is not None and self.proc.popen.poll() is None:
            self.group.stop(self.proc)

    def restart(self, down: float = 0.0) -> None:
        self.stop()
        if down:
            time.sleep(down)
        self.start()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A running mosquitto on loopback (skips when the binary is missing; CI installs it)."""
    binary = mosquitto_binary()
    if binary is None:
        pytest.skip("mosquitto is not installed (Debian package `mosquitto`; CI installs it)")
    with ProcessGroup(tmp_path) as group:
        b = Broker(group, tmp_path / "broker", binary)
        b.start()
        yield b


class MqttClient:
    """An external MQTT client (paho on its own network thread): the other side of the bridge in tests.

    Persistent session (``clean_session=False``) and QoS 1 by default, so a broker restart loses
    nothing it acknowledged to this client; ``received`` collects (topic, payload) in arrival order.
    """

    def __init__(self, broker: Broker, client_id: str, subscribe: tuple[str, ...] = (), clean: bool = False) -> None:
        import threading

        from paho.mqtt.client import CallbackAPIVersion, Client, MQTTv311

        from mesh.mqtt.bridge import no_delay

        self.received: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.connects = 0
        self.acked: set[int] = set()  # mids the broker acknowledged (PUBACK)
        c = Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean, protocol=MQTTv311)
        c.max_inflight_messages_set(100)
        c.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]

        def on_connect(client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
            if rc.is_failure:
                return
            self.connects += 1
            if subscribe:
                client.subscribe([(t, 1) for t in subscribe])
            else:
                self.subscribed.set()
            self.connected.set()

        def on_subscribe(client: Any, userdata: Any, mid: Any, rcs: Any, props: Any) -> None:
            self.subscribed.set()

        def on_disconnect(client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
            self.connected.clear()

        def on_message(client: Any, userdata: Any, msg: Any) -> None:
            with self.lock:
                self.received.append((msg.topic, bytes(msg.payload)))

        def on_publish(client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
            with self.lock:
                self.acked.add(mid)

        c.on_connect, c.on_subscribe, c.on_disconnect, c.on_message = on_connect, on_subscribe, on_disconnect, on_message
        c.on_publish = on_publish
        c.on_socket_open = lambda client, userdata, sock: no_delay(sock)
        self.client = c
        c.connect_async("127.0.0.1", broker.port, keepalive=10)
        c.loop_start()
        if not self.subscribed.wait(10):
            self.close()
            raise ProcError(f"MQTT client {client_id} not connected and subscribed to {broker.addr} within 10 s")

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> int:
        """Queue one message (sent now, or after the reconnect when the broker is away); its message id."""
        return self.client.publish(topic, payload, qos=qos).mid

    def is_acked(self, mid: int) -> bool:
        with self.lock:
            return mid in self.acked

    def payloads(self, topic: str | None = None) -> list[bytes]:
        with self.lock:
            return [p for t, p in self.received if topic is None or t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
