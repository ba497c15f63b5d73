"""The crdt package's exception hierarchy: every error says what to fix."""

from __future__ import annotations

from model.errors import SemverError as ModelSemverError
from model.errors import SpecError


class CrdtError(Exception):
    """Base class of every error raised by the crdt package."""


class ValidationError(CrdtError, SpecError):
    """A value written to a document fails its schema (name, semver, size, type)."""


class SemverError(ValidationError, ModelSemverError):
    """A version or version range that is not strict semver (``crdt.schema`` translates the model's)."""


class KeyFileError(CrdtError):
    """A key file that is missing, unreadable or not an Ed25519 key."""


class TrustError(CrdtError):
    """A trust configuration that is malformed."""


class PermissionDenied(CrdtError):
    """The local signing key does not hold the role a write needs."""


class NotFound(CrdtError, KeyError):
    """A module, version, deployment or route that is not in the effective view."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "not found"


class Conflict(CrdtError):
    """A write that contradicts the current effective view (e.g. republishing a version)."""


class KvLimitError(ValidationError):
    """A key-value write that exceeds a namespace size limit."""


class StoreError(CrdtError):
    """The durable store cannot be opened or written."""


class StoreCorruptError(StoreError):
    """The durable store files are corrupted beyond the per-row checks."""


class BlobError(CrdtError):
    """A blob transfer that cannot complete (no peer has it, hash mismatch everywhere)."""
