"""Artifact store, manifests, signatures and admission checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime import (
    ArtifactError,
    ArtifactStore,
    Capabilities,
    CapabilityRequest,
    Limits,
    Manifest,
    ManifestError,
    MemoryAuditSink,
    Publisher,
    Runtime,
    RuntimeConfig,
    SignatureError,
    SignedManifest,
    TrustStore,
    ValidationError,
)
from model import SemverError, sha256_hex
from tests.runtime.conftest import counter


def test_store_roundtrip_and_dedup(tmp_path: Path, wasm: dict[str, bytes]) -> None:
    store = ArtifactStore(tmp_path)
    digest = store.put(wasm["hello"])
    assert digest == sha256_hex(wasm["hello"])
    assert store.put(wasm["hello"]) == digest
    assert store.get(digest) == wasm["hello"]
    assert store.list() == [digest]


def test_store_refuses_hash_mismatch_on_write(tmp_path: Path, wasm: dict[str, bytes]) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(ArtifactError, match="does not match"):
        store.put(wasm["hello"], expected_sha256=sha256_hex(b"other"))
    assert store.list() == []


def test_store_detects_tampered_blob_on_read(tmp_path: Path, wasm: dict[str, bytes]) -> None:
    store = ArtifactStore(tmp_path)
    digest = store.put(wasm["hello"])
    path = tmp_path / "sha256" / digest[:2] / digest
    path.write_bytes(wasm["hello"][:-1] + bytes([wasm["hello"][-1] ^ 0xFF]))
    with pytest.raises(ArtifactError, match="corrupt"):
        store.get(digest)
    assert not store.has(digest)  # deleted, so it is fetched again rather than trusted


def test_store_rejects_oversized_blob(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, max_blob_bytes=100)
    with pytest.raises(ArtifactError, match="over the 100 byte limit"):
        store.put(b"\x00asm" + b"\x00" * 200)


def test_manifest_roundtrip_and_canonical_encoding(wasm: dict[str, bytes]) -> None:
    pub = Publisher.generate()
    manifest = Manifest.for_module(
        "hello", "1.2.3-rc.1", wasm["hello"],
        capabilities=CapabilityRequest(env=("GREETING",), kv_namespaces=("counter",)),
        limits=Limits(memory_bytes=32 << 20, timeout_ms=500),
    )
    signed = pub.sign(manifest)
    again = SignedManifest.from_bytes(signed.to_bytes())
    assert again == signed
    assert again.to_bytes() == signed.to_bytes()
    assert TrustStore([pub.public_bytes]).verify(again) == manifest


@pytest.mark.parametrize("version", ["1", "1.2", "01.2.3", "v1.2.3", "1.2.3-", ""])
def test_manifest_rejects_non_semver(version: str, wasm: dict[str, bytes]) -> None:
    with pytest.raises(SemverError, match="semver"):
        Manifest.for_module("hello", version, wasm["hello"])


def test_manifest_decoder_rejects_garbage() -> None:
    with pytest.raises(ManifestError):
        SignedManifest.from_bytes(b"\xc1not msgpack")
    with pytest.raises(ManifestError):
        SignedManifest.from_bytes(b"\x80")  # an empty map


def test_signature_checks(wasm: dict[str, bytes]) -> None:
    pub, other = Publisher.generate(), Publisher.generate()
    trust = TrustStore([pub.public_bytes])
    manifest = Manifest.for_module("hello", "1.0.0", wasm["hello"])
    signed = pub.sign(manifest)
    with pytest.raises(SignatureError, match="does not trust"):
        trust.verify(other.sign(manifest))
    tampered = SignedManifest(
        Manifest.for_module("hello", "1.0.0", wasm["hello"], limits=Limits(memory_bytes=512 << 20)),
        signed.key_id, signed.signature,
    )
    with pytest.raises(SignatureError, match="does not verify"):
        trust.verify(tampered)
    flipped = SignedManifest(manifest, signed.key_id, bytes([signed.signature[0] ^ 1]) + signed.signature[1:])
    with pytest.raises(SignatureError):
        trust.verify(flipped)
    trust.remove(pub.key_id)
    with pytest.raises(SignatureError):
        trust.verify(signed)


def test_admit_signed_module_end_to_end(data_dir: Path, wasm: dict[str, bytes]) -> None:
    pub = Publisher.generate()
    audit = MemoryAuditSink()
    manifest = Manifest.for_module(
        "hello", "1.0.0", wasm["hello"], capabilities=CapabilityRequest(env=("GREETING", "SECRET")),
    )
    with Runtime(RuntimeConfig(data_dir=data_dir), trust=TrustStore([pub.public_bytes]), audit=audit) as rt:
        lm = rt.admit(pub.sign(manifest), wasm["hello"], grant=Capabilities.build(env={"GREETING": "hi", "OTHER": "x"}))
        assert lm.signed and rt.artifacts is not None and rt.artifacts.has(manifest.sha256)
        out = rt.run_command(lm.key).body.decode()
        assert "env: GREETING=hi" in out
        assert "SECRET" not in out and "OTHER" not in out  # requested-but-ungranted and granted-but-unrequested
        assert counter(rt, "wasmatrix_runtime_capability_denials_total", module="hello@1.0.0", capability="env") == 1
        assert any(e["event"] == "capability_denied" and e["detail"] == "SECRET" for e in audit.events)
        rt.unload(lm.key)
        # Loading again from the artifact store alone (no bytes given) verifies the stored blob.
        assert rt.admit(pub.sign(manifest)).key == "hello@1.0.0"


def test_admit_refuses_untrusted_tampered_and_mismatched(data_dir: Path, wasm: dict[str, bytes]) -> None:
    pub = Publisher.generate()
    audit = MemoryAuditSink()
    manifest = Manifest.for_module("hello", "1.0.0", wasm["hello"])
    with Runtime(RuntimeConfig(data_dir=data_dir), trust=TrustStore([pub.public_bytes]), audit=audit) as rt:
        with pytest.raises(SignatureError):
            rt.admit(Publisher.generate().sign(manifest), wasm["hello"])
        with pytest.raises(ArtifactError, match="does not match its signed manifest"):
            rt.admit(pub.sign(manifest), wasm["hello"][:-1] + bytes([wasm["hello"][-1] ^ 0xFF]))
        with pytest.raises(ArtifactError, match="not in the artifact store"):
            rt.admit(pub.sign(manifest))
        assert counter(rt, "wasmatrix_runtime_admission_rejections_total", reason="signature") == 1
        assert counter(rt, "wasmatrix_runtime_admission_rejections_total", reason="artifact") == 2
        assert [e["reason"] for e in audit.events] == ["signature", "artifact", "artifact"]
        assert rt.modules() == []


def test_unsigned_needs_development_flag(wasm: dict[str, bytes]) -> None:
    with Runtime() as rt:
        with pytest.raises(SignatureError, match="development flag"):
            rt.load_unsigned(wasm["hello"])
        assert counter(rt, "wasmatrix_runtime_admission_rejections_total", reason="unsigned") == 1


@pytest.mark.parametrize(
    ("blob", "match"),
    [
        (b"\x7fELF\x02\x01\x01\x00rest", "bad magic"),
        (b"\x00asm\x01", "truncated"),
        (b"\x00asm\x0d\x00\x01\x00", "unsupported wasm binary version"),
        (b"\x00asm\x01\x00\x00\x00\x01\xff", "invalid WebAssembly module"),
    ],
)
def test_bad_binaries_rejected_with_reason(rt: Runtime, blob: bytes, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        rt.load_unsigned(blob, name="bad")
    assert counter(rt, "wasmatrix_runtime_admission_rejections_total", reason="invalid_module") == 1


def test_oversized_binary_rejected(wasm: dict[str, bytes]) -> None:
    with Runtime(RuntimeConfig(allow_unsigned=True, max_module_bytes=1024)) as rt:
        with pytest.raises(ValidationError, match="over the 1024 byte limit"):
            rt.load_unsigned(wasm["hello"])


def test_wrong_abi_exports_rejected(rt: Runtime, wasm: dict[str, bytes]) -> None:
    from runtime import Abi

    with pytest.raises(ValidationError, match="export alloc is missing"):
        rt.load_unsigned(wasm["hello"], name="hello", abi=Abi.DIRECT)
    with pytest.raises(ValidationError, match="_start"):
        rt.load_unsigned(wasm["handler"], name="handler", abi=Abi.WASI_COMMAND)
