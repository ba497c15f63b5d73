"""`wasmatrix sim` under bad input: every case is one line on stderr naming the key, exit 2, no traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mesh.cli import main
from tests.cli_helpers import one_line_naming

ROOT = Path(__file__).resolve().parent.parent
BASE = "nodes = 3\nduration = 5.0\n"


def _sim_inproc(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    try:
        code = main(["sim", *argv])
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def _sim_subprocess(argv: list[str]) -> tuple[int, str]:
    # A subprocess with a timeout: on the old code these hang, and a hang must fail the test, not the suite.
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "mesh.cli", "sim", *argv], capture_output=True, text=True,
                          timeout=60, env=env, cwd=ROOT)
    return proc.returncode, proc.stderr


class _Hung(Exception):
    pass


def _sim_bounded(capsys: pytest.CaptureFixture[str], argv: list[str], seconds: float = 30.0) -> tuple[int, str]:
    """In process (no interpreter start-up per case), yet a hang fails the test, not the suite:
    SIGALRM interrupts the run after ``seconds``."""

    def alarm(signum: int, frame: object) -> None:
        raise _Hung(f"wasmatrix sim {argv} still running after {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return _sim_inproc(capsys, argv)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ('[profile_overrides]\nprobe_interval = "fast"\n', "probe_interval"),
        ('[[faults]]\nat = 1.0\naction = "meta"\nnode = "n000"\nlabels = 5\n', "labels"),
        ("labels = 5\n", "labels"),
        ("[network]\nlinks = 5\n", "network.links"),
        ("faults = 5\n", "faults"),
        ('[[faults]]\nat = 1.0\naction = "crash"\nnode = 5\n', "faults[0].node"),
        ('[[faults]]\nat = 1.0\naction = "partition"\ngroups = [1, 2]\n', "groups"),
        ('[[faults]]\nat = 1.0\naction = "link"\nfrom = "n000"\nto = "n001"\nloss = "lots"\n', "loss"),
        ('[[faults]]\nat = 1.0\naction = "join"\ncount = 1.5\n', "count"),
        ('[profile_overrides]\ngossip_nodes = "three"\n', "gossip_nodes"),
        ('[profile_overrides]\nname = "x"\n', "name"),
        ("profile = 5\n", "profile"),
    ],
)
def test_bad_value_is_one_line_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, key: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(BASE + body)
    code, err = _sim_inproc(capsys, [str(f)])
    assert code == 2
    one_line_naming(err, key)


def test_binary_scenario_file_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "bin.toml"
    f.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)))
    code, err = _sim_inproc(capsys, [str(f)])
    assert code == 2
    one_line_naming(err, str(f), "UTF-8")


def test_directory_scenario_says_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _sim_inproc(capsys, [str(tmp_path)])
    assert code == 2
    one_line_naming(err, str(tmp_path), "directory")


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ("[profile_overrides]\ngossip_interval = 0\n", "gossip_interval"),
        ("[profile_overrides]\npush_pull_interval = 0\n", "push_pull_interval"),
        ("[profile_overrides]\nprobe_interval = 1e-9\nprobe_timeout = 1e-10\n", "probe_interval"),
    ],
)
def test_zero_intervals_are_refused_not_hung(tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, key: str) -> None:
    f = tmp_path / "hang.toml"
    f.write_text(BASE + body)
    code, err = _sim_bounded(capsys, [str(f)])
    assert code == 2
    one_line_naming(err, key)


@pytest.mark.parametrize("value", ["inf", "1e9", "nan", "-1", "0"])
def test_bad_duration_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str) -> None:
    f = tmp_path / "ok.toml"
    f.write_text(BASE)
    code, err = _sim_bounded(capsys, [str(f), "--duration", value])
    assert code == 2
    one_line_naming(err, "--duration", value)


def test_dev_zero_scenario_is_read_bounded() -> None:
    code, err = _sim_subprocess(["/dev/zero"])
    assert code == 2
    one_line_naming(err, "/dev/zero", "larger than")


def test_unwritable_trace_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "ok.toml"
    f.write_text(BASE)
    code, err = _sim_inproc(capsys, [str(f), "--trace", str(tmp_path / "no" / "such" / "dir" / "t")])
    assert code == 2
    one_line_naming(err, "--trace")


def test_valid_scenario_still_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "ok.toml"
    f.write_text(BASE + "[profile_overrides]\ngossip_interval = 0.3\nindirect_checks = 2\n")
    code, err = _sim_inproc(capsys, [str(f), "--duration", "3"])
    assert code == 0, err
