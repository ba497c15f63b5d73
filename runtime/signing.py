"""Publisher signatures over manifests and the node's trust store of publisher keys.

The registry holds chained signed log records (``crdt.logrecord``): the publisher's signature
covers ``model.canonical.log_signing_bytes(signer, seq, prev, "registry", name@version, False,
manifest payload, wall_ms)``. A node admits what the registry holds by passing the record's
payload, signer, signature, seq, ``prev`` and ``wall_ms`` here; no second signature exists.
A :class:`SignedManifest` without ``prev``/``wall_ms`` is the standalone form
(``model.manifest_signing_bytes(manifest, seq)``) that :class:`Publisher` signs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from model.canonical import canonical_encode, log_signing_bytes
from model.errors import SpecError
from model.keys import KEY_ID_LEN, key_id
from model.manifest import Manifest, manifest_signing_bytes
from runtime.errors import ManifestError, SignatureError

# Bounds every decoder: a manifest is small; anything larger is hostile.
MAX_MANIFEST_BYTES = 64 << 10
MAX_SEQ = 2**62


def bounded_decode(data: bytes, what: str) -> Any:
    """Decode msgpack from an untrusted source with size bounds; raise ManifestError on failure."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{what} is {len(data)} bytes, over the {MAX_MANIFEST_BYTES} byte limit")
    try:
        # The length check above bounds every container and string inside.
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise ManifestError(f"{what} is not valid msgpack: {exc}") from exc


@dataclass(slots=True, frozen=True)
class SignedManifest:
    """A manifest, the id of the key that signed it, the publisher's sequence number, the signature."""

    manifest: Manifest
    key_id: str
    signature: bytes
    seq: int = 1
    prev: bytes | None = None  # the registry log record's chain link (None: standalone form)
    wall_ms: int | None = None  # the registry log record's wall time

    def signed_bytes(self) -> bytes:
        """What the signature covers: the registry log record's bytes, or the standalone form."""
        if self.prev is not None and self.wall_ms is not None:
            return log_signing_bytes(self.key_id, self.seq, self.prev, "registry", self.manifest.key, False, self.manifest.to_payload(), self.wall_ms)
        return manifest_signing_bytes(self.manifest, self.seq)

    @classmethod
    def from_record(
        cls, payload: Any, signer: str, signature: bytes, seq: int, *, prev: bytes | None = None, wall_ms: int | None = None,
    ) -> SignedManifest:
        """The registry record's parts (payload, signer key id, signature, seq, prev, wall_ms) as a signed manifest."""
        if not isinstance(signer, str) or len(signer) != KEY_ID_LEN:
            raise SignatureError("signed manifest key_id is not a key id")
        if not isinstance(signature, bytes) or len(signature) != 64:
            raise SignatureError("signed manifest signature is not 64 bytes")
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 < seq < MAX_SEQ:
            raise ManifestError("signed manifest seq is out of range")
        if (prev is None) != (wall_ms is None):
            raise ManifestError("a registry record's prev and wall_ms come together")
        if prev is not None and (not isinstance(prev, bytes) or len(prev) != (0 if seq == 1 else 32)):
            raise ManifestError("signed manifest prev is not a record id")
        if wall_ms is not None and (not isinstance(wall_ms, int) or isinstance(wall_ms, bool) or not 0 <= wall_ms < 2**53):
            raise ManifestError("signed manifest wall_ms is out of range")
        try:
            manifest = Manifest.from_payload(payload)
        except SpecError as exc:
            raise ManifestError(f"invalid manifest: {exc}") from exc
        return cls(manifest, signer, signature, seq, prev, wall_ms)

    def to_bytes(self) -> bytes:
        """Wire/storage form: canonical msgpack."""
        obj: dict[str, Any] = {"manifest": self.manifest.to_payload(), "key_id": self.key_id, "sig": self.signature, "seq": self.seq}
        if self.prev is not None:
            obj |= {"prev": self.prev, "wall_ms": self.wall_ms}
        return canonical_encode(obj)

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedManifest:
        """Parse the wire form; raises ManifestError or SignatureError on malformed input."""
        obj = bounded_decode(data, "signed manifest")
        base = {"manifest", "key_id", "sig", "seq"}
        if not isinstance(obj, dict) or set(obj) not in (base, base | {"prev", "wall_ms"}):
            raise ManifestError("signed manifest must have exactly manifest, key_id, sig and seq (and prev with wall_ms)")
        return cls.from_record(obj["manifest"], obj["key_id"], obj["sig"], obj["seq"], prev=obj.get("prev"), wall_ms=obj.get("wall_ms"))


class Publisher:
    """Holds a publisher's private key and signs manifests (as the registry record would)."""

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

    def sign(self, manifest: Manifest, seq: int = 1) -> SignedManifest:
        """Sign ``manifest`` as registry record number ``seq`` of this publisher."""
        signature = self._key.sign(manifest_signing_bytes(manifest, seq))
        return SignedManifest(manifest, self.key_id, signature, seq)


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
            public.verify(signed.signature, signed.signed_bytes())
        except InvalidSignature:
            raise SignatureError(
                f"signature on manifest {signed.manifest.key} does not verify (tampered manifest or wrong key)"
            ) from None
        return signed.manifest
