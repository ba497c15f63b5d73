"""The runtime under hostile modules: admission bounds, the compile worker, and naming what went wrong."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from wasmtime import wat2wasm

from runtime import (
    HostResourceError,
    ModuleBounds,
    ModuleTooLarge,
    Runtime,
    RuntimeConfig,
    ValidationError,
    WasmTrap,
    example_path,
)
from runtime.limits import DEFAULT_MAX_FUNCTIONS
from tests.runtime.conftest import counter
from tests.runtime.wasm_builders import many_functions

ROOT = Path(__file__).resolve().parents[2]


def test_100k_functions_refused_before_compiling(rt: Runtime) -> None:
    with pytest.raises(ModuleTooLarge) as info:
        rt.load_unsigned(many_functions(100_000))
    err = info.value
    assert (err.bound, err.value, err.limit) == ("max_functions", 100_000, DEFAULT_MAX_FUNCTIONS)
    assert "100000 functions" in str(err) and f"max_functions={DEFAULT_MAX_FUNCTIONS}" in str(err)
    assert counter(rt, "wasmatrix_runtime_compiles_total") == 0
    assert counter(rt, "wasmatrix_runtime_admission_rejections_total", reason="module_too_large") == 1


@pytest.mark.parametrize(
    ("wat", "bounds", "bound", "value"),
    [
        ('(module (import "a" "b" (func)) (import "a" "c" (func)) (import "a" "d" (func)))',
         ModuleBounds(max_imports=2), "max_imports", 3),
        ('(module (func $f) (export "a" (func $f)) (export "b" (func $f)) (export "c" (func $f)))',
         ModuleBounds(max_exports=2), "max_exports", 3),
        ("(module (memory 1) (memory 1))", ModuleBounds(), "max_memories", 2),
        ('(module (memory 1) (data (i32.const 0) "' + "x" * 2000 + '"))',
         ModuleBounds(max_data_bytes=1000), "max_data_bytes", None),
        ("(module (func " + "(drop (i32.const 1)) " * 100 + "))",
         ModuleBounds(max_function_body_bytes=100), "max_function_body_bytes", None),
    ],
)
def test_each_bound_names_itself(wat: str, bounds: ModuleBounds, bound: str, value: int | None) -> None:
    with Runtime(RuntimeConfig(allow_unsigned=True, module_bounds=bounds, compile_isolation="inline")) as rt:
        with pytest.raises(ModuleTooLarge) as info:
            rt.load_unsigned(wat2wasm(wat))
    assert info.value.bound == bound
    assert info.value.value > info.value.limit
    if value is not None:
        assert info.value.value == value
    assert f"{bound}=" in str(info.value)


def test_malformed_sections_still_get_the_validators_message(rt: Runtime) -> None:
    # The bounds scan must not pre-empt wasmtime's wording on a broken module.
    with pytest.raises(ValidationError, match="invalid WebAssembly module") as info:
        rt.load_unsigned(b"\0asm\x01\0\0\0\x01\xff")
    assert not isinstance(info.value, ModuleTooLarge)


@pytest.mark.slow  # ~3-4 s: an allocator starved of address space fails slowly
def test_compile_memory_bound_kills_the_worker_not_the_node() -> None:
    bounds = ModuleBounds(max_functions=200_000)
    cfg = RuntimeConfig(allow_unsigned=True, module_bounds=bounds, compile_memory_bytes=80 << 20)
    with Runtime(cfg) as rt:
        with pytest.raises(ModuleTooLarge) as info:
            rt.load_unsigned(many_functions(20_000), name="big")
        assert info.value.bound == "compile_memory_bytes"
        assert "compile_memory_bytes=80 MiB" in str(info.value)
        # The node is intact: the next module compiles (in a fresh worker) and runs.
        lm = rt.load_unsigned(example_path("hello").read_bytes(), name="hello")
        assert rt.run_command(lm.key).body.startswith(b"hello from wasm")


def test_compile_timeout_is_a_named_bound() -> None:
    cfg = RuntimeConfig(allow_unsigned=True, compile_timeout_s=0.001)
    with Runtime(cfg) as rt:
        with pytest.raises(ModuleTooLarge) as info:
            rt.load_unsigned(example_path("hello").read_bytes())
    assert info.value.bound == "compile_timeout_s"


def test_c_stack_overflow_is_named_stack_exhausted(rt: Runtime) -> None:
    # examples/wasm/recurse.c: unbounded recursion; clang puts the C stack in linear memory,
    # so wasmtime itself only sees an out-of-bounds store.
    lm = rt.load_unsigned(example_path("recurse").read_bytes(), name="recurse")
    with pytest.raises(WasmTrap) as info:
        rt.run_command(lm.key)
    assert info.value.trap_code == "stack_exhausted"
    assert "stack exhausted" in str(info.value)
    assert "out of bounds memory access" not in str(info.value)


def test_wasm_call_stack_overflow_is_named_stack_exhausted(rt: Runtime) -> None:
    wasm = wat2wasm('(module (func $f call $f) (func (export "_start") call $f))')
    lm = rt.load_unsigned(wasm, name="wasmrec")
    with pytest.raises(WasmTrap) as info:
        rt.run_command(lm.key)
    assert info.value.trap_code == "stack_exhausted"
    assert "stack exhausted" in str(info.value)


def test_plain_out_of_bounds_is_still_an_out_of_bounds_trap(rt: Runtime) -> None:
    wasm = wat2wasm('(module (memory 1) (func (export "_start") (drop (i32.load (i32.const 70000)))))')
    lm = rt.load_unsigned(wasm, name="oob")
    with pytest.raises(WasmTrap) as info:
        rt.run_command(lm.key)
    assert info.value.trap_code == "memory_out_of_bounds"


# Under this much address space Python and the compile worker start, but wasmtime
# cannot reserve a linear memory (it reserves several GiB of guard regions per memory).
HOST_AS_LIMIT = 3_000_000_000


def test_host_enomem_is_a_host_error_not_a_trap() -> None:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (HOST_AS_LIMIT, HOST_AS_LIMIT))

    code = (
        "from runtime import Runtime, RuntimeConfig, HostResourceError, WasmTrap, example_bytes\n"
        "rt = Runtime(RuntimeConfig(allow_unsigned=True))\n"
        "lm = rt.load_unsigned(example_bytes('hello'), name='hello')\n"
        "try:\n"
        "    rt.run_command(lm.key)\n"
        "except HostResourceError as exc:\n"
        "    print('host', exc.code, exc)\n"
        "except WasmTrap as exc:\n"
        "    print('trap', exc)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env,
                          cwd=ROOT, preexec_fn=limit)
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]  # earlier lines are the runtime's structured log
    assert last.startswith(f"host {HostResourceError.code} "), proc.stdout
    assert "not a guest trap" in last
