"""Cost of hostile input to one membership node (printed figures and ratios; never asserted).

    python bench/bench_hostile.py            # 100,000 mutated datagrams
    python bench/bench_hostile.py --quick    # 10,000

Feeds one ``NodeCore`` (lan profile) a stream of randomly mutated membership
datagrams (1-4 bytes overwritten in a valid Ping / Gossip / Ack / IndirectPing
with piggybacked updates) and, as the baseline in the same run, the same number
of the unmutated datagrams. Prints mean, p99, p99.9 and worst time per datagram
and the ratio mutated/baseline, then what the hostile stream left behind: members
(every one with a valid name), the node's incarnation, and the counters.
"""

from __future__ import annotations

import argparse
import pathlib
import random
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from mesh.membership import NodeMeta, profile  # noqa: E402
from mesh.node import NodeCore  # noqa: E402
from mesh.wire import is_valid_name  # noqa: E402
from tests.hostile_datagrams import base_datagrams, mutated_datagrams  # noqa: E402


def feed(datagrams: list[bytes]) -> tuple[NodeCore, list[float]]:
    """Feed every datagram to a fresh node; return it and the sorted seconds per datagram."""
    node = NodeCore("a", "a", NodeMeta(), profile("lan"), random.Random(1))
    now = 0.0
    times = []
    clock = time.perf_counter
    for data in datagrams:
        now += 0.001
        t0 = clock()
        node.receive("b", data, now)
        node.tick(now)
        times.append(clock() - t0)
    times.sort()
    return node, times


def summary(times: list[float]) -> str:
    """Mean, p99, p99.9 and worst (the worst is mostly OS scheduling on a shared machine)."""
    n = len(times)
    mean = sum(times) / n
    return (
        f"mean {mean * 1e6:.1f} us, p99 {times[int(n * 0.99)] * 1e6:.0f} us, "
        f"p99.9 {times[int(n * 0.999)] * 1e6:.0f} us, worst {times[-1] * 1e3:.2f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=9)
    args = ap.parse_args()
    n = 10_000 if args.quick else 100_000
    base = base_datagrams()
    valid = [base[i % len(base)] for i in range(n)]
    mutated = mutated_datagrams(n, args.seed)
    _, base_times = feed(valid)
    node, times = feed(mutated)
    ratio = sum(times) / sum(base_times)
    print(f"== {n} datagrams to one node (lan); baseline = the same count of unmutated datagrams ==")
    print(f"baseline: {summary(base_times)}")
    print(f"mutated:  {summary(times)}  ({ratio:.2f}x baseline mean)")
    swim = node.swim
    bad = [n for n in swim.members if not is_valid_name(n)]
    print(
        f"left behind: {len(swim.members) - 1} other members, {len(bad)} with an invalid name, incarnation {swim.incarnation}"
    )
    print("node counters:", {k: v for k, v in node.counters.items() if v})
    print("membership counters:", {k: v for k, v in swim.counters.items() if v})


if __name__ == "__main__":
    main()
