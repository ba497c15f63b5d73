"""SyncCore: sans-IO replication of one node's IntentDoc.

* **Eager push with forwarding**: each local update goes to ``fanout`` random live peers and
  to this node's ring successor (the next live node id after its own). Every receiver that
  learns something new (its state vector grew) forwards *what it newly learned* the same way,
  with one hop less (``relay_ttl`` hops at most); a receiver that learned nothing stays quiet,
  which ends the wave. Random targets give log-depth spread; the ring edge reaches the few
  nodes no random choice picked (about ``e^-fanout`` of them) one hop after their predecessor.
* **Anti-entropy**: every ``anti_entropy_interval`` (jittered) one random live peer gets a
  16-byte digest of our state vector (SyncDigest). Equal digests end the round: idle cost per
  node is one small message per interval, whatever the number of nodes or writers. A peer
  whose digest differs answers with its state vector (Yjs sync step 1); we answer with what it
  lacks plus our state vector (step 2); it sends back what *we* lack.
* **Chunking**: a message whose update and state vector exceed ``chunk_size`` travels as
  SyncChunk pieces (each within one stream frame), reassembled into bounded buffers that expire.
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

import hashlib
import math
import random
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

import msgpack
import structlog

from crdt.documents import IntentDoc
from crdt.errors import ValidationError
from crdt.messages import MAX_CHUNK, MAX_CHUNKS, MAX_UPDATE, SyncAck, SyncChunk, SyncDigest, SyncStep1, SyncStep2, SyncUpdate
from crdt.metrics import Counters
from crdt.store import UpdateStore

Outgoing = tuple[str, Any]


@dataclass(slots=True, frozen=True)
class SyncConfig:
    """Timers and bounds; defaults suit a LAN of up to a few thousand nodes."""

    # Random targets of each push and forward: with forwarding by every node that learns
    # something new, about e^-3 ≈ 5 % of nodes are never picked at random; the ring edge
    # reaches them one hop later. Fan-out 4 saves about one hop at N = 1000 for 25 % more bytes.
    fanout: int = 3
    # Bound on forwarding hops. A push-and-forward wave covers N nodes in about
    # log_(fanout+1) N + ln N / fanout rounds (≈ 7 at N = 1000); the margin absorbs ring hops.
    relay_ttl: int = 10
    ring: bool = True  # also push to the ring successor (next live node id after our own)
    # Open anti-entropy with a 16-byte state digest (SyncDigest) instead of the full state
    # vector (SyncStep1), which grows with every Yjs client that ever wrote.
    digest_anti_entropy: bool = True
    anti_entropy_interval: float = 2.0
    anti_entropy_jitter: float = 0.25  # ± fraction of the interval
    # Bytes of update + state vector above which a message travels as SyncChunks, and the data
    # bytes of each chunk; at most MAX_CHUNK, so every frame fits one Noise message (65,535 B).
    chunk_size: int = 60_000
    max_outstanding_bytes: int = 1024 * 1024  # unacknowledged eager-push bytes per peer
    ack_timeout: float = 10.0
    # An eager push not acknowledged after this long is sent once more to the same peer
    # (0: never). A lost push would otherwise wait for anti-entropy; a duplicate costs the
    # receiver one redundant merge and a second ack.
    push_retry: float = 0.25
    reassembly_timeout: float = 30.0
    max_reassembly_bytes_per_peer: int = 16 * 1024 * 1024
    max_reassemblies: int = 64

    def __post_init__(self) -> None:
        if not 1 <= self.chunk_size <= MAX_CHUNK:
            raise ValueError(f"chunk_size must be in [1, {MAX_CHUNK}] (one stream frame), got {self.chunk_size}")


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


def state_digest(sv: dict[int, int]) -> bytes:
    """BLAKE2b-128 of a decoded state vector in client order (encodings may order clients differently)."""
    h = hashlib.blake2b(digest_size=16)
    for client in sorted(sv):
        h.update(client.to_bytes(8, "big") + sv[client].to_bytes(8, "big"))
    return h.digest()


@dataclass(slots=True)
class _Reassembly:
    count: int
    total: int
    deadline: float
    parts: dict[int, bytes] = field(default_factory=dict)
    size: int = 0


@dataclass(slots=True)
class _Push:
    """An eager push awaiting its ack: each copy sent holds budget until then or ``expires``."""

    size: int
    expires: float
    retry_at: float
    update: bytes
    ttl: int
    copies: int = 1


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
        self._given: list[str] = []
        self._queue: list[_Queued] = []
        self._next_ae = 0.0  # first tick syncs at once: a (re)started node catches up fast
        self._push_id = 0
        self._transfer_id = 0
        self._outstanding: dict[str, dict[int, _Push]] = {}
        self._reasm: dict[tuple[str, int], _Reassembly] = {}
        self._digest_of: tuple[bytes, bytes] = (b"", b"")  # (state vector, its digest), memoised
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

    def _usable(self, peers: list[str]) -> list[str]:
        """``peers`` minus the backpressured ones."""
        if not self._congested:
            return peers
        return [p for p in peers if p not in self._congested]

    # --- the node-facing surface -------------------------------------------------------

    def local_update(self, update: bytes, now: float) -> None:
        """Queue a durably stored local update for eager push at the next tick."""
        self._queue.append(_Queued(update, self.config.relay_ttl, None, now))

    def state_digest(self) -> bytes:
        """Digest of this replica's current state vector (see :func:`state_digest`)."""
        sv = self.doc.state_vector()
        if self._digest_of[0] != sv:
            self._digest_of = (sv, state_digest(decode_state_vector(sv)))
        return self._digest_of[1]

    def outstanding_bytes(self, peer: str) -> int:
        return sum(p.size * p.copies for p in self._outstanding.get(peer, {}).values())

    def next_deadline(self) -> float | None:
        """When ``tick`` next has work: queued pushes, anti-entropy, expiries."""
        times = [self._next_ae]
        if self._queue:
            times.append(min(q.since for q in self._queue))
        for pushes in self._outstanding.values():
            times.extend(min(p.expires, p.retry_at) for p in pushes.values())
        times.extend(r.deadline for r in self._reasm.values())
        return min(times)

    def tick(self, now: float, live_peers: list[str]) -> list[Outgoing]:
        """Timers: flush eager pushes, run anti-entropy, expire acks and reassemblies."""
        if live_peers != self._given:  # re-sort only when membership changed
            self._given = list(live_peers)
            self._live = sorted(p for p in live_peers if p != self.node_id)
        out: list[Outgoing] = []
        if self._congested:
            for peer in [p for p, until in self._congested.items() if until <= now]:
                del self._congested[peer]  # a driver that never says "drained" must not starve a peer
        for peer in sorted(self._outstanding):
            pushes = self._outstanding[peer]
            for pid in sorted(pushes):
                p = pushes[pid]
                if p.expires <= now:
                    del pushes[pid]  # lost or slow: release the budget, anti-entropy repairs
                elif p.retry_at <= now:
                    p.retry_at = math.inf  # once: a second loss is left to anti-entropy
                    # A retry is bytes in flight too: a slow peer's full budget gets none.
                    if self._is_live(peer) and peer not in self._congested and self.outstanding_bytes(peer) + p.size <= self.config.max_outstanding_bytes:
                        p.copies += 1
                        self.counters.eager_retries += 1
                        out += self._send(peer, SyncUpdate(p.update, pid, p.ttl))
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
            candidates = self._usable(self._live)
            if self._ae_avoid:
                candidates = [p for p in candidates if p not in self._ae_avoid]
                self._ae_avoid.clear()
            if candidates:
                peer = self.rng.choice(candidates)
                self._ae_peer = peer
                self.counters.anti_entropy_rounds += 1
                if cfg.digest_anti_entropy:
                    out += self._send(peer, SyncDigest(self.state_digest()))
                else:
                    out += self._send(peer, SyncStep1(self.doc.state_vector()))
        return out

    def receive(self, src: str, msg: Any, now: float) -> list[Outgoing]:
        """Handle one message from ``src``; malformed content is counted, never raised."""
        self.counters.messages_received += 1
        if isinstance(msg, SyncChunk):
            return self._on_chunk(src, msg, now)
        if isinstance(msg, SyncDigest):
            self.counters.bytes_received += len(msg.digest)
            if msg.digest == self.state_digest():
                self.counters.anti_entropy_in_sync += 1
                return []
            return self._send(src, SyncStep1(self.doc.state_vector()))
        if isinstance(msg, SyncStep1):
            if src == self._ae_peer:
                self._ae_peer = None  # digest anti-entropy: the partner answered with its state vector
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
            new = self._apply(src, msg.update, now)
            if new is not None and msg.push_id and msg.ttl > 0:
                # Forwarded from the next tick (due at once): tick brings the current live
                # peers, which this node may not have been handed since membership changed.
                self.counters.relays += 1
                # A peer cannot stretch a wave beyond our own hop bound.
                self._queue.append(_Queued(new, min(msg.ttl, self.config.relay_ttl) - 1, src, now))
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

    def _apply(self, src: str, update: bytes, now: float) -> bytes | None:
        """Merge ``update``; persist and return what was new to this replica (None if nothing)."""
        try:
            new = self.doc.learn(update, now)
        except ValidationError:
            self.log.warning("crdt_update_rejected", src=src, size=len(update))
            return None
        if new is not None and self.store is not None:
            self.store.append(update)
        return new

    def _is_live(self, peer: str) -> bool:
        i = bisect_right(self._live, peer)
        return i > 0 and self._live[i - 1] == peer

    def targets(self, exclude: str | None) -> list[str]:
        """Peers of one push: ``fanout`` random live peers plus the ring successor, never ``exclude``
        nor a peer the driver reported backpressured."""
        live = self._usable(self._live)
        n = len(live)
        if n == 0:
            return []
        # Sample indices, not names: O(fanout) per push instead of copying the member list.
        k = min(self.config.fanout + 1, n)
        chosen = [live[i] for i in self.rng.sample(range(n), k)]
        chosen = [p for p in chosen if p != exclude][: self.config.fanout]
        if self.config.ring:
            succ = live[bisect_right(live, self.node_id) % n]
            if succ != exclude and succ not in chosen:
                chosen.append(succ)
        return sorted(chosen)

    def _push(self, update: bytes, ttl: int, exclude: str | None, now: float) -> list[Outgoing]:
        chosen = self.targets(exclude)
        if not chosen:
            return []
        out: list[Outgoing] = []
        size = len(update)
        for peer in chosen:
            if self.outstanding_bytes(peer) + size > self.config.max_outstanding_bytes:
                self.counters.eager_dropped_backpressure += 1
                self.log.debug("crdt_push_dropped_backpressure", peer=peer, size=size)
                continue
            self._push_id += 1
            retry = now + self.config.push_retry if self.config.push_retry > 0 else math.inf
            self._outstanding.setdefault(peer, {})[self._push_id] = _Push(size, now + self.config.ack_timeout, retry, update, ttl)
            self.counters.eager_pushes += 1
            out += self._send(peer, SyncUpdate(update, self._push_id, ttl))
        return out

    def _send(self, dst: str, msg: Any) -> list[Outgoing]:
        # The state vector counts too: it grows with every Yjs client that ever wrote, so a
        # SyncStep1 or a SyncStep2 with a small diff can still outgrow one frame.
        size = len(getattr(msg, "update", b"")) + len(getattr(msg, "state_vector", b""))
        if size <= self.config.chunk_size:
            self.counters.messages_sent += 1
            self.counters.bytes_sent += size + len(getattr(msg, "digest", b""))
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
            inner: SyncStep1 | SyncStep2 | SyncUpdate
            if obj[0] == SyncStep1.TYPE:
                inner = SyncStep1.from_payload(obj[1])
            elif obj[0] == SyncStep2.TYPE:
                inner = SyncStep2.from_payload(obj[1])
            elif obj[0] == SyncUpdate.TYPE:
                inner = SyncUpdate.from_payload(obj[1])
            else:
                raise ValueError(f"type {obj[0]!r} is never chunked")
        except Exception:
            self.counters.updates_malformed += 1
            self.log.warning("crdt_chunked_message_rejected", src=src, size=len(blob))
            return []
        self.counters.messages_received -= 1  # the inner message counts once
        return self.receive(src, inner, now)
