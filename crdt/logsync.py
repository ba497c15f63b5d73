"""LogSync: one node's sans-IO heads-based anti-entropy over its SignedLog (not yet on the wire).

A round between A and B::

    A -> B  HeadsDigest(digest of A's heads)            16 bytes; equal digests end the round
    B -> A  HeadsMessage(B's heads, reply=False)        in pages of at most 1,000 signers
    A -> B  RecordsRequest(what A lacks)  + HeadsMessage(A's heads, reply=True)
    B -> A  RecordBatch…                                each fits one frame, byte budget per request
    B -> A  RecordsRequest(what B lacks)
    A -> B  RecordBatch…

Pages are independent (``missing_from`` judges each signer on its own), so a lost page only
delays that page's signers to a later round. Every record received goes through
``SignedLog.add``; nothing a peer sends can remove anything.
"""

from __future__ import annotations

from typing import Any, Callable

from crdt.heads import MAX_HEADS_PER_MESSAGE, MAX_RANGES, HeadsDigest, HeadsMessage, RecordBatch, RecordsRequest
from crdt.signedlog import AddResult, SignedLog

LogMessage = HeadsDigest | HeadsMessage | RecordsRequest | RecordBatch


class LogSync:
    """Answers heads-sync messages for one log; the caller picks peers and carries bytes."""

    def __init__(self, log: SignedLog, byte_budget: int = 1 << 20) -> None:
        self.log = log
        self.byte_budget = byte_budget  # per request answered: bounds what one peer can pull
        self.results: list[AddResult] = []  # what received records did (for audit and counters)

    def open(self) -> HeadsDigest:
        """The opening message of a round."""
        return HeadsDigest(self.log.heads_digest())

    def _heads_pages(self, reply: bool) -> list[HeadsMessage]:
        items: list[tuple[str, int, bytes] | tuple[str, int]] = [(s, q, h) for s, (q, h) in self.log.heads().items()]
        items += list(self.log.forks().items())
        pages = []
        for i in range(0, len(items), MAX_HEADS_PER_MESSAGE):
            page = items[i : i + MAX_HEADS_PER_MESSAGE]
            heads = tuple(x for x in page if len(x) == 3)
            forks = tuple(x for x in page if len(x) == 2)
            pages.append(HeadsMessage(heads, reply, forks))  # type: ignore[arg-type]
        return pages or [HeadsMessage((), reply)]

    def receive(self, msg: Any, now_wall: float) -> list[LogMessage]:
        """Handle one message from a peer; return the messages to send back to it."""
        if isinstance(msg, HeadsDigest):
            return [] if msg.digest == self.log.heads_digest() else list(self._heads_pages(False))
        if isinstance(msg, HeadsMessage):
            out: list[LogMessage] = []
            ranges = self.log.missing_from(msg.as_heads(), msg.as_forks())
            for i in range(0, len(ranges), MAX_RANGES):
                out.append(RecordsRequest(tuple(ranges[i : i + MAX_RANGES])))
            if not msg.reply:
                out += self._heads_pages(True)
            return out
        if isinstance(msg, RecordsRequest):
            return list(self.log.records_for(msg.ranges, self.byte_budget))
        if isinstance(msg, RecordBatch):
            self.results += [self.log.add(r, now_wall) for r in msg.records]
            return []
        self.log._bump("unknown_sync_message")
        return []


_DECODERS: dict[int, Callable[[bytes], LogMessage]] = {
    30: HeadsDigest.decode,
    31: HeadsMessage.decode,
    32: RecordsRequest.decode,
    33: RecordBatch.decode,
}


def decode_log_message(data: bytes) -> LogMessage:
    """Decode any heads-sync message by its type number; raise ValidationError if malformed."""
    from crdt.errors import ValidationError

    if not isinstance(data, (bytes, bytearray)) or len(data) < 2 or data[0] != 0x92 or data[1] not in _DECODERS:
        raise ValidationError("not a heads-sync message")
    return _DECODERS[data[1]](bytes(data))
