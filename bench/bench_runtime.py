"""Runtime benchmarks: cold start, hot call overhead, compiled-cache load, density.

Prints figures and ratios against raw wasmtime-py measured in the same run.
Never asserted in tests. Run: ``python bench/bench_runtime.py`` (< 2 minutes).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import structlog  # noqa: E402
import wasmtime  # noqa: E402

from runtime import PoolConfig, Runtime, RuntimeConfig, example_bytes  # noqa: E402
from runtime.wasi import OutputBuffer, make_wasi  # noqa: E402
from runtime.capabilities import Capabilities  # noqa: E402


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def measure(fn: Callable[[], object], n: int, warmup: int = 50) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def show(label: str, samples: list[float]) -> tuple[float, float]:
    p50, p99 = pct(samples, 0.5), pct(samples, 0.99)
    print(f"  {label:<44} p50 {p50 * 1e6:8.1f} us   p99 {p99 * 1e6:8.1f} us")
    return p50, p99


def main() -> None:
    import logging

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    hello, handler = example_bytes("hello"), example_bytes("handler")
    n = 2000

    print("cold start: instantiate + run a WASI command (hello), fresh instance each time")
    cfg = wasmtime.Config()
    cfg.epoch_interruption = True
    engine = wasmtime.Engine(cfg)
    module = wasmtime.Module(engine, hello)

    def raw_cold() -> None:
        store = wasmtime.Store(engine)
        store.set_epoch_deadline(1_000_000)
        wasi = wasmtime.WasiConfig()
        wasi.argv = ["hello"]
        out = OutputBuffer(1 << 20)
        wasi.stdout_custom = out.write
        store.set_wasi(wasi)
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        inst = linker.instantiate(store, module)
        try:
            inst.exports(store)["_start"](store)
        except wasmtime.ExitTrap:
            pass
        store.close()

    raw = show("raw wasmtime-py (Store+Linker+instantiate)", measure(raw_cold, n))
    with Runtime(RuntimeConfig(allow_unsigned=True)) as rt:
        lm = rt.load_unsigned(hello, name="hello")
        ours = show("Runtime.invoke_sync (InstancePre)", measure(lambda: rt.invoke_sync(lm.key), n))
    print(f"  ratio p50 {ours[0] / raw[0]:.2f}x  p99 {ours[1] / raw[1]:.2f}x  (goal <= 1.5x, p99 < 1000 us)")

    print("hot call: direct ABI on a warm instance (alloc + write + handle + read + dealloc)")
    hmod = wasmtime.Module(engine, handler)
    store = wasmtime.Store(engine)
    store.set_epoch_deadline(1_000_000)
    store.set_wasi(make_wasi(Capabilities(), argv=["h"], env=(), stdin=b"", stdout=OutputBuffer(0),
                             stderr=OutputBuffer(0)))
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    inst = linker.instantiate(store, hmod)
    ex = inst.exports(store)
    ex["_initialize"](store)
    mem, alloc, handle, dealloc = ex["memory"], ex["alloc"], ex["handle"], ex["dealloc"]
    payload = b"hello world"

    def raw_hot() -> bytes:
        p = alloc(store, len(payload))
        mem.write(store, payload, p)
        r = handle(store, p, len(payload))
        op, ol = (r >> 32) & 0xFFFFFFFF, r & 0xFFFFFFFF
        body = bytes(mem.read(store, op, op + ol))
        dealloc(store, p, len(payload))
        dealloc(store, op, ol)
        return body

    raw = show("raw wasmtime-py call", measure(raw_hot, n * 5))
    with Runtime(RuntimeConfig(allow_unsigned=True)) as rt:
        lm = rt.load_unsigned(handler, name="handler", pool=PoolConfig(min_instances=1, max_instances=1))
        ours = show("Runtime.call (pooled instance)", measure(lambda: rt.call(lm.key, payload), n * 5))
    print(f"  ratio p50 {ours[0] / raw[0]:.2f}x  p99 {ours[1] / raw[1]:.2f}x  (goal <= 1.3x; seed: 500 us p50, 2 ms p99)")

    print("compiled cache: load of hello.wasm")
    with tempfile.TemporaryDirectory() as tmp:
        compile_s, disk_s = [], []
        for i in range(10):
            d = Path(tmp) / f"n{i}"
            with Runtime(RuntimeConfig(data_dir=d, allow_unsigned=True)) as rt:
                t = time.perf_counter()
                rt.load_unsigned(hello, name="hello")
                compile_s.append(time.perf_counter() - t)
            with Runtime(RuntimeConfig(data_dir=d, allow_unsigned=True)) as rt:
                t = time.perf_counter()
                rt.load_unsigned(hello, name="hello")
                disk_s.append(time.perf_counter() - t)
                assert rt.metrics.value("wasmatrix_runtime_compiles_total") == 0
        c, dsk = statistics.median(compile_s), statistics.median(disk_s)
        print(f"  compile (miss) median {c * 1e3:.2f} ms, disk hit median {dsk * 1e3:.2f} ms, "
              f"speed-up {c / dsk:.1f}x  (seed: load < 10 ms p99)")

    print("density: idle hello instances held in memory")
    with Runtime(RuntimeConfig(allow_unsigned=True)) as rt:
        lm = rt.load_unsigned(hello, name="hello")
        stores = []
        import resource

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        count = 2000
        for _ in range(count):
            s = rt._new_store(lm)
            s.set_wasi(make_wasi(lm.capabilities, argv=["hello"], env=(), stdin=b"", stdout=OutputBuffer(0),
                                 stderr=OutputBuffer(0)))
            i = lm.pre.instantiate(s)
            stores.append((s, i))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        per = max(1, (after - before) / count)
        linear = stores[0][1].exports(stores[0][0])["memory"].data_len(stores[0][0])
        print(f"  {count} instances: ~{per / 1024:.1f} KiB RSS each (linear memory {linear // 1024} KiB, "
              f"committed lazily) -> ~{(1 << 30) / per:,.0f} instances per GB")
        for s, _ in stores:
            s.close()


if __name__ == "__main__":
    main()
