"""The event value and the publisher-facing refusal (:class:`Backpressure`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from model.errors import SpecError
from model.topics import META_KEY_RE, validate_topic

MAX_DATA = 60_000  # bytes of one event's data (one record / frame with room for its envelope)
MAX_META = 32  # entries
MAX_META_KEY = 64
MAX_META_VALUE = 256


class Backpressure(Exception):
    """The publish was refused (not queued): a matching subscription's queue is full or the storm
    policy shed it. Retry after ``retry_after_s`` seconds; ``reason`` says which."""

    def __init__(self, message: str, retry_after_s: float, reason: str = "queue_full", subscription: str = "") -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.reason = reason
        self.subscription = subscription


def validate_meta(meta: Any) -> dict[str, str]:
    """Event metadata: at most 32 ``key: value`` strings; ValueError naming the problem otherwise."""
    if meta is None:
        return {}
    if not isinstance(meta, dict) or len(meta) > MAX_META:
        raise ValueError(f"meta must be a map of at most {MAX_META} entries")
    out: dict[str, str] = {}
    for k in sorted(meta):
        v = meta[k]
        if not isinstance(k, str) or not META_KEY_RE.match(k):
            raise ValueError(f"meta key {k!r:.40} must be 1-{MAX_META_KEY} of [A-Za-z0-9_.:-]")
        if not isinstance(v, str) or len(v) > MAX_META_VALUE:
            raise ValueError(f"meta value of {k} must be a string of at most {MAX_META_VALUE} characters")
        out[k] = v
    return out


def check_event_input(topic: Any, data: Any, meta: Any) -> tuple[str, bytes, dict[str, str]]:
    """Validate what a publisher hands in (ValueError, never anything else, for bad input)."""
    try:
        t = validate_topic(topic)
    except SpecError as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError("event data must be bytes")
    if len(data) > MAX_DATA:
        raise ValueError(f"event data of {len(data)} bytes exceeds {MAX_DATA}")
    return t, bytes(data), validate_meta(meta)


@dataclass(slots=True, frozen=True)
class Event:
    """One published event. ``id`` is unique per publishing node (``<node-id-prefix>-<counter>``)."""

    id: str
    topic: str
    data: bytes
    meta: dict[str, str] = field(default_factory=dict)
    source: str = "api"
    time: float = 0.0  # wall clock at publish

    def to_row(self) -> dict[str, Any]:
        """The msgpack-able form the event store keeps."""
        return {"id": self.id, "topic": self.topic, "data": self.data, "meta": dict(self.meta), "source": self.source, "time": self.time}

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> "Event":
        return cls(str(r["id"]), str(r["topic"]), bytes(r["data"]), {str(k): str(v) for k, v in r["meta"].items()},
                   str(r["source"]), float(r["time"]))
