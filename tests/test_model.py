"""The shared model: one manifest, one validation, one key id, one semver for crdt and runtime."""

from __future__ import annotations

import hashlib

import pytest

import crdt.errors
import crdt.keys
import crdt.schema
import runtime
import runtime.signing
from model import Abi, CapabilityRequest, Limits, Manifest, SemverError, SpecError, Version, key_id
from model.manifest import MAX_MODULE_BYTES

SHA = "ab" * 32


def test_one_definition_everywhere() -> None:
    assert crdt.schema.Manifest is Manifest and runtime.Manifest is Manifest
    assert runtime.Limits is Limits and runtime.CapabilityRequest is CapabilityRequest and runtime.Abi is Abi
    assert crdt.keys.key_id is key_id and runtime.signing.key_id is key_id
    # Each package's "invalid value" error is a SpecError, so one except clause catches both.
    assert issubclass(crdt.errors.ValidationError, SpecError) and issubclass(runtime.InvalidSpecError, SpecError)
    assert issubclass(crdt.errors.SemverError, SemverError)


def test_key_id_is_16_hex_of_sha256_of_the_raw_key() -> None:
    raw = bytes(range(32))
    assert key_id(raw) == hashlib.sha256(raw).hexdigest()[:16]
    signer = crdt.keys.SigningKey.from_seed(b"\x01" * 32)
    assert runtime.Publisher(signer.private).key_id == signer.key_id == key_id(signer.public_raw)


def test_manifest_payload_round_trip_is_exact() -> None:
    m = Manifest(
        "hello", "1.2.3-rc.1", SHA, 1000, CapabilityRequest.from_strings(["env:A", "dir:/data:rw", "kv:counter", "http:*.example.com", "log"]),
        Limits(timeout_ms=500, fuel=10), Abi.DIRECT, created_at=12.5, description="d",
    )
    assert Manifest.from_payload(m.to_payload()) == m
    # Clocks and random are requested by default (issue 12) and listed in the signed form.
    assert m.to_payload()["capabilities"] == ["env:A", "dir:/data:rw", "kv:counter", "http:*.example.com", "log", "clocks", "random"]
    assert Manifest("hello", "1.0.0", SHA, 100).to_payload()["capabilities"] == ["clocks", "random"]
    assert m.key == "hello@1.2.3-rc.1"


def test_clocks_and_random_default_on_with_deny_spellings() -> None:
    assert CapabilityRequest().clocks and CapabilityRequest().random
    assert CapabilityRequest.from_strings([]) == CapabilityRequest()
    assert CapabilityRequest.from_strings(["clocks", "random"]) == CapabilityRequest()  # the old spelling still works
    opted_out = CapabilityRequest.from_strings(["log", "no-clocks", "no-random"])
    assert (opted_out.log, opted_out.clocks, opted_out.random) == (True, False, False)
    assert opted_out.to_strings() == ["log", "no-clocks", "no-random"]
    assert CapabilityRequest.from_strings(opted_out.to_strings()) == opted_out
    assert opted_out.to_payload() == ["log"]
    assert CapabilityRequest.from_payload(["log"]) == opted_out
    assert CapabilityRequest.from_strings(["no-random"]).to_payload() == ["clocks"]


def test_payload_signed_before_the_new_default_keeps_its_meaning() -> None:
    # A registry record signed before issue 12 lists "clocks"/"random" only when requested:
    # [] still means neither, and it re-encodes to the same bytes (its signature still verifies).
    old = CapabilityRequest.from_payload([])
    assert (old.clocks, old.random) == (False, False) and old.to_payload() == []
    assert CapabilityRequest.from_payload(["kv:a", "clocks"]).to_payload() == ["kv:a", "clocks"]
    with pytest.raises(SpecError, match="is not one of"):
        CapabilityRequest.from_payload(["no-clocks"])  # a CLI spelling, not the signed form


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("name", "Hello", "module name"),
        ("name", "hello-", "module name"),
        ("sha256", "AB" * 32, "sha256"),
        ("size", 4, "outside 8.."),
        ("size", MAX_MODULE_BYTES + 1, "outside 8.."),
        ("abi", "wagi", "abi must be one of"),
        ("v", 2, "unsupported manifest format version"),
        ("limits", {"memory_bytes": 1 << 20}, "missing"),
        ("capabilities", {"env": ["A"]}, "must be a list of strings"),
        ("capabilities", ["log", "env:A"], "env first"),
        ("capabilities", ["log", "log"], "each item once"),
        ("description", "x" * 1025, "description"),
        ("created_at", float("nan"), "created_at"),
    ],
)
def test_manifest_payload_rejects(field: str, value: object, message: str) -> None:
    p = Manifest("hello", "1.0.0", SHA, 100).to_payload()
    p[field] = value
    with pytest.raises(SpecError, match=message):
        Manifest.from_payload(p)


def test_manifest_rejects_unknown_fields_and_bad_versions() -> None:
    p = Manifest("hello", "1.0.0", SHA, 100).to_payload()
    with pytest.raises(SpecError, match="unknown publisher"):
        Manifest.from_payload({**p, "publisher": "x"})
    with pytest.raises(SemverError):
        Manifest.from_payload({**p, "version": "1.0"})


@pytest.mark.parametrize("bad", ["env:1A", "dir:relative", "kv:Upper", "http:", "sockets", "kv"])
def test_capability_strings_reject(bad: str) -> None:
    with pytest.raises(SpecError):
        CapabilityRequest.from_strings([bad])


def test_limit_strings() -> None:
    assert Limits.from_strings(["timeout_ms=100", "fuel=5"]) == Limits(timeout_ms=100, fuel=5)
    for bad in ["timeout=100", "timeout_ms=-1", "timeout_ms=0", "memory_bytes=1"]:
        with pytest.raises(SpecError):
            Limits.from_strings([bad])


def test_semver_is_shared() -> None:
    assert Version.parse("1.0.0-rc.1") < Version.parse("1.0.0")
    with pytest.raises(crdt.errors.SemverError):
        crdt.schema.v_version("1.0")


def test_deployment_grants_use_the_manifest_types() -> None:
    spec = crdt.schema.DeploymentSpec(
        "web", "hello", "^1.0.0", capabilities=CapabilityRequest.from_strings(["kv:app", "log"]), limits=Limits(timeout_ms=100),
    )
    assert crdt.schema.DeploymentSpec.from_payload(spec.to_payload()) == spec
    assert crdt.schema.DeploymentSpec.from_payload(crdt.schema.DeploymentSpec("web", "hello", "1.0.0").to_payload()).limits is None
    payload = crdt.schema.deployment_payload(spec, "1.0.0", "set", 1.0)
    payload["spec"]["capabilities"] = ["kv"]  # the old free-form list is not a capability request
    with pytest.raises(crdt.errors.ValidationError, match="is not one of env:NAME"):
        crdt.schema.validate_deployment_payload("web", payload)
