"""The key-value state interface guests reach through host functions.

``KVStore`` is a structural Protocol so the replicated KV in ``crdt`` can
implement it without importing ``runtime``.

Threads: host functions run on wasmtime worker threads, but the replicated KV
(``crdt.intent.IntentNode``) belongs to the node's event loop and is not
thread-safe (a write draws the next sequence number of its signer, mutates the
Yjs document and queues a persist effect). :class:`LoopKV` is the one way a
worker thread reaches it: every call is *marshalled* onto the loop by the
driver's ``call`` function (``trio.from_thread.run_sync`` in the daemon), so
the store only ever runs on its owner thread, and a write returns to the guest
only after ``wait`` confirmed it durable (acknowledged means durable).
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Protocol, TypeVar

T = TypeVar("T")


class KVStore(Protocol):
    """Namespaced byte values under string keys."""

    def get(self, ns: str, key: str) -> bytes | None:
        """Return the value or None when absent."""
        ...

    def set(self, ns: str, key: str, value: bytes) -> Any:
        """Store a value, replacing any previous one (may return a durability ticket)."""
        ...

    def delete(self, ns: str, key: str) -> Any:
        """Remove a key; absent keys are not an error (may return a durability ticket)."""
        ...

    def list(self, ns: str, prefix: str) -> list[str]:
        """Return the keys of ``ns`` starting with ``prefix``, sorted."""
        ...


class LoopKV:
    """A KVStore for worker threads over a store owned by an event loop.

    ``call(fn)`` runs ``fn()`` on the owning loop and returns its result (blocking the
    worker thread, never the loop). ``wait(ticket)``, when given, blocks the worker until
    the write that returned ``ticket`` is durable; a store that returns ``None`` was
    already durable when it returned.
    """

    def __init__(self, store: KVStore, call: Callable[[Callable[[], Any]], Any], wait: Callable[[Any], None] | None = None) -> None:
        self._store = store
        self._call = call
        self._wait = wait

    def _run(self, fn: Callable[[], T]) -> T:
        result: T = self._call(fn)
        return result

    def get(self, ns: str, key: str) -> bytes | None:
        """Return the value or None when absent (read on the owning loop)."""
        return self._run(lambda: self._store.get(ns, key))

    def set(self, ns: str, key: str, value: bytes) -> None:
        """Store a value on the owning loop; return once it is durable."""
        data = bytes(value)
        ticket = self._run(lambda: self._store.set(ns, key, data))
        if ticket is not None and self._wait is not None:
            self._wait(ticket)

    def delete(self, ns: str, key: str) -> None:
        """Remove a key on the owning loop; return once the tombstone is durable."""
        ticket = self._run(lambda: self._store.delete(ns, key))
        if ticket is not None and self._wait is not None:
            self._wait(ticket)

    def list(self, ns: str, prefix: str) -> list[str]:
        """Return the keys of ``ns`` starting with ``prefix``, sorted (read on the owning loop)."""
        return self._run(lambda: self._store.list(ns, prefix))


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
