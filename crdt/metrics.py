"""Cheap per-node counters (plain ints) and a prometheus collector that exports many of them.

Simulations create thousands of nodes, so a node holds no prometheus objects: it owns a
:class:`Counters` and whoever exposes ``/metrics`` registers one :class:`CrdtCollector`
(in an injected ``CollectorRegistry``) over the counters of its node(s).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


@dataclass(slots=True)
class Counters:
    """Monotonic counters of one node's crdt layer (exported with ``wasmatrix_crdt_`` prefix)."""

    updates_applied: int = 0
    updates_redundant: int = 0
    updates_malformed: int = 0
    local_writes: int = 0
    records_valid: int = 0
    records_invalid: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    eager_pushes: int = 0
    eager_dropped_backpressure: int = 0
    eager_retries: int = 0
    relays: int = 0
    anti_entropy_rounds: int = 0
    anti_entropy_in_sync: int = 0
    chunks_sent: int = 0
    chunks_received: int = 0
    reassembly_dropped: int = 0
    store_appends: int = 0
    store_compactions: int = 0
    store_corrupt_rows: int = 0
    store_damaged: int = 0  # stores found damaged or lost at open (each one recovers from peers)
    store_rows_salvaged: int = 0  # intact rows copied out of a damaged store file
    store_recoveries: int = 0  # damaged stores that caught up with peers (local writes allowed again)
    store_writes_refused_recovering: int = 0  # local writes refused while the store recovers
    blob_bytes_fetched: int = 0
    blob_hash_mismatch: int = 0
    blob_fetch_failed: int = 0
    blob_fetch_refused: int = 0  # a fetch without a size from the signed manifest, or above the cap
    # driver seam: stream lifecycle and persist effects
    sync_backpressure_events: int = 0
    sync_stream_failures: int = 0
    anti_entropy_retries: int = 0
    blob_stream_failovers: int = 0
    writes_acked_after_persist: int = 0
    sync_answers_held: int = 0
    sync_answers_dropped: int = 0
    sync_requests_throttled: int = 0  # sync requests answered in part or not at all: the peer's serve bucket was short
    invalid_by_reason: dict[str, int] = field(default_factory=dict)

    def invalid(self, reason: str) -> None:
        self.records_invalid += 1
        self.invalid_by_reason[reason] = self.invalid_by_reason.get(reason, 0) + 1

    def as_dict(self) -> dict[str, int]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "invalid_by_reason"}
        for r, n in sorted(self.invalid_by_reason.items()):
            out[f"records_invalid.{r}"] = n
        return out


class CrdtCollector(Collector):
    """Exports the counters of one or many nodes, labelled by node id."""

    def __init__(self, source: Callable[[], Iterable[tuple[str, Counters]]]) -> None:
        self._source = source

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        families: dict[str, CounterMetricFamily] = {}
        invalid = CounterMetricFamily(
            "wasmatrix_crdt_records_invalid_by_reason", "Invalid signed records by reason", labels=["node", "reason"]
        )
        for node, c in self._source():
            for f in fields(c):
                if f.name == "invalid_by_reason":
                    continue
                fam = families.get(f.name)
                if fam is None:
                    unit = "bytes" if f.name.startswith("bytes") or f.name.endswith("bytes_fetched") else ""
                    name = f"wasmatrix_crdt_{f.name}" + ("" if unit == "" or f.name.endswith("bytes") or "bytes_" in f.name else "_bytes")
                    fam = families[f.name] = CounterMetricFamily(name, f"crdt {f.name.replace('_', ' ')}", labels=["node"])
                fam.add_metric([node], getattr(c, f.name))
            for reason, n in sorted(c.invalid_by_reason.items()):
                invalid.add_metric([node, reason], n)
        yield from families.values()
        yield invalid
