"""The daemon's mesh-file reloads and the switch at accept_until (mesh/daemon/meshsecret.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mesh import meshfile
from mesh.daemon.meshsecret import MeshSecrets
from mesh.meshfile import MeshFileError

NOW = 1_700_000_000


def _touch_later(p: Path, seconds: int) -> None:
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


def test_reload_on_change_then_switch_at_accept_until(tmp_path: Path) -> None:
    live = tmp_path / "mesh.json"
    old, _ = meshfile.init_mesh(live, now_wall=NOW)
    s = MeshSecrets(live, NOW)
    assert (s.dial, s.accepted) == (old.secret, (old.secret,))
    assert s.poll(NOW + 1) is None  # nothing changed
    new = meshfile.rotate(live, now_wall=NOW + 10, grace_s=30)
    _touch_later(live, 1)
    ch = s.poll(NOW + 11)
    assert ch is not None and ch.reloaded and not ch.error
    # In the window: dial with the old secret everyone knows, accept both (dial one first).
    assert (ch.dial, ch.accepted) == (old.secret, (old.secret, new.secret))
    fields = ch.log_fields(s.mesh, NOW + 11)
    assert fields["window_open"] is True and fields["accept_until"] == NOW + 40
    assert old.secret.hex() not in repr(fields) + repr(ch) and new.secret.hex() not in repr(fields) + repr(ch)
    assert s.poll(NOW + 39) is None
    ch = s.poll(NOW + 40)  # accept_until is exclusive: the window is closed at that second
    assert ch is not None and not ch.reloaded
    assert (ch.dial, ch.accepted) == (new.secret, (new.secret,))
    assert s.poll(NOW + 41) is None and s.reloads == 1


def test_forced_reload_notices_a_change_with_the_same_mtime(tmp_path: Path) -> None:
    live = tmp_path / "mesh.json"
    old, _ = meshfile.init_mesh(live, now_wall=NOW)
    s = MeshSecrets(live, NOW)
    st = live.stat()
    new = meshfile.rotate(live, now_wall=NOW, grace_s=30)
    os.utime(live, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.chmod(live, 0o600)
    ch = s.poll(NOW + 1, force=True)  # SIGHUP
    assert ch is not None and ch.reloaded and ch.accepted == (old.secret, new.secret)


def test_a_bad_or_foreign_file_keeps_the_secrets_in_use(tmp_path: Path) -> None:
    live = tmp_path / "mesh.json"
    old, _ = meshfile.init_mesh(live, now_wall=NOW)
    s = MeshSecrets(live, NOW)
    live.write_text("{ half a copy")
    _touch_later(live, 1)
    ch = s.poll(NOW + 1)
    assert ch is not None and "not valid JSON" in ch.error
    assert s.poll(NOW + 2) is None  # reported once per version on disk
    other, _ = meshfile.init_mesh(tmp_path / "other.json", now_wall=NOW)
    os.replace(tmp_path / "other.json", live)
    ch = s.poll(NOW + 3)
    assert ch is not None and f"mesh {other.mesh_id}" in ch.error
    assert (s.dial, s.accepted) == (old.secret, (old.secret,)) and s.failures == 2


def test_start_up_with_a_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(MeshFileError, match="does not exist"):
        MeshSecrets(tmp_path / "nope.json", NOW)
