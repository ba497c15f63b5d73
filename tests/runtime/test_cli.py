"""``wasmatrix run``: stdout passthrough, exit codes, clear one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mesh.cli import main
from mesh.cli.runcmd import EXIT_INVALID_MODULE, EXIT_LIMIT, EXIT_TIMEOUT, EXIT_TRAP, EXIT_USAGE
from runtime import example_path

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "mesh.cli", "run", *argv], input=stdin, capture_output=True, cwd=ROOT, timeout=60,
    )


def test_stdout_and_exit_code_pass_through() -> None:
    proc = run_cli(str(example_path("hello")), "--env", "A=B", "--", "x", "--exit=7", stdin=b"piped")
    assert proc.returncode == 7
    assert proc.stdout == b"hello from wasm\nargv: x --exit=7\nenv: A=B\nstdin: piped\n"
    assert proc.stderr == b""  # logs stay quiet without -v


def test_timeout_is_one_line_and_distinct_code() -> None:
    proc = run_cli(str(example_path("loop")), "--timeout-ms", "100")
    assert proc.returncode == EXIT_TIMEOUT
    assert proc.stderr.decode().count("\n") == 1 and "100 ms timeout" in proc.stderr.decode()
    assert b"Traceback" not in proc.stderr


def test_direct_abi_invoke() -> None:
    proc = run_cli("--invoke", str(example_path("handler")), stdin=b"ping")
    assert proc.returncode == 0 and proc.stdout == b"n=1:PING"


@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        (["run", "does-not-exist.wasm"], EXIT_USAGE, "no such file"),
        (["run", str(ROOT / "pyproject.toml")], EXIT_INVALID_MODULE, "not a WebAssembly module"),
        (["run", str(example_path("membomb")), "--memory-mb", "4", "--stdin", "/dev/null"], EXIT_LIMIT, "memory"),
        (["run", "--invoke", str(example_path("handler")), "--stdin", "{trap}"], EXIT_TRAP, "unreachable"),
        (["run", str(example_path("kvcounter")), "--stdin", "/dev/null"], EXIT_INVALID_MODULE, "kv_get"),
        (["run", str(example_path("hello")), "--env", "NOEQUALS"], EXIT_USAGE, "expected K=V"),
        (["run", str(example_path("hello")), "--dir", "/no/such/dir"], EXIT_USAGE, "does not exist"),
        (["run", str(example_path("hello")), "--memory-mb", "4096"], EXIT_USAGE, "memory limit"),
        (["run"], EXIT_USAGE, "missing FILE.wasm"),
    ],
)
def test_errors_in_process(
    argv: list[str], code: int, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trap_input = tmp_path / "trap.txt"
    trap_input.write_bytes(b"trap")
    argv = [a.replace("{trap}", str(trap_input)) for a in argv]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert err.startswith("wasmatrix run: ")


def test_kv_and_dir_grants_in_process(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert main(["run", str(example_path("kvcounter")), "--kv-ns", "counter", "--log", "--stdin", "/dev/null"]) == 0
    assert capsysbinary.readouterr().out == b"1\n"
    (tmp_path / "public.txt").write_text("hi")
    code = main(["run", str(example_path("escape")), "--dir", f"{tmp_path}::/data", "--allow-http", "ok.test",
                 "--stdin", "/dev/null"])
    out = capsysbinary.readouterr().out.decode()
    assert code == 0 and "open /data/public.txt (r): ok" in out


def test_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for code in (EXIT_INVALID_MODULE, EXIT_TIMEOUT, EXIT_LIMIT, EXIT_TRAP):
        assert f"  {code}" in out
