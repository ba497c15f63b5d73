"""Content-addressed blob transfer (module binaries), sans-IO.

A fetch asks the candidate peers nearest first (by estimated RTT, then name), keeps a small
window of chunk requests in flight, and on a dead or silent peer resumes from the last
contiguous offset with the next candidate. The whole blob is checked against its SHA-256
(and an optional hook, e.g. the manifest's publisher signature and size) before it is
stored. A hash mismatch discards the bytes; if one peer supplied them all it is marked bad,
otherwise the fetch restarts single-source so the liar is identified.

With ``deferred_puts=True`` (an event-loop driver) the verified blob is not written by the
core: it becomes a :class:`BlobPut` the driver takes (``take_puts``), writes and fsyncs on
a worker thread, and reports back (``stored``); the fetch is ``storing`` meanwhile and only
``done`` once the blob is durable.

Every fetch carries the size its signed manifest states, and that size must be within a hard
cap (``max_blob_bytes``, the largest module a manifest may name): a fetch without one is
refused, and a peer claiming any other total size is marked bad before a byte is buffered, so
a peer announcing a 1 TiB blob costs one chunk request.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import structlog

from crdt.errors import BlobError
from crdt.messages import MAX_BLOB_CHUNK, BlobChunk, BlobMissing, BlobRequest
from crdt.metrics import Counters
from model.manifest import MAX_MODULE_BYTES

Outgoing = tuple[str, Any]
CHUNK = 32 * 1024


@dataclass(slots=True, frozen=True)
class BlobPut:
    """A verified blob the driver must store durably (``sink.put``) off the event loop."""

    sha256: str
    data: bytes


class BlobSource(Protocol):
    def has(self, sha256: str) -> bool: ...
    def size(self, sha256: str) -> int | None: ...
    def read(self, sha256: str, offset: int, length: int) -> bytes: ...


class BlobSink(Protocol):
    def has(self, sha256: str) -> bool: ...
    def put(self, sha256: str, data: bytes) -> None: ...


class MemoryBlobStore:
    """Blob source and sink in memory; ``put`` verifies the hash."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}

    def has(self, sha256: str) -> bool:
        return sha256 in self._blobs

    def size(self, sha256: str) -> int | None:
        b = self._blobs.get(sha256)
        return None if b is None else len(b)

    def read(self, sha256: str, offset: int, length: int) -> bytes:
        return self._blobs[sha256][offset : offset + length]

    def put(self, sha256: str, data: bytes) -> None:
        if hashlib.sha256(data).hexdigest() != sha256:
            raise BlobError(f"refusing to store blob: content does not hash to {sha256}")
        self._blobs[sha256] = bytes(data)


class DirBlobStore:
    """Blobs as files named by their SHA-256 under a directory (atomic rename, verified)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.dir = Path(path)
        self.dir.mkdir(parents=True, exist_ok=True)

    def _p(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise BlobError(f"{sha256!r:.70} is not a SHA-256 hex digest")
        return self.dir / sha256

    def has(self, sha256: str) -> bool:
        return self._p(sha256).exists()

    def size(self, sha256: str) -> int | None:
        p = self._p(sha256)
        return p.stat().st_size if p.exists() else None

    def read(self, sha256: str, offset: int, length: int) -> bytes:
        with open(self._p(sha256), "rb") as f:
            f.seek(offset)
            return f.read(length)

    def put(self, sha256: str, data: bytes) -> None:
        if hashlib.sha256(data).hexdigest() != sha256:
            raise BlobError(f"refusing to store blob: content does not hash to {sha256}")
        p = self._p(sha256)
        tmp = p.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)


@dataclass(slots=True)
class FetchState:
    sha256: str
    candidates: list[str]
    expected_size: int | None
    verify: Callable[[bytes], None] | None
    status: str = "fetching"  # fetching | storing | done | failed
    reason: str = ""
    peer_index: int = 0
    total: int | None = None
    contiguous: bytearray = field(default_factory=bytearray)
    pending: dict[int, bytes] = field(default_factory=dict)
    inflight: dict[int, float] = field(default_factory=dict)  # offset -> deadline
    contributors: set[str] = field(default_factory=set)
    single_source: bool = False

    @property
    def peer(self) -> str | None:
        return self.candidates[self.peer_index] if self.peer_index < len(self.candidates) else None


class BlobTransfer:
    """Serves blobs from a source and fetches missing ones into a sink."""

    def __init__(
        self,
        store: Any,
        *,
        chunk_size: int = CHUNK,
        window: int = 4,
        request_timeout: float = 5.0,
        counters: Counters | None = None,
        on_done: Callable[[str, bool, str], None] | None = None,
        node_id: str = "",
        deferred_puts: bool = False,
        max_blob_bytes: int = MAX_MODULE_BYTES,
    ) -> None:
        if not 1 <= chunk_size <= MAX_BLOB_CHUNK:  # a BlobChunk must fit one stream frame
            raise ValueError(f"chunk_size must be in [1, {MAX_BLOB_CHUNK}] (one stream frame), got {chunk_size}")
        self.store = store
        self.chunk_size = chunk_size
        self.window = window
        self.request_timeout = request_timeout
        self.counters = counters if counters is not None else Counters()
        self.on_done = on_done
        self.bad_peers: set[str] = set()
        self.fetches: dict[str, FetchState] = {}
        self.deferred_puts = deferred_puts
        self.max_blob_bytes = max_blob_bytes
        self._puts: list[BlobPut] = []
        self.log = structlog.get_logger("crdt.blob").bind(node_id=node_id)

    # --- fetching -------------------------------------------------------------------

    def fetch(
        self,
        sha256: str,
        candidates: list[tuple[str, float]],
        now: float,
        expected_size: int | None = None,
        verify: Callable[[bytes], None] | None = None,
    ) -> list[Outgoing]:
        """Start fetching a blob from peers ``[(peer, estimated_rtt)]``, nearest first.

        ``expected_size`` is the size the blob's signed manifest states; it is required and must
        be within ``max_blob_bytes``: otherwise the fetch fails at once (``blob_fetch_refused``).
        """
        if self.store.has(sha256):
            return []
        cur = self.fetches.get(sha256)
        if cur is not None and cur.status in ("fetching", "storing"):
            return []
        order = [p for p, _ in sorted(candidates, key=lambda c: (c[1], c[0])) if p not in self.bad_peers]
        st = self.fetches[sha256] = FetchState(sha256, order, expected_size, verify)
        if type(expected_size) is not int or not 0 <= expected_size <= self.max_blob_bytes:
            self.counters.blob_fetch_refused += 1
            return self._fail(st, f"refused: expected size {expected_size!r:.24} is not in 0..{self.max_blob_bytes} (a fetch needs the size from the signed manifest)")
        if not order:
            return self._fail(st, "no usable peer announces this blob")
        return self._fill(st, now)

    def status(self, sha256: str) -> FetchState | None:
        return self.fetches.get(sha256)

    def peer_dead(self, peer: str, now: float) -> list[Outgoing]:
        """Membership says ``peer`` died: every fetch using it moves on to the next candidate."""
        out: list[Outgoing] = []
        for sha in sorted(self.fetches):
            st = self.fetches[sha]
            if st.status == "fetching" and st.peer == peer:
                out += self._next_peer(st, now, "peer died")
        return out

    def stream_event(self, peer: str, kind: str, now: float) -> list[Outgoing]:
        """Driver input about the stream to ``peer``: a failed connect or a timed-out stream fails
        over at once (resuming from the contiguous prefix), without waiting for ``request_timeout``;
        a closed stream does so only when requests on it are still unanswered."""
        if kind not in ("connect_failed", "timed_out", "closed"):
            return []
        out: list[Outgoing] = []
        for sha in sorted(self.fetches):
            st = self.fetches[sha]
            if st.status != "fetching" or st.peer != peer:
                continue
            if kind == "closed" and not st.inflight:
                continue
            self.counters.blob_stream_failovers += 1
            out += self._next_peer(st, now, f"stream {kind.replace('_', ' ')}")
        return out

    def next_deadline(self) -> float | None:
        """The earliest in-flight request deadline."""
        ds = [d for st in self.fetches.values() if st.status == "fetching" for d in st.inflight.values()]
        return min(ds) if ds else None

    def tick(self, now: float) -> list[Outgoing]:
        out: list[Outgoing] = []
        for sha in sorted(self.fetches):
            st = self.fetches[sha]
            if st.status == "fetching" and any(d <= now for d in st.inflight.values()):
                out += self._next_peer(st, now, "request timed out")
        return out

    def receive(self, src: str, msg: Any, now: float) -> list[Outgoing]:
        if isinstance(msg, BlobRequest):
            return self._serve(src, msg)
        st = self.fetches.get(getattr(msg, "sha256", ""))
        if st is None or st.status != "fetching" or src != st.peer:
            return []  # late answer from a peer we already left
        if isinstance(msg, BlobMissing):
            return self._next_peer(st, now, "peer does not have it")
        if isinstance(msg, BlobChunk):
            return self._on_chunk(st, src, msg, now)
        return []

    def _fill(self, st: FetchState, now: float) -> list[Outgoing]:
        peer = st.peer
        if peer is None:
            return []
        out: list[Outgoing] = []
        offsets = sorted(set(st.inflight) | set(st.pending))
        nxt = max([o + self.chunk_size for o in offsets] + [len(st.contiguous)])
        while len(st.inflight) < self.window and (st.total is None or nxt < st.total):
            if st.total is None and st.inflight:
                break  # learn the size from the first chunk before pipelining
            st.inflight[nxt] = now + self.request_timeout
            out.append((peer, BlobRequest(st.sha256, nxt, self.chunk_size)))
            nxt += self.chunk_size
        return out

    def _on_chunk(self, st: FetchState, src: str, c: BlobChunk, now: float) -> list[Outgoing]:
        if c.offset not in st.inflight:
            return []
        if c.total_size != st.expected_size:  # fetch() refused any fetch without a capped size
            return self._bad(st, src, now, f"peer claims size {c.total_size}, manifest says {st.expected_size}")
        if st.total is not None and c.total_size != st.total:
            return self._bad(st, src, now, "peer changed the blob size mid-transfer")
        want = min(self.chunk_size, c.total_size - c.offset)
        if len(c.data) != want:
            return self._bad(st, src, now, f"chunk at {c.offset} has {len(c.data)} bytes, expected {want}")
        st.total = c.total_size
        del st.inflight[c.offset]
        st.pending[c.offset] = c.data
        st.contributors.add(src)
        self.counters.blob_bytes_fetched += len(c.data)
        while len(st.contiguous) in st.pending:
            st.contiguous += st.pending.pop(len(st.contiguous))
        if len(st.contiguous) >= st.total:
            return self._complete(st, now)
        return self._fill(st, now)

    def _complete(self, st: FetchState, now: float) -> list[Outgoing]:
        data = bytes(st.contiguous)
        if hashlib.sha256(data).hexdigest() != st.sha256:
            self.counters.blob_hash_mismatch += 1
            if len(st.contributors) == 1:
                return self._bad(st, next(iter(st.contributors)), now, "content does not match its SHA-256")
            self.log.warning("crdt_blob_hash_mismatch_mixed", sha256=st.sha256, peers=sorted(st.contributors))
            st.contiguous = bytearray()
            st.pending.clear()
            st.contributors.clear()
            st.single_source = True
            return self._next_peer(st, now, "hash mismatch from mixed sources")
        if st.verify is not None:
            try:
                st.verify(data)
            except Exception as exc:
                return self._fail(st, f"verification hook refused the blob: {exc}")
        st.contiguous = bytearray()
        if self.deferred_puts:
            st.status = "storing"
            self._puts.append(BlobPut(st.sha256, data))
            return []
        try:
            self.store.put(st.sha256, data)
        except Exception as exc:
            return self._fail(st, f"cannot store blob: {exc}")
        return self._done(st, len(data))

    def _done(self, st: FetchState, size: int) -> list[Outgoing]:
        st.status = "done"
        self.log.info("crdt_blob_fetched", sha256=st.sha256, size=size, peers=sorted(st.contributors))
        if self.on_done:
            self.on_done(st.sha256, True, "")
        return []

    def has_puts(self) -> bool:
        """True when verified blobs wait for the driver to store them."""
        return bool(self._puts)

    def take_puts(self) -> list[BlobPut]:
        """Verified blobs for the driver to store off the loop (``deferred_puts`` only)."""
        out, self._puts = self._puts, []
        return out

    def stored(self, sha256: str, now: float, error: str | None = None) -> list[Outgoing]:
        """The driver finished a :class:`BlobPut`: the fetch is done, or failed with ``error``."""
        st = self.fetches.get(sha256)
        if st is None or st.status != "storing":
            return []
        if error is not None:
            return self._fail(st, f"cannot store blob: {error}")
        return self._done(st, st.total or 0)

    def _bad(self, st: FetchState, peer: str, now: float, why: str) -> list[Outgoing]:
        self.bad_peers.add(peer)
        self.log.warning("crdt_blob_peer_bad", peer=peer, sha256=st.sha256, reason=why)
        st.contiguous = bytearray()  # nothing from a lying peer is kept
        st.pending.clear()
        st.contributors.clear()
        st.total = None
        return self._next_peer(st, now, why)

    def _next_peer(self, st: FetchState, now: float, why: str) -> list[Outgoing]:
        st.inflight.clear()
        st.pending.clear()  # out-of-order pieces are dropped; the contiguous prefix is kept (resume)
        if st.single_source:
            st.contiguous = bytearray()
            st.contributors.clear()
        st.peer_index += 1
        while st.peer is not None and st.peer in self.bad_peers:
            st.peer_index += 1
        if st.peer is None:
            return self._fail(st, f"no candidate peer left (last: {why})")
        self.log.info("crdt_blob_next_peer", sha256=st.sha256, peer=st.peer, resume_at=len(st.contiguous), reason=why)
        return self._fill(st, now)

    def _fail(self, st: FetchState, why: str) -> list[Outgoing]:
        st.status, st.reason = "failed", why
        st.inflight.clear()
        st.contiguous = bytearray()
        self.counters.blob_fetch_failed += 1
        self.log.warning("crdt_blob_fetch_failed", sha256=st.sha256, reason=why)
        if self.on_done:
            self.on_done(st.sha256, False, why)
        return []

    # --- serving --------------------------------------------------------------------

    def _serve(self, src: str, req: BlobRequest) -> list[Outgoing]:
        size = self.store.size(req.sha256) if self.store.has(req.sha256) else None
        if size is None or (req.offset >= size and size > 0):
            return [(src, BlobMissing(req.sha256))]
        # Never more than our chunk size, whatever was asked: an answer must fit one stream
        # frame (a Noise message), and a large ask must not make us read megabytes.
        length = min(req.length, self.chunk_size, size - req.offset)
        return [(src, BlobChunk(req.sha256, req.offset, self.store.read(req.sha256, req.offset, length), size))]
