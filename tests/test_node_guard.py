"""Issue 9: no exception of any kind leaves NodeCore's driver entry points.

pyo3's ``PanicException`` derives from ``BaseException``, so ``except Exception`` does not stop
it; each test makes one sub-core raise such an exception and checks that the call returns, the
failure is counted under the right counter, and the node keeps working. Only the interpreter's
control-flow exceptions (KeyboardInterrupt, SystemExit, GeneratorExit) pass through.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from crdt.blob import BlobTransfer, MemoryBlobStore
from crdt.heads import HeadsDigest
from crdt.intent import IntentNode
from crdt.messages import BlobRequest
from crdt.trust import TrustConfig
from mesh.membership.config import profile
from mesh.membership.messages import Ack, Ping
from mesh.membership.meta import NodeMeta
from mesh.node import NodeCore
from mesh.wire import decode, encode
from sim.intent import derive_key


class FakePanic(BaseException):
    """Stands in for pyo3's PanicException: a BaseException, not an Exception."""


def _raise(*_: Any, **__: Any) -> Any:
    raise FakePanic("rust panicked")


def _core() -> NodeCore:
    trust = TrustConfig()
    for n in ("a", "b"):
        trust.admit_node(n, derive_key("guard:" + n).public_raw)
    intent = IntentNode("a", derive_key("guard:a"), trust, random.Random("intent:a"))
    blobs = BlobTransfer(MemoryBlobStore(), node_id="a", request_timeout=5.0)
    return NodeCore("a", "10.0.0.1:7946", NodeMeta(), profile("lan"), random.Random("core:a"), intent=intent, blobs=blobs)


def _answers_ping(core: NodeCore, now: float) -> bool:
    out = core.receive("10.0.0.2:7946", encode("b", Ping(77, "a")), now)
    return any(isinstance(decode(o.data, 1 << 16).msg, Ack) and decode(o.data, 1 << 16).msg.seq == 77 for o in out)


def test_a_panic_in_the_sync_core_is_counted_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    core = _core()
    assert core.intent is not None
    monkeypatch.setattr(core.intent, "receive", _raise)
    out = core.receive("10.0.0.2:40000", encode("b", HeadsDigest(b"\x00" * 16)), 1.0, peer="b", stream="s")
    assert out == [] and core.counters["intent_errors"] == 1
    assert core.last_error == "FakePanic: rust panicked"
    assert _answers_ping(core, 1.1)


def test_a_panic_in_blob_transfer_is_counted_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    core = _core()
    assert core.blobs is not None
    for name in ("receive", "stream_event"):
        monkeypatch.setattr(core.blobs, name, _raise)
    assert core.receive("10.0.0.2:40000", encode("b", BlobRequest("0" * 64, 0, 10)), 1.0, peer="b", stream="s") == []
    assert core.stream_event("b", "closed", 1.0) == []
    assert core.counters["intent_errors"] == 2


def test_a_failure_in_membership_is_counted_as_membership_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    core = _core()
    monkeypatch.setattr(core.swim, "handle", _raise)
    assert core.receive("10.0.0.2:7946", encode("b", Ping(1, "a")), 1.0) == []
    monkeypatch.setattr(core.swim, "tick", lambda now: (_ for _ in ()).throw(ValueError("bug")))
    assert core.tick(2.0) == []
    assert core.counters["membership_errors"] == 2 and core.counters["intent_errors"] == 0
    assert core.last_error == "ValueError: bug"
    monkeypatch.undo()
    assert _answers_ping(core, 3.0)


def test_a_panic_in_the_intent_timer_and_persist_paths_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    core = _core()
    assert core.intent is not None
    monkeypatch.setattr(core.intent, "next_deadline", lambda: 0.0)
    monkeypatch.setattr(core.intent, "tick", _raise)
    monkeypatch.setattr(core.intent, "stream_event", _raise)
    monkeypatch.setattr(core.intent, "persisted", _raise)
    core.tick(1.0)
    assert core.stream_event("b", "timed_out", 1.0) == []
    assert core.persisted(1, 1.0) == []
    assert core.counters["intent_errors"] == 3


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit, GeneratorExit])
def test_interpreter_control_flow_still_propagates(monkeypatch: pytest.MonkeyPatch, exc: type[BaseException]) -> None:
    core = _core()
    assert core.intent is not None

    def boom(*_: Any) -> Any:
        raise exc()

    monkeypatch.setattr(core.intent, "receive", boom)
    monkeypatch.setattr(core.swim, "handle", boom)
    with pytest.raises(exc):
        core.receive("10.0.0.2:40000", encode("b", HeadsDigest(b"\x00" * 16)), 1.0, peer="b", stream="s")
    with pytest.raises(exc):
        core.receive("10.0.0.2:7946", encode("b", Ping(1, "a")), 1.0)
