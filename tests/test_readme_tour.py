"""README's CLI tour runs as shown, line by line and in order, from a copy of the repository root."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mesh.cli import main
from tests.harness.procs import ProcessGroup, free_port, procs  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow  # real daemon processes: run in CI and with WASMATRIX_SLOW=1 (docs/TESTING.md)

ROOT = Path(__file__).resolve().parent.parent
# Only in the slow run: `demo` starts 5 daemons for ~15 s (tests/test_demo.py runs it with 3 in the
# default suite), `sim` simulates hundreds of nodes.
SLOW_COMMANDS = ("wasmatrix demo", "wasmatrix sim ")
PLAIN = re.compile(r"wasmatrix [^|;&$<>`]*")  # no shell syntax: the same argv in this process
# What some lines must print besides exiting 0 (the README's comments say the same).
EXPECT = {
    "wasmatrix run runtime/examples/hello.wasm": r"env: GREETING=hi",
    "echo ping | wasmatrix run runtime/examples/handler.wasm": r"PING",
    'echo "a b a" | wasmatrix run runtime/examples/wordcount.wasm': r"\A2 a\n1 b\n\Z",  # counted by hand
    "wasmatrix run runtime/examples/loop.wasm --timeout-ms 100; echo $?": r"(?m)^124$",
    "wasmatrix module list": r"hello\s+1\.1\.0\s+2\s+0",
    "wasmatrix rollback web": r"from_version\s+1\.1\.0\n.*active_version\s+1\.0\.0",
    "wasmatrix tenant list": r"acme\s+record\s+-\s+-\s+-",  # offline: limits only
}


def tour_lines(heading: str = "A tour of the CLI") -> list[str]:
    """The command lines of the first ```sh block under README's ``## heading``."""
    text = (ROOT / "README.md").read_text()
    section = text.split(f"## {heading}\n", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, f"README's {heading!r} has no ```sh block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _sandbox(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A directory that looks like the repository root (symlinks) but keeps keys and data to itself."""
    cwd = tmp_path / "repo"
    cwd.mkdir()
    for entry in sorted(ROOT.iterdir()):
        if not entry.name.startswith(".") and entry.name not in ("wasmatrix-data",) and ".key" not in entry.name:
            (cwd / entry.name).symlink_to(entry)
    # `wasmatrix` runs this checkout's code, whatever is installed.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    shim = bindir / "wasmatrix"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m mesh.cli "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "WASMATRIX_DATA_DIR"}
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    return cwd, env


def _check(line: str, code: int, out: str, err: str) -> None:
    assert code == 0, f"README tour line failed ({code}): {line}\n{out}\n{err}"
    assert "Traceback" not in err, line
    for prefix, pattern in EXPECT.items():
        if line.startswith(prefix):
            assert re.search(pattern, out), f"{line!r} printed {out!r}, expected /{pattern}/"


def _run_tour(tmp_path: Path, include_slow: bool, in_process: Any = None) -> list[str]:
    """Run the tour in order; ``in_process(argv)`` (if given) runs plain ``wasmatrix`` lines without a shell."""
    cwd, env = _sandbox(tmp_path)
    ran = []
    for line in tour_lines():
        if not include_slow and line.startswith(SLOW_COMMANDS):
            continue
        if in_process is not None and PLAIN.fullmatch(line):
            code, out, err = in_process(cwd, shlex.split(line, comments=True)[1:])
        else:
            proc = subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
            code, out, err = proc.returncode, proc.stdout, proc.stderr
        _check(line, code, out, err)
        ran.append(line)
    for prefix in EXPECT:  # every check above found its line: the tour still shows these steps
        assert any(line.startswith(prefix) for line in ran), f"README tour no longer has {prefix!r}"
    assert not any(p.name.endswith(".key") for p in ROOT.iterdir()), "the tour wrote keys into the repository"
    return ran


def test_readme_tour_without_the_simulations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Every tour line but the simulations, in order; plain `wasmatrix ...` lines run in this process (fast)."""
    monkeypatch.delenv("WASMATRIX_DATA_DIR", raising=False)

    def in_process(cwd: Path, argv: list[str]) -> tuple[int, str, str]:
        monkeypatch.chdir(cwd)
        code = main(argv)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    ran = _run_tour(tmp_path, include_slow=False, in_process=in_process)
    assert ran[-1].startswith("wasmatrix rollback web")


@pytest.mark.slow
def test_readme_tour_in_full(tmp_path: Path) -> None:
    """The whole block through bash, as a user pastes it (the simulations take about a minute)."""
    assert len(_run_tour(tmp_path, include_slow=True)) == len(tour_lines())


def test_readme_run_your_own_nodes(tmp_path: Path, procs: ProcessGroup) -> None:
    """README's "Run your own nodes" block, in order, as a user runs it in three terminals.

    Each `node run` line stays in the foreground, so it runs here as a background process (killed by
    its PID at the end), with its README port replaced by a free one so the test never collides with
    whatever listens on 7946/7947 here; the next line runs once that node's API is up. A user types
    `members` seconds after the second node starts: the test retries it (bounded) until both are alive.
    """
    cwd, env = _sandbox(tmp_path)
    lines = tour_lines("Run your own nodes")
    ports = {p: str(free_port("udp")) for p in sorted(set(re.findall(r"127\.0\.0\.1:(\d+)", "\n".join(lines))))}
    assert sorted(ports) == ["7946", "7947"], ports
    started = 0
    for line in lines:
        run = re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{ports[m.group(1)]}", line)
        if line.startswith("wasmatrix node run"):
            data_dir = cwd / re.search(r"--data-dir (\S+)", line).group(1)
            proc = procs.start(["bash", "-c", run], name=f"node{started}", env=env, cwd=cwd)
            proc.wait_for_file(data_dir / "api.json", timeout=30)
            started += 1
            continue
        deadline = time.monotonic() + 20
        while True:
            r = subprocess.run(["bash", "-c", run], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
            both_alive = all(re.search(rf"(?m)^{n}\s+[0-9a-f]{{16}}\s+127\.0\.0\.1:\d+\s+alive\b", r.stdout)
                             for n in ("n1", "n2"))
            if not line.startswith("wasmatrix members") or both_alive or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        _check(line, r.returncode, r.stdout, r.stderr)
        if line.startswith("wasmatrix members"):
            assert both_alive, f"{line!r} printed {r.stdout!r}, expected n1 and n2 alive"
        if line.startswith("wasmatrix status"):
            assert re.search(r"(?m)^node\s+n2 \([0-9a-f]{16}\)$", r.stdout), r.stdout
            assert re.search(r"(?m)^members\s+2 alive, 0 suspect, 0 dead, 0 left$", r.stdout), r.stdout
    assert started == 2
    assert (cwd / "mesh.json").exists() and not (ROOT / "mesh.json").exists()
    # Ctrl-C in a node's terminal: a graceful leave, exit 0 (what the README says after the block).
    n2 = procs.procs[1]
    os.kill(n2.pid, signal.SIGINT)
    assert n2.popen.wait(10) == 0


@pytest.mark.parametrize("doc", ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))])
def test_doc_links_point_inside_the_repository(doc: str) -> None:
    path = ROOT / doc
    targets = re.findall(r"\]\(([^)\s]+)\)", path.read_text())
    for target in targets:
        if re.match(r"[a-z]+://", target) or target.startswith("#"):
            continue
        resolved = (path.parent / target.split("#", 1)[0]).resolve()
        assert resolved.is_relative_to(ROOT), f"{doc} links outside the repository: {target}"
        assert resolved.exists(), f"{doc} links to a missing file: {target}"
    if doc == "README.md":
        assert "docs/ARCHITECTURE.md" in targets
