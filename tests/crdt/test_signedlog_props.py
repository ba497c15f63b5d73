"""Properties of SignedLog: arrival order, duplicates, forgeries and two faulty signers change nothing."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness.budget import examples

from crdt.heads import RecordBatch
from crdt.logrecord import LogRecord
from crdt.signedlog import SignedLog
from log_helpers import NOW, NOW_MS, Chain, new_log, node_key

HONEST = [node_key("n0"), node_key("n1")]
FAULTY = [node_key("f0"), node_key("f1")]
SLOTS = ["ns/a", "ns/b", "ns/c"]


def _universe(rng: random.Random) -> tuple[list[bytes], list[LogRecord], dict[tuple[str, str], Any]]:
    """Every message of one run, the honest records, and the expected KV view by the documented rule."""
    msgs: list[bytes] = []
    honest: list[LogRecord] = []
    in_view: list[LogRecord] = []  # what the specification says each replica's view is built from
    for k in HONEST:
        c, wall = Chain(k), NOW_MS - 100_000
        for _ in range(rng.randint(1, 6)):
            wall += rng.randint(0, 3000)
            tomb = rng.random() < 0.2
            r = c.next("kv", rng.choice(SLOTS), None if tomb else {"v": rng.randbytes(4)}, wall, tombstone=tomb)
            honest.append(r)
        in_view += c.records
    for k in FAULTY:
        c = Chain(k)
        n = rng.randint(1, 6)
        for _ in range(n):  # a faulty key may write wall times up to the tolerance ahead
            c.next("kv", rng.choice(SLOTS), {"v": rng.randbytes(4)}, NOW_MS + rng.randint(-100_000, 30_000))
        msgs += [r.encode() for r in c.records]
        fork = rng.randint(1, n + 1) if rng.random() < 0.6 else 0
        if fork and fork <= n:  # equivocate at `fork`, and maybe continue the other branch
            prev = c.records[fork - 2].id if fork > 1 else b""
            alt = c.next("kv", rng.choice(SLOTS), {"v": b"alt"}, NOW_MS, seq=fork, prev=prev)
            msgs.append(alt.encode())
            if rng.random() < 0.5:
                msgs.append(c.next("kv", "ns/a", {"v": b"alt2"}, NOW_MS, seq=fork + 1, prev=alt.id).encode())
            if fork > 1 and rng.random() < 0.4:  # a third record at `fork` naming another predecessor
                msgs.append(c.next("kv", "ns/c", {"v": b"alt3"}, NOW_MS, seq=fork, prev=rng.randbytes(32)).encode())
                fork -= 1
            in_view += c.records[: fork - 1]
        else:
            in_view += c.records
        # A record above a gap, one from too far in the future, a forgery of an honest position.
        msgs.append(c.next("kv", "ns/a", {"v": b"gap"}, NOW_MS, seq=n + 5, prev=b"\7" * 32).encode())
        msgs.append(c.next("kv", "ns/b", {"v": b"late"}, NOW_MS + 40_000_000, seq=n + 1, prev=c.records[-1].id).encode())
        victim = rng.choice(honest)
        fake = LogRecord(victim.signer, victim.seq, victim.prev, "kv", "ns/a", False, {"v": b"forged"}, victim.wall_ms + 1, b"")
        msgs.append(LogRecord(fake.signer, fake.seq, fake.prev, "kv", "ns/a", False, fake.payload, fake.wall_ms, k.sign(fake.message())).encode())
        msgs.append(rng.randbytes(rng.randint(0, 300)))
    msgs += [r.encode() for r in honest]
    msgs += [rng.choice(msgs) for _ in range(8)]  # replays and duplicates
    expected: dict[tuple[str, str], Any] = {}
    heads: dict[tuple[str, str], LogRecord] = {}
    for r in sorted(in_view, key=lambda r: (r.signer, r.seq)):
        heads[(r.signer, r.key)] = r
    best: dict[str, LogRecord] = {}
    for (_, slot), r in heads.items():
        if slot not in best or (r.wall_ms, r.tombstone, r.signer) > (best[slot].wall_ms, best[slot].tombstone, best[slot].signer):
            best[slot] = r
    expected = {("kv", s): r.payload for s, r in best.items() if not r.tombstone}
    return msgs, honest, expected


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1))
def test_three_replicas_any_order_same_view_with_every_honest_write(seed: int) -> None:
    rng = random.Random(seed)
    msgs, honest, expected = _universe(rng)
    replicas: list[SignedLog] = []
    for _ in range(3):
        log = new_log()
        order = msgs[:]
        rng.shuffle(order)
        for m in order:
            log.add(m, NOW)
        replicas.append(log)
    views = [{("kv", s): v for s, v in log.view("kv").items()} for log in replicas]
    assert views[0] == views[1] == views[2] == expected, f"seed={seed}"
    assert replicas[0].heads() == replicas[1].heads() == replicas[2].heads()
    assert replicas[0].equivocators() == replicas[1].equivocators() == replicas[2].equivocators()
    assert not set(replicas[0].equivocators()) & {k.key_id for k in HONEST}
    for log in replicas:
        assert all(log.contains(r.id, r.signer, r.seq) for r in honest)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_heads_sync_converges_two_logs_with_arbitrary_subsets(seed: int, pa: float, pb: float) -> None:
    rng = random.Random(seed)
    msgs, honest, expected = _universe(rng)
    a, b = new_log(), new_log()
    for m in msgs:
        if rng.random() < pa:
            a.add(m, NOW)
        if rng.random() < pb:
            b.add(m, NOW)
    for r in honest:  # each honest record was acknowledged by (added at) at least one replica
        if not a.contains(r.id, r.signer, r.seq) and not b.contains(r.id, r.signer, r.seq):
            (a if rng.random() < 0.5 else b).add(r.encode(), NOW)
    from test_signedlog import converge

    converge(a, b)
    assert a.heads() == b.heads() and a.view("kv") == b.view("kv")
    assert all(a.contains(r.id, r.signer, r.seq) and b.contains(r.id, r.signer, r.seq) for r in honest), f"seed={seed}"


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats(allow_nan=True) | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=examples(150), deadline=None)
@given(
    st.sampled_from(["registry", "deployments", "routes", "placement", "kv"]),
    st.sampled_from(["n0", "ns/a", "hello@1.0.0", "web", "GET */api/*"]),
    _values,
    st.booleans(),
    st.integers(0, 2**53 - 1),
)
def test_validly_signed_records_with_arbitrary_payloads_never_raise(kind: str, slot: str, payload: object, tomb: bool, wall: int) -> None:
    """A trusted key signing nonsense gets a rejection (or a stored record), never an exception."""
    from crdt.errors import ValidationError

    try:
        rec = Chain(node_key("n0")).next(kind, slot, payload, wall, tombstone=tomb)
    except ValidationError:
        return  # not even encodable as a record: nothing to send
    log = new_log()
    res = log.add(rec.encode(), NOW)
    assert res.status in {"accepted", "held", "rejected"}
    assert log.missing_from({"x": "y", node_key("n0").key_id: (True, b"")}) == []  # type: ignore[dict-item]
    want = [RecordBatch((rec.encode(),))] if res.status == "accepted" else []
    assert log.records_for([("a", "b", None), (node_key("n0").key_id, 1, 1)]) == want  # type: ignore[list-item]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1))
def test_heads_sync_converges_even_with_tiny_pending_bounds(seed: int) -> None:
    """Records refused or evicted above gaps come back by heads: bounds cost rounds, not convergence.

    Each honest record is acknowledged where it was written (its origin adds its chain in
    order, as ``append`` does); everything else arrives in random order at random replicas, so
    with one pending slot per signer most out-of-order records are refused or evicted.
    """
    rng = random.Random(seed)
    msgs, honest, _ = _universe(rng)
    a, b = new_log(max_pending_per_signer=1, max_pending=2), new_log(max_pending_per_signer=1, max_pending=2)
    for signer in sorted({r.signer for r in honest}):
        origin = a if rng.random() < 0.5 else b
        for r in sorted((r for r in honest if r.signer == signer), key=lambda r: r.seq):
            assert origin.add(r.encode(), NOW).status == "accepted"
    order = msgs[:]
    rng.shuffle(order)
    for m in order:
        (a if rng.random() < 0.5 else b).add(m, NOW)
    from test_signedlog import converge

    converge(a, b)
    assert a.view("kv") == b.view("kv") and a.equivocators() == b.equivocators(), f"seed={seed}"
    assert all(a.contains(r.id, r.signer, r.seq) and b.contains(r.id, r.signer, r.seq) for r in honest)
    # Beyond the bounds only equivocation evidence waits: two records at the fork and the next seq.
    assert a.pending_count() <= 2 + 4 * len(a.equivocators()) and b.pending_count() <= 2 + 4 * len(b.equivocators())
