"""Intent replication in the simulator: prints figures (never asserts).

Run: python bench/bench_intent.py [--quick]

For N = 100 and N = 1000 simulated nodes (LAN profile, 2 ms ± 1 ms links, 1 % loss):

* time (virtual seconds) from the acknowledgement of one registry update (a module
  publish) at one node until every node holds it in its effective view;
* bytes per update: sync + blob bytes sent in the window after the update, minus what
  idle anti-entropy sends in a window of the same length;
* anti-entropy cost when nothing changes: sync bytes per node per virtual second.

N = 100 runs the full join phase. N = 1000 starts **pre-joined**: every node boots at t=0
knowing every other member (the join phase of 1000 nodes through 3 seeds costs minutes of
wall time and is not what this measures). Pre-joining uses only SwimCore's public
``merge_states`` and ``BroadcastQueue.take``.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import sys
import time
from typing import Any

import structlog

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))

from mesh.node import NodeCore  # noqa: E402
from sim.engine import Simulation  # noqa: E402
from sim.intent import IntentHarness  # noqa: E402
from sim.scenario import parse  # noqa: E402


class PrejoinedSimulation(Simulation):
    """Every initial node boots at t=0 without seeds; :meth:`prejoin` then hands each the full view."""

    def _new_core(self, name: str, index: int, generation: int, now: float) -> NodeCore:
        rng = random.Random(f"{self.seed}:{name}:{generation}")
        intent, blobs = self.intent.make(name, generation)
        return NodeCore(name, name, self._make_meta(index), self.scenario.profile, rng, now=now, seeds=(), intent=intent, blobs=blobs)

    def prejoin(self) -> float:
        """Merge every node's own state into every other node; return the wall seconds it took."""
        t0 = time.perf_counter()
        self.run(until=0.0)  # process the boots at t=0
        states = [st for n in self.order for st in self.nodes[n].core.swim.local_states() if st.node == n]
        for n in self.order:
            node = self.nodes[n]
            swim = node.core.swim
            swim.merge_states(states, 0.0)
            swim.events = []
            # Everyone already knows everyone: drop the join broadcasts instead of gossiping them.
            while len(swim.broadcasts):
                swim.broadcasts.take(1 << 30)
            node.timer_at = float("inf")
            self._schedule_timer(node)
        return time.perf_counter() - t0


def doc(n: int, duration: float, writes: list[float], prejoined: bool) -> dict[str, Any]:
    faults = [
        {"at": at, "action": "publish", "node": f"n{(7 * (i + 1)) % n:0{max(3, len(str(n - 1)))}d}",
         "module": "bench", "version": f"1.{i}.0", "size": 1024}
        for i, at in enumerate(writes)
    ]
    return {
        "name": f"bench-intent-{n}",
        "nodes": n,
        "duration": duration,
        "seeds": 3,
        "join_window": 0.0 if prejoined else 5.0,
        "network": {"latency_ms": 2.0, "jitter_ms": 1.0, "loss": 0.01},
        "intent": {},
        "faults": faults,
    }


def sync_bytes(sim: Simulation) -> int:
    h = sim.intent
    assert isinstance(h, IntentHarness)
    return h.totals().get("intent_bytes_sent", 0)


def measure(n: int, prejoined: bool, seed: int, settle: float, idle: float, writes: int, spacing: float) -> None:
    at = [settle + i * spacing for i in range(writes)]
    idle_from = at[-1] + spacing
    duration = idle_from + idle
    sc = parse(doc(n, duration, at, prejoined))
    wall0 = time.perf_counter()
    sim: Simulation = PrejoinedSimulation(sc, seed) if prejoined else Simulation(sc, seed)
    note = ""
    if isinstance(sim, PrejoinedSimulation):
        note = f" (pre-joined in {sim.prejoin():.1f} wall s)"
    sim.run(until=settle)
    raw: list[int] = []
    for t in at:
        b = sync_bytes(sim)
        sim.run(until=t + spacing)
        raw.append(sync_bytes(sim) - b)
    # Idle window after the updates: state vectors now list the writers' clients.
    b0 = sync_bytes(sim)
    sim.run()
    idle_bytes = sync_bytes(sim) - b0
    idle_rate = idle_bytes / idle  # whole mesh, bytes per second
    per_update = [r - idle_rate * spacing for r in raw]
    h = sim.intent
    assert isinstance(h, IntentHarness)
    live = set(sim.live_names())
    times, missing = [], 0
    for w in h.writes.values():
        if set(w.visible) >= live:
            times.append(max(w.visible[x] for x in live) - w.acked_at)
        else:
            missing += 1
    wall = time.perf_counter() - wall0
    upd = h.live_intents()[0][1].counters
    print(f"N={n}{' pre-joined' if prejoined else ''}: {len(h.writes)} registry updates, {wall:.1f} wall s{note}")
    if times:
        print(f"  update -> all {len(live)} nodes: median {statistics.median(times):.2f} s, max {max(times):.2f} s (virtual)"
              + (f"; {missing} not everywhere" if missing else ""))
    else:
        print(f"  no update reached every node ({missing} missing)")
    print(f"  bytes per update (sync + blob, minus idle): median {statistics.median(per_update) / 1e3:.1f} kB, "
          f"= {statistics.median(per_update) / n:.0f} B per node")
    print(f"  idle anti-entropy: {idle_bytes / n / idle:.1f} B per node per s "
          f"({idle_bytes / idle / 1e3:.1f} kB/s for the mesh; one round every ~2 s per node)")
    print(f"  one node's crdt counters: {upd.anti_entropy_rounds} AE rounds, {upd.eager_pushes} eager pushes, "
          f"{upd.relays} relays, {upd.updates_redundant} redundant updates received")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N=100 only")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    t0 = time.perf_counter()
    measure(100, prejoined=False, seed=args.seed, settle=20.0, idle=20.0, writes=5, spacing=10.0)
    if not args.quick:
        measure(1000, prejoined=True, seed=args.seed, settle=4.0, idle=10.0, writes=3, spacing=8.0)
    print(f"total {time.perf_counter() - t0:.1f} wall s")


if __name__ == "__main__":
    main()
