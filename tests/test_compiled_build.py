"""The opt-in compiled build (setup.py, WASMATRIX_COMPILE=1; docs/SIMULATOR.md "Compiled build")
computes what the pure-Python modules compute: same trace, and the core tests pass against it.

It builds a copy of the tracked sources (never in place here: a stale .so next to its .py
would shadow every later edit), so it is slow (1-4 min) and runs in CI, where the dev extra
installs mypy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent

TRACE = """
import json, sys
import sim.engine
from sim.engine import Simulation
from sim.report import build_report
from sim.scenario import parse
doc = {
    "nodes": 200, "profile": "lan", "duration": 120.0, "bootstrap": "full",
    "network": {"latency_ms": 2.0, "jitter_ms": 1.0, "loss": 0.01},
    "faults": [
        {"at": 20.0, "action": "partition", "groups": ["n000-n099", "n100-n199"]},
        {"at": 50.0, "action": "heal"},
        {"at": 60.0, "action": "crash", "node": "n150"},
        {"at": 70.0, "action": "meta", "node": "n010", "labels": {"zone": "b"}},
    ],
}
sim = Simulation(parse(doc), 7)
sim.run()
r = build_report(sim)
print(json.dumps({"file": sys.modules["sim.engine"].__file__,
                  "trace": sim.trace_hash(), "converged": r["converged"], "fp_other": r["false_positives_other"]}))
"""


def _copy_sources(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=False)
    if files.returncode == 0 and files.stdout:
        for name in files.stdout.decode().split("\0"):
            if name and (ROOT / name).is_file():
                (dst / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, dst / name)
    else:  # not a git checkout (an sdist): the packages, tests and build files
        for d in ("model", "mesh", "crdt", "runtime", "scheduler", "sim", "tests"):
            shutil.copytree(ROOT / d, dst / d, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
        for f in ("setup.py", "pyproject.toml", "README.md"):
            shutil.copy2(ROOT / f, dst / f)


def _trace(where: Path) -> dict[str, object]:
    import json

    env = dict(os.environ, PYTHONPATH=str(where))
    proc = subprocess.run([sys.executable, "-c", TRACE], cwd=where, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_compiled_cores_give_the_pure_trace_and_pass_the_core_tests(tmp_path: Path) -> None:
    pytest.importorskip("mypyc.build", reason="mypy (pip install -e '.[dev]') is needed to compile")
    src = tmp_path / "src"
    _copy_sources(src)
    env = dict(os.environ, WASMATRIX_COMPILE="1")
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=src, env=env,
                           capture_output=True, text=True, timeout=1200)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    compiled = _compiled_modules()
    for path in compiled:
        built = list((src / path).parent.glob(Path(path).stem + ".cpython-*.so"))
        assert built, f"{path} was not compiled"

    pure, fast = _trace(ROOT), _trace(src)
    assert pure["file"].endswith(".py") and fast["file"].endswith(".so")
    assert fast["trace"] == pure["trace"]
    assert fast["converged"] and fast["fp_other"] == 0

    # The core tests against the compiled modules. Left out: tests that replace a method on a
    # core instance, which a compiled class refuses (docs/SIMULATOR.md lists them).
    tests = ["tests/test_membership_core.py", "tests/test_heal.py", "tests/test_wire.py", "tests/test_vivaldi.py",
             "tests/test_push_pull_digest.py", "tests/test_member_sharing.py", "tests/test_sim_membership.py"]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                         cwd=src, env=dict(os.environ, PYTHONPATH=str(src), CI="", WASMATRIX_SLOW="0"), capture_output=True, text=True,
                         timeout=1200)
    assert run.returncode == 0, run.stdout[-4000:]


def _compiled_modules() -> list[str]:
    import ast

    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "COMPILED" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise AssertionError("setup.py has no COMPILED list")
