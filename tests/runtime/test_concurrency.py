"""Many concurrent calls on worker threads: no deadlock, no leaked instances, immediate rejection at the cap."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import trio

from runtime import Limits, PoolConfig, Runtime, RuntimeConfig, WasmConcurrencyRejected, WasmTimeout
from tests.runtime.conftest import counter


def test_threads_share_pool_without_leaks(wasm: dict[str, bytes]) -> None:
    with Runtime(RuntimeConfig(allow_unsigned=True)) as rt:
        lm = rt.load_unsigned(wasm["handler"], name="h", pool=PoolConfig(min_instances=1, max_instances=4))
        hello = rt.load_unsigned(wasm["hello"], name="hello")

        def work(i: int) -> bool:
            if i % 5 == 0:
                return rt.run_command(hello.key, stdin=str(i).encode()).body.endswith(f"stdin: {i}\n".encode())
            return rt.call(lm.key, f"req{i}".encode()).endswith(f"REQ{i}".encode())

        with ThreadPoolExecutor(max_workers=8) as ex:
            assert all(ex.map(work, range(400)))
        stats = rt.pools.stats(lm.key)
        assert stats.in_use == 0 and stats.idle <= 4
        assert stats.created == stats.idle + sum(stats.evicted.values())  # every instance accounted for
        assert lm.inflight == 0
        assert counter(rt, "wasmatrix_runtime_invocations_total", module=lm.key, outcome="ok") == 320


def test_concurrency_cap_rejects_immediately(wasm: dict[str, bytes]) -> None:
    with Runtime(RuntimeConfig(allow_unsigned=True)) as rt:
        lm = rt.load_unsigned(wasm["loop"], name="loop", limits=Limits(max_concurrency=2, timeout_ms=1500))
        started = threading.Barrier(3)
        errors: list[BaseException] = []

        def run() -> None:
            started.wait()
            try:
                rt.run_command(lm.key)
            except WasmTimeout as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
        started.wait()
        while lm.inflight < 2:
            pass
        with pytest.raises(WasmConcurrencyRejected) as info:
            rt.run_command(lm.key)
        assert info.value.http_status == 429
        for t in threads:
            t.join()
        assert len(errors) == 2 and lm.inflight == 0
        assert counter(rt, "wasmatrix_runtime_concurrency_rejections_total", module=lm.key) == 1


async def test_async_invoke_keeps_event_loop_responsive(wasm: dict[str, bytes]) -> None:
    with Runtime(RuntimeConfig(allow_unsigned=True, max_workers=2)) as rt:
        lm = rt.load_unsigned(wasm["handler"], name="h")
        loop = rt.load_unsigned(wasm["loop"], name="loop", limits=Limits(timeout_ms=300))
        results: list[bytes] = []
        ticks = 0
        timed_out = False

        async def call(i: int) -> None:
            results.append((await rt.invoke(lm.key, f"x{i}".encode())).body)

        async def spin() -> None:
            nonlocal timed_out
            try:
                await rt.invoke(loop.key)
            except WasmTimeout:
                timed_out = True

        async def heartbeat() -> None:
            nonlocal ticks
            for _ in range(5):
                await trio.sleep(0.01)
                ticks += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(spin)
            nursery.start_soon(heartbeat)
            for i in range(50):
                nursery.start_soon(call, i)
        assert timed_out and ticks == 5
        assert sorted(r.split(b":")[1] for r in results) == sorted(f"X{i}".encode() for i in range(50))
        assert rt.pools.stats(lm.key).in_use == 0 and lm.inflight == 0
