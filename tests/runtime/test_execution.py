"""Both ABIs, limits and error mapping, with the real example modules."""

from __future__ import annotations

import time

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


def test_loop_is_interrupted_near_its_timeout(rt: Runtime, wasm: dict[str, bytes]) -> None:
    lm = rt.load_unsigned(wasm["loop"], name="loop", limits=Limits(timeout_ms=150))
    started = time.monotonic()
    with pytest.raises(WasmTimeout, match="150 ms timeout") as info:
        rt.run_command(lm.key)
    elapsed = time.monotonic() - started
    assert info.value.http_status == 504
    assert elapsed >= 0.15  # the deadline never fires early
    assert elapsed < 5.0  # and it does fire: the loop never ends on its own
    assert counter(rt, "wasmatrix_runtime_invoke_errors_total", module=lm.key, code="timeout") == 1


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
