"""Ed25519 signing keys: generation, PEM/raw loading; key ids are ``model.keys.key_id``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from crdt.errors import KeyFileError
from crdt.files import atomic_write

from model.keys import KEY_ID_LEN, key_id  # the one key id, shared with the runtime

__all__ = ["KEY_ID_LEN", "SigningKey", "key_id", "load_public_key", "load_signing_key", "verify_signature"]


@dataclass(slots=True, frozen=True)
class SigningKey:
    """An Ed25519 private key with its derived key id."""

    private: Ed25519PrivateKey
    public_raw: bytes
    key_id: str

    @classmethod
    def generate(cls) -> "SigningKey":
        """A fresh key from the OS random source (never used inside cores)."""
        return cls.from_private(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> "SigningKey":
        """A deterministic key from 32 seed bytes (simulations, tests)."""
        if len(seed) != 32:
            raise KeyFileError("an Ed25519 seed is exactly 32 bytes")
        return cls.from_private(Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def from_private(cls, private: Ed25519PrivateKey) -> "SigningKey":
        raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return cls(private, raw, key_id(raw))

    def sign(self, message: bytes) -> bytes:
        """Sign ``message``; 64-byte signature."""
        return self.private.sign(message)

    def private_pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the private key (PKCS8 PEM, mode 0600, atomically) and ``<path>.pub`` (public PEM)."""
        p = Path(path)
        try:
            # A new inode via temp + rename: the key ends 0600 even over an older 0644 file, and a
            # crash leaves the old key or the new one, never a truncated one.
            atomic_write(p, self.private_pem(), 0o600)
            atomic_write(Path(str(p) + ".pub"), self.public_pem(), 0o644)
        except OSError as exc:
            raise KeyFileError(f"cannot write key file {p}: {exc.strerror}") from None


def load_signing_key(path: str | os.PathLike[str]) -> SigningKey:
    """Load an Ed25519 private key from a PEM file or a raw 32-byte seed file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"key file {p} does not exist (create one with `wasmatrix keygen`)") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {p}: {exc.strerror}") from None
    if len(data) == 32:
        return SigningKey.from_seed(data)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except Exception:
        raise KeyFileError(f"{p} is not an unencrypted PEM private key or a raw 32-byte Ed25519 seed") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{p} holds a {type(key).__name__}, expected an Ed25519 key")
    return SigningKey.from_private(key)


def load_public_key(data: bytes) -> bytes:
    """Raw 32 public-key bytes from PEM or raw bytes."""
    if len(data) == 32:
        return bytes(data)
    try:
        key = serialization.load_pem_public_key(data)
    except Exception:
        raise KeyFileError("not a PEM public key or raw 32-byte Ed25519 public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"public key is a {type(key).__name__}, expected Ed25519")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def verify_signature(public_raw: bytes, signature: bytes, message: bytes) -> bool:
    """True if ``signature`` is a valid Ed25519 signature of ``message`` by ``public_raw``."""
    try:
        Ed25519PublicKey.from_public_bytes(public_raw).verify(signature, message)
        return True
    except (InvalidSignature, ValueError):
        return False
