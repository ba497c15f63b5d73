"""Prometheus metrics of the runtime, registered on an injectable registry.

Each ``Runtime`` gets a fresh ``CollectorRegistry`` unless the node passes its
own, so tests can build many runtimes without duplicate-registration errors.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from runtime.pool import PoolStats

# Invocation latency buckets: the targets are 0.5 ms p50 / 2 ms p99 (seed 004),
# timeouts reach 300 s.
_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0,
)


class RuntimeMetrics:
    """Every counter, gauge and histogram the runtime exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.invocations = Counter(
            "wasmatrix_runtime_invocations_total", "Guest invocations by outcome",
            ["module", "outcome"], registry=r,
        )
        self.invoke_errors = Counter(
            "wasmatrix_runtime_invoke_errors_total", "Failed guest invocations by error code",
            ["module", "code"], registry=r,
        )
        self.invoke_seconds = Histogram(
            "wasmatrix_runtime_invoke_seconds", "Wall time of a guest invocation",
            ["module"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.inline_calls = Counter(
            "wasmatrix_runtime_inline_calls_total", "Direct-ABI calls run on the event loop's thread (proven-fast "
            "modules), by outcome: ok, or expired (hit the inline bound and re-ran on a worker thread)",
            ["outcome"], registry=r,
        )
        for o in ("ok", "expired"):
            self.inline_calls.labels(outcome=o)
        self.instantiations = Counter(
            "wasmatrix_runtime_instantiations_total", "Instances created from pre-linked modules",
            ["module"], registry=r,
        )
        self.capability_denials = Counter(
            "wasmatrix_runtime_capability_denials_total", "Capability uses refused by the sandbox",
            ["module", "capability"], registry=r,
        )
        self.admission_rejections = Counter(
            "wasmatrix_runtime_admission_rejections_total", "Modules refused at admission",
            ["reason"], registry=r,
        )
        self.cache_hits = Counter(
            "wasmatrix_runtime_cache_hits_total", "Compiled-module cache hits by tier",
            ["tier"], registry=r,
        )
        self.cache_misses = Counter(
            "wasmatrix_runtime_cache_misses_total", "Compiled-module cache misses", registry=r,
        )
        self.compiles = Counter(
            "wasmatrix_runtime_compiles_total", "Modules compiled by Cranelift", registry=r,
        )
        self.compile_seconds = Histogram(
            "wasmatrix_runtime_compile_seconds", "Time to compile one module", registry=r,
        )
        self.cache_corrupt = Counter(
            "wasmatrix_runtime_cache_corrupt_total", "Compiled cache entries rejected as corrupt", registry=r,
        )
        self.cache_evictions = Counter(
            "wasmatrix_runtime_cache_evictions_total", "Compiled cache entries evicted by tier",
            ["tier"], registry=r,
        )
        self.cache_bytes = Gauge(
            "wasmatrix_runtime_cache_bytes", "Bytes held by the on-disk compiled cache", registry=r,
        )
        self.pool_evictions = Counter(
            "wasmatrix_runtime_pool_evictions_total", "Hot instances destroyed, by module and reason",
            ["module", "reason"], registry=r,
        )
        # pool_instances, pool_memory_bytes, pool_hits_total, pool_misses_total: read from the pools at
        # scrape time (attach_pools), so the call path pays nothing for them and they are never stale.
        self.concurrency_rejections = Counter(
            "wasmatrix_runtime_concurrency_rejections_total", "Calls refused at the concurrency cap",
            ["module"], registry=r,
        )
        self.artifact_bytes_written = Counter(
            "wasmatrix_runtime_artifact_written_bytes_total", "Bytes of verified blobs stored", registry=r,
        )

    def attach_pools(self, stats: Callable[[], Mapping[Hashable, PoolStats]], memory: Callable[[], int]) -> None:
        """Export the hot pools' live state, read at every scrape from ``stats()`` and ``memory()``."""
        self.registry.register(_PoolCollector(stats, memory))

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Read one sample (0.0 when absent); a convenience for tests and the CLI."""
        got = self.registry.get_sample_value(name, labels or {})
        return 0.0 if got is None else got


class _PoolCollector(Collector):
    """The hot pools as metric families, built from a snapshot at scrape time."""

    def __init__(self, stats: Callable[[], Mapping[Hashable, PoolStats]], memory: Callable[[], int]) -> None:
        self._stats = stats
        self._memory = memory

    def describe(self) -> Iterator[Metric]:
        return iter(self._families({}, 0))

    def collect(self) -> Iterator[Metric]:
        return iter(self._families(self._stats(), self._memory()))

    @staticmethod
    def _families(stats: Mapping[Hashable, PoolStats], memory: int) -> list[Metric]:
        instances = GaugeMetricFamily(
            "wasmatrix_runtime_pool_instances",
            "Hot instances by module and state (idle = the hot-pool size, in_use = serving a call)",
            labels=["module", "state"])
        hits = CounterMetricFamily(
            "wasmatrix_runtime_pool_hits",
            "Direct-ABI calls served by an idle pooled instance (warm), by module", labels=["module"])
        misses = CounterMetricFamily(
            "wasmatrix_runtime_pool_misses",
            "Direct-ABI calls that found no idle instance and created one (cold start), by module",
            labels=["module"])
        for key in sorted(stats, key=str):
            s = stats[key]
            module = str(key)
            instances.add_metric([module, "idle"], s.idle)
            instances.add_metric([module, "in_use"], s.in_use)
            hits.add_metric([module], s.reused)
            misses.add_metric([module], s.missed)
        mem = GaugeMetricFamily("wasmatrix_runtime_pool_memory_bytes",
                                "Linear memory held by idle pooled instances", value=memory)
        return [instances, hits, misses, mem]
