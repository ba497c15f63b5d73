"""Runtime benchmarks: cold start, hot call, module load (compiled cache), density.

Every figure is printed next to a raw wasmtime-py baseline measured in the same
run that does the same work as the project path: the same module bytes, the
same engine configuration (epoch interruption with a 5 ms ticker thread), the
module linked once (``Linker.define_wasi`` + ``instantiate_pre``), per store the
same limits (memory, table, instances) and epoch deadline, and the same WASI
setup (argv, captured stdout/stderr). What the baseline leaves out is exactly
what the project adds: admission bookkeeping, pools, metrics, error mapping.

Timed figures alternate project and baseline call by call (and which goes
first, round by round), so load on a shared machine hits both alike; p50 and
p99 are over all rounds. The whole measurement repeats ``--runs`` times (default 3) and the
summary gives the spread of each ratio across runs. Density runs each side in a
fresh subprocess and reads the resident set size after every instance has
served one call. Never asserted in tests.

Run: ``python bench/bench_runtime.py [--runs 3] [--quick]`` (about 2 minutes).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import structlog  # noqa: E402
import wasmtime  # noqa: E402

from runtime import PoolConfig, Runtime, RuntimeConfig, example_bytes  # noqa: E402
from runtime.engine import DEFAULT_TICK_MS  # noqa: E402
from runtime.limits import Limits  # noqa: E402

PAYLOAD = b"hello world"

BASELINE_COLD = (
    "raw wasmtime-py: module linked once (define_wasi + instantiate_pre); per call Store, same limits and "
    "epoch deadline, WasiConfig(argv, stdout/stderr callbacks), instantiate, _start, close"
)
BASELINE_HOT = (
    "raw wasmtime-py: one instance made like the pool's (same limits, WASI, _initialize); per call reset the "
    "epoch deadline, alloc, write, handle, read, dealloc x2"
)
BASELINE_LOAD_DISK = (
    "raw wasmtime-py: read the serialized module file, Module.deserialize, Linker.define_wasi, instantiate_pre"
)
BASELINE_LOAD_COMPILE = "raw wasmtime-py: Module(engine, wasm) (compile), Linker.define_wasi, instantiate_pre"
BASELINE_DENSITY = (
    "raw wasmtime-py: N instances from one InstancePre with the pool's limits and WASI, each _initialize'd "
    "and called once, held in a list"
)


# -- the raw side: plain wasmtime-py, configured like the project's engine and stores -------------------


class RawEngine:
    """A wasmtime Engine configured like ``runtime.engine.EngineHandle``, with its own epoch ticker thread."""

    def __init__(self, tick_ms: int = DEFAULT_TICK_MS) -> None:
        cfg = wasmtime.Config()
        cfg.epoch_interruption = True
        cfg.consume_fuel = False
        cfg.cranelift_opt_level = "speed"
        self.engine = wasmtime.Engine(cfg)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, args=(tick_ms / 1000.0,), daemon=True)
        self._thread.start()

    def _tick(self, period: float) -> None:
        while not self._stop.wait(period):
            self.engine.increment_epoch()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def raw_pre(engine: wasmtime.Engine, module: wasmtime.Module) -> wasmtime.InstancePre:
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    return linker.instantiate_pre(module)


def raw_store(engine: wasmtime.Engine, limits: Limits, deadline_ticks: int, argv: list[str],
              out: list[bytes], err: list[bytes]) -> wasmtime.Store:
    store = wasmtime.Store(engine)
    store.set_limits(memory_size=limits.memory_bytes, table_elements=limits.table_elements, instances=1)
    store.set_epoch_deadline(deadline_ticks)
    wasi = wasmtime.WasiConfig()
    wasi.argv = argv
    wasi.stdout_custom = out.append
    wasi.stderr_custom = err.append
    store.set_wasi(wasi)
    return store


def raw_direct_call(store: wasmtime.Store, ex: dict[str, object], deadline_ticks: int, payload: bytes) -> bytes:
    mem, alloc, handle, dealloc = ex["memory"], ex["alloc"], ex["handle"], ex["dealloc"]
    store.set_epoch_deadline(deadline_ticks)  # the project resets it per call: a pooled store lives long
    n = len(payload)
    p = alloc(store, n) & 0xFFFFFFFF  # type: ignore[operator]
    mem.write(store, payload, p)  # type: ignore[attr-defined]
    r = handle(store, p, n)  # type: ignore[operator]
    op, ol = (r >> 32) & 0xFFFFFFFF, r & 0xFFFFFFFF
    body = bytes(mem.read(store, op, op + ol))  # type: ignore[attr-defined]
    dealloc(store, p, n)  # type: ignore[operator]
    dealloc(store, op, ol)  # type: ignore[operator]
    return body


# -- measurement -----------------------------------------------------------------------------------------


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


@dataclass(slots=True)
class Figure:
    """One compared figure of one run: project and baseline p50/p99 (seconds)."""

    label: str
    name: str
    baseline: str
    project: tuple[float, float]
    raw: tuple[float, float]
    goal: float | None = None  # max ratio, where the issue sets one

    @property
    def ratio(self) -> tuple[float, float]:
        return self.project[0] / self.raw[0], self.project[1] / self.raw[1]


def interleaved(project: Callable[[], object], raw: Callable[[], object], rounds: int, n: int,
                warmup: int) -> tuple[list[float], list[float]]:
    """Time ``rounds * n`` calls of each side, alternating call by call (and which side goes first in each
    round), so a preemption or a burst of load on a shared machine lands on both sides alike."""
    for _ in range(warmup):
        project()
        raw()
    p_all: list[float] = []
    r_all: list[float] = []
    clock = time.perf_counter
    for r in range(rounds):
        first, second = ((project, p_all), (raw, r_all)) if r % 2 == 0 else ((raw, r_all), (project, p_all))
        for _ in range(n):
            t = clock()
            first[0]()
            t1 = clock()
            second[0]()
            t2 = clock()
            first[1].append(t1 - t)
            second[1].append(t2 - t1)
    return p_all, r_all


def show(fig: Figure, unit: str = "us") -> None:
    scale = {"us": 1e6, "ms": 1e3}[unit]
    print(f"{fig.name}")
    print(f"  baseline: {fig.baseline}")
    print(f"  project   p50 {fig.project[0] * scale:9.1f} {unit}   p99 {fig.project[1] * scale:9.1f} {unit}")
    print(f"  baseline  p50 {fig.raw[0] * scale:9.1f} {unit}   p99 {fig.raw[1] * scale:9.1f} {unit}")
    goal = f"   (goal <= {fig.goal:.1f}x)" if fig.goal is not None else ""
    print(f"  ratio     p50 {fig.ratio[0]:9.2f}x      p99 {fig.ratio[1]:9.2f}x{goal}")


def cold_start(rounds: int, n: int) -> Figure:
    hello = example_bytes("hello")
    with Runtime(RuntimeConfig(allow_unsigned=True)) as rt:
        lm = rt.load_unsigned(hello, name="hello")
        raw_engine = RawEngine(rt.config.epoch_tick_ms)
        try:
            pre = raw_pre(raw_engine.engine, wasmtime.Module(raw_engine.engine, hello))

            def raw_cold() -> bytes:
                out: list[bytes] = []
                err: list[bytes] = []
                store = raw_store(raw_engine.engine, lm.limits, lm.deadline_ticks, ["hello"], out, err)
                try:
                    inst = pre.instantiate(store)
                    try:
                        inst.exports(store)["_start"](store)
                    except wasmtime.ExitTrap:
                        pass
                finally:
                    store.close()
                return b"".join(out)

            def project_cold() -> bytes:
                return rt.invoke_sync(lm.key).body

            assert raw_cold() == project_cold(), "baseline and project must produce the same output"
            p, r = interleaved(project_cold, raw_cold, rounds, n, warmup=50)
        finally:
            raw_engine.close()
    return Figure("cold start", "cold start: WASI command `hello`, fresh instance per request (Runtime.invoke_sync)",
                  BASELINE_COLD, (pct(p, 0.5), pct(p, 0.99)), (pct(r, 0.5), pct(r, 0.99)), goal=1.5)


def hot_call(rounds: int, n: int) -> Figure:
    handler = example_bytes("handler")
    with Runtime(RuntimeConfig(allow_unsigned=True)) as rt:
        lm = rt.load_unsigned(handler, name="handler", pool=PoolConfig(min_instances=1, max_instances=1))
        raw_engine = RawEngine(rt.config.epoch_tick_ms)
        try:
            pre = raw_pre(raw_engine.engine, wasmtime.Module(raw_engine.engine, handler))
            out: list[bytes] = []
            err: list[bytes] = []
            store = raw_store(raw_engine.engine, lm.limits, lm.deadline_ticks, ["handler"], out, err)
            ex = dict(pre.instantiate(store).exports(store))
            ex["_initialize"](store)  # type: ignore[operator]

            def raw_hot() -> bytes:
                return raw_direct_call(store, ex, lm.deadline_ticks, PAYLOAD)

            def project_hot() -> bytes:
                return rt.call(lm.key, PAYLOAD)

            # Both instances count calls ("n=<calls>:..."): equal outputs mean equal work so far.
            assert raw_hot() == project_hot(), "baseline and project must produce the same output"
            p, r = interleaved(project_hot, raw_hot, rounds, n, warmup=200)
            store.close()
        finally:
            raw_engine.close()
    return Figure("hot call", "hot call: direct ABI `handler` on a warm pooled instance (Runtime.call)",
                  BASELINE_HOT, (pct(p, 0.5), pct(p, 0.99)), (pct(r, 0.5), pct(r, 0.99)), goal=1.3)


def module_load(rounds: int) -> tuple[Figure, Figure]:
    """Loading ``hello`` on a fresh node: from the compiled disk cache, and compiling it (cache miss)."""
    hello, handler = example_bytes("hello"), example_bytes("handler")
    disk_p: list[float] = []
    disk_r: list[float] = []
    comp_p: list[float] = []
    comp_r: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(rounds):
            # Engine (and ticker) creation is outside the timed region on both sides: the runtime makes
            # its engine lazily on the first load, so a first, untimed load of another module makes it.
            d = Path(tmp) / f"n{i}"
            with Runtime(RuntimeConfig(data_dir=d, allow_unsigned=True)) as rt:
                rt.load_unsigned(handler, name="warm")
                t = time.perf_counter()
                rt.load_unsigned(hello, name="hello")
                comp_p.append(time.perf_counter() - t)
            with Runtime(RuntimeConfig(data_dir=d, allow_unsigned=True)) as rt:
                rt.load_unsigned(handler, name="warm")
                t = time.perf_counter()
                rt.load_unsigned(hello, name="hello")
                disk_p.append(time.perf_counter() - t)
                assert rt.metrics.value("wasmatrix_runtime_compiles_total") == 0, "expected a disk cache hit"
            raw_file = Path(tmp) / f"raw{i}.cwasm"
            eng = RawEngine()
            try:
                t = time.perf_counter()
                module = wasmtime.Module(eng.engine, hello)
                raw_pre(eng.engine, module)
                comp_r.append(time.perf_counter() - t)
                raw_file.write_bytes(module.serialize())
            finally:
                eng.close()
            eng = RawEngine()
            try:
                t = time.perf_counter()
                raw_pre(eng.engine, wasmtime.Module.deserialize(eng.engine, raw_file.read_bytes()))
                disk_r.append(time.perf_counter() - t)
            finally:
                eng.close()
    disk = Figure("load, disk cache hit",
                  "module load from the compiled disk cache (Runtime.load_unsigned, fresh runtime)",
                  BASELINE_LOAD_DISK, (pct(disk_p, 0.5), max(disk_p)), (pct(disk_r, 0.5), max(disk_r)))
    comp = Figure("load, compile (miss)", "module load with compile (cache miss)", BASELINE_LOAD_COMPILE,
                  (pct(comp_p, 0.5), max(comp_p)), (pct(comp_r, 0.5), max(comp_r)))
    return disk, comp


# -- density: each side in its own process, so one side's freed heap cannot hide the other's growth --------


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def density_worker(side: str, count: int) -> dict[str, float]:
    handler = example_bytes("handler")
    keep: list[object] = []
    if side == "project":
        cfg = RuntimeConfig(allow_unsigned=True, max_total_idle=count, memory_budget_bytes=1 << 50)
        rt = Runtime(cfg)
        lm = rt.load_unsigned(handler, name="handler", pool=PoolConfig(min_instances=0, max_instances=count))
        gc.collect()
        before = rss_bytes()
        held = []
        for _ in range(count):
            # Every other instance is held, so the pool has none idle: this call creates a new instance,
            # serves the request on it and returns it; then we hold that (most recently used) one.
            rt.call(lm.key, PAYLOAD)
            held.append(rt.pools.acquire(lm.key))
        for inst in held:
            rt.pools.release(lm.key, inst, reusable=True)
        stats = rt.pools.stats(lm.key)
        assert stats.idle == count and stats.created == count, stats
        linear = stats.idle_bytes / count
        keep.append(rt)
    else:
        eng = RawEngine()
        limits = Limits()
        deadline = ((limits.timeout_ms + DEFAULT_TICK_MS - 1) // DEFAULT_TICK_MS) + 1
        pre = raw_pre(eng.engine, wasmtime.Module(eng.engine, handler))
        gc.collect()
        before = rss_bytes()
        linear_total = 0
        for _ in range(count):
            out: list[bytes] = []
            err: list[bytes] = []
            store = raw_store(eng.engine, limits, deadline, ["handler"], out, err)
            ex = dict(pre.instantiate(store).exports(store))
            ex["_initialize"](store)  # type: ignore[operator]
            raw_direct_call(store, ex, deadline, PAYLOAD)
            linear_total += ex["memory"].data_len(store)  # type: ignore[attr-defined]
            keep.append((store, ex, out, err))
        linear = linear_total / count
        keep.append(eng)
    gc.collect()
    after = rss_bytes()
    return {"per_instance": (after - before) / count, "linear": linear}


def density(count: int) -> Figure:
    res = {}
    for side in ("project", "raw"):
        proc = subprocess.run([sys.executable, __file__, "--density-worker", side, str(count)],
                              capture_output=True, text=True, check=True)
        res[side] = json.loads(proc.stdout.strip().splitlines()[-1])
    fig = Figure("density", f"density: {count} idle `handler` instances, each after serving one call (RSS growth / N)",
                 BASELINE_DENSITY, (res["project"]["per_instance"],) * 2, (res["raw"]["per_instance"],) * 2)
    fig.name += f"; linear memory {res['project']['linear'] / 1024:.0f} KiB each (committed lazily)"
    return fig


def show_density(fig: Figure) -> None:
    print(fig.name)
    print(f"  baseline: {fig.baseline}")
    p, r = fig.project[0], fig.raw[0]
    print(f"  project   {p / 1024:9.1f} KiB per instance  (~{(1 << 30) / p:,.0f} instances per GiB)")
    print(f"  baseline  {r / 1024:9.1f} KiB per instance  (~{(1 << 30) / r:,.0f} instances per GiB)")
    print(f"  ratio     {p / r:9.2f}x")


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x [{min(values):.2f}-{max(values):.2f}]"


def main() -> None:
    import logging

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="repeat every measurement this many times (spread)")
    ap.add_argument("--quick", action="store_true", help="fewer rounds and samples (a smoke run)")
    ap.add_argument("--density-worker", nargs=2, metavar=("SIDE", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    if args.density_worker:
        side, count = args.density_worker
        print(json.dumps(density_worker(side, int(count))))
        return

    rounds, n_cold, n_hot, n_load, n_density = (4, 100, 500, 3, 200) if args.quick else (10, 300, 2000, 8, 1000)
    runs: list[list[Figure]] = []
    for run in range(args.runs):
        print(f"=== run {run + 1}/{args.runs}: {rounds} rounds per timed figure, project and baseline alternating")
        figs = [cold_start(rounds, n_cold), hot_call(rounds, n_hot)]
        for fig in figs:
            show(fig)
        disk, comp = module_load(n_load)
        show(disk, "ms")
        show(comp, "ms")
        print("  (load p99 column = max of the rounds)")
        dens = density(n_density)
        show_density(dens)
        runs.append(figs + [disk, comp, dens])

    print(f"=== summary over {args.runs} runs: ratio project/baseline, median [min-max across runs]")
    for i, fig in enumerate(runs[0]):
        p50 = [r[i].ratio[0] for r in runs]
        p99 = [r[i].ratio[1] for r in runs]
        goal = f"  goal <= {fig.goal:.1f}x" if fig.goal is not None else ""
        label = fig.label
        if label == "density":
            print(f"  {label:<22} per instance {spread(p50)}")
        else:
            print(f"  {label:<22} p50 {spread(p50)}  p99 {spread(p99)}{goal}")
        vals = [(r[i].project[0], r[i].raw[0], r[i].project[1], r[i].raw[1]) for r in runs]
        if label == "density":
            unit, scale = "KiB", 1 / 1024
        else:
            unit, scale = ("ms", 1e3) if label.startswith("load") else ("us", 1e6)
        pj = [v[0] * scale for v in vals]
        rw = [v[1] * scale for v in vals]
        what = "per instance" if label == "density" else "p50"
        print(f"  {'':<22} project {what} {min(pj):.1f}-{max(pj):.1f} {unit}, "
              f"baseline {what} {min(rw):.1f}-{max(rw):.1f} {unit}")
        if label != "density":
            pj99 = [v[2] * scale for v in vals]
            rw99 = [v[3] * scale for v in vals]
            print(f"  {'':<22} project p99 {min(pj99):.1f}-{max(pj99):.1f} {unit}, "
                  f"baseline p99 {min(rw99):.1f}-{max(rw99):.1f} {unit}")


if __name__ == "__main__":
    main()
