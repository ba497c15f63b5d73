"""Errors of the secure transport."""

from __future__ import annotations

from mesh.errors import MeshError


class TransportError(MeshError):
    """A transport misuse by the local caller (never raised for bad bytes from the network)."""


class FrameTooLarge(TransportError):
    """A plaintext that does not fit one datagram or one stream frame; split it before sending."""
