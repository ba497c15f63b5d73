"""A damaged or lost store: keep every intact record, refetch the rest, never reuse a sequence number.

Each scenario: node n000 writes on a sqlite store and its records reach n001 and n002 (memory
stores). Then n000's store file is damaged, and n000 restarts on it.
"""

from __future__ import annotations

import random
import re
import sqlite3
from pathlib import Path

import pytest

from crdt.heads import HeadsDigest
from crdt.intent import IntentNode
from crdt.signedlog import StoreRecovering
from crdt.store import DB_NAME, SqliteStore
from crdt_helpers import Pump, key, trust_for

NAMES = ["n000", "n001", "n002"]


def _node(name: str, store: SqliteStore | None = None, audit: list | None = None, seed: int = 0) -> IntentNode:
    return IntentNode(name, key("node:" + name), trust_for(NAMES), random.Random(f"{seed}:{name}"), store=store,
                      audit_sink=None if audit is None else audit.append)


def _mesh_with_writes(d: Path, n_records: int) -> tuple[dict[str, IntentNode], Pump]:
    nodes = {"n000": _node("n000", SqliteStore(d)), "n001": _node("n001"), "n002": _node("n002")}
    pump = Pump(nodes, seed=1)
    for i in range(n_records):
        nodes["n000"].set("app", f"k{i}", (f"MARK{i:02d}" * 40).encode())
    for _ in range(6):
        pump.step()
    signer = nodes["n000"].node_key.key_id
    for name in ("n001", "n002"):
        assert nodes[name].doc.records.heads()[signer][0] == n_records, name  # the peers hold every record
    store = nodes["n000"].store
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    return nodes, pump


def _restart(nodes: dict[str, IntentNode], pump: Pump, d: Path, audit: list) -> IntentNode:
    r = _node("n000", SqliteStore(d), audit, seed=7)
    nodes["n000"] = r
    pump.nodes = nodes
    return r


def _recover(r: IntentNode, pump: Pump, steps: int = 40) -> int:
    for i in range(steps):
        if r.recovering is None:
            return i
        pump.step()
    raise AssertionError(f"still recovering after {steps} steps: {r.recovering}")


def _no_equivocation(nodes: dict[str, IntentNode]) -> None:
    for name, n in nodes.items():
        assert n.doc.records.equivocators() == {}, name


def test_one_damaged_page_loses_only_its_rows_and_peers_refill_them(tmp_path: Path) -> None:
    d = tmp_path / "a"
    n_records = 31
    nodes, pump = _mesh_with_writes(d, n_records)
    path = d / DB_NAME
    data = bytearray(path.read_bytes())
    page_size = 4096
    page = data.find(b"MARK15MARK15") // page_size
    on_page = set(re.findall(rb"MARK(\d\d)", bytes(data[page * page_size:(page + 1) * page_size])))
    assert 0 < len(on_page) < n_records // 2
    data[page * page_size:(page + 1) * page_size] = random.Random(5).randbytes(page_size)
    path.write_bytes(bytes(data))

    audit: list = []
    r = _restart(nodes, pump, d, audit)
    signer = r.node_key.key_id
    held = r.doc.records.export()
    assert len(held) >= n_records - len(on_page)  # every intact record kept (the old code kept 0 of 31)
    dmg = r.store.damage
    assert dmg is not None and dmg.salvaged >= n_records - len(on_page), dmg
    assert r.counters.store_damaged == 1 and r.counters.store_rows_salvaged == dmg.salvaged
    assert dmg.lost_rows == len(on_page)  # said loudly: exactly the rows of the damaged page
    assert [e.reason for e in audit if e.root == "store"] == ["store_damaged"]
    assert (d / f"{DB_NAME}.corrupt-0").exists()  # the damaged file is kept for inspection
    # Writing now could reuse a seq the peers hold: refused, clearly, until peers answered.
    with pytest.raises(StoreRecovering, match="damaged"):
        r.set("app", "new", b"x")
    assert r.counters.store_writes_refused_recovering == 1
    _recover(r, pump)
    assert [e.reason for e in audit if e.root == "store"] == ["store_damaged", "store_recovered"]
    assert all(r.get("app", f"k{i}") == (f"MARK{i:02d}" * 40).encode() for i in range(n_records))
    r.set("app", "new", b"x")
    assert r.doc.effective("kv", "app/new").seq == n_records + 1
    for _ in range(4):
        pump.step()
    _no_equivocation(nodes)
    assert all(n.get("app", "new") == b"x" for n in nodes.values())
    # The recovered rows are durable in the fresh file: a second restart is clean.
    r.store.close()
    again = _node("n000", SqliteStore(d), seed=8)
    assert again.recovering is None and again.doc.records.heads()[signer][0] == n_records + 1


@pytest.mark.parametrize("damage", ["truncate", "delete", "drop_table"])
def test_a_lost_store_never_reuses_a_sequence_number(tmp_path: Path, damage: str) -> None:
    d = tmp_path / "a"
    nodes, pump = _mesh_with_writes(d, 5)
    path = d / DB_NAME
    if damage == "truncate":
        path.write_bytes(b"")
    elif damage == "delete":
        path.unlink()
    else:
        db = sqlite3.connect(path)
        db.execute("DROP TABLE log")
        db.commit()
        db.close()
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    audit: list = []
    r = _restart(nodes, pump, d, audit)
    signer = r.node_key.key_id
    assert r.doc.records.heads() == {}  # nothing left locally
    # The old code wrote seq 1 here: a second record at a seq the peers hold (equivocation).
    with pytest.raises(StoreRecovering):
        r.set("app", "k0", b"again")
    assert r.store.damage is not None and r.recovering is not None
    with pytest.raises(StoreRecovering):  # the remote-signer path (CLI prepare/submit) is gated too
        r.head(signer, "kv", "app/k0", 0.0)
    _recover(r, pump)
    r.set("app", "k0", b"again")
    assert r.doc.effective("kv", "app/k0").seq == 6  # the peers' head (5) + 1
    for _ in range(4):
        pump.step()
    _no_equivocation(nodes)
    assert all(n.get("app", "k0") == b"again" for n in nodes.values())
    assert [e.reason for e in audit if e.root == "store"] == ["store_damaged", "store_recovered"]


def test_one_peer_is_not_enough_when_two_are_live(tmp_path: Path) -> None:
    """A fresh peer that holds none of our records must not end recovery alone."""
    d = tmp_path / "a"
    nodes, pump = _mesh_with_writes(d, 3)
    (d / DB_NAME).write_bytes(b"")
    r = _restart(nodes, pump, d, [])
    fresh = _node("n002", seed=3)  # a new empty node replaces n002
    nodes["n002"] = fresh
    r.tick(0.0, ["n001", "n002"])
    # n002's heads (none, like ours) show nothing we lack; that is one peer of two.
    r.receive("n002", HeadsDigest(fresh.doc.records.heads_digest()), 0.1)
    assert r.recovering is not None
    with pytest.raises(StoreRecovering):
        r.set("app", "x", b"1")
    _recover(r, pump)
    r.set("app", "x", b"1")
    assert r.doc.effective("kv", "app/x").seq == 4


def test_a_new_store_and_an_intact_store_write_at_once(tmp_path: Path) -> None:
    n = _node("n000", SqliteStore(tmp_path / "a"))
    assert n.recovering is None and n.store.damage is None
    n.set("app", "k", b"v")
    n.store.close()
    again = _node("n000", SqliteStore(tmp_path / "a"), seed=1)
    assert again.recovering is None
    again.set("app", "k", b"w")
    assert again.doc.effective("kv", "app/k").seq == 2
