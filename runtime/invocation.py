"""Requests into and results out of a guest, the same for both ABIs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class Request:
    """One invocation: ``body`` is stdin (WASI command) or the handler input (direct ABI).

    ``args`` and ``env`` reach WASI commands only (WAGI passes request
    metadata as environment variables); request env is added after the
    module's granted env and wins on a name clash.
    """

    body: bytes = b""
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()

    @classmethod
    def build(cls, body: bytes = b"", args: Sequence[str] = (), env: Mapping[str, str] | None = None) -> Request:
        """Convenience constructor taking a list and a mapping."""
        return cls(body=bytes(body), args=tuple(args), env=tuple((env or {}).items()))


@dataclass(slots=True, frozen=True)
class InvocationResult:
    """What a guest produced. ``status`` is the WASI exit code (0 for the direct ABI)."""

    status: int
    body: bytes
    stderr: bytes = b""
    truncated: bool = False
    duration_s: float = 0.0
    fuel_consumed: int | None = None
