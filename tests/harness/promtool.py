"""``promtool check metrics`` (Debian package prometheus) as a test helper."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def promtool_check(text: bytes) -> None:
    """``promtool check metrics`` must accept the exposition with no lint finding (skip if absent, fail in CI)."""
    exe = shutil.which("promtool")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("promtool missing in CI: .ci/run must apt-get install prometheus")
        pytest.skip("promtool (Debian package prometheus) not installed")
    res = subprocess.run([exe, "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()
    assert res.stdout.decode().strip() == "" and res.stderr.decode().strip() == "", res.stdout + res.stderr
