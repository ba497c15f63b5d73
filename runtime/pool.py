"""Hot instance pools: per-module idle instances with LRU, idle and memory-pressure eviction.

The pool knows nothing about wasmtime: it holds opaque instances, asks a
factory for new ones, measures them with ``size_of`` and hands evicted ones
to ``close``. Time comes from an injectable clock so tests drive idle
eviction without sleeping. Reuse takes the most recently used instance (warm
caches); eviction takes the least recently used one, across all pools when a
global limit (instance count or memory) is at stake.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from runtime.limits import PoolConfig

T = TypeVar("T")

DEFAULT_MEMORY_BUDGET = 1 << 30
DEFAULT_PRESSURE_RATIO = 0.8
DEFAULT_MAX_TOTAL_IDLE = 1024


@dataclass(slots=True)
class _Idle(Generic[T]):
    instance: T
    last_used: float
    size: int


@dataclass(slots=True)
class _Pool(Generic[T]):
    config: PoolConfig
    factory: Callable[[], T]
    idle: list[_Idle[T]] = field(default_factory=list)  # ascending last_used: [LRU ... MRU]
    in_use: int = 0
    created: int = 0
    reused: int = 0
    missed: int = 0  # acquires that found no idle instance and created one (cold starts)
    evicted: dict[str, int] = field(default_factory=dict)
    idle_bytes: int = 0


@dataclass(slots=True, frozen=True)
class PoolStats:
    """A snapshot of one pool's counters."""

    idle: int
    in_use: int
    created: int
    reused: int
    evicted: dict[str, int]
    idle_bytes: int
    missed: int = 0


class PoolManager(Generic[T]):
    """All hot pools of a runtime, sharing a memory budget and an idle-instance ceiling."""

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        size_of: Callable[[T], int],
        close: Callable[[T], None],
        memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
        pressure_ratio: float = DEFAULT_PRESSURE_RATIO,
        max_total_idle: int = DEFAULT_MAX_TOTAL_IDLE,
        on_evict: Callable[[Hashable, str], None] | None = None,
    ) -> None:
        if not 0.0 < pressure_ratio <= 1.0:
            raise ValueError(f"pressure_ratio must be in (0, 1], got {pressure_ratio}")
        self._clock = clock
        self._size_of = size_of
        self._close = close
        self.memory_budget_bytes = memory_budget_bytes
        self.pressure_ratio = pressure_ratio
        self.max_total_idle = max_total_idle
        self._on_evict = on_evict
        self._lock = threading.Lock()
        self._pools: dict[Hashable, _Pool[T]] = {}
        # Running totals over every pool's idle list, so a release does not walk all pools.
        self._idle_count = 0
        self._idle_bytes = 0

    def _push_idle_locked(self, pool: _Pool[T], entry: _Idle[T]) -> None:
        pool.idle.append(entry)
        pool.idle_bytes += entry.size
        self._idle_count += 1
        self._idle_bytes += entry.size

    def _pop_idle_locked(self, pool: _Pool[T], index: int) -> _Idle[T]:
        entry = pool.idle.pop(index)
        pool.idle_bytes -= entry.size
        self._idle_count -= 1
        self._idle_bytes -= entry.size
        return entry

    # -- registration ---------------------------------------------------------------------------

    def register(self, key: Hashable, config: PoolConfig, factory: Callable[[], T]) -> None:
        """Create the pool of ``key`` (replacing nothing: a key registers once)."""
        with self._lock:
            if key in self._pools:
                raise ValueError(f"pool {key!r} is already registered")
            self._pools[key] = _Pool(config=config, factory=factory)

    def prewarm(self, key: Hashable) -> int:
        """Create instances until the pool holds ``min_instances`` idle ones; returns how many were made."""
        made = 0
        # Bounded: under memory pressure a new instance may be evicted at once; stop, do not spin.
        for _ in range(self._pools[key].config.min_instances if key in self._pools else 0):
            with self._lock:
                pool = self._pools.get(key)
                if pool is None or not pool.config.reuse or len(pool.idle) + pool.in_use >= pool.config.min_instances:
                    break
                pool.in_use += 1  # reserve, so concurrent prewarms do not overshoot
            inst = self._create(pool)
            self.release(key, inst, reusable=True)
            made += 1
        return made

    def unregister(self, key: Hashable) -> None:
        """Destroy every idle instance of ``key`` and forget the pool; in-use ones close on release."""
        with self._lock:
            pool = self._pools.pop(key, None)
            if pool is not None:
                self._idle_count -= len(pool.idle)
                self._idle_bytes -= pool.idle_bytes
        if pool is not None:
            for entry in pool.idle:
                self._destroy(key, pool, entry.instance, "unload")

    # -- the call path ---------------------------------------------------------------------------

    def acquire(self, key: Hashable) -> T:
        """Take the most recently used idle instance, or create one with the pool's factory."""
        with self._lock:
            pool = self._pools[key]
            pool.in_use += 1
            if pool.idle:
                pool.reused += 1
                return self._pop_idle_locked(pool, -1).instance
            pool.missed += 1
        return self._create(pool)

    def _create(self, pool: _Pool[T]) -> T:
        # The caller has already counted the instance in use (a reservation); undo it on failure.
        try:
            inst = pool.factory()
        except BaseException:
            with self._lock:
                pool.in_use -= 1
            raise
        with self._lock:
            pool.created += 1
        return inst

    def release(self, key: Hashable, inst: T, *, reusable: bool) -> None:
        """Return an instance after a call; it is destroyed unless reusable and wanted."""
        size = self._size_of(inst) if reusable else 0
        doomed: list[tuple[Hashable, _Pool[T], T, str]] = []
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:  # unloaded while the call ran
                doomed.append((key, _Pool(PoolConfig(), lambda: inst), inst, "unload"))
            else:
                pool.in_use -= 1
                if not reusable or not pool.config.reuse:
                    doomed.append((key, pool, inst, "discarded" if not reusable else "no_reuse"))
                else:
                    if len(pool.idle) >= pool.config.max_instances:
                        victim = self._pop_idle_locked(pool, 0)
                        doomed.append((key, pool, victim.instance, "lru"))
                    self._push_idle_locked(pool, _Idle(inst, self._clock(), size))
                    if self._idle_count > self.max_total_idle or self._idle_bytes > self._pressure_bytes:
                        doomed.extend(self._enforce_global_locked())
        for k, p, i, reason in doomed:
            self._destroy(k, p, i, reason)

    # -- maintenance ----------------------------------------------------------------------------

    def tick(self) -> int:
        """Evict instances idle past their pool's timeout (keeping ``min_instances``) and relieve pressure."""
        now = self._clock()
        doomed: list[tuple[Hashable, _Pool[T], T, str]] = []
        with self._lock:
            for key, pool in self._pools.items():
                keep_at_least = pool.config.min_instances
                while len(pool.idle) > keep_at_least:
                    oldest = pool.idle[0]
                    if now - oldest.last_used < pool.config.idle_timeout_s:
                        break
                    self._pop_idle_locked(pool, 0)
                    doomed.append((key, pool, oldest.instance, "idle"))
            doomed.extend(self._enforce_global_locked())
        for k, p, i, reason in doomed:
            self._destroy(k, p, i, reason)
        return len(doomed)

    def _enforce_global_locked(self) -> list[tuple[Hashable, _Pool[T], T, str]]:
        doomed: list[tuple[Hashable, _Pool[T], T, str]] = []
        while self._idle_count > self.max_total_idle:
            doomed.append(self._pop_global_lru_locked("lru_global"))
        # Under pressure even min_instances go: memory safety of the node comes first.
        while self._idle_bytes > self._pressure_bytes and self._idle_count > 0:
            doomed.append(self._pop_global_lru_locked("pressure"))
        return doomed

    def _pop_global_lru_locked(self, reason: str) -> tuple[Hashable, _Pool[T], T, str]:
        best_key, best_pool = None, None
        for key, pool in self._pools.items():
            if pool.idle and (best_pool is None or pool.idle[0].last_used < best_pool.idle[0].last_used):
                best_key, best_pool = key, pool
        assert best_pool is not None
        return best_key, best_pool, self._pop_idle_locked(best_pool, 0).instance, reason

    @property
    def _pressure_bytes(self) -> float:
        return self.memory_budget_bytes * self.pressure_ratio

    def _destroy(self, key: Hashable, pool: _Pool[T], inst: T, reason: str) -> None:
        pool.evicted[reason] = pool.evicted.get(reason, 0) + 1
        try:
            self._close(inst)
        finally:
            if self._on_evict is not None:
                self._on_evict(key, reason)

    # -- introspection --------------------------------------------------------------------------

    def stats(self, key: Hashable) -> PoolStats:
        """Counters of one pool."""
        with self._lock:
            p = self._pools[key]
            return PoolStats(
                idle=len(p.idle), in_use=p.in_use, created=p.created, reused=p.reused,
                evicted=dict(p.evicted), idle_bytes=p.idle_bytes, missed=p.missed,
            )

    def all_stats(self) -> dict[Hashable, PoolStats]:
        """Counters of every registered pool (for the metrics collector)."""
        with self._lock:
            keys = list(self._pools)
        out = {}
        for key in keys:
            try:
                out[key] = self.stats(key)
            except KeyError:  # unregistered meanwhile
                continue
        return out

    def memory_bytes(self) -> int:
        """Linear memory held by idle pooled instances (measured when each was released)."""
        with self._lock:
            return self._idle_bytes

    def keys(self) -> list[Hashable]:
        """Registered pool keys."""
        with self._lock:
            return list(self._pools)

    def close(self) -> None:
        """Destroy every idle instance of every pool."""
        for key in self.keys():
            self.unregister(key)
