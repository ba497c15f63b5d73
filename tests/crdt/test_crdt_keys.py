"""SigningKey.save: private (0600 whatever was there before), atomic and durable."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from crdt.errors import KeyFileError
from crdt.keys import SigningKey, load_signing_key
from tests.fsync_helpers import record_fsyncs


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_save_over_a_world_readable_file_leaves_it_0600(tmp_path: Path) -> None:
    p = tmp_path / "admin.key"
    p.write_bytes(b"old contents")
    p.chmod(0o644)
    key = SigningKey.from_seed(b"k" * 32)
    key.save(p)
    assert _mode(p) == 0o600
    assert load_signing_key(p).public_raw == key.public_raw
    assert (tmp_path / "admin.key.pub").read_bytes() == key.public_pem()
    assert _mode(tmp_path / "admin.key.pub") == 0o644


def test_save_fsyncs_each_file_and_the_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced = record_fsyncs(monkeypatch)
    SigningKey.from_seed(b"k" * 32).save(tmp_path / "node.key")
    assert synced == ["file:0600", "dir", "file:0644", "dir"]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["node.key", "node.key.pub"]


def test_a_failed_save_keeps_the_old_key_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "node.key"
    old = SigningKey.from_seed(b"o" * 32)
    old.save(p)
    before = p.read_bytes()

    def disk_error(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", disk_error)
    with pytest.raises(KeyFileError, match="cannot write key file .*Input/output error"):
        SigningKey.from_seed(b"n" * 32).save(p)
    assert p.read_bytes() == before and _mode(p) == 0o600
    assert sorted(x.name for x in tmp_path.iterdir()) == ["node.key", "node.key.pub"]  # no temp file left
