import hashlib
import os
import random
import shutil

import pytest

from crdt.blob import BlobTransfer, MemoryBlobStore
from crdt.errors import StoreCorruptError
from crdt.messages import BlobChunk, BlobMissing, BlobRequest
from crdt.intent import IntentNode
from crdt.heads import HeadsDigest
from crdt.signedlog import StoreRecovering
from crdt.store import DB_NAME, SqliteStore
from crdt_helpers import PUBLISHER, key, manifest, trust_for


def open_node(d, seed=0):
    return IntentNode("n000", key("node:n000"), trust_for(["n000"]), random.Random(seed), store=SqliteStore(d))


def crash_copy(src, dst):
    """Copy the db and its WAL while the connection is still open: what a power cut leaves."""
    os.makedirs(dst)
    for suffix in ("", "-wal"):
        p = os.path.join(src, DB_NAME + suffix)
        if os.path.exists(p):
            shutil.copy(p, os.path.join(dst, DB_NAME + suffix))


def test_restart_recovers_acknowledged_state(tmp_path):
    n = open_node(tmp_path / "a")
    for i in range(30):
        n.set("app", f"k{i}", f"v{i}".encode())
    n.publish(manifest("m", "1.0.0"), PUBLISHER, 1)
    crash_copy(tmp_path / "a", tmp_path / "b")
    r = open_node(tmp_path / "b", seed=1)
    assert r.list("app") == n.list("app") and r.get("app", "k29") == b"v29"
    assert r.doc.view_digest() == n.doc.view_digest()
    # the restarted node continues its per-signer sequence
    assert r.set("app", "k0", b"new") is None and r.doc.effective("kv", "app/k0").seq > n.doc.effective("kv", "app/k0").seq


def test_one_row_per_record_and_nothing_is_compacted_away(tmp_path):
    n = open_node(tmp_path / "a")
    for i in range(50):
        n.set("app", "k", f"v{i}".encode())
    assert n.store.row_count() == 50
    n.compact_after_rows = 10
    # Records are never superseded in storage: an older record is still part of the chain.
    assert not n.maybe_compact() and n.store.row_count() == 50
    n.set("app", "k2", b"x")
    n.store.close()
    r = open_node(tmp_path / "a", seed=2)
    assert r.get("app", "k") == b"v49" and r.get("app", "k2") == b"x"


def test_flipped_bytes_in_a_row_are_detected_and_other_rows_kept(tmp_path):
    from crdt.signedlog import LogError
    from crdt_helpers import share

    n = open_node(tmp_path / "a")
    peer = IntentNode("n001", key("node:n001"), trust_for(["n000", "n001"]), random.Random(9))
    for i in range(10):
        n.set("app", f"k{i}", (f"MARK{i:02d}" * 20).encode())
    share(n, peer)
    n.store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    n.store.close()
    path = tmp_path / "a" / DB_NAME
    data = bytearray(path.read_bytes())
    pos = data.find(b"MARK07MARK07")
    assert pos > 0
    data[pos + 3] ^= 0xFF
    path.write_bytes(bytes(data))
    r = open_node(tmp_path / "a", seed=3)
    assert r.counters.store_corrupt_rows == 1 and r.store.corrupt_rows
    assert r.get("app", "k7") is None  # the damaged row is gone (peers repair it)
    assert all(r.get("app", f"k{i}") is not None for i in range(7))
    # The later rows are intact and kept, but wait above the gap in the chain: not in the view,
    # and the node may not write (it would reuse seq 8) until a peer filled the gap.
    assert r.doc.records.pending_count() == 2 and r.get("app", "k8") is None
    with pytest.raises(LogError):
        r.set("app", "new", b"x")
    share(peer, r)
    assert all(r.get("app", f"k{i}") is not None for i in range(10))
    # A damaged row may have been our newest record: the node writes again only once a peer's
    # heads show that it holds everything that peer holds (tests/crdt/test_store_recovery.py).
    with pytest.raises(StoreRecovering):
        r.set("app", "new", b"x")
    r.tick(0.0, ["n001"])
    r.receive("n001", HeadsDigest(peer.doc.records.heads_digest()), 0.0)
    assert r.recovering is None
    r.set("app", "new", b"x")
    assert r.doc.effective("kv", "app/new").seq == 11


def test_truncated_wal_keeps_prefix(tmp_path):
    n = open_node(tmp_path / "a")
    n.set("app", "first", b"1")
    n.store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for i in range(20):
        n.set("app", f"later{i}", b"x" * 200)
    crash_copy(tmp_path / "a", tmp_path / "b")
    wal = tmp_path / "b" / (DB_NAME + "-wal")
    size = wal.stat().st_size
    with open(wal, "r+b") as f:
        f.truncate(size // 2 + 100)  # torn in the middle of a frame
    r = open_node(tmp_path / "b", seed=4)
    keys = r.list("app")
    assert "first" in keys
    got = sorted(int(k[5:]) for k in keys if k.startswith("later"))
    assert got == list(range(len(got))) and len(got) < 20  # an exact prefix survives


def test_garbage_database_file_is_quarantined(tmp_path):
    d = tmp_path / "a"
    d.mkdir()
    (d / DB_NAME).write_bytes(b"this is not sqlite" * 100)
    n = open_node(d)
    assert (d / f"{DB_NAME}.corrupt-0").exists()
    assert n.store.damage is not None and n.store.damage.salvaged == 0
    with pytest.raises(StoreRecovering):  # whatever the file held is gone: learn our seqs from peers first
        n.set("app", "k", b"v")
    n.tick(0.0, ["n001"])
    n.receive("n001", HeadsDigest(IntentNode("n001", key("node:n001"), trust_for(["n000", "n001"]), random.Random(1)).doc.records.heads_digest()), 0.0)
    n.set("app", "k", b"v")
    with pytest.raises(StoreCorruptError):
        (tmp_path / "b").mkdir()
        (tmp_path / "b" / DB_NAME).write_bytes(b"junk" * 500)
        SqliteStore(tmp_path / "b", on_corrupt="raise")


# --- blobs ---------------------------------------------------------------------


def wire(nodes, out, drop=frozenset(), limit=10_000):
    """Deliver messages between BlobTransfers until quiet; drop anything to/from `drop`."""
    q = [("me", dst, m) for dst, m in out]
    while q and limit:
        limit -= 1
        src, dst, m = q.pop(0)
        if dst in drop or src in drop:
            continue
        q += [(dst, d2, m2) for d2, m2 in nodes[dst].receive(src, m, 0.0)]


class Liar(MemoryBlobStore):
    def read(self, sha256, offset, length):
        data = super().read(sha256, offset, length)
        return bytes(b ^ 1 for b in data)


def blob_setup(data, liars=(), names=("near", "mid", "far")):
    sha = hashlib.sha256(data).hexdigest()
    nodes = {}
    for nm in names:
        store = Liar() if nm in liars else MemoryBlobStore()
        MemoryBlobStore.put(store, sha, data)
        nodes[nm] = BlobTransfer(store, chunk_size=1000, window=3)
    me = BlobTransfer(MemoryBlobStore(), chunk_size=1000, window=3)
    nodes["me"] = me
    cands = [("far", 0.3), ("near", 0.01), ("mid", 0.1)]
    return sha, nodes, me, cands


def test_blob_fetch_nearest_first_and_verified():
    data = os.urandom(10_500)
    sha, nodes, me, cands = blob_setup(data)
    out = me.fetch(sha, cands, 0.0, expected_size=len(data))
    assert {dst for dst, _ in out} == {"near"} and len(out) == 1
    wire(nodes, out)
    assert me.status(sha).status == "done" and me.store.read(sha, 0, 20_000) == data
    assert me.status(sha).contributors == {"near"}


def test_blob_lying_peer_is_marked_bad_and_next_peer_used():
    data = os.urandom(5000)
    sha, nodes, me, cands = blob_setup(data, liars=("near",))
    wire(nodes, me.fetch(sha, cands, 0.0, len(data)))
    st = me.status(sha)
    assert st.status == "done" and me.store.read(sha, 0, 10_000) == data
    assert "near" in me.bad_peers and me.counters.blob_hash_mismatch == 1


def test_blob_resume_after_peer_death():
    data = os.urandom(9000)
    sha, nodes, me, cands = blob_setup(data)
    out = me.fetch(sha, cands, 0.0, len(data))
    # deliver only the first exchange from "near", then it dies
    first = out[0]
    replies = nodes["near"].receive("me", first[1], 0.0)
    more = []
    for dst, m in replies:
        more += me.receive("near", m, 0.0)
    got_before = len(me.status(sha).contiguous)
    assert got_before == 1000
    out2 = me.peer_dead("near", 1.0)
    assert out2 and all(dst == "mid" for dst, _ in out2)
    assert min(m.offset for _, m in out2) == got_before  # resumes, does not restart
    wire(nodes, out2)
    assert me.status(sha).status == "done" and me.store.read(sha, 0, 10_000) == data
    assert me.status(sha).contributors == {"near", "mid"}


def test_blob_timeout_moves_on_and_all_fail_is_reported():
    data = os.urandom(3000)
    sha, nodes, me, cands = blob_setup(data)
    me.fetch(sha, cands, 0.0, len(data))
    assert me.next_deadline() == 5.0
    out = me.tick(6.0)
    assert out and out[0][0] == "mid"
    me.tick(12.0)
    me.tick(18.0)
    st = me.status(sha)
    assert st.status == "failed" and "no candidate" in st.reason and me.counters.blob_fetch_failed == 1


def test_blob_size_lie_and_verify_hook():
    data = os.urandom(2000)
    sha, nodes, me, cands = blob_setup(data)
    wire(nodes, me.fetch(sha, cands, 0.0, expected_size=1999))
    assert me.status(sha).status == "failed" and me.bad_peers == {"near", "mid", "far"}
    sha, nodes, me, cands = blob_setup(data)

    def refuse(b):
        raise ValueError("publisher signature does not verify")

    wire(nodes, me.fetch(sha, cands, 0.0, len(data), verify=refuse))
    assert me.status(sha).status == "failed" and "signature" in me.status(sha).reason and not me.store.has(sha)


def test_a_fetch_without_a_manifest_size_or_above_the_cap_is_refused():
    data = os.urandom(3000)
    sha, nodes, me, cands = blob_setup(data)
    from model.manifest import MAX_MODULE_BYTES  # the largest module a signed manifest may name

    for size in (None, -1, 2.5, "3000", MAX_MODULE_BYTES + 1):
        assert me.fetch(sha, cands, 0.0, size) == []
        st = me.status(sha)
        assert st.status == "failed" and st.reason.startswith("refused: expected size")
    assert me.counters.blob_fetch_refused == me.counters.blob_fetch_failed == 5
    assert me.next_deadline() is None and not me.store.has(sha)


def test_a_peer_claiming_a_1_tib_blob_costs_one_request_and_is_not_asked_again():
    from crdt.messages import BlobChunk

    me = BlobTransfer(MemoryBlobStore(), chunk_size=4096, window=4)
    sha = "ab" * 32
    (first,) = me.fetch(sha, [("liar", 0.01)], 0.0, expected_size=10_000)
    assert first == ("liar", first[1]) and first[1].offset == 0
    out = me.receive("liar", BlobChunk(sha, 0, bytes(4096), 1 << 40), 0.1)
    st = me.status(sha)
    assert out == [] and st.status == "failed" and "liar" in me.bad_peers
    assert len(st.contiguous) == 0 and not st.pending and not st.inflight
    assert me.counters.blob_bytes_fetched == 0
    # A later fetch does not go back to it.
    assert me.fetch(sha, [("liar", 0.01)], 1.0, expected_size=10_000) == []


def test_blob_server_answers_missing():
    srv = BlobTransfer(MemoryBlobStore())
    sha = "a" * 64
    assert srv.receive("x", BlobRequest(sha, 0, 10), 0.0) == [("x", BlobMissing(sha))]
