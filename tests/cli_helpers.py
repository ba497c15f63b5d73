"""Checks and helpers shared by the CLI tests."""

from __future__ import annotations

import contextlib
import subprocess
from typing import Any, Iterator


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


@contextlib.contextmanager
def captured_logs() -> Iterator[list[dict[str, Any]]]:
    """structlog's ``capture_logs`` from default settings, restoring the previous state after.

    Restoring with ``structlog.configure(**saved)`` alone would leave structlog *configured* with
    the defaults when it was not configured before (the defaults print to stdout), so a later
    in-process CLI call would no longer send its logs to stderr (mesh/cli/logs.py).
    """
    import structlog

    was_configured = structlog.is_configured()
    saved = structlog.get_config()
    structlog.reset_defaults()  # an earlier in-process CLI test may have filtered info logs out
    try:
        with structlog.testing.capture_logs() as logs:
            yield logs
    finally:
        if was_configured:
            structlog.configure(**saved)
        else:
            structlog.reset_defaults()
