"""Lifeguard local health awareness (memberlist's awareness.go)."""

from __future__ import annotations


class Awareness:
    """A health score in [0, max): 0 is healthy.

    Missed nacks and having to refute suspicions about ourselves raise it; a
    successful probe lowers it. Probe interval and timeout are multiplied by
    ``score + 1``, so a node that is itself overloaded or badly connected slows
    down instead of accusing healthy peers.
    """

    __slots__ = ("max", "score")

    def __init__(self, max_multiplier: int) -> None:
        self.max = max_multiplier
        self.score = 0

    def apply_delta(self, delta: int) -> None:
        """Move the score by delta, clamped to [0, max - 1]."""
        self.score = min(max(self.score + delta, 0), self.max - 1)

    def scale(self, value: float) -> float:
        """Scale a timeout or interval by the current health."""
        return value * (self.score + 1)
