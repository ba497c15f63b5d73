"""Shared fixtures. Simulation failures print the seed and the replay command.

Tests marked ``slow`` (long simulation properties, process tests) are left out
of a plain ``python -m pytest`` on a developer machine so the default run stays
short; they run whenever ``CI`` is set (as ``.ci/run`` does), when
``WASMATRIX_SLOW=1``, or when selected explicitly with ``-m slow``.
"""

from __future__ import annotations

import os

import pytest


def _run_slow(config: pytest.Config) -> bool:
    if os.environ.get("CI") or os.environ.get("WASMATRIX_SLOW") == "1":
        return True
    return "slow" in (config.getoption("-m") or "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _run_slow(config):
        return
    skipped = [i for i in items if i.get_closest_marker("slow") is not None]
    if skipped:
        config.hook.pytest_deselected(items=skipped)
        items[:] = [i for i in items if i.get_closest_marker("slow") is None]
