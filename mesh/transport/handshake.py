"""Noise_XXpsk0 handshake helpers shared by the datagram and stream transports.

Pattern (Noise spec section 9.4, psk0 modifier)::

    -> psk, e                       payload: hello (version, sender index)
    <- e, ee, s, es                 payload: identity (version, sender index, Ed25519 key, binding sig)
    -> s, se                        payload: identity

The PSK is mixed before anything else, so a responder without the mesh secret cannot read message 1
(its payload fails to authenticate: ``InvalidTag``) and never reveals its static key. After message 2
the initiator knows the responder's Noise static key (authenticated by ``es``) and checks the identity
bound to it before it sends message 3; the responder does the same on message 3 (``se``).
"""

from __future__ import annotations

from typing import Callable, Sequence

from cryptography.exceptions import InvalidTag
from noise.connection import Keypair, NoiseConnection
from noise.exceptions import NoiseHandshakeError, NoiseInvalidMessage, NoiseMaxNonceError, NoiseValueError
from noise.state import HandshakeState

from mesh.errors import ConfigError
from mesh.transport.identity import LocalIdentity, NodeIdentity, node_id_of

PROTOCOL_NAME = b"Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s"
IK_PROTOCOL_NAME = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
VERSION = 1
PROLOGUE_UDP = b"wasmatrix/udp/1"
PROLOGUE_TCP = b"wasmatrix/tcp/1"
TAG_LEN = 16
DH_LEN = 32
IDENTITY_LEN = 1 + 4 + 32 + 64  # version, sender index, Ed25519 public key, binding signature
MSG2_LEN = DH_LEN + DH_LEN + TAG_LEN + IDENTITY_LEN + TAG_LEN  # e, s, payload
# Message 1's payload: version, sender index, then zeros so that message 1 is as long as the
# message 2 it asks for (type + e + payload + tag == type + index + MSG2_LEN). A responder
# never sends more bytes to an unauthenticated address than it received from it
# (amplification <= 1), even to a PSK holder spoofing a victim's source address.
HELLO_LEN = 4 + MSG2_LEN - DH_LEN - TAG_LEN  # 153: 1 + 4 + 148 zero bytes
MSG1_LEN = DH_LEN + HELLO_LEN + TAG_LEN  # e, payload
MSG3_LEN = DH_LEN + TAG_LEN + IDENTITY_LEN + TAG_LEN  # s, payload
IK1_LEN = DH_LEN + DH_LEN + TAG_LEN + IDENTITY_LEN + TAG_LEN  # IKpsk2 message 1: e, s, payload
IK2_LEN = DH_LEN + IDENTITY_LEN + TAG_LEN  # IKpsk2 message 2: e, payload

# What the noise library (and cryptography under it) raises on bytes that do not authenticate or parse.
NOISE_ERRORS: tuple[type[Exception], ...] = (
    InvalidTag,
    ValueError,
    NoiseHandshakeError,
    NoiseInvalidMessage,
    NoiseMaxNonceError,
    NoiseValueError,
)

Admit = Callable[[str, bytes], bool]
MAX_PSKS = 2  # the current mesh secret and, during a rotation window, the previous one


def new_handshake(
    identity: LocalIdentity, psk: bytes, initiator: bool, prologue: bytes, responder_static: bytes | None = None
) -> NoiseConnection:
    """A started handshake: XXpsk0, or IKpsk2 when the initiator passes the responder's static key
    (the responder passes ``b""`` to ask for IKpsk2). The ephemeral key comes from the library."""
    conn = NoiseConnection.from_name(IK_PROTOCOL_NAME if responder_static is not None else PROTOCOL_NAME)
    conn.set_psks(psk=psk)
    conn.set_prologue(prologue)
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_keypair_from_private_bytes(Keypair.STATIC, identity.x25519_private_raw)
    if initiator and responder_static is not None:
        conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, responder_static)
    conn.start_handshake()
    return conn


def check_psks(send: bytes, accepted: Sequence[bytes] | None = None) -> tuple[bytes, ...]:
    """The accepted mesh secrets in trial order, ``send`` first; ConfigError if any is not 32
    bytes, if ``send`` is not among ``accepted``, or if there are more than ``MAX_PSKS``."""
    send = bytes(send)
    rest = [bytes(p) for p in (accepted if accepted is not None else (send,))]
    if any(len(p) != 32 for p in [send, *rest]):
        raise ConfigError("the mesh secret (Noise PSK) is exactly 32 bytes")
    if send not in rest:
        raise ConfigError("the mesh secret used to dial must be one of the accepted ones")
    psks = [send] + [p for i, p in enumerate(rest) if p != send and p not in rest[:i]]
    if len(psks) > MAX_PSKS:
        raise ConfigError(f"at most {MAX_PSKS} mesh secrets are accepted at once (current and previous)")
    return tuple(psks)


def read_message_1(
    identity: LocalIdentity, psks: Sequence[bytes], prologue: bytes, message: bytes
) -> tuple[NoiseConnection, HandshakeState, bytes, int] | None:
    """Read an XXpsk0 message 1 as responder under each PSK in turn: (connection, its handshake
    state, payload, index of the PSK that authenticated it), or None if none did.

    psk0 is mixed before ``e``, so a message made with another secret fails its AEAD tag: each
    trial costs a hash chain and one ChaCha20-Poly1305 check, no DH.
    """
    for i, psk in enumerate(psks):
        conn = new_handshake(identity, psk, False, prologue)
        hs = handshake_state(conn)
        try:
            payload = conn.read_message(message)
        except NOISE_ERRORS:
            continue
        return conn, hs, bytes(payload), i
    return None


def handshake_state(conn: NoiseConnection) -> HandshakeState:
    """The live HandshakeState; keep it before the last read, which deletes it from the connection."""
    return conn.noise_protocol.handshake_state


def remote_static(hs: HandshakeState) -> bytes:
    """The peer's Noise static public key learned (and authenticated) during the handshake."""
    return bytes(hs.rs.public_bytes)


_HELLO_PAD = bytes(HELLO_LEN - 5)


def encode_hello(index: int) -> bytes:
    """Message-1 payload (padded: see HELLO_LEN)."""
    return bytes([VERSION]) + index.to_bytes(4, "big") + _HELLO_PAD


def decode_hello(payload: bytes) -> int | None:
    """Sender index from a message-1 payload, or None if it is not ours."""
    if len(payload) != HELLO_LEN or payload[0] != VERSION or payload[5:] != _HELLO_PAD:
        return None
    return int.from_bytes(payload[1:5], "big")


def encode_identity(identity: LocalIdentity, index: int) -> bytes:
    """Message-2/3 payload: version, sender index, Ed25519 public key, binding signature."""
    pub = identity.public
    return bytes([VERSION]) + index.to_bytes(4, "big") + pub.ed25519_public + pub.binding_signature


def check_peer(
    payload: bytes,
    rs: bytes,
    admit: Admit,
    expected_node_id: str | None = None,
    expected_ed25519: bytes | None = None,
) -> tuple[NodeIdentity | None, int, str]:
    """(identity, sender index, "") if the peer proves an admitted identity for Noise key ``rs``, else (None, 0, reason).

    Reasons: ``bad_payload``, ``version_mismatch``, ``bad_binding``, ``unexpected_peer``, ``not_admitted``.
    """
    if len(payload) != IDENTITY_LEN:
        return None, 0, "bad_payload"
    if payload[0] != VERSION:
        return None, 0, "version_mismatch"
    index = int.from_bytes(payload[1:5], "big")
    ed = bytes(payload[5:37])
    peer = NodeIdentity(node_id_of(ed), ed, rs, bytes(payload[37:101]))
    # The signature is checked over the static key Noise authenticated, never over a claimed field.
    if not peer.verify():
        return None, 0, "bad_binding"
    if expected_node_id is not None and peer.node_id != expected_node_id:
        return None, 0, "unexpected_peer"
    if expected_ed25519 is not None and ed != expected_ed25519:
        return None, 0, "unexpected_peer"
    if not admit(peer.node_id, ed):
        return None, 0, "not_admitted"
    return peer, index, ""
