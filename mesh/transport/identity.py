"""Node identity for the secure transport: an Ed25519 key (the node id) bound to an X25519 Noise key.

Choice (documented in docs/TRANSPORT.md): the X25519 static key used by Noise is a *separate* key
stored next to the node's Ed25519 key (``node.x25519``, 32 raw bytes, mode 0600), not derived from
the Ed25519 key. The Ed25519 key signs ``BINDING_CONTEXT + x25519_public``; that signature travels in
the (encrypted) handshake payload, so a peer learns which node id the Noise static key speaks for and
can check it against membership and the admission list. A separate key keeps each key to one
algorithm and lets the Noise key rotate without changing the node id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from crdt.files import atomic_write, private_file_problem
from mesh.transport.errors import TransportError
from model.keys import key_id

BINDING_CONTEXT = b"wasmatrix/noise-static-key/v1\x00"
_RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def node_id_of(ed25519_public: bytes) -> str:
    """Node id: the one key id (``model.keys.key_id``) of the Ed25519 public key."""
    return key_id(ed25519_public)


@dataclass(slots=True, frozen=True)
class NodeIdentity:
    """The public identity a node proves in the handshake: node id, both public keys, binding signature."""

    node_id: str
    ed25519_public: bytes
    x25519_public: bytes
    binding_signature: bytes

    def verify(self) -> bool:
        """True when the id matches the Ed25519 key and the signature binds the X25519 key to it."""
        if len(self.ed25519_public) != 32 or len(self.x25519_public) != 32 or len(self.binding_signature) != 64:
            return False
        if node_id_of(self.ed25519_public) != self.node_id:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(self.ed25519_public).verify(
                self.binding_signature, BINDING_CONTEXT + self.x25519_public
            )
        except (InvalidSignature, ValueError):
            return False
        return True


@dataclass(slots=True, frozen=True)
class LocalIdentity:
    """This node's private keys and the public identity derived from them."""

    # Private material stays out of repr: an identity printed in a traceback or a log line
    # must not leak the Noise static key (raw bytes) or the signing key.
    ed25519_private: Ed25519PrivateKey = field(repr=False)
    x25519_private_raw: bytes = field(repr=False)
    public: NodeIdentity

    @classmethod
    def from_keys(cls, ed25519_private: Ed25519PrivateKey, x25519_private_raw: bytes) -> "LocalIdentity":
        """Bind an X25519 private key (32 raw bytes) to an Ed25519 key by signing its public half."""
        if len(x25519_private_raw) != 32:
            raise TransportError("an X25519 private key is exactly 32 bytes")
        ed_pub = ed25519_private.public_key().public_bytes(*_RAW)
        x_pub = X25519PrivateKey.from_private_bytes(x25519_private_raw).public_key().public_bytes(*_RAW)
        sig = ed25519_private.sign(BINDING_CONTEXT + x_pub)
        return cls(ed25519_private, bytes(x25519_private_raw), NodeIdentity(node_id_of(ed_pub), ed_pub, x_pub, sig))

    @classmethod
    def from_seeds(cls, ed25519_seed: bytes, x25519_seed: bytes) -> "LocalIdentity":
        """A deterministic identity from two 32-byte seeds (simulations, tests)."""
        if len(ed25519_seed) != 32:
            raise TransportError("an Ed25519 seed is exactly 32 bytes")
        return cls.from_keys(Ed25519PrivateKey.from_private_bytes(ed25519_seed), x25519_seed)

    @property
    def node_id(self) -> str:
        """This node's id."""
        return self.public.node_id


def load_or_create_x25519(path: Path) -> bytes:
    """Read the 32-byte X25519 private key at ``path``, creating it (mode 0600, atomically) if absent."""
    if not path.exists():
        raw = X25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            # Temp file + fsync + link + dir fsync: a crash never leaves a short key file, and a
            # concurrent creator's key is never overwritten (we then use theirs, read below).
            atomic_write(path, raw, 0o600, replace=False)
            return raw
        except FileExistsError:
            pass
    problem = private_file_problem(path, "X25519 key")
    if problem is not None:
        raise TransportError(problem)
    raw = path.read_bytes()
    if len(raw) != 32:
        raise TransportError(f"{path} must hold exactly 32 raw bytes (an X25519 private key), has {len(raw)}")
    return raw
