"""Replicated intent end to end: NodeCore wiring and seeded simulations with faults.

Every simulation failure prints the seed, the scenario (TOML) and the command that
replays it: ``wasmatrix sim FILE --seed S``.
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
import tomllib
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdt.blob import BlobTransfer, MemoryBlobStore
from crdt.heads import HeadsDigest, RecordPush
from crdt.messages import BlobMissing, BlobRequest, SyncAck
from crdt.intent import IntentNode
from model import Manifest
from crdt.trust import Role, TrustConfig
from mesh.membership.config import profile
from mesh.membership.messages import Dead
from mesh.membership.meta import NodeMeta
from mesh.node import NodeCore
from mesh.wire import Outgoing, encode, pack
from sim.engine import Simulation
from sim.intent import IntentHarness, derive_key, fingerprint
from sim.report import build_report, render_text
from sim.scenario import ScenarioError, parse

# --------------------------------------------------------------------------- NodeCore level

PUB = derive_key("test:publisher")


def _trust(names: list[str]) -> TrustConfig:
    t = TrustConfig()
    t.add_key(PUB.public_raw, [Role.PUBLISHER])
    for n in names:
        t.admit_node(n, derive_key("test:" + n).public_raw)
    return t


def _core(name: str, trust: TrustConfig, seeds: tuple[str, ...] = (), intent: bool = True) -> NodeCore:
    rng = random.Random(f"core:{name}")
    inode = IntentNode(name, derive_key("test:" + name), trust, random.Random(f"intent:{name}")) if intent else None
    blobs = BlobTransfer(MemoryBlobStore(), node_id=name) if intent else None
    return NodeCore(name, f"addr-{name}", NodeMeta(), profile("lan"), rng, seeds=[f"addr-{s}" for s in seeds], intent=inode, blobs=blobs)


class Wire:
    """Delivers Outgoing bytes between NodeCores by address, in order, at fixed steps."""

    def __init__(self, cores: list[NodeCore]) -> None:
        self.by_addr = {c.addr: c for c in cores}
        self.queue: list[tuple[str, Outgoing]] = []
        self.now = 0.0
        self.intent_frames = 0

    def send(self, src: NodeCore, outs: list[Outgoing]) -> None:
        self.queue.extend((src.addr, o) for o in outs)

    def run(self, seconds: float, dt: float = 0.05) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now += dt
            for c in self.by_addr.values():
                d = c.next_deadline()
                if d is not None and d <= self.now:
                    self.send(c, c.tick(self.now))
            while self.queue:
                src, o = self.queue.pop(0)
                if o.data[2] >= 20:  # envelope [version, type, ...]: type byte
                    self.intent_frames += 1
                dst = self.by_addr[o.dst]
                self.send(dst, dst.receive(src, o.data, self.now, o.reliable))


def _manifest(version: str = "1.0.0", data: bytes = b"\0asm-module") -> Manifest:
    return Manifest("hello", version, hashlib.sha256(data).hexdigest(), len(data), created_at=1.0)


def test_sync_messages_flow_through_encode_decode_between_two_nodecores() -> None:
    trust = _trust(["a", "b"])
    a, b = _core("a", trust), _core("b", trust, seeds=("a",))
    w = Wire([a, b])
    w.send(a, a.start(0.0))
    w.send(b, b.start(0.0))
    w.run(2.0)
    assert b.swim.live_peers() == ["a"] and a.swim.live_peers() == ["b"]
    assert a.intent is not None and b.intent is not None
    ack = a.intent.publish(_manifest(), PUB, w.now)
    assert not b.intent.has_write(ack.signer, ack.seq)
    w.run(1.0)
    assert b.intent.has_write(ack.signer, ack.seq)
    assert fingerprint(a.intent) == fingerprint(b.intent)
    assert w.intent_frames > 0
    assert a.counters["intent_bytes_sent"] > 0 and b.counters["intent_messages_sent"] > 0
    assert a.counters["intent_errors"] == b.counters["intent_errors"] == 0
    assert a.counters["wire_errors"] == b.counters["wire_errors"] == 0
    # Anti-entropy keeps running over the wire when nothing changes.
    before = b.intent.counters.anti_entropy_rounds
    w.run(6.0)
    assert b.intent.counters.anti_entropy_rounds > before


def test_intent_frames_with_bad_content_never_raise() -> None:
    trust = _trust(["a", "b"])
    a = _core("a", trust)
    garbage = [
        pack([1, 21, "b", [b"\xff\xff\xff", b"\x00"], []]),  # retired Yjs types: unknown now
        pack([1, 20, "b", [b"\x07\x01"], []]),
        pack([1, 22, "b", [b"not yjs", 5, 2], []]),
        pack([1, 24, "b", [1, 0, 2, 10, b"12345"], []]),
        pack([1, 34, "b", [5, 2, [b"\xff\xff", b"\x93garbage"]], []]),  # a push of two undecodable records
        pack([1, 31, "b", [False, [["short", 1, b""]], []], []]),  # a malformed heads message: wire error
        pack([1, 40, "b", ["0" * 64, 0, 10], []]),  # request for a blob nobody has
        pack([1, 41, "b", ["zz", 0, b"", 0], []]),  # invalid payload: wire error
        pack([1, 23, "b", ["x"], []]),
    ]
    outs: list[Outgoing] = []
    for g in garbage:
        outs += a.receive("addr-b", g, 1.0, reliable=True)
    assert a.counters["wire_errors"] == 3  # the three payloads that do not validate
    assert a.counters["unknown_type"] == 4
    assert a.counters["intent_errors"] == 0
    # Answers (the push ack, BlobMissing) go back to the address they came from: b is not a member yet.
    assert sorted((o.dst, o.data[2]) for o in outs) == [("addr-b", SyncAck.TYPE), ("addr-b", BlobMissing.TYPE)]
    assert all(o.reliable for o in outs)
    assert a.intent is not None and a.intent.counters.invalid_by_reason == {"malformed": 2}
    assert a.intent.doc.records.export() == []
    # Sync is stream-only: the same push as a datagram is refused before it reaches the log.
    assert a.receive("addr-b", encode("b", RecordPush((b"\x00",), 6, 1)), 2.0) == []
    assert a.counters["intent_datagrams_refused"] == 1 and a.intent.counters.records_invalid == 2


def test_pure_membership_node_ignores_intent_types() -> None:
    a = _core("a", _trust(["a"]), intent=False)
    assert a.intent is None and "intent_bytes_sent" not in a.counters
    out = a.receive("addr-b", encode("b", HeadsDigest(b"d" * 16)), 1.0, reliable=True)
    assert out == [] and a.counters["unknown_type"] == 1 and a.counters["wire_errors"] == 0


def test_dead_member_moves_a_blob_fetch_to_the_next_peer() -> None:
    trust = _trust(["a", "b", "c"])
    a = _core("a", trust)
    b, c = _core("b", trust, seeds=("a",), intent=False), _core("c", trust, seeds=("a",), intent=False)
    w = Wire([a, b, c])
    w.send(b, b.start(0.0))
    w.send(c, c.start(0.0))
    w.run(1.0)
    assert a.swim.live_peers() == ["b", "c"]
    sha = "ab" * 32
    first = a.fetch_blob(sha, ["b", "c"], w.now, 10)
    assert len(first) == 1 and first[0].reliable
    asked = first[0].dst
    other = "addr-c" if asked == "addr-b" else "addr-b"
    dead_name = asked.removeprefix("addr-")
    inc = a.swim.members[dead_name].incarnation
    out = a.receive("addr-x", encode("x", Dead(inc, dead_name, "x")), w.now + 0.1)
    reqs = [o for o in out if o.data[2] == BlobRequest.TYPE]
    assert [o.dst for o in reqs] == [other]
    # The simulator's event stream still sees the death: NodeCore did not consume it.
    assert any(ev.kind == "dead" and ev.node == dead_name for ev in a.swim.events)


# --------------------------------------------------------------------------- scenarios


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)


def to_toml(doc: dict[str, Any]) -> str:
    """Write the small scenario documents of these tests as TOML (for replay files)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, (dict, list)) or (isinstance(v, list) and k != "faults")]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            lines += [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items()]
    for f in doc.get("faults", []):
        lines.append("\n[[faults]]")
        lines += [f"{kk} = {_toml_value(vv)}" for kk, vv in f.items()]
    return "\n".join(lines) + "\n"


def run_doc(doc: dict[str, Any], seed: int) -> tuple[Simulation, dict[str, Any], str]:
    """Run a scenario document; return the simulation, its report and the replay hint."""
    text = to_toml(doc)
    assert tomllib.loads(text) == doc, "test TOML writer lost information"
    sim = Simulation(parse(doc), seed)
    sim.run()
    report = build_report(sim)
    digest = hashlib.sha1(text.encode()).hexdigest()[:10]
    path = os.path.join(tempfile.gettempdir(), f"wasmatrix-intent-{digest}.toml")
    hint = f"seed={seed}\nreplay: wasmatrix sim {path} --seed {seed}\n--- {path} ---\n{text}"
    return sim, report, hint


def _save_replay(hint: str) -> None:
    path = hint.split("replay: wasmatrix sim ", 1)[1].split(" --seed", 1)[0]
    body = hint.split(f"--- {path} ---\n", 1)[1]
    with open(path, "w") as fh:
        fh.write(body)


def check(cond: bool, what: str, hint: str, report: dict[str, Any] | None = None) -> None:
    """Assert with the seed and the replay command in the message (and the replay file written)."""
    if not cond:
        _save_replay(hint)
        summary = render_text(report) if report is not None else ""
        pytest.fail(f"{what}\n{hint}\n{summary}", pytrace=False)


def base_doc(n: int, duration: float, loss: float = 0.0) -> dict[str, Any]:
    return {
        "name": "intent-prop",
        "nodes": n,
        "duration": duration,
        "seeds": 2,
        "join_window": 2.0,
        "network": {"latency_ms": 2.0, "jitter_ms": 1.0, "loss": loss},
        "intent": {},
        "faults": [],
    }


def _name(i: int, n: int) -> str:
    return f"n{i:0{max(3, len(str(n - 1)))}d}"


def assert_intent_healthy(sim: Simulation, report: dict[str, Any], hint: str) -> None:
    """After heal: identical documents and views everywhere, nothing acknowledged lost, nothing forged visible."""
    harness = sim.intent
    assert isinstance(harness, IntentHarness)
    live = harness.live_intents()
    check(len(live) == len(sim.live_names()) and len(live) > 0, "every live node runs intent", hint, report)
    fps = {n: fingerprint(i) for n, i in live}
    svs = {fp[0] for fp in fps.values()}
    docs = {fp[1] for fp in fps.values()}
    views = {fp[2] for fp in fps.values()}
    check(len(svs) == 1, f"per-signer heads differ across live nodes: {len(svs)} distinct", hint, report)
    check(len(docs) == 1, f"record sets differ across live nodes: {len(docs)} distinct", hint, report)
    check(len(views) == 1, f"effective views differ across live nodes: {len(views)} distinct", hint, report)
    check(report["intent_converged"] is True, "report says intent did not converge", hint, report)
    check(report["intent_lost_write_count"] == 0, f"acknowledged writes lost: {report['intent_lost_writes']}", hint, report)
    conv = report["intent_convergence_seconds"]
    check(conv["converged_writes"] == conv["writes"] == len(harness.writes), f"not every write converged: {conv}", hint, report)
    for wid, w in harness.writes.items():
        for n, i in live:
            check(i.has_write(*wid), f"write {w.to_json()} missing at {n}", hint, report)
    for wid in harness.forged:
        for n, i in live:
            check(not i.has_write(*wid), f"forged write {wid} entered the view of {n}", hint, report)
            check(all(r.write_id != wid for k in ("deployments",) for key in i.doc.records.slots(k) for r in i.doc.history(k, key)),
                  f"forged write {wid} in the deployment history at {n}", hint, report)
    check(report["intent_forged_visible"] == 0, "a forged write became visible", hint, report)
    errors = sum(sim.nodes[n].core.counters["intent_errors"] for n in sim.live_names())
    check(errors == 0, f"{errors} exceptions inside intent sub-cores: {[sim.nodes[n].core.last_error for n in sim.live_names()]}", hint, report)


@dataclass
class Plan:
    n: int
    seed: int
    loss: float
    writes: list[tuple[float, str, int]]
    crashes: list[tuple[int, float, float]]
    write_then_crash: list[tuple[int, float, float]]
    partition: tuple[float, float, int] | None
    forges: list[tuple[float, str, int]]
    joins: list[float] = field(default_factory=list)

    def doc(self) -> dict[str, Any]:
        n = self.n
        last = 0.0
        d = base_doc(n, 0.0, self.loss)
        faults: list[dict[str, Any]] = [
            {"at": 3.0, "action": "publish", "node": _name(1, n), "module": "hello", "version": "1.0.0", "size": 4096},
        ]
        for i, (at, kind, node) in enumerate(self.writes):
            at = round(at, 3)
            nm = _name(node, n)
            if kind == "kv":
                faults.append({"at": at, "action": "kv", "node": nm, "ns": "app", "key": f"k{i % 3}", "value": f"v{i}@{nm}"})
            elif kind == "publish":
                faults.append({"at": at, "action": "publish", "node": nm, "module": "hello", "version": f"1.{i + 1}.0", "size": 2048})
            elif kind == "deploy":
                faults.append({"at": at, "action": "deploy", "node": nm, "name": "web", "module": "hello", "version": "^1.0.0", "replicas": 2})
            else:
                faults.append({"at": at, "action": "rollback", "node": nm, "name": "web"})
            last = max(last, at)
        for node, at, down in self.crashes:
            nm = _name(node, n)
            faults.append({"at": round(at, 3), "action": "crash", "node": nm})
            faults.append({"at": round(at + down, 3), "action": "restart", "node": nm})
            last = max(last, at + down)
        for node, at, down in self.write_then_crash:
            # Same instant: the write is acknowledged (durable) and the node dies before any push.
            nm = _name(node, n)
            faults.append({"at": round(at, 3), "action": "kv", "node": nm, "ns": "durable", "key": f"{nm}-{at:.1f}", "value": "acked"})
            faults.append({"at": round(at, 3), "action": "crash", "node": nm})
            faults.append({"at": round(at + down, 3), "action": "restart", "node": nm})
            last = max(last, at + down)
        if self.partition is not None:
            at, length, split = self.partition
            faults.append({"at": round(at, 3), "action": "partition", "groups": [f"{_name(0, n)}-{_name(split - 1, n)}", f"{_name(split, n)}-{_name(n - 1, n)}"]})
            faults.append({"at": round(at + length, 3), "action": "heal"})
            last = max(last, at + length)
        for at, kind, node in self.forges:
            faults.append({"at": round(at, 3), "action": "forge", "node": _name(node, n), "kind": kind, "name": "web"})
            last = max(last, at)
        for at in self.joins:  # new nodes must catch up on everything written before they existed
            faults.append({"at": round(at, 3), "action": "join", "count": 1})
            last = max(last, at)
        faults.sort(key=lambda f: f["at"])  # stable: a write stays before the crash of the same instant
        d["faults"] = faults
        d["duration"] = round(last + 45.0, 3)
        return d


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    n = draw(st.integers(10, 30))
    node = st.integers(0, n - 1)
    victim = st.integers(2, n - 1)  # the two seed nodes stay up so every restart can rejoin
    t = st.floats(4.0, 40.0, allow_nan=False)
    writes = draw(st.lists(st.tuples(t, st.sampled_from(["kv", "kv", "publish", "deploy", "rollback"]), node), min_size=1, max_size=8))
    crashes = draw(st.lists(st.tuples(victim, t, st.floats(0.5, 25.0)), max_size=3))
    wtc = draw(st.lists(st.tuples(victim, t, st.floats(0.5, 25.0)), max_size=2))
    partition = draw(st.none() | st.tuples(st.floats(4.0, 30.0), st.floats(2.0, 25.0), st.integers(3, n - 3)))
    forges = draw(st.lists(st.tuples(t, st.sampled_from(["bad_signature", "unknown_signer", "role"]), node), max_size=3))
    joins = draw(st.lists(t, max_size=2))
    return Plan(n, draw(st.integers(0, 2**31 - 1)), draw(st.sampled_from([0.0, 0.02, 0.1])), writes, crashes, wtc, partition, forges, joins)


@pytest.mark.slow
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True, database=None)
@given(plans())
def test_live_nodes_converge_after_faults_and_keep_every_acknowledged_write(plan: Plan) -> None:
    sim, report, hint = run_doc(plan.doc(), plan.seed)
    assert_intent_healthy(sim, report, hint)


def test_write_acknowledged_just_before_a_crash_survives_the_restart() -> None:
    doc = base_doc(12, 70.0)
    # n007 is cut off, so its acknowledged write cannot leave it before the crash.
    doc["faults"] = [
        {"at": 4.0, "action": "partition", "groups": [["n007"], ["n000-n006", "n008-n011"]]},
        {"at": 5.0, "action": "kv", "node": "n007", "ns": "app", "key": "k", "value": "only-on-disk"},
        {"at": 6.0, "action": "crash", "node": "n007"},
        {"at": 7.0, "action": "heal"},
        {"at": 20.0, "action": "restart", "node": "n007"},
    ]
    seed = 11
    sim, report, hint = run_doc(doc, seed)
    harness = sim.intent
    assert isinstance(harness, IntentHarness)
    check(len(harness.writes) == 1, "the KV write was acknowledged", hint, report)
    (w,) = harness.writes.values()
    # While n007 was down nobody else had the write: it existed only in n007's durable store.
    first_elsewhere = min(t for n, t in w.visible.items() if n != "n007")
    check(first_elsewhere >= 20.0, f"write seen elsewhere at {first_elsewhere} before the restart", hint, report)
    assert_intent_healthy(sim, report, hint)
    for n, i in harness.live_intents():
        check(i.get("app", "k") == b"only-on-disk", f"{n} lacks the value", hint, report)


def test_write_not_yet_persisted_when_the_node_crashes_is_never_acknowledged() -> None:
    doc = base_doc(12, 40.0)
    # The crash comes before the simulated worker thread finished the persist effect.
    doc["faults"] = [
        {"at": 5.0, "action": "kv", "node": "n007", "ns": "app", "key": "k", "value": "never-durable"},
        {"at": 5.0, "action": "crash", "node": "n007"},
        {"at": 10.0, "action": "restart", "node": "n007"},
    ]
    sim, report, hint = run_doc(doc, 11)
    harness = sim.intent
    assert isinstance(harness, IntentHarness)
    check(harness.writes == {} and harness.unacked_lost == 1, f"acked {harness.writes}, unacked lost {harness.unacked_lost}", hint, report)
    assert_intent_healthy(sim, report, hint)
    for n, i in harness.live_intents():
        check(i.get("app", "k") is None, f"{n} holds a write that was never durable anywhere", hint, report)


def test_forged_writes_reach_every_node_and_are_rejected_everywhere() -> None:
    doc = base_doc(15, 50.0, loss=0.02)
    doc["faults"] = [
        {"at": 3.0, "action": "publish", "node": "n001", "module": "hello", "version": "1.0.0"},
        {"at": 6.0, "action": "deploy", "node": "n002", "name": "web", "module": "hello", "version": "1.0.0"},
        {"at": 8.0, "action": "forge", "node": "n003", "kind": "bad_signature", "name": "web"},
        {"at": 8.0, "action": "forge", "node": "n004", "kind": "unknown_signer", "name": "web"},
        {"at": 8.0, "action": "forge", "node": "n005", "kind": "role", "name": "web"},
    ]
    sim, report, hint = run_doc(doc, 5)
    assert_intent_healthy(sim, report, hint)
    harness = sim.intent
    assert isinstance(harness, IntentHarness)
    forgers = {"n003", "n004", "n005"}
    for n, i in harness.live_intents():
        # Each forger sent its record to every live peer; every other node refused all three,
        # and nobody stored or forwarded one (each node saw each forgery exactly once).
        by = i.counters.invalid_by_reason
        want = {k: 0 if f == n else 1 for f, k in (("n003", "bad_signature"), ("n004", "unknown_signer"), ("n005", "role"))}
        check({k: by.get(k, 0) for k in want} == want, f"{n} did not see and reject each forgery once: {by}", hint, report)
        check(all(not i.doc.records.contains(b"", *wid) and i.doc.records.next_seq_for(wid[0]) < wid[1] for wid in harness.forged),
              f"{n} stored a forged record", hint, report)
        dep = i.deployment("web")
        check(dep.active_version == "1.0.0" and dep.spec.module == "hello", f"{n} acts on a forged deployment: {dep}", hint, report)


def test_publish_deploy_rollback_and_blob_fetch_in_a_partitioned_mesh() -> None:
    doc = base_doc(20, 90.0, loss=0.01)
    doc["faults"] = [
        {"at": 3.0, "action": "publish", "node": "n003", "module": "hello", "version": "1.0.0", "size": 100_000},
        {"at": 4.0, "action": "publish", "node": "n004", "module": "hello", "version": "1.1.0", "size": 50_000},
        {"at": 8.0, "action": "deploy", "node": "n005", "name": "web", "module": "hello", "version": "1.0.0", "replicas": 3},
        {"at": 12.0, "action": "deploy", "node": "n006", "name": "web", "module": "hello", "version": "^1.0.0", "replicas": 3},
        {"at": 15.0, "action": "partition", "groups": ["n000-n009", "n010-n019"]},
        {"at": 17.0, "action": "rollback", "node": "n012", "name": "web"},
        {"at": 18.0, "action": "kv", "node": "n002", "ns": "app", "key": "color", "value": "blue"},
        {"at": 19.0, "action": "kv", "node": "n015", "ns": "app", "key": "color", "value": "green"},
        {"at": 20.0, "action": "blob_fetch", "nodes": ["n008", "n011"], "module": "hello", "version": "1.0.0"},
        {"at": 35.0, "action": "heal"},
    ]
    sim, report, hint = run_doc(doc, 21)
    assert_intent_healthy(sim, report, hint)
    check(report["intent_failed_write_count"] == 0, f"writes refused: {report['intent_failed_writes']}", hint, report)
    harness = sim.intent
    assert isinstance(harness, IntentHarness)
    # Concurrent KV writes on the two sides: the greater (wall time, signer) wins, on every node.
    (_, some), *_ = harness.live_intents()
    kv = sorted((r.wall_ms, r.signer, r.payload["v"]) for r in some.doc.records.history("kv", "app/color"))
    assert len(kv) == 2 and {v for *_, v in kv} == {b"blue", b"green"}
    expected = kv[-1][2]
    views = {n: (i.deployment("web").active_version, i.get("app", "color")) for n, i in harness.live_intents()}
    check(set(views.values()) == {("1.0.0", expected)}, f"views after heal: {set(views.values())}", hint, report)
    # n008 is on the side of the publisher (n003); n011 is cut off until the heal, then its fetch
    # of the blob from the nearest peers that hold it can only be answered "missing".
    fetched = {r["node"]: r["ok"] for r in report["blob_fetches"]["results"]}
    check(fetched.get("n008") is True, f"n008 did not fetch the blob: {report['blob_fetches']}", hint, report)
    check(harness.blob_stores["n008"].has(_sha_of(harness, "1.0.0")), "blob missing at n008", hint, report)
    check(report["sync_bytes_sent"] > 150_000, f"sync bytes {report['sync_bytes_sent']} do not include the blob", hint, report)


def _sha_of(harness: IntentHarness, version: str) -> str:
    for _, i in harness.live_intents():
        return i.doc.manifest("hello", version).sha256
    raise AssertionError("no live node")


def test_same_seed_same_trace_and_intent_report() -> None:
    doc = base_doc(12, 40.0, loss=0.05)
    doc["faults"] = [
        {"at": 3.0, "action": "publish", "node": "random:1", "module": "hello", "version": "1.0.0"},
        {"at": 5.0, "action": "kv", "node": "random:2", "ns": "app", "key": "x", "value": "1"},
        {"at": 6.0, "action": "crash", "node": "n005"},
        {"at": 15.0, "action": "restart", "node": "n005"},
    ]
    _, r1, _ = run_doc(doc, 9)
    _, r2, _ = run_doc(doc, 9)
    keys = ["trace_hash", "intent_convergence_seconds", "sync_bytes_sent", "intent_converged", "events"]
    assert {k: r1[k] for k in keys} == {k: r2[k] for k in keys}
    _, r3, _ = run_doc(doc, 10)
    assert r3["trace_hash"] != r1["trace_hash"]


def test_membership_only_scenarios_have_no_intent() -> None:
    doc = base_doc(5, 5.0)
    del doc["intent"]
    sc = parse(doc)
    assert sc.intent is None
    sim = Simulation(sc, 1)
    sim.run()
    assert sim.intent is None
    r = build_report(sim)
    assert "intent_converged" not in r and "sync_bytes_sent" not in r
    assert all(sim.nodes[n].core.intent is None for n in sim.order)
    # An intent action alone switches intent on.
    doc["faults"] = [{"at": 1.0, "action": "kv", "node": "n001", "ns": "a", "key": "b", "value": "c"}]
    assert parse(doc).intent is not None


@pytest.mark.parametrize(
    "fault, message",
    [
        ({"action": "publish", "node": "n001", "module": "Bad Name", "version": "1.0.0"}, "module name"),
        ({"action": "publish", "node": "n001", "version": "1.0.0"}, "needs 'module'"),
        ({"action": "deploy", "node": "n001", "name": "web", "module": "m", "version": "not-a-range!"}, "version"),
        ({"action": "kv", "ns": "a", "key": "b", "value": "c"}, "needs 'node'"),
        ({"action": "forge", "node": "n001", "kind": "teleport"}, "forge kind"),
        ({"action": "rollback", "node": "n001", "name": "web", "to": "latest"}, "latest"),
    ],
)
def test_intent_actions_are_validated_at_load(fault: dict[str, Any], message: str) -> None:
    doc = base_doc(5, 10.0)
    doc["faults"] = [{"at": 1.0, **fault}]
    with pytest.raises(ScenarioError, match=message):
        parse(doc)


def test_unknown_intent_keys_are_refused() -> None:
    doc = base_doc(5, 10.0)
    doc["intent"] = {"fanoutt": 3}
    with pytest.raises(ScenarioError, match="unknown intent key"):
        parse(doc)


def test_blob_chunk_size_beyond_one_stream_frame_is_refused() -> None:
    # A BlobChunk travels in one stream frame (65,519 bytes of Noise plaintext): 1 MiB chunks cannot.
    doc = base_doc(5, 10.0)
    doc["intent"] = {"blob_chunk_size": 1024 * 1024}
    with pytest.raises(ScenarioError, match=r"intent\.blob_chunk_size must be a number in \[1024, 63983\]"):
        parse(doc)


def test_shipped_intent_example_loads() -> None:
    from sim.scenario import load

    path = os.path.join(os.path.dirname(__file__), "..", "examples", "scenarios", "intent.toml")
    sc = load(path)
    assert sc.intent is not None and sc.nodes >= 100
    actions = {f.action for f in sc.faults}
    assert {"publish", "deploy", "rollback", "kv", "crash", "restart", "partition", "heal"} <= actions
