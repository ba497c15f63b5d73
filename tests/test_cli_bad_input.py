"""The CLI under bad input: bounded reads, files that are not files, and one exit-code rule.

The rule (README, docs/RUNTIME.md): 0 ok, 1 the operation failed, 2 the invocation is wrong
(a bad flag or value, or a file named on the command line that is missing, unreadable, not a
regular file, too big or invalid), plus `wasmatrix run`'s documented codes (65, 124, 125, 134,
and the guest's own status). Every error is one line on stderr, never a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mesh.cli import main
from runtime import example_path
from tests.cli_helpers import one_line_naming

ROOT = Path(__file__).resolve().parent.parent
HELLO = str(example_path("hello"))


def _cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def _cli_subprocess(argv: list[str]) -> tuple[int, str]:
    # /dev/zero never ends: on the old code these grow until MemoryError, so a timeout must fail them.
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "mesh.cli", *argv], capture_output=True, text=True,
                          timeout=60, env=env, cwd=ROOT, stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stderr


@pytest.fixture
def pubkey(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    """A data dir with a trusted publisher key: (data_dir, key file)."""
    data, key = tmp_path / "data", tmp_path / "pub.key"
    code, _, err = _cli(capsys, ["keygen", "--role", "publisher", "--out", str(key), "--data-dir", str(data)])
    assert code == 0, err
    return data, key


def _publish(data: Path, key: str, file: str) -> list[str]:
    return ["module", "publish", file, "--name", "hello", "--version", "1.0.0", "--key", key, "--data-dir", str(data)]


# -- run --------------------------------------------------------------------------------------


def test_run_directory_says_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(capsys, ["run", str(tmp_path)])
    assert code == 2
    one_line_naming(err, str(tmp_path), "is a directory")


def test_run_missing_module_is_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(capsys, ["run", str(tmp_path / "nope.wasm")])
    assert code == 2
    one_line_naming(err, "nope.wasm", "no such file")


def test_run_stdin_dev_zero_is_bounded() -> None:
    code, err = _cli_subprocess(["run", "--stdin", "/dev/zero", HELLO])
    assert code == 2
    one_line_naming(err, "--stdin", "/dev/zero")


def test_run_module_dev_zero_is_not_read() -> None:
    code, err = _cli_subprocess(["run", "/dev/zero"])
    assert code == 2
    one_line_naming(err, "/dev/zero", "not a regular file")


def test_run_stack_overflow_names_it(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(capsys, ["run", str(example_path("recurse"))])
    assert code == 134
    one_line_naming(err, "stack exhausted")


def test_run_hundred_thousand_functions_is_invalid_module(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.runtime.test_bad_input import many_functions

    f = tmp_path / "big.wasm"
    f.write_bytes(many_functions(100_000))
    code, _, err = _cli(capsys, ["run", str(f)])
    assert code == 65
    one_line_naming(err, "100000 functions", "max_functions=")


# -- keys and publish -------------------------------------------------------------------------


def test_key_dev_zero_is_bounded(pubkey: tuple[Path, Path]) -> None:
    data, _ = pubkey
    code, err = _cli_subprocess(_publish(data, "/dev/zero", HELLO))
    assert code == 2
    one_line_naming(err, "--key", "/dev/zero")


def test_missing_key_file_is_usage(pubkey: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    data, key = pubkey
    code, _, err = _cli(capsys, _publish(data, str(key) + ".missing", HELLO))
    assert code == 2
    one_line_naming(err, "--key", str(key) + ".missing")


def test_garbage_key_file_is_usage(pubkey: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, _ = pubkey
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    code, _, err = _cli(capsys, _publish(data, str(bad), HELLO))
    assert code == 2
    one_line_naming(err, str(bad))


def test_deploy_key_directory_is_usage(pubkey: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, _ = pubkey
    code, _, err = _cli(capsys, ["deploy", "web", "--module", "hello", "--version", "1.0.0", "--key", str(tmp_path),
                                 "--data-dir", str(data)])
    assert code == 2
    one_line_naming(err, "--key", "is a directory")


def test_publish_missing_module_is_usage(pubkey: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, key = pubkey
    code, _, err = _cli(capsys, _publish(data, str(key), str(tmp_path / "gone.wasm")))
    assert code == 2
    one_line_naming(err, "gone.wasm")


def test_publish_directory_says_directory(pubkey: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, key = pubkey
    d = tmp_path / "adir"
    d.mkdir()
    code, _, err = _cli(capsys, _publish(data, str(key), str(d)))
    assert code == 2
    one_line_naming(err, str(d), "is a directory")


def test_publish_validates_before_signing(pubkey: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, key = pubkey
    stub = tmp_path / "stub.wasm"
    stub.write_bytes(b"\0asm")
    code, _, err = _cli(capsys, _publish(data, str(key), str(stub)))
    assert code == 2
    one_line_naming(err, str(stub), "not a valid WebAssembly module")
    code, out, err = _cli(capsys, ["module", "list", "--json", "--data-dir", str(data)])
    assert code == 0, err
    assert out.strip() == "[]"  # nothing was signed or published


def test_publish_valid_module_still_works(pubkey: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    data, key = pubkey
    code, _, err = _cli(capsys, _publish(data, str(key), HELLO))
    assert code == 0, err


def test_run_host_enomem_exits_1_as_a_host_failure() -> None:
    import resource

    def limit() -> None:  # wasmtime cannot reserve a linear memory under 3 GB of address space
        resource.setrlimit(resource.RLIMIT_AS, (3_000_000_000, 3_000_000_000))

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "mesh.cli", "run", HELLO], capture_output=True, text=True,
                          timeout=60, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, preexec_fn=limit)
    assert proc.returncode == 1
    one_line_naming(proc.stderr, "host could not allocate memory", "not a guest trap")
    assert "trapped" not in proc.stderr
