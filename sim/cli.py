"""`wasmatrix sim` and `wasmatrix demo`."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack

from sim.scenario import ScenarioError, builtin, load


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the sim and demo subcommands."""
    p = sub.add_parser("sim", help="run a simulation scenario (TOML) deterministically")
    p.add_argument("scenario", help="scenario file, or the name of a built-in scenario (e.g. demo)")
    p.add_argument("--seed", type=int, default=1, help="random seed (same seed -> same trace_hash)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    p.add_argument("--trace", metavar="FILE", help="write the ordered event trace to FILE")
    p.add_argument("--duration", type=float, help="override the scenario duration (virtual seconds)")
    p.set_defaults(handler=run_sim)

    d = sub.add_parser("demo", help="run the built-in demo scenario and print a report")
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("--json", action="store_true")
    d.set_defaults(handler=run_demo)


def _quiet_logs() -> None:
    # Command output goes to stdout (tables, --json, reports); logs go to stderr.
    import logging

    from mesh.cli.logs import logs_to_stderr

    logs_to_stderr(logging.ERROR)


def _simulate(path: str, seed: int, trace: str | None, duration: float | None) -> dict:
    from dataclasses import replace

    from sim.engine import Simulation
    from sim.report import build_report

    scenario = load(path)
    if scenario.intent is not None:
        _quiet_logs()
    if duration is not None:
        if duration <= 0:
            raise ScenarioError("--duration must be positive")
        scenario = replace(scenario, duration=duration)
    with ExitStack() as stack:
        fh = stack.enter_context(open(trace, "w")) if trace else None
        sim = Simulation(scenario, seed, trace=fh)
        sim.run()
    return build_report(sim)


def _resolve(name: str) -> str:
    import os

    if os.path.exists(name) or name.endswith(".toml"):
        return name
    return str(builtin(name))


def run_sim(args: argparse.Namespace) -> int:
    """Run one scenario; exit 1 if it did not converge."""
    from sim.report import render_text

    try:
        report = _simulate(_resolve(args.scenario), args.seed, args.trace, args.duration)
    except ScenarioError as exc:
        print(f"wasmatrix sim: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"wasmatrix sim: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print(render_text(report))
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """Run the built-in demo scenario."""
    from sim.report import render_text

    report = _simulate(str(builtin("demo")), args.seed, None, None)
    if args.json:
        print(json.dumps(report, sort_keys=True))
        return 0
    print("WasmMatrix demo: a simulated mesh of equal peers (SWIM/Lifeguard membership, Vivaldi)")
    print(render_text(report))
    print(
        f"\nreplay: wasmatrix sim demo --seed {args.seed}   "
        "(same seed -> same trace_hash; see docs/SIMULATOR.md for the scenario format)"
    )
    return 0 if report["converged"] else 1
