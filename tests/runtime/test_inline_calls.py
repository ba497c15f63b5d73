"""Inline calls: a direct-ABI module that has proven fast runs on the event loop's thread, bounded.

``Runtime.invoke`` runs a call inline (no worker-thread hop) only for a module whose imports are all
in ``INLINE_SAFE_IMPORTS`` and after ``INLINE_AFTER`` consecutive fast calls; an inline call that
reaches the inline bound (``INLINE_TICKS`` epoch ticks) is interrupted and re-run from scratch on a
worker thread under the module's own timeout, and the module goes back to worker threads.
"""

from __future__ import annotations

import struct

import pytest
import trio
from wasmtime import wat2wasm

from runtime import Capabilities, Limits, PoolConfig, Runtime, RuntimeConfig, WasmTimeout
from runtime.runner import INLINE_AFTER, INLINE_MAX_S, INLINE_PENALTY, INLINE_STREAK_CAP, next_streak
from tests.runtime.conftest import counter
from tests.runtime.direct_modules import gated_module

# handle(in, len): echoes the input; an input starting with "s" first spins for the u32 (little-endian)
# count in bytes 1..4. Imports fd_write only (inline-safe), like the C examples.
_SPIN = wat2wasm("""
(module
  (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "wmx_abi_version") (result i32) (i32.const 2))
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle") (param $in i32) (param $len i32) (result i64) (local $n i32)
    (if (i32.and (i32.ge_u (local.get $len) (i32.const 5)) (i32.eq (i32.load8_u (local.get $in)) (i32.const 115)))
      (then
        (local.set $n (i32.load (i32.add (local.get $in) (i32.const 1))))
        (block $done (loop $spin
          (br_if $done (i32.eqz (local.get $n)))
          (local.set $n (i32.sub (local.get $n) (i32.const 1)))
          (br $spin)))))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $in)) (i64.const 32)) (i64.extend_i32_u (local.get $len))))
)
""")
ONE = PoolConfig(min_instances=1, max_instances=2)


def inline(rt: Runtime, outcome: str) -> float:
    return counter(rt, "wasmatrix_runtime_inline_calls_total", outcome=outcome)


def spin(n: int) -> bytes:
    return b"s" + struct.pack("<I", n)


@pytest.fixture
def no_preemption(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every warm-up call counts as fast: on a loaded machine the OS can stretch a 20-us call past
    INLINE_MAX_S and halve the streak, which is next_streak's policy (test_streak_policy), not these tests'."""
    import runtime.runner

    monkeypatch.setattr(runtime.runner, "INLINE_MAX_S", 1.0)


async def test_a_proven_fast_module_runs_inline_after_its_streak(no_preemption: None) -> None:
    with Runtime(RuntimeConfig(allow_unsigned=True)) as rt:
        lm = rt.load_unsigned(_SPIN, name="spin", pool=ONE)
        assert lm.inline_ok
        for i in range(INLINE_AFTER):
            assert (await rt.invoke(lm.key, b"w%d" % i)).body == b"w%d" % i
        assert inline(rt, "ok") == 0  # the streak is earned on worker threads
        for i in range(10):
            assert (await rt.invoke(lm.key, b"i%d" % i)).body == b"i%d" % i
        assert inline(rt, "ok") == 10 and inline(rt, "expired") == 0
        assert lm.inflight == 0 and rt.pools.stats(lm.key).in_use == 0


async def test_disabled_by_config() -> None:
    with Runtime(RuntimeConfig(allow_unsigned=True, inline_calls=False)) as rt:
        lm = rt.load_unsigned(_SPIN, name="spin", pool=ONE)
        for i in range(INLINE_AFTER + 5):
            await rt.invoke(lm.key, b"x")
        assert inline(rt, "ok") == 0


async def test_a_call_over_the_inline_bound_reruns_on_a_thread_and_demotes_the_module() -> None:
    with Runtime(RuntimeConfig(allow_unsigned=True)) as rt:
        lm = rt.load_unsigned(_SPIN, name="spin", limits=Limits(timeout_ms=60_000), pool=ONE)
        for _ in range(INLINE_AFTER):
            await rt.invoke(lm.key, b"warm")
        # Hot now: this call starts inline, spins far past 2 ticks (~10^9 iterations), is interrupted,
        # and runs again to completion on a worker thread: the caller gets the full answer.
        slow = spin(1_000_000_000)
        res = await rt.invoke(lm.key, slow)
        assert res.body == slow and res.status == 0
        assert inline(rt, "expired") == 1 and inline(rt, "ok") == 0
        assert counter(rt, "wasmatrix_runtime_invoke_errors_total", module=lm.key, code="timeout") == 0
        assert lm.fast_streak < 0  # demoted: the next calls go to worker threads again
        for _ in range(5):
            await rt.invoke(lm.key, b"x")
        assert inline(rt, "ok") == 0 and lm.fast_streak == -INLINE_PENALTY + 5
        assert lm.inflight == 0 and rt.pools.stats(lm.key).in_use == 0


async def test_a_module_timeout_within_the_inline_bound_is_a_real_timeout(no_preemption: None) -> None:
    with Runtime(RuntimeConfig(allow_unsigned=True)) as rt:
        lm = rt.load_unsigned(_SPIN, name="spin", limits=Limits(timeout_ms=5), pool=ONE)
        assert lm.inline_ticks == lm.deadline_ticks
        for _ in range(INLINE_AFTER):
            await rt.invoke(lm.key, b"warm")
        with pytest.raises(WasmTimeout):
            await rt.invoke(lm.key, spin(4_000_000_000))
        assert inline(rt, "expired") == 0  # its own timeout: not re-run
        assert counter(rt, "wasmatrix_runtime_invoke_errors_total", module=lm.key, code="timeout") == 1


async def test_modules_that_call_back_into_the_node_never_run_inline() -> None:
    with Runtime(RuntimeConfig(allow_unsigned=True)) as rt:
        lm = rt.load_unsigned(gated_module(), name="gated", capabilities=Capabilities.build(kv_namespaces=["n"]))
        assert not lm.inline_ok
        for _ in range(INLINE_AFTER + 5):
            assert (await rt.invoke(lm.key, b"x")).body == b"x"
        assert inline(rt, "ok") == 0


async def test_a_cancelled_caller_does_not_run_inline() -> None:
    with Runtime(RuntimeConfig(allow_unsigned=True)) as rt:
        lm = rt.load_unsigned(_SPIN, name="spin", pool=ONE)
        for _ in range(INLINE_AFTER):
            await rt.invoke(lm.key, b"warm")
        with trio.CancelScope() as scope:
            scope.cancel()
            await rt.invoke(lm.key, b"x")
        assert scope.cancelled_caught and inline(rt, "ok") == 0 and lm.inflight == 0


def test_streak_policy() -> None:
    fast, slow = INLINE_MAX_S / 2, INLINE_MAX_S * 3
    assert next_streak(0, fast) == 1 and next_streak(INLINE_STREAK_CAP, fast) == INLINE_STREAK_CAP
    # From the cap: two slow calls keep a hot module inline, the third sends it back to worker threads.
    s = INLINE_STREAK_CAP
    for expected_inline in (True, True, False):
        s = next_streak(s, slow)
        assert (s >= INLINE_AFTER) is expected_inline
    assert next_streak(1, slow) == 0 and next_streak(0, slow) == 0
    assert next_streak(-INLINE_PENALTY, slow) == -INLINE_PENALTY  # a slow call never shortens a penalty
    assert next_streak(-INLINE_PENALTY, fast) == -INLINE_PENALTY + 1
