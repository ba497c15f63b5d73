"""How many examples a hypothesis property runs.

The full count runs in CI (``CI`` set, as ``.ci/run`` does) and with
``WASMATRIX_SLOW=1``; a plain ``python -m pytest`` on a developer machine runs a
quarter of it (at least 25), so the default suite stays short while every
property still runs on every change. Hypothesis's own advice: a small budget
while developing, a large one in CI.
"""

from __future__ import annotations

import os

FULL = bool(os.environ.get("CI")) or os.environ.get("WASMATRIX_SLOW") == "1"


def examples(n: int) -> int:
    """``n`` in a full run, else a quarter of it (at least 25, never more than ``n``)."""
    return n if FULL else min(n, max(25, n // 4))
