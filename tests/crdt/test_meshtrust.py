"""Replicated trust (issue 10): role grants and revocations as signed ``trust`` records.

Roots are the mesh file's admin keys; grants by an admin (a root or a key a root granted admin)
make a key trusted for its roles on every node; revocations cut a key's later records and name
nodes to refuse. Expected values come from that rule, not from running the implementation.
"""

from __future__ import annotations

import random
from typing import Any

from crdt.documents import IntentDoc
from crdt.intent import IntentNode
from crdt.logrecord import LogRecord
from crdt.meshtrust import grant_payload, grant_slot, revoke_payload, revoke_slot
from crdt.schema import RouteSpec
from crdt.trust import Role, TrustConfig

from crdt_helpers import key
from log_helpers import NOW, NOW_MS, Chain

ROOT = key("root-admin")
ADMIN2 = key("granted-admin")
PUB = key("publisher-x")
OPER = key("operator-x")
LOCAL_ADMIN = key("local-admin")  # admin in trust.json only: not a mesh root
NODE_C = key("node:c")


def route(path: str) -> tuple[str, dict[str, Any]]:
    p = {"host": "*", "path": path, "method": "*", "deployment": "web", "priority": 0}
    return RouteSpec.from_payload(p).key, p


def doc(roots: tuple[bytes, ...] = (ROOT.public_raw,)) -> IntentDoc:
    t = TrustConfig()
    t.add_key(LOCAL_ADMIN.public_raw, [Role.ADMIN])
    t.admit_node(NODE_C.key_id, NODE_C.public_raw)
    return IntentDoc(t, roots=roots)


def grant(chain: Chain, who: Any, roles: list[str], at: int) -> LogRecord:
    return chain.next("trust", grant_slot(who.key_id), grant_payload(who.public_raw, roles, "t"), NOW_MS + at)


def add(d: IntentDoc, rec: LogRecord) -> str:
    res = d.add(rec.encode(), NOW)
    return res.status if res.status != "rejected" else "rejected:" + res.reason


def test_a_grant_by_a_root_makes_the_key_trusted_for_its_roles() -> None:
    d = doc()
    root = Chain(ROOT)
    assert not d.adapter.knows(PUB.key_id)
    assert add(d, grant(root, PUB, ["publisher"], 1)) == "accepted"
    assert d.adapter.roles_of(PUB.key_id) == {Role.PUBLISHER}
    k, p = route("/a/*")
    assert add(d, Chain(PUB).next("routes", k, p, NOW_MS + 2)) == "rejected:role"  # publisher may not write routes
    d2 = doc()
    add(d2, grant(Chain(ROOT), OPER, ["operator"], 1))
    assert add(d2, Chain(OPER).next("routes", k, p, NOW_MS + 2)) == "accepted"
    assert [r.key for r in d2.routes()] == [k]


def test_grants_by_non_admins_are_rejected() -> None:
    d = doc()
    add(d, grant(Chain(ROOT), PUB, ["publisher"], 1))
    # a publisher, a trust.json-only admin and a stranger cannot grant
    assert add(d, grant(Chain(PUB), OPER, ["admin"], 2)) == "rejected:role"
    assert add(d, grant(Chain(LOCAL_ADMIN), OPER, ["operator"], 2)) == "rejected:role"
    assert add(d, grant(Chain(key("stranger")), OPER, ["operator"], 2)) == "rejected:unknown_signer"
    assert not d.adapter.knows(OPER.key_id)
    # an insecure mesh has no roots: nobody can grant
    bare = doc(roots=())
    assert add(bare, grant(Chain(ROOT), PUB, ["publisher"], 1)) == "rejected:unknown_signer"


def test_a_grant_whose_slot_names_another_key_is_a_schema_error() -> None:
    d = doc()
    bad = Chain(ROOT).next("trust", grant_slot(OPER.key_id), {"public_key": PUB.public_raw, "roles": ["admin"], "comment": ""}, NOW_MS)
    assert add(d, bad) == "rejected:schema"


def test_chained_admin_grants_in_any_arrival_order() -> None:
    root, a2, pub = Chain(ROOT), Chain(ADMIN2), Chain(PUB)
    g1 = grant(root, ADMIN2, ["admin"], 1)
    g2 = grant(a2, PUB, ["publisher"], 2)
    k, p = route("/x/*")
    g3 = grant(a2, OPER, ["operator"], 3)
    r = Chain(OPER).next("routes", k, p, NOW_MS + 4)
    forward = doc()
    for rec in (g1, g2, g3, r):
        assert add(forward, rec) == "accepted"
    backward = doc()
    # the operator's route and admin2's grants come before the root's grant of admin2: parked, then adopted
    assert [add(backward, rec) for rec in (r, g3, g2)] == ["rejected:unknown_signer"] * 3
    assert add(backward, g1) == "accepted"
    for d in (forward, backward):
        assert d.adapter.roles_of(ADMIN2.key_id) == {Role.ADMIN}
        assert d.adapter.roles_of(PUB.key_id) == {Role.PUBLISHER}
        assert [x.key for x in d.routes()] == [k]
        assert d.parked_count() == 0


def test_revocation_removes_a_signers_later_records_and_refreshes_routes() -> None:
    d = doc()
    root, op = Chain(ROOT), Chain(OPER)
    add(d, grant(root, OPER, ["operator"], 1))
    k1, p1 = route("/one/*")
    k2, p2 = route("/two/*")
    assert add(d, op.next("routes", k1, p1, NOW_MS + 2)) == "accepted"
    assert add(d, op.next("routes", k2, p2, NOW_MS + 3)) == "accepted"
    assert sorted(r.key for r in d.routes()) == sorted([k1, k2])
    # the admin vouches for the operator's seq 1 only
    assert add(d, root.next("trust", revoke_slot(OPER.key_id), revoke_payload("stolen laptop", NOW_MS + 3, 1), NOW_MS + 10)) == "accepted"
    assert [r.key for r in d.routes()] == [k1]  # the cached route table was refreshed
    assert d.has_write(OPER.key_id, 1) and not d.has_write(OPER.key_id, 2)
    k3, p3 = route("/three/*")
    assert add(d, op.next("routes", k3, p3, NOW_MS + 11)) == "rejected:revoked"
    assert d.adapter.node_revoked(OPER.key_id)
    # lifting the revocation (a tombstone by an admin) brings seq 2 back
    assert add(d, root.next("trust", revoke_slot(OPER.key_id), None, NOW_MS + 20, tombstone=True)) == "accepted"
    assert sorted(r.key for r in d.routes()) == sorted([k1, k2])


def test_an_operator_revokes_a_node_but_cannot_cut_an_admins_records_or_grant() -> None:
    d = doc()
    root, op = Chain(ROOT), Chain(OPER)
    add(d, grant(root, OPER, ["operator"], 1))
    add(d, grant(root, ADMIN2, ["admin"], 2))
    assert add(d, op.next("trust", revoke_slot(NODE_C.key_id), revoke_payload("decommissioned", NOW_MS + 3, 0), NOW_MS + 3)) == "accepted"
    assert d.adapter.node_revoked(NODE_C.key_id)
    assert d.adapter.revocation(NODE_C.key_id) is not None  # the node's key holds no replicated role: cut
    assert add(d, op.next("trust", revoke_slot(ADMIN2.key_id), revoke_payload("coup", NOW_MS + 4, 0), NOW_MS + 4)) == "accepted"
    assert d.adapter.node_revoked(ADMIN2.key_id) and d.adapter.revocation(ADMIN2.key_id) is None
    assert add(d, grant(op, PUB, ["publisher"], 5)) == "rejected:role"


def _effective(d: IntentDoc) -> tuple[Any, ...]:
    j = d.adapter.to_json()
    j.pop("generation")
    return (j, d.view_digest())


def test_effective_trust_is_the_same_whatever_the_arrival_order() -> None:
    root, a2, op, pub = Chain(ROOT), Chain(ADMIN2), Chain(OPER), Chain(PUB)
    k1, p1 = route("/one/*")
    k2, p2 = route("/two/*")
    recs = [
        grant(root, ADMIN2, ["admin"], 1),
        grant(a2, OPER, ["operator"], 2),
        grant(a2, PUB, ["developer", "publisher"], 3),
        op.next("routes", k1, p1, NOW_MS + 4),
        op.next("routes", k2, p2, NOW_MS + 5),
        root.next("trust", revoke_slot(OPER.key_id), revoke_payload("left", NOW_MS + 5, 1), NOW_MS + 6),
        a2.next("trust", grant_slot(PUB.key_id), None, NOW_MS + 7, tombstone=True),  # the publisher's grant withdrawn
        op.next("trust", revoke_slot(NODE_C.key_id), revoke_payload("x", NOW_MS, 0), NOW_MS + 3),  # op seq 3: cut
    ]
    ref = doc()
    for rec in recs:
        ref.add(rec.encode(), NOW)
    want = _effective(ref)
    j = want[0]
    assert [g["key_id"] for g in j["grants"]] == sorted([ADMIN2.key_id, OPER.key_id])
    assert [r["id"] for r in j["revocations"]] == [OPER.key_id]  # the operator's node revocation is past its cut
    assert [r.key for r in ref.routes()] == [k1]
    rng = random.Random(7)
    for _ in range(12):
        order = recs[:]
        rng.shuffle(order)
        d = doc()
        for rec in order:
            d.add(rec.encode(), NOW)
        assert _effective(d) == want


def test_intent_node_refuses_a_local_trust_write_without_an_admin_key_and_accepts_one_with() -> None:
    import pytest

    from crdt.errors import PermissionDenied

    n = IntentNode("n", key("node:n"), TrustConfig(), random.Random(1), roots=[ROOT.public_raw])
    with pytest.raises(PermissionDenied, match="admin"):
        n._commit("trust", grant_slot(PUB.key_id), grant_payload(PUB.public_raw, ["publisher"]), OPER, 1.0, NOW)
    n._commit("trust", grant_slot(PUB.key_id), grant_payload(PUB.public_raw, ["publisher"]), ROOT, 1.0, NOW)
    assert n.doc.adapter.roles_of(PUB.key_id) == {Role.PUBLISHER}
