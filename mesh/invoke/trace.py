"""W3C Trace Context ``traceparent`` (https://www.w3.org/TR/trace-context/): parse, generate, child.

``version-traceid-parentid-flags``: 2, 32, 16 and 2 lowercase hex digits. Version ``ff`` is
invalid, and so are an all-zero trace id or parent id. Version ``00`` has exactly four fields; a
higher version may append fields, which a receiver of version 00 ignores (it keeps the first
55 characters' meaning). Generation takes random bytes from the caller: the cores never draw
randomness themselves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

_TP = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
TRACEPARENT_LEN = 55
INVALID = "traceparent is not a valid W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)"


@dataclass(slots=True, frozen=True)
class TraceContext:
    version: str
    trace_id: str
    parent_id: str
    flags: str

    def header(self) -> str:
        """The ``traceparent`` value (always written as version 00)."""
        return f"00-{self.trace_id}-{self.parent_id}-{self.flags}"


def parse_traceparent(value: object) -> TraceContext | None:
    """The context of a valid ``traceparent``, or None (then a receiver starts a new trace)."""
    if type(value) is not str or len(value) < TRACEPARENT_LEN or len(value) > 512:
        return None
    m = _TP.fullmatch(value)
    if m is None:
        return None
    version, trace_id, parent_id, flags, rest = m.groups()
    if version == "ff" or trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    if version == "00" and rest:
        return None
    return TraceContext(version, trace_id, parent_id, flags)


def new_traceparent(random16: bytes, random8: bytes, sampled: bool = True) -> str:
    """A new trace from 16 + 8 random bytes (an all-zero id, however unlikely, is made non-zero)."""
    if len(random16) != 16 or len(random8) != 8:
        raise ValueError("need 16 and 8 random bytes")
    trace_id = random16.hex() if any(random16) else "0" * 31 + "1"
    span_id = random8.hex() if any(random8) else "0" * 15 + "1"
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


def child_traceparent(ctx: TraceContext, random8: bytes) -> str:
    """The same trace with a new parent id (this node's span), flags kept."""
    if len(random8) != 8:
        raise ValueError("need 8 random bytes")
    span_id = random8.hex() if any(random8) else "0" * 15 + "1"
    return f"00-{ctx.trace_id}-{span_id}-{ctx.flags}"


def call_context(value: str | None, randbytes: Callable[[int], bytes], *, strict: bool = True) -> TraceContext:
    """The trace a call runs in: the caller's ``traceparent`` continued, or a new trace when none was given.

    An invalid value raises ``ValueError(INVALID)`` when ``strict`` (the control API answers it 400);
    otherwise it starts a new trace too (the HTTP ingress: a client's bad header is never an error).
    ``randbytes(n)`` gives n random bytes (``os.urandom`` in the daemon). Every call path (invoke,
    a quota refusal, an HTTP request) takes its trace from here.
    """
    ctx = parse_traceparent(value) if value else None
    if ctx is not None:
        return ctx
    if value and strict:
        raise ValueError(INVALID)
    new = parse_traceparent(new_traceparent(randbytes(16), randbytes(8)))
    assert new is not None
    return new
