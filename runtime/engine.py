"""Engines and their epoch tickers.

Every engine enables epoch interruption: a background thread bumps the epoch
every ``tick_ms`` and each store sets a deadline in ticks, so a runaway guest
traps with ``INTERRUPT`` within one tick of its timeout. Fuel metering costs
speed, so it lives in a separate engine that only fuel-limited modules use.
"""

from __future__ import annotations

import math
import platform
import threading
from dataclasses import dataclass
from importlib import metadata

from wasmtime import Config, Engine

DEFAULT_TICK_MS = 5


def wasmtime_version() -> str:
    """The installed wasmtime-py version (part of every compiled-cache key)."""
    try:
        return metadata.version("wasmtime")
    except metadata.PackageNotFoundError:  # pragma: no cover - vendored installs
        return "unknown"


@dataclass(slots=True, frozen=True)
class EngineSettings:
    """The engine options that change compiled code, hence the cache key."""

    consume_fuel: bool = False
    opt_level: str = "speed"

    @property
    def fingerprint(self) -> str:
        """A stable string of every setting that affects compiled artifacts."""
        return (
            f"wasmtime={wasmtime_version()};arch={platform.machine()};epoch=1;"
            f"fuel={int(self.consume_fuel)};opt={self.opt_level}"
        )


class EpochTicker:
    """One daemon thread per engine that advances its epoch on a fixed period."""

    def __init__(self, engine: Engine, tick_ms: int) -> None:
        self._engine = engine
        self.tick_s = tick_ms / 1000.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start ticking (idempotent)."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="wasmatrix-epoch", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            self._engine.increment_epoch()

    def stop(self) -> None:
        """Stop the thread and wait for it, so no tick races engine teardown."""
        self._stop.set()
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()


class EngineHandle:
    """A wasmtime Engine, its settings fingerprint and its epoch ticker."""

    def __init__(self, settings: EngineSettings, tick_ms: int = DEFAULT_TICK_MS) -> None:
        cfg = Config()
        cfg.epoch_interruption = True
        cfg.consume_fuel = settings.consume_fuel
        cfg.cranelift_opt_level = settings.opt_level
        self.settings = settings
        self.fingerprint = settings.fingerprint
        self.engine = Engine(cfg)
        self.tick_ms = tick_ms
        self.ticker = EpochTicker(self.engine, tick_ms)
        self.ticker.start()

    def deadline_ticks(self, timeout_ms: int) -> int:
        """Ticks to allow for ``timeout_ms``; +1 because the current tick is already partly spent."""
        return math.ceil(timeout_ms / self.tick_ms) + 1

    def close(self) -> None:
        """Stop the ticker."""
        self.ticker.stop()
