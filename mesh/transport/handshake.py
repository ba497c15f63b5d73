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

from typing import Callable

from cryptography.exceptions import InvalidTag
from noise.connection import Keypair, NoiseConnection
from noise.exceptions import NoiseHandshakeError, NoiseInvalidMessage, NoiseMaxNonceError, NoiseValueError
from noise.state import HandshakeState

from mesh.transport.identity import LocalIdentity, NodeIdentity, node_id_of

PROTOCOL_NAME = b"Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s"
IK_PROTOCOL_NAME = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
VERSION = 1
PROLOGUE_UDP = b"wasmatrix/udp/1"
PROLOGUE_TCP = b"wasmatrix/tcp/1"
TAG_LEN = 16
DH_LEN = 32
HELLO_LEN = 1 + 4  # version, sender index
IDENTITY_LEN = 1 + 4 + 32 + 64  # version, sender index, Ed25519 public key, binding signature
MSG1_LEN = DH_LEN + HELLO_LEN + TAG_LEN  # e, payload
MSG2_LEN = DH_LEN + DH_LEN + TAG_LEN + IDENTITY_LEN + TAG_LEN  # e, s, payload
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


def handshake_state(conn: NoiseConnection) -> HandshakeState:
    """The live HandshakeState; keep it before the last read, which deletes it from the connection."""
    return conn.noise_protocol.handshake_state


def remote_static(hs: HandshakeState) -> bytes:
    """The peer's Noise static public key learned (and authenticated) during the handshake."""
    return bytes(hs.rs.public_bytes)


def encode_hello(index: int) -> bytes:
    """Message-1 payload."""
    return bytes([VERSION]) + index.to_bytes(4, "big")


def decode_hello(payload: bytes) -> int | None:
    """Sender index from a message-1 payload, or None if it is not ours."""
    if len(payload) != HELLO_LEN or payload[0] != VERSION:
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
