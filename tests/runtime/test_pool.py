"""Hot pools: min/max, LRU across pools, idle and memory-pressure eviction, with a fake clock."""

from __future__ import annotations

import pytest

from runtime import PoolConfig, Runtime, RuntimeConfig
from runtime.pool import PoolManager
from tests.runtime.conftest import FakeClock, counter


class Fake:
    def __init__(self, n: int, size: int = 100) -> None:
        self.n, self.size, self.closed = n, size, False


def make_manager(clock: FakeClock, **kw: int | float) -> tuple[PoolManager[Fake], list[str]]:
    log: list[str] = []
    mgr: PoolManager[Fake] = PoolManager(
        clock=clock, size_of=lambda f: f.size, close=lambda f: setattr(f, "closed", True),
        on_evict=lambda key, reason: log.append(f"{key}:{reason}"), **kw,  # type: ignore[arg-type]
    )
    return mgr, log


def factory() -> object:
    counter = iter(range(1_000_000))
    return lambda: Fake(next(counter))


def test_prewarm_min_and_reuse_most_recent(clock: FakeClock) -> None:
    mgr, _ = make_manager(clock)
    mgr.register("a", PoolConfig(min_instances=2, max_instances=4), factory())  # type: ignore[arg-type]
    assert mgr.prewarm("a") == 2
    assert mgr.stats("a").idle == 2
    x = mgr.acquire("a")
    assert mgr.stats("a").reused == 1 and mgr.stats("a").created == 2
    mgr.release("a", x, reusable=True)
    assert mgr.acquire("a") is x  # MRU first: warm caches


def test_max_instances_evicts_lru(clock: FakeClock) -> None:
    mgr, log = make_manager(clock)
    mgr.register("a", PoolConfig(min_instances=0, max_instances=2), factory())  # type: ignore[arg-type]
    held = [mgr.acquire("a") for _ in range(3)]
    for inst in held:
        clock.advance(1)
        mgr.release("a", inst, reusable=True)
    assert mgr.stats("a").idle == 2
    assert held[0].closed and not held[1].closed and not held[2].closed
    assert log == ["a:lru"]


def test_global_lru_across_pools(clock: FakeClock) -> None:
    mgr, log = make_manager(clock, max_total_idle=2)
    for key in ("a", "b"):
        mgr.register(key, PoolConfig(min_instances=0, max_instances=4), factory())  # type: ignore[arg-type]
    a1 = mgr.acquire("a")
    b1 = mgr.acquire("b")
    b2 = mgr.acquire("b")
    mgr.release("a", a1, reusable=True)
    clock.advance(1)
    mgr.release("b", b1, reusable=True)
    clock.advance(1)
    mgr.release("b", b2, reusable=True)
    assert a1.closed and log == ["a:lru_global"]  # the oldest idle instance of any pool goes


def test_idle_eviction_keeps_min(clock: FakeClock) -> None:
    mgr, log = make_manager(clock)
    mgr.register("a", PoolConfig(min_instances=1, max_instances=4, idle_timeout_s=300), factory())  # type: ignore[arg-type]
    insts = [mgr.acquire("a") for _ in range(3)]
    for inst in insts:
        mgr.release("a", inst, reusable=True)
    clock.advance(299)
    assert mgr.tick() == 0
    clock.advance(2)
    assert mgr.tick() == 2
    assert mgr.stats("a").idle == 1 and log == ["a:idle", "a:idle"]


def test_memory_pressure_shrinks_lru_first(clock: FakeClock) -> None:
    mgr, log = make_manager(clock, memory_budget_bytes=1000, pressure_ratio=0.8)
    mgr.register("a", PoolConfig(min_instances=0, max_instances=10), factory())  # type: ignore[arg-type]
    insts = [mgr.acquire("a") for _ in range(9)]
    for inst in insts:
        clock.advance(1)
        mgr.release("a", inst, reusable=True)
    # 9 x 100 bytes > 800 threshold: the pool shrinks to 8, oldest first.
    assert mgr.stats("a").idle == 8 and mgr.memory_bytes() == 800
    assert insts[0].closed and log == ["a:pressure"]


def test_unreusable_instance_is_destroyed(clock: FakeClock) -> None:
    mgr, log = make_manager(clock)
    mgr.register("a", PoolConfig(), factory())  # type: ignore[arg-type]
    x = mgr.acquire("a")
    mgr.release("a", x, reusable=False)
    assert x.closed and mgr.stats("a").idle == 0 and log == ["a:discarded"]


def test_real_pools_with_handler_module(clock: FakeClock, wasm: dict[str, bytes]) -> None:
    cfg = RuntimeConfig(allow_unsigned=True, max_total_idle=3)
    with Runtime(cfg, clock=clock) as rt:
        a = rt.load_unsigned(wasm["handler"], name="a", pool=PoolConfig(min_instances=2, max_instances=2,
                                                                        idle_timeout_s=60))
        b = rt.load_unsigned(wasm["handler"], name="b", pool=PoolConfig(min_instances=0, max_instances=2,
                                                                        idle_timeout_s=60))
        assert rt.pools.stats(a.key).idle == 2  # warmed on load
        assert counter(rt, "wasmatrix_runtime_pool_instances", module=a.key, state="idle") == 2
        clock.advance(10)
        assert rt.call(b.key, b"x") == b"n=1:X"
        # Three idle instances fit; a fourth would evict the global LRU one (a's oldest).
        clock.advance(10)
        assert rt.call(b.key, b"y") == b"n=2:Y"
        assert rt.pools.stats(a.key).idle == 2 and rt.pools.stats(b.key).idle == 1
        clock.advance(61)
        rt.tick()
        assert rt.pools.stats(a.key).idle == 2  # min kept
        assert rt.pools.stats(b.key).idle == 0  # idle past 60 s
        assert counter(rt, "wasmatrix_runtime_pool_evictions_total", module=b.key, reason="idle") == 1
        assert counter(rt, "wasmatrix_runtime_pool_instances", module=b.key, state="idle") == 0
        # b's two calls: the first found no idle instance (min 0), the second reused it.
        assert counter(rt, "wasmatrix_runtime_pool_misses_total", module=b.key) == 1
        assert counter(rt, "wasmatrix_runtime_pool_hits_total", module=b.key) == 1
        rt.unload(a.key)
        assert counter(rt, "wasmatrix_runtime_pool_evictions_total", module=a.key, reason="unload") == 2


def test_real_memory_pressure(clock: FakeClock, wasm: dict[str, bytes]) -> None:
    # One handler instance holds 2 pages (128 KiB); a 400 KiB budget at 80% fits two of them.
    cfg = RuntimeConfig(allow_unsigned=True, memory_budget_bytes=400 * 1024, pressure_ratio=0.8)
    with Runtime(cfg, clock=clock) as rt:
        with pytest.raises(KeyError):
            rt.pools.stats("missing")
        lm = rt.load_unsigned(wasm["handler"], name="h", pool=PoolConfig(min_instances=3, max_instances=5))
        stats = rt.pools.stats(lm.key)
        assert stats.idle == 2 and stats.evicted == {"pressure": 1}
        assert rt.pools.memory_bytes() <= 0.8 * 400 * 1024
