"""ReplayWindow against its definition, and the Ed25519 <-> X25519 identity binding."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.harness.budget import examples

from mesh.transport import LocalIdentity, TransportError, NodeIdentity, ReplayVerdict, ReplayWindow, load_or_create_x25519
from tests.fsync_helpers import record_fsyncs
from transport_helpers import ident


def test_window_edges() -> None:
    w = ReplayWindow(2048)
    assert w.check(0) is ReplayVerdict.NEW
    w.accept(5000)
    assert w.check(5000) is ReplayVerdict.DUPLICATE
    assert w.check(5000 - 2047) is ReplayVerdict.NEW
    assert w.check(5000 - 2048) is ReplayVerdict.TOO_OLD
    w.accept(4000)
    assert w.check(4000) is ReplayVerdict.DUPLICATE
    w.accept(5000 + 3000)  # jump further than the window: everything before is too old or new
    assert w.check(5000) is ReplayVerdict.TOO_OLD
    assert w.check(8000 - 1) is ReplayVerdict.NEW


@settings(max_examples=examples(200), deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=5000), max_size=300), st.sampled_from([64, 100, 2048]))
def test_window_matches_definition(seq: list[int], size: int) -> None:
    # Definition: a counter is accepted iff it was never accepted and is > highest_accepted - size.
    w = ReplayWindow(size)
    seen: set[int] = set()
    top = -1
    for c in seq:
        if c in seen and c > top - size:
            expected = ReplayVerdict.DUPLICATE
        elif c <= top - size:
            expected = ReplayVerdict.TOO_OLD
        else:
            expected = ReplayVerdict.NEW
        assert w.check(c) is expected
        if expected is ReplayVerdict.NEW:
            w.accept(c)
            seen.add(c)
            top = max(top, c)


def test_node_id_is_sha256_fingerprint_of_ed25519_key() -> None:
    me = ident("a").public
    assert me.node_id == hashlib.sha256(me.ed25519_public).hexdigest()[:16]
    assert me.verify()


def test_binding_rejects_swapped_or_forged_parts() -> None:
    a, b = ident("a").public, ident("b").public
    assert not NodeIdentity(a.node_id, a.ed25519_public, b.x25519_public, a.binding_signature).verify()
    assert not NodeIdentity(a.node_id, a.ed25519_public, a.x25519_public, b.binding_signature).verify()
    assert not NodeIdentity(b.node_id, a.ed25519_public, a.x25519_public, a.binding_signature).verify()
    forged = bytes([a.binding_signature[0] ^ 1]) + a.binding_signature[1:]
    assert not NodeIdentity(a.node_id, a.ed25519_public, a.x25519_public, forged).verify()


def test_x25519_key_file_created_private_and_reloaded(tmp_path: Path) -> None:
    p = tmp_path / "data" / "node.x25519"
    raw = load_or_create_x25519(p)
    assert len(raw) == 32 and stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert load_or_create_x25519(p) == raw
    me = LocalIdentity.from_seeds(b"s" * 32, raw)
    assert me.public.verify()


def test_local_identity_repr_holds_no_private_key() -> None:
    x_raw = bytes(range(32))
    ed_seed = bytes(range(100, 132))
    me = LocalIdentity.from_seeds(ed_seed, x_raw)
    for text in (repr(me), str(me)):
        assert repr(x_raw) not in text and x_raw.hex() not in text and ed_seed.hex() not in text
        assert "x25519_private_raw" not in text and "ed25519_private" not in text
        assert me.node_id in text  # the public half still identifies it in logs


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_x25519_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    p = tmp_path / "node.x25519"
    load_or_create_x25519(p)
    p.chmod(mode)
    with pytest.raises(TransportError, match=rf"accessible by group or others \(mode {mode:04o}\).*chmod 600"):
        load_or_create_x25519(p)
    p.chmod(0o600)
    assert len(load_or_create_x25519(p)) == 32


def test_x25519_key_file_is_written_durably(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced = record_fsyncs(monkeypatch)
    p = tmp_path / "node.x25519"
    raw = load_or_create_x25519(p)
    # the key's bytes reach the disk (in a 0600 file) before its name does, and the name is made durable
    assert synced == ["file:0600", "dir"]
    assert p.read_bytes() == raw and sorted(x.name for x in tmp_path.iterdir()) == ["node.x25519"]


def test_x25519_key_created_concurrently_is_not_overwritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Another process creates the key between our existence check and our write: we adopt its key.
    p = tmp_path / "node.x25519"
    theirs = bytes(range(1, 33))
    real_exists = Path.exists

    def exists_then_race(self: Path) -> bool:
        found = real_exists(self)
        if self == p and not found:
            p.write_bytes(theirs)
            p.chmod(0o600)
        return found

    monkeypatch.setattr(Path, "exists", exists_then_race)
    assert load_or_create_x25519(p) == theirs
    assert p.read_bytes() == theirs
