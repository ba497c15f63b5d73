"""Ed25519 publisher keys, signed manifests and the node's trust store."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from runtime.errors import ManifestError, SignatureError
from runtime.manifest import Manifest, bounded_decode, canonical_encode

# Domain separation: a manifest signature can never be replayed as another message type.
_DOMAIN = b"wasmatrix-manifest-v1\x00"


def key_id(public_key: bytes) -> str:
    """A short stable identifier of a raw 32-byte Ed25519 public key."""
    return hashlib.sha256(public_key).hexdigest()[:16]


@dataclass(slots=True, frozen=True)
class SignedManifest:
    """A manifest, the id of the key that signed it, and the signature."""

    manifest: Manifest
    key_id: str
    signature: bytes

    def to_bytes(self) -> bytes:
        """Wire/storage form: canonical msgpack."""
        return canonical_encode(
            {"manifest": self.manifest.to_dict(), "key_id": self.key_id, "sig": self.signature}
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedManifest:
        """Parse the wire form; raises ManifestError or SignatureError on malformed input."""
        obj = bounded_decode(data, "signed manifest")
        if not isinstance(obj, dict) or set(obj) != {"manifest", "key_id", "sig"}:
            raise ManifestError("signed manifest must have exactly manifest, key_id and sig")
        if not isinstance(obj["key_id"], str) or not isinstance(obj["sig"], bytes):
            raise SignatureError("signed manifest key_id or signature has the wrong type")
        return cls(Manifest.from_dict(obj["manifest"]), obj["key_id"], obj["sig"])


class Publisher:
    """Holds a publisher's private key and signs manifests."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_bytes = private_key.public_key().public_bytes_raw()
        self.key_id = key_id(self.public_bytes)

    @classmethod
    def generate(cls) -> Publisher:
        """Create a publisher with a fresh random key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> Publisher:
        """Load a publisher from a raw 32-byte private key."""
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    def sign(self, manifest: Manifest) -> SignedManifest:
        """Sign the canonical encoding of ``manifest``."""
        signature = self._key.sign(_DOMAIN + manifest.canonical_bytes())
        return SignedManifest(manifest, self.key_id, signature)


class TrustStore:
    """The publisher public keys this node accepts module manifests from."""

    def __init__(self, public_keys: Iterable[bytes] = ()) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        for raw in public_keys:
            self.add(raw)

    def add(self, public_key: bytes) -> str:
        """Trust a raw 32-byte Ed25519 public key; returns its key id."""
        if len(public_key) != 32:
            raise SignatureError(f"an Ed25519 public key is 32 bytes, got {len(public_key)}")
        kid = key_id(public_key)
        self._keys[kid] = Ed25519PublicKey.from_public_bytes(public_key)
        return kid

    def remove(self, kid: str) -> None:
        """Stop trusting a key (revocation)."""
        self._keys.pop(kid, None)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def verify(self, signed: SignedManifest) -> Manifest:
        """Return the manifest if a trusted key signed it, else raise SignatureError."""
        public = self._keys.get(signed.key_id)
        if public is None:
            raise SignatureError(
                f"manifest {signed.manifest.key} is signed by key {signed.key_id}, which this node does not trust"
            )
        try:
            public.verify(signed.signature, _DOMAIN + signed.manifest.canonical_bytes())
        except InvalidSignature:
            raise SignatureError(
                f"signature on manifest {signed.manifest.key} does not verify (tampered manifest or wrong key)"
            ) from None
        return signed.manifest
