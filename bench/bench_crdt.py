"""Intent (signed record log) benchmarks: prints figures and ratios, never asserts.

Run: python bench/bench_crdt.py [--quick]   (--quick: namespaces of 100 keys only, fewer writes)

Every figure is printed next to a baseline measured in the same run (CPU time of this process,
best of 3 batches, since the machine is shared):

* **local write**: ``IntentNode.set`` (KV limits, next chain position, record signed, added to
  the log and the typed view, KV usage, stored in a ``MemoryStore`` or queued in an
  ``EffectStore``, queued for push) into a namespace already holding N keys, vs. the same
  essential work done raw: msgpack of the same signing bytes, one Ed25519 sign with
  ``cryptography``, SHA-256 of the signed bytes (the record id), msgpack of the record.
  The baseline is checked to produce byte-identical signed bytes.
* **remote apply**: ``IntentDoc.add`` of a record from a peer, new to the receiver and never
  verified there (decode, trust and role check, Ed25519 verify, schema, chain, view), vs. (a) raw
  Ed25519 verify + SHA-256 of the signed bytes and (b) that plus msgpack-decoding the record and
  re-encoding its signed bytes. A duplicate add is printed too.
* **idle heads anti-entropy**: message bytes (msgpack envelopes, before Noise framing) per
  idle round between two nodes in sync holding records of W signers, vs. the full heads
  exchange the same state costs when digests differ (what an anti-entropy without the digest
  would send every round).
* **bytes per update**: encoded record of a registry publish and of a 32-byte KV write, and the
  ``RecordPush`` that carries it to one peer, vs. the canonical msgpack of the payload alone (what
  an unsigned, unchained replication would ship).
* **heads digest**: ``SignedLog.heads_digest`` over W signers vs. BLAKE2b of the same heads
  already packed (the cost of collecting them from the log).
* **durable append**: ``IntentNode.set`` over ``SqliteStore`` (WAL, synchronous=FULL, one
  commit per write) vs. raw sqlite3 with the same pragmas committing the same record bytes one
  row per transaction, in wall time (the fsync dominates), same disk.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import sqlite3
import sys
import tempfile
import time
from typing import Any

import msgpack
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "crdt"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))

from crdt.documents import IntentDoc  # noqa: E402
from crdt.intent import IntentNode  # noqa: E402
from crdt.logrecord import LOG_DOMAIN, LOG_VERSION, LogRecord  # noqa: E402
from crdt.store import EffectStore, MemoryStore, SqliteStore  # noqa: E402
from crdt.trust import TrustConfig  # noqa: E402
from bench_helpers import best_us  # noqa: E402
from crdt_helpers import PUBLISHER, Pump, key, manifest, share, trust_for  # noqa: E402

WALL = 4e9  # receivers' wall clock (s): every record written here is in its past
NS = "app"


def _seed(name: str) -> bytes:
    """The seed crdt_helpers.key derives the node key from, for the raw cryptography key."""
    return hashlib.sha256(name.encode()).digest()


def _wire(msg: Any) -> int:
    """Bytes of one sync message as the envelope ``[TYPE, payload]`` (before Noise framing)."""
    return len(msgpack.packb([msg.TYPE, msg.to_payload()], use_bin_type=True))


def _node(name: str, trust: TrustConfig, store: Any) -> IntentNode:
    return IntentNode(name, key("node:" + name), trust, random.Random(0), store=store, compact_after_rows=10**9)


def _records(node: IntentNode, since: int) -> list[bytes]:
    """Encoded records the node queued for push since queue index ``since`` (its own writes, in order)."""
    return [r for q in node.sync._queue[since:] for r in q.records]


def write_and_apply_cost(sizes: tuple[int, ...], m: int) -> None:
    names = ["n000", "n001"]
    trust = trust_for(names)
    sk = Ed25519PrivateKey.from_private_bytes(_seed("node:n000"))
    pk: Ed25519PublicKey = sk.public_key()
    for size in sizes:
        a = _node("n000", trust, MemoryStore())
        for i in range(size):
            a.set(NS, f"k{i:05d}", b"v" * 32)
        prefill = _records(a, 0)
        ctr = iter(range(10**9))

        def node_writes(node: IntentNode = a) -> None:
            for _ in range(m):
                i = next(ctr)
                node.set(NS, f"k{i % size:05d}", bytes([i % 256]) * 32)

        mark = len(a.sync._queue)
        ours_w = best_us(node_writes, m)
        new = _records(a, mark)  # 3 batches of m records, in chain order

        # Raw baseline: the same fields (continuing a chain of its own), encoded, signed, hashed.
        last = LogRecord.decode(new[-1])
        raw_state = {"seq": last.seq, "prev": last.id, "wall": last.wall_ms}
        raw_out: list[bytes] = []

        def raw_writes() -> None:
            signer = last.signer
            for _ in range(m):
                i = next(ctr)
                seq, prev, wall = raw_state["seq"] + 1, raw_state["prev"], raw_state["wall"] + 1
                payload = {"v": bytes([i % 256]) * 32}
                slot = f"{NS}/k{i % size:05d}"
                msg = msgpack.packb([LOG_DOMAIN, signer, seq, prev, "kv", slot, False, payload, wall], use_bin_type=True)
                sig = sk.sign(msg)
                rid = hashlib.sha256(msg).digest()
                raw_out.append(msgpack.packb([LOG_VERSION, signer, seq, prev, "kv", slot, False, payload, wall, sig], use_bin_type=True))
                raw_state.update(seq=seq, prev=rid, wall=wall)

        base_w = best_us(raw_writes, m)
        same_bytes = msgpack.packb([LOG_DOMAIN, last.signer, last.seq, last.prev, "kv", last.key, False, last.payload, last.wall_ms],
                                   use_bin_type=True) == last.message()
        eff = _node("n000", trust, EffectStore())
        for i in range(size):
            eff.set(NS, f"k{i:05d}", b"v" * 32)
        eff_w = best_us(lambda: node_writes(eff), m)
        print(f"local KV write, namespace of {size:,} keys: {ours_w:.1f} µs (MemoryStore), {eff_w:.1f} µs (EffectStore) "
              f"vs raw encode + Ed25519 sign + sha256 {base_w:.1f} µs = {ours_w / base_w:.2f}x / {eff_w / base_w:.2f}x "
              f"(raw signed bytes identical: {same_bytes})")

        # Remote apply: a receiver already holding the prefill adds each new record once.
        recv = IntentDoc(trust, node_id="n001")
        for r in prefill:
            recv.add(r, WALL)
        batches = [new[j * m:(j + 1) * m] for j in range(3)]
        times, statuses = [], set()
        for b in batches:
            t = time.process_time()
            for r in b:
                statuses.add(recv.add(r, WALL).status)
            times.append((time.process_time() - t) / len(b) * 1e6)
        ours_a = min(times)
        dup_a = best_us(lambda: [recv.add(r, WALL) for r in batches[0]], m)
        decoded = [LogRecord.decode(r) for r in new[:m]]
        msgs = [(d.signature, d.message()) for d in decoded]

        def raw_verify() -> None:
            for sig, msg in msgs:
                pk.verify(sig, msg)
                hashlib.sha256(msg).digest()

        def raw_decode_verify() -> None:
            for r in new[:m]:
                o = msgpack.unpackb(r, raw=False)
                msg = msgpack.packb([LOG_DOMAIN, *o[1:9]], use_bin_type=True)
                pk.verify(o[9], msg)
                hashlib.sha256(msg).digest()

        base_v = best_us(raw_verify, m)
        base_dv = best_us(raw_decode_verify, m)
        print(f"remote apply (IntentDoc.add, verified-new), namespace of {size:,} keys: {ours_a:.1f} µs "
              f"(statuses {sorted(statuses)}), duplicate {dup_a:.1f} µs; vs raw Ed25519 verify + sha256 {base_v:.1f} µs "
              f"= {ours_a / base_v:.2f}x, vs raw decode + re-encode + verify + sha256 {base_dv:.1f} µs = {ours_a / base_dv:.2f}x")


def idle_anti_entropy(counts: tuple[int, ...], rounds: int = 50) -> None:
    for w in counts:
        writers = [f"w{i:04d}" for i in range(w)]
        trust = trust_for(["n000", "n001"] + writers)
        nodes = {n: IntentNode(n, key("node:" + n), trust, random.Random(f"ae:{n}"), compact_after_rows=10**9) for n in ("n000", "n001")}
        a, b = nodes["n000"], nodes["n001"]
        for i, wr in enumerate(writers):
            a.doc.append(key("node:" + wr), "kv", f"{NS}/{wr}", {"v": b"x" * 32}, 1.0 + i / 1000)
        share(a, b, WALL)
        p = Pump(nodes, 1)
        sent: list[Any] = []
        orig = p.send

        def counting_send(src: str, out: list[tuple[str, Any]]) -> None:
            sent.extend(msg for _, msg in out)
            orig(src, out)

        p.send = counting_send  # type: ignore[method-assign]
        for _ in range(3):
            p.step(2.0)
        sent.clear()
        r0 = sum(x.counters.anti_entropy_rounds for x in nodes.values())
        for _ in range(rounds):
            p.step(2.0)
        r = sum(x.counters.anti_entropy_rounds for x in nodes.values()) - r0
        idle = sum(_wire(msg) for msg in sent)
        kinds = sorted({type(msg).__name__ for msg in sent})
        full = sum(_wire(msg) for msg in a.sync._heads_pages(False)) + sum(_wire(msg) for msg in b.sync._heads_pages(True))
        per = idle / max(r, 1)
        print(f"idle anti-entropy, {w} signers in sync: {per:.1f} B per round ({r} rounds, messages {kinds}) "
              f"vs full heads exchange {full:,} B = {per / full:.4f}x (digests equal: {a.sync.state_digest() == b.sync.state_digest()})")


def bytes_per_update() -> None:
    trust = trust_for(["n000", "n001", "n002", "n003", "n004"])
    a = _node("n000", trust, MemoryStore())
    live = ["n001", "n002", "n003", "n004"]
    for label, write in (
        ("registry publish", lambda i: a.publish(manifest("mod", f"1.{i}.0"), PUBLISHER, float(i))),
        ("KV write of 32 B", lambda i: a.set(NS, f"k{i}", bytes([i % 256]) * 32)),
    ):
        recs, pushes, payloads = [], [], []
        for i in range(50):
            mark = len(a.sync._queue)
            write(i)
            rec = _records(a, mark)[0]
            recs.append(len(rec))
            payloads.append(len(msgpack.packb(LogRecord.decode(rec).payload, use_bin_type=True)))
            out = a.tick(1000.0 + i, live)
            mine = [msg for _, msg in out if type(msg).__name__ == "RecordPush" and rec in msg.records]  # not retries of earlier ones
            pushes += [_wire(msg) for msg in mine]
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        print(f"{label}: record {mean(recs):.0f} B, RecordPush to one peer {mean(pushes):.0f} B "
              f"({len(pushes) / 50:.0f} peers per update) vs payload alone {mean(payloads):.0f} B = {mean(recs) / mean(payloads):.2f}x")


def heads_digest_cost(signers: int = 1000) -> None:
    writers = [f"w{i:04d}" for i in range(signers)]
    doc = IntentDoc(trust_for(writers))
    for i, wr in enumerate(writers):
        doc.append(key("node:" + wr), "kv", f"{NS}/{wr}", {"v": b"x"}, 1.0 + i / 1000)
    log = doc.records
    heads, forks = log.heads(), log.forks()
    packed = msgpack.packb([[[s, heads[s][0], heads[s][1]] for s in sorted(heads)], [[s, forks[s]] for s in sorted(forks)]], use_bin_type=True)
    ours = best_us(lambda: [log.heads_digest() for _ in range(20)], 20)
    base = best_us(lambda: [hashlib.blake2b(packed, digest_size=16).digest() for _ in range(20)], 20)
    same = hashlib.blake2b(packed, digest_size=16).digest() == log.heads_digest()
    print(f"heads digest over {signers} signers: {ours / 1000:.2f} ms vs BLAKE2b of the packed heads {base / 1000:.3f} ms "
          f"= {ours / base:.0f}x (same digest: {same})")


def durable_append(count: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        trust = trust_for(["n000"])
        n = _node("n000", trust, SqliteStore(os.path.join(d, "ours")))
        t = time.perf_counter()
        for i in range(count):
            n.set(NS, f"k{i % 50}", b"v" * 100)
        ours = count / (time.perf_counter() - t)
        rows = n.store.load()[-count:]
        db = sqlite3.connect(os.path.join(d, "raw.sqlite"), isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE log (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
        t = time.perf_counter()
        for r in rows:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO log (data) VALUES (?)", (r,))
            db.execute("COMMIT")
        base = len(rows) / (time.perf_counter() - t)
        db.close()
        n.store.close()
        print(f"durable KV write (IntentNode.set over SqliteStore, {count} writes): {ours:.0f} writes/s vs raw sqlite3 "
              f"insert+commit of the same records {base:.0f} rows/s = {ours / base:.2f}x (wall time)")


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    t0 = time.perf_counter()
    write_and_apply_cost((100,) if quick else (100, 10_000), 200 if quick else 1000)
    idle_anti_entropy((2, 100) if quick else (2, 100, 1000), 10 if quick else 50)
    bytes_per_update()
    heads_digest_cost(100 if quick else 1000)
    durable_append(50 if quick else 300)
    print(f"total {time.perf_counter() - t0:.1f} s")
