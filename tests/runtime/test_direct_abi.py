"""The direct ABI's call contract: version 2 is one call into wasm per invocation, version 1 keeps working.

The counting modules (tests/runtime/direct_modules.py) add one to an exported
global on every call the host makes into them, so the tests count calls into
wasm without wrapping the runtime. Every test runs on both call paths: the
C-API fast path and wasmtime-py's public API (``RuntimeConfig(fast_calls=False)``).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from runtime import GuestError, PoolConfig, Runtime, RuntimeConfig, WasmLimitExceeded, WasmTrap
from runtime.abi import INITIAL_INPUT_CAPACITY
from runtime.fastcall import FAST
from tests.runtime.conftest import counter
from tests.runtime.direct_modules import counting_module

ONE = PoolConfig(min_instances=1, max_instances=1)


@pytest.fixture(params=["fast", "public"])
def drt(request: pytest.FixtureRequest) -> Iterator[Runtime]:
    if request.param == "fast" and not FAST:
        pytest.skip("this wasmtime-py lacks the C-API internals the fast path uses; the public path still runs")
    runtime = Runtime(RuntimeConfig(allow_unsigned=True, fast_calls=request.param == "fast"))
    yield runtime
    runtime.close()


def flip(data: bytes) -> bytes:
    """What the counting handler answers: every byte XOR 0x20."""
    return bytes(b ^ 0x20 for b in data)


def guest_calls(rt: Runtime, key: str) -> int:
    """The ``calls`` global of the pool's only idle instance (read from the host: not a call into wasm)."""
    inst = rt.pools.acquire(key)
    try:
        return int(inst.instance.exports(inst.store)["calls"].value(inst.store))
    finally:
        rt.pools.release(key, inst, reusable=True)


def test_version2_is_one_call_per_invocation(drt: Runtime) -> None:
    lm = drt.load_unsigned(counting_module(2), name="v2", pool=ONE)
    # Instance creation: wmx_abi_version() once, alloc(16 KiB input buffer) once.
    assert guest_calls(drt, lm.key) == 2
    for i in range(50):
        assert drt.call(lm.key, b"hello %d" % i) == flip(b"hello %d" % i)
    assert guest_calls(drt, lm.key) == 2 + 50  # handle only: no alloc, no dealloc on the hot path
    assert drt.pools.stats(lm.key).created == 1


def test_version1_modules_keep_their_four_calls(drt: Runtime) -> None:
    lm = drt.load_unsigned(counting_module(None), name="v1", pool=ONE)
    assert guest_calls(drt, lm.key) == 0
    assert drt.call(lm.key, b"abc") == b"ABC"
    assert guest_calls(drt, lm.key) == 4  # alloc, handle, dealloc(input), dealloc(output)
    assert drt.call(lm.key, b"") == b""
    assert guest_calls(drt, lm.key) == 4 + 3  # an empty output is not freed
    with pytest.raises(GuestError):
        drt.call(lm.key, b"!no")
    assert guest_calls(drt, lm.key) == 7 + 3  # alloc, handle, dealloc(input)


def test_outputs_correct_across_sizes_and_growth(drt: Runtime) -> None:
    lm = drt.load_unsigned(counting_module(2), name="v2", pool=ONE)
    rng = random.Random(12)
    sizes = [0, 1, 7, 4096, INITIAL_INPUT_CAPACITY, 3, INITIAL_INPUT_CAPACITY + 1, 100, 200_000, 5, 65_537, 0]
    sizes += [rng.randrange(0, 40_000) for _ in range(40)]
    for n in sizes:
        data = bytes(rng.randrange(0x40, 0x80) for _ in range(n))  # never a "!#%" control byte first
        assert drt.call(lm.key, data) == flip(data), f"wrong output for a {n}-byte request"
    # Growth happened twice (16 KiB -> 32 KiB for 16385 bytes, then 200,000 bytes): alloc + dealloc(old) each.
    assert guest_calls(drt, lm.key) == 2 + len(sizes) + 2 * 2
    assert drt.pools.stats(lm.key).created == 1


def test_request_larger_than_the_input_buffer(drt: Runtime) -> None:
    lm = drt.load_unsigned(counting_module(2), name="v2", pool=ONE)
    big = b"x" * (INITIAL_INPUT_CAPACITY * 3 + 5)
    assert drt.call(lm.key, big) == b"X" * len(big)
    assert guest_calls(drt, lm.key) == 2 + 1 + 2  # + handle, + alloc(bigger) and dealloc(old buffer)
    assert drt.call(lm.key, b"small") == b"SMALL"  # the bigger buffer stays: no more allocs
    assert drt.call(lm.key, big[:-1]) == b"X" * (len(big) - 1)
    assert guest_calls(drt, lm.key) == 5 + 2


def test_negative_result_is_guest_error_and_keeps_the_instance(drt: Runtime) -> None:
    lm = drt.load_unsigned(counting_module(2), name="v2", pool=ONE)
    assert drt.call(lm.key, b"a") == b"A"
    with pytest.raises(GuestError) as info:
        drt.call(lm.key, b"!boom")
    assert info.value.status == -5 and info.value.code == "guest_error"
    assert drt.call(lm.key, b"b") == b"B"
    stats = drt.pools.stats(lm.key)
    assert stats.created == 1 and stats.evicted == {}
    assert guest_calls(drt, lm.key) == 2 + 3


def test_trap_destroys_the_instance(drt: Runtime) -> None:
    lm = drt.load_unsigned(counting_module(2), name="v2", pool=ONE)
    assert drt.call(lm.key, b"a") == b"A"
    with pytest.raises(WasmTrap) as info:
        drt.call(lm.key, b"#")
    assert info.value.trap_code == "unreachable"
    assert drt.pools.stats(lm.key).evicted == {"discarded": 1}
    assert drt.call(lm.key, b"b") == b"B"  # on a fresh instance
    assert guest_calls(drt, lm.key) == 2 + 1
    assert drt.pools.stats(lm.key).created == 2
    assert counter(drt, "wasmatrix_runtime_pool_evictions_total", module=lm.key, reason="discarded") == 1


def test_output_over_the_limit_is_refused(drt: Runtime) -> None:
    lm = drt.load_unsigned(counting_module(2), name="v2", pool=ONE)
    with pytest.raises(WasmLimitExceeded) as info:
        drt.call(lm.key, b"%")
    assert info.value.kind == "output" and "2147483647 bytes" in str(info.value)
    assert drt.call(lm.key, b"ok") == b"OK"


def test_unknown_abi_version_is_refused_at_load(drt: Runtime) -> None:
    with pytest.raises(WasmTrap) as info:
        drt.load_unsigned(counting_module(3), name="v3", pool=ONE)
    assert info.value.trap_code == "abi_version" and "wmx_abi_version() = 3" in str(info.value)
    assert drt.modules() == []


def test_example_handler_speaks_version2(drt: Runtime, wasm: dict[str, bytes]) -> None:
    lm = drt.load_unsigned(wasm["handler"], name="handler", pool=ONE)
    inst = drt.pools.acquire(lm.key)
    assert inst.one_call and inst.in_cap == INITIAL_INPUT_CAPACITY
    drt.pools.release(lm.key, inst, reusable=True)
    # Its reused output buffer never shows an earlier, longer answer.
    assert drt.call(lm.key, b"a much longer request") == b"n=1:A MUCH LONGER REQUEST"
    assert drt.call(lm.key, b"ab") == b"n=2:AB"
    # "spin:N": N rounds of h = (h ^ i) * FNV prime from the FNV offset basis (examples/wasm/handler.c); a
    # shorter request after a longer one must not read the older request's digits left in the input buffer.
    h = 1469598103934665603
    for i in range(3):
        h = ((h ^ i) * 1099511628211) % (1 << 64)
    assert drt.call(lm.key, b"spin:30000").startswith(b"n=3:")
    assert drt.call(lm.key, b"spin:3") == b"n=4:%d" % h
