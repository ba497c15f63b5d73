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
    "MAX_MEMORY_BYTES", "MAX_TIMEOUT_MS", "MIB", "WASM_PAGE_BYTES", "Limits", "PoolConfig",
]


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
