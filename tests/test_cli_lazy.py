"""`wasmatrix COMMAND` loads only the module that owns COMMAND; the table that says which is kept true."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from mesh.cli import _COMMAND_MODULES, COMMAND_OWNERS, _Parser, build_parser, main

ROOT = Path(__file__).resolve().parent.parent


def _registered_by(module: str) -> list[str]:
    sub = _Parser(prog="x").add_subparsers(dest="command")
    importlib.import_module(module).register(sub)
    return list(sub.choices)


def test_owner_table_matches_what_each_module_registers() -> None:
    registered = {cmd: m for m in _COMMAND_MODULES for cmd in _registered_by(m)}
    assert COMMAND_OWNERS == registered


def test_a_command_parser_has_only_its_modules_commands_and_the_full_one_has_all() -> None:
    def commands(p: argparse.ArgumentParser) -> set[str]:
        (sub,) = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        return set(sub.choices)

    assert commands(build_parser("deploy")) == {"keygen", "module", "deploy", "rollback"}
    assert commands(build_parser("sim")) == {"sim"}  # an entry point's command
    full = commands(build_parser())
    assert full == set(COMMAND_OWNERS) | {"sim"}
    assert commands(build_parser("no-such-command")) == full


def test_run_loads_neither_the_daemon_nor_pycrdt_nor_the_demo() -> None:
    code = (
        "import sys\nfrom mesh.cli import main\ntry:\n    main(['run', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('crdt', 'pycrdt', 'mesh.daemon', 'mesh.demo', 'sim') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_a_mistyped_command_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["deplyo"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'deplyo'" in err
    for cmd in ("deploy", "run", "sim", "tenant", "node"):
        assert f"'{cmd}'" in err
