"""Records what each os.fsync call synced, so tests can check data reaches disk before its name."""

from __future__ import annotations

import os
import stat

import pytest


def record_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Patch os.fsync to log "dir" or "file:<mode>" per call (then really sync); return the log."""
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        st_mode = os.fstat(fd).st_mode
        synced.append("dir" if stat.S_ISDIR(st_mode) else f"file:{stat.S_IMODE(st_mode):04o}")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return synced
