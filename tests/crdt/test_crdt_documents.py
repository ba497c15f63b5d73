import hashlib
import random

import pytest

from crdt.documents import IntentDoc
from crdt.errors import Conflict, KvLimitError, NotFound, PermissionDenied, ValidationError
from crdt.intent import IntentNode
from crdt.logrecord import LogRecord
from crdt.schema import DeploymentSpec, KvLimits, ReplicaClaim, RouteSpec, TenantQuota
from crdt_helpers import ADMIN, OPERATOR, PUBLISHER, STRANGER, VIEWER, key, make_nodes, manifest, share, share_all, trust_for


@pytest.fixture
def node():
    return make_nodes(1)["n000"]


def test_registry_versions_and_tombstones(node):
    node.publish(manifest("hello", "1.0.0"), PUBLISHER, 1)
    node.publish(manifest("hello", "1.2.0"), PUBLISHER, 2)
    node.publish(manifest("hello", "2.0.0-rc.1"), ADMIN, 3)
    assert [m.version for m in node.doc.versions("hello")] == ["1.0.0", "1.2.0", "2.0.0-rc.1"]
    assert node.doc.manifest("hello", "1.2.0").publisher == PUBLISHER.key_id
    with pytest.raises(Conflict):
        node.publish(manifest("hello", "1.0.0"), PUBLISHER, 4)
    node.remove_version("hello", "1.0.0", PUBLISHER, 5, reason="cve")
    removed = node.doc.manifest("hello", "1.0.0")
    assert removed.removed and removed.removed_reason == "cve" and removed.sha256 == manifest("hello", "1.0.0").sha256
    assert [m.version for m in node.doc.versions("hello", include_removed=False)] == ["1.2.0", "2.0.0-rc.1"]
    assert node.doc.resolve("hello", "^1.0.0").version == "1.2.0"
    with pytest.raises(Conflict):
        node.publish(manifest("hello", "1.0.0"), PUBLISHER, 6)  # tombstoned versions are not reusable
    assert node.collectable_blobs(5 + 8 * 86400) == [removed.sha256]
    with pytest.raises(NotFound):
        node.doc.manifest("hello", "9.9.9")


def test_roles_enforced_locally(node):
    with pytest.raises(PermissionDenied):
        node.publish(manifest(), OPERATOR, 1)
    with pytest.raises(PermissionDenied):
        node.publish(manifest(), VIEWER, 1)
    with pytest.raises(PermissionDenied):
        node.publish(manifest(), STRANGER, 1)
    node.publish(manifest(), PUBLISHER, 1)
    with pytest.raises(PermissionDenied):
        node.set_deployment(DeploymentSpec("web", "hello", "^1.0.0"), PUBLISHER, 2)


def test_deployment_active_version_and_rollback(node):
    node.publish(manifest("hello", "1.0.0"), PUBLISHER, 1)
    node.set_deployment(DeploymentSpec("web", "hello", "^1.0.0", replicas=3), OPERATOR, 2)
    assert node.deployment("web").active_version == "1.0.0"
    node.publish(manifest("hello", "1.1.0"), PUBLISHER, 3)
    node.set_deployment(DeploymentSpec("web", "hello", "^1.0.0", replicas=3), OPERATOR, 4)
    d = node.deployment("web")
    assert d.active_version == "1.1.0" and d.revision == 2
    node.rollback("web", OPERATOR, 5)
    d = node.deployment("web")
    assert d.active_version == "1.0.0" and d.revision == 3 and d.history[-1].reason == "rollback"
    node.rollback("web", ADMIN, 6, to_version="1.1.0")
    assert node.deployment("web").active_version == "1.1.0"
    with pytest.raises(Conflict):
        node.remove_version("hello", "1.1.0", PUBLISHER, 7)  # active somewhere
    with pytest.raises(NotFound):
        node.set_deployment(DeploymentSpec("api", "hello", "^5.0.0"), OPERATOR, 8)
    with pytest.raises(ValidationError):
        DeploymentSpec("api", "hello", "not-a-version")
    with pytest.raises(ValidationError):
        DeploymentSpec("API!", "hello", "1.0.0")
    node.delete_deployment("web", OPERATOR, 9)
    with pytest.raises(NotFound):
        node.deployment("web")


def test_routes_in_document(node):
    node.set_route(RouteSpec("api.example.com", "/v1/*", "*", "web"), OPERATOR, 1)
    node.set_route(RouteSpec("*", "/*", "*", "fallback"), OPERATOR, 2)
    assert node.match("api.example.com", "/v1/x", "GET").deployment == "web"
    assert node.match("foo.org", "/", "GET").deployment == "fallback"
    node.delete_route("*", "/*", "*", OPERATOR, 3)
    assert node.match("foo.org", "/", "GET") is None
    with pytest.raises(PermissionDenied):
        node.set_route(RouteSpec("*", "/*", "*", "x"), PUBLISHER, 4)


def test_kv_protocol_and_limits():
    n = make_nodes(1, kv_limits=KvLimits(max_value_bytes=100, max_keys=3, max_namespace_bytes=250))["n000"]
    n.set("app", "a/1", b"x" * 10)
    n.set("app", "a/2", b"y")
    n.set("app", "b", b"z")
    assert n.get("app", "a/1") == b"x" * 10 and n.get("app", "nope") is None
    assert n.list("app", "a/") == ["a/1", "a/2"] and n.list("app") == ["a/1", "a/2", "b"]
    with pytest.raises(KvLimitError):
        n.set("app", "c", b"1")  # 4th key
    with pytest.raises(KvLimitError):
        n.set("app", "a/1", b"x" * 101)
    n.set("app", "a/1", b"x" * 100)  # overwrite within count
    n.set("app", "a/2", b"y" * 100)  # namespace now 103 + 103 + 2 bytes
    with pytest.raises(KvLimitError, match="limit 250"):
        n.set("app", "b", b"z" * 100)
    assert n.get("app", "b") == b"z"
    n.delete("app", "a/1")
    assert n.get("app", "a/1") is None and n.list("app") == ["a/2", "b"]
    n.set("app", "c", b"1")
    with pytest.raises(ValidationError):
        n.set("Bad NS", "k", b"v")


def test_placement_single_writer():
    nodes = make_nodes(2)
    a, b = nodes["n000"], nodes["n001"]
    a.set_placement([ReplicaClaim("web", "1.0.0", "running", 0)], 1)
    assert a.doc.placement("n000").replicas[0].state == "running"
    # b cannot write a's entry, even by signing a record for that slot itself
    forged = LogRecord.create(key("node:n001"), 1, b"", "placement", "n000", {"node_id": "n000", "replicas": [], "updated_at": 2.0}, 2000)
    for n in (a, b):
        assert n.doc.add(forged.encode(), 2).reason == "not_owner"
    assert a.doc.placement("n000") is not None and a.doc.placement("n000").replicas  # forged one ignored
    assert b.doc.placement("n000") is None
    assert b.counters.invalid_by_reason.get("not_owner") == 1


def test_placements_follow_every_change_of_the_view():
    """placements() is parsed once per change: a cached read must still see each new entry and update."""
    nodes = make_nodes(2)
    a, b = nodes["n000"], nodes["n001"]
    assert a.doc.placements() == {}
    a.set_placement([ReplicaClaim("web", "1.0.0", "running", 0)], 1)
    assert [c.state for c in a.doc.placements()["n000"].replicas] == ["running"]
    a.set_placement([ReplicaClaim("web", "1.0.0", "stopping", 0)], 2)
    assert [c.state for c in a.doc.placements()["n000"].replicas] == ["stopping"]
    b.set_placement([], 3)
    assert sorted(b.doc.placements()) == ["n001"]
    share(a, b)  # entries arriving by sync, both ways
    share(b, a)
    assert sorted(a.doc.placements()) == ["n000", "n001"] and sorted(b.doc.placements()) == ["n000", "n001"]
    a.doc.placements().clear()  # the caller's copy, not the cache
    assert sorted(a.doc.placements()) == ["n000", "n001"]


def test_tenant_answers_follow_every_change_of_the_view():
    """tenant() and deployment_tenant() are kept between changes: each read after a write, a sync or a
    revocation must see the change (the quota check of every call reads them)."""
    nodes = make_nodes(2)
    a, b = nodes["n000"], nodes["n001"]
    a.publish(manifest("hello", "1.0.0"), PUBLISHER, 1)
    for d in (a, b):  # asked (and kept) before anything exists
        assert d.doc.tenant("t1") is None and d.doc.deployment_tenant("web") is None
    a.set_deployment(DeploymentSpec("web", "hello", "^1.0.0"), OPERATOR, 2)
    assert a.doc.deployment_tenant("web") == "default"  # a spec without a tenant belongs to the default one
    a.set_deployment(DeploymentSpec("web", "hello", "^1.0.0", tenant="t1"), OPERATOR, 3)
    assert a.doc.deployment_tenant("web") == "t1"
    a.set_tenant(TenantQuota("t1", per_minute=5), OPERATOR, 4)
    assert a.doc.tenant("t1") == TenantQuota("t1", per_minute=5)
    a.set_tenant(TenantQuota("t1", per_minute=7, max_concurrency=0), OPERATOR, 5)
    assert (a.doc.tenant("t1").per_minute, a.doc.tenant("t1").max_concurrency) == (7, 0)
    share(a, b)  # arriving by sync
    assert b.doc.tenant("t1") == TenantQuota("t1", per_minute=7, max_concurrency=0)
    assert b.doc.deployment_tenant("web") == "t1"
    a.set_deployment(DeploymentSpec("web", "hello", "^1.0.0", tenant="t2"), OPERATOR, 6)
    assert a.doc.deployment_tenant("web") == "t2"
    a.delete_tenant("t1", OPERATOR, 7)
    assert a.doc.tenant("t1") is None
    a.delete_deployment("web", OPERATOR, 8)
    assert a.doc.deployment_tenant("web") is None
    b.doc.revoke(OPERATOR.key_id, 0, 0)  # every operator record leaves b's view
    assert b.doc.tenant("t1") is None and b.doc.deployment_tenant("web") is None


def test_forged_unknown_and_wrong_role_records_are_ignored_and_counted():
    audit = []
    nodes = make_nodes(2, audit_sink=audit.append)
    a, b = nodes["n000"], nodes["n001"]
    good = a.publish(manifest("m", "1.0.0"), PUBLISHER, 1)
    share(a, b)
    assert b.doc.manifest("m", "1.0.0")
    prev = a.doc.records.heads()[PUBLISHER.key_id][1]
    # 1. a record signed by an unknown key
    unknown = LogRecord.create(STRANGER, 1, b"", "registry", "m@2.0.0", manifest("m", "2.0.0").to_payload(), 2000)
    # 2. a record by a trusted key lacking the role (operator -> registry)
    wrong_role = LogRecord.create(OPERATOR, 1, b"", "registry", "m@3.0.0", manifest("m", "3.0.0").to_payload(), 2000)
    # 3. a forged signature claiming to be the publisher
    real4 = LogRecord.create(PUBLISHER, 2, prev, "registry", "m@4.0.0", manifest("m", "4.0.0").to_payload(), 2000)
    forged = LogRecord(real4.signer, 2, prev, "registry", "m@4.0.0", False, real4.payload, 2000, b"\x01" * 64)
    # 4. a valid signature over different content (payload swapped after signing)
    real = LogRecord.create(PUBLISHER, 2, prev, "registry", "m@5.0.0", manifest("m", "5.0.0").to_payload(), 2000)
    tampered = LogRecord(real.signer, 2, prev, real.kind, real.key, False, {**real.payload, "sha256": "f" * 64}, 2000, real.signature)
    # 5. invalid schema although correctly signed
    bad_schema = LogRecord.create(PUBLISHER, 2, prev, "registry", "m@6.0.0", {"name": "m"}, 2000)
    for r in (unknown, wrong_role, forged, tampered, bad_schema):
        assert b.doc.add(r.encode(), 2).status == "rejected"
    # raw garbage
    assert b.doc.add(b"\x93garbage", 3).reason == "malformed"
    assert [m.version for m in b.doc.versions("m")] == ["1.0.0"]
    reasons = b.counters.invalid_by_reason
    assert reasons == {"unknown_signer": 1, "role": 1, "bad_signature": 2, "schema": 1, "malformed": 1}
    assert sorted(e.reason for e in audit if e.root == "log") == sorted(["unknown_signer", "role", "bad_signature", "bad_signature", "schema", "malformed"])
    assert b.has_write(good.signer, good.seq) and not b.has_write(PUBLISHER.key_id, 2)
    # nothing invalid was stored: b holds exactly a's one record
    assert b.doc.records.export() == a.doc.records.export()


def test_malformed_record_is_refused_and_counted(node):
    assert node.doc.add(b"\x05\x01garbage", 0).reason == "malformed"
    assert node.counters.invalid_by_reason == {"malformed": 1}
    assert node.doc.records.export() == []


def test_concurrent_writes_resolve_by_seq_then_signer():
    nodes = make_nodes(2)
    a, b = nodes["n000"], nodes["n001"]
    a.publish(manifest("hello", "1.0.0"), PUBLISHER, 1)
    share(a, b)
    # both write concurrently with different signers at the same wall time: higher key id wins
    ua = a.set_route(RouteSpec("x.com", "/", "*", "from-admin"), ADMIN, 2)
    ub = b.set_route(RouteSpec("x.com", "/", "*", "from-operator"), OPERATOR, 2)
    assert ua.seq == ub.seq
    share(b, a)
    share(a, b)
    winner = "from-admin" if ADMIN.key_id > OPERATOR.key_id else "from-operator"
    assert a.match("x.com", "/", "GET").deployment == b.match("x.com", "/", "GET").deployment == winner
    # a write that has seen the other wins regardless of key id
    loser_key = OPERATOR if winner == "from-admin" else ADMIN
    ack = a.set_route(RouteSpec("x.com", "/", "*", "later"), loser_key, 4)
    assert ack.seq == ua.seq + 1
    share(a, b)
    assert b.match("x.com", "/", "GET").deployment == "later"


def test_kv_concurrent_writers_converge():
    nodes = make_nodes(3)
    for i, n in enumerate(nodes.values()):
        n.set("ns", "k", f"v{i}".encode())
    share_all(nodes)
    vals = {n.get("ns", "k") for n in nodes.values()}
    assert len(vals) == 1
    # all wrote at the same wall time: the greatest node key id wins
    ids = {key("node:" + nm).key_id: f"v{i}".encode() for i, nm in enumerate(nodes)}
    assert vals == {ids[max(ids)]}
