"""Issue 9: random operation sequences with up to two faulty admitted nodes.

Three correct nodes write (each acknowledged write under its own key, so every one must stay
visible) and sync pairwise with ``LogSync`` rounds; two faulty nodes, holding only their node
keys, replay old records, try deletions they may not make (a forged tombstone in an honest
signer's chain, a route delete their role forbids), squat honest positions, forge placements
for other nodes, equivocate (two records at one position of their own chain, each shown to a
different victim) and make valid writes that reach only one victim. Attacks travel as
``RecordPush`` frames, as in test_intent_attacks. After a final round of pairwise syncs every
correct node has the same heads, the same view and every acknowledged honest write.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness.budget import examples

from crdt.heads import RecordPush
from crdt.intent import IntentNode
from crdt.logrecord import LogRecord
from crdt.logsync import LogSync
from crdt_helpers import key, make_nodes

WALL = 1_765_000_000.0
MS = int(WALL * 1000)
CORRECT = ("n000", "n001", "n002")
FAULTY = ("n003", "n004")

_op = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 2)),
    st.tuples(st.just("sync"), st.integers(0, 2), st.integers(0, 2)),
    st.tuples(st.sampled_from(["replay", "forged_delete", "role_delete", "squat", "forge_placement", "own_write"]),
              st.integers(0, 1), st.integers(0, 2), st.integers(0, 1000)),
    st.tuples(st.just("equivocate"), st.integers(0, 1), st.integers(0, 2), st.integers(0, 2)),
)


class _Faulty:
    """A faulty node's own signing chain (it may sign only as itself)."""

    def __init__(self, name: str) -> None:
        self.name, self.key, self.seq, self.prev = name, key("node:" + name), 0, b""

    def sign(self, kind: str, k: str, payload: dict[str, Any], advance: bool = True) -> LogRecord:
        r = LogRecord.create(self.key, self.seq + 1, self.prev, kind, k, payload, MS)
        if advance:
            self.seq, self.prev = r.seq, r.id
        return r


def _round(a: IntentNode, b: IntentNode) -> None:
    """One LogSync exchange started by ``a`` (heads, requests, batches) until quiet."""
    sa, sb = LogSync(a.doc.records), LogSync(b.doc.records)
    queue: list[tuple[str, Any]] = [("b", sa.open())]
    for _ in range(200):
        if not queue:
            break
        to, msg = queue.pop(0)
        out = (sb if to == "b" else sa).receive(msg, WALL)
        queue += [("a" if to == "b" else "b", x) for x in out]
    assert not queue, "a sync round did not finish"
    a.doc.refresh()
    b.doc.refresh()


def _run(ops: list[tuple[Any, ...]]) -> None:
    nodes = make_nodes(5)
    for n in nodes.values():
        n.wall = WALL
    correct = [nodes[n] for n in CORRECT]
    faulty = [_Faulty(n) for n in FAULTY]
    acked: dict[str, bytes] = {}
    for i, op in enumerate(ops):
        kind = op[0]
        if kind == "write":
            w = correct[op[1]]
            k, v = f"{CORRECT[op[1]]}-{i}", f"v{i}".encode()
            w.set("app", k, v)  # MemoryStore: acknowledged (durable) when set returns
            acked[k] = v
            continue
        if kind == "sync":
            if op[1] != op[2]:
                _round(correct[op[1]], correct[op[2]])
            continue
        f, victim = faulty[op[1]], correct[op[2]]
        honest = [LogRecord.decode(r) for n in correct for r in n.doc.records.export()]
        honest = [r for r in honest if r.signer not in {x.key.key_id for x in faulty}]
        pushes: list[tuple[IntentNode, bytes]] = []
        if kind == "replay" and honest:
            pushes.append((victim, honest[op[3] % len(honest)].encode()))
        elif kind in ("forged_delete", "squat") and honest:
            target = honest[op[3] % len(honest)]
            last = max((r for r in honest if r.signer == target.signer), key=lambda r: r.seq)
            payload = {} if kind == "forged_delete" else {"v": b"squat"}
            # The honest signer's next position, content it never signed (no valid signature possible).
            fake = LogRecord(target.signer, last.seq + 1, last.id, "kv", "app/" + (target.key.split("/", 1)[-1]),
                             kind == "forged_delete", payload, MS, bytes(64))
            pushes.append((victim, fake.encode()))
        elif kind == "role_delete":
            pushes.append((victim, f.sign("routes", "x.com/ GET", {"deleted": True}, advance=False).encode()))
        elif kind == "forge_placement":
            owner = CORRECT[op[3] % 3]
            pushes.append((victim, f.sign("placement", owner, {"node_id": owner, "replicas": [], "updated_at": WALL},
                                          advance=False).encode()))
        elif kind == "own_write":
            pushes.append((victim, f.sign("kv", f"f/{f.name}-{i}", {"v": b"faulty"}).encode()))
        elif kind == "equivocate":
            one = f.sign("kv", f"f/{f.name}-{i}", {"v": b"one"}, advance=False)
            two = f.sign("kv", f"f/{f.name}-{i}", {"v": b"two"})
            pushes += [(victim, one.encode()), (correct[op[3]], two.encode())]
        for v, rec in pushes:
            v.receive(f.name, RecordPush((rec,), 1 + i, 3), 1.0 + i)
    for _ in range(2):  # the correct nodes finish syncing among themselves
        for a in correct:
            for b in correct:
                if a is not b:
                    _round(a, b)
    heads = {n.doc.records.heads_digest() for n in correct}
    views = {tuple(n.doc.view_digest()) for n in correct}
    assert len(heads) == 1 and len(views) == 1
    for name, n in zip(CORRECT, correct):
        for k, v in acked.items():
            assert n.get("app", k) == v, (name, k)
        # Only the refusals the attacks call for (equivocation: the second record at a position; frozen: a proven equivocator's later records).
        assert n.counters.invalid_by_reason.keys() <= {"bad_signature", "role", "not_owner", "equivocation", "frozen"}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_op, min_size=8, max_size=40))
def test_correct_nodes_agree_and_keep_every_acknowledged_write(ops: list[tuple[Any, ...]]) -> None:
    _run(ops)


@pytest.mark.slow
@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_op, min_size=20, max_size=80))
def test_correct_nodes_agree_and_keep_every_acknowledged_write_long(ops: list[tuple[Any, ...]]) -> None:
    _run(ops)
