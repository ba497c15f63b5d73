"""Runtime benchmarks: cold start, hot call, concurrency, module load (compiled cache), density.

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

The direct-ABI figures use ``handler`` (direct ABI version 2: one call into
wasm per invocation, docs/ABI.md §2) through ``Runtime.invoke_sync`` and are
compared with two raw baselines doing the same ABI work on an instance made
like the pool's: wasmtime-py's public API (``Func.__call__``,
``Memory.write/read``), and the floor, wasmtime's C API called through ctypes
(``wasmtime_func_call_unchecked``, ``memmove``/``string_at``), which is how the
project calls it. Issue 12's goals are absolute: hot p50 <= 35 us, p99 <= 100
us, direct cold start (instantiate + first call) p99 <= 400 us.

Concurrency: requests/s of 1, 2, 4, 8 clients on one module (threads calling
``invoke_sync``, and trio tasks awaiting ``Runtime.invoke``), for a trivial
call and a CPU-heavy one (``spin:500000``, about 1 ms of wasm), next to raw
threads each calling their own instance through the C API.

Run: ``python bench/bench_runtime.py [--runs 3] [--quick]`` (about 3 minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import structlog  # noqa: E402
import wasmtime  # noqa: E402
from wasmtime import _bindings as _capi  # noqa: E402  # the raw C API, for the floor baseline

from runtime import PoolConfig, Request, Runtime, RuntimeConfig, example_bytes  # noqa: E402
from runtime.abi import INITIAL_INPUT_CAPACITY  # noqa: E402
from runtime.engine import DEFAULT_TICK_MS  # noqa: E402
from runtime.limits import Limits  # noqa: E402

PAYLOAD = b"hello world"

BASELINE_COLD = (
    "raw wasmtime-py: module linked once (define_wasi + instantiate_pre); per call Store, same limits and "
    "epoch deadline, WasiConfig(argv, stdout/stderr callbacks), instantiate, _start, close"
)
BASELINE_HOT_PUBLIC = (
    "raw wasmtime-py public API: one instance made like the pool's (same limits, WASI, _initialize, "
    "wmx_abi_version, input buffer alloc'd once); per call set_epoch_deadline, Memory.write, handle "
    "(Func.__call__), Memory.read"
)
BASELINE_HOT_CAPI = (
    "raw wasmtime C API via ctypes (the floor): the same instance and per-call work, with "
    "wasmtime_func_call_unchecked, wasmtime_context_set_epoch_deadline, memmove and string_at"
)
BASELINE_COLD_DIRECT = (
    "raw wasmtime-py: module linked once (define_wasi + instantiate_pre); per call Store with the same limits "
    "and epoch deadline, WasiConfig(argv, stdout/stderr callbacks), instantiate, _initialize, wmx_abi_version, "
    "alloc(16 KiB), write, handle, read (these calls and copies through the C API via ctypes, as the project), close"
)
BASELINE_CONCURRENCY = (
    "raw threads, each with its own instance made like the pool's, calling handle through the C API via ctypes "
    "(write, handle, read, epoch deadline per call); no pool, no metrics"
)
BASELINE_LOAD_DISK = (
    "raw wasmtime-py: read the serialized module file, Module.deserialize, Linker.define_wasi, instantiate_pre"
)
BASELINE_LOAD_COMPILE = "raw wasmtime-py: Module(engine, wasm) (compile), Linker.define_wasi, instantiate_pre"
BASELINE_DENSITY = (
    "raw wasmtime-py: N instances from one InstancePre with the pool's limits and WASI, each _initialize'd, "
    "given its 16 KiB input buffer and called once, held in a list"
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


class RawInstance:
    """A ``handler`` instance made like the pool's, called with the version-2 ABI (one call into wasm).

    ``capi`` selects how the calls are made: wasmtime-py's public API, or wasmtime's C API through ctypes
    (written out here, independently of runtime/fastcall.py)."""

    def __init__(self, engine: wasmtime.Engine, pre: wasmtime.InstancePre, limits: Limits, deadline_ticks: int,
                 *, capi: bool) -> None:
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.deadline = deadline_ticks
        self.store = raw_store(engine, limits, deadline_ticks, ["handler"], self.out, self.err)
        ex = pre.instantiate(self.store).exports(self.store)
        self.mem, self.handle = ex["memory"], ex["handle"]
        self.cap = INITIAL_INPUT_CAPACITY
        if capi:
            ctx = self.store._context()
            _capi_call(ctx, ex["_initialize"], [], 0)
            assert _capi_call(ctx, ex["wmx_abi_version"], [], 1) == 2
            self.ptr = _capi_call(ctx, ex["alloc"], [self.cap], 1) & 0xFFFFFFFF
        else:
            ex["_initialize"](self.store)  # type: ignore[operator]
            assert ex["wmx_abi_version"](self.store) == 2  # type: ignore[operator]
            self.ptr = ex["alloc"](self.store, self.cap) & 0xFFFFFFFF  # type: ignore[operator]
        if capi:
            self.ctx = self.store._context()
            self.fref = ctypes.byref(self.handle._func)  # type: ignore[union-attr]
            self.mref = ctypes.byref(self.mem._memory)  # type: ignore[union-attr]
            self.args = (_capi.wasmtime_val_raw_t * 2)()
            self.trap = ctypes.POINTER(_capi.wasm_trap_t)()
            self.tref = ctypes.byref(self.trap)
            self.call = self._capi_call
        else:
            self.call = self._public_call

    def _public_call(self, payload: bytes) -> bytes:
        store, mem = self.store, self.mem
        store.set_epoch_deadline(self.deadline)  # a pooled store lives long: the deadline is per call
        n = len(payload)
        assert n <= self.cap
        mem.write(store, payload, self.ptr)  # type: ignore[union-attr]
        r = self.handle(store, self.ptr, n)  # type: ignore[operator]
        op, ol = (r >> 32) & 0xFFFFFFFF, r & 0xFFFFFFFF
        return bytes(mem.read(store, op, op + ol))  # type: ignore[union-attr]

    def _capi_call(self, payload: bytes) -> bytes:
        ctx, mref = self.ctx, self.mref
        _set_deadline(ctx, self.deadline)
        n = len(payload)
        assert n <= self.cap and self.ptr + n <= _mem_size(ctx, mref)
        ctypes.memmove(_mem_data(ctx, mref) + self.ptr, payload, n)
        args = self.args
        args[0].i32 = self.ptr
        args[1].i32 = n
        if _call_unchecked(ctx, self.fref, args, 2, self.tref) or self.trap:
            raise RuntimeError("raw call failed")
        r = args[0].i64
        op, ol = (r >> 32) & 0xFFFFFFFF, r & 0xFFFFFFFF
        assert op + ol <= _mem_size(ctx, mref)
        return ctypes.string_at(_mem_data(ctx, mref) + op, ol)

    def memory_bytes(self) -> int:
        return self.mem.data_len(self.store)  # type: ignore[union-attr]

    def close(self) -> None:
        self.store.close()


def _capi_function(name: str, restype: object, argtypes: list[object]) -> Any:
    fn = _capi.dll[name]  # a private handle: never change the shared one's types
    fn.restype = restype
    fn.argtypes = argtypes
    return fn


_CTX = ctypes.POINTER(_capi.wasmtime_context_t)
_call_unchecked = _capi_function("wasmtime_func_call_unchecked", ctypes.c_void_p, [
    _CTX, ctypes.POINTER(_capi.wasmtime_func_t), ctypes.POINTER(_capi.wasmtime_val_raw_t), ctypes.c_size_t,
    ctypes.POINTER(ctypes.POINTER(_capi.wasm_trap_t))])
_mem_data = _capi_function("wasmtime_memory_data", ctypes.c_void_p, [_CTX, ctypes.POINTER(_capi.wasmtime_memory_t)])
_mem_size = _capi_function("wasmtime_memory_data_size", ctypes.c_size_t,
                           [_CTX, ctypes.POINTER(_capi.wasmtime_memory_t)])
_set_deadline = _capi_function("wasmtime_context_set_epoch_deadline", None, [_CTX, ctypes.c_uint64])


def _capi_call(ctx: Any, func: Any, params: list[int], nresults: int) -> int:
    """One call through the C API with a fresh argument array (instance setup, not the hot path)."""
    args = (_capi.wasmtime_val_raw_t * max(len(params), nresults, 1))()
    for i, v in enumerate(params):
        args[i].i32 = v
    trap = ctypes.POINTER(_capi.wasm_trap_t)()
    if _call_unchecked(ctx, ctypes.byref(func._func), args, len(args), ctypes.byref(trap)) or trap:
        raise RuntimeError("raw call failed")
    return args[0].i32 if nresults else 0


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
    abs_goal: tuple[float, float] | None = None  # max project p50, p99 (seconds), where the issue sets one

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
    if fig.abs_goal is not None:
        g50, g99 = fig.abs_goal
        ok = "met" if fig.project[0] <= g50 and fig.project[1] <= g99 else "NOT met"
        print(f"  goal      p50 <= {g50 * scale:.0f} {unit}, p99 <= {g99 * scale:.0f} {unit}: {ok}")


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


HOT_GOAL = (35e-6, 100e-6)
COLD_GOAL = (float("inf"), 400e-6)


@contextlib.contextmanager
def _handler_pair(pool: PoolConfig) -> Iterator[tuple[Runtime, Any, RawEngine, wasmtime.InstancePre]]:
    """The project's runtime with ``handler`` loaded under ``pool``, and a raw engine with ``handler`` pre-linked."""
    handler = example_bytes("handler")
    with Runtime(RuntimeConfig(allow_unsigned=True)) as rt:
        lm = rt.load_unsigned(handler, name="handler", pool=pool)
        raw_engine = RawEngine(rt.config.epoch_tick_ms)
        try:
            yield rt, lm, raw_engine, raw_pre(raw_engine.engine, wasmtime.Module(raw_engine.engine, handler))
        finally:
            raw_engine.close()


def hot_call(rounds: int, n: int) -> list[Figure]:
    figs = []
    with _handler_pair(PoolConfig(min_instances=1, max_instances=1)) as (rt, lm, raw_engine, pre):
        request = Request(body=PAYLOAD)

        def project_hot() -> bytes:
            return rt.invoke_sync(lm.key, request).body

        for capi, baseline, what in ((False, BASELINE_HOT_PUBLIC, "public API"),
                                     (True, BASELINE_HOT_CAPI, "C API floor")):
            raw = RawInstance(raw_engine.engine, pre, lm.limits, lm.deadline_ticks, capi=capi)
            # Both count their calls ("n=<calls>:..."); the answers past the count are the same work.
            assert raw.call(PAYLOAD).split(b":")[1] == project_hot().split(b":")[1] == b"HELLO WORLD"
            p, r = interleaved(project_hot, lambda raw=raw: raw.call(PAYLOAD), rounds, n, warmup=200)
            raw.close()
            figs.append(Figure(
                f"hot call vs {what}",
                f"hot call: direct ABI v2 `handler` on a warm pooled instance (Runtime.invoke_sync), vs {what}",
                baseline, (pct(p, 0.5), pct(p, 0.99)), (pct(r, 0.5), pct(r, 0.99)), abs_goal=HOT_GOAL))
    return figs


def cold_direct(rounds: int, n: int) -> Figure:
    """Instantiate + first call of the direct-ABI handler: a pool that never reuses forces it every call."""
    with _handler_pair(PoolConfig(min_instances=0, max_instances=1, reuse=False)) as (rt, lm, raw_engine, pre):
        request = Request(body=PAYLOAD)

        def raw_cold() -> bytes:
            inst = RawInstance(raw_engine.engine, pre, lm.limits, lm.deadline_ticks, capi=True)
            try:
                return inst.call(PAYLOAD)
            finally:
                inst.close()

        def project_cold() -> bytes:
            return rt.invoke_sync(lm.key, request).body

        assert raw_cold() == project_cold() == b"n=1:HELLO WORLD"
        p, r = interleaved(project_cold, raw_cold, rounds, n, warmup=50)
        assert rt.pools.stats(lm.key).reused == 0
    return Figure("cold start, direct", "cold start: direct ABI v2 `handler`, new instance + first call per request "
                  "(Runtime.invoke_sync, pool without reuse)", BASELINE_COLD_DIRECT,
                  (pct(p, 0.5), pct(p, 0.99)), (pct(r, 0.5), pct(r, 0.99)), abs_goal=COLD_GOAL)


# -- concurrency -------------------------------------------------------------------------------------------

CLIENTS = (1, 2, 4, 8)
HEAVY = b"spin:500000"  # about 1 ms of wasm per call on this machine


def _threads_rate(clients: int, per_client: int, call: Callable[[int], object]) -> tuple[float, float]:
    """Requests/s of ``clients`` threads each making ``per_client`` calls (``call(client_index)``), and the
    cores the process actually got meanwhile (CPU seconds / wall seconds)."""
    start = threading.Barrier(clients + 1)

    def run(i: int) -> None:
        start.wait()
        for _ in range(per_client):
            call(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0, c0 = time.perf_counter(), time.process_time()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return clients * per_client / wall, (time.process_time() - c0) / wall


def _trio_rate(rt: Runtime, key: str, payload: bytes, clients: int, per_client: int) -> tuple[float, float]:
    import trio

    async def main() -> tuple[float, float]:
        request = Request(body=payload)

        async def client() -> None:
            for _ in range(per_client):
                await rt.invoke(key, request)

        t0, c0 = time.perf_counter(), time.process_time()
        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                nursery.start_soon(client)
        wall = time.perf_counter() - t0
        return clients * per_client / wall, (time.process_time() - c0) / wall

    return trio.run(main)


@dataclass(slots=True)
class Rates:
    """Requests/s of one workload by client count (project threads, project trio, raw threads), each with the
    cores the process got while it ran (on a shared machine that share, not the code, often sets the rate)."""

    label: str
    threads: dict[int, tuple[float, float]]
    trio: dict[int, tuple[float, float]]
    raw: dict[int, tuple[float, float]]


def concurrency(total_light: int, total_heavy: int) -> list[Rates]:
    out = []
    pool = PoolConfig(min_instances=max(CLIENTS), max_instances=max(CLIENTS))
    with _handler_pair(pool) as (rt, lm, raw_engine, pre):
        raws = [RawInstance(raw_engine.engine, pre, lm.limits, lm.deadline_ticks, capi=True)
                for _ in range(max(CLIENTS))]
        for label, payload, total in (("trivial", PAYLOAD, total_light), ("cpu-heavy", HEAVY, total_heavy)):
            request = Request(body=payload)
            assert rt.invoke_sync(lm.key, request).body.split(b":")[1] == raws[0].call(payload).split(b":")[1]
            rates = Rates(label, {}, {}, {})
            for clients in CLIENTS:
                # Three short rounds per side, the sides alternating, so machine load hits all alike.
                per = max(1, total // clients // 3)
                got: dict[str, list[tuple[float, float]]] = {"raw": [], "threads": [], "trio": []}
                for _ in range(3):
                    got["raw"].append(_threads_rate(clients, per, lambda i: raws[i].call(payload)))
                    got["threads"].append(
                        _threads_rate(clients, per, lambda i: rt.invoke_sync(lm.key, request)))
                    got["trio"].append(_trio_rate(rt, lm.key, payload, clients, per))
                for side, vals in got.items():
                    # requests over wall time summed across rounds; cores = CPU time over wall time
                    walls = [per * clients / r for r, _ in vals]
                    rate = 3 * per * clients / sum(walls)
                    cores = sum(c * w for (_, c), w in zip(vals, walls)) / sum(walls)
                    getattr(rates, side)[clients] = (rate, cores)
            out.append(rates)
        stats = rt.pools.stats(lm.key)
        assert stats.created == max(CLIENTS), f"the pool made {stats.created} instances for 8 clients"
        for raw in raws:
            raw.close()
    return out


def show_rates(rates: Rates) -> None:
    print(f"concurrency, {rates.label} call (`handler` {'spin:500000' if rates.label != 'trivial' else 'hello'}): "
          "requests/s by concurrent clients, one module, pool of 8 (cores = CPU s / wall s the process got)")
    print(f"  baseline: {BASELINE_CONCURRENCY}")
    print(f"  {'clients':>8} {'invoke_sync':>18} {'trio invoke':>18} {'raw threads':>18} {'sync/raw':>9} "
          f"{'sync scaling':>13}")
    one = rates.threads[CLIENTS[0]][0]

    def cell(v: tuple[float, float]) -> str:
        return f"{v[0]:>9,.0f} ({v[1]:.2f} c)"

    for c in CLIENTS:
        print(f"  {c:>8} {cell(rates.threads[c]):>18} {cell(rates.trio[c]):>18} {cell(rates.raw[c]):>18} "
              f"{rates.threads[c][0] / rates.raw[c][0]:>8.2f}x {rates.threads[c][0] / one:>12.2f}x")


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
            inst = RawInstance(eng.engine, pre, limits, deadline, capi=True)
            inst.call(PAYLOAD)
            linear_total += inst.memory_bytes()
            keep.append(inst)
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
    n_light, n_heavy = (2000, 200) if args.quick else (16000, 800)
    runs: list[list[Figure]] = []
    all_rates: list[list[Rates]] = []
    for run in range(args.runs):
        print(f"=== run {run + 1}/{args.runs}: {rounds} rounds per timed figure, project and baseline alternating "
              f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
        figs = [cold_start(rounds, n_cold), cold_direct(rounds, n_cold), *hot_call(rounds, n_hot)]
        for fig in figs:
            show(fig)
        rates = concurrency(n_light, n_heavy)
        for r in rates:
            show_rates(r)
        all_rates.append(rates)
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
        if fig.abs_goal is not None:
            g50, g99 = fig.abs_goal
            met = sum(1 for r in runs if r[i].project[0] <= g50 and r[i].project[1] <= g99)
            print(f"  {'':<22} absolute goal (p50 <= {g50 * 1e6:.0f} us, p99 <= {g99 * 1e6:.0f} us) "
                  f"met in {met}/{len(runs)} runs")
    print(f"=== concurrency over {args.runs} runs: requests/s, median [min-max across runs]")
    for j, first in enumerate(all_rates[0]):
        print(f"  {first.label}:")
        for c in CLIENTS:
            cols = []
            for name in ("threads", "trio", "raw"):
                vals = [getattr(rs[j], name)[c][0] for rs in all_rates]
                cores = [getattr(rs[j], name)[c][1] for rs in all_rates]
                per_core = [v / c for v, c in zip(vals, cores) if c > 0]
                cols.append(f"{name} {statistics.median(vals):,.0f} [{min(vals):,.0f}-{max(vals):,.0f}] "
                            f"on {statistics.median(cores):.2f} cores, "
                            f"{statistics.median(per_core):,.0f} per CPU-second")
            print(f"    {c} clients: " + "; ".join(cols))
    print(f"  (this machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; guests run without the "
          "GIL, the Python around each call holds it; requests per CPU-second is what the code costs, requests/s "
          "also depends on the share of the cores the process got)")


if __name__ == "__main__":
    main()

