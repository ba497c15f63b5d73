"""Durable, private file writes shared by every layer that keeps secrets on disk.

It lives in ``crdt`` because that is the lowest layer both ``crdt`` (``SigningKey.save``) and
``mesh`` (the data dir, the Noise key, ``api.json``, the audit log) may import; keep this the only
copy. Driver-side code only: cores never touch files.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a rename or create in ``directory`` durable."""
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def atomic_write(path: Path, data: bytes, mode: int = 0o600, *, replace: bool = True) -> None:
    """Write ``data`` to ``path`` atomically: temp file (``mode``) in the same dir, fsync, rename, fsync dir.

    The file ends with exactly ``mode`` whatever an earlier file at ``path`` had: it is a new inode.
    With ``replace=False`` an existing ``path`` is left alone and ``FileExistsError`` is raised, so
    two creators racing for the same key file cannot silently swap it under each other.
    """
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode does not apply to a leftover temp file, and umask may narrow it
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails with FileExistsError instead of overwriting
    finally:
        tmp.unlink(missing_ok=True)  # after a replace this is a no-op; after link it drops the second name
    fsync_dir(path.parent)


def private_file_problem(path: Path, what: str) -> str | None:
    """Why ``path`` must not hold a secret (not a regular file, or any group/other permission), else None."""
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        return f"{what} {path} is not a regular file"
    if st.st_mode & 0o077:
        return (
            f"{what} {path} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"it holds a secret: run `chmod 600 {path}` if it was not exposed, otherwise replace it"
        )
    return None


__all__ = ["atomic_write", "fsync_dir", "private_file_problem"]
