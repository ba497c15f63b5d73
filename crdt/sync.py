"""SyncCore: sans-IO replication of one node's signed records (:class:`~crdt.documents.IntentDoc`).

* **Eager push with forwarding**: each durably stored local record goes to ``fanout`` random
  live peers and to this node's ring successor (the next live node id after its own) as a
  :class:`~crdt.heads.RecordPush`. Every receiver forwards the records that were *new to it*
  (``SignedLog.add`` stored them: accepted or pending) the same way, with one hop less
  (``relay_ttl`` hops at most); a receiver that learned nothing stays quiet, which ends the
  wave. Invalid records are never stored, so they are never forwarded: garbage does not spread.
* **Anti-entropy by heads**: every ``anti_entropy_interval`` (jittered) one random live peer
  gets a 16-byte :class:`~crdt.heads.HeadsDigest` of our per-signer chain heads and forks.
  Equal digests end the round. Otherwise the peer answers with its heads
  (:class:`~crdt.heads.HeadsMessage`, pages of 1,000 signers), we ask for the ranges we lack
  (:class:`~crdt.heads.RecordsRequest`) and send our heads back, and each side answers requests
  with :class:`~crdt.heads.RecordBatch` es (each fits one frame, at most ``byte_budget`` bytes per
  request). A position is ``(signer key id, seq, record id)``, which only the key holder can
  fill, so a squatted or hidden record is always found and fetched.
* **Gap hints**: a record stored above a gap in its signer's chain names the missing range; we
  ask the sender for it at once.
* **Serving is throttled per peer**: what we send in answer to a peer's requests
  (``RecordsRequest`` batches, the heads pages a ``HeadsDigest`` asks for) is paid from a token
  bucket per authenticated peer (``serve_burst`` bytes, refilled at ``serve_rate`` bytes/s on the
  ``now`` the driver passes). A request the bucket cannot pay in full is answered with what it
  can pay (when that is at least one batch) or not at all, and counted
  (``sync_requests_throttled``); the peer asks again on a later round. Honest anti-entropy asks
  at most ``byte_budget`` (1 MiB) per request and one round per ``anti_entropy_interval``, well
  inside the default rate, so only a peer that keeps asking for large ranges is slowed.
* **Backpressure**: eager pushes count against a per-peer budget of unacknowledged bytes; when
  it is full, the push to that peer is dropped (counted) and anti-entropy repairs later.
* **Stream lifecycle** (driver input, :meth:`SyncCore.stream_event`): a peer whose stream
  failed to connect, timed out or closed releases its push budget (those acks will never
  come) and, if it was the anti-entropy partner, another peer is tried at once; a peer the
  driver reports backpressured gets no eager pushes (the fanout picks others) and is not
  chosen for anti-entropy until it drains or ``ack_timeout`` passes.

The core is fed ``(now, message)`` and returns ``[(dst, message)]``; it never reads a clock.
``wall`` (seconds since the epoch) is the clock records' times are judged against.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any

import structlog

from crdt.documents import IntentDoc
from crdt.heads import BATCH_BYTES, MAX_HEADS_PER_MESSAGE, MAX_RANGES, HeadsDigest, HeadsMessage, Range, RecordBatch, RecordPush, RecordsRequest
from crdt.messages import MAX_CHUNK, SyncAck
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
    digest_anti_entropy: bool = True  # kept for compatibility: rounds always open with a heads digest
    anti_entropy_interval: float = 2.0
    anti_entropy_jitter: float = 0.25  # ± fraction of the interval
    # Data bytes of one record push or batch; at most MAX_CHUNK, so every frame fits one Noise
    # message (65,535 B). A single record is at most 60,000 bytes, so it always fits.
    chunk_size: int = 60_000
    max_outstanding_bytes: int = 1024 * 1024  # unacknowledged eager-push bytes per peer
    ack_timeout: float = 10.0
    # An eager push not acknowledged after this long is sent once more to the same peer
    # (0: never). A lost push would otherwise wait for anti-entropy; a duplicate costs the
    # receiver one duplicate check per record and a second ack.
    push_retry: float = 0.25
    # Bytes of records one RecordsRequest is answered with (a peer asks again next round).
    byte_budget: int = 1024 * 1024
    # Bytes we serve one peer (answers to its RecordsRequests and HeadsDigests): a token bucket of
    # serve_burst bytes refilled at serve_rate bytes/s. Honest catch-up pulls at most byte_budget
    # per anti-entropy round (1 MiB / 2 s); a peer asking in a loop gets 1 MiB/s, not line rate.
    serve_rate: float = 1024 * 1024
    serve_burst: int = 4 * 1024 * 1024
    # Kept for compatibility with configurations written for the Yjs sync (no reassembly now).
    reassembly_timeout: float = 30.0
    max_reassembly_bytes_per_peer: int = 16 * 1024 * 1024
    max_reassemblies: int = 64

    def __post_init__(self) -> None:
        if not 1 <= self.chunk_size <= MAX_CHUNK:
            raise ValueError(f"chunk_size must be in [1, {MAX_CHUNK}] (one stream frame), got {self.chunk_size}")
        if not (self.serve_rate > 0 and self.serve_burst >= BATCH_BYTES):
            raise ValueError(f"serve_rate must be > 0 and serve_burst >= {BATCH_BYTES} (one batch)")


@dataclass(slots=True)
class _Push:
    """An eager push awaiting its ack: each copy sent holds budget until then or ``expires``."""

    size: int
    expires: float
    retry_at: float
    records: tuple[bytes, ...]
    ttl: int
    copies: int = 1


@dataclass(slots=True)
class _Queued:
    records: list[bytes]
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
        self._outstanding: dict[str, dict[int, _Push]] = {}
        self._congested: dict[str, float] = {}  # peer -> until when the driver said it is backpressured
        self._ae_peer: str | None = None  # anti-entropy partner whose answer is still due
        self._ae_avoid: set[str] = set()  # peers whose stream just failed: skipped by the retry
        self._serve: dict[str, tuple[float, float]] = {}  # peer -> (tokens in bytes, when last refilled)

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

    def local_update(self, record: bytes, now: float) -> None:
        """Queue a durably stored local record (its encoding) for eager push at the next tick."""
        self._queue.append(_Queued([record], self.config.relay_ttl, None, now))

    def state_digest(self) -> bytes:
        """Digest of this replica's heads and forks (equal digests: in sync)."""
        return self.doc.records.heads_digest()

    def outstanding_bytes(self, peer: str) -> int:
        return sum(p.size * p.copies for p in self._outstanding.get(peer, {}).values())

    def next_deadline(self) -> float | None:
        """When ``tick`` next has work: queued pushes, anti-entropy, expiries."""
        times = [self._next_ae]
        if self._queue:
            times.append(min(q.since for q in self._queue))
        for pushes in self._outstanding.values():
            times.extend(min(p.expires, p.retry_at) for p in pushes.values())
        return min(times)

    def tick(self, now: float, live_peers: list[str]) -> list[Outgoing]:
        """Timers: flush eager pushes, run anti-entropy, expire acks."""
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
                        out += self._send(peer, RecordPush(p.records, pid, p.ttl))
            if not pushes:
                del self._outstanding[peer]
        queue, self._queue = self._queue, []
        for q in self._coalesce(queue):
            out += self._push(tuple(q.records), q.ttl, q.exclude, now)
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
                out += self._send(peer, HeadsDigest(self.state_digest()))
        return out

    def _coalesce(self, queue: list[_Queued]) -> list[_Queued]:
        """Merge queued pushes with the same hop count and origin into batches of one frame."""
        out: list[_Queued] = []
        sizes: list[int] = []
        # 5 bytes of msgpack header per record; 64 for the push's own fields.
        limit = min(self.config.chunk_size, BATCH_BYTES - 64)
        for q in queue:
            size = sum(len(r) + 5 for r in q.records)
            if out and out[-1].ttl == q.ttl and out[-1].exclude == q.exclude and sizes[-1] + size <= limit:
                out[-1].records.extend(q.records)
                sizes[-1] += size
            else:
                out.append(_Queued(list(q.records), q.ttl, q.exclude, q.since))
                sizes.append(size)
        return out

    def receive(self, src: str, msg: Any, now: float, wall: float | None = None) -> list[Outgoing]:
        """Handle one message from the authenticated node ``src``; bad content is counted, never raised."""
        wall = now if wall is None else wall
        self.counters.messages_received += 1
        if isinstance(msg, RecordPush):
            self.counters.bytes_received += msg.size()
            out: list[Outgoing] = []
            if msg.push_id:
                out += self._send(src, SyncAck(msg.push_id))
            new, missing = self._add(msg.records, wall, now)
            if new and msg.push_id and msg.ttl > 0:
                # Forwarded from the next tick (due at once): tick brings the current live
                # peers. A peer cannot stretch a wave beyond our own hop bound.
                self.counters.relays += 1
                self._queue.append(_Queued(new, min(msg.ttl, self.config.relay_ttl) - 1, src, now))
            return out + self._ask(src, missing)
        if isinstance(msg, RecordBatch):
            if src == self._ae_peer:
                self._ae_peer = None
            self.counters.bytes_received += sum(len(r) for r in msg.records)
            _, missing = self._add(msg.records, wall, now)
            return self._ask(src, missing)
        if isinstance(msg, HeadsDigest):
            self.counters.bytes_received += len(msg.digest)
            if msg.digest == self.state_digest():
                self.counters.anti_entropy_in_sync += 1
                if src == self._ae_peer:
                    self._ae_peer = None
                return []
            pages = self._heads_pages(False)
            cost = sum(48 * (len(p.heads) + len(p.forks)) for p in pages)
            if not self._pay(src, cost, now, all_or_nothing=True):
                return []
            return [o for page in pages for o in self._send(src, page)]
        if isinstance(msg, HeadsMessage):
            if src == self._ae_peer:
                self._ae_peer = None  # the partner answered
            self.counters.bytes_received += 48 * (len(msg.heads) + len(msg.forks))
            out = self._ask(src, self.doc.records.missing_from(msg.as_heads(), msg.as_forks()))
            if not msg.reply:
                for page in self._heads_pages(True):
                    out += self._send(src, page)
            return out
        if isinstance(msg, RecordsRequest):
            budget = min(self.config.byte_budget, int(self._tokens(src, now)))
            if budget < self.config.byte_budget:
                # Answered under a smaller budget, or (less than one batch left) not at all.
                self.counters.sync_requests_throttled += 1
                if budget < min(BATCH_BYTES, self.config.byte_budget):
                    return []
            out = []
            for batch in self.doc.records.records_for(msg.ranges, budget):
                out += self._send(src, batch)
            self._pay(src, sum(len(r) + 5 for _, b in out for r in b.records), now)
            return out
        if isinstance(msg, SyncAck):
            pushes = self._outstanding.get(src)
            if pushes is not None:
                pushes.pop(msg.push_id, None)
                if not pushes:
                    del self._outstanding[src]
            return []
        self.counters.updates_malformed += 1
        return []

    # --- internals -------------------------------------------------------------------

    def _tokens(self, peer: str, now: float) -> float:
        """Bytes ``peer`` may be served now (its bucket refilled up to ``now``)."""
        cfg = self.config
        tokens, at = self._serve.get(peer, (float(cfg.serve_burst), now))
        return min(float(cfg.serve_burst), tokens + max(0.0, now - at) * cfg.serve_rate)

    def _pay(self, peer: str, cost: int, now: float, all_or_nothing: bool = False) -> bool:
        """Take ``cost`` bytes from ``peer``'s bucket; with ``all_or_nothing`` refuse (and count) if short."""
        tokens = self._tokens(peer, now)
        if all_or_nothing and cost > tokens:
            self.counters.sync_requests_throttled += 1
            return False
        if len(self._serve) >= 4096 and peer not in self._serve:
            # Bounded by peers, not requests: forget buckets that are full again (no debt to keep).
            full = float(self.config.serve_burst)
            self._serve = {p: v for p, v in self._serve.items() if self._tokens(p, now) < full}
        self._serve[peer] = (tokens - cost, now)
        return True

    def _add(self, records: tuple[bytes, ...], wall: float, now: float) -> tuple[list[bytes], list[Range]]:
        """Verify and store records; persist and return the new ones, and the gaps they revealed."""
        new: list[bytes] = []
        missing: list[Range] = []
        for data in records:
            res = self.doc.add(data, wall, now)
            if res.stored:
                new.append(data)
                if self.store is not None:
                    self.store.append(data)
                missing += [m for m in res.missing if m not in missing]
        if new:
            self.counters.updates_applied += 1
        elif records:
            self.counters.updates_redundant += 1
        return new, missing

    def _ask(self, src: str, ranges: list[Range]) -> list[Outgoing]:
        out: list[Outgoing] = []
        for i in range(0, len(ranges), MAX_RANGES):
            out += self._send(src, RecordsRequest(tuple(ranges[i : i + MAX_RANGES])))
        return out

    def _heads_pages(self, reply: bool) -> list[HeadsMessage]:
        log = self.doc.records
        items: list[Any] = [(s, q, h) for s, (q, h) in log.heads().items()]
        items += list(log.forks().items())
        pages = []
        for i in range(0, len(items), MAX_HEADS_PER_MESSAGE):
            page = items[i : i + MAX_HEADS_PER_MESSAGE]
            pages.append(HeadsMessage(tuple(x for x in page if len(x) == 3), reply, tuple(x for x in page if len(x) == 2)))
        return pages or [HeadsMessage((), reply)]

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

    def _push(self, records: tuple[bytes, ...], ttl: int, exclude: str | None, now: float) -> list[Outgoing]:
        chosen = self.targets(exclude)
        if not chosen:
            return []
        out: list[Outgoing] = []
        size = sum(len(r) for r in records)
        for peer in chosen:
            if self.outstanding_bytes(peer) + size > self.config.max_outstanding_bytes:
                self.counters.eager_dropped_backpressure += 1
                self.log.debug("crdt_push_dropped_backpressure", peer=peer, size=size)
                continue
            self._push_id += 1
            retry = now + self.config.push_retry if self.config.push_retry > 0 else math.inf
            self._outstanding.setdefault(peer, {})[self._push_id] = _Push(size, now + self.config.ack_timeout, retry, records, ttl)
            self.counters.eager_pushes += 1
            out += self._send(peer, RecordPush(records, self._push_id, ttl))
        return out

    def _send(self, dst: str, msg: Any) -> list[Outgoing]:
        self.counters.messages_sent += 1
        if isinstance(msg, (RecordPush, RecordBatch)):
            self.counters.bytes_sent += sum(len(r) for r in msg.records)
        elif isinstance(msg, HeadsMessage):
            self.counters.bytes_sent += 48 * (len(msg.heads) + len(msg.forks))
        elif isinstance(msg, HeadsDigest):
            self.counters.bytes_sent += len(msg.digest)
        return [(dst, msg)]


__all__ = ["BATCH_BYTES", "Outgoing", "SyncConfig", "SyncCore"]
