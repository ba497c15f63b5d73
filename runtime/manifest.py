"""Module manifests and their canonical msgpack encoding (what a publisher signs)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import msgpack

from runtime.abi import Abi
from runtime.capabilities import CapabilityRequest
from runtime.errors import InvalidSpecError, ManifestError
from runtime.limits import Limits

MANIFEST_VERSION = 1
# Bounds every decoder: a manifest is small; anything larger is hostile.
MAX_MANIFEST_BYTES = 64 << 10

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# semver.org 2.0.0 grammar (without the optional leading "v").
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def sha256_hex(data: bytes) -> str:
    """The lowercase hex SHA-256 of ``data``: the name of a blob."""
    return hashlib.sha256(data).hexdigest()


@dataclass(slots=True, frozen=True)
class Manifest:
    """What a publisher vouches for: which bytes, under which name, needing what."""

    name: str
    version: str
    sha256: str
    size: int
    capabilities: CapabilityRequest = field(default_factory=CapabilityRequest)
    limits: Limits = field(default_factory=Limits)
    abi: Abi = Abi.WASI_COMMAND

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ManifestError(f"module name {self.name!r} must match {_NAME.pattern}")
        if not _SEMVER.match(self.version):
            raise ManifestError(f"version {self.version!r} is not semver (e.g. 1.2.3)")
        if not _SHA256.match(self.sha256):
            raise ManifestError("sha256 must be 64 lowercase hex characters")
        if self.size < 8:
            raise ManifestError(f"size {self.size} is too small for a wasm module")

    @property
    def key(self) -> str:
        """``name@version``: the identity of a loaded module and its metric label."""
        return f"{self.name}@{self.version}"

    @classmethod
    def for_module(
        cls,
        name: str,
        version: str,
        wasm: bytes,
        *,
        capabilities: CapabilityRequest | None = None,
        limits: Limits | None = None,
        abi: Abi = Abi.WASI_COMMAND,
    ) -> Manifest:
        """Build a manifest describing ``wasm`` (hash and size computed here)."""
        return cls(
            name=name, version=version, sha256=sha256_hex(wasm), size=len(wasm),
            capabilities=capabilities or CapabilityRequest(), limits=limits or Limits(), abi=abi,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (the signed payload)."""
        return {
            "v": MANIFEST_VERSION, "name": self.name, "version": self.version, "sha256": self.sha256,
            "size": self.size, "capabilities": self.capabilities.to_dict(), "limits": self.limits.to_dict(),
            "abi": self.abi.value,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Parse and validate the plain-data form."""
        if not isinstance(data, dict):
            raise ManifestError("manifest must be a map")
        expected = {"v", "name", "version", "sha256", "size", "capabilities", "limits", "abi"}
        if set(data) != expected:
            raise ManifestError(f"manifest fields must be exactly {sorted(expected)}, got {sorted(data)}")
        if data["v"] != MANIFEST_VERSION:
            raise ManifestError(f"unsupported manifest version {data['v']!r}")
        for key in ("name", "version", "sha256", "abi"):
            if not isinstance(data[key], str):
                raise ManifestError(f"manifest field {key} must be a string")
        if not isinstance(data["size"], int) or isinstance(data["size"], bool):
            raise ManifestError("manifest field size must be an integer")
        try:
            abi = Abi(data["abi"])
            caps = CapabilityRequest.from_dict(data["capabilities"])
            limits = Limits.from_dict(data["limits"])
        except (ValueError, InvalidSpecError) as exc:
            raise ManifestError(f"invalid manifest: {exc}") from exc
        return cls(
            name=data["name"], version=data["version"], sha256=data["sha256"], size=data["size"],
            capabilities=caps, limits=limits, abi=abi,
        )

    def canonical_bytes(self) -> bytes:
        """Deterministic msgpack encoding: sorted map keys, binary-safe strings."""
        return canonical_encode(self.to_dict())


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_sorted(v) for v in value]
    return value


def canonical_encode(value: Any) -> bytes:
    """msgpack with recursively sorted map keys, so equal values encode to equal bytes."""
    return msgpack.packb(_sorted(value), use_bin_type=True)


def bounded_decode(data: bytes, what: str) -> Any:
    """Decode msgpack from an untrusted source with size bounds; raise ManifestError on failure."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{what} is {len(data)} bytes, over the {MAX_MANIFEST_BYTES} byte limit")
    try:
        # The length check above bounds every container and string inside.
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise ManifestError(f"{what} is not valid msgpack: {exc}") from exc
