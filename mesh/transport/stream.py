"""Sans-IO secure stream (TCP): the XXpsk0 handshake as the first three frames, then Noise transport frames.

Wire layout: every frame is ``[0:2]`` big-endian body length, ``[2:2+n]`` body, with ``n <= 65535``.
Frames 1-3 are Noise handshake messages 1-3 (53, 197 and 165 bytes, see ``handshake``); every later
frame is one Noise transport message (ciphertext + 16-byte tag) under the implicit nonce of its
direction, so a stream needs no counters on the wire: TCP already orders and deduplicates, and any
replayed, reordered, dropped or altered frame fails authentication. A plaintext is at most
65,519 bytes (``MAX_STREAM_PLAINTEXT``).

Any bad frame (oversize, undecryptable, refused identity) closes the session: one ``Closed`` event
with a reason, a counter, and every later input ignored. Nothing raises out of ``feed``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from noise.connection import NoiseConnection
from noise.state import CipherState, HandshakeState

from mesh.errors import ConfigError
from mesh.transport.errors import FrameTooLarge, TransportError
from mesh.transport.framing import NOISE_MAX_MESSAGE, StreamFramer, frame
from mesh.transport.handshake import (
    MSG1_LEN,
    MSG2_LEN,
    MSG3_LEN,
    NOISE_ERRORS,
    PROLOGUE_TCP,
    TAG_LEN,
    Admit,
    check_peer,
    check_psks,
    decode_hello,
    encode_hello,
    encode_identity,
    handshake_state,
    new_handshake,
    read_message_1,
    remote_static,
)
from mesh.transport.identity import LocalIdentity, NodeIdentity

MAX_STREAM_PLAINTEXT = NOISE_MAX_MESSAGE - TAG_LEN


@dataclass(slots=True, frozen=True)
class Outgoing:
    """Bytes the driver must write to the stream."""

    data: bytes


@dataclass(slots=True, frozen=True)
class Established:
    """The handshake finished; ``peer`` is the authenticated, admitted identity at the other end."""

    peer: NodeIdentity


@dataclass(slots=True, frozen=True)
class Message:
    """One authenticated plaintext frame."""

    plaintext: bytes


@dataclass(slots=True, frozen=True)
class Closed:
    """The session is over; the driver closes the connection. ``reason`` is also a counter name."""

    reason: str


StreamEvent = Outgoing | Established | Message | Closed


class StreamSession:
    """One side of a Noise-secured TCP connection."""

    def __init__(
        self,
        identity: LocalIdentity,
        mesh_psk: bytes,
        admit: Admit,
        initiator: bool,
        expected_node_id: str | None = None,
        expected_ed25519: bytes | None = None,
        counters: Counter[str] | None = None,
        max_frame: int = NOISE_MAX_MESSAGE,
        accepted_psks: Sequence[bytes] | None = None,
    ) -> None:
        try:
            psks = check_psks(mesh_psk, accepted_psks)
        except ConfigError as exc:
            raise TransportError(str(exc)) from None
        # An initiator dials with ``mesh_psk``; a responder reads message 1 under each accepted
        # secret in turn (see SecureTransport.set_psks for the rotation window).
        self._psks = psks if not initiator else psks[:1]
        self.psk = psks[0]  # the secret this session uses (a responder's: the one message 1 proved)
        self.identity = identity
        self.admit = admit
        self.initiator = initiator
        self.expected_node_id = expected_node_id
        self.expected_ed25519 = expected_ed25519
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self.peer: NodeIdentity | None = None
        self.closed: str | None = None
        self._framer = StreamFramer(max_frame=max_frame, min_frame=TAG_LEN)
        self._conn: NoiseConnection | None = new_handshake(identity, self.psk, initiator, PROLOGUE_TCP)
        self._hs: HandshakeState | None = handshake_state(self._conn)
        self._step = 0  # handshake frames processed or written
        self._send_cs: CipherState | None = None
        self._recv_cs: CipherState | None = None

    @property
    def established(self) -> bool:
        """True once the peer is authenticated and admitted."""
        return self._send_cs is not None and self.closed is None

    def start(self) -> bytes:
        """The initiator's first frame (handshake message 1); empty for a responder."""
        if not self.initiator or self._step != 0 or self._conn is None:
            return b""
        self._step = 1
        return frame(bytes(self._conn.write_message(encode_hello(0))))

    def send(self, plaintext: bytes) -> bytes:
        """One framed transport message carrying ``plaintext`` (<= 65,519 bytes)."""
        if self._send_cs is None or self.closed is not None:
            raise TransportError("stream session is not established (or is closed)")
        if len(plaintext) > MAX_STREAM_PLAINTEXT or len(plaintext) + TAG_LEN > self._framer.max_frame:
            raise FrameTooLarge(f"plaintext of {len(plaintext)} bytes does not fit one frame; chunk it")
        return frame(self._send_cs.encrypt_with_ad(None, plaintext))

    def feed(self, data: bytes) -> list[StreamEvent]:
        """Take any chunk of received bytes; return what happened, in order."""
        if self.closed is not None:
            return []
        events: list[StreamEvent] = []
        for body in self._framer.feed(data):
            self._on_frame(body, events)
            if self.closed is not None:
                return events
        if self._framer.error is not None:
            self._close(f"stream_{self._framer.error}", events)
        return events

    def _close(self, reason: str, events: list[StreamEvent]) -> None:
        self.closed = reason
        self.counters[reason] += 1
        self._conn = None
        self._hs = None
        events.append(Closed(reason))

    def _on_frame(self, body: bytes, events: list[StreamEvent]) -> None:
        if self._recv_cs is not None:
            try:
                plaintext = self._recv_cs.decrypt_with_ad(None, body)
            except NOISE_ERRORS:
                self._close("stream_decrypt_failures", events)
                return
            self.counters["stream_frames_opened"] += 1
            events.append(Message(bytes(plaintext)))
            return
        conn, hs = self._conn, self._hs
        assert conn is not None and hs is not None  # only None once closed or established
        if self.initiator:
            if self._step != 1 or len(body) != MSG2_LEN:
                self._close("handshake_malformed", events)
                return
            try:
                payload = conn.read_message(body)
            except NOISE_ERRORS:
                self._close("handshake_invalid", events)
                return
            peer, _, reason = check_peer(
                bytes(payload), remote_static(hs), self.admit, self.expected_node_id, self.expected_ed25519
            )
            if peer is None:
                self._close(f"handshake_refused_{reason}", events)
                return
            try:
                msg3 = bytes(conn.write_message(encode_identity(self.identity, 0)))
            except NOISE_ERRORS:
                self._close("handshake_invalid", events)
                return
            events.append(Outgoing(frame(msg3)))
            self._finish(conn, peer, events)
            return
        if self._step == 0:
            if len(body) != MSG1_LEN:
                self._close("handshake_malformed", events)
                return
            read = read_message_1(self.identity, self._psks, PROLOGUE_TCP, body)
            if read is None:
                self._close("handshake_psk_failures", events)  # silence: nothing is written back
                return
            conn, self._hs, payload, which = read
            self._conn = conn
            self.psk = self._psks[which]
            if which:
                self.counters["handshake_psk_alternate"] += 1
            if decode_hello(bytes(payload)) is None:
                self._close("handshake_refused_version_mismatch", events)
                return
            try:
                msg2 = bytes(conn.write_message(encode_identity(self.identity, 0)))
            except NOISE_ERRORS:  # a PSK holder sent a low-order ephemeral key: the DH fails
                self._close("handshake_invalid", events)
                return
            self._step = 1
            events.append(Outgoing(frame(msg2)))
            return
        if len(body) != MSG3_LEN:
            self._close("handshake_malformed", events)
            return
        try:
            payload = conn.read_message(body)
        except NOISE_ERRORS:
            self._close("handshake_invalid", events)
            return
        peer, _, reason = check_peer(bytes(payload), remote_static(hs), self.admit)
        if peer is None:
            self._close(f"handshake_refused_{reason}", events)
            return
        self._finish(conn, peer, events)

    def _finish(self, conn: NoiseConnection, peer: NodeIdentity, events: list[StreamEvent]) -> None:
        np = conn.noise_protocol
        self._send_cs, self._recv_cs = np.cipher_state_encrypt, np.cipher_state_decrypt
        self._conn = None
        self._hs = None
        self.peer = peer
        self.counters["handshakes_completed"] += 1
        events.append(Established(peer))
