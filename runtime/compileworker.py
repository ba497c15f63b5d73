"""Compile a module in a child process with an address-space cap and a timeout.

Cranelift's memory grows with the module (about 6 KB per function), and an
allocation failure inside wasmtime aborts the whole process. Compiling in a
child process means a module that needs more than ``memory_bytes`` kills only
the child: the node gets a ``ModuleTooLarge`` naming the bound and carries on.
The child returns the serialized artifact, which the parent loads with
``Module.deserialize`` into an engine with the same settings.

What this protects: compile memory and compile time. What it does not: the
memory the *instance* uses at run time (that is the store's limits), and the
parent's memory for the serialized artifact (bounded by the module size bounds).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from runtime.engine import EngineSettings
from runtime.errors import HostResourceError, ModuleTooLarge, ValidationError

# The child imports only wasmtime (never this project), so it works whatever
# the parent's sys.path is. It must build the engine exactly as EngineHandle
# does, or the parent's deserialize refuses the artifact.
_CHILD = r"""
import resource, sys
limit = int(sys.argv[1])
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
if hard != resource.RLIM_INFINITY:
    limit = min(limit, hard)
resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
try:
    from wasmtime import Config, Engine, Module, WasmtimeError
    cfg = Config()
    cfg.epoch_interruption = True
    cfg.consume_fuel = sys.argv[2] == "1"
    cfg.cranelift_opt_level = sys.argv[3]
    wasm = sys.stdin.buffer.read()
    try:
        module = Module(Engine(cfg), wasm)
    except WasmtimeError as exc:
        sys.stderr.write("invalid: " + (str(exc).strip().splitlines() or ["?"])[0])
        sys.exit(3)
    sys.stdout.buffer.write(bytes(module.serialize()))
except MemoryError:
    sys.stderr.write("out of memory")
    sys.exit(4)
"""

# Python, wasmtime's shared library and its engine need this much address space
# before compiling anything; a cap below it fails every compile.
MIN_COMPILE_MEMORY_BYTES = 64 << 20


def compile_serialized(settings: EngineSettings, wasm: bytes, memory_bytes: int, timeout_s: float) -> bytes:
    """Compile ``wasm`` in a child process under ``memory_bytes`` of address space; return the serialized module."""
    argv = [sys.executable, "-I", "-c", _CHILD, str(max(memory_bytes, MIN_COMPILE_MEMORY_BYTES)),
            "1" if settings.consume_fuel else "0", settings.opt_level]
    try:
        proc = subprocess.run(argv, input=wasm, capture_output=True, timeout=timeout_s,
                              env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    except subprocess.TimeoutExpired:
        raise ModuleTooLarge(
            f"module took longer than the admission bound compile_timeout_s={timeout_s:g} to compile",
            "compile_timeout_s", int(timeout_s), int(timeout_s)) from None
    except OSError as exc:
        raise HostResourceError(f"cannot start the compile worker: {exc.strerror}") from None
    err = proc.stderr.decode("utf-8", "replace").strip()
    if proc.returncode == 0:
        return proc.stdout
    if proc.returncode == 3:
        raise ValidationError(f"module failed to compile: {err.removeprefix('invalid: ')}")
    out_of_memory = (
        proc.returncode == 4
        or proc.returncode == -signal.SIGABRT and "memory allocation" in err
        or "Cannot allocate memory" in err
    )
    if out_of_memory:
        mib = memory_bytes >> 20
        raise ModuleTooLarge(
            f"module needs more than the admission bound compile_memory_bytes={mib} MiB to compile",
            "compile_memory_bytes", memory_bytes, memory_bytes)
    # Anything else (a SIGKILL from the kernel's OOM killer, a crash) is the host's trouble, not the module's.
    last = err.splitlines()[-1] if err else f"exit status {proc.returncode}"
    raise HostResourceError(f"the compile worker failed: {last[:200]}")
