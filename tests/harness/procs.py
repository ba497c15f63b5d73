"""Start daemons for process tests and guarantee they are gone afterwards, killed by PID.

Every process is started in a new session, so its PID is also its process-group ID; cleanup
sends SIGTERM to that group, waits a bounded time, then SIGKILL.  Nothing is ever killed by
name.  stdout/stderr go to files in a temp dir so a failing test can print them, and a
reader never blocks on a full pipe.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
_POLL = 0.01


class ProcError(RuntimeError):
    """A started process did not become ready, exited early, or could not be stopped."""


def free_port(kind: str = "udp", host: str = "127.0.0.1") -> int:
    """Return a loopback port that was free a moment ago (bind to port 0, then release)."""
    if kind not in ("udp", "tcp"):
        raise ValueError(f"free_port kind must be 'udp' or 'tcp', not {kind!r}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    stype = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
    with socket.socket(family, stype) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_port_pair(host: str = "127.0.0.1", avoid: set[int] | frozenset[int] = frozenset()) -> int:
    """A loopback port free for both UDP and TCP a moment ago (a daemon binds both on one port).

    A UDP-free port's TCP twin is often an ephemeral port of some connection on a busy machine.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        port = free_port("udp", host)
        if port in avoid:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        return port
    raise OSError("no loopback port free for both UDP and TCP in 100 draws")


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (signal 0 probe plus /proc state)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    # Field 3 (after the parenthesised command name) is the state; Z is a zombie.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass(slots=True)
class Proc:
    """One started process: its Popen, name and the files holding its output."""

    name: str
    popen: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        """The PID we started (also the process-group ID: new session)."""
        return self.popen.pid

    def stdout(self) -> str:
        """Everything written to stdout so far."""
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        """Everything written to stderr so far."""
        return self.stderr_path.read_text(errors="replace")

    def wait_for_line(self, pattern: str, timeout: float = 10.0, stream: str = "stdout") -> re.Match[str]:
        """Wait until a line of ``stream`` matches ``pattern``; raise ProcError on timeout or exit."""
        rx = re.compile(pattern)
        path = self.stdout_path if stream == "stdout" else self.stderr_path
        deadline = time.monotonic() + timeout
        while True:
            for line in path.read_text(errors="replace").splitlines():
                m = rx.search(line)
                if m:
                    return m
            if self.popen.poll() is not None:
                raise ProcError(self._why(f"exited with {self.popen.returncode} before {pattern!r}"))
            if time.monotonic() >= deadline:
                raise ProcError(self._why(f"no line matching {pattern!r} within {timeout}s"))
            time.sleep(_POLL)

    def wait_for_file(self, path: Path, timeout: float = 10.0) -> Path:
        """Wait until ``path`` exists and is non-empty; raise ProcError on timeout or exit."""
        deadline = time.monotonic() + timeout
        while True:
            if path.exists() and path.stat().st_size > 0:
                return path
            if self.popen.poll() is not None:
                raise ProcError(self._why(f"exited with {self.popen.returncode} before {path} appeared"))
            if time.monotonic() >= deadline:
                raise ProcError(self._why(f"{path} did not appear within {timeout}s"))
            time.sleep(_POLL)

    def _why(self, what: str) -> str:
        return (f"process {self.name} (pid {self.pid}) {what}\n"
                f"--- stdout ---\n{self.stdout()[-2000:]}\n--- stderr ---\n{self.stderr()[-2000:]}")


@dataclass(slots=True)
class ProcessGroup:
    """Starts processes and, on exit (also on failure), kills each one by the PID it started."""

    workdir: Path
    term_timeout: float = 3.0
    kill_timeout: float = 2.0
    procs: list[Proc] = field(default_factory=list)

    def start(self, args: Sequence[str], *, name: str | None = None,
              env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Proc:
        """Start ``args`` in a new session with PYTHONPATH at the repo root; output to files."""
        name = name or f"p{len(self.procs)}"
        full_env = dict(os.environ)
        full_env.update(env or {})
        # The package is installed pointing at another checkout: put this one first.
        full_env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT)] + ([full_env["PYTHONPATH"]] if full_env.get("PYTHONPATH") else [])
        )
        full_env.setdefault("PYTHONUNBUFFERED", "1")  # readiness lines must reach the file now
        out = self.workdir / f"{name}.stdout"
        err = self.workdir / f"{name}.stderr"
        with open(out, "wb") as fo, open(err, "wb") as fe:
            popen = subprocess.Popen(
                list(args), stdin=subprocess.DEVNULL, stdout=fo, stderr=fe,
                env=full_env, cwd=str(cwd or REPO_ROOT), start_new_session=True,
            )
        proc = Proc(name, popen, out, err)
        self.procs.append(proc)
        return proc

    def python(self, code: str, *, name: str | None = None,
               env: Mapping[str, str] | None = None) -> Proc:
        """Start ``python -c code`` with this interpreter."""
        return self.start([sys.executable, "-c", code], name=name, env=env)

    def stop(self, proc: Proc) -> int | None:
        """SIGTERM the process group of ``proc.pid``, SIGKILL after a bound; return the exit code."""
        self._signal(proc, signal.SIGTERM)
        try:
            return proc.popen.wait(self.term_timeout)
        except subprocess.TimeoutExpired:
            pass
        self._signal(proc, signal.SIGKILL)
        try:
            return proc.popen.wait(self.kill_timeout)
        except subprocess.TimeoutExpired:
            raise ProcError(f"process {proc.name} (pid {proc.pid}) survived SIGKILL") from None

    def stop_all(self) -> None:
        """Stop every started process, newest first; raise ProcError after trying them all."""
        errors: list[str] = []
        for proc in reversed(self.procs):
            try:
                self.stop(proc)
            except ProcError as exc:
                errors.append(str(exc))
        if errors:
            raise ProcError("; ".join(errors))

    @staticmethod
    def _signal(proc: Proc, sig: signal.Signals) -> None:
        # The group ID is the PID we started (start_new_session); children it forked go too.
        # The group cannot be reused while any member lives, so this reaches only our processes.
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass  # the whole group is already gone

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def process_group(workdir: Path | None = None) -> ProcessGroup:
    """A ProcessGroup writing output under ``workdir`` (a fresh temp dir if omitted)."""
    return ProcessGroup(workdir or Path(tempfile.mkdtemp(prefix="wasmatrix-procs-")))


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[ProcessGroup]:
    """Pytest fixture: a ProcessGroup whose processes are all killed by PID at teardown."""
    with ProcessGroup(tmp_path) as group:
        yield group
