"""Replicated trust: role grants and revocations as signed records of kind ``trust`` (issue 10).

Trust travels with the mesh instead of by copying files. The *roots* are the admin public keys of
the mesh file (``MeshFile.admins``), which every daemon of the mesh knows. Everything else is a
chained signed record in the log, verified like any other record:

* ``trust`` ``grant/<key id>``  ``{public_key: 32 bytes, roles: [...], comment}``: the key holds
  those roles on every node. Written by an *admin*: a root, or a key granted ``admin`` (chained:
  the grant of an admin by a root makes that admin's grants valid). A tombstone removes the
  grant (its holder's records leave the view at once: a role removed).
* ``trust`` ``revoke/<id>``  ``{reason, at_ms, through_seq}``: ``id`` is a key id or a node id
  (a node id *is* the key id of the node's key). The key's records with ``seq > through_seq`` or
  ``wall_ms >= at_ms`` leave the view (:class:`~crdt.signedlog.Revocation`), and the node with
  that id is refused at the handshake and declared dead by every daemon. Written by an admin, or
  by an *operator* when it revokes a node: an operator's revocation cuts the records of the id
  only if that id holds no replicated role (a node key, not a person's key). A tombstone lifts it.

The effective trust (``roots + valid grants - revocations``) is a deterministic function of the
set of records a node holds: :meth:`MeshTrust.recompute` starts from the roots alone and
re-derives grants and revocations from the log's view until nothing changes (a bounded number of
rounds; a self-referential set that never settles ends at its last round, counted as
``trust_unstable``). Roles from the local ``trust.json`` (:class:`~crdt.trust.TrustConfig`) still
count for the other kinds (offline CLI use, tests); they never authorise ``trust`` records, so
every node agrees on who may grant. Without roots (an insecure mesh) nobody can write a grant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from crdt.errors import TrustError, ValidationError
from crdt.keys import KEY_ID_LEN, key_id
from crdt.signedlog import Revocation, SignedLog, TrustAdapter
from crdt.trust import WRITE_ROLES, Role, TrustConfig, TrustedKey, verify_by

TRUST_KIND = "trust"
GRANT = "grant/"
REVOKE = "revoke/"
GRANTABLE = frozenset({Role.ADMIN, Role.OPERATOR, Role.DEVELOPER, Role.PUBLISHER, Role.VIEWER})
MAX_COMMENT = 256
MAX_REASON = 512
MAX_ROUNDS = 16
_HEX = frozenset("0123456789abcdef")
_LIMIT = 2**53


def _check_id(value: str, what: str) -> str:
    if len(value) != KEY_ID_LEN or not set(value) <= _HEX:
        raise ValidationError(f"{what} {value!r:.40} is not a {KEY_ID_LEN}-hex-digit key or node id")
    return value


def grant_slot(kid: str) -> str:
    return GRANT + _check_id(kid, "grant target")


def revoke_slot(ident: str) -> str:
    return REVOKE + _check_id(ident, "revocation target")


def grant_payload(public_raw: bytes, roles: Iterable[Role | str], comment: str = "") -> dict[str, Any]:
    """The payload of a grant record (validated)."""
    try:
        rs = sorted({Role(r).value for r in roles})
    except ValueError as exc:
        raise ValidationError(f"unknown role: {exc}") from None
    p = {"public_key": bytes(public_raw), "roles": rs, "comment": comment}
    validate_trust_payload(grant_slot(key_id(bytes(public_raw))), p)
    return p


def revoke_payload(reason: str, at_ms: int, through_seq: int) -> dict[str, Any]:
    p = {"reason": reason, "at_ms": at_ms, "through_seq": through_seq}
    validate_trust_payload(REVOKE + "0" * KEY_ID_LEN, p)
    return p


def validate_trust_payload(key: str, p: Any) -> None:
    """Schema of ``trust`` records (raise ValidationError)."""
    if not isinstance(p, dict):
        raise ValidationError("a trust payload is a map")
    if key.startswith(GRANT):
        kid = _check_id(key[len(GRANT):], "grant target")
        if set(p) != {"public_key", "roles", "comment"}:
            raise ValidationError("a grant is {public_key, roles, comment}")
        pub, roles, comment = p["public_key"], p["roles"], p["comment"]
        if not isinstance(pub, bytes) or len(pub) != 32:
            raise ValidationError("a grant's public_key is 32 raw bytes")
        if key_id(pub) != kid:
            raise ValidationError(f"grant slot {kid} does not match the key id of its public key ({key_id(pub)})")
        try:
            Ed25519PublicKey.from_public_bytes(pub)
        except ValueError:
            raise ValidationError("a grant's public_key is not an Ed25519 key") from None
        if not isinstance(roles, list) or not roles or len(roles) > len(GRANTABLE):
            raise ValidationError("a grant's roles is a non-empty list")
        if not all(isinstance(r, str) and r in {g.value for g in GRANTABLE} for r in roles) or roles != sorted(set(roles)):
            raise ValidationError(f"a grant's roles are sorted, distinct names among {', '.join(sorted(g.value for g in GRANTABLE))}")
        if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
            raise ValidationError(f"a grant's comment is text of at most {MAX_COMMENT} characters")
    elif key.startswith(REVOKE):
        _check_id(key[len(REVOKE):], "revocation target")
        if set(p) != {"reason", "at_ms", "through_seq"}:
            raise ValidationError("a revocation is {reason, at_ms, through_seq}")
        if not isinstance(p["reason"], str) or len(p["reason"]) > MAX_REASON:
            raise ValidationError(f"a revocation's reason is text of at most {MAX_REASON} characters")
        for f in ("at_ms", "through_seq"):
            v = p[f]
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < _LIMIT:
                raise ValidationError(f"a revocation's {f} is an integer in 0 .. 2**53-1")
    else:
        raise ValidationError(f"trust slot {key!r:.60} is neither grant/<key id> nor revoke/<id>")


@dataclass(slots=True, frozen=True)
class Grant:
    key_id: str
    public_raw: bytes
    roles: frozenset[Role]
    comment: str
    signer: str
    seq: int


@dataclass(slots=True, frozen=True)
class RevocationEntry:
    target: str
    revocation: Revocation
    reason: str
    signer: str
    seq: int
    cuts_records: bool  # False: an operator revoked a node id that holds a replicated role (handshake only)


class MeshTrust(TrustAdapter):
    """:class:`~crdt.signedlog.LogTrust` over roots + replicated grants/revocations + the local TrustConfig."""

    def __init__(self, trust: TrustConfig, roots: Iterable[bytes] = (), revocations: Mapping[str, Revocation] | None = None) -> None:
        super().__init__(trust, revocations)
        self.roots: dict[str, TrustedKey] = {}
        for raw in roots:
            raw = bytes(raw)
            if len(raw) != 32:
                raise TrustError("a root admin key is 32 raw bytes")
            try:
                self.roots[key_id(raw)] = TrustedKey(raw, frozenset({Role.ADMIN}), Ed25519PublicKey.from_public_bytes(raw))
            except ValueError as exc:
                raise TrustError(f"not an Ed25519 public key: {exc}") from None
        self.grants: dict[str, Grant] = {}
        self.revoked: dict[str, RevocationEntry] = {}
        self._granted_keys: dict[str, TrustedKey] = {}
        self._pub_cache: dict[bytes, Ed25519PublicKey] = {}
        self.generation = 0  # bumped whenever the effective trust changes
        self.unstable = 0

    # --- LogTrust ------------------------------------------------------------------------

    def _key(self, kid: str) -> TrustedKey | None:
        return self.trust.get(kid) or self.roots.get(kid) or self._granted_keys.get(kid)

    def replicated_roles(self, kid: str) -> frozenset[Role]:
        """Roles from the roots and replicated grants only (what every node agrees on)."""
        g = self.grants.get(kid)
        roles = g.roles if g is not None else frozenset()
        return roles | ({Role.ADMIN} if kid in self.roots else frozenset())

    def roles_of(self, kid: str) -> frozenset[Role]:
        return self.trust.roles_of(kid) | self.replicated_roles(kid)

    def knows(self, signer: str) -> bool:
        return self._key(signer) is not None

    def check(self, signer: str, kind: str, key: str) -> str | None:
        if not self.knows(signer):
            return "unknown_signer"
        if kind == TRUST_KIND:
            rr = self.replicated_roles(signer)
            if Role.ADMIN in rr or (Role.OPERATOR in rr and key.startswith(REVOKE)):
                return None
            return "role"
        if kind == "placement":
            return None if self.trust.node_key_id(key) == signer else "not_owner"
        return None if self.roles_of(signer) & WRITE_ROLES.get(kind, frozenset()) else "role"

    def may_write(self, signer: str, kind: str, key: str = "") -> bool:
        return self.check(signer, kind, key) is None

    def verify(self, signer: str, signature: bytes, message: bytes) -> bool:
        if self.trust.get(signer) is not None:
            return self.trust.verify(signer, signature, message)
        return verify_by(self.roots.get(signer) or self._granted_keys.get(signer), signature, message)

    def revocation(self, signer: str) -> Revocation | None:
        local = self.revocations.get(signer)
        e = self.revoked.get(signer)
        rep = e.revocation if e is not None and e.cuts_records else None
        if local is None or rep is None:
            return local or rep
        return Revocation(min(local.at_ms, rep.at_ms), min(local.through_seq, rep.through_seq))

    def node_revoked(self, node_id: str) -> bool:
        """True if a replicated revocation names this node id: refuse it at the handshake."""
        return node_id in self.revoked

    # --- derivation ----------------------------------------------------------------------

    def recompute(self, log: SignedLog) -> bool:
        """Re-derive grants and revocations from ``log`` (a fixpoint from the roots); True if they changed."""
        before = (self.grants, self.revoked)
        self._set({}, {})
        state: tuple[dict[str, Grant], dict[str, RevocationEntry]] = ({}, {})
        for _ in range(MAX_ROUNDS):
            state = self._derive(log)
            if state == (self.grants, self.revoked):
                break
            self._set(*state)
        else:
            self.unstable += 1
        changed = (self.grants, self.revoked) != before
        if changed:
            self.generation += 1
        return changed

    def _set(self, grants: dict[str, Grant], revoked: dict[str, RevocationEntry]) -> None:
        self.grants, self.revoked = grants, revoked
        keys: dict[str, TrustedKey] = {}
        for kid, g in grants.items():
            pub = self._pub_cache.get(g.public_raw)
            if pub is None:
                pub = self._pub_cache[g.public_raw] = Ed25519PublicKey.from_public_bytes(g.public_raw)
            keys[kid] = TrustedKey(g.public_raw, g.roles, pub)
        self._granted_keys = keys

    def _derive(self, log: SignedLog) -> tuple[dict[str, Grant], dict[str, RevocationEntry]]:
        grants: dict[str, Grant] = {}
        revs: list[tuple[str, Revocation, str, str, int]] = []
        for slot in log.slots(TRUST_KIND):
            r = log.winner(TRUST_KIND, slot)
            if r is None or r.tombstone:
                continue
            p = r.payload
            if slot.startswith(GRANT):
                kid = slot[len(GRANT):]
                grants[kid] = Grant(kid, p["public_key"], frozenset(Role(x) for x in p["roles"]), p["comment"], r.signer, r.seq)
            else:
                revs.append((slot[len(REVOKE):], Revocation(p["at_ms"], p["through_seq"]), p["reason"], r.signer, r.seq))
        revoked: dict[str, RevocationEntry] = {}
        for target, rev, reason, signer, seq in revs:
            by_admin = Role.ADMIN in self.replicated_roles(signer)
            holds_role = target in self.roots or target in grants
            revoked[target] = RevocationEntry(target, rev, reason, signer, seq, by_admin or not holds_role)
        return grants, revoked

    # --- listing -------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The effective trust, for ``GET /v1/trust`` and ``wasmatrix trust list``."""
        return {
            "roots": [{"key_id": k, "public_key": v.public_raw.hex()} for k, v in sorted(self.roots.items())],
            "grants": [
                {"key_id": g.key_id, "public_key": g.public_raw.hex(), "roles": sorted(r.value for r in g.roles),
                 "comment": g.comment, "signer": g.signer, "seq": g.seq, "revoked": g.key_id in self.revoked}
                for g in sorted(self.grants.values(), key=lambda g: g.key_id)
            ],
            "revocations": [
                {"id": e.target, "reason": e.reason, "at_ms": e.revocation.at_ms, "through_seq": e.revocation.through_seq,
                 "signer": e.signer, "seq": e.seq, "cuts_records": e.cuts_records}
                for e in sorted(self.revoked.values(), key=lambda e: e.target)
            ],
            "generation": self.generation,
        }
