"""Shared fixtures: runtimes with fresh metric registries, in-memory audit sinks and a fake clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime import MemoryAuditSink, Runtime, RuntimeConfig, example_bytes


class FakeClock:
    """A monotonic clock tests advance by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def audit() -> MemoryAuditSink:
    return MemoryAuditSink()


@pytest.fixture
def rt(clock: FakeClock, audit: MemoryAuditSink) -> Iterator[Runtime]:
    runtime = Runtime(RuntimeConfig(allow_unsigned=True), audit=audit, clock=clock)
    yield runtime
    runtime.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "node"


@pytest.fixture(scope="session")
def wasm() -> dict[str, bytes]:
    names = ("hello", "handler", "kvcounter", "loop", "membomb", "escape", "recurse", "wordcount")
    return {name: example_bytes(name) for name in names}


def counter(rt: Runtime, name: str, **labels: str) -> float:
    """Read a metric sample from the runtime's registry."""
    return rt.metrics.value(name, labels)
