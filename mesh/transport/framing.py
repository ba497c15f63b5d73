"""Sans-IO length-prefixed framing for streams: 2-byte big-endian length, then that many bytes.

One frame carries one Noise message, so a frame body is at most 65,535 bytes (the Noise limit) and
the 2-byte prefix is enough (the length prefix the Noise specification suggests). ``feed`` takes
arbitrary chunks (partial reads, several frames per read) and returns the complete bodies; a length
above ``max_frame`` or below ``min_frame`` is an error reported once, after which the framer is
closed and drops everything (the caller closes the connection). The buffer never holds more than
one frame plus its prefix.
"""

from __future__ import annotations

PREFIX_LEN = 2
NOISE_MAX_MESSAGE = 65535


class StreamFramer:
    """Splits a byte stream into frames; never raises on input."""

    __slots__ = ("max_frame", "min_frame", "_buf", "error")

    def __init__(self, max_frame: int = NOISE_MAX_MESSAGE, min_frame: int = 0) -> None:
        if not 0 <= min_frame <= max_frame <= NOISE_MAX_MESSAGE:
            raise ValueError(f"need 0 <= min_frame <= max_frame <= {NOISE_MAX_MESSAGE}")
        self.max_frame = max_frame
        self.min_frame = min_frame
        self._buf = bytearray()
        self.error: str | None = None  # "oversize_frame" / "undersize_frame" once the stream is bad

    def feed(self, data: bytes) -> list[bytes]:
        """Append ``data``; return every frame body completed by it, in order."""
        if self.error is not None:
            return []
        self._buf += data
        out: list[bytes] = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= PREFIX_LEN:
            n = (buf[pos] << 8) | buf[pos + 1]
            if n > self.max_frame:
                self.error = "oversize_frame"
                break
            if n < self.min_frame:
                self.error = "undersize_frame"
                break
            if len(buf) - pos - PREFIX_LEN < n:
                break
            out.append(bytes(buf[pos + PREFIX_LEN : pos + PREFIX_LEN + n]))
            pos += PREFIX_LEN + n
        if self.error is not None:
            self._buf = bytearray()
        else:
            del buf[:pos]
        return out

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf)


def frame(body: bytes) -> bytes:
    """Prefix ``body`` (at most 65,535 bytes) with its 2-byte big-endian length."""
    if len(body) > NOISE_MAX_MESSAGE:
        raise ValueError(f"a frame body is at most {NOISE_MAX_MESSAGE} bytes, got {len(body)}")
    return len(body).to_bytes(PREFIX_LEN, "big") + body
