"""Transmit-limited piggyback queue (memberlist's queue.go / TransmitLimitedQueue)."""

from __future__ import annotations

from itertools import islice
from typing import Callable

from mesh.wire import piggyback_cost


class BroadcastQueue:
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
    """

    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit
        # transmits -> {key: data}; dict insertion order = age (newest last).
        self._levels: dict[int, dict[str, bytes]] = {}
        self._where: dict[str, int] = {}
        # Urgent updates (key -> data, key -> transmits so far), sent before any bucket.
        self._urgent: dict[str, bytes] = {}
        self._urgent_sent: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._where) + len(self._urgent)

    def __bool__(self) -> bool:
        return bool(self._where or self._urgent)

    def __contains__(self, key: str) -> bool:
        return key in self._where or key in self._urgent

    def queue(self, key: str, data: bytes, urgent: bool = False) -> None:
        """Queue (or replace) the update about ``key``; ``urgent`` ones go out first."""
        old = self._where.pop(key, None)
        if old is not None:
            del self._levels[old][key]
        if self._urgent.pop(key, None) is not None:
            del self._urgent_sent[key]
        if urgent:
            self._urgent[key] = data
            self._urgent_sent[key] = 0
            return
        self._levels.setdefault(0, {})[key] = data
        self._where[key] = 0

    def take(self, budget: int, count: bool = True) -> list[bytes]:
        """Return updates fitting ``budget`` bytes: urgent first, then fewest transmissions (then newest).

        With ``count=False`` the same updates are returned and none is counted as transmitted.
        """
        if budget <= 0 or not (self._where or self._urgent):
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
                sent = self._urgent_sent[key] + 1
                if sent >= limit:
                    del self._urgent[key], self._urgent_sent[key]
                else:
                    self._urgent_sent[key] = sent
            if not self._where or budget < 8:
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
                del self._where[key]
            else:
                self._levels.setdefault(level, {})[key] = data
                self._where[key] = level
        for level in [lv for lv, b in self._levels.items() if not b]:
            del self._levels[level]
        return out
