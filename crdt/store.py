"""Durable local store of CRDT updates: sqlite (WAL, synchronous=FULL) or in memory.

Every update is appended and committed before the write that produced it is acknowledged.
Each row carries a checksum (BLAKE2b-64 over row id, kind and data): a row whose bytes were
damaged on disk is detected at load, skipped, counted and deleted, and every other row —
in particular every acknowledged row before it — is still recovered (anything a damaged
row held is repaired by anti-entropy from peers). A torn WAL tail is discarded by sqlite
itself (frame checksums), which only ever loses the unacknowledged last transaction.
A damaged database (a page sqlite reports malformed, or ``PRAGMA quick_check`` fails) is
**salvaged row by row**: every row sqlite can still read and whose checksum holds is copied
into a fresh database, the damaged file is moved aside (``*.corrupt-N``), and what was lost
(row ids skipped) is logged, counted and reported in :attr:`SqliteStore.damage`. A file that
is not a database at all salvages nothing. A store that was **lost** (the file truncated to
0 bytes or deleted, or the ``log`` table dropped) is detected by its ``.created`` marker
file and reported the same way. A node whose store reports damage must not write until it
learned from peers what they hold of its signers (see ``IntentNode``): it could otherwise
reuse a sequence number.

Each store also keeps a *boot epoch*, a counter the node bumps durably every time it
starts: the Yjs client id of a run is derived from it, so a restarted node never reuses
the client id (and so the clocks) of an earlier run, however its driver seeds the rng.

**Disk as an effect.** A node driven by an event loop must never block on fsync, so the
node core does not hold the disk store: it holds an :class:`EffectStore`, which turns
every ``append``/``compact``/``set_epoch`` into a numbered :class:`PersistEffect`. The
driver takes them (``take()``), performs them in order off the loop (a worker thread;
:meth:`SqliteStore.run` commits a whole batch with one fsync) and then reports the highest
token done (``persisted(token)``). Only then does the node acknowledge the writes those
effects carried. Effects are totally ordered by token and a driver confirms a prefix, so
"acknowledged" always implies "every earlier effect is on disk too".
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol

import structlog

from crdt.errors import StoreCorruptError, StoreError
from crdt.metrics import Counters

KIND_UPDATE = 0
KIND_SNAPSHOT = 1
DB_NAME = "intent.sqlite3"
MARKER_SUFFIX = ".created"  # written once with a new store: a store found empty next to it was lost
_MAX_SKIP = 1 << 16  # consecutive unreadable row ids skipped while salvaging before giving up


@dataclass(slots=True, frozen=True)
class StoreDamage:
    """What opening the store found wrong: ``reason``, rows copied intact, row ids lost (known)."""

    reason: str
    salvaged: int = 0
    lost_rows: int = 0
    tail_unknown: bool = False  # the last page was unreadable: how many rows it held is unknown

    def describe(self) -> str:
        tail = " (and every row after the last readable one)" if self.tail_unknown else ""
        return f"{self.reason}; {self.salvaged} rows salvaged, at least {self.lost_rows} lost{tail}"


def row_checksum(row_id: int, kind: int, data: bytes) -> bytes:
    return hashlib.blake2b(struct.pack(">qB", row_id, kind) + data, digest_size=8).digest()


class UpdateStore(Protocol):
    """What the node needs from a store; both implementations satisfy it."""

    def load(self) -> list[bytes]: ...
    def append(self, update: bytes) -> int: ...
    def compact(self, snapshot: bytes) -> None: ...
    def row_count(self) -> int: ...
    def epoch(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...
    def close(self) -> None: ...


@dataclass(slots=True, frozen=True)
class PersistEffect:
    """One durable write the driver must perform: ``op`` is append, compact or epoch."""

    token: int
    op: str
    data: bytes = b""
    epoch: int = 0

    def apply(self, store: UpdateStore) -> None:
        """Perform this effect on a disk (or memory) store; blocking, so never on the event loop."""
        if self.op == "append":
            store.append(self.data)
        elif self.op == "compact":
            store.compact(self.data)
        elif self.op == "epoch":
            store.set_epoch(self.epoch)
        else:
            raise StoreError(f"unknown persist effect {self.op!r}")


class EffectStore:
    """The node core's view of its disk: reads what the driver loaded, turns writes into effects.

    Owned by the node's event loop (the core is single-threaded); the driver's worker thread
    only ever sees the :class:`PersistEffect` values it was handed, never this object.
    """

    deferred = True  # IntentNode holds acknowledgements until persisted() covers them

    def __init__(
        self, rows: Iterable[bytes] = (), epoch: int = 0, counters: Counters | None = None, damage: "StoreDamage | None" = None,
    ) -> None:
        self.damage = damage  # what the disk store found wrong at open (the node must recover)
        self._rows = [bytes(r) for r in rows]
        self._epoch = epoch
        self._count = len(self._rows)
        self.counters = counters if counters is not None else Counters()
        self._pending: list[PersistEffect] = []
        self._token = 0
        self.durable_token = 0

    @classmethod
    def over(cls, store: UpdateStore) -> "EffectStore":
        """Load a disk store once (at startup, before the loop runs) and defer every later write."""
        rows = store.load()  # first: a damaged row found here is damage too
        return cls(rows, store.epoch(), getattr(store, "counters", None), getattr(store, "damage", None))

    def load(self) -> list[bytes]:
        """The rows the driver loaded at start-up."""
        return list(self._rows)

    def epoch(self) -> int:
        """The boot epoch (as loaded, or as last set)."""
        return self._epoch

    def _effect(self, op: str, data: bytes = b"", epoch: int = 0) -> int:
        self._token += 1
        self._pending.append(PersistEffect(self._token, op, data, epoch))
        return self._token

    def append(self, update: bytes) -> int:
        """Queue an append; returns its token (durable once ``persisted`` reaches it)."""
        self._count += 1
        self.counters.store_appends += 1
        return self._effect("append", bytes(update))

    def compact(self, snapshot: bytes) -> None:
        """Queue replacing every row by ``snapshot``."""
        self._count = 1
        self.counters.store_compactions += 1
        self._effect("compact", bytes(snapshot))

    def set_epoch(self, epoch: int) -> None:
        """Queue storing the boot epoch."""
        self._epoch = epoch
        self._effect("epoch", epoch=epoch)

    def row_count(self) -> int:
        """Rows the disk will hold once every queued effect is done."""
        return self._count

    def close(self) -> None:
        """Nothing to close: the driver owns the disk store."""

    @property
    def last_token(self) -> int:
        """Token of the newest effect handed out (or queued)."""
        return self._token

    def has_effects(self) -> bool:
        """True when effects wait for the driver."""
        return bool(self._pending)

    def take(self) -> list[PersistEffect]:
        """Hand the queued effects to the driver, oldest first."""
        out, self._pending = self._pending, []
        return out

    def persisted(self, token: int) -> None:
        """The driver reports every effect up to ``token`` durable."""
        if token > self._token:
            raise StoreError(f"persisted({token}) confirms an effect that was never issued (last is {self._token})")
        self.durable_token = max(self.durable_token, token)


class MemoryStore:
    """Same interface, kept in memory (simulations of thousands of nodes). Survives a simulated restart
    if the same object is handed to the new node."""

    def __init__(self, counters: Counters | None = None) -> None:
        self._rows: list[bytes] = []
        self._epoch = 0
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

    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        self._epoch = epoch

    def close(self) -> None:
        pass


class SqliteStore:
    """Append-only update log with snapshots in one sqlite file under ``data_dir``.

    One thread at a time owns it: the node's thread for the offline CLI, the driver's
    persist worker (a limiter of one, so effects stay in order) under an event loop.
    ``check_same_thread=False`` only lets it be opened before that worker takes over.
    """

    def __init__(self, data_dir: str | os.PathLike[str], counters: Counters | None = None, on_corrupt: str = "quarantine") -> None:
        self.dir = Path(data_dir)
        self.path = self.dir / DB_NAME
        self.counters = counters if counters is not None else Counters()
        self.log = structlog.get_logger("crdt.store").bind(path=str(self.path))
        self.corrupt_rows: list[int] = []
        self.damage: StoreDamage | None = None
        self.marker = Path(str(self.path) + MARKER_SUFFIX)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create data dir {self.dir}: {exc.strerror}") from None
        what = "missing" if not self.path.exists() else "truncated to 0 bytes" if self.path.stat().st_size == 0 else "emptied"
        db: sqlite3.Connection | None = None
        try:
            db = self._open()
            self._db = db
            self._check()
        except sqlite3.DatabaseError as exc:
            if db is not None:
                db.close()
            if on_corrupt != "quarantine":
                raise StoreCorruptError(f"{self.path} is not a usable database ({exc}); move it aside or restore it") from None
            self._db = self._recover(str(exc))
        self._marked = self.marker.exists()
        if self.damage is None and self._marked and self.epoch() == 0 and self.row_count() == 0:
            # The marker is written once a node's start (epoch bump) is durable here: this store
            # served a node before, and whatever it held is gone.
            self._report(StoreDamage(f"the store file was {what} (its {self.marker.name} marker is there)"))

    def _check(self) -> None:
        """Raise DatabaseError if sqlite finds any page damaged, or the log table was dropped."""
        row = self._db.execute("PRAGMA quick_check(1)").fetchone()
        if row is None or row[0] != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {row[0] if row else 'no answer'}")

    def _mark(self) -> None:
        """Write the marker once the store served a node (its epoch is durable)."""
        self._marked = True
        try:
            with open(self.marker, "wb") as f:
                f.write(b"wasmatrix intent store; if intent.sqlite3 is lost while this file exists, the node recovers from peers\n")
                os.fsync(f.fileno())
        except OSError as exc:
            self.log.warning("crdt_store_marker_not_written", error=exc.strerror)

    def _report(self, damage: StoreDamage) -> None:
        self.damage = damage
        self.counters.store_damaged += 1
        self.counters.store_rows_salvaged += damage.salvaged
        self.counters.store_corrupt_rows += damage.lost_rows
        self.log.error("crdt_store_damaged", reason=damage.reason, salvaged=damage.salvaged, lost_rows=damage.lost_rows,
                       tail_unknown=damage.tail_unknown)

    def _recover(self, why: str) -> sqlite3.Connection:
        """Salvage every intact row of the damaged file into a fresh one; move the damaged file aside."""
        rows, epoch, lost, tail = self._salvage()
        self._quarantine(why)
        db = self._open()
        try:
            db.execute("BEGIN IMMEDIATE")
            for rid, (kind, data) in enumerate(rows, 1):
                db.execute("INSERT INTO log (id, kind, data, crc) VALUES (?, ?, ?, ?)", (rid, kind, data, row_checksum(rid, kind, data)))
            db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('epoch', ?)", (epoch,))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            db.close()
            raise StoreError(f"cannot write the salvaged rows to {self.path}: {exc}") from None
        self._report(StoreDamage(f"damaged database ({why})", len(rows), lost, tail))
        return db

    def _salvage(self) -> tuple[list[tuple[int, bytes]], int, int, bool]:
        """Every row of the damaged file that sqlite can read and whose checksum holds, in id order.

        Row ids are found by seeking past each unreadable one (a damaged leaf page costs only
        the rows on it); each row is then read on its own. Returns (rows, epoch, row ids lost, whether
        the rows after the last readable one are unknown).
        """
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        except sqlite3.Error:
            return [], 0, 0, True
        ids: list[int] = []
        tail = False
        lost = 0
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError:
            db.close()
            return [], 0, 0, True  # no schema (not a database, or page 1 damaged): sqlite cannot find any row
        try:
            try:
                hi = (db.execute("SELECT max(id) FROM log").fetchone()[0] or 0) if "log" in tables else 0
            except sqlite3.DatabaseError:
                hi = None  # the rightmost page is damaged: skip up to _MAX_SKIP ids past the last readable
            lo = 0
            while "log" in tables:
                try:
                    for (rid,) in db.execute("SELECT id FROM log WHERE id > ? ORDER BY id", (lo,)):
                        ids.append(rid)
                        lo = rid
                    break
                except sqlite3.DatabaseError:
                    pass
                # The scan hit a damaged page after ``lo`` (and may have swallowed the row it had
                # read ahead): look ids up one by one (a point lookup never steps onto a
                # neighbouring page) until one is readable, then scan on from there.
                probe, misses, unreadable = lo + 1, 0, 0
                while misses < _MAX_SKIP and (hi is None or probe <= hi):
                    try:
                        found = db.execute("SELECT id FROM log WHERE id = ?", (probe,)).fetchone()
                    except sqlite3.DatabaseError:
                        found = None
                        unreadable += 1
                    if found is not None:
                        break
                    probe, misses = probe + 1, misses + 1
                else:
                    # Nothing readable past the damage; with the last id known, the ids up to it
                    # were rows, without it the count of lost rows at the tail is unknown.
                    lost += unreadable if hi is not None else 0
                    tail = hi is None and unreadable > 0
                    break
                lost += unreadable  # unreadable ids between two readable rows: rows on damaged pages
                ids.append(probe)
                lo = probe
            rows: list[tuple[int, bytes]] = []
            for rid in ids:
                try:
                    row = db.execute("SELECT kind, data, crc FROM log WHERE id=?", (rid,)).fetchone()
                except sqlite3.DatabaseError:
                    row = None
                if row is None or not isinstance(row[1], bytes) or row_checksum(rid, row[0], row[1]) != row[2]:
                    lost += 1
                    continue
                rows.append((int(row[0]), row[1]))
            try:
                r = db.execute("SELECT v FROM meta WHERE k='epoch'").fetchone()
                epoch = int(r[0]) if r is not None else 0
            except sqlite3.DatabaseError:
                epoch = 0
            return rows, epoch, lost, tail
        finally:
            db.close()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "meta" in tables and "log" not in tables:
                raise sqlite3.DatabaseError("the log table is missing (dropped)")
            db.execute("CREATE TABLE IF NOT EXISTS log (id INTEGER PRIMARY KEY, kind INTEGER NOT NULL, data BLOB NOT NULL, crc BLOB NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
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
            old = self.damage
            self.damage = StoreDamage(
                (old.reason + "; " if old else "") + f"{len(bad)} rows failed their checksum",
                (old.salvaged if old else 0), (old.lost_rows if old else 0) + len(bad), bool(old and old.tail_unknown),
            )
            if old is None:
                self.counters.store_damaged += 1
            try:
                with self._db:
                    self._db.execute("BEGIN IMMEDIATE")
                    self._db.executemany("DELETE FROM log WHERE id=?", [(i,) for i in bad])
            except sqlite3.DatabaseError as exc:
                self.log.error("crdt_store_corrupt_rows_not_removed", error=str(exc))
        return out

    def _insert(self, kind: int, data: bytes) -> int:
        rid = (self._db.execute("SELECT coalesce(max(id), 0) + 1 FROM log").fetchone())[0]
        self._db.execute("INSERT INTO log (id, kind, data, crc) VALUES (?, ?, ?, ?)", (rid, kind, data, row_checksum(rid, kind, data)))
        return int(rid)

    def append(self, update: bytes) -> int:
        """Append and commit (fsync'd by synchronous=FULL) before returning the row id."""
        data = bytes(update)
        try:
            self._db.execute("BEGIN IMMEDIATE")
            rid = self._insert(KIND_UPDATE, data)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreError(f"cannot append to {self.path}: {exc} (is the disk full or read-only?)") from None
        self.counters.store_appends += 1
        return rid

    def compact(self, snapshot: bytes) -> None:
        """Replace every row with one snapshot of the merged state, atomically."""
        self.run([PersistEffect(0, "compact", bytes(snapshot))])

    def epoch(self) -> int:
        """The boot epoch last stored (0 for a new store)."""
        row = self._db.execute("SELECT v FROM meta WHERE k='epoch'").fetchone()
        return int(row[0]) if row is not None else 0

    def set_epoch(self, epoch: int) -> None:
        """Store the boot epoch durably."""
        self.run([PersistEffect(0, "epoch", epoch=epoch)])

    def run(self, effects: list[PersistEffect]) -> None:
        """Perform a batch of effects in one transaction: one fsync for all of them.

        The driver's worker thread calls this; the batch is all-or-nothing, so on
        :class:`StoreError` none of it is durable and none of it may be acknowledged.
        """
        if not effects:
            return
        compacted = False
        try:
            self._db.execute("BEGIN IMMEDIATE")
            for e in effects:
                if e.op == "append":
                    self._insert(KIND_UPDATE, e.data)
                elif e.op == "compact":
                    self._db.execute("DELETE FROM log")
                    self._insert(KIND_SNAPSHOT, e.data)
                    compacted = True
                elif e.op == "epoch":
                    self._db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('epoch', ?)", (e.epoch,))
                else:
                    raise StoreError(f"unknown persist effect {e.op!r}")
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreError(f"cannot write to {self.path}: {exc} (is the disk full or read-only?)") from None
        except StoreError:
            self._rollback()
            raise
        if compacted:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:  # the commit is durable; a failed checkpoint only delays WAL truncation
                self.log.warning("crdt_store_checkpoint_failed", error=str(exc))
        if not self._marked and any(e.op == "epoch" for e in effects):
            self._mark()
        for e in effects:
            if e.op == "append":
                self.counters.store_appends += 1
            elif e.op == "compact":
                self.counters.store_compactions += 1
                self.log.info("crdt_store_compacted", bytes=len(e.data))

    def row_count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM log").fetchone()[0])

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def close(self) -> None:
        self._db.close()
