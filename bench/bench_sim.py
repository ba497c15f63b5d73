"""Simulator and gossip benchmarks (printed figures and ratios; never asserted).

    python bench/bench_sim.py            # full: 1000 nodes x 600 virtual s (x2), 10,000 nodes, dissemination
    python bench/bench_sim.py --quick    # smaller figures for a smoke run

1. Simulator speed: 1000 nodes for 600 virtual seconds, lan profile, started
   pre-joined (``bootstrap = "full"``: the join storm is measured separately),
   one crash half-way. Goal: <= 30 s wall. Printed next to the *bare loop*
   measured in the same process right after: a heapq event loop doing the same
   number of events, where every delivery msgpack-decodes a real payload of that
   run (datagrams and push-pull frames sampled from it, in the run's proportions)
   and msgpack-encodes the result again — the floor any msgpack simulator pays.
   The ratio is sim CPU time / bare CPU time (CPU time, so that other load on a
   shared machine does not skew it; wall time is printed too).
2. Memory: RSS growth of that process over the run divided by the node count
   (KiB per simulated node at steady state; goal <= 150 KiB).
3. 10,000 nodes pre-joined in steady state for 60 virtual s: virtual seconds per
   wall second and KiB per node (each figure in its own child process, so RSS is
   the run's own).
4. Dissemination: one metadata update at a random node; gossip rounds until 99%
   of N nodes hold it, for N = 100, 300, 1000; should grow like log N. Messages
   per node per second in steady state should stay flat as N grows; the printed
   ratio is each N against N = 100 measured in the same run.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import json
import math
import pathlib
import random
import statistics
import subprocess
import sys
import time
from typing import Any

import msgpack

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from sim.engine import Simulation  # noqa: E402
from sim.scenario import parse  # noqa: E402


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def build_kind() -> str:
    """Whether the simulator runs compiled (setup.py with WASMATRIX_COMPILE=1) or pure Python."""
    import importlib

    compiled, stale = [], []
    for mod in ("mesh.coords", "mesh.wire", "mesh.membership.state", "mesh.node", "sim.engine"):
        path = pathlib.Path(importlib.import_module(mod).__file__ or "")
        if path.suffix == ".so":
            compiled.append(mod)
            src = path.with_name(mod.rsplit(".", 1)[-1] + ".py")
            if src.exists() and src.stat().st_mtime > path.stat().st_mtime:
                stale.append(mod)
    if not compiled:
        return "pure Python"
    out = f"compiled with mypyc ({', '.join(compiled)})"
    return out + (f" -- STALE: {', '.join(stale)} changed since the build, rebuild or delete the .so files" if stale else "")


def _speed_doc(n: int, duration: float, crash: bool = True) -> dict[str, Any]:
    return {
        "nodes": n,
        "profile": "lan",
        "duration": duration,
        "bootstrap": "full",
        "network": {"latency_ms": 2.0, "jitter_ms": 1.0, "loss": 0.005},
        "faults": [{"at": duration / 2, "action": "crash", "node": "random:1"}] if crash else [],
    }


def _samples(sim: Simulation, seconds: float) -> tuple[list[bytes], list[bytes]]:
    """Real payloads of this run: datagrams delivered in the next few virtual seconds, push-pull frames."""
    dgrams: list[bytes] = []
    seen: set[int] = set()
    # Read from the event queue every millisecond (no delivery is quicker) rather than by
    # wrapping Simulation._record: a mypyc-compiled Simulation's methods cannot be replaced.
    end = sim.now + seconds
    while sim.now < end and len(dgrams) < 20_000:
        for t, seq, kind, _dst, _src, payload, _stream, _delayed in sim._heap:
            if kind == 0 and seq not in seen and payload and len(payload) <= 1200:  # 0: a delivery
                seen.add(seq)
                dgrams.append(payload)
        sim.run(sim.now + 0.001)
    frames: list[bytes] = []
    for name in sim.live_names()[:5]:
        frames += [o.data for o in sim.nodes[name].core.swim._push_pull_to("x", False, False)]
    return dgrams, frames


def bare_loop(events: int, n_dgram: int, n_frame: int, dgrams: list[bytes], frames: list[bytes], heap_size: int) -> float:
    """CPU seconds for a heapq loop of ``events`` pops whose deliveries decode and re-encode real payloads."""
    rng = random.Random(0)
    heap = [(rng.random(), i) for i in range(heap_size)]
    heapq.heapify(heap)
    seq = heap_size
    unpackb, packb = msgpack.unpackb, msgpack.packb
    nd, nf = len(dgrams), len(frames)
    acc_d = acc_f = 0
    di = fi = 0
    t0 = time.process_time()
    for _ in range(events):
        t, _ = heapq.heappop(heap)
        acc_f += n_frame
        acc_d += n_dgram
        if acc_f >= events:
            acc_f -= events
            packb(unpackb(frames[fi % nf]))
            fi += 1
        elif acc_d >= events:
            acc_d -= events
            packb(unpackb(dgrams[di % nd]))
            di += 1
        seq += 1
        heapq.heappush(heap, (t + rng.random(), seq))
    return time.process_time() - t0


def child_speed(n: int, duration: float, crash: bool, bare: bool) -> dict[str, Any]:
    gc.collect()
    rss0 = _rss_kib()
    sim = Simulation(parse(_speed_doc(n, duration, crash)), 1)
    t0, c0 = time.perf_counter(), time.process_time()
    sim.run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    gc.collect()
    rss1 = _rss_kib()
    out: dict[str, Any] = {
        "nodes": n,
        "virtual": duration,
        "wall": wall,
        "cpu": cpu,
        "events": sim.events_processed,
        "datagrams": sim.datagrams_delivered,
        "frames": sim.frames_delivered,
        "kib_per_node": (rss1 - rss0) / n,
        "rss_mib": rss1 / 1024,
        "converged": sim.converged(),
        "trace": sim.trace_hash(),
        "build": build_kind(),
    }
    if bare:
        dgrams, frames = _samples(sim, 2.0)
        out["bare"] = bare_loop(sim.events_processed, sim.datagrams_delivered, sim.frames_delivered, dgrams, frames, len(sim._heap))
        out["frame_bytes"] = statistics.mean(len(f) for f in frames)
    return out


def _child(args: list[str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"benchmark child {args} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


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


def _spread(xs: list[float], fmt: str = ".1f") -> str:
    if len(xs) == 1:
        return format(xs[0], fmt)
    return f"{format(statistics.mean(xs), fmt)} (min {format(min(xs), fmt)}, max {format(max(xs), fmt)})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes, one run: a smoke test")
    ap.add_argument("--runs", type=int, default=None, help="repetitions of the speed run (default 2, quick 1)")
    ap.add_argument("--skip-10k", action="store_true")
    ap.add_argument("--skip-dissemination", action="store_true")
    ap.add_argument("--child", nargs=4, metavar=("N", "DURATION", "CRASH", "BARE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        n, dur, crash, bare = args.child
        print(json.dumps(child_speed(int(n), float(dur), crash == "1", bare == "1")))
        return
    n_speed, dur = (300, 120.0) if args.quick else (1000, 600.0)
    runs = args.runs or (1 if args.quick else 2)
    goal = 30.0 * (n_speed * dur) / (1000 * 600.0)

    print(f"== simulator speed: {n_speed} nodes, {dur:.0f} virtual s, lan profile, pre-joined, {runs} run(s) ==")
    print(f"   build: {build_kind()}")
    print("   baseline: bare heapq loop, same event count, each delivery msgpack-decodes + re-encodes a real payload")
    rs = []
    for i in range(runs):
        r = _child([str(n_speed), str(dur), "1", "1"])
        rs.append(r)
        print(
            f"run {i + 1}: wall {r['wall']:.1f} s  cpu {r['cpu']:.1f} s  events {r['events']} ({r['datagrams']} datagrams, "
            f"{r['frames']} frames)  {r['events'] / r['cpu']:.0f} events/cpu-s  bare loop {r['bare']:.1f} cpu-s  "
            f"sim/bare {r['cpu'] / r['bare']:.2f}x  "
            f"{r['kib_per_node']:.0f} KiB/node  converged {r['converged']}  trace {r['trace'][:12]}"
        )
    print(
        f"wall {_spread([r['wall'] for r in rs])} s  cpu {_spread([r['cpu'] for r in rs])} s (goal {goal:.0f} s)  "
        f"sim/bare {_spread([r['cpu'] / r['bare'] for r in rs], '.2f')}x  "
        f"events/cpu-s {_spread([r['events'] / r['cpu'] for r in rs], '.0f')}  "
        f"KiB/node {_spread([r['kib_per_node'] for r in rs], '.0f')} (goal 150)  "
        f"mean push-pull frame {rs[0]['frame_bytes']:.0f} B"
    )

    if not args.skip_10k:
        n_big, dur_big = (1000, 10.0) if args.quick else (10_000, 60.0)
        print(f"\n== {n_big} nodes pre-joined, steady state, {dur_big:.0f} virtual s ==")
        r = _child([str(n_big), str(dur_big), "0", "0"])
        print(
            f"wall {r['wall']:.1f} s  cpu {r['cpu']:.1f} s  virtual s per wall s {dur_big / r['wall']:.2f} "
            f"(per cpu s {dur_big / r['cpu']:.2f})  {r['events'] / r['cpu']:.0f} events/cpu-s  "
            f"{r['kib_per_node']:.0f} KiB/node  RSS {r['rss_mib']:.0f} MiB  converged {r['converged']}"
        )

    print("\n== join storm: nodes joining through 3 seeds within 10 s ==")
    n_join = 300
    doc = {"nodes": n_join, "profile": "lan", "duration": 60.0, "join_window": 10.0, "network": {"latency_ms": 2.0}}
    sim = Simulation(parse(doc), 1)
    t0 = time.perf_counter()
    sim.run()
    print(f"{n_join} nodes: wall {time.perf_counter() - t0:.1f} s for 60 virtual s, converged {sim.converged()}")

    if args.skip_dissemination:
        return
    sizes = (100, 300) if args.quick else (100, 300, 1000)
    print("\n== dissemination of one update to 99% of N (lan: gossip interval 0.2 s, fan-out 3) ==")
    base = None
    print(f"{'N':>6} {'rounds':>8} {'seconds':>8} {'rounds/log2(N)':>15} {'msg/node/s':>11} {'vs N=100':>9}")
    for n in sizes:
        dr = [dissemination(n, s) for s in (1, 2, 3)]
        rounds = sum(x["rounds"] for x in dr) / len(dr)
        secs = sum(x["seconds"] for x in dr) / len(dr)
        msgs = sum(x["steady_msgs"] for x in dr) / len(dr)
        base = base or msgs
        print(f"{n:>6} {rounds:>8.1f} {secs:>8.2f} {rounds / math.log2(n):>15.2f} {msgs:>11.2f} {msgs / base:>8.2f}x")


if __name__ == "__main__":
    main()
