"""DataDir: layout and modes, the single-process lock (real second process), identity keys, api.json."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from crdt.keys import SigningKey
from mesh.datadir import (
    API_FILE,
    ApiInfo,
    ApiInfoError,
    DataDir,
    DataDirError,
    DataDirLocked,
    read_api_info,
    resolve_api,
    write_api_info,
)

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "tok_" + "A" * 28


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def _holder(path: Path) -> subprocess.Popen[str]:
    """A real second process that opens the data dir, says so, and sleeps holding the lock."""
    code = textwrap.dedent(f"""
        import sys, time
        from mesh.datadir import DataDir
        d = DataDir({str(path)!r}).open()
        print("locked", flush=True)
        time.sleep(60)
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == "locked\n", f"holder did not start: {line!r}"
    return proc


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()


def test_open_creates_layout_with_private_modes(tmp_path: Path) -> None:
    d = DataDir(tmp_path / "node").open()
    try:
        assert _mode(d.path) == 0o700
        assert _mode(d.node_key_path) == 0o600
        assert _mode(d.x25519_path) == 0o600
        assert _mode(d.lock_path) == 0o600
        assert json.loads((d.path / "format.json").read_text()) == {"format": "wasmatrix-data-dir", "version": 1}
        assert d.lock_path.read_text() == f"{os.getpid()}\n"
        assert d.store_path == d.path / "intent.sqlite3"
        assert d.audit_path == d.path / "audit.log"
        assert d.members_path == d.path / "members.json"
        assert d.api_path == d.path / "api.json"
    finally:
        d.close()


def test_node_id_is_sha256_prefix_of_the_ed25519_public_key_and_persists(tmp_path: Path) -> None:
    with DataDir(tmp_path) as d:
        first = d.node_id
        x_pub = d.identity.public.x25519_public
        assert d.identity_created
    key = serialization.load_pem_private_key((tmp_path / "node.key").read_bytes(), password=None)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    # Spec (crdt/keys.py, DESIGN): key id = first 16 hex chars of SHA-256 over the raw public key.
    assert first == hashlib.sha256(raw).hexdigest()[:16]
    x_raw = (tmp_path / "node.x25519").read_bytes()
    assert x_pub == X25519PrivateKey.from_private_bytes(x_raw).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    with DataDir(tmp_path) as d2:
        assert d2.node_id == first
        assert not d2.identity_created
        assert d2.identity.public.verify()


def test_key_written_by_keygen_format_is_adopted(tmp_path: Path) -> None:
    # `wasmatrix keygen` / the pre-daemon CLI write node.key with SigningKey.save (PKCS8 PEM).
    key = SigningKey.from_seed(bytes(range(32)))
    tmp_path.chmod(0o700)
    key.save(tmp_path / "node.key")
    with DataDir(tmp_path) as d:
        assert d.node_id == key.key_id


@pytest.mark.parametrize("name", ["node.key", "node.x25519"])
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_group_or_world_accessible_key_is_refused(tmp_path: Path, name: str, mode: int) -> None:
    with DataDir(tmp_path):
        pass
    (tmp_path / name).chmod(mode)
    with pytest.raises(DataDirError, match=rf"accessible by group or others \(mode {mode:04o}\).*chmod 600"):
        DataDir(tmp_path).open()


def test_refused_open_releases_the_lock(tmp_path: Path) -> None:
    with DataDir(tmp_path):
        pass
    (tmp_path / "node.key").chmod(0o644)
    with pytest.raises(DataDirError):
        DataDir(tmp_path).open()
    (tmp_path / "node.key").chmod(0o600)
    with DataDir(tmp_path) as d:
        assert d.locked


def test_malformed_keys_are_refused(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    (tmp_path / "node.key").write_bytes(b"not a key at all")
    (tmp_path / "node.key").chmod(0o600)
    with pytest.raises(DataDirError, match="node key .* is malformed"):
        DataDir(tmp_path).open()
    (tmp_path / "node.key").unlink()
    (tmp_path / "node.x25519").write_bytes(b"\x01" * 31)
    (tmp_path / "node.x25519").chmod(0o600)
    with pytest.raises(DataDirError, match="X25519 key is malformed.*has 31"):
        DataDir(tmp_path).open()


def test_a_foreign_directory_is_refused_and_left_untouched(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    (tmp_path / "thesis.tex").write_text("x")
    with pytest.raises(DataDirError, match=r"not a wasmatrix data dir .*thesis\.tex.*pick an empty"):
        DataDir(tmp_path).open()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]  # no lock, no keys left behind


def test_a_pre_daemon_cli_dir_is_adopted(tmp_path: Path) -> None:
    d = tmp_path / "dd"
    d.mkdir(mode=0o755)  # what the pre-daemon CLI creates
    d.chmod(0o755)
    for name in ("trust.json", "intent.sqlite3", "intent.sqlite3-wal", "intent.sqlite3.corrupt-1"):
        (d / name).write_text("")
    (d / "blobs").mkdir()
    with DataDir(d) as dd:
        assert (d / "format.json").exists()
        assert dd.locked


def test_group_writable_dir_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    d.chmod(0o770)
    with pytest.raises(DataDirError, match="writable by group or others.*chmod 700"):
        DataDir(d).open()


def test_unknown_format_version_is_refused(tmp_path: Path) -> None:
    with DataDir(tmp_path):
        pass
    (tmp_path / "format.json").write_text(json.dumps({"format": "wasmatrix-data-dir", "version": 2}))
    with pytest.raises(DataDirError, match="format version 2; this wasmatrix uses version 1"):
        DataDir(tmp_path).open()
    (tmp_path / "format.json").write_text("{garbage")
    with pytest.raises(DataDirError, match="not valid JSON"):
        DataDir(tmp_path).open()


def test_identity_before_open_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataDirError, match="not open"):
        _ = DataDir(tmp_path).node_id


def test_close_then_reopen_in_same_process(tmp_path: Path) -> None:
    d = DataDir(tmp_path).open()
    d.close()
    assert not d.locked
    with DataDir(tmp_path) as again:
        assert again.locked


def test_second_process_is_refused_naming_the_holder_pid(tmp_path: Path) -> None:
    proc = _holder(tmp_path)
    try:
        with pytest.raises(DataDirLocked) as info:
            DataDir(tmp_path).open()
        assert info.value.pid == proc.pid
        assert f"in use by process {proc.pid}" in str(info.value)
    finally:
        _kill(proc)


def test_lock_of_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    proc = _holder(tmp_path)
    try:
        dead_pid = proc.pid
    finally:
        _kill(proc)
    assert (tmp_path / "lock").read_text() == f"{dead_pid}\n"  # the file stays; flock died with the process
    with DataDir(tmp_path) as d:
        assert d.locked
        assert d.lock_path.read_text() == f"{os.getpid()}\n"


def test_api_info_roundtrip_mode_and_atomic_replace(tmp_path: Path) -> None:
    api = tmp_path / API_FILE
    api.write_text("stale")
    api.chmod(0o644)  # a leftover readable file must not keep its mode when replaced
    write_api_info(api, ApiInfo("127.0.0.1:7474", TOKEN))
    assert _mode(api) == 0o600
    assert read_api_info(api) == ApiInfo("127.0.0.1:7474", TOKEN)
    assert sorted(p.name for p in tmp_path.iterdir()) == [API_FILE]  # no temp file left
    write_api_info(api, ApiInfo("[::1]:8080", TOKEN))
    assert read_api_info(api).addr == "[::1]:8080"


def test_api_info_repr_hides_the_token() -> None:
    assert repr(ApiInfo("127.0.0.1:1", TOKEN)) == "ApiInfo(addr='127.0.0.1:1')"


def test_api_info_via_datadir_and_clear(tmp_path: Path) -> None:
    with DataDir(tmp_path) as d:
        d.write_api_info("localhost:9000", TOKEN)
        assert d.read_api_info() == ApiInfo("localhost:9000", TOKEN)
        d.clear_api_info()
        with pytest.raises(ApiInfoError, match="is the node running"):
            d.read_api_info()


@pytest.mark.parametrize(
    ("addr", "token", "match"),
    [
        ("127.0.0.1", TOKEN, "host:port"),
        ("127.0.0.1:0", TOKEN, "port 1-65535"),
        ("127.0.0.1:65536", TOKEN, "port 1-65535"),
        ("bad host:80", TOKEN, "host:port"),
        ("127.0.0.1:80", "short", "16-256"),
        ("127.0.0.1:80", "has space" + "x" * 16, "16-256"),
    ],
)
def test_api_info_write_validates(tmp_path: Path, addr: str, token: str, match: str) -> None:
    with pytest.raises(ApiInfoError, match=match):
        write_api_info(tmp_path / API_FILE, ApiInfo(addr, token))
    assert not (tmp_path / API_FILE).exists()


def test_api_info_read_refuses_readable_or_malformed(tmp_path: Path) -> None:
    api = tmp_path / API_FILE
    write_api_info(api, ApiInfo("127.0.0.1:7474", TOKEN))
    api.chmod(0o644)
    with pytest.raises(ApiInfoError, match="accessible by group or others"):
        read_api_info(api)
    api.chmod(0o600)
    api.write_text(json.dumps({"version": 1, "addr": "127.0.0.1:1", "token": TOKEN, "extra": 1}))
    with pytest.raises(ApiInfoError, match="exactly the keys"):
        read_api_info(api)
    api.write_text(json.dumps({"version": 9, "addr": "127.0.0.1:1", "token": TOKEN}))
    with pytest.raises(ApiInfoError, match="version 9"):
        read_api_info(api)
    api.write_text("nope")
    with pytest.raises(ApiInfoError, match="not valid JSON"):
        read_api_info(api)


def test_resolve_api_prefers_flags_then_data_dir(tmp_path: Path) -> None:
    assert resolve_api(None, "127.0.0.1:9", TOKEN) == ApiInfo("127.0.0.1:9", TOKEN)
    with pytest.raises(ApiInfoError, match="go together"):
        resolve_api(tmp_path, "127.0.0.1:9", None)
    with pytest.raises(ApiInfoError, match="go together"):
        resolve_api(tmp_path, None, TOKEN)
    with pytest.raises(ApiInfoError, match="no node given"):
        resolve_api(None, None, None)
    with pytest.raises(ApiInfoError, match="is the node running"):
        resolve_api(tmp_path, None, None)
    write_api_info(tmp_path / API_FILE, ApiInfo("127.0.0.1:7474", TOKEN))
    assert resolve_api(tmp_path, None, None) == ApiInfo("127.0.0.1:7474", TOKEN)
    assert resolve_api(tmp_path, "[::1]:1", TOKEN).addr == "[::1]:1"


def test_atomic_write_does_not_inherit_a_leftover_temp_files_mode(tmp_path: Path) -> None:
    leftover = tmp_path / f".{API_FILE}.tmp.{os.getpid()}"  # a crash between create and rename
    leftover.write_text("old")
    leftover.chmod(0o644)
    write_api_info(tmp_path / API_FILE, ApiInfo("127.0.0.1:7474", TOKEN))
    assert _mode(tmp_path / API_FILE) == 0o600
    assert not leftover.exists()
