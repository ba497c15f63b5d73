"""Durable local store of CRDT updates: sqlite (WAL, synchronous=FULL) or in memory.

Every update is appended and committed before the write that produced it is acknowledged.
Each row carries a checksum (BLAKE2b-64 over row id, kind and data): a row whose bytes were
damaged on disk is detected at load, skipped, counted and deleted, and every other row —
in particular every acknowledged row before it — is still recovered (anything a damaged
row held is repaired by anti-entropy from peers). A torn WAL tail is discarded by sqlite
itself (frame checksums), which only ever loses the unacknowledged last transaction.
A file that is not a database at all is moved aside (``*.corrupt-N``) and a fresh store
is started, with a clear log line and counter.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import struct
from pathlib import Path
from typing import Protocol

import structlog

from crdt.errors import StoreCorruptError, StoreError
from crdt.metrics import Counters

KIND_UPDATE = 0
KIND_SNAPSHOT = 1
DB_NAME = "intent.sqlite3"


def row_checksum(row_id: int, kind: int, data: bytes) -> bytes:
    return hashlib.blake2b(struct.pack(">qB", row_id, kind) + data, digest_size=8).digest()


class UpdateStore(Protocol):
    """What the node needs from a store; both implementations satisfy it."""

    def load(self) -> list[bytes]: ...
    def append(self, update: bytes) -> int: ...
    def compact(self, snapshot: bytes) -> None: ...
    def row_count(self) -> int: ...
    def close(self) -> None: ...


class MemoryStore:
    """Same interface, kept in memory (simulations of thousands of nodes). Survives a simulated restart
    if the same object is handed to the new node."""

    def __init__(self, counters: Counters | None = None) -> None:
        self._rows: list[bytes] = []
        self.counters = counters if counters is not None else Counters()

    def load(self) -> list[bytes]:
        return list(self._rows)

    def append(self, update: bytes) -> int:
        self._rows.append(bytes(update))
        self.counters.store_appends += 1
        return len(self._rows)

    def compact(self, snapshot: bytes) -> None:
        self._rows = [bytes(snapshot)]
        self.counters.store_compactions += 1

    def row_count(self) -> int:
        return len(self._rows)

    def close(self) -> None:
        pass


class SqliteStore:
    """Append-only update log with snapshots in one sqlite file under ``data_dir``."""

    def __init__(self, data_dir: str | os.PathLike[str], counters: Counters | None = None, on_corrupt: str = "quarantine") -> None:
        self.dir = Path(data_dir)
        self.path = self.dir / DB_NAME
        self.counters = counters if counters is not None else Counters()
        self.log = structlog.get_logger("crdt.store").bind(path=str(self.path))
        self.corrupt_rows: list[int] = []
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create data dir {self.dir}: {exc.strerror}") from None
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            if on_corrupt != "quarantine":
                raise StoreCorruptError(f"{self.path} is not a usable database ({exc}); move it aside or restore it") from None
            self._quarantine(str(exc))
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("CREATE TABLE IF NOT EXISTS log (id INTEGER PRIMARY KEY, kind INTEGER NOT NULL, data BLOB NOT NULL, crc BLOB NOT NULL)")
            db.execute("SELECT count(*) FROM log").fetchone()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _quarantine(self, why: str) -> None:
        n = 0
        while (self.dir / f"{DB_NAME}.corrupt-{n}").exists():
            n += 1
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(self.path) + suffix)
            if p.exists():
                os.replace(p, self.dir / f"{DB_NAME}{suffix}.corrupt-{n}")
        self.counters.store_corrupt_rows += 1
        self.log.error("crdt_store_quarantined", reason=why, moved_to=f"{DB_NAME}.corrupt-{n}")

    def load(self) -> list[bytes]:
        """Every intact row in order (snapshot first); damaged rows are counted, logged and dropped."""
        try:
            ids = [r[0] for r in self._db.execute("SELECT id FROM log ORDER BY id")]
        except sqlite3.DatabaseError as exc:
            raise StoreCorruptError(f"cannot list rows of {self.path}: {exc}") from None
        out: list[bytes] = []
        bad: list[int] = []
        for rid in ids:
            try:
                row = self._db.execute("SELECT kind, data, crc FROM log WHERE id=?", (rid,)).fetchone()
            except sqlite3.DatabaseError:
                row = None
            if row is None or not isinstance(row[1], bytes) or row_checksum(rid, row[0], row[1]) != row[2]:
                bad.append(rid)
                continue
            out.append(row[1])
        if bad:
            self.corrupt_rows.extend(bad)
            self.counters.store_corrupt_rows += len(bad)
            self.log.error("crdt_store_corrupt_rows", rows=bad[:20], count=len(bad))
            try:
                with self._db:
                    self._db.execute("BEGIN IMMEDIATE")
                    self._db.executemany("DELETE FROM log WHERE id=?", [(i,) for i in bad])
            except sqlite3.DatabaseError as exc:
                self.log.error("crdt_store_corrupt_rows_not_removed", error=str(exc))
        return out

    def append(self, update: bytes) -> int:
        """Append and commit (fsync'd by synchronous=FULL) before returning the row id."""
        data = bytes(update)
        try:
            self._db.execute("BEGIN IMMEDIATE")
            rid = (self._db.execute("SELECT coalesce(max(id), 0) + 1 FROM log").fetchone())[0]
            self._db.execute("INSERT INTO log (id, kind, data, crc) VALUES (?, ?, ?, ?)", (rid, KIND_UPDATE, data, row_checksum(rid, KIND_UPDATE, data)))
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreError(f"cannot append to {self.path}: {exc} (is the disk full or read-only?)") from None
        self.counters.store_appends += 1
        return int(rid)

    def compact(self, snapshot: bytes) -> None:
        """Replace every row with one snapshot of the merged state, atomically."""
        data = bytes(snapshot)
        try:
            self._db.execute("BEGIN IMMEDIATE")
            rid = (self._db.execute("SELECT coalesce(max(id), 0) + 1 FROM log").fetchone())[0]
            self._db.execute("DELETE FROM log")
            self._db.execute("INSERT INTO log (id, kind, data, crc) VALUES (?, ?, ?, ?)", (rid, KIND_SNAPSHOT, data, row_checksum(rid, KIND_SNAPSHOT, data)))
            self._db.execute("COMMIT")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreError(f"cannot compact {self.path}: {exc}") from None
        self.counters.store_compactions += 1
        self.log.info("crdt_store_compacted", bytes=len(data))

    def row_count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM log").fetchone()[0])

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def close(self) -> None:
        self._db.close()
