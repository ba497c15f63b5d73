"""LogSync: heads-based anti-entropy over encoded messages, with loss, squatting and an equivocator."""

from __future__ import annotations

import random

import pytest

from crdt.errors import ValidationError
from crdt.logrecord import LogRecord
from crdt.logsync import LogSync, decode_log_message
from log_helpers import NOW, NOW_MS, Chain, new_log, node_key


def _round(nodes: list[LogSync], rng: random.Random, loss: float) -> int:
    """Every node opens one round with a random peer; messages travel encoded and may be lost."""
    sent = 0
    for i, node in enumerate(nodes):
        j = rng.choice([k for k in range(len(nodes)) if k != i])
        queue = [(i, j, node.open())]
        while queue:
            src, dst, msg = queue.pop(0)
            sent += 1
            if rng.random() < loss:
                continue
            for reply in nodes[dst].receive(decode_log_message(msg.encode()), NOW):
                queue.append((dst, src, reply))
    return sent


@pytest.mark.parametrize("seed", range(4))
def test_five_nodes_converge_by_heads_with_loss_squatting_and_an_equivocator(seed: int) -> None:
    rng = random.Random(seed)
    nodes = [LogSync(new_log()) for _ in range(5)]
    honest = []
    for i, name in enumerate(["n0", "n1"]):  # each honest writer writes at its own node only
        for k in range(6):
            rec, res = nodes[i].log.append(node_key(name), "kv", f"ns/{rng.choice('abc')}", {"v": b"%d" % k}, NOW + k)
            assert res.status == "accepted"
            honest.append(rec)
    # A squatter signs at n0's next position with its own key, offered to every other node.
    fake = LogRecord(node_key("n0").key_id, 7, honest[5].id, "kv", "ns/a", False, {"v": b"evil"}, NOW_MS + 99, b"")
    fake = LogRecord(fake.signer, fake.seq, fake.prev, "kv", "ns/a", False, fake.payload, fake.wall_ms, node_key("f1").sign(fake.message()))
    for n in nodes[2:]:
        assert n.log.add(fake.encode(), NOW).reason == "bad_signature"
    # f0 equivocates: each branch reaches a different node.
    f = Chain(node_key("f0"))
    r1 = f.next("kv", "ns/a", {"v": b"f1"}, NOW_MS)
    r2a = f.next("kv", "ns/b", {"v": b"A"}, NOW_MS + 1)
    r2b = f.next("kv", "ns/b", {"v": b"B"}, NOW_MS + 1, seq=2, prev=r1.id)
    for r in (r1, r2a):
        nodes[2].log.add(r.encode(), NOW)
    for r in (r1, r2b):
        nodes[4].log.add(r.encode(), NOW)
    for _ in range(30):
        _round(nodes, rng, loss=0.2)
        if len({n.log.heads_digest() for n in nodes}) == 1:
            break
    else:
        raise AssertionError(f"no convergence in 30 rounds, seed={seed}")
    views = [n.log.view("kv") for n in nodes]
    assert all(v == views[0] for v in views)
    assert all(n.log.contains(r.id, r.signer, r.seq) for n in nodes for r in honest)
    assert all(n.log.equivocators() == {node_key("f0").key_id: 2} for n in nodes)
    assert views[0].get("ns/b") != {"v": b"A"} and views[0].get("ns/b") != {"v": b"B"}


def test_decode_log_message_rejects_garbage() -> None:
    for junk in (b"", b"\x92", b"\x92\x15\x00", b"\x93\x1e\x00\x00", bytes(70_000)):
        with pytest.raises(ValidationError):
            decode_log_message(junk)
