"""Many concurrent calls on worker threads: no deadlock, no leaked instances, immediate rejection at the cap."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import trio

from runtime import (
    Capabilities,
    Limits,
    MemoryKVStore,
    PoolConfig,
    Runtime,
    RuntimeConfig,
    WasmConcurrencyRejected,
    WasmTimeout,
)
from tests.runtime.conftest import counter
from tests.runtime.direct_modules import gated_module

# A bound on "it finished" (no hang, no deadlock), never a performance figure: benchmarks live in bench/.
GENEROUS_S = 30.0
GATE_S = 10.0


def test_threads_share_pool_without_leaks(wasm: dict[str, bytes]) -> None:
    with Runtime(RuntimeConfig(allow_unsigned=True)) as rt:
        lm = rt.load_unsigned(wasm["handler"], name="h", pool=PoolConfig(min_instances=1, max_instances=4))
        hello = rt.load_unsigned(wasm["hello"], name="hello")

        def work(i: int) -> bool:
            if i % 5 == 0:
                return rt.run_command(hello.key, stdin=str(i).encode()).body.endswith(f"stdin: {i}\n".encode())
            return rt.call(lm.key, f"req{i}".encode()).endswith(f"REQ{i}".encode())

        ex = ThreadPoolExecutor(max_workers=8)
        try:
            # map's timeout turns a deadlock into a TimeoutError instead of a hung suite.
            assert all(ex.map(work, range(400), timeout=GENEROUS_S))
        finally:
            ex.shutdown(wait=False, cancel_futures=True)
        stats = rt.pools.stats(lm.key)
        assert stats.in_use == 0 and stats.idle <= 4
        assert stats.created == stats.idle + sum(stats.evicted.values())  # every instance accounted for
        assert lm.inflight == 0
        assert counter(rt, "wasmatrix_runtime_invocations_total", module=lm.key, outcome="ok") == 320


class GatedKV(MemoryKVStore):
    """A KV store whose reads wait at a gate the test opens, so calls stay in flight as long as it wants."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.waiting = 0
        self.returned = 0
        self._cond = threading.Condition()

    def get(self, ns: str, key: str) -> bytes | None:
        with self._cond:
            self.waiting += 1
            self._cond.notify_all()
        self.gate.wait(GATE_S)  # bounded: a broken cap (a third call let in) fails instead of hanging
        with self._cond:
            self.returned += 1
            self._cond.notify_all()
        return super().get(ns, key)

    def wait_for_waiting(self, n: int) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.waiting >= n, timeout=GENEROUS_S)

    def wait_for_returned(self, n: int) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.returned >= n, timeout=GENEROUS_S)


def test_concurrency_cap_rejects_immediately(wasm: dict[str, bytes]) -> None:
    kv = GatedKV()
    with Runtime(RuntimeConfig(allow_unsigned=True), kv=kv) as rt:
        caps = Capabilities.build(kv_namespaces=["counter"], log=True)
        lm = rt.load_unsigned(wasm["kvcounter"], name="kv", capabilities=caps, limits=Limits(max_concurrency=2))
        threads: list[threading.Thread] = []
        results: list[bytes] = []
        errors: list[BaseException] = []

        def run() -> None:
            try:
                results.append(rt.run_command(lm.key).body)
            except BaseException as exc:  # handed to the test, which asserts there were none
                errors.append(exc)

        for _ in range(2):
            threads.append(threading.Thread(target=run, daemon=True))
            threads[-1].start()
        # Both calls are inside the guest, parked in kv_get: the module is at its cap until we open the gate.
        assert kv.wait_for_waiting(2), "the two calls never reached the guest's kv_get"
        assert lm.inflight == 2
        with pytest.raises(WasmConcurrencyRejected) as info:
            rt.run_command(lm.key)
        assert info.value.http_status == 429
        assert kv.waiting == 2  # rejected before it ran: the third call never reached the guest
        kv.gate.set()
        for t in threads:
            t.join(GENEROUS_S)
            assert not t.is_alive(), "an admitted call did not finish after the gate opened"
        # Both ran to completion; their read-increment-write may interleave (the KV has no transactions).
        assert errors == [] and sorted(results) in ([b"1\n", b"1\n"], [b"1\n", b"2\n"])
        assert lm.inflight == 0
        stored = int(kv.get("counter", "hits") or b"0")
        assert rt.run_command(lm.key).body == f"{stored + 1}\n".encode()  # the cap is free again
        assert counter(rt, "wasmatrix_runtime_concurrency_rejections_total", module=lm.key) == 1


async def _ticks_during(call: Callable[[], Awaitable[object]]) -> tuple[int, float]:
    """Run ``call`` next to a 10 ms ticker task; return how often the ticker ran while the call was in
    flight and its worst scheduling lag (how late it woke, by trio's clock)."""
    ticks = 0
    worst_lag = 0.0
    in_flight = False
    period = 0.01
    last_wake = trio.current_time()

    async def ticker() -> None:
        nonlocal ticks, worst_lag, last_wake
        while True:
            await trio.sleep(period)
            now = trio.current_time()
            worst_lag = max(worst_lag, now - last_wake - period)
            last_wake = now
            if in_flight:
                ticks += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await trio.sleep(0)  # let the ticker start before the call
        in_flight = True
        try:
            await call()
        finally:
            in_flight = False
            # A ticker that never woke during the call was late by everything since its last wake.
            worst_lag = max(worst_lag, trio.current_time() - last_wake - period)
            nursery.cancel_scope.cancel()
    return ticks, worst_lag


async def test_async_invoke_keeps_event_loop_responsive(wasm: dict[str, bytes]) -> None:
    with trio.fail_after(GENEROUS_S):
        with Runtime(RuntimeConfig(allow_unsigned=True, max_workers=2)) as rt:
            lm = rt.load_unsigned(wasm["handler"], name="h")
            # The guest loops until its 400 ms epoch deadline: a long call that holds no GIL.
            loop = rt.load_unsigned(wasm["loop"], name="loop", limits=Limits(timeout_ms=400))
            results: list[bytes] = []

            async def call(i: int) -> None:
                results.append((await rt.invoke(lm.key, f"x{i}".encode())).body)

            async def spin_on_worker() -> None:
                with pytest.raises(WasmTimeout):
                    await rt.invoke(loop.key)

            async def spin_on_loop() -> None:
                # The negative control: the same call made synchronously on the event loop's thread.
                with pytest.raises(WasmTimeout):
                    rt.invoke_sync(loop.key)

            async def spin_with_handler_calls() -> None:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(spin_on_worker)
                    for i in range(50):
                        nursery.start_soon(call, i)

            ticks, lag = await _ticks_during(spin_with_handler_calls)
            blocked_ticks, blocked_lag = await _ticks_during(spin_on_loop)
            # A blocked loop cannot run the ticker at all while the call is in flight; a responsive one
            # runs it many times in 400 ms (a count, not a timing threshold: load only lowers it a little).
            assert blocked_ticks == 0, f"negative control: the loop was blocked yet ticked {blocked_ticks} times"
            assert ticks >= 3, f"loop starved while the guest ran on a worker: {ticks} ticks, worst lag {lag:.3f} s"
            assert sorted(r.split(b":")[1] for r in results) == sorted(f"X{i}".encode() for i in range(50))
            assert rt.pools.stats(lm.key).in_use == 0 and lm.inflight == 0 and loop.inflight == 0


def _start(fn: Callable[[], object], results: list[object]) -> threading.Thread:
    def target() -> None:
        try:
            results.append(fn())
        except BaseException as exc:  # handed to the test, which asserts on it
            results.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("n", [2, 4])
def test_n_concurrent_calls_use_n_instances(n: int) -> None:
    kv = GatedKV()
    with Runtime(RuntimeConfig(allow_unsigned=True), kv=kv) as rt:
        lm = rt.load_unsigned(gated_module(), name="gated", capabilities=Capabilities.build(kv_namespaces=["n"]),
                              pool=PoolConfig(min_instances=1, max_instances=8))
        results: list[object] = []
        threads = [_start(lambda i=i: rt.call(lm.key, b"w%d" % i), results) for i in range(n)]
        # All n calls are inside their guests at once (parked in kv_get): n instances are in use.
        assert kv.wait_for_waiting(n), f"only {kv.waiting} of {n} concurrent calls reached the guest"
        stats = rt.pools.stats(lm.key)
        assert stats.in_use == n and stats.created == n and stats.idle == 0
        kv.gate.set()
        for t in threads:
            t.join(GENEROUS_S)
            assert not t.is_alive()
        assert sorted(results) == sorted(b"w%d" % i for i in range(n))  # type: ignore[type-var]
        assert rt.pools.stats(lm.key).idle == n and lm.inflight == 0


def test_a_slow_call_does_not_block_a_fast_one() -> None:
    """One call parked in a host function (inside wasm's handle), then one spinning in wasm itself: a call
    on another instance of the same module completes meanwhile (no lock, and no GIL, held across the call)."""
    kv = GatedKV()
    with Runtime(RuntimeConfig(allow_unsigned=True), kv=kv) as rt:
        lm = rt.load_unsigned(gated_module(), name="gated", capabilities=Capabilities.build(kv_namespaces=["n"]),
                              limits=Limits(timeout_ms=300_000), pool=PoolConfig(min_instances=1, max_instances=4))
        slow: list[object] = []
        slow_thread = _start(lambda: rt.call(lm.key, b"s"), slow)
        assert kv.wait_for_waiting(1)
        fast: list[object] = []
        fast_thread = _start(lambda: rt.call(lm.key, b"fast"), fast)
        fast_thread.join(GENEROUS_S)
        assert fast == [b"fast"], "a fast call waited for a slow call parked in a host function"
        kv.gate.set()  # the slow call now spins in wasm until its 300 s deadline
        assert kv.wait_for_returned(1)
        fast2: list[object] = []
        fast_thread = _start(lambda: rt.call(lm.key, b"fast2"), fast2)
        fast_thread.join(GENEROUS_S)
        assert fast2 == [b"fast2"], "a fast call waited for a slow call spinning in wasm"
        assert slow_thread.is_alive() and slow == []  # only the epoch deadline ends the spin
        for _ in range(lm.deadline_ticks + 1):
            lm.engine.engine.increment_epoch()
        slow_thread.join(GENEROUS_S)
        assert not slow_thread.is_alive() and len(slow) == 1 and isinstance(slow[0], WasmTimeout)
        stats = rt.pools.stats(lm.key)
        assert stats.created == 2 and stats.in_use == 0 and stats.evicted == {"discarded": 1}
