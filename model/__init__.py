"""The shared data model of WasmMatrix: module manifests, capability requests, limits, semver, key ids.

Pure values and their validation, with no I/O: ``crdt`` stores these values in the registry and
``runtime`` admits and runs them, so both import this package and neither imports the other.
This package imports nothing of ``mesh``, ``crdt``, ``runtime``, ``scheduler`` or ``sim``.
"""

from model.errors import ModelError, SemverError, SpecError
from model.keys import KEY_ID_LEN, key_id
from model.manifest import (
    Abi,
    CapabilityRequest,
    Limits,
    Manifest,
    manifest_signing_bytes,
    sha256_hex,
)
from model.semver import Range, Version, best_match, is_exact

__all__ = [
    "Abi", "CapabilityRequest", "KEY_ID_LEN", "Limits", "Manifest", "ModelError", "Range", "SemverError",
    "SpecError", "Version", "best_match", "is_exact", "key_id", "manifest_signing_bytes", "sha256_hex",
]
