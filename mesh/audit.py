"""Append-only, hash-chained audit log (``DATA_DIR/audit.log``) and its verifier.

One JSON object per line, in canonical encoding (sorted keys, no spaces, ASCII only, so control and
non-ASCII characters are always stored escaped)::

    {"event":"capability_denied","fields":{...},"hash":"<64 hex>","node_id":"...","prev":"<64 hex>","seq":1,"time":1700000000.5}

``hash`` = SHA-256 over the canonical encoding of the entry without ``hash``; ``prev`` is the previous
entry's hash (64 zeros for seq 1); ``seq`` counts from 1 with no gaps. Editing, deleting or reordering
an entry breaks the chain at the first affected line. Deleting entries from the *end* cannot be seen
from the file alone: ``verify`` reports the head (last seq and hash) so an operator can record it.

Durability: each entry is one ``os.write`` on an ``O_APPEND`` descriptor, so it reaches the kernel
before ``record`` returns (a process crash loses nothing). ``fsync`` is batched: the daemon calls
``sync()`` periodically and ``close()`` syncs; a power loss loses at most the entries since the last
sync, and may leave a torn last line. ``fsync_each=True`` syncs per entry instead. Per-entry fsync is
not the default because capability denials are driven by module behaviour, so a hostile module
could otherwise turn its denials into a disk-sync storm.

On reopen a last entry cut only before its newline is completed; any other torn last line is moved to ``audit.log.torn.<seq>`` and an
``audit_torn_tail`` entry recording its size and SHA-256 is appended, so the chain continues and the
evidence is kept. Any other damage refuses to open (AuditLogBroken): run ``wasmatrix audit verify``.

Thread safety: ``AuditLog._lock`` (one ``threading.Lock``) owns ``_seq``, ``_prev`` and the file
descriptor; every public method takes it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import structlog

from mesh.datadir import atomic_write, fsync_dir
from mesh.errors import MeshError

GENESIS = "0" * 64

# Event names for the daemon's sinks (seed R8); the runtime already emits the last two.
ADMISSION_REFUSED = "admission_refused"  # a peer's key is not admitted (or revoked) at handshake
KEY_REVOKED = "key_revoked"  # a revocation record was accepted
SIGNATURE_INVALID = "signature_invalid"  # a record, module or binding signature failed
KEY_CHANGED = "key_changed"  # a node key was created or a role grant changed
DEPLOYMENT_CHANGED = "deployment_changed"  # a deployment was created, updated or rolled back
CAPABILITY_DENIED = "capability_denied"  # runtime/runner.py
MODULE_REJECTED = "module_rejected"  # runtime/runner.py
_ENTRY_KEYS = frozenset({"seq", "time", "node_id", "event", "fields", "prev", "hash"})
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_EVENT_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_TAIL_CHUNK = 64 * 1024

log = structlog.get_logger("mesh.audit")


class AuditError(MeshError):
    """The audit log cannot be written or read."""


class AuditLogBroken(AuditError):
    """The existing log fails verification; it is not appended to."""


def canonical(obj: dict[str, Any]) -> str:
    """The canonical encoding hashed and stored: sorted keys, compact, ASCII (controls and DEL escaped)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def entry_hash(entry_without_hash: dict[str, Any]) -> str:
    """SHA-256 hex of the canonical encoding of an entry without its ``hash`` key."""
    return hashlib.sha256(canonical(entry_without_hash).encode("ascii")).hexdigest()


def safe_text(text: str, limit: int = 120) -> str:
    """``text`` with every control or non-ASCII character escaped, cut to ``limit``, for printing."""
    escaped = json.dumps(text[: limit * 2], ensure_ascii=True)[1:-1]
    return escaped if len(escaped) <= limit else escaped[:limit] + "..."


def _clean_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Fields made JSON-safe: unknown types become strings, non-finite floats become strings."""

    def fix(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return repr(v)
        if isinstance(v, dict):
            return {str(k): fix(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [fix(x) for x in v]
        if v is None or isinstance(v, (str, int, float, bool)):
            return v
        return str(v)

    return {str(k): fix(v) for k, v in fields.items()}


@dataclass(slots=True, frozen=True)
class VerifyResult:
    """Outcome of ``verify``: ``kind`` is ok, torn_write, tampered or garbage; line numbers start at 1."""

    ok: bool
    entries: int
    first_bad_line: int | None = None
    reason: str = ""
    kind: str = "ok"
    head_seq: int = 0
    head_hash: str = GENESIS


def _check_entry(obj: Any) -> str | None:
    """Why ``obj`` is not a well-formed entry, or None."""
    if not isinstance(obj, dict):
        return "not a JSON object"
    if set(obj) != _ENTRY_KEYS:
        return f"keys are {sorted(obj)}, expected {sorted(_ENTRY_KEYS)}"
    if isinstance(obj["seq"], bool) or not isinstance(obj["seq"], int) or obj["seq"] < 1:
        return "seq is not a positive integer"
    if isinstance(obj["time"], bool) or not isinstance(obj["time"], (int, float)):
        return "time is not a number"
    if not isinstance(obj["node_id"], str) or not isinstance(obj["event"], str):
        return "node_id or event is not a string"
    if not isinstance(obj["fields"], dict):
        return "fields is not an object"
    if not isinstance(obj["prev"], str) or not _HEX64.match(obj["prev"]):
        return "prev is not 64 hex characters"
    if not isinstance(obj["hash"], str) or not _HEX64.match(obj["hash"]):
        return "hash is not 64 hex characters"
    return None


def _parse(raw: bytes) -> dict[str, Any] | str:
    """The entry on one line, or the reason it is not one."""
    try:
        text = raw.decode("utf-8")
        obj = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        return "not a JSON entry"
    bad = _check_entry(obj)
    if bad is not None:
        return bad
    return obj


def verify_bytes(data: bytes) -> VerifyResult:
    """Verify a whole log held in memory (see ``verify``)."""
    if not data:
        return VerifyResult(True, 0)
    torn_tail = not data.endswith(b"\n")
    lines = data.split(b"\n")
    if not torn_tail:
        lines.pop()  # the empty string after the final newline
    parsed = [_parse(raw) for raw in lines]
    seq_at = {p["seq"]: i for i, p in enumerate(parsed) if isinstance(p, dict)}
    expected_seq, prev = 1, GENESIS
    for i, (raw, p) in enumerate(zip(lines, parsed)):
        line_no = i + 1
        last = i == len(lines) - 1
        if isinstance(p, str):
            if last and torn_tail:
                return VerifyResult(False, i, line_no,
                                    "last line is incomplete: a write was cut off (crash or power loss), "
                                    "not an edit of an entry", "torn_write", expected_seq - 1, prev)
            return VerifyResult(False, i, line_no, f"garbage: {p}: {safe_text(raw.decode('utf-8', 'replace'), 60)}",
                                "garbage", expected_seq - 1, prev)
        body = {k: v for k, v in p.items() if k != "hash"}
        if entry_hash(body) != p["hash"]:
            return VerifyResult(False, i, line_no, f"entry seq {p['seq']} was edited: its hash does not match its content",
                                "tampered", expected_seq - 1, prev)
        if canonical(p) != raw.decode("utf-8"):
            return VerifyResult(False, i, line_no, f"entry seq {p['seq']} was rewritten: not in canonical encoding",
                                "tampered", expected_seq - 1, prev)
        seq = p["seq"]
        if seq != expected_seq:
            if seq > expected_seq and seq_at.get(expected_seq, -1) > i:
                why = f"entries are out of order: seq {seq} comes before seq {expected_seq} (reordered)"
            elif seq > expected_seq:
                gap = f"seq {expected_seq}" if seq == expected_seq + 1 else f"seq {expected_seq}..{seq - 1}"
                why = f"entry {gap} is missing before seq {seq} (deleted)"
            else:
                why = f"seq {seq} appears again after seq {expected_seq - 1} (reordered or duplicated)"
            return VerifyResult(False, i, line_no, why, "tampered", expected_seq - 1, prev)
        if p["prev"] != prev:
            return VerifyResult(False, i, line_no, f"entry seq {seq} does not chain to the entry before it (prev hash differs)",
                                "tampered", expected_seq - 1, prev)
        if last and torn_tail:
            return VerifyResult(False, i, line_no, "last line lacks its newline: a write was cut off (crash or power loss)",
                                "torn_write", expected_seq - 1, prev)
        expected_seq, prev = seq + 1, p["hash"]
    return VerifyResult(True, len(lines), head_seq=expected_seq - 1, head_hash=prev)


def verify(path: str | os.PathLike[str]) -> VerifyResult:
    """Check every entry of the log at ``path``; reports the first broken line, or ok with the head."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise AuditError(f"audit log {path} does not exist") from None
    except OSError as exc:
        raise AuditError(f"cannot read audit log {path}: {exc.strerror}") from None
    return verify_bytes(data)


def _read_tail(fd: int, size: int) -> bytes:
    """The end of the file, starting early enough to hold the last complete line (reads backwards)."""
    pos, buf = size, b""
    while pos > 0:
        start = max(0, pos - _TAIL_CHUNK)
        buf = os.pread(fd, pos - start, start) + buf
        pos = start
        last_nl = buf.rfind(b"\n")
        if last_nl > 0 and buf.rfind(b"\n", 0, last_nl) >= 0:
            break
    return buf


@dataclass(slots=True)
class AuditCounters:
    """Counters the daemon exports (``wasmatrix_audit_*``)."""

    entries_total: int = 0
    write_errors_total: int = 0
    invalid_events_total: int = 0
    torn_tails_recovered_total: int = 0
    dropped_total: int = 0  # events ``record`` could not append (closed log, I/O error)


class AuditLog:
    """Appends hash-chained entries to a file; implements ``runtime.audit.AuditSink``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        node_id: str,
        wall_clock: Callable[[], float],
        *,
        fsync_each: bool = False,
    ) -> None:
        self.path = Path(path)
        self.node_id = node_id
        self._wall_clock = wall_clock
        self._fsync_each = fsync_each
        self._lock = threading.Lock()
        self.counters = AuditCounters()
        self._seq, self._prev = 0, GENESIS
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise AuditError(f"cannot open audit log {self.path}: {exc.strerror}") from None
        try:
            fsync_dir(self.path.parent)  # a newly created log's directory entry must survive power loss too
            self._resume()
        except BaseException:
            os.close(self._fd)
            raise

    @property
    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last entry; (0, GENESIS) for an empty log."""
        with self._lock:
            return self._seq, self._prev

    def _resume(self) -> None:
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        buf = _read_tail(self._fd, size)
        last_nl = buf.rfind(b"\n")
        torn = buf[last_nl + 1:]  # bytes after the last newline: a write cut off by a crash
        complete = buf[buf.rfind(b"\n", 0, last_nl) + 1:last_nl] if last_nl >= 0 else b""
        if last_nl >= 0 and not complete:
            raise AuditLogBroken(f"{self.path} ends with an empty line; run `wasmatrix audit verify` and move the file aside")
        if complete:
            p = _parse(complete)
            if isinstance(p, str) or entry_hash({k: v for k, v in p.items() if k != "hash"}) != p["hash"]:
                raise AuditLogBroken(
                    f"the last entry of {self.path} is damaged; run `wasmatrix audit verify` and move the file aside"
                )
            self._seq, self._prev = p["seq"], p["hash"]
        if torn:
            p = _parse(torn)
            if (not isinstance(p, str) and p["seq"] == self._seq + 1 and p["prev"] == self._prev
                    and entry_hash({k: v for k, v in p.items() if k != "hash"}) == p["hash"]
                    and canonical(p).encode("ascii") == torn):
                # The write was cut only before its newline: the entry is whole, finish it.
                os.write(self._fd, b"\n")
                os.fsync(self._fd)
                self._seq, self._prev = p["seq"], p["hash"]
                return
            # Keep the fragment as evidence, cut it from the log, and say so in the chain.
            side = self.path.with_name(f"{self.path.name}.torn.{self._seq + 1}")
            atomic_write(side, torn)
            os.ftruncate(self._fd, size - len(torn))
            self.counters.torn_tails_recovered_total += 1
            log.warning("audit_torn_tail", path=str(self.path), bytes=len(torn), saved_to=str(side))
            self._append_locked(
                "audit_torn_tail",
                {"bytes": len(torn), "sha256": hashlib.sha256(torn).hexdigest(), "saved_to": side.name},
                self._wall_clock(),
            )
            os.fsync(self._fd)

    def _append_locked(self, event: str, fields: dict[str, Any], now_wall: float) -> dict[str, Any]:
        seq = self._seq + 1
        body: dict[str, Any] = {
            "seq": seq,
            "time": now_wall,
            "node_id": self.node_id,
            "event": event,
            "fields": _clean_fields(fields),
            "prev": self._prev,
        }
        digest = entry_hash(body)
        body["hash"] = digest
        line = (canonical(body) + "\n").encode("ascii")
        size = os.fstat(self._fd).st_size
        try:
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(0, f"short write ({written} of {len(line)} bytes)")
            if self._fsync_each:
                os.fsync(self._fd)
        except OSError as exc:
            # Undo a partial line so the next entry does not follow garbage.
            try:
                os.ftruncate(self._fd, size)
            except OSError:
                pass  # the torn line is then recovered on reopen
            self.counters.write_errors_total += 1
            raise AuditError(f"cannot append to audit log {self.path}: {exc.strerror}") from None
        self._seq, self._prev = seq, digest
        self.counters.entries_total += 1
        return body

    def append(self, event: str, fields: dict[str, Any], *, now_wall: float) -> dict[str, Any]:
        """Append one entry (``event`` is a snake_case name); returns it. Raises AuditError on I/O failure."""
        if not isinstance(event, str) or not _EVENT_RE.match(event):
            raise AuditError(f"audit event name must be snake_case, got {safe_text(str(event), 60)!r}")
        with self._lock:
            if self._fd < 0:
                raise AuditError("audit log is closed")
            return self._append_locked(event, fields, now_wall)

    def record(self, event: dict[str, Any]) -> None:
        """AuditSink: append ``{"event": name, "ts": wall, **fields}``; never raises into the caller."""
        name = event.get("event")
        ts = event.get("ts")
        fields = {k: v for k, v in event.items() if k not in ("event", "ts")}
        if not isinstance(name, str) or not _EVENT_RE.match(name):
            self.counters.invalid_events_total += 1
            fields["invalid_event_name"] = str(name)
            name = "invalid_event"
        now = float(ts) if isinstance(ts, (int, float)) and not isinstance(ts, bool) and math.isfinite(ts) else self._wall_clock()
        try:
            self.append(name, fields, now_wall=now)
        except (AuditError, ValueError, TypeError, RecursionError) as exc:  # e.g. a self-referencing field
            self.counters.dropped_total += 1
            log.error("audit_write_failed", error=str(exc), audit_event=name)

    def sync(self) -> None:
        """fsync the log; the daemon calls this periodically (batched durability)."""
        with self._lock:
            if self._fd >= 0:
                os.fsync(self._fd)

    def close(self) -> None:
        """Sync and close; further appends raise AuditError."""
        with self._lock:
            if self._fd >= 0:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1
