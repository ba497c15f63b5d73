"""The one key id: how every package names an Ed25519 public key."""

from __future__ import annotations

import hashlib

KEY_ID_LEN = 16  # hex characters: 64 bits of SHA-256 of the raw public key


def key_id(public_raw: bytes) -> str:
    """Key id: the first 16 hex characters of SHA-256 over the 32 raw public-key bytes."""
    return hashlib.sha256(public_raw).hexdigest()[:KEY_ID_LEN]
