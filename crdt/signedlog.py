"""SignedLog: one node's set of verified chained records and the effective view derived from it.

Sans-IO and deterministic: the caller passes ``now_wall`` (seconds since the epoch) and the log
never reads a clock. The effective view is a function of the set of valid records the node has
verified, which nothing a peer sends can shrink:

* records are content-addressed (:mod:`crdt.logrecord`); a replay is a duplicate id;
* a signer's records form a hash chain (seq, prev); only the connected prefix is in the view,
  records above a gap wait in a bounded pending set and the gap is reported as missing;
* two different records at one ``(signer, seq)`` — or a record whose ``prev`` contradicts the
  one we hold below it — are signed proof of equivocation: both are kept as evidence, an audit
  event is returned, and the signer's log is *frozen* at ``fork - 1`` on every node (the lowest
  fork wins), whatever the arrival order;
* per slot, a signer's own latest record (by seq) is its candidate; across signers the greatest
  ``(wall_ms, tombstone, signer)`` wins, so a deletion is a signed tombstone that wins ties;
* a record whose wall time is more than ``future_tolerance_ms`` ahead of ``now_wall`` is held
  back (bounded) and re-offered by :meth:`SignedLog.release_due`; beyond ``max_hold_ms`` it is
  rejected outright;
* invalid input (size, encoding, trust, role, signature, schema, revoked, frozen) is never
  stored: it is counted by reason and returned as an audit event.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Protocol

from crdt.errors import CrdtError, ValidationError
from crdt.heads import BATCH_BYTES, MAX_RANGES, Heads, Range, RecordBatch, heads_digest, valid_head
from crdt.keys import SigningKey
from crdt.logrecord import MAX_LOG_RECORD_BYTES, LogRecord
from crdt.metrics import Counters
from crdt.schema import (
    KvLimits,
    validate_deployment_payload,
    validate_kv_payload,
    validate_placement_payload,
    validate_registry_payload,
    validate_route_payload,
    validate_tenant_payload,
)
from crdt.trust import TrustConfig

# A record may claim a wall time at most this far ahead of the receiver's clock and still be
# applied: NTP keeps LAN/WAN clocks within tens of milliseconds, edge devices within seconds;
# 30 s absorbs a badly disciplined clock while bounding how long a skewed (or malicious) writer
# can make its write win over honest later writes (one tolerance at most).
FUTURE_TOLERANCE_MS = 30_000
# Held records are re-offered when due; anything further ahead (a year-5000 manifest) is refused.
MAX_HOLD_MS = 3_600_000
MAX_HELD = 1024
MAX_HELD_PER_SIGNER = 64
# Records above a gap: per signer, so a faulty signer cannot evict honest signers' records.
MAX_PENDING_PER_SIGNER = 256
MAX_PENDING = 4096
MAX_MISSING_RANGES = 16
VERIFY_CACHE = 65536

ACCEPTED, PENDING, HELD, DUPLICATE, REJECTED = "accepted", "pending", "held", "duplicate", "rejected"


class LogError(CrdtError):
    """A local write the signed log cannot take (our own chain has a gap or is frozen)."""


class StoreRecovering(LogError):
    """A local write refused because the node's store was damaged or lost and it has not yet
    learned from peers what they hold of its signers (it could reuse a sequence number)."""


@dataclass(slots=True, frozen=True)
class Revocation:
    """A revoked key: its records with ``wall_ms >= at_ms`` or ``seq > through_seq`` leave the view.

    ``through_seq`` (the signer's head the revoking admin vouches for) is what stops a thief who
    backdates wall times; ``at_ms`` alone would not.
    """

    at_ms: int
    through_seq: int


class LogTrust(Protocol):
    """What the log asks about keys; :class:`TrustAdapter` implements it over ``TrustConfig``."""

    def knows(self, signer: str) -> bool: ...

    def check(self, signer: str, kind: str, key: str) -> str | None: ...

    def verify(self, signer: str, signature: bytes, message: bytes) -> bool: ...

    def revocation(self, signer: str) -> Revocation | None: ...


class TrustAdapter:
    """:class:`LogTrust` over a :class:`TrustConfig` (roles, placement ownership) plus revocations."""

    def __init__(self, trust: TrustConfig, revocations: Mapping[str, Revocation] | None = None) -> None:
        self.trust = trust
        self.revocations: dict[str, Revocation] = dict(revocations or {})

    def knows(self, signer: str) -> bool:
        """True if the key is trusted at all."""
        return self.trust.get(signer) is not None

    def check(self, signer: str, kind: str, key: str) -> str | None:
        """None if ``signer`` may write ``kind:key``, else the reason (the same names as IntentDoc)."""
        if self.trust.get(signer) is None:
            return "unknown_signer"
        if kind == "placement":
            return None if self.trust.node_key_id(key) == signer else "not_owner"
        return None if self.trust.may_write(signer, kind) else "role"

    def verify(self, signer: str, signature: bytes, message: bytes) -> bool:
        """Ed25519 verification by a trusted key."""
        return self.trust.verify(signer, signature, message)

    def revocation(self, signer: str) -> Revocation | None:
        """The key's revocation, if any."""
        return self.revocations.get(signer)

    def revoke(self, signer: str, at_ms: int, through_seq: int) -> None:
        """Revoke ``signer`` from ``at_ms`` on, keeping its records up to ``through_seq``."""
        self.revocations[signer] = Revocation(at_ms, through_seq)


Validator = Callable[[LogRecord], None]


def schema_validator(kv_limits: KvLimits = KvLimits(), tolerance_ms: int = FUTURE_TOLERANCE_MS) -> Validator:
    """The intent schemas of :mod:`crdt.schema` plus: a payload ``created_at`` may not be ahead of the record's wall time."""
    checks: dict[str, Callable[[str, Any], None]] = {
        "registry": validate_registry_payload,
        "deployments": validate_deployment_payload,
        "routes": validate_route_payload,
        "tenant": validate_tenant_payload,
        "placement": validate_placement_payload,
        "kv": lambda k, p: validate_kv_payload(k, p, kv_limits),
    }

    from crdt.meshtrust import validate_trust_payload  # meshtrust builds on this module

    checks["trust"] = validate_trust_payload
    from crdt.schema import validate_subscription_payload

    checks["subscriptions"] = validate_subscription_payload

    def validate(rec: LogRecord) -> None:
        if rec.tombstone:
            if rec.payload is not None and not isinstance(rec.payload, dict):
                raise ValidationError("a tombstone's payload is nothing or a map (e.g. a reason)")
            return
        checks[rec.kind](rec.key, rec.payload)
        created = rec.payload.get("created_at") if isinstance(rec.payload, dict) else None
        if isinstance(created, (int, float)) and created * 1000 > rec.wall_ms + tolerance_ms:
            raise ValidationError(f"payload created_at {created} is ahead of the record's wall time")

    return validate


@dataclass(slots=True, frozen=True)
class LogAudit:
    """Something a peer or signer did wrong, for the audit sink."""

    event: str  # "invalid" | "equivocation"
    reason: str
    signer: str | None
    seq: int | None
    detail: str
    evidence: tuple[bytes, ...] = ()  # record ids


@dataclass(slots=True, frozen=True)
class AddResult:
    """What :meth:`SignedLog.add` did with one record."""

    status: str  # accepted | pending | held | duplicate | rejected
    record_id: bytes = b""
    reason: str = ""
    missing: tuple[Range, ...] = ()
    audit: tuple[LogAudit, ...] = ()
    # Records that entered the view with this add (this one and any pending ones it connected),
    # oldest first: what an on-visible hook, a usage counter or a route cache must look at. An
    # equivocation audit event means the signer's records from the fork on left the view.
    visible: tuple[LogRecord, ...] = ()

    @property
    def stored(self) -> bool:
        """True if the record is now part of the node's verified set."""
        return self.status in (ACCEPTED, PENDING)


class _Signer:
    """One signer's records: the first record seen at each seq, evidence, chain state."""

    __slots__ = ("recs", "extra", "contig", "fork", "heads_cache", "refused")

    def __init__(self) -> None:
        self.recs: dict[int, LogRecord] = {}
        self.extra: dict[int, LogRecord] = {}  # a second, different record at a seq: evidence
        self.contig = 0  # records 1..contig are present and hash-linked
        self.fork = 0  # lowest seq with proof of two different records (0: none)
        self.heads_cache: tuple[int, dict[tuple[str, str], LogRecord]] | None = None
        self.refused: list[LogRecord] = []  # last records refused for the pending bounds (fork proof)

    def pending(self) -> int:
        return len(self.recs) - self.contig

    def at(self, seq: int) -> list[LogRecord]:
        r = self.recs.get(seq)
        if r is None:
            return []
        e = self.extra.get(seq)
        return [r] if e is None else [r, e]


def _order(r: LogRecord) -> tuple[int, bool, str]:
    # Across signers: latest wall time, a tombstone wins a tie, then the greater key id.
    return (r.wall_ms, r.tombstone, r.signer)


class SignedLog:
    """One node's verified signed records, their effective view and heads-based sync."""

    def __init__(
        self,
        trust: LogTrust,
        *,
        validator: Validator | None = None,
        counters: Counters | None = None,
        future_tolerance_ms: int = FUTURE_TOLERANCE_MS,
        max_hold_ms: int = MAX_HOLD_MS,
        max_pending: int = MAX_PENDING,
        max_pending_per_signer: int = MAX_PENDING_PER_SIGNER,
        max_held: int = MAX_HELD,
        max_held_per_signer: int = MAX_HELD_PER_SIGNER,
        verify_cache: int = VERIFY_CACHE,
    ) -> None:
        self.trust = trust
        self.validator = validator if validator is not None else schema_validator(tolerance_ms=future_tolerance_ms)
        self.counters = counters if counters is not None else Counters()
        self.stats: dict[str, int] = {}
        self.tolerance_ms = future_tolerance_ms
        self.max_hold_ms = max_hold_ms
        self.max_pending = max_pending
        self.max_pending_per_signer = max_pending_per_signer
        self.max_held = max_held
        self.max_held_per_signer = max_held_per_signer
        self._signers: dict[str, _Signer] = {}
        self._pending_total = 0
        self._held: dict[bytes, LogRecord] = {}
        self._held_per_signer: dict[str, int] = {}
        # Digests of encodings whose signature verified (successes only: garbage cannot evict).
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._verify_cap = verify_cache
        # Every record that ever connected, per slot and per kind: read paths (winner, history,
        # slots) look at one slot's records instead of scanning every signer's chain. Records
        # that left the view since (fork, revocation, role removed) are filtered when read.
        self._slot_recs: dict[tuple[str, str], dict[bytes, LogRecord]] = {}
        self._kind_slots: dict[str, set[str]] = {}
        # Set while the node's store recovers: every local write is refused with this reason
        # (IntentNode sets and clears it; see IntentNode.recovering).
        self.write_gate: str | None = None

    # --- intake ------------------------------------------------------------------------

    def add(self, data: bytes, now_wall: float) -> AddResult:
        """Verify one encoded record and store it if valid; never raises on bad input."""
        return self._add(data, now_wall, signed_here=False)

    def _add(self, data: bytes, now_wall: float, signed_here: bool) -> AddResult:
        if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_LOG_RECORD_BYTES:
            return self._reject("oversize", "record is not bytes of at most %d bytes" % MAX_LOG_RECORD_BYTES, None)
        data = bytes(data)
        try:
            rec = LogRecord.decode(data)
        except ValidationError as exc:
            return self._reject("malformed", str(exc), None)
        st = self._signers.get(rec.signer)
        same = [r for r in st.at(rec.seq) if r.id == rec.id] if st is not None else []
        if rec.id in self._held:
            same.append(self._held[rec.id])
        # Same content: a duplicate, but only without verifying if the signature bytes match too
        # (another signature over the same content must verify before we call it a duplicate).
        if same and (same[0].signature == rec.signature or self._verify(data, rec)):
            self._bump("duplicates")
            return AddResult(DUPLICATE, rec.id)
        why = self.trust.check(rec.signer, rec.kind, rec.key)
        if why is not None:
            return self._reject(why, f"signer {rec.signer} may not write {rec.kind}:{rec.key!r:.60}", rec)
        if not signed_here and not self._verify(data, rec):
            return self._reject("bad_signature", f"signature by {rec.signer} does not verify", rec)
        try:
            self.validator(rec)
        except ValidationError as exc:
            return self._reject("schema", str(exc), rec)
        rev = self.trust.revocation(rec.signer)
        if rev is not None and (rec.seq > rev.through_seq or rec.wall_ms >= rev.at_ms):
            return self._reject("revoked", f"key {rec.signer} is revoked (after seq {rev.through_seq})", rec)
        if st is not None and st.fork and rec.seq > st.fork + 1:
            return self._reject("frozen", f"signer {rec.signer} equivocated at seq {st.fork}; its log is frozen", rec)
        now_ms = int(now_wall * 1000)
        if rec.wall_ms > now_ms + self.tolerance_ms:
            return self._hold(rec, now_ms)
        if st is None:
            st = self._signers[rec.signer] = _Signer()
        return self._store(st, rec)

    def _store(self, st: _Signer, rec: LogRecord) -> AddResult:
        cur = st.recs.get(rec.seq)
        if cur is not None and rec.seq in st.extra:
            if not (cur.prev == st.extra[rec.seq].prev != rec.prev):
                return self._reject("equivocation_known", f"a third record at {rec.signer}:{rec.seq}", rec)
            # Two records at one seq naming different predecessors prove a fork one seq lower
            # without holding it: keep that evidence, so the lowest fork is found in any order.
            del st.extra[rec.seq]
        partner: LogRecord | None = None
        if cur is None and rec.seq > st.contig + 1 and st.pending() >= self.max_pending_per_signer:
            partner = self._fork_partner(st, rec)
            if partner is None and not self._evict_pending(st, rec.seq):
                return self._refuse_pending(st, rec, f"{self.max_pending_per_signer} records of {rec.signer} already wait for a gap")
        if partner is None and cur is None and rec.seq > st.contig + 1 and self._pending_total >= self.max_pending:
            partner = self._fork_partner(st, rec)
            victim = max((s for s in self._signers if not self._signers[s].fork), key=lambda s: (self._signers[s].pending(), s), default=rec.signer)
            if partner is None and not self._evict_pending(self._signers[victim], rec.seq if victim == rec.signer else 0):
                return self._refuse_pending(st, rec, f"{self.max_pending} records already wait for gaps")
        before, lim_before = st.pending(), self._limit(rec.signer, st)
        audit: tuple[LogAudit, ...] = ()
        # Evidence of equivocation is stored past the pending bounds: it freezes the signer,
        # which drops its records above the fork, so what it costs is bounded by what it frees.
        for r in (partner, rec) if partner is not None else (rec,):
            if r is partner and any(x.id == r.id for x in st.at(r.seq)):
                continue  # the partner is a record we already hold
            if r.seq not in st.recs:
                st.recs[r.seq] = r
            elif r.seq not in st.extra:
                st.extra[r.seq] = r
            audit += self._detect_fork(st, r)
        while (nxt := st.recs.get(st.contig + 1)) is not None and nxt.prev == (st.recs[st.contig].id if st.contig else b""):
            st.contig += 1
            self._slot_recs.setdefault((nxt.kind, nxt.key), {})[nxt.id] = nxt
            self._kind_slots.setdefault(nxt.kind, set()).add(nxt.key)
        self._pending_total += st.pending() - before
        self.counters.records_valid += 1
        missing = self._gaps(rec.signer, st)
        status = PENDING if rec.seq > st.contig and not st.fork else ACCEPTED
        self._bump(status)
        lim = self._limit(rec.signer, st)
        visible = tuple(st.recs[s] for s in range(lim_before + 1, lim + 1))
        return AddResult(status, rec.id, "", missing, audit, visible)

    def _fork_partner(self, st: _Signer, rec: LogRecord) -> LogRecord | None:
        """A record (held, or recently refused for the pending bounds) that with ``rec`` proves a fork."""
        for c in st.at(rec.seq - 1) + st.at(rec.seq + 1) + st.refused:
            if c.seq == rec.seq and c.id != rec.id:
                return c
            lo, hi = (c, rec) if c.seq < rec.seq else (rec, c)
            if hi.seq == lo.seq + 1 and hi.prev != lo.id:
                return c
        return None

    def _refuse_pending(self, st: _Signer, rec: LogRecord, detail: str) -> AddResult:
        # Remember the last two refused records of the signer: the next record may prove a fork
        # with one of them (two records at one seq arrive one after the other).
        st.refused = (st.refused + [rec])[-2:]
        return self._reject("pending_full", detail, rec)

    def _detect_fork(self, st: _Signer, rec: LogRecord) -> tuple[LogAudit, ...]:
        fork = st.fork or 0
        for s in (rec.seq - 1, rec.seq):
            if s < 1:
                continue
            here, nxt = st.at(s), st.at(s + 1)
            ids, prevs = {r.id for r in here}, {r.prev for r in nxt}
            # Signed proof of two different records at s: two held there, two successors naming
            # different predecessors, or a successor naming another predecessor than ours.
            if len(here) > 1 or len(prevs) > 1 or (here and nxt and not prevs <= ids):
                fork = s if not fork else min(fork, s)
        if fork == st.fork:
            return ()
        st.fork = fork
        # Keep the evidence (records at fork and fork+1), drop what can never enter the view.
        for s in [s for s in st.recs if s > fork + 1]:
            del st.recs[s]
            st.extra.pop(s, None)
        st.contig = min(st.contig, fork - 1)
        evidence = tuple(r.id for s in (fork, fork + 1) for r in st.at(s))
        self._bump("equivocations")
        self.counters.invalid("equivocation")
        return (LogAudit("equivocation", "equivocation", rec.signer, fork, f"signer {rec.signer} signed two different records at seq {fork}; log frozen at {fork - 1}", evidence),)

    def _evict_pending(self, st: _Signer, incoming_seq: int) -> bool:
        """Drop the signer's highest pending record if it is above ``incoming_seq`` (it is the farthest from connecting)."""
        if st.fork:
            return False  # a frozen signer keeps at most its evidence (seqs fork and fork+1)
        top = max((s for s in st.recs if s > st.contig + 1 and s not in st.extra), default=0)
        if top <= incoming_seq:
            return False
        del st.recs[top]
        self._pending_total -= 1
        self._bump("pending_evicted")
        return True

    def _hold(self, rec: LogRecord, now_ms: int) -> AddResult:
        if rec.wall_ms > now_ms + self.max_hold_ms:
            return self._reject("far_future", f"wall time {rec.wall_ms} ms is more than {self.max_hold_ms} ms ahead of {now_ms}", rec)
        if len(self._held) >= self.max_held or self._held_per_signer.get(rec.signer, 0) >= self.max_held_per_signer:
            return self._reject("held_full", "too many records from the future are already held", rec)
        self._held[rec.id] = rec
        self._held_per_signer[rec.signer] = self._held_per_signer.get(rec.signer, 0) + 1
        self._bump("held")
        return AddResult(HELD, rec.id, "future")

    def release_due(self, now_wall: float) -> list[AddResult]:
        """Offer again every held record whose wall time is now within the tolerance."""
        return [res for _, res in self.release_due_records(now_wall)]

    def release_due_records(self, now_wall: float) -> list[tuple[bytes, AddResult]]:
        """:meth:`release_due`, with each released record's encoding (what a store persists)."""
        now_ms = int(now_wall * 1000)
        due = sorted((r for r in self._held.values() if r.wall_ms <= now_ms + self.tolerance_ms), key=lambda r: (r.signer, r.seq, r.id))
        out = []
        for r in due:
            del self._held[r.id]
            self._held_per_signer[r.signer] -= 1
            data = r.encode()
            out.append((data, self._add(data, now_wall, signed_here=False)))
        return out

    def _verify(self, data: bytes, rec: LogRecord) -> bool:
        d = hashlib.blake2b(data, digest_size=32).digest()
        if d in self._verified:
            self._verified.move_to_end(d)
            self._bump("verify_cache_hits")
            return True
        if not self.trust.verify(rec.signer, rec.signature, rec.message()):
            return False
        self._verified[d] = None
        if len(self._verified) > self._verify_cap:
            self._verified.popitem(last=False)
        return True

    def _reject(self, reason: str, detail: str, rec: LogRecord | None) -> AddResult:
        self.counters.invalid(reason)
        self._bump("rejected")
        ev = LogAudit("invalid", reason, rec.signer if rec else None, rec.seq if rec else None, detail)
        return AddResult(REJECTED, rec.id if rec else b"", reason, (), (ev,))

    def _bump(self, name: str) -> None:
        self.stats[name] = self.stats.get(name, 0) + 1

    def _gaps(self, signer: str, st: _Signer) -> tuple[Range, ...]:
        if st.fork or not st.pending():  # the common case costs O(1), not a scan of the chain
            return ()
        out: list[Range] = []
        expect = st.contig + 1
        for s in sorted(x for x in st.recs if x > st.contig):
            if s > expect:
                out.append((signer, expect, s - 1))
                if len(out) >= MAX_MISSING_RANGES:
                    break
            expect = s + 1
        return tuple(out)

    # --- local writes ----------------------------------------------------------------

    def next_seq_for(self, signer: str) -> int:
        """1 + the highest seq held of ``signer`` (pending and held included): never reuse a position."""
        st = self._signers.get(signer)
        top = 0 if st is None else (max(st.recs, default=0) if st.pending() else st.contig)
        if self._held_per_signer.get(signer):
            top = max([top] + [r.seq for r in self._held.values() if r.signer == signer])
        return top + 1

    def check_gate(self) -> None:
        """Raise StoreRecovering while local writes are gated (the store is recovering from peers)."""
        if self.write_gate is not None:
            self.counters.store_writes_refused_recovering += 1
            raise StoreRecovering(self.write_gate)

    def chain_head(self, signer: str) -> bytes:
        """Id of ``signer``'s last connected record (b"" before its first): the ``prev`` of its next one."""
        st = self._signers.get(signer)
        return st.recs[st.contig].id if st is not None and st.contig else b""

    def append(self, key: SigningKey, kind: str, slot: str, payload: Any, now_wall: float, *, tombstone: bool = False) -> tuple[LogRecord, AddResult]:
        """Sign and add our own next record; raise LogError if our chain has a gap or is frozen.

        The wall time is ``max(now, our last wall time, the slot's winning wall time + 1 ms)``
        capped at ``now + tolerance``, so a write made after seeing another wins over it.
        """
        now_ms = int(now_wall * 1000)
        seq, prev, wall_min = self.next_position(key.key_id, kind, slot, now_ms)
        rec = LogRecord.create(key, seq, prev, kind, slot, payload, max(now_ms, wall_min), tombstone=tombstone)
        return rec, self._add(rec.encode(), now_wall, signed_here=True)

    def next_position(self, signer: str, kind: str, slot: str, now_ms: int) -> tuple[int, bytes, int]:
        """``(seq, prev, minimum wall_ms)`` of ``signer``'s next record for ``kind:slot``.

        The wall time a writer should use is ``max(its clock, minimum)``: the minimum is the
        signer's last wall time and the slot's winning wall time + 1 ms (capped at ``now_ms`` +
        tolerance), so a write made after seeing another wins over it. Raise LogError if the
        signer's chain has a gap here or is frozen (the next position is not known).
        """
        self.check_gate()
        st = self._signers.get(signer)
        seq = self.next_seq_for(signer)
        if st is not None and (st.fork or st.contig != seq - 1):
            raise LogError(f"the log of {signer} has a gap below seq {seq} or is frozen: sync its heads from peers before writing")
        if st is None and seq != 1:
            raise LogError(f"the log of {signer} has a gap below seq {seq}: sync its heads from peers before writing")
        last = st.recs[st.contig].wall_ms if st is not None and st.contig else 0
        cur = self.winner(kind, slot)
        seen = min(cur.wall_ms + 1, now_ms + self.tolerance_ms) if cur is not None else 0
        prev = st.recs[st.contig].id if st is not None and st.contig else b""
        return seq, prev, max(last, seen)

    # --- effective view ----------------------------------------------------------------

    def _limit(self, signer: str, st: _Signer) -> int:
        lim = st.contig
        if st.fork:
            lim = min(lim, st.fork - 1)
        rev = self.trust.revocation(signer)
        if rev is not None:
            lim = min(lim, rev.through_seq)
            for s in range(1, lim + 1):
                if st.recs[s].wall_ms >= rev.at_ms:
                    return s - 1
        return lim

    def _slot_heads(self, signer: str, st: _Signer) -> dict[tuple[str, str], LogRecord]:
        lim = self._limit(signer, st)
        # Records 1..contig never change once connected (a second record at a seq goes to
        # `extra`; eviction and pruning only touch seqs above the limit), so a cached prefix is
        # extended, and rebuilt only when the limit drops (fork, revocation).
        start, heads = 1, {}
        if st.heads_cache is not None and st.heads_cache[0] <= lim:
            start, heads = st.heads_cache[0] + 1, st.heads_cache[1]
            if start > lim:
                return heads
        for s in range(start, lim + 1):
            r = st.recs[s]
            heads[(r.kind, r.key)] = r  # a signer's later record supersedes its earlier one
        st.heads_cache = (lim, heads)
        return heads

    def _candidates(self, kind: str) -> dict[str, LogRecord]:
        best: dict[str, LogRecord] = {}
        for signer in sorted(self._signers):
            for (k, key), r in self._slot_heads(signer, self._signers[signer]).items():
                if k != kind or self.trust.check(signer, kind, key) is not None:
                    continue  # a role removed since: out of the view at once
                b = best.get(key)
                if b is None or _order(r) > _order(b):
                    best[key] = r
        return best

    def winner(self, kind: str, key: str) -> LogRecord | None:
        """The winning record of one slot (a tombstone included), or None; O(signers of that slot)."""
        idx = self._slot_recs.get((kind, key))
        if not idx:
            return None
        best: LogRecord | None = None
        for signer in sorted({r.signer for r in idx.values()}):
            r = self._slot_heads(signer, self._signers[signer]).get((kind, key))
            if r is not None and self.trust.check(signer, kind, key) is None and (best is None or _order(r) > _order(best)):
                best = r
        return best

    def slots(self, kind: str) -> list[str]:
        """Every slot of ``kind`` that ever held an in-view record, sorted (its winner may be gone since)."""
        return sorted(self._kind_slots.get(kind, ()))

    def in_view(self, signer: str, seq: int) -> bool:
        """True if the record at ``(signer, seq)`` is part of the effective view's record set."""
        st = self._signers.get(signer)
        if st is None or not 0 < seq <= st.contig or seq > self._limit(signer, st):
            return False
        r = st.recs[seq]
        return self.trust.check(signer, r.kind, r.key) is None

    def view(self, kind: str) -> dict[str, Any]:
        """``{slot: payload}`` of every slot of ``kind`` whose winner is not a tombstone."""
        return {k: r.payload for k, r in sorted(self._candidates(kind).items()) if not r.tombstone}

    def history(self, kind: str, key: str) -> list[LogRecord]:
        """Every in-view record of one slot, all signers, in winning order (oldest first)."""
        out = []
        limits: dict[str, int] = {}
        for r in (self._slot_recs.get((kind, key)) or {}).values():
            lim = limits.get(r.signer)
            if lim is None:
                st = self._signers[r.signer]
                ok = self.trust.check(r.signer, kind, key) is None
                lim = limits[r.signer] = self._limit(r.signer, st) if ok else 0
            if r.seq <= lim and self._signers[r.signer].recs.get(r.seq) is r:
                out.append(r)
        return sorted(out, key=lambda r: (_order(r), r.seq))

    def contains(self, record_id: bytes, signer: str, seq: int) -> bool:
        """True if the record is stored (connected or pending)."""
        st = self._signers.get(signer)
        return st is not None and any(r.id == record_id for r in st.at(seq))

    def equivocators(self) -> dict[str, int]:
        """``{signer: fork seq}`` of every signer proven to equivocate."""
        return {s: st.fork for s, st in sorted(self._signers.items()) if st.fork}

    def missing(self) -> list[Range]:
        """Every known gap below a pending record, per signer."""
        return [g for s in sorted(self._signers) for g in self._gaps(s, self._signers[s])]

    def pending_count(self) -> int:
        return self._pending_total

    def held_count(self) -> int:
        return len(self._held)

    def next_release(self) -> float | None:
        """When (seconds, the caller's clock) the earliest held record becomes due, or None."""
        if not self._held:
            return None
        return (min(r.wall_ms for r in self._held.values()) - self.tolerance_ms) / 1000

    # --- heads-based sync ---------------------------------------------------------------

    def heads(self) -> dict[str, tuple[int, bytes]]:
        """``{signer: (seq, id)}``: the head of each chain's in-sync prefix (below the fork if frozen)."""
        out: dict[str, tuple[int, bytes]] = {}
        for s in sorted(self._signers):
            st = self._signers[s]
            top = min(st.contig, st.fork - 1) if st.fork else st.contig
            if top:
                out[s] = (top, st.recs[top].id)
        return out

    def forks(self) -> dict[str, int]:
        """``{signer: fork seq}`` of every signer proven to equivocate (advertised with the heads)."""
        return self.equivocators()

    def heads_digest(self) -> bytes:
        """16-byte digest of :meth:`heads` and :meth:`forks`: equal digests end a sync round."""
        return heads_digest(self.heads(), self.forks())

    def missing_from(self, remote: Heads, forks: Mapping[str, int] | None = None) -> list[Range]:
        """The ``(signer, from_seq, to_seq)`` ranges a peer with ``remote`` heads and ``forks`` has and we lack."""
        out: list[Range] = []
        for signer in sorted(forks or {}):
            f = (forks or {})[signer]
            if not valid_head(signer, f, bytes(32)) or not self.trust.knows(signer):
                self._bump("bad_heads")
                continue
            st = self._signers.get(signer)
            if st is None or not st.fork or f < st.fork:
                out.append((signer, f, f + 1))  # the evidence of the peer's (lower) fork
        for signer in sorted(remote):
            entry = remote[signer]
            if not (isinstance(entry, tuple) and len(entry) == 2 and valid_head(signer, *entry)):
                self._bump("bad_heads")
                continue
            seq, hid = entry
            if not self.trust.knows(signer):
                continue
            rev = self.trust.revocation(signer)
            if rev is not None and seq > rev.through_seq:
                if rev.through_seq < 1:
                    continue
                seq, hid = rev.through_seq, b""  # nothing past the cut can enter the view: ask up to it
            st = self._signers.get(signer)
            if st is None:
                out += self._gap_ranges(signer, None, 1, seq)
            elif st.fork:  # only the prefix below our fork can still enter the view
                out += self._gap_ranges(signer, st, st.contig + 1, min(seq, st.fork - 1))
            elif seq > st.contig:
                out += self._gap_ranges(signer, st, st.contig + 1, seq)
            elif hid and st.recs[seq].id != hid:
                out.append((signer, seq, seq))  # a different record at a position we hold: evidence
            if len(out) >= MAX_RANGES:
                return out[:MAX_RANGES]
        return out

    def _gap_ranges(self, signer: str, st: _Signer | None, lo: int, hi: int) -> list[Range]:
        """The runs of seqs in ``[lo, hi]`` we hold no record at (held future records count as held)."""
        out: list[Range] = []
        expect = lo
        have = {x for x in st.recs if lo <= x <= hi} if st is not None else set()
        if self._held_per_signer.get(signer):
            have |= {r.seq for r in self._held.values() if r.signer == signer and lo <= r.seq <= hi}
        for s in sorted(have):
            if s > expect:
                out.append((signer, expect, s - 1))
            expect = s + 1
        if expect <= hi:
            out.append((signer, expect, hi))
        return out

    def records_for(self, ranges: Iterable[Range], byte_budget: int = 1 << 20) -> list[RecordBatch]:
        """Our records in ``ranges``, as batches that each fit one frame, at most ``byte_budget`` bytes in all."""
        batches: list[RecordBatch] = []
        cur: list[bytes] = []
        size = spent = 0
        limit = BATCH_BYTES
        for n, rng in enumerate(ranges):
            if n >= MAX_RANGES or not (isinstance(rng, tuple) and len(rng) == 3):
                break
            signer, lo, hi = rng
            st = self._signers.get(signer) if isinstance(signer, str) else None
            if st is None or not isinstance(lo, int) or not isinstance(hi, int):
                continue
            for s in sorted(x for x in st.recs if lo <= x <= hi):
                for r in st.at(s):
                    enc = r.encode()
                    cost = len(enc) + 5  # msgpack bin header
                    if spent + cost > byte_budget:
                        if cur:
                            batches.append(RecordBatch(tuple(cur)))
                        return batches
                    if size + cost > limit:
                        batches.append(RecordBatch(tuple(cur)))
                        cur, size = [], 0
                    cur.append(enc)
                    size += cost
                    spent += cost
        if cur:
            batches.append(RecordBatch(tuple(cur)))
        return batches

    # --- persistence -------------------------------------------------------------------

    def export(self) -> list[bytes]:
        """Every stored and held record, encoded, in (signer, seq) order: what a store persists."""
        out = []
        for s in sorted(self._signers):
            st = self._signers[s]
            for seq in sorted(st.recs):
                out += [r.encode() for r in st.at(seq)]
        out += [r.encode() for r in sorted(self._held.values(), key=lambda r: (r.signer, r.seq, r.id))]
        return out

    def load(self, records: Iterable[bytes], now_wall: float) -> dict[str, int]:
        """Add persisted records (verified again: a store is not trusted); return counts by status."""
        counts: dict[str, int] = {}
        for data in records:
            st = self.add(data, now_wall).status
            counts[st] = counts.get(st, 0) + 1
        return counts

