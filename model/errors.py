"""The model package's exceptions: a value of the shared data model is invalid.

``crdt`` and ``runtime`` each keep their own hierarchy and translate these at their boundary
(``crdt.schema``, ``runtime.signing``); both of their "invalid value" classes also derive from
``SpecError`` so one ``except SpecError`` catches an invalid manifest wherever it was found.
"""

from __future__ import annotations


class ModelError(ValueError):
    """Base class of every error raised by the model package."""


class SpecError(ModelError):
    """A manifest, capability request or limits value with an invalid field; the message says which."""


class SemverError(SpecError):
    """A version or version range that is not strict semver 2.0.0."""
