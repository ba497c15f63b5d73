"""crdt benchmarks: prints figures (never asserts). Run: python bench/bench_crdt.py"""

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

from crdt.intent import IntentNode  # noqa: E402
from crdt.store import SqliteStore  # noqa: E402
from crdt.sync import SyncConfig  # noqa: E402
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
    print(f"idle anti-entropy: {b / max(r, 1):.1f} payload bytes per round (state vectors only), doc {len(a.doc.diff())} B")


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
    nodes = make_nodes(nn, config=SyncConfig(anti_entropy_interval=1.0))
    p = Pump(nodes, 5)
    p.step(0.05)
    for x in nodes.values():
        x.sync._next_ae = 1e9  # measure eager push + relay alone first
    ack = nodes["n000"].publish(manifest(), PUBLISHER, p.now)
    p.step(0.05)
    eager = sum(x.has_write(ack.signer, ack.seq) for x in nodes.values())
    for x in nodes.values():
        x.sync._next_ae = p.now
    rounds = 0
    while not all(x.has_write(ack.signer, ack.seq) for x in nodes.values()):
        p.step(1.0)
        rounds += 1
    msgs = p.delivered
    print(f"one update to N={nn}: {eager}/{nn} by eager push+relay in one delivery wave; all after {rounds} anti-entropy round(s); {msgs} messages delivered")


if __name__ == "__main__":
    t0 = time.perf_counter()
    bytes_per_registry_update()
    anti_entropy_idle()
    durable_append()
    doc_size_after_updates()
    spread()
    print(f"total {time.perf_counter() - t0:.1f} s")
