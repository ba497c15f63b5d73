"""Lifeguard's dynamic suspicion timeout (memberlist's suspicion.go)."""

from __future__ import annotations

import math


class Suspicion:
    """Timer for one suspected node whose timeout shrinks with confirmations.

    The timeout starts at ``max_timeout`` and moves towards ``min_timeout`` as
    ``k`` independent suspectors confirm, on a logarithmic curve:
    ``max - (max - min) * log(c + 1) / log(k + 1)``. A lone (possibly slow or
    partitioned) prober therefore needs the long timeout, while a failure seen by
    many peers is confirmed quickly.
    """

    __slots__ = ("incarnation", "start", "min_timeout", "max_timeout", "k", "confirmers", "deadline")

    def __init__(
        self, incarnation: int, suspector: str, start: float, k: int, min_timeout: float, max_timeout: float
    ) -> None:
        self.incarnation = incarnation
        self.start = start
        self.min_timeout = min_timeout
        self.max_timeout = max_timeout
        self.k = max(0, k)
        self.confirmers = {suspector}
        self.deadline = start + (min_timeout if self.k < 1 else max_timeout)

    def confirm(self, suspector: str) -> bool:
        """Count an independent confirmation; return True if it was new."""
        if suspector in self.confirmers or len(self.confirmers) - 1 >= self.k:
            return False
        self.confirmers.add(suspector)
        self.deadline = self.start + self.timeout()
        return True

    def timeout(self) -> float:
        """The current timeout for the number of confirmations so far."""
        if self.k < 1:
            return self.min_timeout
        c = len(self.confirmers) - 1
        frac = math.log(c + 1.0) / math.log(self.k + 1.0)
        return max(self.min_timeout, self.max_timeout - (self.max_timeout - self.min_timeout) * frac)
