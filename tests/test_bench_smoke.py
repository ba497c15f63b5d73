"""Every script in bench/ still imports against the current code (its main is not run).

The imports run in a child interpreter: benchmark modules configure structlog globally when
imported, which must not leak into the rest of the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

_CHILD = r"""
import importlib.util, io, json, sys, traceback, contextlib
bench = sys.argv[1]
sys.path.insert(0, bench)
failed = {}
out = io.StringIO()
for path in sys.argv[2:]:
    name = "bench_smoke_" + path.rsplit("/", 1)[-1][:-3]
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # dataclasses look their module up while the class is created
        with contextlib.redirect_stdout(out):
            spec.loader.exec_module(mod)
    except BaseException:
        failed[path] = traceback.format_exc(limit=-3)
print(json.dumps({"failed": failed, "stdout": out.getvalue()}))
"""


def test_every_bench_module_imports_without_running() -> None:
    scripts = sorted(str(p) for p in BENCH.glob("*.py"))
    assert len(scripts) >= 10, scripts  # the directory is there and holds the benchmarks
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(BENCH), *scripts], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["failed"] == {}, "\n".join(f"{k}:\n{v}" for k, v in result["failed"].items())
    # Importing must not start a benchmark: nothing is printed.
    assert result["stdout"] == ""


def test_bench_place_quick_run_prints_ratios_against_its_baseline() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(BENCH / "bench_place.py"), "--quick", "--sizes", "50"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "baseline = filter(alive, memory) + heapq.nlargest" in lines[0]
    rows = [ln.split() for ln in lines[2:]]
    assert [(r[0], r[1]) for r in rows] == [("50", "plain"), ("50", "full")]
    assert all(r[-1].endswith("x") and float(r[-1][:-1]) > 0 for r in rows)
