"""Mesh file: init (modes, admin key), strict load, rotation window, and the `wasmatrix mesh` commands."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from crdt.keys import load_signing_key
from mesh import meshfile
from mesh.cli import main
from mesh.meshfile import MeshFileError

ROOT = Path(__file__).resolve().parents[1]
NOW = 1_800_000_000


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def _doc(p: Path) -> dict:
    return json.loads(p.read_text())


def _write(p: Path, doc: dict) -> None:
    p.write_text(json.dumps(doc))
    p.chmod(0o600)


def test_init_writes_private_mesh_file_and_admin_key(tmp_path: Path) -> None:
    out = tmp_path / "mesh.json"
    mesh, key_path = meshfile.init_mesh(out, now_wall=NOW)
    assert key_path == tmp_path / "mesh.json.admin.key"
    assert _mode(out) == 0o600 and _mode(key_path) == 0o600
    doc = _doc(out)
    assert doc["format"] == "wasmatrix-mesh" and doc["version"] == 1 and doc["created"] == NOW
    assert len(base64.b64decode(doc["secret"])) == 32
    assert doc["previous"] is None
    admin = load_signing_key(key_path)
    assert doc["admins"] == [{"key_id": admin.key_id, "public_key": base64.b64encode(admin.public_raw).decode()}]
    assert meshfile.load(out) == mesh
    assert len(mesh.mesh_id) == 16


def test_init_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / "mesh.json"
    first, _ = meshfile.init_mesh(out, now_wall=NOW)
    with pytest.raises(MeshFileError, match="already exists; pass --force"):
        meshfile.init_mesh(out, now_wall=NOW)
    assert meshfile.load(out) == first
    out.unlink()  # the admin key alone also blocks: it would be overwritten
    with pytest.raises(MeshFileError, match="admin.key already exists"):
        meshfile.init_mesh(out, now_wall=NOW)
    second, _ = meshfile.init_mesh(out, now_wall=NOW, force=True)
    assert second.secret != first.secret and second.mesh_id != first.mesh_id


def test_load_refuses_group_readable_file(tmp_path: Path) -> None:
    out = tmp_path / "mesh.json"
    meshfile.init_mesh(out, now_wall=NOW)
    out.chmod(0o640)
    with pytest.raises(MeshFileError, match=r"accessible by group or others \(mode 0640\)"):
        meshfile.load(out)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.update(secret=base64.b64encode(b"x" * 31).decode()), "exactly 32 bytes, got 31"),
        (lambda d: d.update(secret="!!notbase64!!"), "not valid base64"),
        (lambda d: d.update(version=2), "version 2; this wasmatrix reads version 1"),
        (lambda d: d.update(format="other"), "not a wasmatrix mesh file"),
        (lambda d: d.update(extra=1), r"unknown keys \['extra'\]"),
        (lambda d: d.pop("admins"), r"missing keys \['admins'\]"),
        (lambda d: d.update(admins=[]), "non-empty list"),
        (lambda d: d["admins"][0].update(key_id="0000000000000000"), "does not match its public key"),
        (lambda d: d.update(mesh_id="XYZ"), "16 lowercase hex"),
        (lambda d: d.update(previous={"secret": d["secret"], "accept_until": NOW}), "previous.secret equals secret"),
        (lambda d: d.update(previous={"secret": base64.b64encode(b"y" * 32).decode(), "accept_until": "soon"}),
         "accept_until must be a non-negative integer"),
    ],
)
def test_load_validates_strictly(tmp_path: Path, edit, match: str) -> None:
    out = tmp_path / "mesh.json"
    meshfile.init_mesh(out, now_wall=NOW)
    doc = _doc(out)
    edit(doc)
    _write(out, doc)
    with pytest.raises(MeshFileError, match=match):
        meshfile.load(out)


def test_load_missing_and_not_json(tmp_path: Path) -> None:
    with pytest.raises(MeshFileError, match="does not exist.*mesh init"):
        meshfile.load(tmp_path / "nope.json")
    p = tmp_path / "m.json"
    p.write_text("{")
    p.chmod(0o600)
    with pytest.raises(MeshFileError, match="not valid JSON"):
        meshfile.load(p)


def test_rotate_keeps_old_secret_until_accept_until(tmp_path: Path) -> None:
    out = tmp_path / "mesh.json"
    old, _ = meshfile.init_mesh(out, now_wall=NOW)
    new = meshfile.rotate(out, now_wall=NOW + 10, grace_s=3600)
    assert _mode(out) == 0o600
    assert meshfile.load(out) == new
    assert new.secret != old.secret and len(new.secret) == 32
    assert new.mesh_id == old.mesh_id and new.admins == old.admins
    assert new.previous == meshfile.PreviousSecret(old.secret, NOW + 10 + 3600)
    # accept_until is exclusive: both secrets up to the second before it, then only the new one.
    assert new.accepted_secrets(NOW + 10) == (new.secret, old.secret)
    assert new.accepted_secrets(NOW + 3609) == (new.secret, old.secret)
    assert new.accepted_secrets(NOW + 3610) == (new.secret,)
    assert old.accepted_secrets(NOW) == (old.secret,)
    # Dial with the secret everyone knows while the window is open, the new one after it.
    assert new.dial_secret(NOW + 3609) == old.secret
    assert new.dial_secret(NOW + 3610) == new.secret
    assert old.dial_secret(NOW) == old.secret


def test_rotate_refuses_while_window_open_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / "mesh.json"
    meshfile.init_mesh(out, now_wall=NOW)
    first = meshfile.rotate(out, now_wall=NOW, grace_s=100)
    with pytest.raises(MeshFileError, match="rotation window is open until 1800000100"):
        meshfile.rotate(out, now_wall=NOW + 99, grace_s=100)
    assert meshfile.load(out) == first
    after = meshfile.rotate(out, now_wall=NOW + 100, grace_s=100)
    assert after.previous == meshfile.PreviousSecret(first.secret, NOW + 200)
    forced = meshfile.rotate(out, now_wall=NOW + 101, grace_s=50, force=True)
    assert forced.previous == meshfile.PreviousSecret(after.secret, NOW + 151)


@pytest.mark.parametrize("grace", [0, -1, meshfile.MAX_GRACE_S + 1])
def test_rotate_rejects_bad_grace(tmp_path: Path, grace: int) -> None:
    out = tmp_path / "mesh.json"
    mesh, _ = meshfile.init_mesh(out, now_wall=NOW)
    with pytest.raises(MeshFileError, match="grace must be between 1 and"):
        meshfile.rotate(out, now_wall=NOW, grace_s=grace)
    assert meshfile.load(out) == mesh


def test_repr_never_shows_a_secret(tmp_path: Path) -> None:
    out = tmp_path / "mesh.json"
    meshfile.init_mesh(out, now_wall=NOW)
    mesh = meshfile.rotate(out, now_wall=NOW, grace_s=10)
    text = repr(mesh)
    assert mesh.mesh_id in text and "accept_until=1800000010" in text
    assert "secret=" not in text
    for secret in (mesh.secret, mesh.previous.secret):
        assert repr(secret) not in text


def test_secret_fingerprint_is_domain_separated_sha256() -> None:
    import hashlib

    secret = bytes(range(32))
    expected = hashlib.sha256(b"wasmatrix/mesh-secret-fingerprint/v1\x00" + secret).hexdigest()[:16]
    assert meshfile.secret_fingerprint(secret) == expected


# -- CLI ---------------------------------------------------------------------------------------------


def test_cli_init_show_rotate_never_print_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mesh.json"
    assert main(["mesh", "init", "--out", str(out), "--json"]) == 0
    init = json.loads(capsys.readouterr().out)
    mesh = meshfile.load(out)
    assert init["mesh_id"] == mesh.mesh_id
    assert init["admin_key_ids"] == [mesh.admins[0].key_id]
    assert init["admin_key_file"] == str(out) + ".admin.key"
    assert main(["mesh", "rotate", "--mesh-secret", str(out), "--grace", "600"]) == 0
    rotated = meshfile.load(out)
    cap = capsys.readouterr()
    assert "rotation_window_open" in cap.out and "True" in cap.out
    assert main(["mesh", "show", "--mesh-secret", str(out)]) == 0
    human = capsys.readouterr().out
    assert main(["mesh", "show", "--mesh-secret", str(out), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["rotation_window_open"] is True
    assert shown["secret_fingerprint"] == meshfile.secret_fingerprint(rotated.secret)
    assert shown["previous_secret_fingerprint"] == meshfile.secret_fingerprint(mesh.secret)
    for text in (cap.out, cap.err, human, json.dumps(shown), json.dumps(init)):
        for secret in (mesh.secret, rotated.secret):
            assert base64.b64encode(secret).decode() not in text
            assert secret.hex() not in text


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mesh.json"
    assert main(["mesh", "init", "--out", str(out)]) == 0
    assert main(["mesh", "init", "--out", str(out)]) == 1
    assert "already exists; pass --force" in capsys.readouterr().err
    assert main(["mesh", "init", "--out", str(out), "--force"]) == 0
    assert main(["mesh", "show", "--mesh-secret", str(tmp_path / "missing.json")]) == 2
    assert main(["mesh", "rotate", "--mesh-secret", str(out), "--grace", "0"]) == 2
    assert main(["mesh", "rotate", "--mesh-secret", str(out)]) == 0
    assert main(["mesh", "rotate", "--mesh-secret", str(out)]) == 1  # window still open
    out.chmod(0o644)
    assert main(["mesh", "show", "--mesh-secret", str(out)]) == 1
    assert "chmod 600" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["mesh", "init"])  # --out is required
    assert exc.value.code == 2


def test_cli_as_a_process(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = tmp_path / "m.json"
    r = subprocess.run([sys.executable, "-m", "mesh.cli", "mesh", "init", "--out", str(out)],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    assert _mode(out) == 0o600
    r = subprocess.run([sys.executable, "-m", "mesh.cli", "mesh", "bogus"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert r.returncode == 2
