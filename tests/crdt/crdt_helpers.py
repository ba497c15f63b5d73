"""Shared fixtures: deterministic keys, trust, a tiny lossy message pump."""

from __future__ import annotations

import hashlib
import random
from typing import Any

from crdt.keys import SigningKey
from crdt.intent import IntentNode
from model import CapabilityRequest, Limits, Manifest
from crdt.sync import SyncConfig
from crdt.trust import Role, TrustConfig


def key(name: str) -> SigningKey:
    return SigningKey.from_seed(hashlib.sha256(name.encode()).digest())


ADMIN, PUBLISHER, OPERATOR, VIEWER, STRANGER = key("admin"), key("publisher"), key("operator"), key("viewer"), key("stranger")


def trust_for(node_names: list[str]) -> TrustConfig:
    t = TrustConfig()
    t.add_key(ADMIN.public_raw, [Role.ADMIN])
    t.add_key(PUBLISHER.public_raw, [Role.PUBLISHER])
    t.add_key(OPERATOR.public_raw, [Role.OPERATOR])
    t.add_key(VIEWER.public_raw, [Role.VIEWER])
    for n in node_names:
        t.admit_node(n, key("node:" + n).public_raw)
    return t


def make_nodes(n: int, seed: int = 0, config: SyncConfig = SyncConfig(), **kw: Any) -> dict[str, IntentNode]:
    names = [f"n{i:03d}" for i in range(n)]
    trust = trust_for(names)
    return {nm: IntentNode(nm, key("node:" + nm), trust, random.Random(f"{seed}:{nm}"), sync_config=config, **kw) for nm in names}


def manifest(name: str = "hello", version: str = "1.0.0", data: bytes = b"\0asm\x01\0\0\0", now: float = 1.0) -> Manifest:
    return Manifest(
        name, version, hashlib.sha256(data + version.encode()).hexdigest(), len(data),
        CapabilityRequest(kv_namespaces=("kv",)), Limits.from_pages(16), created_at=now, description="test module",
    )


class Pump:
    """Delivers messages between nodes with seeded loss, reordering and partitions."""

    def __init__(self, nodes: dict[str, IntentNode], seed: int, loss: float = 0.0, reorder: bool = False, wire: bool = False) -> None:
        self.nodes = nodes
        self.rng = random.Random(seed)
        self.loss = loss
        self.reorder = reorder
        self.wire = wire
        self.queue: list[tuple[str, str, Any]] = []
        self.partition: list[set[str]] | None = None
        self.now = 0.0
        self.delivered = 0

    def send(self, src: str, out: list[tuple[str, Any]]) -> None:
        for dst, msg in out:
            if self.wire:
                msg = roundtrip(msg)
            self.queue.append((src, dst, msg))

    def reachable(self, a: str, b: str) -> bool:
        if self.partition is None:
            return True
        return any(a in g and b in g for g in self.partition)

    def live_for(self, name: str) -> list[str]:
        return sorted(p for p in self.nodes if p != name and self.reachable(name, p))

    def step(self, dt: float = 0.5) -> None:
        """Advance time by dt: tick every node, then deliver every queued message."""
        self.now += dt
        for name in sorted(self.nodes):
            self.send(name, self.nodes[name].tick(self.now, self.live_for(name)))
        self.drain()

    def drain(self, limit: int = 200_000) -> None:
        n = 0
        while self.queue and n < limit:
            if self.reorder:
                i = self.rng.randrange(len(self.queue))
                src, dst, msg = self.queue.pop(i)
            else:
                src, dst, msg = self.queue.pop(0)
            n += 1
            if not self.reachable(src, dst) or self.rng.random() < self.loss:
                continue
            self.delivered += 1
            self.send(dst, self.nodes[dst].receive(src, msg, self.now))


def roundtrip(msg: Any) -> Any:
    import msgpack

    data = msgpack.packb([msg.TYPE, msg.to_payload()], use_bin_type=True)
    t, p = msgpack.unpackb(data, raw=False)
    assert t == msg.TYPE
    return type(msg).from_payload(p)


def content(node: IntentNode) -> tuple[bytes, ...]:
    """Every record the node holds (stored and held), in signer/seq order."""
    return tuple(node.doc.records.export())


def converged(nodes: dict[str, IntentNode]) -> bool:
    docs = [n.doc for n in nodes.values()]
    heads = {d.records.heads_digest() for d in docs}
    views = {tuple(d.view_digest()) for d in docs}
    contents = {content(n) for n in nodes.values()}
    return len(heads) == 1 and len(views) == 1 and len(contents) == 1


def share(src: IntentNode, dst: IntentNode, wall: float = 4e9) -> None:
    """Hand every record ``src`` holds to ``dst`` directly (what a completed sync round does)."""
    for r in src.doc.records.export():
        dst.doc.add(r, wall)


def share_all(nodes: dict[str, IntentNode]) -> None:
    for a in nodes.values():
        for b in nodes.values():
            if a is not b:
                share(a, b)
