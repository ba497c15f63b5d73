"""crdt benchmarks: prints figures (never asserts). Run: python bench/bench_crdt.py [--cost-only]

The per-write and per-record costs are printed next to a raw pycrdt baseline measured in the
same run: a ``Map`` write of a value of the same size (local write) and a ``Doc.apply_update``
of the same update bytes (remote apply), each into a map already holding as many keys.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import tempfile
import time

import structlog

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "crdt"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))

from pycrdt import Doc, Map  # noqa: E402

from crdt.intent import IntentNode  # noqa: E402
from crdt.keys import verify_signature  # noqa: E402
from crdt.messages import SyncUpdate  # noqa: E402
from crdt.store import MemoryStore, SqliteStore  # noqa: E402
from crdt.sync import SyncConfig  # noqa: E402
from bench_helpers import best_us  # noqa: E402
from crdt_helpers import PUBLISHER, Pump, key, make_nodes, manifest, trust_for  # noqa: E402


def bytes_per_registry_update() -> None:
    n = make_nodes(1)["n000"]
    sizes = []
    for i in range(100):
        n.publish(manifest("mod", f"1.{i}.0"), PUBLISHER, float(i))
        sizes.append(len(n.sync._queue[-1].update))
    print(f"registry update size: mean {sum(sizes)/len(sizes):.0f} B, max {max(sizes)} B")


def anti_entropy_idle() -> None:
    nodes = make_nodes(2)
    a = nodes["n000"]
    for i in range(200):
        a.publish(manifest("mod", f"1.{i}.0"), PUBLISHER, float(i))
    p = Pump(nodes, 1)
    for _ in range(5):
        p.step(2.0)
    before = sum(x.counters.bytes_sent for x in nodes.values())
    rounds_before = sum(x.counters.anti_entropy_rounds for x in nodes.values())
    for _ in range(50):
        p.step(2.0)
    b = sum(x.counters.bytes_sent for x in nodes.values()) - before
    r = sum(x.counters.anti_entropy_rounds for x in nodes.values()) - rounds_before
    print(f"idle anti-entropy: {b / max(r, 1):.1f} payload bytes per round (one state digest), doc {len(a.doc.diff())} B")


def idle_round_vs_writers(counts: tuple[int, ...] = (2, 100, 1000)) -> None:
    """Payload bytes of one idle anti-entropy round as the number of Yjs clients that wrote grows."""
    from crdt.messages import SyncDigest, SyncStep1, SyncStep2

    for w in counts:
        nodes = make_nodes(w)
        hub = nodes["n000"]
        for name, node in sorted(nodes.items()):
            node.set_placement([], 1.0)
            if node is not hub:
                hub.doc.apply_update(node.doc.diff(), 1.0)
        peer = make_nodes(1, seed=9)["n000"]
        peer.doc.apply_update(hub.doc.diff(), 1.0)
        sv = hub.doc.state_vector()
        today = len(SyncStep1(sv).state_vector) + len(SyncStep2(b"", peer.doc.state_vector()).state_vector)
        new = len(SyncDigest(hub.sync.state_digest()).digest)
        same = hub.sync.state_digest() == peer.sync.state_digest()
        print(f"idle anti-entropy round, {w} writers: {today} B (SyncStep1 + SyncStep2 state vectors, before) "
              f"vs {new} B (one SyncDigest, now; digests equal: {same})")


def durable_append() -> None:
    with tempfile.TemporaryDirectory() as d:
        n = IntentNode("n000", key("node:n000"), trust_for(["n000"]), random.Random(0), store=SqliteStore(d), compact_after_rows=10**9)
        t = time.perf_counter()
        count = 300
        for i in range(count):
            n.set("app", f"k{i % 50}", b"v" * 100)
        dt = time.perf_counter() - t
        print(f"durable KV write (sign + CRDT + sqlite FULL fsync): {count / dt:.0f} writes/s")
        t = time.perf_counter()
        n.maybe_compact() if False else n.store.compact(n.doc.diff())
        print(f"compaction of {count} rows: {(time.perf_counter() - t) * 1000:.1f} ms")


def doc_size_after_updates() -> None:
    n = make_nodes(1)["n000"]
    t = time.perf_counter()
    for i in range(10_000):
        n.set("app", f"k{i % 100}", i.to_bytes(4, "big") * 4)
    dt = time.perf_counter() - t
    print(f"10,000 KV updates over 100 keys: encoded doc {len(n.doc.diff())} B ({dt:.1f} s, {10_000 / dt:.0f} writes/s)")


def spread(nn: int = 100) -> None:
    """Hops for one update to reach every node by push and forwarding alone (anti-entropy off)."""
    cfg = SyncConfig(anti_entropy_interval=1e9)
    nodes = make_nodes(nn, config=cfg)
    p = Pump(nodes, 5)
    p.step(0.05)  # everyone learns the live peers
    sent0 = sum(x.counters.messages_sent for x in nodes.values())
    ack = nodes["n000"].publish(manifest(), PUBLISHER, p.now)
    reached: list[int] = []
    while not all(x.has_write(ack.signer, ack.seq) for x in nodes.values()) and len(reached) < 3 * cfg.relay_ttl:
        p.step(0.05)  # one Pump step = one hop: a node forwards from its next tick
        reached.append(sum(x.has_write(ack.signer, ack.seq) for x in nodes.values()))
    msgs = sum(x.counters.messages_sent for x in nodes.values()) - sent0
    print(f"one update to N={nn} by push + forwarding alone: nodes holding it after each hop {reached}; "
          f"{msgs} messages (pushes + acks), {msgs / nn:.1f} per node")


def write_and_apply_cost(sizes: tuple[int, ...] = (100, 10_000), m: int = 1000) -> None:
    """Local KV write (MemoryStore: no fsync) and remote apply per record, against raw pycrdt."""
    value = b"v" * 32
    for size in sizes:
        names = ["n000", "n001", "n002"]
        trust = trust_for(names)
        a = IntentNode("n000", key("node:n000"), trust, random.Random(0), store=MemoryStore(), compact_after_rows=10**9)
        for i in range(size):
            a.set("app", f"k{i:05d}", value)
        prefill = a.doc.diff()
        # Raw baseline: a map of `size` keys, overwritten with values of a record's size.
        slot = next(iter(a.doc._maps["kv/app"].keys()))
        rec_len = len(bytes(a.doc._maps["kv/app"][slot]))
        raw: Doc = Doc()
        rm = raw.get("m", type=Map)
        for i in range(size):
            rm[f"k{i:05d}"] = b"r" * rec_len
        seq = iter(range(10**9))

        def raw_writes() -> None:
            for _ in range(m):
                i = next(seq)
                rm[f"k{i % size:05d}"] = bytes([i % 256]) * rec_len

        def node_writes() -> None:
            for _ in range(m):
                i = next(seq)
                a.set("app", f"k{i % size:05d}", bytes([i % 256]) * 32)

        base_w = best_us(raw_writes, m)
        mark = len(a.sync._queue)
        ours_w = best_us(node_writes, m)
        updates = [q.update for q in a.sync._queue[mark:]]
        msg = b"x" * 200
        sig = a.node_key.sign(msg)
        sign_us = best_us(lambda: [a.node_key.sign(msg) for _ in range(m)], m)
        verify_us = best_us(lambda: [verify_signature(a.node_key.public_raw, sig, msg) for _ in range(m)], m)
        print(f"KV write, namespace of {size:,} keys: {ours_w:.1f} µs per write (sign + CRDT + view + usage, no fsync) "
              f"vs raw pycrdt map write {base_w:.1f} µs = {ours_w / base_w:.0f}x; Ed25519 sign alone {sign_us:.1f} µs")

        # Remote apply: receivers that already hold the prefilled namespace.
        def receiver(name: str, seed: int) -> IntentNode:
            r = IntentNode(name, key("node:" + name), trust, random.Random(seed), store=MemoryStore(), compact_after_rows=10**9)
            r.doc.apply_update(prefill, 0.0)
            return r

        rdoc: Doc = Doc()
        rdoc.apply_update(prefill)

        def raw_apply() -> None:
            for u in updates:
                rdoc.apply_update(u)

        base_a = best_us(raw_apply, len(updates), repeats=1)
        fresh = receiver("n001", 1)
        fresh_us = best_us(lambda: [fresh.receive("n000", SyncUpdate(u, 0, 0), 1.0) for u in updates], len(updates), repeats=1)
        cached = receiver("n002", 2)
        cached.doc.verified = fresh.doc.verified  # every record of `updates` verified once already
        hits0, misses0 = cached.doc.verified.hits, cached.doc.verified.misses
        cached_us = best_us(lambda: [cached.receive("n000", SyncUpdate(u, 0, 0), 1.0) for u in updates], len(updates), repeats=1)
        hits, misses = cached.doc.verified.hits - hits0, cached.doc.verified.misses - misses0
        print(f"remote apply per record, namespace of {size:,} keys: {fresh_us:.1f} µs first time (one Ed25519 verify, "
              f"{verify_us:.1f} µs alone), {cached_us:.1f} µs with the verification cached, vs raw pycrdt "
              f"apply_update {base_a:.1f} µs = {fresh_us / base_a:.0f}x / {cached_us / base_a:.0f}x "
              f"(cache: {hits} hits, {misses} misses)")


if __name__ == "__main__":
    t0 = time.perf_counter()
    if "--cost-only" in sys.argv:
        write_and_apply_cost()
        print(f"total {time.perf_counter() - t0:.1f} s")
        sys.exit(0)
    write_and_apply_cost()
    idle_round_vs_writers()
    bytes_per_registry_update()
    anti_entropy_idle()
    durable_append()
    doc_size_after_updates()
    spread()
    print(f"total {time.perf_counter() - t0:.1f} s")
