"""The daemon's view of its mesh file: which secret to dial with, which to accept, reloads.

A mesh file holds the current secret and, after ``wasmatrix mesh rotate``, the previous one with
an ``accept_until`` time (docs/OPERATIONS.md, "Rotating the mesh secret"). While that window is
open a node dials with the previous secret, which every node still knows (also those not yet
given the new file), and accepts both; from ``accept_until`` on it dials with and accepts the new
one only. The daemon calls :meth:`MeshSecrets.poll` every few seconds and on SIGHUP: it reloads the
file when its modification time, size or inode changed (or when forced), and reports a change of
the (dial, accepted) pair, also one that only the clock caused (the window closing).

No clock is read here: the caller passes the wall time. Secrets never appear in a repr or a
report; fingerprints (``secret_fingerprint``) do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from mesh.meshfile import MeshFile, MeshFileError, load, secret_fingerprint

RELOAD_CHECK_SECONDS = 2.0  # how often the daemon looks at the file's mtime (and at the window)


@dataclass(slots=True, frozen=True)
class SecretChange:
    """What :meth:`MeshSecrets.poll` found: a new (dial, accepted) pair, or a reload error."""

    reloaded: bool  # the file was read again (else only the window closed)
    dial: bytes = field(repr=False, default=b"")
    accepted: tuple[bytes, ...] = field(repr=False, default=())
    error: str = ""  # a reload that failed: the previous secrets stay in use

    def log_fields(self, mesh: MeshFile, now_wall: float) -> dict[str, object]:
        """Fingerprints and the window, for a log line (never a secret)."""
        prev = mesh.previous
        return {
            "secret": secret_fingerprint(mesh.secret),
            "previous": secret_fingerprint(prev.secret) if prev is not None else None,
            "accept_until": prev.accept_until if prev is not None else None,
            "window_open": mesh.window_open(now_wall),
            "dial": secret_fingerprint(self.dial),
            "accepted": [secret_fingerprint(s) for s in self.accepted],
        }


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class MeshSecrets:
    """The mesh file a daemon runs with, reloaded when it changes."""

    def __init__(self, path: str | os.PathLike[str], now_wall: float) -> None:
        self.path = Path(path)
        self._stat = _stat_key(self.path)
        self.mesh = load(self.path)  # MeshFileError at start-up: the daemon refuses to start
        self.dial, self.accepted = self.secrets_at(now_wall)
        self.reloads = 0
        self.failures = 0

    def __repr__(self) -> str:
        return f"MeshSecrets({str(self.path)!r}, mesh_id={self.mesh.mesh_id})"

    def secrets_at(self, now_wall: float) -> tuple[bytes, tuple[bytes, ...]]:
        """(secret to dial with, secrets to accept with the dial one first) at ``now_wall``."""
        dial = self.mesh.dial_secret(now_wall)
        accepted = self.mesh.accepted_secrets(now_wall)
        return dial, (dial, *[s for s in accepted if s != dial])

    def poll(self, now_wall: float, force: bool = False) -> SecretChange | None:
        """Reload the file if it changed on disk (or ``force``); a change of the secrets in use, or None.

        A file that cannot be read or parsed, or that belongs to another mesh, is reported once per
        version on disk (``error``) and the secrets in use stay.
        """
        key = _stat_key(self.path)
        reloaded = False
        if force or key != self._stat:
            self._stat = key
            try:
                mesh = load(self.path)
            except MeshFileError as exc:
                self.failures += 1
                return SecretChange(reloaded=False, error=str(exc))
            if mesh.mesh_id != self.mesh.mesh_id:
                self.failures += 1
                return SecretChange(
                    reloaded=False,
                    error=f"{self.path} is the file of mesh {mesh.mesh_id}, this node is in mesh {self.mesh.mesh_id}; "
                    "not reloaded (restart the node to move it to another mesh)",
                )
            reloaded = mesh != self.mesh
            self.mesh = mesh
            if reloaded:
                self.reloads += 1
        dial, accepted = self.secrets_at(now_wall)
        if not reloaded and (dial, accepted) == (self.dial, self.accepted):
            return None
        self.dial, self.accepted = dial, accepted
        return SecretChange(reloaded=reloaded, dial=dial, accepted=accepted)
