"""Client side of writing intent through a running node: sign locally, submit over the control API.

A private key never leaves the CLI. The node tells where the signer's next record goes
(``GET /v1/intent/head``), the client signs it, and ``POST /v1/intent/records`` makes the node
verify it like a record from a peer, store it durably, answer, and push it to the mesh::

    rec = sign_next(api, key, "registry", "hello@1.0.0", manifest_payload)
    submit(api, [rec])

``api`` is anything with ``get(path)`` and ``post(path, body)`` returning decoded JSON (the
daemon's ``mesh.daemon.api.ApiClient``); this module does not import it (``crdt`` sits below
``mesh``). Several records of one signer in one batch: sign the first with :func:`sign_next`
and each following one with ``after=`` the previous record (no round trip), then submit them in
one call, in order.
"""

from __future__ import annotations

import base64
import time
from typing import Any, Iterable, Protocol
from urllib.parse import urlencode

from crdt.errors import ValidationError
from crdt.keys import SigningKey
from crdt.logrecord import ID_LEN, LogRecord


class ApiLike(Protocol):
    def get(self, path: str) -> Any: ...

    def post(self, path: str, body: Any = None) -> Any: ...


def head(api: ApiLike, signer: str, kind: str = "", slot: str = "") -> tuple[int, bytes, int]:
    """``(next seq, prev id, minimum wall_ms)`` of ``signer``'s next record (for ``kind:slot`` when given)."""
    q = {"signer": signer}
    if kind:
        q.update(kind=kind, key=slot)
    ans = api.get("/v1/intent/head?" + urlencode(q))
    try:
        seq, prev, wall = int(ans["seq"]), bytes.fromhex(ans["prev"]), int(ans["wall_ms"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValidationError(f"the node answered a malformed head: {exc}") from None
    if seq < 1 or len(prev) not in (0, ID_LEN) or wall < 0:
        raise ValidationError("the node answered an out-of-range head")
    return seq, prev, wall


def sign_next(
    api: ApiLike | None,
    key: SigningKey,
    kind: str,
    slot: str,
    payload: Any,
    tombstone: bool = False,
    *,
    after: LogRecord | None = None,
    now_ms: int | None = None,
) -> LogRecord:
    """Sign ``key``'s next record for ``kind:slot``.

    Position and minimum wall time come from the node (``api``), or follow ``after`` (the
    previous record of the same batch, then ``api`` may be None). The wall time is
    ``max(now, minimum)`` so the write wins over what the node has seen in that slot.
    """
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if after is not None:
        if after.signer != key.key_id:
            raise ValidationError("after= must be a record of the same signer")
        seq, prev, wall = after.seq + 1, after.id, after.wall_ms
        if api is not None:  # the slot's winner may be newer than our previous record
            wall = max(wall, head(api, key.key_id, kind, slot)[2])
    else:
        if api is None:
            raise ValidationError("sign_next needs the node (api) or the previous record (after=)")
        seq, prev, wall = head(api, key.key_id, kind, slot)
    return LogRecord.create(key, seq, prev, kind, slot, payload, max(now, wall), tombstone=tombstone)


def submit(api: ApiLike, records: Iterable[LogRecord]) -> list[dict[str, Any]]:
    """Send records (in order) to the node; return its acks (``kind, key, signer, seq``) once durable.

    Each record must be its signer's next position on that node. Raises whatever ``api.post``
    raises for a refusal (the daemon client: ``ApiClientError`` with status 403 for trust, role
    or revocation, 412 when the position was taken meanwhile (sign again), 400 otherwise).
    """
    body = {"records": [base64.b64encode(r.encode()).decode("ascii") for r in records]}
    ans = api.post("/v1/intent/records", body)
    if not isinstance(ans, dict) or not isinstance(ans.get("acks"), list):
        raise ValidationError("the node answered a malformed submit result")
    return ans["acks"]


def write(api: ApiLike, key: SigningKey, kind: str, slot: str, payload: Any, tombstone: bool = False) -> dict[str, Any]:
    """Sign one record and submit it; the node's ack (``kind, key, signer, seq``)."""
    return submit(api, [sign_next(api, key, kind, slot, payload, tombstone)])[0]
