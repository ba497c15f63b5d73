"""SyncCore: sans-IO replication of one node's IntentDoc.

* **Eager push**: each local update goes to ``fanout`` random live peers; a peer that learns
  something new relays it (``ttl`` hops) to ``fanout`` others — rumour mongering.
* **Anti-entropy**: every ``anti_entropy_interval`` (jittered) one random live peer gets our
  state vector (Yjs sync step 1) and answers with exactly what we lack plus its own state
  vector (step 2); we then send what *it* lacks. When nothing changed both messages carry
  only state vectors.
* **Chunking**: a message whose encoding exceeds ``chunk_size`` travels as SyncChunk pieces,
  reassembled into bounded buffers that expire.
* **Backpressure**: eager pushes count against a per-peer budget of unacknowledged bytes; when
  it is full, the push to that peer is dropped (counted) and anti-entropy repairs later.
* **Stream lifecycle** (driver input, :meth:`SyncCore.stream_event`): a peer whose stream
  failed to connect, timed out or closed releases its push budget (those acks will never
  come) and, if it was the anti-entropy partner, another peer is tried at once; a peer the
  driver reports backpressured gets no eager pushes (the fanout picks others) and is not
  chosen for anti-entropy until it drains or ``ack_timeout`` passes.

The core is fed ``(now, message)`` and returns ``[(dst, message)]``; it never reads a clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import msgpack
import structlog

from crdt.documents import IntentDoc
from crdt.errors import ValidationError
from crdt.messages import MAX_CHUNKS, MAX_UPDATE, SyncAck, SyncChunk, SyncStep1, SyncStep2, SyncUpdate
from crdt.metrics import Counters
from crdt.store import UpdateStore

Outgoing = tuple[str, Any]


@dataclass(slots=True, frozen=True)
class SyncConfig:
    """Timers and bounds; defaults suit a LAN of up to a few thousand nodes."""

    fanout: int = 3
    relay_ttl: int = 4  # 3^4 = 81 first-wave receivers; anti-entropy covers the rest
    anti_entropy_interval: float = 2.0
    anti_entropy_jitter: float = 0.25  # ± fraction of the interval
    chunk_size: int = 60_000  # payload bytes per frame (Noise frames carry <= 65535)
    max_outstanding_bytes: int = 1024 * 1024  # unacknowledged eager-push bytes per peer
    ack_timeout: float = 10.0
    reassembly_timeout: float = 30.0
    max_reassembly_bytes_per_peer: int = 16 * 1024 * 1024
    max_reassemblies: int = 64


def decode_state_vector(sv: bytes) -> dict[int, int]:
    """Parse a Yjs v1 state vector (varuint count, then varuint client/clock pairs)."""
    pos = 0

    def varuint() -> int:
        nonlocal pos
        n = shift = 0
        while True:
            if pos >= len(sv) or shift > 63:
                raise ValidationError("truncated or oversized varuint in state vector")
            b = sv[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            if b < 0x80:
                return n
            shift += 7

    count = varuint()
    if count > 1_000_000:
        raise ValidationError("state vector lists too many clients")
    out = {}
    for _ in range(count):
        client = varuint()
        out[client] = varuint()
    if pos != len(sv):
        raise ValidationError("trailing bytes after state vector")
    return out


def lacks(remote: dict[int, int], local: dict[int, int]) -> bool:
    """True if a replica at ``remote`` misses something a replica at ``local`` has."""
    return any(clock > remote.get(client, 0) for client, clock in local.items())


@dataclass(slots=True)
class _Reassembly:
    count: int
    total: int
    deadline: float
    parts: dict[int, bytes] = field(default_factory=dict)
    size: int = 0


@dataclass(slots=True)
class _Queued:
    update: bytes
    ttl: int
    exclude: str | None
    since: float


class SyncCore:
    """Replication protocol state of one node."""

    def __init__(
        self,
        node_id: str,
        doc: IntentDoc,
        rng: random.Random,
        config: SyncConfig = SyncConfig(),
        store: UpdateStore | None = None,
        counters: Counters | None = None,
    ) -> None:
        self.node_id = node_id
        self.doc = doc
        self.rng = rng
        self.config = config
        self.store = store
        self.counters = counters if counters is not None else doc.counters
        self.log = structlog.get_logger("crdt.sync").bind(node_id=node_id)
        self._live: list[str] = []
        self._queue: list[_Queued] = []
        self._next_ae = 0.0  # first tick syncs at once: a (re)started node catches up fast
        self._push_id = 0
        self._transfer_id = 0
        self._outstanding: dict[str, dict[int, tuple[int, float]]] = {}
        self._reasm: dict[tuple[str, int], _Reassembly] = {}
        self._congested: dict[str, float] = {}  # peer -> until when the driver said it is backpressured
        self._ae_peer: str | None = None  # anti-entropy partner whose answer is still due
        self._ae_avoid: set[str] = set()  # peers whose stream just failed: skipped by the retry

    def stream_event(self, peer: str, kind: str, now: float) -> None:
        """Driver input: ``kind`` is connect_failed, timed_out, closed, backpressure or drained."""
        if kind == "backpressure":
            self._congested[peer] = now + self.config.ack_timeout
            self.counters.sync_backpressure_events += 1
            return
        if kind == "drained":
            self._congested.pop(peer, None)
            return
        # The stream is gone: acks for pushes on it cannot arrive, release the budget now.
        self._outstanding.pop(peer, None)
        if kind in ("connect_failed", "timed_out"):
            self.counters.sync_stream_failures += 1
            if self._ae_peer == peer:
                self._ae_peer = None
                self._ae_avoid.add(peer)
                self._next_ae = now  # retry anti-entropy with another peer on the next tick
                self.counters.anti_entropy_retries += 1

    def _usable(self, peers: list[str], now: float) -> list[str]:
        """``peers`` minus the backpressured ones (expired entries are dropped)."""
        if not self._congested:
            return peers
        for p in [p for p, until in self._congested.items() if until <= now]:
            del self._congested[p]
        return [p for p in peers if p not in self._congested]

    # --- the node-facing surface -------------------------------------------------------

    def local_update(self, update: bytes, now: float) -> None:
        """Queue a durably stored local update for eager push at the next tick."""
        self._queue.append(_Queued(update, self.config.relay_ttl, None, now))

    def outstanding_bytes(self, peer: str) -> int:
        return sum(n for n, _ in self._outstanding.get(peer, {}).values())

    def next_deadline(self) -> float | None:
        """When ``tick`` next has work: queued pushes, anti-entropy, expiries."""
        times = [self._next_ae]
        if self._queue:
            times.append(min(q.since for q in self._queue))
        for pushes in self._outstanding.values():
            times.extend(d for _, d in pushes.values())
        times.extend(r.deadline for r in self._reasm.values())
        return min(times)

    def tick(self, now: float, live_peers: list[str]) -> list[Outgoing]:
        """Timers: flush eager pushes, run anti-entropy, expire acks and reassemblies."""
        self._live = sorted(p for p in live_peers if p != self.node_id)
        out: list[Outgoing] = []
        for peer in sorted(self._outstanding):
            pushes = self._outstanding[peer]
            for pid in sorted(pushes):
                if pushes[pid][1] <= now:
                    del pushes[pid]  # lost or slow: release the budget, anti-entropy repairs
            if not pushes:
                del self._outstanding[peer]
        for key in sorted(self._reasm):
            if self._reasm[key].deadline <= now:
                del self._reasm[key]
                self.counters.reassembly_dropped += 1
        queue, self._queue = self._queue, []
        for q in queue:
            out += self._push(q.update, q.ttl, q.exclude, now)
        if now >= self._next_ae:
            cfg = self.config
            self._next_ae = now + cfg.anti_entropy_interval * (1 + cfg.anti_entropy_jitter * (2 * self.rng.random() - 1))
            candidates = self._usable(self._live, now)
            if self._ae_avoid:
                candidates = [p for p in candidates if p not in self._ae_avoid]
                self._ae_avoid.clear()
            if candidates:
                peer = self.rng.choice(candidates)
                self._ae_peer = peer
                self.counters.anti_entropy_rounds += 1
                out += self._send(peer, SyncStep1(self.doc.state_vector()))
        return out

    def receive(self, src: str, msg: Any, now: float) -> list[Outgoing]:
        """Handle one message from ``src``; malformed content is counted, never raised."""
        self.counters.messages_received += 1
        if isinstance(msg, SyncChunk):
            return self._on_chunk(src, msg, now)
        if isinstance(msg, SyncStep1):
            self.counters.bytes_received += len(msg.state_vector)
            try:
                remote = decode_state_vector(msg.state_vector)
            except ValidationError:
                self.counters.updates_malformed += 1
                return []
            mine = self.doc.state_vector()
            diff = self.doc.diff(msg.state_vector) if lacks(remote, decode_state_vector(mine)) else b""
            return self._send(src, SyncStep2(diff, mine))
        if isinstance(msg, SyncStep2):
            if src == self._ae_peer:
                self._ae_peer = None
            self.counters.bytes_received += len(msg.update) + len(msg.state_vector)
            if msg.update:
                self._apply(src, msg.update, now)
            try:
                remote = decode_state_vector(msg.state_vector)
            except ValidationError:
                self.counters.updates_malformed += 1
                return []
            if lacks(remote, decode_state_vector(self.doc.state_vector())):
                return self._send(src, SyncUpdate(self.doc.diff(msg.state_vector), 0, 0))
            return []
        if isinstance(msg, SyncUpdate):
            self.counters.bytes_received += len(msg.update)
            out: list[Outgoing] = []
            if msg.push_id:
                out += self._send(src, SyncAck(msg.push_id))
            if self._apply(src, msg.update, now) and msg.ttl > 0:
                self.counters.relays += 1
                out += self._push(msg.update, msg.ttl - 1, src, now)
            return out
        if isinstance(msg, SyncAck):
            pushes = self._outstanding.get(src)
            if pushes is not None:
                pushes.pop(msg.push_id, None)
                if not pushes:
                    del self._outstanding[src]
            return []
        return []

    # --- internals -------------------------------------------------------------------

    def _apply(self, src: str, update: bytes, now: float) -> bool:
        try:
            changed = self.doc.apply_update(update, now)
        except ValidationError:
            self.log.warning("crdt_update_rejected", src=src, size=len(update))
            return False
        if changed and self.store is not None:
            self.store.append(update)
        return changed

    def _push(self, update: bytes, ttl: int, exclude: str | None, now: float) -> list[Outgoing]:
        peers = [p for p in self._usable(self._live, now) if p != exclude]
        if not peers:
            return []
        chosen = sorted(self.rng.sample(peers, min(self.config.fanout, len(peers))))
        out: list[Outgoing] = []
        size = len(update)
        for peer in chosen:
            if self.outstanding_bytes(peer) + size > self.config.max_outstanding_bytes:
                self.counters.eager_dropped_backpressure += 1
                self.log.debug("crdt_push_dropped_backpressure", peer=peer, size=size)
                continue
            self._push_id += 1
            self._outstanding.setdefault(peer, {})[self._push_id] = (size, now + self.config.ack_timeout)
            self.counters.eager_pushes += 1
            out += self._send(peer, SyncUpdate(update, self._push_id, ttl))
        return out

    def _send(self, dst: str, msg: Any) -> list[Outgoing]:
        big = getattr(msg, "update", b"")
        if len(big) <= self.config.chunk_size:
            self.counters.messages_sent += 1
            self.counters.bytes_sent += len(big) + len(getattr(msg, "state_vector", b""))
            return [(dst, msg)]
        blob = msgpack.packb([msg.TYPE, msg.to_payload()], use_bin_type=True)
        n = self.config.chunk_size
        count = (len(blob) + n - 1) // n
        self._transfer_id += 1
        out: list[Outgoing] = []
        for i in range(count):
            part = blob[i * n : (i + 1) * n]
            out.append((dst, SyncChunk(self._transfer_id, i, count, len(blob), part)))
            self.counters.bytes_sent += len(part)
        self.counters.messages_sent += count
        self.counters.chunks_sent += count
        return out

    def _on_chunk(self, src: str, c: SyncChunk, now: float) -> list[Outgoing]:
        self.counters.chunks_received += 1
        self.counters.bytes_received += len(c.data)
        key = (src, c.transfer_id)
        r = self._reasm.get(key)
        cfg = self.config
        if r is None:
            held = sum(x.size for (s, _), x in self._reasm.items() if s == src)
            if (
                len(self._reasm) >= cfg.max_reassemblies
                or c.total_size > MAX_UPDATE + 1024
                or c.count > MAX_CHUNKS
                or held + c.total_size > cfg.max_reassembly_bytes_per_peer
            ):
                self.counters.reassembly_dropped += 1
                return []
            r = self._reasm[key] = _Reassembly(c.count, c.total_size, now + cfg.reassembly_timeout)
        if c.count != r.count or c.total_size != r.total or r.size + len(c.data) > r.total:
            del self._reasm[key]
            self.counters.reassembly_dropped += 1
            return []
        if c.index not in r.parts:
            r.parts[c.index] = c.data
            r.size += len(c.data)
        if len(r.parts) < r.count:
            return []
        del self._reasm[key]
        blob = b"".join(r.parts[i] for i in range(r.count))
        try:
            if len(blob) != r.total:
                raise ValueError("reassembled size mismatch")
            obj = msgpack.unpackb(blob, raw=False, strict_map_key=True, max_ext_len=0)
            if not isinstance(obj, list) or len(obj) != 2:
                raise ValueError("not a [type, payload] pair")
            cls = {SyncStep2.TYPE: SyncStep2, SyncUpdate.TYPE: SyncUpdate}[obj[0]]
            inner = cls.from_payload(obj[1])
        except Exception:
            self.counters.updates_malformed += 1
            self.log.warning("crdt_chunked_message_rejected", src=src, size=len(blob))
            return []
        self.counters.messages_received -= 1  # the inner message counts once
        return self.receive(src, inner, now)
