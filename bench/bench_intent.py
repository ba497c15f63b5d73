"""Intent propagation in the simulator: prints figures (never asserts).

Run: python bench/bench_intent.py [--quick] [--seeds 1 2]

For N = 100 and N = 1000 simulated nodes, **pre-joined** (every node boots at t=0 knowing
every other member: the join phase of 1000 nodes through 3 seeds costs minutes of wall time
and is not what this measures), links 2 ms ± 1 ms (uniform), it publishes a few registry
updates at different nodes and prints:

* **delivery delay**: for every (update, node) pair, the virtual time from the update's
  acknowledgement until the node holds it in its effective view — p50 / p99 over all pairs;
* **time to all**: per update, until the *last* node holds it — median / max over updates;
* **bytes per update**: sync bytes sent in the window after an update, minus idle traffic;
* **idle anti-entropy**: sync bytes per node per virtual second when nothing changes.

Each figure is printed for two protocols run in the same invocation, on the same seeds:

* ``short push`` — the baseline: the push parameters intent had before eager forwarding
  (fanout 3, 4 relay hops, no ring edge, no push retry), anti-entropy repairing the rest;
* ``default``    — ``SyncConfig()`` defaults: fanout 3, forwarding by every node that learned
  something new for up to 10 hops, a ring-successor edge, one retry of an unacknowledged push.

Both open every anti-entropy round with the 16-byte heads digest (``HeadsDigest``; the Yjs
state-vector opening no longer exists), so their idle figures are alike.

Loss. The simulator carries intent frames on streams, which a lossy link does not drop: the
scenario's ``loss`` hits only SWIM datagrams. Two stream models make intent feel it too:

* ``tcp``  — a frame is lost with probability ``loss`` per transmission and retransmitted
  after an RTO of 200 ms (Linux ``TCP_RTO_MIN``), doubling each time (no fast retransmit or
  tail-loss probe, so this overstates TCP's delay);
* ``drop`` — a frame is lost for good with probability ``loss`` (a stream reset that loses
  what was in flight); anti-entropy repairs.

Virtual times exclude CPU time (the simulator's nodes process instantly); the per-record cost
is measured by ``bench/bench_crdt.py`` (about 0.1 ms per record per hop, small next to link latency).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import structlog

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))

from crdt.sync import SyncConfig  # noqa: E402
from mesh.node import NodeCore  # noqa: E402
from sim import engine  # noqa: E402
from sim.engine import Simulation  # noqa: E402
from sim.intent import IntentHarness, percentile  # noqa: E402
from sim.scenario import parse  # noqa: E402

SHORT_PUSH = SyncConfig(fanout=3, relay_ttl=4, ring=False, push_retry=0.0)
NEW = SyncConfig()
RTO = 0.2


class BenchSimulation(Simulation):
    """Pre-joined nodes, a chosen sync protocol, and a loss model for intent stream frames."""

    sync_config: SyncConfig = NEW
    stream_loss: float = 0.0
    stream_model: str = "tcp"

    def _new_core(self, name: str, index: int, generation: int, now: float) -> NodeCore:
        rng = random.Random(f"{self.seed}:{name}:{generation}")
        assert self.intent is not None
        self.intent.sync_config = self.sync_config
        intent, blobs = self.intent.make(name, generation)
        return NodeCore(name, name, self._make_meta(index), self.scenario.profile, rng, now=now, seeds=(), intent=intent, blobs=blobs)

    def _push(self, t: float, kind: int, data: Any) -> None:
        # Reliable frames on their first scheduling (not a slow node's re-queue) meet the loss model.
        if kind == engine._DELIVER and data[3] and not data[4] and self.stream_loss > 0:
            rng = self._stream_rng
            if self.stream_model == "drop":
                if rng.random() < self.stream_loss:
                    self.stream_dropped += 1
                    return
            else:
                rto = RTO
                while rng.random() < self.stream_loss:
                    t += rto
                    rto *= 2
                    self.stream_retransmits += 1
        super()._push(t, kind, data)

    def prejoin(self) -> float:
        """Merge every node's own state into every other node; return the wall seconds it took."""
        t0 = time.perf_counter()
        self._stream_rng = random.Random(f"{self.seed}:stream-loss")
        self.stream_dropped = 0
        self.stream_retransmits = 0
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


def doc(n: int, duration: float, writes: list[float], loss: float) -> dict[str, Any]:
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
        "join_window": 0.0,
        "network": {"latency_ms": 2.0, "jitter_ms": 1.0, "loss": loss},
        "intent": {},
        "faults": faults,
    }


def sync_bytes(sim: Simulation) -> int:
    h = sim.intent
    assert isinstance(h, IntentHarness)
    return h.totals().get("intent_bytes_sent", 0)


@dataclass(slots=True)
class Result:
    delays: list[float]  # every (update, node) delivery delay
    to_all: list[float]  # per update: until the last node
    missing: int  # (update, node) pairs not delivered by the end
    per_update_bytes: list[float]
    idle_per_node_s: float
    wall: float
    lost_frames: int


def measure(n: int, seed: int, cfg: SyncConfig, loss: float, model: str, writes: int, spacing: float, idle: float) -> Result:
    """One pre-joined run: ``writes`` publishes ``spacing`` s apart, then ``idle`` s without changes."""
    settle = 2.0
    at = [settle + i * spacing for i in range(writes)]
    idle_from = at[-1] + spacing
    sc = parse(doc(n, idle_from + idle, at, loss))
    wall0 = time.perf_counter()
    BenchSimulation.sync_config = cfg
    BenchSimulation.stream_loss = loss
    BenchSimulation.stream_model = model
    sim = BenchSimulation(sc, seed)
    sim.prejoin()
    sim.run(until=settle)
    raw: list[int] = []
    for t in at:
        b = sync_bytes(sim)
        sim.run(until=t + spacing)
        raw.append(sync_bytes(sim) - b)
    b0 = sync_bytes(sim)
    sim.run()
    idle_bytes = sync_bytes(sim) - b0
    idle_rate = idle_bytes / idle  # whole mesh, bytes per second
    h = sim.intent
    assert isinstance(h, IntentHarness)
    live = sorted(sim.live_names())
    delays: list[float] = []
    to_all: list[float] = []
    missing = 0
    for w in h.writes.values():
        got = [w.visible[x] - w.acked_at for x in live if x in w.visible]
        missing += len(live) - len(got)
        delays += got
        to_all.append(max(got) if len(got) == len(live) else math.inf)
    return Result(delays, to_all, missing, [r - idle_rate * spacing for r in raw], idle_bytes / n / idle,
                  time.perf_counter() - wall0, sim.stream_dropped + sim.stream_retransmits)


def ms(x: float | None) -> str:
    if x is None:
        return "-"
    return "never" if math.isinf(x) else f"{x * 1000:.0f}"


def report(label: str, rs: list[Result], n: int) -> None:
    """One table row: per-seed p50/p99 and time-to-all, plus the pooled figures."""
    per_seed = " | ".join(
        f"p50 {ms(percentile(r.delays, 50))} p99 {ms(percentile(r.delays, 99))} all≤{ms(max(r.to_all))}" for r in rs
    )
    pooled = [d for r in rs for d in r.delays]
    alls = [a for r in rs for a in r.to_all]
    miss = sum(r.missing for r in rs)
    print(f"  {label:<24} pooled p50 {ms(percentile(pooled, 50)):>5} ms  p99 {ms(percentile(pooled, 99)):>5} ms  "
          f"to-all median {ms(statistics.median(alls)):>5} max {ms(max(alls)):>5} ms"
          + (f"  MISSING {miss}" if miss else ""))
    pu = statistics.median([b for r in rs for b in r.per_update_bytes])
    print(f"  {'':<24} per seed [{per_seed}] ms; {pu / 1e3:.0f} kB/update ({pu / n:.0f} B/node); "
          f"idle AE {statistics.mean(r.idle_per_node_s for r in rs):.1f} B/node/s; "
          f"{sum(r.lost_frames for r in rs)} frames lost/retransmitted; {sum(r.wall for r in rs):.0f} wall s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N=100 only")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--sizes", type=int, nargs="+", default=None)
    args = ap.parse_args()
    sizes = args.sizes or ([100] if args.quick else [100, 1000])
    t0 = time.perf_counter()
    for n in sizes:
        writes = 5 if n <= 100 else 4
        print(f"N={n} pre-joined, {writes} registry updates per seed, seeds {args.seeds}, links 2±1 ms")
        cases = [
            ("short push, 0% loss", SHORT_PUSH, 0.0, "tcp", 8.0),
            ("default, 0% loss", NEW, 0.0, "tcp", 3.0),
            ("default, 3% loss (tcp)", NEW, 0.03, "tcp", 3.0),
            ("default, 3% loss (drop)", NEW, 0.03, "drop", 3.0),
        ]
        for label, cfg, loss, model, spacing in cases:
            rs = [measure(n, s, cfg, loss, model, writes, spacing, idle=6.0) for s in args.seeds]
            report(label, rs, n)
    print(f"total {time.perf_counter() - t0:.1f} wall s")


if __name__ == "__main__":
    main()
