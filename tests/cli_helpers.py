"""Checks shared by the CLI bad-input tests."""

from __future__ import annotations

import subprocess
from typing import Any


def one_line_naming(err: str, *words: str) -> None:
    """Assert ``err`` holds exactly one error line, no traceback, and that line names every word."""
    assert "Traceback" not in err
    # argparse prints its usage (possibly wrapped, continuation lines indented) before the error line.
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("usage:", " "))]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], (w, lines[0])


async def cli_on_thread(capsys: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """``wasmatrix ARGS`` in this process on a worker thread (from a trio test): (code, stdout, stderr)."""
    import trio

    from mesh.cli import main

    capsys.readouterr()
    code = await trio.to_thread.run_sync(main, list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out, err)
