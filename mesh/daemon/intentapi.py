"""Control API routes for client-signed intent records (the daemon's side of :mod:`crdt.client`).

=======  ==========================================  ==========================================
GET      /v1/intent/head?signer=K&kind=K&key=SLOT    ``{"seq", "prev", "wall_ms"}``: where the
                                                     signer's next record goes (sign it yourself)
POST     /v1/intent/records                          ``{"records": [base64 LogRecord bytes]}``:
                                                     verify, store durably, then answer and push
=======  ==========================================  ==========================================

Private keys never reach the node: the CLI signs and the node verifies like a record from a peer.
A POST answers only after every stored record is durable (one fsync batch), so an acknowledged
record survives SIGKILL; the records are pushed to peers from the same point (``persisted``).
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import trio

from crdt.errors import CrdtError, PermissionDenied, ValidationError
from crdt.logrecord import LogRecord
from crdt.intent import PendingWrite
from crdt.logrecord import MAX_LOG_RECORD_BYTES
from crdt.records import KINDS
from crdt.signedlog import LogError
from mesh.daemon.api import ApiError, Request, json_answer

if TYPE_CHECKING:
    from mesh.daemon.node import Daemon

MAX_RECORDS_PER_POST = 64
DURABLE_TIMEOUT = 10.0


def query_one(req: Request, name: str, required: bool = True) -> str:
    """One query parameter (400 if missing or repeated)."""
    q = parse_qs(req.query, keep_blank_values=True)
    vals = q.get(name, [])
    if len(vals) > 1:
        raise ApiError(400, f"query parameter {name} given more than once")
    if not vals:
        if required:
            raise ApiError(400, f"missing query parameter {name}")
        return ""
    return vals[0]


def _kind_of(data: bytes) -> str:
    try:
        return LogRecord.decode(data).kind
    except ValidationError:
        return ""


class IntentApi:
    """The intent routes of one daemon (mounted by ``Daemon._routes``)."""

    def __init__(self, daemon: "Daemon") -> None:
        self.d = daemon

    def routes(self) -> dict[tuple[str, str], Any]:
        return {
            ("GET", "/v1/intent/head"): self.head,
            ("POST", "/v1/intent/records"): self.records,
            ("GET", "/v1/trust"): self.trust,
        }

    async def trust(self, req: Request) -> tuple[int, str, bytes]:
        """The effective replicated trust (roots, grants, revocations) and this node's local trust.json keys."""
        intent = self._intent()
        out = intent.doc.adapter.to_json()
        out["local"] = self.d.trust.to_json()["keys"]
        out["insecure"] = not intent.doc.adapter.roots
        return json_answer(out)

    def _intent(self) -> Any:
        intent = self.d.core.intent
        if intent is None:
            raise ApiError(503, "this node runs no intent replica")
        return intent

    async def head(self, req: Request) -> tuple[int, str, bytes]:
        intent = self._intent()
        signer = query_one(req, "signer")
        kind = query_one(req, "kind", required=False) or ""
        key = query_one(req, "key", required=False) or ""
        if kind and kind not in KINDS:
            raise ApiError(400, f"unknown kind {kind!r:.40} (kinds: {', '.join(KINDS)})")
        if bool(kind) != bool(key):
            raise ApiError(400, "give kind and key together (or neither, for the signer's chain head only)")
        if len(signer) > 64 or len(key) > 1024:
            raise ApiError(400, "signer or key too long")
        try:
            seq, prev, wall_ms = intent.head(signer, kind or "registry", key or "\x00", trio.current_time(), time.time())
        except LogError as exc:
            raise ApiError(409, str(exc)) from None
        return json_answer({"seq": seq, "prev": prev.hex(), "wall_ms": wall_ms, "signer": signer})

    async def records(self, req: Request) -> tuple[int, str, bytes]:
        d = self.d
        intent = self._intent()
        body = req.json()
        items = body.get("records")
        if not isinstance(items, list) or not items or len(items) > MAX_RECORDS_PER_POST:
            raise ApiError(400, f"records must be a list of 1 to {MAX_RECORDS_PER_POST} base64 strings")
        blobs: list[bytes] = []
        for i, it in enumerate(items):
            if not isinstance(it, str) or len(it) > (MAX_LOG_RECORD_BYTES * 4) // 3 + 8:
                raise ApiError(400, f"record #{i} is not a base64 string of a record")
            try:
                blobs.append(base64.b64decode(it, validate=True))
            except (binascii.Error, ValueError):
                raise ApiError(400, f"record #{i} is not valid base64") from None
        results: list[dict[str, Any]] = []
        token = 0
        now = trio.current_time()
        error: ApiError | None = None
        for i, data in enumerate(blobs):
            if not intent.doc.adapter.roots and _kind_of(data) == "trust":
                raise ApiError(400, "this mesh has no admin keys (an --insecure node, no mesh file): trust records cannot be "
                               "written here; use a mesh file (`wasmatrix mesh init`) or offline `keygen --data-dir` on a stopped node")
            try:
                status, ack = intent.submit(data, now, time.time())
            except PermissionDenied as exc:
                error = ApiError(403, f"record #{i}: {exc}")
            except CrdtError as exc:
                error = ApiError(400, f"record #{i}: {exc}")
            if error is not None:
                d.counters["driver_intent_records_refused"] += 1
                break  # the records before it stay stored: wait for them, then report the error
            d.counters["driver_intent_records_submitted"] += 1
            row: dict[str, Any] = {"status": status}
            if ack is not None:
                row.update(kind=ack.kind, key=ack.key, signer=ack.signer, seq=ack.seq)
                if isinstance(ack, PendingWrite):
                    token = max(token, ack.token)
            results.append(row)
        d.emit([])  # kicks the persist loop
        if token:
            with trio.move_on_after(DURABLE_TIMEOUT):
                while not intent.durable(token):
                    await trio.sleep(0.002)
            if not intent.durable(token):
                raise ApiError(503, f"records not durable after {DURABLE_TIMEOUT:.0f} s (disk stalled?); they may still be stored")
        if error is not None:
            if results:
                error.message += f" (the {len(results)} record(s) before it were stored)"
            raise error
        return json_answer({"results": results})
