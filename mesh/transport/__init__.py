"""The secure transport: Noise_XXpsk0 handshakes, replay-protected datagrams and framed streams (sans-IO)."""

from mesh.transport.errors import FrameTooLarge, TransportError
from mesh.transport.identity import LocalIdentity, NodeIdentity, load_or_create_x25519, node_id_of
from mesh.transport.noise import DATAGRAM_OVERHEAD, Datagram, Delivered, SecureTransport, TransportConfig
from mesh.transport.replay import ReplayVerdict, ReplayWindow
from mesh.transport.stream import (
    MAX_STREAM_PLAINTEXT,
    Closed,
    Established,
    Message,
    Outgoing,
    StreamEvent,
    StreamSession,
)

__all__ = [
    "DATAGRAM_OVERHEAD",
    "MAX_STREAM_PLAINTEXT",
    "Closed",
    "Datagram",
    "Delivered",
    "Established",
    "FrameTooLarge",
    "LocalIdentity",
    "Message",
    "NodeIdentity",
    "Outgoing",
    "ReplayVerdict",
    "ReplayWindow",
    "SecureTransport",
    "StreamEvent",
    "StreamSession",
    "TransportConfig",
    "TransportError",
    "load_or_create_x25519",
    "node_id_of",
]
