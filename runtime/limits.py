"""Resource limits per module and hot-pool sizing, with their defaults and why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runtime.errors import InvalidSpecError

WASM_PAGE_BYTES = 65536
MIB = 1 << 20

# Seed 004 FR-WASM-006: 128 MB default memory, configurable 1-512 MB;
# 30 s default execution time, configurable up to 300 s.
DEFAULT_MEMORY_BYTES = 128 * MIB
MAX_MEMORY_BYTES = 512 * MIB
DEFAULT_TIMEOUT_MS = 30_000
MAX_TIMEOUT_MS = 300_000
# Tables hold function references; C and Rust modules need a few hundred.
DEFAULT_TABLE_ELEMENTS = 10_000
# Seed 003 R14: 100 concurrent executions per tenant; a module is one tenant here.
DEFAULT_MAX_CONCURRENCY = 100


@dataclass(slots=True, frozen=True)
class Limits:
    """What one module may consume: memory, tables, concurrent instances, time, fuel."""

    memory_bytes: int = DEFAULT_MEMORY_BYTES
    table_elements: int = DEFAULT_TABLE_ELEMENTS
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    fuel: int | None = None

    def __post_init__(self) -> None:
        if not WASM_PAGE_BYTES <= self.memory_bytes <= MAX_MEMORY_BYTES:
            raise InvalidSpecError(
                f"memory limit {self.memory_bytes} bytes is outside 64 KiB..{MAX_MEMORY_BYTES // MIB} MiB"
            )
        if self.table_elements < 0:
            raise InvalidSpecError(f"table_elements must be >= 0, got {self.table_elements}")
        if self.max_concurrency < 1:
            raise InvalidSpecError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if not 1 <= self.timeout_ms <= MAX_TIMEOUT_MS:
            raise InvalidSpecError(f"timeout_ms must be within 1..{MAX_TIMEOUT_MS}, got {self.timeout_ms}")
        if self.fuel is not None and self.fuel < 1:
            raise InvalidSpecError(f"fuel must be a positive integer or None, got {self.fuel}")

    @classmethod
    def from_pages(cls, pages: int, **kwargs: Any) -> Limits:
        """Build limits with linear memory expressed in 64 KiB wasm pages."""
        if pages < 1:
            raise InvalidSpecError(f"memory pages must be >= 1, got {pages}")
        return cls(memory_bytes=pages * WASM_PAGE_BYTES, **kwargs)

    @property
    def memory_pages(self) -> int:
        """The memory limit in 64 KiB wasm pages."""
        return self.memory_bytes // WASM_PAGE_BYTES

    def clamp(self, ceiling: Limits) -> Limits:
        """Return these limits lowered to ``ceiling`` wherever they exceed it."""
        fuel = self.fuel
        if ceiling.fuel is not None:
            fuel = ceiling.fuel if fuel is None else min(fuel, ceiling.fuel)
        return Limits(
            memory_bytes=min(self.memory_bytes, ceiling.memory_bytes),
            table_elements=min(self.table_elements, ceiling.table_elements),
            max_concurrency=min(self.max_concurrency, ceiling.max_concurrency),
            timeout_ms=min(self.timeout_ms, ceiling.timeout_ms),
            fuel=fuel,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form used in manifests."""
        return {
            "memory_bytes": self.memory_bytes,
            "table_elements": self.table_elements,
            "max_concurrency": self.max_concurrency,
            "timeout_ms": self.timeout_ms,
            "fuel": self.fuel,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Limits:
        """Parse the plain-data form, rejecting unknown keys and wrong types."""
        if not isinstance(data, dict):
            raise InvalidSpecError("limits must be a map")
        unknown = set(data) - {"memory_bytes", "table_elements", "max_concurrency", "timeout_ms", "fuel"}
        if unknown:
            raise InvalidSpecError(f"unknown limit fields: {sorted(unknown)}")
        for key, value in data.items():
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise InvalidSpecError(f"limit {key} must be an integer")
            if value is None and key != "fuel":
                raise InvalidSpecError(f"limit {key} must be an integer")
        return cls(**data)


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
