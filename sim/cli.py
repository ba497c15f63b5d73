"""`wasmatrix sim`: run a scenario file or a built-in one (`wasmatrix sim demo`: 300 simulated nodes)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from contextlib import ExitStack

from sim.scenario import MAX_DURATION, ScenarioError, builtin, load


def _duration(text: str) -> float:
    """argparse type of --duration: a finite number of virtual seconds within the scenario bound."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or not 0 < value <= MAX_DURATION:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number of seconds in (0, {MAX_DURATION:g}]")
    return value


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the sim subcommand."""
    p = sub.add_parser("sim", help="run a simulation scenario (TOML) deterministically")
    p.add_argument("scenario", help="scenario file, or the name of a built-in scenario (e.g. demo)")
    p.add_argument("--seed", type=int, default=1, help="random seed (same seed -> same trace_hash)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    p.add_argument("--trace", metavar="FILE", help="write the ordered event trace to FILE")
    p.add_argument("--duration", type=_duration, help="override the scenario duration (virtual seconds)")
    p.set_defaults(handler=run_sim)


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
        scenario = replace(scenario, duration=duration)
    with ExitStack() as stack:
        fh = None
        if trace:
            try:
                fh = stack.enter_context(open(trace, "w"))
            except OSError as exc:
                raise ScenarioError(f"--trace {trace}: cannot write: {exc.strerror}") from None
        sim = Simulation(scenario, seed, trace=fh)
        sim.run()
    return build_report(sim)


def _resolve(name: str) -> str:
    import os

    if os.path.exists(name) or name.endswith(".toml"):
        return name
    return str(builtin(name))


def run_sim(args: argparse.Namespace) -> int:
    """Run one scenario: 0 it ran (the report says whether it converged), 1 I/O failure, 2 bad input."""
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
