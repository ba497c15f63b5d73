"""``promtool check metrics`` (Debian package prometheus) as a test helper."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any, Iterable

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


def assert_documented(families: Iterable[Any], doc: str, *, free: Iterable[str] = (), skip: Iterable[str] = ("le",)) -> None:
    """Every family (counters as ``NAME_total``), label and label value in ``families`` is named in ``doc``.

    Names and labels must appear in backticks. ``free`` labels (ids, names chosen by users) need their
    name documented but not their values; ``skip`` labels are not checked at all.
    """
    free, skip = set(free), set(skip)
    for fam in families:
        shown = fam.name + "_total" if fam.type == "counter" else fam.name
        assert f"`{shown}`" in doc, shown
        for smp in fam.samples:
            for label, v in smp.labels.items():
                if label in skip:
                    continue
                assert f"`{label}`" in doc, (fam.name, label)
                assert label in free or v in doc, (fam.name, label, v)
