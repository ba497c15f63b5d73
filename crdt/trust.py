"""Trust configuration: which public keys hold which roles, and which key each admitted node has."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, Mapping

from crdt.errors import TrustError
from crdt.files import atomic_write
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from crdt.keys import key_id


class Role(str, Enum):
    """Roles of seed 004 plus ``node`` (the identity key of an admitted node)."""

    ADMIN = "admin"
    OPERATOR = "operator"
    DEVELOPER = "developer"
    PUBLISHER = "publisher"
    VIEWER = "viewer"
    NODE = "node"


# Which roles may write each document kind. Admin may write everything except another
# node's placement entry (placement is single-writer: only the node's own key).
WRITE_ROLES: dict[str, frozenset[Role]] = {
    "registry": frozenset({Role.PUBLISHER, Role.DEVELOPER, Role.ADMIN}),
    "deployments": frozenset({Role.OPERATOR, Role.ADMIN}),
    "routes": frozenset({Role.OPERATOR, Role.ADMIN}),
    "tenant": frozenset({Role.OPERATOR, Role.ADMIN}),
    "kv": frozenset({Role.NODE, Role.ADMIN}),
    "placement": frozenset({Role.NODE}),
}
WRITE_ROLES["subscriptions"] = frozenset({Role.OPERATOR, Role.ADMIN})  # events (docs/EVENTS.md)


@dataclass(slots=True, frozen=True)
class TrustedKey:
    public_raw: bytes
    roles: frozenset[Role]
    # Parsed once: loading the public key costs about a quarter of a verification.
    public: Ed25519PublicKey | None = field(default=None, compare=False, repr=False)

    @property
    def key_id(self) -> str:
        return key_id(self.public_raw)


def verify_by(k: "TrustedKey | None", signature: bytes, message: bytes) -> bool:
    """True if ``k`` (a trusted key, or None) signed ``message``."""
    if k is None or k.public is None:
        return False
    try:
        k.public.verify(bytes(signature), message)
    except InvalidSignature:
        return False
    return True


class TrustConfig:
    """Trusted keys with roles and admitted node identities.

    Configuration only: it holds no per-record state, so one instance may be shared by every
    node of a simulation. Verification results are memoised per node (:class:`crdt.signedlog.SignedLog`).
    """

    def __init__(
        self,
        keys: Iterable[TrustedKey] = (),
        nodes: Mapping[str, str] | None = None,
    ) -> None:
        self._keys: dict[str, TrustedKey] = {}
        for k in keys:
            self.add_key(k.public_raw, k.roles)
        self._nodes: dict[str, str] = dict(nodes or {})

    def add_key(self, public_raw: bytes, roles: Iterable[Role | str]) -> str:
        """Trust ``public_raw`` with ``roles`` (merged with roles it already has); return its key id."""
        if len(public_raw) != 32:
            raise TrustError("an Ed25519 public key is 32 raw bytes")
        try:
            rs = frozenset(Role(r) for r in roles)
        except ValueError as exc:
            raise TrustError(f"unknown role: {exc} (roles: {', '.join(r.value for r in Role)})") from None
        kid = key_id(public_raw)
        old = self._keys.get(kid)
        try:
            public = old.public if old is not None and old.public is not None else Ed25519PublicKey.from_public_bytes(bytes(public_raw))
        except ValueError as exc:
            raise TrustError(f"not an Ed25519 public key: {exc}") from None
        self._keys[kid] = TrustedKey(bytes(public_raw), rs | (old.roles if old else frozenset()), public)
        return kid

    def admit_node(self, node_id: str, public_raw: bytes) -> str:
        """Admit a node: its key gets the ``node`` role and is the only writer of its placement entry."""
        kid = self.add_key(public_raw, [Role.NODE])
        self._nodes[node_id] = kid
        return kid

    def node_key_id(self, node_id: str) -> str | None:
        return self._nodes.get(node_id)

    def get(self, key_id: str) -> TrustedKey | None:
        return self._keys.get(key_id)

    def roles_of(self, key_id: str) -> frozenset[Role]:
        k = self._keys.get(key_id)
        return k.roles if k else frozenset()

    def may_write(self, key_id: str, kind: str) -> bool:
        """True if the key holds a role that may write documents of ``kind``."""
        return bool(self.roles_of(key_id) & WRITE_ROLES.get(kind, frozenset()))

    def keys(self) -> list[TrustedKey]:
        return [self._keys[k] for k in sorted(self._keys)]

    def verify(self, key_id: str, signature: bytes, message: bytes) -> bool:
        """Verify a signature by a trusted key (False for unknown keys); not memoised here."""
        return verify_by(self._keys.get(key_id), signature, message)

    # --- persistence (JSON) -------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "keys": [
                {"key_id": k.key_id, "public_key": k.public_raw.hex(), "roles": sorted(r.value for r in k.roles)}
                for k in self.keys()
            ],
            "nodes": dict(sorted(self._nodes.items())),
        }

    @classmethod
    def from_json(cls, obj: Any) -> "TrustConfig":
        if not isinstance(obj, dict) or not isinstance(obj.get("keys", []), list):
            raise TrustError("trust config must be an object with a 'keys' list")
        tc = cls()
        for i, entry in enumerate(obj.get("keys", [])):
            try:
                raw = bytes.fromhex(entry["public_key"])
                roles = entry["roles"]
                if not isinstance(roles, list):
                    raise TypeError("roles is not a list")
            except (KeyError, TypeError, ValueError) as exc:
                raise TrustError(f"trust config key #{i} is malformed: {exc}") from None
            tc.add_key(raw, roles)
        nodes = obj.get("nodes", {})
        if not isinstance(nodes, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in nodes.items()):
            raise TrustError("trust config 'nodes' must map node ids to key ids")
        tc._nodes.update(nodes)
        return tc

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "TrustConfig":
        p = Path(path)
        if not p.exists():
            return cls()
        try:
            return cls.from_json(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise TrustError(f"cannot read trust config {p}: {exc}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the trust config atomically and durably (mode 0644: it holds public keys only)."""
        p = Path(path)
        try:
            # fsync before the rename and of the dir after it: a crash must not leave an empty
            # trust file, which would load as "trust nobody" (or a half file that does not load).
            atomic_write(p, json.dumps(self.to_json(), indent=2, sort_keys=True).encode(), 0o644)
        except OSError as exc:
            raise TrustError(f"cannot write trust config {p}: {exc.strerror}") from None
