"""Persist effects vs inline commits: how long the node's loop is blocked per write, and
how many durable writes per second batching fsyncs gives (printed, never asserted).

    python bench/bench_persist.py [--writes 400]

Baseline (measured in the same run, same writes): ``IntentNode`` over ``SqliteStore``,
today's inline path — every write commits (and fsyncs, ``synchronous=FULL``) on the
caller's thread before it returns its ``WriteAck``.

Variant: ``IntentNode`` over ``EffectStore``; the loop only applies the write and queues
an effect; a worker performs ``SqliteStore.run`` on batches of B effects (one transaction,
one fsync each) and the loop then calls ``persisted``. Printed per B: loop time per write
(what would block a trio loop), worker time per write, durable writes per second
(writes / (loop + worker) time, i.e. one worker, no overlap: a lower bound), and the ratio
of each against the baseline.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import pathlib
import random
import statistics
import sys
import tempfile
import time

import structlog

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))

from crdt.intent import IntentNode  # noqa: E402
from crdt.keys import SigningKey  # noqa: E402
from crdt.store import EffectStore, SqliteStore  # noqa: E402
from crdt.trust import TrustConfig  # noqa: E402


def _node(store: object) -> IntentNode:
    key = SigningKey.from_seed(hashlib.sha256(b"bench-persist").digest())
    trust = TrustConfig()
    trust.admit_node("n000", key.public_raw)
    return IntentNode("n000", key, trust, random.Random(0), store=store, compact_after_rows=10**9)  # type: ignore[arg-type]


def inline(writes: int) -> float:
    """Seconds per write with inline commits (loop time = total time)."""
    with tempfile.TemporaryDirectory() as d:
        store = SqliteStore(d)
        node = _node(store)
        t0 = time.perf_counter()
        for i in range(writes):
            node.set("app", f"k{i}", b"v" * 64)
        dt = time.perf_counter() - t0
        store.close()
    return dt / writes


def effects(writes: int, batch: int) -> tuple[float, float]:
    """(loop seconds per write, worker seconds per write) with batches of ``batch`` effects."""
    with tempfile.TemporaryDirectory() as d:
        disk = SqliteStore(d)
        node = _node(EffectStore.over(disk))
        disk.run(node.take_effects())  # the boot epoch
        loop = work = 0.0
        done = 0
        while done < writes:
            t0 = time.perf_counter()
            n = min(batch, writes - done)
            for i in range(done, done + n):
                node.set("app", f"k{i}", b"v" * 64)
            batch_fx = node.take_effects()
            t1 = time.perf_counter()
            disk.run(batch_fx)  # the worker thread's part
            t2 = time.perf_counter()
            acks = node.persisted(batch_fx[-1].token, 0.0)
            t3 = time.perf_counter()
            assert len(acks) == n
            loop += (t1 - t0) + (t3 - t2)
            work += t2 - t1
            done += n
        disk.close()
    return loop / writes, work / writes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--writes", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    w = args.writes
    print(f"{w} KV writes of 64 B, {args.repeat} runs each; median (min-max); tmp dir on {tempfile.gettempdir()} ({os.uname().sysname})")
    base = [inline(w) for _ in range(args.repeat)]
    b = statistics.median(base)
    print(f"baseline inline commit: loop {b * 1e3:.3f} ms/write ({min(base) * 1e3:.3f}-{max(base) * 1e3:.3f}), {1 / b:.0f} durable writes/s")
    for batch in (1, 16, 128):
        runs = [effects(w, batch) for _ in range(args.repeat)]
        lo = statistics.median(r[0] for r in runs)
        wk = statistics.median(r[1] for r in runs)
        rate = 1 / (lo + wk)
        print(
            f"effects, batch {batch:>3}: loop {lo * 1e3:.3f} ms/write ({lo / b:.2f}x baseline), "
            f"worker {wk * 1e3:.3f} ms/write, {rate:.0f} durable writes/s ({rate * b:.2f}x baseline)"
        )


if __name__ == "__main__":
    main()
