"""Simulator and gossip benchmarks (printed figures and ratios; never asserted).

    python bench/bench_sim.py            # full: 1000 nodes x 10 virtual minutes + dissemination
    python bench/bench_sim.py --quick    # smaller figures for a smoke run

1. Simulator speed: 1000 nodes for 600 virtual seconds, lan profile, started
   pre-joined (``bootstrap = "full"``: the join storm of 1000 nodes is measured
   separately in 2b). Goal: <= 60 s wall on a 2-core machine. The ratio printed
   is wall time against that goal, and events per second.
2. Dissemination: one metadata update at a random node; gossip rounds
   (time / gossip_interval) until 99% of N nodes hold it, for N = 100, 300, 1000.
   Should grow like log N. Messages per node per second in steady state should
   stay flat as N grows; the printed ratio is each N against N = 100 measured in
   the same run.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from sim.engine import Simulation  # noqa: E402
from sim.scenario import parse  # noqa: E402


def speed(n: int, duration: float) -> dict[str, float]:
    doc = {
        "nodes": n,
        "profile": "lan",
        "duration": duration,
        "bootstrap": "full",
        "network": {"latency_ms": 2.0, "jitter_ms": 1.0, "loss": 0.005},
        "faults": [{"at": duration / 2, "action": "crash", "node": "random:1"}],
    }
    sim = Simulation(parse(doc), 1)
    t0 = time.perf_counter()
    sim.run()
    wall = time.perf_counter() - t0
    return {"wall": wall, "events": sim.events_processed, "eps": sim.events_processed / wall, "converged": sim.converged()}


def dissemination(n: int, seed: int) -> dict[str, float]:
    doc = {
        "nodes": n,
        "profile": "lan",
        "duration": 200.0,
        "bootstrap": "full",
        "network": {"latency_ms": 2.0, "jitter_ms": 1.0},
    }
    sim = Simulation(parse(doc), seed)
    sim.run(40.0)  # settle
    m0, t_start = sim.messages_sent, sim.now
    sim.run(60.0)
    steady = (sim.messages_sent - m0) / n / (sim.now - t_start)
    origin = sim.order[n // 2]
    node = sim.nodes[origin]
    from mesh.membership.meta import NodeMeta

    old = node.core.meta
    meta = NodeMeta(old.arch, old.cores, old.memory_mb, NodeMeta.make_labels({"bench": str(seed)}), old.fault_domain, old.geo, 0.5)
    t0 = sim.now
    node.core.update_meta(meta, node.local(t0))
    sim._schedule_timer(node)
    step = sim.scenario.profile.gossip_interval / 4
    need = math.ceil(0.99 * n)
    t = t0
    while t < t0 + 60.0:
        t += step
        sim.run(t)
        have = sum(1 for x in sim.order if x == origin or sim.nodes[x].core.swim.members[origin].meta == meta)
        if have >= need:
            break
    secs = t - t0
    return {"seconds": secs, "rounds": secs / sim.scenario.profile.gossip_interval, "steady_msgs": steady}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n_speed, dur = (300, 120.0) if args.quick else (1000, 600.0)
    sizes = (100, 300) if args.quick else (100, 300, 1000)

    print(f"== simulator speed: {n_speed} nodes, {dur:.0f} virtual s, lan profile, pre-joined ==")
    r = speed(n_speed, dur)
    goal = 60.0 * (n_speed * dur) / (1000 * 600.0)
    print(
        f"wall {r['wall']:.1f} s  events {r['events']}  {r['eps']:.0f} events/s  "
        f"virtual/wall {dur / r['wall']:.1f}x  wall/goal {r['wall'] / goal:.2f} (goal {goal:.0f} s)  converged {r['converged']}"
    )

    print("\n== join storm: nodes joining through 3 seeds within 10 s ==")
    n_join = 300
    doc = {"nodes": n_join, "profile": "lan", "duration": 60.0, "join_window": 10.0, "network": {"latency_ms": 2.0}}
    sim = Simulation(parse(doc), 1)
    t0 = time.perf_counter()
    sim.run()
    print(f"{n_join} nodes: wall {time.perf_counter() - t0:.1f} s for 60 virtual s, converged {sim.converged()}")

    print("\n== dissemination of one update to 99% of N (lan: gossip interval 0.2 s, fan-out 3) ==")
    base = None
    print(f"{'N':>6} {'rounds':>8} {'seconds':>8} {'rounds/log2(N)':>15} {'msg/node/s':>11} {'vs N=100':>9}")
    for n in sizes:
        runs = [dissemination(n, s) for s in (1, 2, 3)]
        rounds = sum(x["rounds"] for x in runs) / len(runs)
        secs = sum(x["seconds"] for x in runs) / len(runs)
        msgs = sum(x["steady_msgs"] for x in runs) / len(runs)
        base = base or msgs
        print(f"{n:>6} {rounds:>8.1f} {secs:>8.2f} {rounds / math.log2(n):>15.2f} {msgs:>11.2f} {msgs / base:>8.2f}x")


if __name__ == "__main__":
    main()
