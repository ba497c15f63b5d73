"""The durable event queue: one sqlite file (``events.sqlite`` in the data dir), one row per
(subscription, event) still to deliver.

Blocking: every method runs on a worker thread (the bus's writer task batches publishes into one
transaction, a group commit). ``synchronous=FULL`` in WAL mode makes each commit fsync the log
before it returns, so a publish acknowledged after :meth:`EventStore.apply` survives a crash or a
power loss. A row is deleted only once its delivery succeeded or its dead letter was published.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
import msgpack

from mesh.events.event import Event

FILE = "events.sqlite"


class EventStoreError(Exception):
    """The event store cannot be opened or written (disk full, permissions, a damaged file)."""


class EventStore:
    """Rows ``(subscription, event id, event)`` in admission order."""

    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir) / FILE
        self._lock = threading.Lock()
        self.moved_aside: Path | None = None  # a damaged file set aside at open (its events are lost)
        try:
            self.db = self._connect()
        except sqlite3.DatabaseError:
            # Not a database any more (a torn or overwritten file): keep it for inspection, start empty.
            n = 1
            while self.path.with_name(f"{FILE}.corrupt-{n}").exists():
                n += 1
            self.moved_aside = self.path.with_name(f"{FILE}.corrupt-{n}")
            self.path.rename(self.moved_aside)
            for tail in ("-wal", "-shm"):
                self.path.with_name(FILE + tail).unlink(missing_ok=True)
            try:
                self.db = self._connect()
            except sqlite3.Error as exc:
                raise EventStoreError(f"cannot open the event store {self.path}: {exc}") from None
        except (sqlite3.Error, OSError) as exc:
            raise EventStoreError(f"cannot open the event store {self.path}: {exc}") from None

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS queue (n INTEGER PRIMARY KEY AUTOINCREMENT, sub TEXT NOT NULL, "
                "eid TEXT NOT NULL, event BLOB NOT NULL, UNIQUE(sub, eid))")
        except BaseException:
            db.close()
            raise
        return db

    def load(self) -> tuple[list[tuple[str, Event]], int]:
        """Every queued ``(subscription, event)`` oldest first, and how many rows could not be decoded."""
        out: list[tuple[str, Event]] = []
        with self._lock:
            rows = self.db.execute("SELECT sub, event FROM queue ORDER BY n").fetchall()
        for sub, blob in rows:
            try:
                out.append((sub, Event.from_row(msgpack.unpackb(blob, raw=False))))
            except Exception:  # a damaged row (msgpack raises several unrelated types): skipped, counted
                continue
        return out, len(rows) - len(out)

    def apply(self, adds: list[tuple[str, Event]], deletes: list[tuple[str, str]]) -> None:
        """One transaction: add rows, delete rows; durable on return."""
        try:
            with self._lock:
                self.db.execute("BEGIN IMMEDIATE")
                try:
                    if adds:
                        self.db.executemany(
                            "INSERT OR IGNORE INTO queue (sub, eid, event) VALUES (?, ?, ?)",
                            [(s, e.id, msgpack.packb(e.to_row(), use_bin_type=True)) for s, e in adds])
                    if deletes:
                        self.db.executemany("DELETE FROM queue WHERE sub = ? AND eid = ?", deletes)
                    self.db.execute("COMMIT")
                except BaseException:
                    self.db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise EventStoreError(f"event store {self.path}: {exc}") from None

    def count(self) -> int:
        with self._lock:
            return int(self.db.execute("SELECT COUNT(*) FROM queue").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self.db.close()
