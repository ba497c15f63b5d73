"""Refused handshakes into the audit log, rate-limited (seed R8).

Both transports report a refused handshake with its reason: ``SecureTransport(on_refused=...)`` for
datagrams, the ``Closed(reason)`` event of a ``StreamSession`` for streams. Anyone who can reach the
port can cause a PSK failure, and a revoked node retries its handshake on a timer, so an entry per
refusal would let a stranger fill the disk. :class:`RefusalAuditor` writes at most one
``admission_refused`` entry per (source host, reason) per ``window`` seconds; the refusals in
between are counted (``driver_audit_suppressed``) and the next entry for that key carries how many
were suppressed before it, so the log still says how much happened.

The state is bounded (``max_keys`` hosts x reasons; the oldest key is forgotten first) and the
clock is passed in, so the rule is testable without time passing.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Protocol

from mesh.audit import ADMISSION_REFUSED

WINDOW = 60.0
MAX_KEYS = 4096
_STREAM_PSK = "handshake_psk_failures"
_STREAM_REFUSED = "handshake_refused_"


class AuditSink(Protocol):
    def record(self, event: dict[str, Any]) -> None: ...


def stream_refusal(closed_reason: str) -> str | None:
    """The refusal reason of a stream ``Closed`` reason (``psk_failure``, ``not_admitted``, ...), or None."""
    if closed_reason == _STREAM_PSK:
        return "psk_failure"
    if closed_reason.startswith(_STREAM_REFUSED):
        return closed_reason[len(_STREAM_REFUSED):]
    return None


class RefusalAuditor:
    """Audits refused handshakes: the first per (host, reason) in each window, the rest counted."""

    def __init__(self, sink: AuditSink, counters: Counter[str], *, window: float = WINDOW, max_keys: int = MAX_KEYS) -> None:
        self.sink = sink
        self.counters = counters
        self.window = window
        self.max_keys = max_keys
        # (host, reason) -> [window end, refusals suppressed since the last entry]; dict order = age.
        self._keys: dict[tuple[str, str], list[float]] = {}

    def refused(self, reason: str, transport: str, host: str, port: int, now: float, now_wall: float) -> bool:
        """Record one refusal; True if it was written to the audit log, False if only counted."""
        key = (host, reason)
        st = self._keys.get(key)
        if st is not None and now < st[0]:
            st[1] += 1
            self.counters["driver_audit_suppressed"] += 1
            return False
        suppressed = int(st[1]) if st is not None else 0
        self._keys.pop(key, None)
        self._keys[key] = [now + self.window, 0]
        self._trim(now)
        self.sink.record({
            "event": ADMISSION_REFUSED, "ts": now_wall, "reason": reason, "transport": transport,
            "host": host, "port": port, "suppressed_before": suppressed,
        })
        return True

    def _trim(self, now: float) -> None:
        if len(self._keys) <= self.max_keys:
            return
        for k in [k for k, st in self._keys.items() if st[0] <= now and not st[1]]:
            del self._keys[k]
        while len(self._keys) > self.max_keys:
            del self._keys[next(iter(self._keys))]

    def __len__(self) -> int:
        return len(self._keys)
