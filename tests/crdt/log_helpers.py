"""Helpers for the signed-log tests: keys, trust, payloads, and the naive slot model attacked."""

from __future__ import annotations

from typing import Any

from crdt.keys import SigningKey
from crdt.schema import DeploymentSpec, deployment_payload
from crdt.logrecord import LogRecord
from crdt.signedlog import SignedLog, TrustAdapter
from crdt.trust import Role, TrustConfig

from crdt_helpers import ADMIN, OPERATOR, PUBLISHER, STRANGER, key, manifest

NOW = 1_800_000_000.0  # seconds; every test passes its clock explicitly
NOW_MS = int(NOW * 1000)
NODES = ["n0", "n1", "f0", "f1"]


def node_key(name: str) -> SigningKey:
    return key("node:" + name)


def trust() -> TrustAdapter:
    t = TrustConfig()
    t.add_key(ADMIN.public_raw, [Role.ADMIN])
    t.add_key(PUBLISHER.public_raw, [Role.PUBLISHER])
    t.add_key(OPERATOR.public_raw, [Role.OPERATOR])
    for n in NODES:
        t.admit_node(n, node_key(n).public_raw)
    return TrustAdapter(t)


def placement(node: str, version: str, at: float = 1.0) -> dict[str, Any]:
    return {"node_id": node, "replicas": [{"deployment": "web", "version": version, "state": "running", "index": 0}], "updated_at": at}


def route(path: str = "/api/*") -> dict[str, Any]:
    return {"host": "*", "path": path, "method": "*", "deployment": "web", "priority": 0}


def deployment(version: str = "^1.0.0", active: str | None = "1.0.0") -> dict[str, Any]:
    spec = DeploymentSpec("web", "hello", version)
    return deployment_payload(spec, active, "set", 1.0)


class Chain:
    """Signs a well-formed chain for one key (what an honest writer does), independent of any log."""

    def __init__(self, signer: SigningKey) -> None:
        self.signer = signer
        self.records: list[LogRecord] = []

    def next(self, kind: str, slot: str, payload: Any, wall_ms: int, *, tombstone: bool = False, seq: int | None = None, prev: bytes | None = None) -> LogRecord:
        s = len(self.records) + 1 if seq is None else seq
        p = (self.records[-1].id if self.records else b"") if prev is None else prev
        rec = LogRecord.create(self.signer, s, p, kind, slot, payload, wall_ms, tombstone=tombstone)
        if seq is None:
            self.records.append(rec)
        return rec


def new_log(**kw: Any) -> SignedLog:
    return SignedLog(trust(), **kw)


class NaiveSlots:
    """The attacked design in miniature: a slot holds whatever validly signed record was stored last."""

    def __init__(self) -> None:
        self.slots: dict[tuple[str, str], LogRecord] = {}

    def put(self, rec: LogRecord) -> None:
        self.slots[(rec.kind, rec.key)] = rec

    def get(self, kind: str, slot: str) -> Any:
        r = self.slots.get((kind, slot))
        return None if r is None or r.tombstone else r.payload


__all__ = ["ADMIN", "OPERATOR", "PUBLISHER", "STRANGER", "manifest"]
