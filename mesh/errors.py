"""The mesh package's exception hierarchy."""

from __future__ import annotations


class MeshError(Exception):
    """Base class of every error raised by the mesh package."""


class WireError(MeshError):
    """A datagram or frame that does not decode into a valid message."""


class ConfigError(MeshError):
    """An invalid configuration value or profile name."""
