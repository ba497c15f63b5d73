"""Admission under hostile and normal modules: what the bounds and the compile worker cost and save.

Figures, each against a baseline measured in the same run, alternating sides round by round:

* refuse 100k functions: ``Runtime.load_unsigned`` of the issue's 100,000-function module
  (refused by the section scan) vs. the baseline ``wasmtime.Module(engine, bytes)``, which is
  what admission did before (compile it all). Ratio < 1 is the saving.
* cold load, process worker: ``load_unsigned`` of each example module with
  ``compile_isolation="process"`` (the default) vs. the same with ``"inline"``: the price of
  compiling in a child process. Ratio > 1 is the overhead; the difference is printed in ms.

Run: ``python bench/bench_admission.py [--runs 3] [--rounds 5]``. Never asserted in tests.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import structlog  # noqa: E402
import wasmtime  # noqa: E402

from runtime import CapabilityDenied, ModuleTooLarge, Runtime, RuntimeConfig, example_bytes  # noqa: E402
from runtime.bundled import EXAMPLES  # noqa: E402
from runtime.engine import EngineHandle, EngineSettings  # noqa: E402
from tests.runtime.wasm_builders import many_functions  # noqa: E402


def refuse_big(rounds: int) -> tuple[list[float], list[float]]:
    wasm = many_functions(100_000)
    handle = EngineHandle(EngineSettings())
    project, baseline = [], []
    try:
        for r in range(rounds):
            def proj() -> None:
                with Runtime(RuntimeConfig(allow_unsigned=True)) as rt:
                    t = time.perf_counter()
                    try:
                        rt.load_unsigned(wasm)
                    except ModuleTooLarge:
                        pass
                    project.append(time.perf_counter() - t)

            def base() -> None:
                t = time.perf_counter()
                wasmtime.Module(handle.engine, wasm)
                baseline.append(time.perf_counter() - t)

            for f in (proj, base) if r % 2 == 0 else (base, proj):
                f()
    finally:
        handle.close()
    return project, baseline


def cold_load(rounds: int) -> tuple[list[float], list[float]]:
    mods = [example_bytes(n) for n in EXAMPLES]
    worker, inline = [], []
    for r in range(rounds):
        for wasm in mods:
            for iso in ("process", "inline") if r % 2 == 0 else ("inline", "process"):
                with Runtime(RuntimeConfig(allow_unsigned=True, compile_isolation=iso)) as rt:
                    t = time.perf_counter()
                    try:
                        rt.load_unsigned(wasm)
                    except CapabilityDenied:
                        pass  # refused after compiling (kvcounter wants a grant): the compile is what is timed
                    (worker if iso == "process" else inline).append(time.perf_counter() - t)
    return worker, inline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(50))
    ratios: dict[str, list[float]] = {"refuse_100k": [], "cold_load_worker": []}
    for run in range(args.runs):
        p, b = refuse_big(args.rounds)
        pm, bm = statistics.median(p), statistics.median(b)
        ratios["refuse_100k"].append(pm / bm)
        print(f"run {run}: refuse 100k functions: project {pm * 1e3:.1f} ms, baseline (compile it) {bm * 1e3:.0f} ms, "
              f"ratio {pm / bm:.1e}")
        w, i = cold_load(args.rounds)
        wm, im = statistics.median(w), statistics.median(i)
        ratios["cold_load_worker"].append(wm / im)
        print(f"run {run}: cold load of {len(EXAMPLES)} examples: process worker {wm * 1e3:.1f} ms, "
              f"baseline inline compile {im * 1e3:.1f} ms, ratio {wm / im:.2f} (+{(wm - im) * 1e3:.0f} ms)")
    for name, rs in ratios.items():
        print(f"{name}: ratio min {min(rs):.3g} median {statistics.median(rs):.3g} max {max(rs):.3g} over {len(rs)} runs")


if __name__ == "__main__":
    main()
