"""The MQTT bridge end to end (issue 12): a real mosquitto on loopback, a real `wasmatrix node run --mqtt`
daemon (subprocess), a subscription that runs ``runtime/examples/handler.wasm`` (direct ABI: answers
``n=<calls>:<INPUT UPPERCASED>``) and replies on ``out/t1``, and paho clients on the outside.

1. A message published to the broker on ``sensors/t1`` runs the module; its output arrives on the
   broker on ``out/t1``.
2. The broker is stopped and restarted (SIGTERM by PID, same port, persistence on) while an outside
   client publishes 50 QoS-1 messages: every message the broker acknowledged to that client comes
   back on ``out/t1`` (duplicates allowed, none lost), and the daemon counts the reconnect.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mesh.cli import main
from tests.harness.daemons import Mesh, publisher_and_operator, wait_until
from tests.harness.mosquitto import Broker, MqttClient, broker  # noqa: F401  (fixture)
from tests.harness.procs import ProcessGroup

pytestmark = pytest.mark.slow  # a real daemon process: run in CI and with WASMATRIX_SLOW=1 (docs/TESTING.md)

HANDLER = Path(__file__).resolve().parents[1] / "runtime" / "examples" / "handler.wasm"
N = 50


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    assert code == 0, f"wasmatrix {' '.join(args)}: {err}"
    return out


def _answers(client: MqttClient) -> set[bytes]:
    """The module's outputs on out/t1 without the call counter: ``n=7:HELLO`` -> ``HELLO``."""
    return {p.split(b":", 1)[1] for p in client.payloads("out/t1") if b":" in p}


def test_broker_message_runs_a_module_whose_output_returns_and_a_broker_restart_loses_nothing(
        tmp_path: Path, broker: Broker, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    publisher_and_operator(tmp_path, ["a"])
    listener = MqttClient(broker, "test-listener", subscribe=("out/#",))
    pub = MqttClient(broker, "test-publisher")
    try:
        with ProcessGroup(tmp_path) as group:
            mesh = Mesh(group, tmp_path, profile="local")
            a = mesh.start("a", extra=["--mqtt", broker.addr, "--mqtt-in", "sensors/#", "--mqtt-out", "out/#",
                                       "--mqtt-client-id", "bridge-a"])
            dd = str(a.data_dir)
            _cli(capsys, "module", "publish", str(HANDLER), "--name", "handler", "--version", "1.0.0", "--abi", "direct",
                 "--key", str(tmp_path / "pub.key"), "--data-dir", dd)
            _cli(capsys, "deploy", "web", "--module", "handler", "--version", "1.0.0", "--replicas", "1",
                 "--key", str(tmp_path / "op.key"), "--data-dir", dd)
            _cli(capsys, "subscription", "add", "t1", "--topic", "sensors/t1", "--deployment", "web",
                 "--reply-topic", "out/t1", "--key", str(tmp_path / "op.key"), "--data-dir", dd)
            wait_until(lambda: a.metric("wasmatrix_mqtt_connected") == 1, 20, "the bridge connected")
            wait_until(lambda: "t1" in _cli(capsys, "subscription", "list", "--data-dir", dd), 20, "subscription t1 visible")

            # 1. broker -> event -> module -> reply event -> broker.
            pub.publish("sensors/t1", b"hello")
            wait_until(lambda: b"HELLO" in _answers(listener), 30, "the module's output on out/t1")
            assert a.metric("wasmatrix_mqtt_messages_total", 'direction="in",result="published"') >= 1
            assert a.metric("wasmatrix_mqtt_messages_total", 'direction="out",result="acked"') >= 1

            # 2. A broker restart in the middle of a stream of 50 QoS-1 messages.
            mids: list[tuple[bytes, int]] = []
            for i in range(N):
                payload = f"m{i:03d}".encode()
                mids.append((payload, pub.publish("sensors/t1", payload)))
                if i == N // 3:
                    broker.stop()  # SIGTERM by PID: mosquitto saves its sessions and queued messages
                elif i == N // 3 + 10:
                    broker.start()  # the same port, the saved state; 10 messages were published meanwhile
                time.sleep(0.02)
            wait_until(lambda: all(pub.is_acked(m) for _, m in mids), 30, "the broker acknowledged every publish")
            want = {p.upper() for p, _ in mids}
            wait_until(lambda: want <= _answers(listener), 60,
                       f"every acknowledged message's output (missing: {sorted(want - _answers(listener))[:10]})")
            assert a.metric("wasmatrix_mqtt_reconnects_total") >= 1
            wait_until(lambda: a.metric("wasmatrix_mqtt_connected") == 1, 20, "connected again")
    finally:
        listener.close()
        pub.close()
