"""A tiny deterministic driver for a handful of NodeCores: fixed latency, no loss.

The simulator in ``sim/`` is the real one; this keeps membership tests free of
scenario files and independent of simulator changes.
"""

from __future__ import annotations

import heapq
from typing import Callable

from mesh.node import NodeCore
from mesh.wire import Outgoing


class MiniNet:
    """Delivers every message after ``latency`` seconds and runs timers when due."""

    def __init__(self, nodes: dict[str, NodeCore], latency: float = 0.001) -> None:
        self.nodes = nodes
        self.latency = latency
        self.now = 0.0
        self._heap: list[tuple[float, int, str, str, bytes, bool]] = []
        self._seq = 0
        self.delivered = 0
        self.drop: Callable[[str, str, bytes], bool] = lambda src, dst, data: False

    def send(self, src: str, outs: list[Outgoing]) -> None:
        """Queue what ``src`` wants to send (addresses are node names here)."""
        for o in outs:
            self._seq += 1
            heapq.heappush(self._heap, (self.now + self.latency, self._seq, o.dst, src, o.data, o.reliable))

    def start(self) -> None:
        """Call ``start`` on every node (seeds join)."""
        for name in sorted(self.nodes):
            self.send(name, self.nodes[name].start(self.now))

    def run_until(self, end: float) -> None:
        """Advance virtual time to ``end``, delivering and ticking in time order."""
        while True:
            t_msg = self._heap[0][0] if self._heap else float("inf")
            t_tick, who = float("inf"), ""
            for name in sorted(self.nodes):
                d = self.nodes[name].next_deadline()
                if d is not None and d < t_tick:
                    t_tick, who = d, name
            t = min(t_msg, t_tick)
            if t > end:
                self.now = end
                return
            self.now = max(self.now, t)
            if t_msg <= t_tick:
                _, _, dst, src, data, reliable = heapq.heappop(self._heap)
                node = self.nodes.get(dst)
                if node is None or self.drop(src, dst, data):
                    continue
                self.delivered += 1
                self.send(dst, node.receive(src, data, self.now, reliable))
            else:
                self.send(who, self.nodes[who].tick(self.now))
