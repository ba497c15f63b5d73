"""Build small scenarios in tests and make failures replayable."""

from __future__ import annotations

import json
from typing import Any

from sim.engine import Simulation
from sim.report import build_report
from sim.scenario import parse


def to_toml(doc: dict[str, Any]) -> str:
    """Render a scenario dict as TOML (the subset scenarios use)."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    arrays: list[tuple[str, list[dict[str, Any]]]] = []
    for k, v in doc.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            arrays.append((k, v))
        else:
            lines.append(f"{k} = {json.dumps(v)}")
    for k, t in tables:
        lines.append(f"\n[{k}]")
        lines.extend(f"{kk} = {json.dumps(vv)}" for kk, vv in t.items())
    for k, arr in arrays:
        for item in arr:
            lines.append(f"\n[[{k}]]")
            for kk, vv in item.items():
                if isinstance(vv, dict):
                    inner = ", ".join(f"{a} = {json.dumps(b)}" for a, b in vv.items())
                    lines.append(f"{kk} = {{ {inner} }}")
                else:
                    lines.append(f"{kk} = {json.dumps(vv)}")
    return "\n".join(lines) + "\n"


def replay_hint(doc: dict[str, Any], seed: int) -> str:
    """The text a failing simulation test prints: seed, scenario, and the replay command."""
    return (
        f"\nseed={seed}\n--- scenario (save as failing.toml) ---\n{to_toml(doc)}"
        f"--- replay ---\nwasmatrix sim failing.toml --seed {seed}\n"
    )


def run(doc: dict[str, Any], seed: int) -> tuple[Simulation, dict[str, Any]]:
    """Run a scenario dict with a seed; return the simulation and its report."""
    sim = Simulation(parse(doc), seed)
    sim.run()
    return sim, build_report(sim)
