"""Audit sinks: where security-relevant runtime events go (denials, rejections)."""

from __future__ import annotations

import threading
from typing import Any, Protocol


class AuditSink(Protocol):
    """Receives one dict per security-relevant event; the node appends it to its hash-chained log."""

    def record(self, event: dict[str, Any]) -> None:
        """Record one audit event."""
        ...


class NullAuditSink:
    """Discards events; the default when no sink is injected."""

    def record(self, event: dict[str, Any]) -> None:
        """Drop the event."""


class MemoryAuditSink:
    """Keeps events in a list; thread-safe, for tests and the CLI."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[dict[str, Any]] = []

    def record(self, event: dict[str, Any]) -> None:
        """Append a copy of the event."""
        with self._lock:
            self._events.append(dict(event))

    @property
    def events(self) -> list[dict[str, Any]]:
        """A snapshot of every recorded event, oldest first."""
        with self._lock:
            return list(self._events)
