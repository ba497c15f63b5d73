"""The key-value state interface guests reach through host functions.

``KVStore`` is a structural Protocol so the replicated KV in ``crdt`` can
implement it without importing ``runtime``.
"""

from __future__ import annotations

import threading
from typing import Protocol


class KVStore(Protocol):
    """Namespaced byte values under string keys."""

    def get(self, ns: str, key: str) -> bytes | None:
        """Return the value or None when absent."""
        ...

    def set(self, ns: str, key: str, value: bytes) -> None:
        """Store a value, replacing any previous one."""
        ...

    def delete(self, ns: str, key: str) -> None:
        """Remove a key; absent keys are not an error."""
        ...

    def list(self, ns: str, prefix: str) -> list[str]:
        """Return the keys of ``ns`` starting with ``prefix``, sorted."""
        ...


class MemoryKVStore:
    """A thread-safe in-process KVStore (guests call it from worker threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, bytes]] = {}

    def get(self, ns: str, key: str) -> bytes | None:
        """Return the value or None when absent."""
        with self._lock:
            return self._data.get(ns, {}).get(key)

    def set(self, ns: str, key: str, value: bytes) -> None:
        """Store a value, replacing any previous one."""
        with self._lock:
            self._data.setdefault(ns, {})[key] = bytes(value)

    def delete(self, ns: str, key: str) -> None:
        """Remove a key; absent keys are not an error."""
        with self._lock:
            self._data.get(ns, {}).pop(key, None)

    def list(self, ns: str, prefix: str) -> list[str]:
        """Return the keys of ``ns`` starting with ``prefix``, sorted."""
        with self._lock:
            return sorted(k for k in self._data.get(ns, {}) if k.startswith(prefix))
