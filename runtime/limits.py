"""Hot-pool sizing, and the per-module resource limits (defined in ``model.manifest``) with their defaults."""

from __future__ import annotations

from dataclasses import dataclass
from runtime.errors import InvalidSpecError

# The module limits are part of the manifest, so they live in the shared model; re-exported here
# because the runtime enforces them.
from model.manifest import (  # noqa: E402
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MEMORY_BYTES,
    DEFAULT_TABLE_ELEMENTS,
    DEFAULT_TIMEOUT_MS,
    MAX_MEMORY_BYTES,
    MAX_TIMEOUT_MS,
    MIB,
    WASM_PAGE_BYTES,
    Limits,
)

__all__ = [
    "DEFAULT_MAX_CONCURRENCY", "DEFAULT_MEMORY_BYTES", "DEFAULT_TABLE_ELEMENTS", "DEFAULT_TIMEOUT_MS",
    "MAX_MEMORY_BYTES", "MAX_TIMEOUT_MS", "MIB", "WASM_PAGE_BYTES", "Limits", "ModuleBounds", "PoolConfig",
]


# Admission bounds on a module's shape, checked by a cheap section scan before
# anything is compiled. Compile time and memory grow with the function count
# (measured with wasmtime 50: 20,000 trivial functions take 0.7 s and 130 MB to
# compile, 100,000 take 2.5-3.5 s and 550-620 MB). Service modules built from
# Rust, C or Go have 1,000-10,000 functions; a node that must admit bigger ones
# raises the bound in its RuntimeConfig.
DEFAULT_MAX_FUNCTIONS = 20_000
DEFAULT_MAX_IMPORTS = 1_000
DEFAULT_MAX_EXPORTS = 10_000
DEFAULT_MAX_TYPES = 10_000
DEFAULT_MAX_GLOBALS = 10_000
DEFAULT_MAX_TABLES = 16
DEFAULT_MAX_MEMORIES = 1  # the ABIs use one linear memory; multi-memory modules are not admitted
DEFAULT_MAX_DATA_SEGMENTS = 10_000
DEFAULT_MAX_DATA_BYTES = 32 * MIB  # initialised data is copied into every instance
DEFAULT_MAX_ELEMENT_SEGMENTS = 10_000
# One huge function costs the compiler far more than many small ones (register
# allocation is superlinear); 1 MiB of body is a large generated interpreter loop.
DEFAULT_MAX_FUNCTION_BODY_BYTES = 1 * MIB
# The compile worker process (RuntimeConfig.compile_isolation = "process") gets
# this much address space and time; 100,000 functions need about 620 MB.
DEFAULT_COMPILE_MEMORY_BYTES = 2048 * MIB
DEFAULT_COMPILE_TIMEOUT_S = 60.0


@dataclass(slots=True, frozen=True)
class ModuleBounds:
    """What admission accepts in one module's shape (see docs/RUNTIME.md "Admission bounds")."""

    max_functions: int = DEFAULT_MAX_FUNCTIONS
    max_imports: int = DEFAULT_MAX_IMPORTS
    max_exports: int = DEFAULT_MAX_EXPORTS
    max_types: int = DEFAULT_MAX_TYPES
    max_globals: int = DEFAULT_MAX_GLOBALS
    max_tables: int = DEFAULT_MAX_TABLES
    max_memories: int = DEFAULT_MAX_MEMORIES
    max_data_segments: int = DEFAULT_MAX_DATA_SEGMENTS
    max_data_bytes: int = DEFAULT_MAX_DATA_BYTES
    max_element_segments: int = DEFAULT_MAX_ELEMENT_SEGMENTS
    max_function_body_bytes: int = DEFAULT_MAX_FUNCTION_BODY_BYTES

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidSpecError(f"module bound {name} must be an integer >= 0, got {value!r}")


@dataclass(slots=True, frozen=True)
class PoolConfig:
    """Hot-pool sizing of one module version (seed 003 R4 defaults)."""

    min_instances: int = 1
    max_instances: int = 8
    idle_timeout_s: float = 300.0
    # Reuse is only safe where the ABI allows it; the runtime turns it off for WASI commands.
    reuse: bool = True

    def __post_init__(self) -> None:
        if self.min_instances < 0:
            raise InvalidSpecError(f"min_instances must be >= 0, got {self.min_instances}")
        if self.max_instances < max(1, self.min_instances):
            raise InvalidSpecError(
                f"max_instances ({self.max_instances}) must be >= 1 and >= min_instances ({self.min_instances})"
            )
        if self.idle_timeout_s <= 0:
            raise InvalidSpecError(f"idle_timeout_s must be > 0, got {self.idle_timeout_s}")
