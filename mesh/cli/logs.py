"""CLI logging: command output owns stdout; structured logs go to stderr."""

from __future__ import annotations

import logging
import sys


def logs_to_stderr(level: int = logging.WARNING) -> None:
    """Send structlog output at ``level`` and above to stderr, unless logging is already configured."""
    import structlog

    class _Stderr:  # resolves sys.stderr at each call (it may be swapped, e.g. by test capture)
        def msg(self, message: str) -> None:
            print(message, file=sys.stderr)

        debug = info = warning = warn = error = critical = exception = fatal = log = msg

    if not structlog.is_configured():
        structlog.configure(
            logger_factory=lambda *a: _Stderr(),
            wrapper_class=structlog.make_filtering_bound_logger(level),
        )
