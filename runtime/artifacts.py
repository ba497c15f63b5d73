"""Content-addressed blob store: module binaries named by SHA-256, verified on write and on read."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import structlog

from runtime.errors import ArtifactError
from model.manifest import SHA256_RE as _SHA256
from model.manifest import sha256_hex

log = structlog.get_logger("wasmatrix.runtime.artifacts")

# Seed 004: modules up to 10 MB are uploaded routinely; leave headroom.
DEFAULT_MAX_BLOB_BYTES = 64 << 20


class ArtifactStore:
    """Blobs under ``root/sha256/ab/<hex>``; a blob whose bytes no longer hash to its name is deleted."""

    def __init__(self, root: Path, *, max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES) -> None:
        self.root = Path(root)
        self.max_blob_bytes = max_blob_bytes
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)

    def _path(self, digest: str) -> Path:
        if not _SHA256.match(digest):
            raise ArtifactError(f"{digest!r} is not a sha256 hex digest")
        return self.root / "sha256" / digest[:2] / digest

    def put(self, data: bytes, expected_sha256: str | None = None) -> str:
        """Store ``data`` (atomically) and return its digest; refuse it if it does not match."""
        if len(data) > self.max_blob_bytes:
            raise ArtifactError(f"blob is {len(data)} bytes, over the {self.max_blob_bytes} byte limit")
        digest = sha256_hex(data)
        if expected_sha256 is not None and digest != expected_sha256:
            raise ArtifactError(
                f"blob hash {digest} does not match the expected {expected_sha256}; refusing to store it"
            )
        path = self._path(digest)
        if path.exists():
            return digest
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write to a temp file in the same directory, fsync, rename: readers never see half a blob.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        log.info("artifact_stored", sha256=digest, size=len(data))
        return digest

    def get(self, digest: str) -> bytes:
        """Read a blob and verify its hash; a tampered or corrupt blob is deleted and refused."""
        path = self._path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArtifactError(f"blob {digest} is not in the artifact store; fetch it from a peer") from None
        if sha256_hex(data) != digest:
            path.unlink(missing_ok=True)
            log.warning("artifact_corrupt", sha256=digest)
            raise ArtifactError(f"blob {digest} is corrupt on disk (hash mismatch); it was deleted, fetch it again")
        return data

    def has(self, digest: str) -> bool:
        """True when a blob with this digest is stored (not re-verified)."""
        return self._path(digest).exists()

    def delete(self, digest: str) -> None:
        """Remove a blob if present."""
        self._path(digest).unlink(missing_ok=True)

    def list(self) -> list[str]:
        """Digests of every stored blob, sorted."""
        return sorted(p.name for p in (self.root / "sha256").glob("*/*") if _SHA256.match(p.name))
