"""Sans-IO secure datagram transport: Noise_XXpsk0 handshakes, replay-protected sessions, rekey.

``SecureTransport`` is a pure state machine in the style of h11: the driver hands it received
datagrams with the current monotonic time and sends whatever it returns; it owns no socket, reads no
clock and draws session indices from an injected ``random.Random``. Bad bytes from the network never
raise: they are dropped and counted in ``counters`` (see docs/TRANSPORT.md for every name).

Wire layout (all integers big-endian, byte offsets)::

    0      1            5            13
    | type | ...
    type 1 HANDSHAKE_INIT : [1:]   Noise message 1 (e 32, payload 153+16, zero-padded)  = 202 bytes
    type 2 HANDSHAKE_RESP : [1:5]  receiver index (the initiator's), [5:] Noise msg 2   = 202 bytes
    type 3 HANDSHAKE_FINAL: [1:5]  receiver index (the responder's), [5:] Noise msg 3   = 170 bytes
    type 4 DATA           : [1:5]  receiver index, [5:13] counter, [13:] ciphertext+tag (16)
    type 5 IK_INIT        : [1:]   IKpsk2 message 1 (e 32, s 32+16, payload 101+16)      = 198 bytes
    type 6 IK_RESP        : [1:5]  receiver index (the initiator's), [5:] IKpsk2 msg 2  = 154 bytes

A DATA header (13 bytes) is the AEAD associated data, and the counter is the ChaCha20-Poly1305 nonce
(``CipherState.set_nonce``), so reordering is harmless and the receiver checks a sliding replay window
before and after authentication. Sender indices travel inside the encrypted handshake payloads.

Handshakes are XXpsk0, or IKpsk2 when the peer's X25519 key is already known. Sessions are
rekeyed the WireGuard way: a fresh handshake (new ephemeral keys, forward secrecy) once a
session has sent ``rekey_after_messages`` datagrams or is ``rekey_after_seconds`` old; the previous
session keeps decrypting for ``grace_seconds`` so in-flight packets are not lost.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from noise.connection import NoiseConnection
from noise.state import CipherState, HandshakeState

from mesh.errors import ConfigError
from mesh.transport.errors import FrameTooLarge, TransportError
from mesh.transport.handshake import (
    IK1_LEN,
    IK2_LEN,
    MSG1_LEN,
    MSG2_LEN,
    MSG3_LEN,
    NOISE_ERRORS,
    PROLOGUE_UDP,
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
from mesh.transport.replay import ReplayVerdict, ReplayWindow

Addr = Hashable

T_INIT = 1
T_RESP = 2
T_FINAL = 3
T_DATA = 4
T_IK_INIT = 5
T_IK_RESP = 6
IK_ATTEMPTS = 2  # IKpsk2 sends before a dial falls back to XXpsk0 (the known static key may be stale)
DATA_HEADER_LEN = 1 + 4 + 8
DATAGRAM_OVERHEAD = DATA_HEADER_LEN + TAG_LEN  # 29 bytes
MAX_COUNTER = 2**64 - 2  # 2**64-1 is reserved by Noise (nonce exhaustion / REKEY)
_NONCE_PAD = bytes(4)  # ChaChaPoly nonce: 4 zero bytes, then the 64-bit counter little-endian
FINAL_RESENDS = 3  # sends of one message 3 before the initiator restarts from message 1


@dataclass(slots=True, frozen=True)
class TransportConfig:
    """Timers and bounds of the datagram transport; every value in seconds or counts."""

    max_datagram: int = 1200  # stays under common cellular/VPN path MTUs
    replay_window: int = 2048  # RFC 6479 suggests >= 1024 for high-rate links
    rekey_after_messages: int = 2**48  # WireGuard uses 2**60; lower keeps the blast radius of a key small
    rekey_after_seconds: float = 120.0  # WireGuard REKEY_AFTER_TIME
    reject_after_seconds: float = 180.0  # WireGuard REJECT_AFTER_TIME: a session older than this is dead
    grace_seconds: float = 10.0  # previous session decrypts until this long after its last packet
    handshake_retry_seconds: float = 1.0  # resend interval of an unanswered handshake message
    handshake_max_attempts: int = 10  # handshake sends per dial before giving up (handshake_timeouts)
    responder_timeout: float = 5.0  # a responder forgets a handshake whose message 3 never came
    max_pending_per_addr: int = 4  # half-open responder handshakes per source address
    max_pending_total: int = 1024  # half-open responder handshakes in all
    max_queue_per_peer: int = 64  # plaintexts held while a session is being set up
    replay_cache_seconds: float = 180.0  # how long an authenticated message-1 ephemeral key is remembered
    replay_cache_size: int = 8192  # and how many (oldest forgotten first)

    def __post_init__(self) -> None:
        if self.max_datagram < max(MSG2_LEN + 5, DATAGRAM_OVERHEAD + 1):
            raise ConfigError(f"max_datagram {self.max_datagram} cannot carry a handshake message")
        if self.replay_window < 64:
            raise ConfigError("replay_window must be at least 64")
        if self.rekey_after_messages < 1 or self.rekey_after_messages > MAX_COUNTER:
            raise ConfigError("rekey_after_messages must be in [1, 2**64-2]")
        if not 0 < self.rekey_after_seconds < self.reject_after_seconds:
            raise ConfigError("need 0 < rekey_after_seconds < reject_after_seconds")
        if self.grace_seconds < 0 or self.handshake_retry_seconds <= 0 or self.responder_timeout <= 0:
            raise ConfigError("grace, retry and responder timeouts must be positive")
        if self.handshake_max_attempts < 1 or self.max_pending_per_addr < 1 or self.max_pending_total < 1:
            raise ConfigError("attempt and pending bounds must be at least 1")
        if self.replay_cache_seconds < 0 or self.replay_cache_size < 0:
            raise ConfigError("replay cache bounds must be >= 0")
        if self.max_queue_per_peer < 0:
            raise ConfigError("max_queue_per_peer must be >= 0")


@dataclass(slots=True, frozen=True)
class Datagram:
    """A datagram for the driver to send to ``addr``."""

    addr: Addr
    data: bytes


@dataclass(slots=True, frozen=True)
class Delivered:
    """An authenticated plaintext from the peer ``peer`` (its node id, proven by the handshake)."""

    peer: str
    plaintext: bytes


class _Session:
    """One direction pair of transport keys with a peer, addressed by our local index."""

    __slots__ = (
        "local_index", "remote_index", "peer", "addr", "send", "recv", "window",
        "created_at", "sent", "confirmed", "initiator", "expires_at", "final_digest",
    )

    def __init__(
        self, local_index: int, remote_index: int, peer: NodeIdentity, addr: Addr, send: CipherState,
        recv: CipherState, window: int, now: float, initiator: bool,
    ) -> None:
        self.local_index = local_index
        self.remote_index = remote_index
        self.peer = peer
        self.addr = addr
        # The ChaCha20-Poly1305 objects inside Noise's transport CipherStates. Datagrams use them with
        # an explicit nonce, exactly what CipherState.set_nonce(counter) + encrypt_with_ad would do
        # (Noise spec 12.3: 4 zero bytes + little-endian 64-bit counter), minus two Python layers.
        self.send: ChaCha20Poly1305 = send.cipher.cipher
        self.recv: ChaCha20Poly1305 = recv.cipher.cipher
        self.window = ReplayWindow(window)
        self.created_at = now
        self.sent = 0  # next counter to use
        self.confirmed = not initiator  # an initiator waits for the responder's first datagram
        self.initiator = initiator
        self.expires_at: float | None = None  # set when superseded: end of the grace period
        self.final_digest = b""  # responder: hash of message 3, to answer its retransmission


class _Dial:
    """An initiator's attempt to reach ``addr`` (first contact or rekey)."""

    __slots__ = (
        "addr", "expected_node_id", "expected_ed25519", "expected_x25519", "attempts", "deadline",
        "conn", "hs", "local_index", "final", "final_sends", "session", "ik",
    )

    def __init__(
        self, addr: Addr, expected_node_id: str | None, expected_ed25519: bytes | None, expected_x25519: bytes | None
    ) -> None:
        self.addr = addr
        self.expected_node_id = expected_node_id
        self.expected_ed25519 = expected_ed25519
        self.expected_x25519 = expected_x25519
        self.ik = False  # the attempt in flight is IKpsk2
        self.attempts = 0
        self.deadline = 0.0
        self.conn: NoiseConnection | None = None  # waiting for message 2
        self.hs: HandshakeState | None = None
        self.local_index = 0
        self.final = b""  # message 3, resent until the responder confirms
        self.final_sends = 0
        self.session: _Session | None = None  # set once message 2 checked out


class _Accept:
    """A responder's half-open handshake: XX waiting for message 3, or IK waiting for first data."""

    __slots__ = ("addr", "conn", "hs", "local_index", "remote_index", "deadline", "session")

    def __init__(
        self, addr: Addr, conn: NoiseConnection | None, hs: HandshakeState | None, local_index: int,
        remote_index: int, deadline: float, session: _Session | None = None,
    ) -> None:
        self.addr = addr
        self.conn = conn  # XX: waiting for message 3
        self.hs = hs
        self.session = session  # IK: keys ready, waiting for the initiator's first datagram
        self.local_index = local_index
        self.remote_index = remote_index
        self.deadline = deadline


def _write(conn: NoiseConnection, payload: bytes) -> bytes | None:
    """The next handshake message, or None when a DH with the peer's key fails (low-order point)."""
    try:
        return bytes(conn.write_message(payload))
    except NOISE_ERRORS:
        return None


class SecureTransport:
    """Datagram (UDP) side of the security boundary: every byte encrypted, authenticated, replay-checked."""

    def __init__(
        self,
        identity: LocalIdentity,
        mesh_psk: bytes,
        admit: Admit,
        rng: random.Random,
        config: TransportConfig | None = None,
        accepted_psks: Sequence[bytes] | None = None,
        on_refused: Callable[[str, Addr], None] | None = None,
        on_established: Callable[[str, Addr], None] | None = None,
    ) -> None:
        self.identity = identity
        self.psk = b""
        self.accepted_psks: tuple[bytes, ...] = ()
        self.set_psks(mesh_psk, accepted_psks)
        self.admit = admit
        # Told of every refused handshake as (reason, address): "psk_failure" or a check_peer reason
        # (not_admitted, unexpected_peer, bad_binding, ...). The daemon audits these; it must not raise.
        self.on_refused = on_refused
        # Told of every completed handshake as (peer node id, address): the peer proved its key at
        # that address (the node core stops treating messages to it there as first contacts).
        self.on_established = on_established
        self.rng = rng
        self.config = config or TransportConfig()
        self.counters: Counter[str] = Counter()
        self._sessions: dict[int, _Session] = {}  # local index -> session (current, unconfirmed, previous)
        self._current: dict[str, _Session] = {}  # peer node id -> session used for sending
        self._previous: dict[str, _Session] = {}  # peer node id -> superseded session in its grace period
        self._dials: dict[Addr, _Dial] = {}
        self._dial_index: dict[int, _Dial] = {}  # local index of a dial waiting for message 2 or confirmation
        self._accepts: dict[int, _Accept] = {}  # local index -> half-open responder handshake
        self._queue: dict[str, list[bytes]] = {}  # peer node id -> plaintexts waiting for a session
        self._last_addr: dict[str, Addr] = {}  # peer node id -> last authenticated address
        self._rekey_backoff: dict[str, float] = {}  # peer node id -> earliest time of the next rekey dial
        self._seen_ephemeral: dict[bytes, float] = {}  # message-1 ephemeral key -> forget-after time

    # ------------------------------------------------------------------ public API

    @property
    def max_plaintext(self) -> int:
        """Largest plaintext ``seal_datagram`` accepts: the datagram limit minus 29 bytes of overhead."""
        return self.config.max_datagram - DATAGRAM_OVERHEAD

    def peers(self) -> list[str]:
        """Node ids with a confirmed session, sorted."""
        return sorted(self._current)

    def peer_addr(self, peer: str) -> Addr | None:
        """The address of the current session with ``peer``, if any."""
        s = self._current.get(peer)
        return s.addr if s is not None else None

    @property
    def pending_handshakes(self) -> int:
        """Half-open handshakes this node holds as responder (bounded; see TransportConfig)."""
        return len(self._accepts)

    def session_count(self) -> int:
        """Live sessions of every kind (current, unconfirmed, in grace)."""
        return len(self._sessions)

    def set_psks(self, send: bytes, accepted: Sequence[bytes] | None = None) -> None:
        """Dial with the mesh secret ``send``; answer handshakes made with any of ``accepted``.

        ``accepted`` (default: ``send`` alone) must contain ``send``. A rotation window is
        ``set_psks(old, [new, old])`` on nodes holding the new mesh file and ``set_psks(old)`` on
        nodes still holding the old one, which then all dial with the old secret; when the window
        closes the driver calls ``set_psks(new)``. Sessions already established stay until their
        next rekey (which uses the new setting) or ``reject_after_seconds``.
        """
        psks = check_psks(send, accepted)
        self.psk = psks[0]
        self.accepted_psks = psks

    def revoke(self, peer: str) -> None:
        """Forget every session, dial and queued plaintext of ``peer`` (call when its key is revoked)."""
        for s in [s for s in self._sessions.values() if s.peer.node_id == peer]:
            self._drop_session(s)
            self.counters["sessions_revoked"] += 1
        for dial in [d for d in self._dials.values() if d.expected_node_id == peer]:
            self._end_dial(dial, failed=True)
        self.counters["queue_dropped"] += len(self._queue.pop(peer, []))
        self._last_addr.pop(peer, None)
        self._rekey_backoff.pop(peer, None)

    def connect(
        self,
        addr: Addr,
        now: float,
        expected_node_id: str | None = None,
        expected_ed25519: bytes | None = None,
        expected_x25519: bytes | None = None,
    ) -> list[Datagram]:
        """Start a handshake to ``addr``; ``expected_*`` pin the peer (None for a seed address).

        With the peer's X25519 static key (from membership) the first attempts use IKpsk2 (one round
        trip); without it, or when those go unanswered, XXpsk0.
        """
        if addr in self._dials:
            return []
        if expected_x25519 is not None and len(expected_x25519) != 32:
            raise TransportError("an X25519 public key is exactly 32 bytes")
        dial = _Dial(addr, expected_node_id, expected_ed25519, expected_x25519)
        self._dials[addr] = dial
        return self._send_init(dial, now)

    def seal_datagram(self, peer: str, plaintext: bytes, now: float, addr: Addr | None = None) -> list[Datagram]:
        """Encrypt ``plaintext`` for ``peer``; without a session, queue it and dial ``addr`` (or the last known one)."""
        if len(plaintext) > self.max_plaintext:
            raise FrameTooLarge(f"plaintext of {len(plaintext)} bytes exceeds max_plaintext {self.max_plaintext}")
        out: list[Datagram] = []
        s = self._current.get(peer)
        if s is not None and now - s.created_at >= self.config.reject_after_seconds:
            self._drop_session(s)
            self.counters["sessions_expired"] += 1
            s = None
        if s is None:
            target = addr if addr is not None else self._last_addr.get(peer)
            if target is None:  # a dial already on its way to that node (connect with its id)
                target = next((d.addr for d in self._dials.values() if d.expected_node_id == peer), None)
            if target is None:
                self.counters["datagram_no_route"] += 1
                return out
            q = self._queue.setdefault(peer, [])
            if len(q) >= self.config.max_queue_per_peer:
                self.counters["queue_dropped"] += 1
            else:
                q.append(bytes(plaintext))
            out += self.connect(target, now, expected_node_id=peer)
            return out
        if s.sent >= self.config.rekey_after_messages or now - s.created_at >= self.config.rekey_after_seconds:
            if s.addr not in self._dials and now >= self._rekey_backoff.get(peer, 0.0):
                # A failed rekey (peer down, refused) is not retried on every send: one attempt per
                # full dial lifetime, while the current session keeps working until reject_after.
                self._rekey_backoff[peer] = now + self.config.handshake_retry_seconds * self.config.handshake_max_attempts
                self.counters["rekeys_started"] += 1
                out += self.connect(
                    s.addr, now, peer, expected_ed25519=s.peer.ed25519_public, expected_x25519=s.peer.x25519_public
                )
        if s.sent > MAX_COUNTER:
            self.counters["datagram_counter_exhausted"] += 1
            return out
        out.append(Datagram(s.addr, self._seal(s, plaintext)))
        return out

    def receive_datagram(self, addr: Addr, data: bytes, now: float) -> tuple[list[Delivered], list[Datagram]]:
        """Process one received datagram; returns authenticated plaintexts and datagrams to send."""
        if not data or len(data) > self.config.max_datagram:
            self.counters["datagram_malformed"] += 1
            return [], []
        kind = data[0]
        if kind == T_DATA:
            return self._on_data(addr, data, now)
        if kind == T_INIT:
            return [], self._on_init(addr, data, now)
        if kind == T_RESP:
            return self._on_resp(addr, data, now)
        if kind == T_FINAL:
            return [], self._on_final(addr, data, now)
        if kind == T_IK_INIT:
            return [], self._on_ik_init(addr, data, now)
        if kind == T_IK_RESP:
            return self._on_ik_resp(addr, data, now)
        self.counters["datagram_malformed"] += 1
        return [], []

    def next_deadline(self) -> float | None:
        """Earliest time ``tick`` has work to do, or None."""
        times: list[float] = [d.deadline for d in self._dials.values()]
        times += [a.deadline for a in self._accepts.values()]
        times += [s.expires_at for s in self._previous.values() if s.expires_at is not None]
        times += [s.created_at + self.config.reject_after_seconds for s in self._current.values()]
        return min(times) if times else None

    def tick(self, now: float) -> list[Datagram]:
        """Fire due timers: handshake retries and timeouts, grace-period and session expiry."""
        out: list[Datagram] = []
        for dial in sorted(self._dials.values(), key=lambda d: d.deadline):
            if dial.deadline > now:
                continue
            if dial.attempts >= self.config.handshake_max_attempts:
                self.counters["handshake_timeouts"] += 1
                self._end_dial(dial, failed=True)
                continue
            if dial.session is not None and dial.final_sends >= FINAL_RESENDS:
                # Message 3 keeps getting lost (or the responder forgot us): start over, so the
                # responder replaces whatever half-confirmed session it holds with a fresh one.
                self._sessions.pop(dial.session.local_index, None)
                self._dial_index.pop(dial.local_index, None)
                dial.session = None
            if dial.session is None:
                out += self._send_init(dial, now)
            else:  # message 3 or the confirmation was lost: resend the same message 3
                dial.final_sends += 1
                dial.attempts += 1
                dial.deadline = now + self.config.handshake_retry_seconds
                self.counters["handshake_retransmits"] += 1
                out.append(Datagram(dial.addr, dial.final))
        for idx in [i for i, a in self._accepts.items() if a.deadline <= now]:
            self._forget_accept(idx)
            self.counters["handshake_responder_timeouts"] += 1
        for peer in sorted(self._previous):
            s = self._previous[peer]
            if (s.expires_at is not None and s.expires_at <= now) or now - s.created_at >= self.config.reject_after_seconds:
                self._drop_session(s)
        for peer in sorted(self._current):
            s = self._current[peer]
            if now - s.created_at >= self.config.reject_after_seconds:
                self._drop_session(s)
                self.counters["sessions_expired"] += 1
        return out

    # ------------------------------------------------------------------ handshake

    def _new_index(self) -> int:
        while True:
            idx = self.rng.getrandbits(32)
            if idx not in self._sessions and idx not in self._accepts and idx not in self._dial_index:
                return idx

    def _send_init(self, dial: _Dial, now: float) -> list[Datagram]:
        # Every retry is a fresh handshake (new ephemeral, new index): a lost or forged message 2
        # leaves no half-read Noise state to resume from.
        if dial.conn is not None:
            self._dial_index.pop(dial.local_index, None)
        dial.local_index = self._new_index()
        dial.ik = dial.expected_x25519 is not None and dial.attempts < IK_ATTEMPTS
        dial.conn = new_handshake(
            self.identity, self.psk, True, PROLOGUE_UDP, dial.expected_x25519 if dial.ik else None
        )
        dial.hs = handshake_state(dial.conn)
        self._dial_index[dial.local_index] = dial
        dial.attempts += 1
        dial.deadline = now + self.config.handshake_retry_seconds
        if dial.ik:
            msg = _write(dial.conn, encode_identity(self.identity, dial.local_index))
            if msg is not None:
                self.counters["handshake_ik_inits_sent"] += 1
                return [Datagram(dial.addr, bytes([T_IK_INIT]) + msg)]
            # The X25519 key we were given is unusable (a low-order point): forget it, dial with XX.
            self.counters["handshake_bad_static_key"] += 1
            dial.expected_x25519 = None
            dial.ik = False
            dial.conn = new_handshake(self.identity, self.psk, True, PROLOGUE_UDP)
            dial.hs = handshake_state(dial.conn)
        self.counters["handshake_inits_sent"] += 1
        msg1 = bytes(dial.conn.write_message(encode_hello(dial.local_index)))
        return [Datagram(dial.addr, bytes([T_INIT]) + msg1)]

    def _on_init(self, addr: Addr, data: bytes, now: float) -> list[Datagram]:
        if len(data) != 1 + MSG1_LEN:
            self.counters["datagram_malformed"] += 1
            return []
        if self._replayed_ephemeral(data[1:33], now):
            return []
        # psk is mixed first: message 1 authenticates under exactly one accepted mesh secret (tried
        # in order, the one we dial with first), and the rest of the handshake uses that one.
        read = read_message_1(self.identity, self.accepted_psks, PROLOGUE_UDP, data[1:])
        if read is None:
            # Wrong mesh secret (or a forged message 1): silence, no state, just a count.
            self.counters["handshake_psk_failures"] += 1
            self._tell_refused("psk_failure", addr)
            return []
        conn, hs, payload, which = read
        if which:
            self.counters["handshake_psk_alternate"] += 1
        self._remember_ephemeral(data[1:33], now)
        remote_index = decode_hello(bytes(payload))
        if remote_index is None:
            self._refuse("version_mismatch", addr)
            return []
        idx = self._new_index()
        msg2 = _write(conn, encode_identity(self.identity, idx))
        if msg2 is None:  # a PSK holder sent a low-order ephemeral key: the DH fails
            self.counters["handshake_invalid"] += 1
            return []
        self._make_room(addr)
        self._accepts[idx] = _Accept(addr, conn, hs, idx, remote_index, now + self.config.responder_timeout)
        self.counters["handshake_responses_sent"] += 1
        return [Datagram(addr, bytes([T_RESP]) + remote_index.to_bytes(4, "big") + msg2)]

    def _refuse(self, reason: str, addr: Addr) -> None:
        self.counters[f"handshake_refused_{reason}"] += 1
        self._tell_refused(reason, addr)

    def _tell_refused(self, reason: str, addr: Addr) -> None:
        if self.on_refused is not None:
            self.on_refused(reason, addr)

    def _replayed_ephemeral(self, e: bytes, now: float) -> bool:
        """True (and counted) if an authenticated message 1 with this ephemeral key came recently.

        Our initiators never reuse an ephemeral key (every retry is a fresh handshake), so a repeat is
        a replay or a network duplicate: it gets no answer and costs no DH. Only message 1s that
        authenticated are remembered, so a forged copy cannot get the genuine one refused.
        """
        until = self._seen_ephemeral.get(e)
        if until is not None and until > now:
            self.counters["handshake_replayed"] += 1
            return True
        return False

    def _remember_ephemeral(self, e: bytes, now: float) -> None:
        seen = self._seen_ephemeral
        seen.pop(e, None)
        seen[e] = now + self.config.replay_cache_seconds
        # Insertion order is expiry order (now only grows), so the oldest entries are in front.
        while seen and (len(seen) > self.config.replay_cache_size or next(iter(seen.values())) <= now):
            del seen[next(iter(seen))]

    def _make_room(self, addr: Addr) -> None:
        """Enforce the half-open bounds before adding one from ``addr``."""
        mine = [i for i, a in self._accepts.items() if a.addr == addr]
        if len(mine) >= self.config.max_pending_per_addr:
            self._forget_accept(mine[0])  # dict order = arrival order: drop the oldest from this address
            self.counters["handshake_pending_evicted"] += 1
        elif len(self._accepts) >= self.config.max_pending_total:
            self._forget_accept(next(iter(self._accepts)))
            self.counters["handshake_pending_evicted"] += 1

    def _forget_accept(self, idx: int) -> None:
        acc = self._accepts.pop(idx)
        if acc.session is not None and not acc.session.confirmed:
            self._sessions.pop(acc.session.local_index, None)

    def _on_ik_init(self, addr: Addr, data: bytes, now: float) -> list[Datagram]:
        if len(data) != 1 + IK1_LEN:
            self.counters["datagram_malformed"] += 1
            return []
        if self._replayed_ephemeral(data[1:33], now):
            return []
        conn = new_handshake(self.identity, self.psk, False, PROLOGUE_UDP, b"")
        hs = handshake_state(conn)
        try:
            payload = conn.read_message(data[1:])
        except NOISE_ERRORS:
            # Not for our static key (stale key at the initiator) or forged: silence.
            self.counters["handshake_invalid"] += 1
            return []
        self._remember_ephemeral(data[1:33], now)
        # The initiator's identity is checked before we answer: an unadmitted key gets silence.
        peer, remote_index, reason = check_peer(bytes(payload), remote_static(hs), self.admit)
        if peer is None:
            self._refuse(reason, addr)
            return []
        idx = self._new_index()
        msg2 = _write(conn, encode_identity(self.identity, idx))
        if msg2 is None:
            self.counters["handshake_invalid"] += 1
            return []
        self._make_room(addr)
        np = conn.noise_protocol
        s = _Session(idx, remote_index, peer, addr, np.cipher_state_encrypt, np.cipher_state_decrypt,
                     self.config.replay_window, now, initiator=False)
        # Nothing proves the initiator holds the PSK (or that message 1 is not a replay) until its
        # first datagram on this session arrives: only then is the session used for sending.
        s.confirmed = False
        self._sessions[idx] = s
        self._accepts[idx] = _Accept(addr, None, None, idx, remote_index, now + self.config.reject_after_seconds, s)
        self.counters["handshake_responses_sent"] += 1
        return [Datagram(addr, bytes([T_IK_RESP]) + remote_index.to_bytes(4, "big") + msg2)]

    def _on_ik_resp(self, addr: Addr, data: bytes, now: float) -> tuple[list[Delivered], list[Datagram]]:
        if len(data) != 5 + IK2_LEN:
            self.counters["datagram_malformed"] += 1
            return [], []
        idx = int.from_bytes(data[1:5], "big")
        dial = self._dial_index.get(idx)
        if dial is None or dial.conn is None or not dial.ik or dial.expected_x25519 is None:
            self.counters["handshake_unexpected"] += 1
            return [], []
        conn = dial.conn
        dial.conn = None
        dial.hs = None
        del self._dial_index[idx]
        expected = dial.expected_x25519
        # Fails if tampered, or if the responder holds another mesh secret (psk2 is proven here).
        admitted = self._admit_reply(dial, conn, data, lambda: expected)
        if admitted is None:
            return [], []
        peer, remote_index = admitted
        np = conn.noise_protocol
        s = _Session(idx, remote_index, peer, addr, np.cipher_state_encrypt, np.cipher_state_decrypt,
                     self.config.replay_window, now, initiator=True)
        s.confirmed = True  # message 2 proved the responder's static key, ephemeral and the PSK
        self._sessions[idx] = s
        self._end_dial(dial, failed=False)
        self.counters["handshakes_completed"] += 1
        out = self._install(s, now)
        if not out:  # the responder waits for our first datagram before it uses the session
            out.append(Datagram(s.addr, self._seal(s, b"")))
        return [], out

    def _admit_reply(
        self, dial: _Dial, conn: NoiseConnection, data: bytes, rs: Callable[[], bytes]
    ) -> tuple[NodeIdentity, int] | None:
        """Read a dial's message 2 and admit the responder, or count why not (ending the dial if refused)."""
        try:
            payload = conn.read_message(data[5:])
        except NOISE_ERRORS:
            self.counters["handshake_invalid"] += 1
            return None
        # ``rs`` is asked only now: in XX the responder's static key arrives in this very message.
        peer, remote_index, reason = check_peer(
            bytes(payload), rs(), self.admit, dial.expected_node_id, dial.expected_ed25519
        )
        if peer is None:
            self._refuse(reason, dial.addr)
            self._end_dial(dial, failed=True)
            return None
        return peer, remote_index

    def _on_resp(self, addr: Addr, data: bytes, now: float) -> tuple[list[Delivered], list[Datagram]]:
        if len(data) != 5 + MSG2_LEN:
            self.counters["datagram_malformed"] += 1
            return [], []
        idx = int.from_bytes(data[1:5], "big")
        dial = self._dial_index.get(idx)
        if dial is None or dial.conn is None or dial.hs is None or dial.session is not None or dial.ik:
            self.counters["handshake_unexpected"] += 1
            return [], []
        conn, hs = dial.conn, dial.hs
        # This attempt is used up whatever happens; a retry starts a fresh one.
        dial.conn = None
        dial.hs = None
        del self._dial_index[idx]
        # A refusal comes before message 3: the responder never learns our identity.
        admitted = self._admit_reply(dial, conn, data, lambda: remote_static(hs))
        if admitted is None:
            return [], []
        peer, remote_index = admitted
        msg3 = _write(conn, encode_identity(self.identity, idx))
        if msg3 is None:
            self.counters["handshake_invalid"] += 1
            return [], []
        np = conn.noise_protocol
        s = _Session(idx, remote_index, peer, addr, np.cipher_state_encrypt, np.cipher_state_decrypt,
                     self.config.replay_window, now, initiator=True)
        self._sessions[idx] = s
        self._dial_index[idx] = dial
        dial.session = s
        dial.final_sends = 1
        dial.final = bytes([T_FINAL]) + remote_index.to_bytes(4, "big") + msg3
        dial.deadline = now + self.config.handshake_retry_seconds
        return [], [Datagram(addr, dial.final)]

    def _on_final(self, addr: Addr, data: bytes, now: float) -> list[Datagram]:
        if len(data) != 5 + MSG3_LEN:
            self.counters["datagram_malformed"] += 1
            return []
        idx = int.from_bytes(data[1:5], "big")
        acc = self._accepts.get(idx)
        if acc is None or acc.conn is None or acc.hs is None:
            s = self._sessions.get(idx)
            if s is not None and not s.initiator and s.final_digest == hashlib.blake2s(data).digest():
                # Our confirmation was lost and the initiator resent message 3: confirm again.
                self.counters["handshake_confirm_resent"] += 1
                return [Datagram(s.addr, self._seal(s, b""))]
            self.counters["handshake_unexpected"] += 1
            return []
        del self._accepts[idx]
        try:
            payload = acc.conn.read_message(data[5:])
        except NOISE_ERRORS:
            self.counters["handshake_invalid"] += 1
            return []
        peer, remote_index, reason = check_peer(bytes(payload), remote_static(acc.hs), self.admit)
        if peer is None:
            self._refuse(reason, addr)
            return []
        if remote_index != acc.remote_index:
            self.counters["handshake_invalid"] += 1
            return []
        np = acc.conn.noise_protocol
        s = _Session(idx, acc.remote_index, peer, addr, np.cipher_state_encrypt, np.cipher_state_decrypt,
                     self.config.replay_window, now, initiator=False)
        s.final_digest = hashlib.blake2s(data).digest()
        self._sessions[idx] = s
        self.counters["handshakes_completed"] += 1
        out = self._install(s, now)
        # The first datagram confirms the session to the initiator; an empty one is a keepalive.
        if not out:
            out.append(Datagram(s.addr, self._seal(s, b"")))
        return out

    def _install(self, s: _Session, now: float) -> list[Datagram]:
        """Make ``s`` the sending session for its peer and flush what was queued for it."""
        peer = s.peer.node_id
        if self.on_established is not None:
            self.on_established(peer, s.addr)
        old = self._current.get(peer)
        if (
            old is not None
            and now - old.created_at < self.config.handshake_retry_seconds
            and self._initiator_id(old) < self._initiator_id(s)
        ):
            # Both nodes dialled each other at once and both handshakes completed. Each side must
            # end up sending on the same session, whatever order the messages arrived in: the one
            # started by the smaller node id wins; the other only decrypts during its grace period.
            s.expires_at = now + self.config.grace_seconds
            prev = self._previous.pop(peer, None)
            if prev is not None:
                self._sessions.pop(prev.local_index, None)
            self._previous[peer] = s
            self._last_addr[peer] = s.addr
            return [Datagram(old.addr, self._seal(old, p)) for p in self._queue.pop(peer, [])]
        if old is not None and old is not s:
            prev = self._previous.pop(peer, None)
            if prev is not None:
                self._sessions.pop(prev.local_index, None)
            old.expires_at = now + self.config.grace_seconds
            self._previous[peer] = old
        self._current[peer] = s
        self._last_addr[peer] = s.addr
        return [Datagram(s.addr, self._seal(s, p)) for p in self._queue.pop(peer, [])]

    def _initiator_id(self, s: _Session) -> str:
        return self.identity.node_id if s.initiator else s.peer.node_id

    def _end_dial(self, dial: _Dial, failed: bool) -> None:
        self._dials.pop(dial.addr, None)
        self._dial_index.pop(dial.local_index, None)
        if failed:
            if dial.session is not None and not dial.session.confirmed:
                self._sessions.pop(dial.session.local_index, None)
            if dial.expected_node_id is not None and dial.expected_node_id not in self._current:
                dropped = self._queue.pop(dial.expected_node_id, [])
                self.counters["queue_dropped"] += len(dropped)

    def _drop_session(self, s: _Session) -> None:
        self._sessions.pop(s.local_index, None)
        peer = s.peer.node_id
        if self._current.get(peer) is s:
            del self._current[peer]
        if self._previous.get(peer) is s:
            del self._previous[peer]

    # ------------------------------------------------------------------ data

    def _seal(self, s: _Session, plaintext: bytes) -> bytes:
        header = bytes([T_DATA]) + s.remote_index.to_bytes(4, "big") + s.sent.to_bytes(8, "big")
        nonce = _NONCE_PAD + s.sent.to_bytes(8, "little")
        s.sent += 1
        self.counters["datagrams_sealed"] += 1
        return header + s.send.encrypt(nonce, plaintext, header)

    def _on_data(self, addr: Addr, data: bytes, now: float) -> tuple[list[Delivered], list[Datagram]]:
        if len(data) < DATAGRAM_OVERHEAD:
            self.counters["datagram_malformed"] += 1
            return [], []
        idx = int.from_bytes(data[1:5], "big")
        s = self._sessions.get(idx)
        if s is None:
            self.counters["datagram_unknown_session"] += 1
            return [], []
        if now - s.created_at >= self.config.reject_after_seconds:
            self._drop_session(s)
            self.counters["sessions_expired"] += 1
            self.counters["datagram_unknown_session"] += 1
            return [], []
        counter = int.from_bytes(data[5:13], "big")
        if counter > MAX_COUNTER:
            self.counters["datagram_malformed"] += 1
            return [], []
        verdict = s.window.check(counter)
        if verdict is ReplayVerdict.DUPLICATE:
            self.counters["datagram_replayed"] += 1
            return [], []
        if verdict is ReplayVerdict.TOO_OLD:
            self.counters["datagram_too_old"] += 1
            return [], []
        header = data[:DATA_HEADER_LEN]
        try:
            plaintext = s.recv.decrypt(_NONCE_PAD + data[5:13][::-1], data[DATA_HEADER_LEN:], header)
        except NOISE_ERRORS:
            self.counters["datagram_decrypt_failures"] += 1
            return [], []
        s.window.accept(counter)
        self.counters["datagrams_opened"] += 1
        if s.expires_at is not None:
            # The peer still sends on the superseded session (it raced us with its own handshake and
            # prefers the other one): keep it while it is used, never beyond reject_after_seconds.
            s.expires_at = max(s.expires_at, now + self.config.grace_seconds)
        out: list[Datagram] = []
        if s.addr != addr and (self._current.get(s.peer.node_id) is s or not s.confirmed):
            s.addr = addr  # authenticated roaming, as WireGuard does
            self._last_addr[s.peer.node_id] = addr
        if not s.confirmed:
            s.confirmed = True
            self._accepts.pop(idx, None)  # an IK responder session waiting for this first datagram
            self.counters["handshakes_completed"] += 1
            dial = self._dial_index.get(idx)
            if dial is not None and dial.session is s:
                self._end_dial(dial, failed=False)
            out = self._install(s, now)
        delivered = [Delivered(s.peer.node_id, bytes(plaintext))] if plaintext else []
        return delivered, out


__all__ = [
    "DATAGRAM_OVERHEAD",
    "Datagram",
    "Delivered",
    "SecureTransport",
    "TransportConfig",
    "TransportError",
]
