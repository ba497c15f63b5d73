"""Control-API routes of the event bus: ``POST /v1/publish``, ``GET /v1/subscriptions``; and the
``subscribe`` / ``unsubscribe`` writes ``POST /v1/intent/prepare`` runs (mesh/daemon/intentapi.py).

``POST /v1/publish`` ``{"topic", "data_b64", "meta"}`` answers ``{"id", "topic", "subscriptions": n}``
once the event is durably queued; 429 with ``Retry-After`` (whole seconds, rounded up) when a
matching subscription's queue is full or the storm policy shed it; 400 for a bad topic, data or
meta; 503 when the event store cannot be written.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import TYPE_CHECKING, Any, Callable

from crdt.schema import SubscriptionSpec
from mesh.daemon.api import ApiError, Request, json_answer
from mesh.events.event import MAX_DATA, Backpressure
from mesh.events.store import EventStoreError

if TYPE_CHECKING:
    from mesh.daemon.node import Daemon


def subscriptions_view(specs: list[SubscriptionSpec], status: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One object per subscription: its spec, plus the node's queue status when it runs (``status``)."""
    st = {r["name"]: r for r in status or []}
    out = []
    for s in specs:
        row: dict[str, Any] = s.to_payload()
        r = st.get(s.name)
        if r is not None:
            row.update({k: r[k] for k in ("depth", "in_flight", "delivered", "failures", "retries", "dead_letters")})
        out.append(row)
    return out


def prepare_write(node: Any, op: str, args: dict[str, Any], now: float, wall: float) -> Callable[[Any], Any]:
    """The write ``op`` (subscribe: ``{"spec": {...}}``, unsubscribe: ``{"name"}``) for ``IntentNode.prepare``."""
    if op == "subscribe":
        spec = SubscriptionSpec.from_payload(args.get("spec"))
        return lambda k: node.set_subscription(spec, k, now, wall=wall)
    name = args.get("name")
    if not isinstance(name, str) or not name or len(name) > 64:
        raise ApiError(400, "name must be a subscription name")
    return lambda k: node.delete_subscription(name, k, now, wall=wall)


class EventsApi:
    """The routes; ``daemon.bus`` is the node's :class:`~mesh.events.bus.EventBus`."""

    def __init__(self, daemon: "Daemon") -> None:
        self.d = daemon

    def routes(self) -> dict[tuple[str, str], Any]:
        return {("POST", "/v1/publish"): self.publish, ("GET", "/v1/subscriptions"): self.subscriptions}

    async def publish(self, req: Request) -> tuple[int, str, bytes]:
        body = req.json()
        raw = body.get("data_b64", "")
        if not isinstance(raw, str) or len(raw) > 4 * MAX_DATA // 3 + 8:
            raise ApiError(400 if not isinstance(raw, str) else 413, f"data_b64 must be base64 of at most {MAX_DATA} bytes")
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "data_b64 is not valid base64") from None
        try:
            ev, names = await self.d.bus.publish_counted(body.get("topic"), data, body.get("meta"), source="api")
        except Backpressure as bp:
            raise ApiError(429, f"{bp} (retry after {bp.retry_after_s:.3f} s)",
                           [("retry-after", str(max(1, math.ceil(bp.retry_after_s))))]) from None
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        except EventStoreError as exc:
            raise ApiError(503, f"event not queued: {exc}") from None
        return json_answer({"id": ev.id, "topic": ev.topic, "subscriptions": len(names)})

    async def subscriptions(self, req: Request) -> tuple[int, str, bytes]:
        intent = self.d.core.intent
        assert intent is not None
        return json_answer(subscriptions_view(intent.doc.subscriptions(), self.d.bus.status()))
