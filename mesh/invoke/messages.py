"""Invocation over the mesh: ``InvokeRequest`` / ``InvokeReply`` stream messages (types 50, 51).

Both travel only on Noise streams (``NodeCore`` refuses them as datagrams): a request goes out on
the pooled stream to the target node and its reply comes back on the same stream, matched by the
request id the caller chose. Every field is bounded and checked at decode time; a peer that does
not know these types (an older node) counts them as unknown and drops them, and the caller's
deadline turns that into a ``no_answer`` failure.

Sizes: a payload or an output is at most :data:`MAX_INVOKE_PAYLOAD` bytes so that one request or
reply is one stream frame (``mesh.wire.MAX_FRAME``) with its envelope.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mesh.errors import WireError
from mesh.invoke.trace import parse_traceparent
from mesh.wire import message, v_bool, v_fields, v_int, v_name, v_str

MAX_INVOKE_PAYLOAD = 60_000  # bytes of request payload and of reply output (one stream frame each)
MAX_DEADLINE_MS = 600_000  # the longest budget a caller may give one attempt (10 min)
MAX_ERROR_TEXT = 512
MAX_REQUEST_ID = 2**63 - 1

# Reply error codes. ``executed`` tells the caller whether the guest may have run: a reply with
# ``executed=False`` is always safe to retry on another replica.
OK = "ok"
NOT_HOSTED = "not_hosted"  # the target runs no replica of the deployment (stale placement)
OVERLOADED = "overloaded"  # refused at admission (concurrency cap), before executing
BAD_REQUEST = "bad_request"
UNAVAILABLE = "unavailable"  # the target's runtime could not take the call (not executed)
TRAP = "trap"
TIMEOUT = "timeout"
LIMIT = "limit_exceeded"
GUEST_ERROR = "guest_error"
INTERNAL = "internal"
# What an InvokeRequest's payload is: the guest's raw input, or an HTTP request (HTTP/1.1 text).
KIND_RAW = 0
KIND_HTTP = 1
QUOTA = "quota"  # refused by a tenant quota (mesh/invoke/quota.py): not executed, never retried
ERROR_CODES = frozenset({OK, NOT_HOSTED, OVERLOADED, BAD_REQUEST, UNAVAILABLE, TRAP, TIMEOUT, LIMIT, GUEST_ERROR, INTERNAL, QUOTA})
_CODE_MAX = 32


def _v_bytes(x: Any, limit: int) -> bytes:
    if type(x) is not bytes or len(x) > limit:
        raise WireError(f"expected bytes of length <= {limit}")
    return x


@message
@dataclass(slots=True, frozen=True)
class InvokeRequest:
    """Run ``deployment`` on the receiving node with ``payload``; answer within ``deadline_ms``."""

    TYPE = 50

    request_id: int
    deployment: str
    payload: bytes
    traceparent: str
    deadline_ms: int  # the caller's remaining budget, relative (clocks of two nodes differ)
    kind: int = KIND_RAW  # KIND_HTTP: payload is the request as HTTP/1.1 text (mesh/ingress/cgi.py)

    def __post_init__(self) -> None:
        v_int(self.request_id, 0, MAX_REQUEST_ID)
        v_name(self.deployment)
        _v_bytes(self.payload, MAX_INVOKE_PAYLOAD)
        if parse_traceparent(self.traceparent) is None:
            raise WireError("invalid traceparent")
        v_int(self.deadline_ms, 1, MAX_DEADLINE_MS)
        if type(self.kind) is not int or self.kind not in (KIND_RAW, KIND_HTTP):
            raise WireError(f"unknown invoke kind {self.kind!r:.20}")

    def to_payload(self) -> list[Any]:
        p = [self.request_id, self.deployment, self.payload, self.traceparent, self.deadline_ms]
        # A raw call keeps the 5-field form older nodes decode; an HTTP call adds the kind.
        return p + [self.kind] if self.kind != KIND_RAW else p

    @classmethod
    def from_payload(cls, p: list[Any]) -> "InvokeRequest":
        if len(p) != 6:
            v_fields(p, 5)
        return cls(p[0], p[1], p[2], v_str(p[3], 55), p[4], *(p[5:6]))


@message
@dataclass(slots=True, frozen=True)
class InvokeReply:
    """The answer to one ``InvokeRequest``: the guest's exit status and output, or an error code."""

    TYPE = 51

    request_id: int
    code: str  # one of ERROR_CODES; "ok" when the guest ran to completion
    executed: bool  # the guest may have run (a retry elsewhere would run it twice)
    status: int = 0  # the guest's exit status (WASI) when code is ok
    output: bytes = b""
    message: str = ""
    duration_us: int = 0  # time the target spent on the call

    def __post_init__(self) -> None:
        v_int(self.request_id, 0, MAX_REQUEST_ID)
        if self.code not in ERROR_CODES:
            raise WireError(f"unknown invoke error code {self.code!r:.40}")
        v_bool(self.executed)
        v_int(self.status, -(2**31), 2**31 - 1)
        _v_bytes(self.output, MAX_INVOKE_PAYLOAD)
        v_str(self.message, MAX_ERROR_TEXT, allow_empty=True)
        v_int(self.duration_us, 0, 2**40)

    def to_payload(self) -> list[Any]:
        return [self.request_id, self.code, self.executed, self.status, self.output, self.message, self.duration_us]

    @classmethod
    def from_payload(cls, p: list[Any]) -> "InvokeReply":
        v_fields(p, 7)
        return cls(p[0], v_str(p[1], _CODE_MAX), p[2], p[3], p[4], p[5], p[6])


INVOKE_TYPES: frozenset[int] = frozenset({InvokeRequest.TYPE, InvokeReply.TYPE})
