"""SignedLog against the attacks of issue 9; each would succeed against naive last-writer-wins slots."""

from __future__ import annotations

import hashlib
import itertools

import msgpack
import pytest

from crdt.errors import ValidationError
from crdt.heads import FRAME_BYTES, HeadsMessage, RecordBatch, RecordsRequest
from crdt.logrecord import MAX_LOG_RECORD_BYTES, LogRecord
from crdt.signedlog import ACCEPTED, DUPLICATE, HELD, PENDING, REJECTED, LogError, SignedLog
from log_helpers import ADMIN, NOW, NOW_MS, OPERATOR, PUBLISHER, STRANGER, Chain, NaiveSlots, deployment, manifest, new_log, node_key, placement, route, trust

N0, N1, F0 = node_key("n0"), node_key("n1"), node_key("f0")
YEAR_5000_MS = 95_617_584_000_000  # 5000-01-01T00:00:00Z


def sync(dst: SignedLog, src: SignedLog, now: float = NOW) -> int:
    """One heads round dst <- src over encoded messages; return records added."""
    msg = HeadsMessage(tuple((s, q, h) for s, (q, h) in src.heads().items()), False, tuple(src.forks().items()))
    heads = HeadsMessage.decode(msg.encode())
    want = RecordsRequest.decode(RecordsRequest(tuple(dst.missing_from(heads.as_heads(), heads.as_forks()))).encode())
    n = 0
    for batch in src.records_for(want.ranges):
        for data in RecordBatch.decode(batch.encode()).records:
            n += dst.add(data, now).stored
    return n


def converge(a: SignedLog, b: SignedLog) -> None:
    for _ in range(10):
        if a.heads_digest() == b.heads_digest():
            return
        sync(a, b)
        sync(b, a)
    raise AssertionError("logs did not converge in 10 rounds")


# --- records ---------------------------------------------------------------------------


def test_record_id_is_sha256_of_signed_bytes_and_decoding_is_strict() -> None:
    r = Chain(N0).next("placement", "n0", placement("n0", "1.0.0"), NOW_MS)
    assert r.id == hashlib.sha256(r.message()).digest()
    assert LogRecord.decode(r.encode()) == r and LogRecord.decode(r.encode()).id == r.id
    with pytest.raises(ValidationError, match="prev must be empty"):
        LogRecord.create(N0, 1, b"\0" * 32, "placement", "n0", placement("n0", "1.0.0"), NOW_MS)
    with pytest.raises(ValidationError, match="seq out of range"):
        LogRecord.create(N0, 2**53, b"\0" * 32, "kv", "ns/a", {"v": b"x"}, NOW_MS)


# --- attack: replay of an older validly signed record ------------------------------------


@pytest.mark.parametrize("case", ["placement", "kv_value", "kv_deleted"])
def test_replayed_older_record_changes_nothing(case: str) -> None:
    c = Chain(N0)
    if case == "placement":
        old = c.next("placement", "n0", placement("n0", "1.0.0"), NOW_MS)
        new = c.next("placement", "n0", placement("n0", "2.0.0"), NOW_MS + 1)
        kind, slot, want = "placement", "n0", placement("n0", "2.0.0")
    elif case == "kv_value":
        old = c.next("kv", "ns/a", {"v": b"old"}, NOW_MS)
        new = c.next("kv", "ns/a", {"v": b"new"}, NOW_MS + 1)
        kind, slot, want = "kv", "ns/a", {"v": b"new"}
    else:
        old = c.next("kv", "ns/a", {"v": b"secret"}, NOW_MS)
        new = c.next("kv", "ns/a", None, NOW_MS + 1, tombstone=True)
        kind, slot, want = "kv", "ns/a", None
    log, naive = new_log(), NaiveSlots()
    for r in (old, new, old):
        naive.put(r)
    assert naive.get(kind, slot) == old.payload  # the attack works on naive slots
    assert [log.add(r.encode(), NOW).status for r in (old, new)] == [ACCEPTED, ACCEPTED]
    assert log.add(old.encode(), NOW).status == DUPLICATE
    assert log.view(kind).get(slot) == want
    assert log.export() == [old.encode(), new.encode()]


# --- attack: raw delete of an entry --------------------------------------------------------


def test_entry_deleted_on_one_replica_is_found_by_heads_and_fetched_back() -> None:
    op, pub = Chain(OPERATOR), Chain(PUBLISHER)
    recs = [
        op.next("deployments", "web", deployment(active="1.0.0"), NOW_MS),
        op.next("routes", "GET */api/*", route() | {"method": "GET"}, NOW_MS + 1),
        op.next("deployments", "web", deployment(active="1.1.0"), NOW_MS + 2),  # latest revision
        pub.next("registry", "hello@1.0.0", manifest().to_payload(), NOW_MS),
        pub.next("registry", "hello@1.0.0", {"reason": "cve"}, NOW_MS + 5, tombstone=True),
    ]
    a = new_log()
    assert {a.add(r.encode(), NOW).status for r in recs} == {ACCEPTED}
    for victim in (1, 2, 4):  # the only route, the latest revision, the registry tombstone
        b = new_log()
        b.load([r.encode() for i, r in enumerate(recs) if i != victim], NOW)
        assert b.view("deployments") != a.view("deployments") or b.view("routes") != a.view("routes") or b.view("registry") != a.view("registry")
        signer, seq = recs[victim].signer, recs[victim].seq
        assert b.missing_from(a.heads()) == [(signer, seq, seq)]
        # The replica that lost the entry cannot shrink the other one: it has nothing a's heads lack.
        assert a.missing_from(b.heads()) == []
        sync(b, a)
        assert b.export() == a.export()
        assert (b.view("deployments"), b.view("routes"), b.view("registry")) == (a.view("deployments"), a.view("routes"), a.view("registry"))
    assert a.view("registry") == {} and a.view("deployments")["web"]["active_version"] == "1.1.0"
    assert list(a.view("routes")) == ["GET */api/*"]


# --- attack: overwrite of a valid slot with garbage ---------------------------------------


def test_garbage_is_rejected_by_reason_and_never_stored() -> None:
    log = new_log()
    good = Chain(N0).next("placement", "n0", placement("n0", "1.0.0"), NOW_MS)
    log.add(good.encode(), NOW)
    enc = bytearray(good.encode())
    enc[-1] ^= 1  # flip a signature bit
    tampered = LogRecord(good.signer, good.seq, good.prev, good.kind, good.key, False, placement("n0", "9.9.9"), good.wall_ms, good.signature)
    cases = {
        b"\x00garbage": "malformed",
        msgpack.packb([2, "x"]): "malformed",
        bytes(MAX_LOG_RECORD_BYTES + 1): "oversize",
        tampered.encode(): "bad_signature",
        Chain(STRANGER).next("kv", "ns/a", {"v": b"x"}, NOW_MS).encode(): "unknown_signer",
        bytes(enc): "bad_signature",
    }
    for data, reason in cases.items():
        res = log.add(data, NOW)
        assert (res.status, res.reason) == (REJECTED, reason)
        assert res.audit[0].reason == reason
    assert log.export() == [good.encode()]
    assert log.view("placement") == {"n0": placement("n0", "1.0.0")}
    assert log.counters.invalid_by_reason == {"malformed": 2, "oversize": 1, "bad_signature": 2, "unknown_signer": 1}


# --- attack: forged placement in another node's slot ---------------------------------------


def test_forged_placement_in_another_nodes_slot_is_rejected() -> None:
    log, naive = new_log(), NaiveSlots()
    real = Chain(N0).next("placement", "n0", placement("n0", "2.0.0"), NOW_MS)
    by_other = Chain(N1).next("placement", "n0", placement("n0", "0.0.1"), NOW_MS + 9)
    for r in (real, by_other):
        naive.put(r)
    assert naive.get("placement", "n0") == placement("n0", "0.0.1")
    log.add(real.encode(), NOW)
    assert log.add(by_other.encode(), NOW).reason == "not_owner"
    # Claiming n0's key id with another key's signature: the signature check catches it.
    msg_owner = LogRecord(N0.key_id, 2, real.id, "placement", "n0", False, placement("n0", "0.0.1"), NOW_MS + 9, b"")
    forged = LogRecord(N0.key_id, 2, real.id, "placement", "n0", False, msg_owner.payload, NOW_MS + 9, N1.sign(msg_owner.message()))
    assert log.add(forged.encode(), NOW).reason == "bad_signature"
    # Even an admin may not write a node's placement.
    assert log.add(Chain(ADMIN).next("placement", "n0", placement("n0", "0.0.1"), NOW_MS).encode(), NOW).reason == "not_owner"
    assert log.view("placement") == {"n0": placement("n0", "2.0.0")}


# --- attack: sequence pinning ----------------------------------------------------------------


def test_sequence_pinning_cannot_win_or_block_honest_writers() -> None:
    log = new_log()
    assert log.add(msgpack.packb([2, F0.key_id, 2**62 - 1, b"\0" * 32, "kv", "ns/a", False, {"v": b"pin"}, NOW_MS, b"\0" * 64]), NOW).reason == "malformed"
    # The largest legal seq from a faulty-but-trusted key: it waits above a gap, never in the view.
    pin = Chain(F0).next("kv", "ns/a", {"v": b"pin"}, NOW_MS, seq=2**53 - 1, prev=b"\1" * 32)
    res = log.add(pin.encode(), NOW)
    assert res.status == PENDING and res.missing == ((F0.key_id, 1, 2**53 - 2),)
    assert log.view("kv") == {}
    for i in range(3):  # honest writers are untouched: their positions are their own key's
        rec, r = log.append(N0, "kv", "ns/a", {"v": b"h%d" % i}, NOW + i)
        assert (rec.seq, r.status) == (i + 1, ACCEPTED)
    assert log.view("kv") == {"ns/a": {"v": b"h2"}}
    naive = NaiveSlots()
    naive.slots[("kv", "ns/a")] = pin  # naive (seq, signer) order: seq 2**53-1 wins forever
    assert max([pin, rec], key=lambda r: (r.seq, r.signer)) is pin


# --- attack: clock squatting ------------------------------------------------------------------


def test_squatted_position_is_rejected_and_the_real_write_is_fetched_by_heads() -> None:
    a, b = new_log(), new_log()
    r1, _ = a.append(N0, "kv", "ns/a", {"v": b"1"}, NOW)
    b.add(r1.encode(), NOW)
    # The attacker writes at n0's next position (seq 2) before n0 does, signing with its own key.
    squat = LogRecord(N0.key_id, 2, r1.id, "kv", "ns/a", False, {"v": b"evil"}, NOW_MS + 5, b"")
    squat = LogRecord(N0.key_id, 2, r1.id, "kv", "ns/a", False, {"v": b"evil"}, NOW_MS + 5, F0.sign(squat.message()))
    assert b.add(squat.encode(), NOW).reason == "bad_signature"
    r2, res = a.append(N0, "kv", "ns/a", {"v": b"2"}, NOW + 1)
    assert res.status == ACCEPTED and r2.seq == 2
    # b never got r2 (the push was lost); heads show n0 at seq 2 on a, at seq 1 on b.
    assert b.missing_from(a.heads()) == [(N0.key_id, 2, 2)]
    assert sync(b, a) == 1 and b.view("kv") == {"ns/a": {"v": b"2"}}


# --- attack: garbage that stays -----------------------------------------------------------------


def test_two_hundred_invalid_50kb_records_leave_no_trace() -> None:
    log = new_log()
    good, _ = log.append(N0, "kv", "ns/a", {"v": b"ok"}, NOW)
    before = sum(map(len, log.export()))
    for i in range(200):
        junk = LogRecord(N1.key_id, i + 1, b"" if i == 0 else b"\2" * 32, "kv", f"ns/j{i}", False, {"v": bytes(50_000)}, NOW_MS, b"")
        junk = LogRecord(junk.signer, junk.seq, junk.prev, junk.kind, junk.key, False, junk.payload, NOW_MS, F0.sign(junk.message()))
        assert log.add(junk.encode(), NOW).reason == "bad_signature"
    assert sum(map(len, log.export())) == before == len(good.encode())
    assert log.pending_count() == 0 and log.counters.invalid_by_reason == {"bad_signature": 200}


def test_pending_records_are_bounded_per_signer_and_in_total() -> None:
    log = new_log(max_pending_per_signer=8, max_pending=12)
    f0 = Chain(F0)
    gap = [f0.next("kv", f"ns/k{i}", {"v": b"x"}, NOW_MS) for i in range(30)]
    res = [log.add(r.encode(), NOW) for r in reversed(gap[1:])]  # seq 30..2: all above the gap at 1
    assert [r.status for r in res[:8]] == [PENDING] * 8
    # Each lower record evicts the highest waiting one (farthest from connecting).
    assert all(r.status == PENDING for r in res) and log.pending_count() == 8
    assert log.stats["pending_evicted"] == 21
    n1 = Chain(N1)
    n1_gap = [n1.next("kv", f"ns/m{i}", {"v": b"y"}, NOW_MS) for i in range(8)]
    out = [log.add(r.encode(), NOW).status for r in reversed(n1_gap[1:])]  # 7 more: total cap 12
    assert out == [PENDING] * 7 and log.pending_count() == 12
    # The total cap took f0's three highest waiting records (the signer waiting with the most).
    assert log.stats["pending_evicted"] == 24
    assert log.add(gap[0].encode(), NOW).status == ACCEPTED  # f0's gap closes: seq 1..6 connect
    assert sorted(log.view("kv")) == [f"ns/k{i}" for i in range(6)]
    assert log.missing() == [(N1.key_id, 1, 1)] and log.pending_count() == 7
    assert log.missing_from({F0.key_id: (30, gap[-1].id)}) == [(F0.key_id, 7, 30)]  # sync refetches the evicted


# --- attack: timestamps from the future ------------------------------------------------------------


def test_manifest_from_year_5000_is_refused_and_near_future_is_held_then_released() -> None:
    log, pub = new_log(), Chain(PUBLISHER)
    m5000 = manifest(now=YEAR_5000_MS / 1000).to_payload()
    far = pub.next("registry", "hello@1.0.0", m5000, YEAR_5000_MS, seq=1)
    assert log.add(far.encode(), NOW).reason == "far_future"
    lying = pub.next("registry", "hello@1.0.0", m5000, NOW_MS, seq=1)  # wall now, created_at 5000
    assert log.add(lying.encode(), NOW).reason == "schema"
    soon = pub.next("registry", "hello@1.0.0", manifest(now=NOW + 600).to_payload(), NOW_MS + 600_000)
    assert log.add(soon.encode(), NOW).status == HELD and log.view("registry") == {}
    assert log.next_release() == NOW + 570
    assert log.release_due(NOW + 569) == [] and log.held_count() == 1  # 600 s - 30 s tolerance
    assert [(r.status, r.visible) for r in log.release_due(NOW + 570)] == [(ACCEPTED, (soon,))]
    assert log.next_release() is None
    assert list(log.view("registry")) == ["hello@1.0.0"] and log.held_count() == 0


# --- equivocation ------------------------------------------------------------------------------


def _equivocating_set() -> list[LogRecord]:
    f = Chain(F0)
    r1 = f.next("kv", "ns/a", {"v": b"1"}, NOW_MS)
    r2a = f.next("kv", "ns/a", {"v": b"2a"}, NOW_MS + 1)
    r3a = f.next("kv", "ns/b", {"v": b"3a"}, NOW_MS + 2)
    r2b = f.next("kv", "ns/a", {"v": b"2b"}, NOW_MS + 1, seq=2, prev=r1.id)
    r3b = f.next("kv", "ns/b", {"v": b"3b"}, NOW_MS + 2, seq=3, prev=r2b.id)
    return [r1, r2a, r3a, r2b, r3b]


def test_equivocation_freezes_the_signer_identically_for_every_arrival_order() -> None:
    recs = _equivocating_set()
    outcomes = set()
    for order in itertools.permutations(recs):
        log = new_log()
        audits = [a for r in order for a in log.add(r.encode(), NOW).audit if a.event == "equivocation"]
        assert audits and audits[-1].seq == 2 and audits[-1].signer == F0.key_id
        outcomes.add((repr(log.view("kv")), tuple(log.heads().items()), tuple(log.equivocators().items())))
    assert outcomes == {(repr({"ns/a": {"v": b"1"}}), ((F0.key_id, (1, recs[0].id)),), ((F0.key_id, 2),))}


def test_equivocation_evidence_spreads_by_heads() -> None:
    r1, r2a, r3a, r2b, r3b = _equivocating_set()
    a, b = new_log(), new_log()
    for r in (r1, r2a, r3a):
        b.add(r.encode(), NOW)
    for r in (r1, r2b, r3b, r2a):
        a.add(r.encode(), NOW)
    assert a.equivocators() == {F0.key_id: 2} and b.equivocators() == {}
    assert b.missing_from(a.heads(), a.forks()) == [(F0.key_id, 2, 3)]
    converge(a, b)
    assert b.equivocators() == {F0.key_id: 2} and b.view("kv") == a.view("kv") == {"ns/a": {"v": b"1"}}
    assert b.add(f_next(r3a).encode(), NOW).reason == "frozen"


def f_next(prev: LogRecord) -> LogRecord:
    return LogRecord.create(F0, prev.seq + 1, prev.id, "kv", "ns/c", {"v": b"more"}, NOW_MS + 3)


# --- multi-writer rule, tombstones, revocation ------------------------------------------------------


def test_multi_writer_slot_latest_wall_wins_and_tombstone_wins_a_tie() -> None:
    log = new_log()
    a = Chain(N0).next("kv", "ns/a", {"v": b"n0"}, NOW_MS + 10)
    b = Chain(N1).next("kv", "ns/a", {"v": b"n1"}, NOW_MS + 5)
    t = Chain(ADMIN).next("kv", "ns/a", None, NOW_MS + 10, tombstone=True)
    log.add(b.encode(), NOW)
    log.add(a.encode(), NOW)
    assert log.view("kv") == {"ns/a": {"v": b"n0"}}
    log.add(t.encode(), NOW)
    assert log.view("kv") == {} and log.winner("kv", "ns/a") == t
    # A write made after seeing the tombstone wins over it even with a slower clock.
    rec, _ = log.append(N1, "kv", "ns/a", {"v": b"again"}, NOW)
    assert rec.wall_ms == NOW_MS + 11 and log.view("kv") == {"ns/a": {"v": b"again"}}


def test_revocation_excludes_records_after_the_cut_even_backdated() -> None:
    tr = trust()
    log = SignedLog(tr)
    op = Chain(OPERATOR)
    good = op.next("deployments", "web", deployment(active="1.0.0"), NOW_MS)
    stolen = op.next("deployments", "web", deployment(active="1.1.0"), NOW_MS - 50_000)  # backdated by the thief
    log.add(good.encode(), NOW)
    log.add(stolen.encode(), NOW)
    assert log.view("deployments")["web"]["active_version"] == "1.1.0"  # until revocation: the thief wins
    tr.revoke(OPERATOR.key_id, at_ms=NOW_MS + 1000, through_seq=1)
    assert log.view("deployments")["web"]["active_version"] == "1.0.0"
    later = op.next("deployments", "web", deployment(active="1.2.0"), NOW_MS + 2000)
    assert log.add(later.encode(), NOW + 3).reason == "revoked"


# --- sync, persistence, local writes -------------------------------------------------------------


def test_records_for_fits_frames_and_respects_the_byte_budget() -> None:
    log = new_log()
    for i in range(12):
        log.append(N0, "kv", f"ns/k{i}", {"v": bytes(20_000)}, NOW)
    batches = log.records_for([(N0.key_id, 1, 12)])
    assert [len(b.records) for b in batches] == [3, 3, 3, 3]
    assert all(len(b.encode()) <= FRAME_BYTES - 16 for b in batches)
    limited = log.records_for([(N0.key_id, 1, 12)], byte_budget=50_000)
    assert [len(b.records) for b in limited] == [2]


def test_export_load_round_trip_and_next_seq_never_reuses_a_position() -> None:
    a = new_log()
    for i in range(5):
        a.append(N0, "kv", "ns/a", {"v": b"%d" % i}, NOW + i)
    b = new_log()
    assert b.load(reversed(a.export()), NOW + 9) == {PENDING: 4, ACCEPTED: 1}
    c = new_log()
    recs = [LogRecord.decode(x) for x in a.export()]
    assert [c.add(x, NOW).visible for x in (a.export()[2], a.export()[0])] == [(), (recs[0],)]
    assert c.add(a.export()[1], NOW).visible == (recs[1], recs[2])  # closing the gap shows both
    assert b.export() == a.export() and b.view("kv") == a.view("kv") and b.next_seq_for(N0.key_id) == 6
    lost = new_log()  # a store that lost its middle rows: no reuse of seq 2..5
    lost.load([a.export()[0], a.export()[4]], NOW)
    assert lost.next_seq_for(N0.key_id) == 6
    with pytest.raises(LogError, match="gap below seq 6"):
        lost.append(N0, "kv", "ns/a", {"v": b"x"}, NOW)
    sync(lost, a)
    rec, res = lost.append(N0, "kv", "ns/a", {"v": b"x"}, NOW + 10)
    assert (rec.seq, res.status) == (6, ACCEPTED)


def test_a_third_record_proving_a_lower_fork_is_kept_in_any_order() -> None:
    f = Chain(F0)
    r1, r2 = f.next("kv", "ns/a", {"v": b"1"}, NOW_MS), f.next("kv", "ns/a", {"v": b"2"}, NOW_MS + 1)
    r3a = f.next("kv", "ns/a", {"v": b"3a"}, NOW_MS + 2)
    r3b = f.next("kv", "ns/a", {"v": b"3b"}, NOW_MS + 2, seq=3, prev=r2.id)
    r3c = f.next("kv", "ns/a", {"v": b"3c"}, NOW_MS + 2, seq=3, prev=b"\5" * 32)  # claims another seq 2
    seen = set()
    for order in itertools.permutations([r1, r2, r3a, r3b, r3c]):
        log = new_log()
        for r in order:
            log.add(r.encode(), NOW)
        seen.add((repr(log.view("kv")), tuple(log.equivocators().items())))
    assert seen == {(repr({"ns/a": {"v": b"1"}}), ((F0.key_id, 2),))}


def test_frozen_replica_missing_the_prefix_fetches_it_and_then_spreads_the_evidence() -> None:
    # Found by the sync property (seed=7758): a replica frozen by link evidence alone held no
    # prefix, advertised no head, and never asked for the prefix, so the two never converged.
    f = Chain(F0)
    r1, r2, r3 = (f.next("kv", "ns/a", {"v": b"%d" % i}, NOW_MS + i) for i in range(3))
    r3b = f.next("kv", "ns/a", {"v": b"3b"}, NOW_MS + 2, seq=3, prev=b"\5" * 32)
    a, b = new_log(), new_log()
    for r in (r2, r3b):
        a.add(r.encode(), NOW)
    for r in (r1, r3):
        b.add(r.encode(), NOW)
    assert a.equivocators() == {F0.key_id: 2} and a.heads() == {}
    assert a.missing_from(b.heads(), b.forks()) == [(F0.key_id, 1, 1)]
    converge(a, b)
    assert b.equivocators() == a.equivocators() and b.view("kv") == a.view("kv") == {"ns/a": {"v": b"0"}}


def test_role_removed_takes_records_out_of_the_view_at_once() -> None:
    tr = trust()
    log = SignedLog(tr)
    log.add(Chain(OPERATOR).next("routes", "GET */api/*", route() | {"method": "GET"}, NOW_MS).encode(), NOW)
    assert list(log.view("routes")) == ["GET */api/*"]
    tr.trust._keys[OPERATOR.key_id] = tr.trust._keys[OPERATOR.key_id].__class__(OPERATOR.public_raw, frozenset(), tr.trust._keys[OPERATOR.key_id].public)
    assert log.view("routes") == {} and log.winner("routes", "GET */api/*") is None


def test_held_records_are_bounded_per_signer() -> None:
    log = new_log(max_held_per_signer=3)
    c = Chain(F0)
    res = [log.add(c.next("kv", f"ns/k{i}", {"v": b"x"}, NOW_MS + 60_000 + i).encode(), NOW).status for i in range(5)]
    assert res == [HELD] * 3 + [REJECTED] * 2 and log.held_count() == 3
    assert log.counters.invalid_by_reason == {"held_full": 2}
    assert log.add(Chain(N0).next("kv", "ns/z", {"v": b"y"}, NOW_MS + 60_000).encode(), NOW).status == HELD


def test_sync_does_not_ask_for_what_it_would_refuse_or_already_holds() -> None:
    src, tr = new_log(), trust()
    dst = SignedLog(tr)
    for i in range(4):
        src.append(OPERATOR, "routes", f"GET */r{i}/*", route(f"/r{i}/*") | {"method": "GET"}, NOW + i)
    tr.revoke(OPERATOR.key_id, at_ms=NOW_MS + 10**6, through_seq=2)
    assert dst.missing_from(src.heads()) == [(OPERATOR.key_id, 1, 2)]  # not 3..4: past the cut
    sync(dst, src)
    assert dst.missing_from(src.heads()) == [] and sorted(dst.view("routes")) == ["GET */r0/*", "GET */r1/*"]
    # A record held back for its future wall time is not requested again every round.
    c, a, b = Chain(N0), new_log(), new_log()
    r1, r2 = c.next("kv", "ns/a", {"v": b"1"}, NOW_MS), c.next("kv", "ns/a", {"v": b"2"}, NOW_MS + 60_000)
    a.add(r1.encode(), NOW + 60)
    a.add(r2.encode(), NOW + 60)
    b.add(r2.encode(), NOW)
    assert b.held_count() == 1 and b.missing_from(a.heads()) == [(N0.key_id, 1, 1)]


def test_a_damaged_store_row_is_refused_on_load_and_fetched_back_by_heads() -> None:
    a = new_log()
    for i in range(4):
        a.append(N0, "kv", f"ns/k{i}", {"v": b"%d" % i}, NOW + i)
    rows = a.export()
    damaged = bytearray(rows[1])
    damaged[-30] ^= 0x40  # a flipped bit inside the signature
    b = new_log()
    assert b.load([rows[0], bytes(damaged), rows[2], rows[3]], NOW + 9) == {ACCEPTED: 1, REJECTED: 1, PENDING: 2}
    assert b.missing() == [(N0.key_id, 2, 2)] and sorted(b.view("kv")) == ["ns/k0"]
    assert sync(b, a) == 1 and b.export() == rows and b.view("kv") == a.view("kv")


def test_a_local_write_the_log_refuses_consumes_no_sequence_number() -> None:
    log = new_log()
    rec, res = log.append(N0, "placement", "n1", placement("n1", "1.0.0"), NOW)  # not n0's slot
    assert (rec.seq, res.status, res.reason) == (1, REJECTED, "not_owner") and log.export() == []
    rec, res = log.append(N0, "placement", "n0", placement("n0", "1.0.0"), NOW)
    assert (rec.seq, res.status) == (1, ACCEPTED)


def test_history_lists_every_in_view_revision_of_a_slot_in_winning_order() -> None:
    log = new_log()
    op, ad = Chain(OPERATOR), Chain(ADMIN)
    r1 = op.next("deployments", "web", deployment(active="1.0.0"), NOW_MS)
    r2 = ad.next("deployments", "web", deployment(active="1.1.0"), NOW_MS + 5)
    r3 = op.next("deployments", "web", deployment(active="1.2.0"), NOW_MS + 9)
    other = op.next("routes", "GET */api/*", route() | {"method": "GET"}, NOW_MS + 10)
    for r in (r3, other, r2, r1):
        log.add(r.encode(), NOW)
    assert log.history("deployments", "web") == [r1, r2, r3]
    assert log.winner("deployments", "web") == r3


def test_equivocation_evidence_is_kept_past_full_pending_bounds() -> None:
    # Found by the tiny-bounds sync property: with the pending set full, the two records of a
    # fork were refused one after the other, so the fork a peer advertised could never be proven.
    f = Chain(F0)
    r = [f.next("kv", "ns/a", {"v": b"%d" % i}, NOW_MS + i) for i in range(5)]
    r5b = f.next("kv", "ns/b", {"v": b"5b"}, NOW_MS + 4, seq=5, prev=b"\6" * 32)
    log = new_log(max_pending_per_signer=1)
    assert log.add(r[2].encode(), NOW).status == PENDING  # fills f0's one pending slot
    first = log.add(r[4].encode(), NOW)
    assert first.reason == "pending_full"  # seq 5 > seq 3: not worth evicting for
    second = log.add(r5b.encode(), NOW)  # with the refused first one: two records at seq 5
    assert second.stored and [a.event for a in second.audit] == ["equivocation"]
    assert log.equivocators() == {F0.key_id: 4}
    assert {x for b in log.records_for([(F0.key_id, 4, 5)]) for x in b.records} == {r[4].encode(), r5b.encode()}
