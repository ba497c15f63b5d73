"""Transmit-limited piggyback queue (memberlist's queue.go / TransmitLimitedQueue)."""

from __future__ import annotations

from itertools import islice
from typing import Callable

from mesh.wire import piggyback_cost


class BroadcastQueue(dict[str, int]):
    """Gossip updates waiting to ride on outgoing datagrams.

    One entry per subject key: a newer update about a node replaces the older
    one (it would only be ignored downstream anyway). Each call to :meth:`take`
    hands out the least-transmitted updates first (newest first among equals,
    like memberlist's ordering) that fit the byte budget, and drops an update
    after ``limit()`` transmissions — ``retransmit_mult * ceil(log10(n + 1))``
    for a cluster of n nodes.

    Updates are kept in buckets by transmit count, so taking k updates costs
    O(k + number of buckets), not a sort of the whole queue per datagram.

    An update queued with ``urgent=True`` (a node's own Alive: its refutation, or
    its graceful-leave Dead) goes out ahead of every other update until its
    transmissions are used up. memberlist orders only by transmit count, so a
    refutation queued just before a burst of newer updates (the flood after a
    partition heals) waits behind all of them while the suspicion it answers
    runs out; one urgent update costs a few dozen bytes per datagram.

    ``take(budget, count=False)`` hands out the same updates without counting
    the transmission: for a datagram to a member believed unreachable (suspect,
    or recently dead: gossip to the dead), so that every update still reaches
    ``limit()`` members believed alive (see ``SwimCore._gossip``).

    The queue itself is a dict of every queued key to its transmissions so far:
    ``len``, ``bool`` and ``in`` are then plain dict operations in C (a core asks
    whether anything is queued after every event it handles). Change it only
    through :meth:`queue` and :meth:`take`.
    """

    __slots__ = ("_limit", "_levels", "_urgent")

    def __init__(self, limit: Callable[[], int]) -> None:
        super().__init__()
        self._limit = limit
        # transmits -> {key: data} of the updates not urgent; dict insertion order = age (newest last).
        self._levels: dict[int, dict[str, bytes]] = {}
        # Urgent updates (key -> data), sent before any bucket.
        self._urgent: dict[str, bytes] = {}

    def queue(self, key: str, data: bytes, urgent: bool = False) -> None:
        """Queue (or replace) the update about ``key``; ``urgent`` ones go out first."""
        old = self.pop(key, None)
        if old is not None and self._urgent.pop(key, None) is None:
            del self._levels[old][key]
        self[key] = 0
        if urgent:
            self._urgent[key] = data
        else:
            self._levels.setdefault(0, {})[key] = data

    def take(self, budget: int, count: bool = True) -> list[bytes]:
        """Return updates fitting ``budget`` bytes: urgent first, then fewest transmissions (then newest).

        With ``count=False`` the same updates are returned and none is counted as transmitted.
        """
        if budget <= 0 or not self:
            return []
        limit = self._limit()
        out: list[bytes] = []
        if self._urgent:
            for key, data in list(self._urgent.items()):
                cost = piggyback_cost(data)
                if cost > budget:
                    continue
                budget -= cost
                out.append(data)
                if not count:
                    continue
                sent = self[key] + 1
                if sent >= limit:
                    del self._urgent[key], self[key]
                else:
                    self[key] = sent
            if len(self) == len(self._urgent) or budget < 8:  # nothing but urgent updates queued, or no room
                return out
        moved: list[tuple[str, bytes, int]] = []
        for level in sorted(self._levels):
            bucket = self._levels[level]
            # Updates are tens of bytes; no more than budget // 24 of them can fit.
            for key in list(islice(reversed(bucket), budget // 24 + 1)):
                data = bucket[key]
                cost = piggyback_cost(data)
                if cost > budget:
                    if budget < 128:
                        break
                    continue
                budget -= cost
                out.append(data)
                if count:
                    del bucket[key]
                    moved.append((key, data, level + 1))
                if budget < 8:
                    break
            if budget < 8:
                break
        for key, data, level in moved:
            if level >= limit:
                del self[key]
            else:
                self._levels.setdefault(level, {})[key] = data
                self[key] = level
        for level in [lv for lv, b in self._levels.items() if not b]:
            del self._levels[level]
        return out
