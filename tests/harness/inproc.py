"""Helpers for tests that run daemons in-process in one trio run (tests/test_invoke_daemons.py,
tests/test_ingress_daemons.py): a bounded async poll and the CLI on a worker thread."""

from __future__ import annotations

import subprocess
from typing import Callable

import pytest
import trio

from mesh.cli import main


async def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``pred`` every 20 ms; AssertionError naming ``what`` when it is not true within ``timeout`` s."""
    with trio.move_on_after(timeout):
        while not pred():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"{what}: not within {timeout} s")


async def cli_in_thread(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """``wasmatrix ARGS`` in this process on a worker thread (a subprocess per command costs seconds
    on a loaded machine); output captured through ``capsys``."""
    capsys.readouterr()
    code = await trio.to_thread.run_sync(main, list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out, err)


