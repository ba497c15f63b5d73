"""Both ABIs, limits and error mapping, with the real example modules."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

import pytest

from runtime import (
    Capabilities,
    GuestError,
    InvalidSpecError,
    Limits,
    ModuleNotLoaded,
    PoolConfig,
    Request,
    Runtime,
    SpecError,
    WasmLimitExceeded,
    WasmTimeout,
    WasmTrap,
)
from runtime.limits import MIB
from tests.runtime.conftest import counter

# A bound on "it returned" (did not hang), never a performance figure: benchmarks live in bench/.
GENEROUS_S = 10.0


def test_wasi_command_wagi_style(rt: Runtime, wasm: dict[str, bytes]) -> None:
    lm = rt.load_unsigned(wasm["hello"], name="hello", capabilities=Capabilities.build(env={"GRANTED": "yes"}))
    result = rt.invoke_sync(lm.key, Request.build(b"request body", ["a", "b c"], {"REQUEST_METHOD": "POST"}))
    assert result.status == 0
    assert result.body == (
        b"hello from wasm\nargv: a b c\nenv: GRANTED=yes\nenv: REQUEST_METHOD=POST\nstdin: request body\n"
    )
    assert rt.run_command(lm.key, args=["--exit=42"]).status == 42
    assert counter(rt, "wasmatrix_runtime_invocations_total", module=lm.key, outcome="ok") == 2
    assert counter(rt, "wasmatrix_runtime_instantiations_total", module=lm.key) == 2  # fresh instance each time


def test_stdout_is_capped_not_fatal(rt: Runtime, wasm: dict[str, bytes]) -> None:
    lm = rt.load_unsigned(wasm["hello"], name="hello", capabilities=Capabilities.build(stdout_max_bytes=64))
    result = rt.run_command(lm.key, stdin=b"x" * 10_000)
    assert result.status == 0 and result.truncated
    assert len(result.body) == 64 and result.body.startswith(b"hello from wasm")


def test_direct_abi_reuses_pooled_instance(rt: Runtime, wasm: dict[str, bytes]) -> None:
    lm = rt.load_unsigned(wasm["handler"], name="handler")
    assert rt.call(lm.key, b"abc") == b"n=1:ABC"
    assert rt.call(lm.key, b"") == b"n=2:"
    assert rt.call(lm.key, bytes(range(256)) * 64)[:4] == b"n=3:"
    stats = rt.pools.stats(lm.key)
    assert stats.created == 1 and stats.reused == 3


def _in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    """Run ``fn`` on a daemon thread (a guest that never stops must not keep the test process alive)."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # handed to the test, which asserts on its type
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, errors


def test_loop_is_interrupted_by_its_timeout(rt: Runtime, wasm: dict[str, bytes]) -> None:
    lm = rt.load_unsigned(wasm["loop"], name="loop", limits=Limits(timeout_ms=150))
    thread, errors = _in_thread(lambda: rt.run_command(lm.key))
    thread.join(GENEROUS_S)  # the loop never ends on its own: only the epoch deadline can end it
    assert not thread.is_alive(), f"an endless guest with a 150 ms timeout still ran after {GENEROUS_S} s"
    assert len(errors) == 1 and isinstance(errors[0], WasmTimeout)
    assert "exceeded its 150 ms timeout" in str(errors[0])
    assert errors[0].http_status == 504 and errors[0].code == "timeout"
    assert counter(rt, "wasmatrix_runtime_invoke_errors_total", module=lm.key, code="timeout") == 1
    assert counter(rt, "wasmatrix_runtime_invocations_total", module=lm.key, outcome="error") == 1


def test_epoch_deadline_fires_exactly_at_its_tick(rt: Runtime, wasm: dict[str, bytes]) -> None:
    """The timeout is an epoch deadline: with the ticker stopped, only epoch increments end the guest."""
    lm = rt.load_unsigned(wasm["loop"], name="loop", limits=Limits(timeout_ms=150))
    # docs/RUNTIME.md: deadline = ceil(timeout / tick) + 1 ticks, 5 ms tick.
    assert lm.deadline_ticks == math.ceil(150 / 5) + 1 == 31
    lm.engine.ticker.stop()  # from here on the epoch moves only when the test says so
    thread, errors = _in_thread(lambda: rt.run_command(lm.key))
    # The store's deadline is set before the instance is created, so once it is counted the
    # deadline is fixed relative to the epoch we are about to advance.
    deadline = time.monotonic() + GENEROUS_S
    while counter(rt, "wasmatrix_runtime_instantiations_total", module=lm.key) < 1:
        assert time.monotonic() < deadline, "the guest was never instantiated"
        time.sleep(0.001)
    for _ in range(lm.deadline_ticks - 1):
        lm.engine.engine.increment_epoch()
    thread.join(0.3)
    # One-sided: a slow machine only makes the guest look more alive, so this cannot fail spuriously.
    assert thread.is_alive() and errors == [], "interrupted before its deadline tick"
    lm.engine.engine.increment_epoch()
    thread.join(GENEROUS_S)
    assert not thread.is_alive(), "the deadline tick passed but the guest kept running"
    assert len(errors) == 1 and isinstance(errors[0], WasmTimeout)


def test_direct_handler_timeout_discards_instance(rt: Runtime, wasm: dict[str, bytes]) -> None:
    lm = rt.load_unsigned(wasm["handler"], name="handler", limits=Limits(timeout_ms=100))
    assert rt.call(lm.key, b"a") == b"n=1:A"
    with pytest.raises(WasmTimeout):
        rt.call(lm.key, b"loop")
    assert rt.call(lm.key, b"b") == b"n=1:B"  # a fresh instance: the interrupted one was thrown away
    assert rt.pools.stats(lm.key).evicted == {"discarded": 1}


def test_membomb_fails_at_memory_cap(rt: Runtime, wasm: dict[str, bytes]) -> None:
    lm = rt.load_unsigned(wasm["membomb"], name="membomb", limits=Limits(memory_bytes=8 * MIB))
    with pytest.raises(WasmLimitExceeded) as info:
        rt.run_command(lm.key)
    assert info.value.kind == "memory"
    assert "8 MiB" in str(info.value) and "allocation failed" in str(info.value)
    # The host is unharmed: other modules keep running.
    hello = rt.load_unsigned(wasm["hello"], name="hello")
    assert rt.run_command(hello.key).status == 0


def test_memory_limit_in_pages_below_module_minimum(rt: Runtime, wasm: dict[str, bytes]) -> None:
    lm = rt.load_unsigned(wasm["hello"], name="hello", limits=Limits.from_pages(1))
    with pytest.raises(WasmLimitExceeded) as info:
        rt.run_command(lm.key)
    assert info.value.kind == "memory"


def test_fuel_is_deterministic(rt: Runtime, wasm: dict[str, bytes]) -> None:
    loop = rt.load_unsigned(wasm["loop"], name="loop", limits=Limits(fuel=200_000))
    with pytest.raises(WasmLimitExceeded) as info:
        rt.run_command(loop.key)
    assert info.value.kind == "fuel"
    hello = rt.load_unsigned(wasm["hello"], name="hello", limits=Limits(fuel=10_000_000))
    first = rt.run_command(hello.key, stdin=b"same").fuel_consumed
    second = rt.run_command(hello.key, stdin=b"same").fuel_consumed
    assert first is not None and first > 0 and first == second


def test_trap_carries_message_and_guest_error_keeps_instance(rt: Runtime, wasm: dict[str, bytes]) -> None:
    lm = rt.load_unsigned(wasm["handler"], name="handler")
    with pytest.raises(WasmTrap, match="unreachable") as info:
        rt.call(lm.key, b"trap")
    assert info.value.trap_code == "unreachable" and info.value.http_status == 500
    assert rt.call(lm.key, b"x") == b"n=1:X"
    with pytest.raises(GuestError) as gerr:
        rt.call(lm.key, b"fail")
    assert gerr.value.status == -7
    assert rt.call(lm.key, b"y") == b"n=3:Y"  # a clean guest error does not cost the instance


def test_unknown_module_and_bad_limits() -> None:
    with Runtime() as rt:
        with pytest.raises(ModuleNotLoaded):
            rt.call("nope@1.0.0", b"")
    # Limits are part of the manifest: the shared model's SpecError.
    with pytest.raises(SpecError, match="outside 64 KiB..512 MiB"):
        Limits(memory_bytes=1024 * MIB)
    with pytest.raises(SpecError, match="timeout_ms"):
        Limits(timeout_ms=0)
    with pytest.raises(InvalidSpecError):
        PoolConfig(min_instances=3, max_instances=2)
