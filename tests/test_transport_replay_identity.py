"""ReplayWindow against its definition, and the Ed25519 <-> X25519 identity binding."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.transport import LocalIdentity, NodeIdentity, ReplayVerdict, ReplayWindow, load_or_create_x25519
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


@settings(max_examples=200, deadline=None)
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
