"""crdt.files: the one atomic private write and secret-file mode check every layer uses."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from crdt.files import atomic_write, private_file_problem
from tests.fsync_helpers import record_fsyncs


def test_atomic_write_sets_the_mode_exactly_despite_umask_and_a_stale_temp(tmp_path: Path) -> None:
    p = tmp_path / "secret"
    stale = tmp_path / f".secret.tmp.{os.getpid()}"  # left by a crash, world-readable
    stale.write_bytes(b"stale")
    stale.chmod(0o666)
    old = os.umask(0o077)
    try:
        atomic_write(p, b"new", 0o640)
    finally:
        os.umask(old)
    assert p.read_bytes() == b"new" and stat.S_IMODE(p.stat().st_mode) == 0o640
    assert sorted(x.name for x in tmp_path.iterdir()) == ["secret"]


def test_atomic_write_without_replace_keeps_an_existing_file(tmp_path: Path) -> None:
    p = tmp_path / "key"
    p.write_bytes(b"first")
    with pytest.raises(FileExistsError):
        atomic_write(p, b"second", replace=False)
    assert p.read_bytes() == b"first"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["key"]


def test_private_file_problem(tmp_path: Path) -> None:
    p = tmp_path / "k"
    p.write_bytes(b"x")
    p.chmod(0o600)
    assert private_file_problem(p, "key") is None
    p.chmod(0o400)
    assert private_file_problem(p, "key") is None
    p.chmod(0o610)
    assert private_file_problem(p, "key") == (
        f"key {p} is accessible by group or others (mode 0610); "
        f"it holds a secret: run `chmod 600 {p}` if it was not exposed, otherwise replace it"
    )
    assert private_file_problem(tmp_path, "key") == f"key {tmp_path} is not a regular file"


def test_trust_config_save_is_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from crdt.keys import SigningKey
    from crdt.trust import TrustConfig

    tc = TrustConfig()
    tc.add_key(SigningKey.from_seed(b"a" * 32).public_raw, ["admin"])
    synced = record_fsyncs(monkeypatch)
    p = tmp_path / "trust.json"
    tc.save(p)
    assert synced == ["file:0644", "dir"]  # content before the name, then the name
    assert TrustConfig.load(p).to_json() == tc.to_json()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["trust.json"]
