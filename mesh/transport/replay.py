"""Sliding anti-replay window for explicit datagram counters (RFC 6479 semantics, 2048 bits by default).

The window remembers the highest counter accepted (``top``) and one bit for each of the ``size``
counters at and below it. A counter above ``top`` is new; one at or below ``top - size`` is too old;
one inside the window is new unless its bit is set. RFC 6479 keeps the bits in a ring of words to avoid
shifting in C; a Python int shifts in one operation, so the bitmap is a single int and the window is
exact (every one of the ``size`` most recent counters is tracked).

``check`` does not change state: the caller authenticates the packet first and only then calls
``accept``, so a forged packet can never advance the window.
"""

from __future__ import annotations

from enum import Enum


class ReplayVerdict(Enum):
    """Outcome of checking a counter against the window."""

    NEW = "new"
    DUPLICATE = "duplicate"
    TOO_OLD = "too_old"


class ReplayWindow:
    """Accepts each counter at most once, tolerating reordering within ``size`` counters."""

    __slots__ = ("size", "top", "_bits", "_mask")

    def __init__(self, size: int = 2048) -> None:
        if size < 1:
            raise ValueError("replay window size must be at least 1")
        self.size = size
        self.top = -1  # no counter accepted yet
        self._bits = 0  # bit i set <=> counter (top - i) was accepted
        self._mask = (1 << size) - 1

    def check(self, counter: int) -> ReplayVerdict:
        """Verdict for ``counter`` without recording it."""
        if counter > self.top:
            return ReplayVerdict.NEW
        back = self.top - counter
        if back >= self.size:
            return ReplayVerdict.TOO_OLD
        return ReplayVerdict.DUPLICATE if (self._bits >> back) & 1 else ReplayVerdict.NEW

    def accept(self, counter: int) -> None:
        """Record an authenticated ``counter`` (must have been checked NEW)."""
        if counter > self.top:
            shift = counter - self.top
            self._bits = ((self._bits << shift) | 1) & self._mask if shift < self.size else 1
            self.top = counter
        else:
            self._bits |= 1 << (self.top - counter)
