"""Publish -> registry -> runtime: the manifest `wasmatrix module publish` writes is the one the runtime admits."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from crdt.blob import DirBlobStore
from crdt.intent import IntentNode
from crdt.keys import load_public_key, load_signing_key
from crdt.store import SqliteStore
from crdt.trust import TrustConfig
from mesh.cli import main
from model import CapabilityRequest, Limits, Manifest
from runtime import Capabilities, Publisher, Runtime, RuntimeConfig, SignatureError, SignedManifest, TrustStore

HELLO = Path(__file__).resolve().parent.parent / "runtime" / "examples" / "hello.wasm"


def _published(tmp_path: Path) -> tuple[IntentNode, Path, Path]:
    d, pub = tmp_path / "data", tmp_path / "pub.key"
    assert main(["keygen", "--role", "publisher", "--out", str(pub), "--data-dir", str(d)]) == 0
    assert main([
        "module", "publish", str(HELLO), "--name", "hello", "--version", "1.0.0", "--key", str(pub),
        "--capability", "env:GREETING", "--capability", "env:SECRET",
        "--limit", "timeout_ms=2000", "--limit", f"memory_bytes={32 << 20}", "--data-dir", str(d),
    ]) == 0
    node_key = load_signing_key(d / "node.key")
    trust = TrustConfig.load(d / "trust.json")
    trust.admit_node("local", node_key.public_raw)
    return IntentNode("local", node_key, trust, random.Random(0), store=SqliteStore(d)), d, pub


def test_cli_published_manifest_is_what_the_runtime_admits(tmp_path: Path) -> None:
    node, d, pub = _published(tmp_path)
    entry = node.doc.manifest("hello", "1.0.0")
    rec = node.doc.effective("registry", "hello@1.0.0")
    assert rec is not None and entry.manifest is not None
    # The typed values given on the command line, as the registry holds them.
    assert entry.manifest.capabilities == CapabilityRequest(env=("GREETING", "SECRET"))
    assert entry.manifest.limits == Limits(timeout_ms=2000, memory_bytes=32 << 20)
    assert entry.manifest.size == HELLO.stat().st_size

    signed = SignedManifest.from_record(rec.payload, rec.signer, rec.signature, rec.seq, prev=rec.prev, wall_ms=rec.wall_ms)
    assert signed.manifest == entry.manifest
    # The runtime verifies the very bytes the registry log record's signature covers.
    assert signed.signed_bytes() == rec.message()
    assert SignedManifest.from_bytes(signed.to_bytes()) == signed

    trust = TrustStore([load_public_key((tmp_path / "pub.key.pub").read_bytes())])
    blob = DirBlobStore(d / "blobs")
    wasm = blob.read(entry.sha256, 0, entry.size)
    with Runtime(RuntimeConfig(), trust=trust) as rt:
        lm = rt.admit(signed, wasm, grant=Capabilities.build(env={"GREETING": "hi", "OTHER": "x"}))
        assert lm.manifest == entry.manifest
        assert (lm.limits.timeout_ms, lm.limits.memory_bytes) == (2000, 32 << 20)
        out = rt.run_command(lm.key).body.decode()
    assert "env: GREETING=hi" in out
    assert "SECRET" not in out and "OTHER" not in out


def test_runtime_refuses_a_registry_manifest_changed_after_signing(tmp_path: Path) -> None:
    node, d, _ = _published(tmp_path)
    rec = node.doc.effective("registry", "hello@1.0.0")
    assert rec is not None
    trust = TrustStore([load_public_key((tmp_path / "pub.key.pub").read_bytes())])
    wider = {**rec.payload, "limits": {**rec.payload["limits"], "timeout_ms": 300_000}}
    log = {"prev": rec.prev, "wall_ms": rec.wall_ms}
    forged = SignedManifest.from_record(wider, rec.signer, rec.signature, rec.seq, **log)
    with pytest.raises(SignatureError, match="does not verify"):
        trust.verify(forged)
    replayed = SignedManifest.from_record(rec.payload, rec.signer, rec.signature, rec.seq, prev=rec.prev, wall_ms=rec.wall_ms + 1)
    with pytest.raises(SignatureError, match="does not verify"):
        trust.verify(replayed)
    assert trust.verify(SignedManifest.from_record(rec.payload, rec.signer, rec.signature, rec.seq, **log)) == Manifest.from_payload(rec.payload)
