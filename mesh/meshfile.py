"""The mesh file: the mesh secret (Noise PSK), the first admin public key(s), and a rotation window.

JSON, mode 0600, format documented in docs/OPERATIONS.md::

    {"format": "wasmatrix-mesh", "version": 1, "mesh_id": "<16 hex>", "created": <epoch s>,
     "secret": "<base64, 32 bytes>",
     "previous": null | {"secret": "<base64, 32 bytes>", "accept_until": <epoch s>},
     "admins": [{"key_id": "<16 hex>", "public_key": "<base64, 32 bytes>"}]}

Rotation keeps the old secret as ``previous`` until ``accept_until`` so a transport can accept both
while the new file is copied to every node (``accepted_secrets(now_wall)``). Only one window can be
open at a time: rotating again before it closes would cut off nodes still on the oldest secret.
Wall-clock times are passed in; nothing here reads a clock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from crdt.keys import SigningKey
from mesh.datadir import DataDirError, atomic_write, check_private_mode
from mesh.errors import MeshError
from mesh.transport.identity import node_id_of

FORMAT_NAME = "wasmatrix-mesh"
FORMAT_VERSION = 1
SECRET_LEN = 32
DEFAULT_GRACE_S = 24 * 3600  # long enough to copy a file to every node of a fleet by hand
MAX_GRACE_S = 30 * 24 * 3600  # an old secret accepted for longer than this defeats rotating it
ADMIN_KEY_SUFFIX = ".admin.key"
_FINGERPRINT_CONTEXT = b"wasmatrix/mesh-secret-fingerprint/v1\x00"
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
_KEYS = {"format", "version", "mesh_id", "created", "secret", "previous", "admins"}


class MeshFileError(MeshError):
    """A mesh file that is missing, insecure, malformed or of an unknown version."""


@dataclass(slots=True, frozen=True)
class AdminKey:
    """A mesh admin's Ed25519 public key and its key id (``model.keys.key_id``)."""

    key_id: str
    public_key: bytes


@dataclass(slots=True, frozen=True)
class PreviousSecret:
    """The secret a rotation replaced, still accepted until ``accept_until`` (epoch seconds, exclusive)."""

    secret: bytes = field(repr=False)  # never in a traceback or a log line
    accept_until: int = 0


@dataclass(slots=True, frozen=True)
class MeshFile:
    """The parsed contents of a mesh file."""

    mesh_id: str
    created: int
    secret: bytes = field(repr=False)  # never in a traceback or a log line
    admins: tuple[AdminKey, ...] = ()
    previous: PreviousSecret | None = None

    def accepted_secrets(self, now_wall: float) -> tuple[bytes, ...]:
        """Secrets a responder accepts at ``now_wall``: the current one first, then the previous one in its window."""
        if self.previous is not None and now_wall < self.previous.accept_until:
            return (self.secret, self.previous.secret)
        return (self.secret,)

    def dial_secret(self, now_wall: float) -> bytes:
        """The secret to dial with at ``now_wall``: the previous one while its window is open (every
        node still knows it, also those not yet given this file), else the current one."""
        if self.previous is not None and now_wall < self.previous.accept_until:
            return self.previous.secret
        return self.secret

    def window_open(self, now_wall: float) -> bool:
        """True while the previous secret is still accepted."""
        return len(self.accepted_secrets(now_wall)) > 1

    def to_json(self) -> bytes:
        """The file's bytes (stable key order)."""
        doc = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "mesh_id": self.mesh_id,
            "created": self.created,
            "secret": _b64(self.secret),
            "previous": None
            if self.previous is None
            else {"secret": _b64(self.previous.secret), "accept_until": self.previous.accept_until},
            "admins": [{"key_id": a.key_id, "public_key": _b64(a.public_key)} for a in self.admins],
        }
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically with mode 0600."""
        try:
            atomic_write(Path(path), self.to_json())
        except OSError as exc:
            raise MeshFileError(f"cannot write mesh file {path}: {exc.strerror}") from None


def secret_fingerprint(secret: bytes) -> str:
    """A short domain-separated hash that tells two copies of a secret apart without revealing it."""
    return hashlib.sha256(_FINGERPRINT_CONTEXT + secret).hexdigest()[:16]


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(value: object, what: str, path: Path, length: int) -> bytes:
    if not isinstance(value, str):
        raise MeshFileError(f"{path}: {what} must be a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise MeshFileError(f"{path}: {what} is not valid base64") from None
    if len(raw) != length:
        raise MeshFileError(f"{path}: {what} must decode to exactly {length} bytes, got {len(raw)}")
    return raw


def _epoch(value: object, what: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MeshFileError(f"{path}: {what} must be a non-negative integer (epoch seconds)")
    return value


def load(path: str | os.PathLike[str]) -> MeshFile:
    """Read and strictly validate a mesh file; every failure is a MeshFileError saying what to fix."""
    p = Path(path)
    try:
        check_private_mode(p, "mesh file")
        data = p.read_bytes()
    except FileNotFoundError:
        raise MeshFileError(f"mesh file {p} does not exist (create one with `wasmatrix mesh init --out {p}`)") from None
    except DataDirError as exc:
        raise MeshFileError(str(exc)) from None
    except OSError as exc:
        raise MeshFileError(f"cannot read mesh file {p}: {exc.strerror}") from None
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise MeshFileError(f"{p} is not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise MeshFileError(f"{p} is not a wasmatrix mesh file (no \"format\": \"{FORMAT_NAME}\")")
    if doc.get("version") != FORMAT_VERSION:
        raise MeshFileError(
            f"{p} has mesh file version {doc.get('version')!r}; this wasmatrix reads version {FORMAT_VERSION}"
        )
    unknown = sorted(set(doc) - _KEYS)
    missing = sorted(_KEYS - set(doc))
    if unknown or missing:
        raise MeshFileError(f"{p}: unknown keys {unknown}, missing keys {missing}")
    mesh_id = doc["mesh_id"]
    if not isinstance(mesh_id, str) or not _HEX16.match(mesh_id):
        raise MeshFileError(f"{p}: mesh_id must be 16 lowercase hex characters")
    secret = _unb64(doc["secret"], "secret", p, SECRET_LEN)
    previous: PreviousSecret | None = None
    prev = doc["previous"]
    if prev is not None:
        if not isinstance(prev, dict) or set(prev) != {"secret", "accept_until"}:
            raise MeshFileError(f"{p}: previous must be null or {{\"secret\", \"accept_until\"}}")
        previous = PreviousSecret(
            _unb64(prev["secret"], "previous.secret", p, SECRET_LEN), _epoch(prev["accept_until"], "previous.accept_until", p)
        )
        if previous.secret == secret:
            raise MeshFileError(f"{p}: previous.secret equals secret")
    admins_doc = doc["admins"]
    if not isinstance(admins_doc, list) or not admins_doc:
        raise MeshFileError(f"{p}: admins must be a non-empty list")
    admins: list[AdminKey] = []
    for i, a in enumerate(admins_doc):
        if not isinstance(a, dict) or set(a) != {"key_id", "public_key"}:
            raise MeshFileError(f"{p}: admins[{i}] must be {{\"key_id\", \"public_key\"}}")
        pub = _unb64(a["public_key"], f"admins[{i}].public_key", p, 32)
        if a["key_id"] != node_id_of(pub):
            raise MeshFileError(f"{p}: admins[{i}].key_id {a['key_id']!r} does not match its public key")
        admins.append(AdminKey(a["key_id"], pub))
    return MeshFile(mesh_id, _epoch(doc["created"], "created", p), secret, tuple(admins), previous)


def init_mesh(out: str | os.PathLike[str], *, now_wall: float, force: bool = False) -> tuple[MeshFile, Path]:
    """Create a mesh: new secret and first admin key; writes ``out`` and ``out.admin.key`` (both 0600)."""
    out_p = Path(out)
    key_p = Path(str(out_p) + ADMIN_KEY_SUFFIX)
    if not force:
        for p in (out_p, key_p):
            if p.exists():
                raise MeshFileError(f"{p} already exists; pass --force to overwrite it (this discards a mesh secret or admin key)")
    admin = SigningKey.generate()
    mesh = MeshFile(
        mesh_id=os.urandom(8).hex(),
        created=int(now_wall),
        secret=os.urandom(SECRET_LEN),
        admins=(AdminKey(admin.key_id, admin.public_raw),),
    )
    try:
        # Key first: a mesh file whose admin key was never written would be unmanageable.
        atomic_write(key_p, admin.private_pem())
    except OSError as exc:
        raise MeshFileError(f"cannot write admin key {key_p}: {exc.strerror}") from None
    mesh.save(out_p)
    return mesh, key_p


def rotate(
    path: str | os.PathLike[str], *, now_wall: float, grace_s: int = DEFAULT_GRACE_S, force: bool = False
) -> MeshFile:
    """Replace the secret, keep the old one as ``previous`` for ``grace_s`` seconds, save, return the new file."""
    if not 0 < grace_s <= MAX_GRACE_S:
        raise MeshFileError(f"grace must be between 1 and {MAX_GRACE_S} seconds, got {grace_s}")
    mesh = load(path)
    if mesh.window_open(now_wall) and not force:
        assert mesh.previous is not None
        raise MeshFileError(
            f"a rotation window is open until {mesh.previous.accept_until} (epoch s, "
            f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(mesh.previous.accept_until))}); rotating again now would cut "
            "off nodes still on the oldest secret. Wait until it closes or pass --force"
        )
    rotated = replace(
        mesh, secret=os.urandom(SECRET_LEN), previous=PreviousSecret(mesh.secret, int(now_wall) + int(grace_s))
    )
    rotated.save(path)
    return rotated
