"""SignedLog benchmarks: prints figures (never asserts). Run: python bench/bench_signedlog.py

Each figure is printed next to a baseline doing the same job in the same run: the current
pycrdt intent path (``IntentNode.set`` for a local KV write, ``IntentNode.receive`` of the
``SyncUpdate`` carrying the same write for a remote apply) and one raw Ed25519 verification.
CPU time of this process, best of 3 (the machine is shared).
"""

from __future__ import annotations

import logging
import os
import random
import sys
import time

import structlog

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "crdt"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))

from crdt.intent import IntentNode  # noqa: E402
from crdt.keys import verify_signature  # noqa: E402
from crdt.messages import SyncUpdate  # noqa: E402
from crdt.store import MemoryStore  # noqa: E402
from bench_helpers import best_us  # noqa: E402
from crdt_helpers import key, trust_for  # noqa: E402
from log_helpers import NOW, new_log, node_key  # noqa: E402


def write_and_add_cost(sizes: tuple[int, ...] = (100, 10_000), m: int = 1000) -> None:
    """Local write and remote add per record, SignedLog vs the pycrdt intent path, same values."""
    value = b"v" * 32
    writer = node_key("n0")
    for size in sizes:
        log = new_log()
        for i in range(size):
            log.append(writer, "kv", f"app/k{i:05d}", {"v": value}, NOW)
        node = IntentNode("n000", key("node:n000"), trust_for(["n000", "n001"]), random.Random(0), store=MemoryStore(), compact_after_rows=10**9)
        for i in range(size):
            node.set("app", f"k{i:05d}", value)
        prefill_log, prefill_doc = log.export(), node.doc.diff()
        ctr = iter(range(10**9))

        def log_writes() -> None:
            for _ in range(m):
                i = next(ctr)
                log.append(writer, "kv", f"app/k{i % size:05d}", {"v": bytes([i % 256]) * 32}, NOW)

        def node_writes() -> None:
            for _ in range(m):
                i = next(ctr)
                node.set("app", f"k{i % size:05d}", bytes([i % 256]) * 32)

        mark_log, mark_doc = len(log.export()), len(node.sync._queue)
        ours_w = best_us(log_writes, m)
        base_w = best_us(node_writes, m)
        new_recs = log.export()[mark_log:]
        updates = [q.update for q in node.sync._queue[mark_doc:]]

        recv = new_log()
        recv.load(prefill_log, NOW)
        ours_a = best_us(lambda: [recv.add(r, NOW) for r in new_recs], len(new_recs), repeats=1)
        recv2 = new_log()
        recv2.load(prefill_log, NOW)
        recv2._verified = recv._verified  # every record verified once already
        cached_a = best_us(lambda: [recv2.add(r, NOW) for r in new_recs], len(new_recs), repeats=1)
        dup_a = best_us(lambda: [recv.add(r, NOW) for r in new_recs], len(new_recs), repeats=1)
        other = IntentNode("n001", key("node:n001"), node.doc.trust, random.Random(1), store=MemoryStore(), compact_after_rows=10**9)
        other.doc.apply_update(prefill_doc, 0.0)
        base_a = best_us(lambda: [other.receive("n000", SyncUpdate(u, 0, 0), 1.0) for u in updates], len(updates), repeats=1)
        msg = b"x" * 200
        sig = writer.sign(msg)
        verify_us = best_us(lambda: [verify_signature(writer.public_raw, sig, msg) for _ in range(m)], m)
        t = time.process_time()
        view = recv.view("kv")
        view_ms = (time.process_time() - t) * 1e3
        print(
            f"{size:>6,} keys: local write {ours_w:.1f} µs (pycrdt IntentNode.set {base_w:.1f} µs, ratio {ours_w / base_w:.2f}); "
            f"remote add {ours_a:.1f} µs first time, {cached_a:.1f} µs verification cached, {dup_a:.1f} µs duplicate "
            f"(pycrdt receive {base_a:.1f} µs, ratio {ours_a / base_a:.2f}; one Ed25519 verify {verify_us:.1f} µs); "
            f"full view() of {len(view):,} slots {view_ms:.1f} ms"
        )


def heads_cost(signers: int = 1000) -> None:
    """Heads digest and an in-sync missing_from over ``signers`` chains (baseline: none; absolute)."""
    log = new_log()
    keys = [key(f"bench-signer-{i}") for i in range(signers)]
    for i, k in enumerate(keys):
        log.trust.trust.admit_node(f"b{i}", k.public_raw)  # type: ignore[attr-defined]
        log.append(k, "kv", f"app/s{i}", {"v": b"x"}, NOW)
    h = log.heads()
    d_us = best_us(lambda: [log.heads_digest() for _ in range(10)], 10)
    m_us = best_us(lambda: [log.missing_from(h) for _ in range(10)], 10)
    print(f"{signers} signers: heads()+digest {d_us / 1000:.2f} ms, missing_from(equal heads) {m_us / 1000:.2f} ms")


if __name__ == "__main__":
    t0 = time.perf_counter()
    write_and_add_cost()
    heads_cost()
    print(f"total {time.perf_counter() - t0:.1f} s")
