"""Timing shared by the benchmarks (imported from the script's own directory, bench/)."""

from __future__ import annotations

import time
from typing import Callable


def best_us(run: Callable[[], object], count: int, repeats: int = 3) -> float:
    """Best of ``repeats`` timings of ``run`` (``count`` operations), in CPU µs per operation.

    CPU time of this process, not wall time: on a shared machine wall time mostly measures the
    other processes; both sides of every ratio are measured the same way.
    """
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        run()
        best = min(best, time.process_time() - t)
    return best / count * 1e6
