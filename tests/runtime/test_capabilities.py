"""Deny-by-default capabilities, proven inside real guests."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime import Capabilities, CapabilityDenied, CapabilityRequest, DirGrant, MemoryAuditSink, Runtime
from runtime.capabilities import check_imports, host_allowed
from tests.runtime.conftest import counter


@pytest.fixture
def sandbox_dirs(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "public.txt").write_text("public\n")
    (tmp_path / "secret.txt").write_text("secret\n")
    return data


def test_escape_attempts_fail_inside_guest_and_are_counted(
    rt: Runtime, audit: MemoryAuditSink, wasm: dict[str, bytes], sandbox_dirs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET", "host-secret")  # present on the host, never granted
    caps = Capabilities.build(dirs=[DirGrant(str(sandbox_dirs), "/data")], http_hosts=["api.example.com"])
    lm = rt.load_unsigned(wasm["escape"], name="escape", capabilities=caps)
    result = rt.run_command(lm.key, args=["evil.example.com"])
    out = result.body.decode()
    assert result.status == 0, out  # zero successful escapes
    assert "open /etc/passwd (r): denied" in out
    assert "open /data/../secret.txt (r): denied" in out
    assert "open /data/written.txt (w): denied" in out
    assert "env SECRET: denied" in out
    assert "http evil.example.com: denied" in out
    assert "open /data/public.txt (r): ok" in out
    assert not (sandbox_dirs / "written.txt").exists()
    assert counter(rt, "wasmatrix_runtime_capability_denials_total", module=lm.key, capability="http") == 1
    assert [e["detail"] for e in audit.events if e["capability"] == "http"] == ["https://evil.example.com/steal"]


def test_allowlisted_host_passes_the_check(rt: Runtime, wasm: dict[str, bytes], sandbox_dirs: Path) -> None:
    caps = Capabilities.build(dirs=[DirGrant(str(sandbox_dirs), "/data")], http_hosts=["api.example.com"])
    lm = rt.load_unsigned(wasm["escape"], name="escape", capabilities=caps)
    out = rt.run_command(lm.key, args=["api.example.com"]).body.decode()
    assert "http api.example.com: ALLOWED (rc=-6)" in out  # allowed, no fetcher on this node
    assert counter(rt, "wasmatrix_runtime_capability_denials_total", module=lm.key, capability="http") == 0


def test_writable_dir_grant_allows_writes(rt: Runtime, wasm: dict[str, bytes], sandbox_dirs: Path) -> None:
    caps = Capabilities.build(dirs=[DirGrant(str(sandbox_dirs), "/data", writable=True)], http_hosts=["x.test"])
    lm = rt.load_unsigned(wasm["escape"], name="escape", capabilities=caps)
    result = rt.run_command(lm.key)
    assert "open /data/written.txt (w): ALLOWED" in result.body.decode()
    assert (sandbox_dirs / "written.txt").exists()
    assert "open /data/../secret.txt (r): denied" in result.body.decode()  # still confined


def test_ungranted_imports_are_listed_and_refused(
    rt: Runtime, audit: MemoryAuditSink, wasm: dict[str, bytes]
) -> None:
    with pytest.raises(CapabilityDenied) as info:
        rt.load_unsigned(wasm["escape"], name="escape")
    assert set(info.value.offending) == {
        "wasmatrix.http_fetch (needs an http host allowlist)",
        "wasi_snapshot_preview1.path_open (needs a directory grant)",
    }
    assert counter(rt, "wasmatrix_runtime_capability_denials_total", module="escape@0.0.0-dev", capability="import") == 2
    assert counter(rt, "wasmatrix_runtime_admission_rejections_total", reason="capability") == 1
    assert rt.modules() == []
    assert {e["event"] for e in audit.events} == {"capability_denied", "module_rejected"}


def test_import_classification() -> None:
    imports = [
        ("wasi_snapshot_preview1", "fd_write", "func"),
        ("wasi_snapshot_preview1", "clock_time_get", "func"),
        ("wasi_snapshot_preview1", "random_get", "func"),
        ("wasi_snapshot_preview1", "sock_accept", "func"),
        ("env", "memory", "memory"),
        ("other", "f", "func"),
        ("wasmatrix", "nope", "func"),
    ]
    # Issue 12: clocks and random are granted by default; denying random refuses random_get only.
    report = check_imports(imports, Capabilities(random=False))
    assert report.allowed == ("wasi_snapshot_preview1.fd_write", "wasi_snapshot_preview1.clock_time_get")
    assert len(report.offending) == 5
    assert "wasi_snapshot_preview1.sock_accept (never granted)" in report.offending
    assert "wasi_snapshot_preview1.random_get (needs the random capability)" in report.offending


def test_clocks_and_random_are_granted_by_default_and_deniable() -> None:
    imports = [("wasi_snapshot_preview1", "clock_time_get", "func"), ("wasi_snapshot_preview1", "random_get", "func")]
    assert check_imports(imports, Capabilities()).offending == ()
    assert check_imports(imports, Capabilities.build()).offending == ()
    denied = check_imports(imports, Capabilities.build(clocks=False, random=False)).offending
    assert denied == (
        "wasi_snapshot_preview1.clock_time_get (needs the clocks capability)",
        "wasi_snapshot_preview1.random_get (needs the random capability)",
    )
    # Filesystem, network and environment stay deny-by-default.
    default = Capabilities()
    assert (default.env, default.dirs, default.kv_namespaces, default.http_hosts, default.log) == ((), (), (), (), False)


def test_kv_counter_through_host_api(rt: Runtime, audit: MemoryAuditSink, wasm: dict[str, bytes]) -> None:
    caps = Capabilities.build(kv_namespaces=["counter"], log=True)
    lm = rt.load_unsigned(wasm["kvcounter"], name="kvcounter", capabilities=caps)
    assert [rt.run_command(lm.key).body for _ in range(3)] == [b"1\n", b"2\n", b"3\n"]
    assert rt.run_command(lm.key, args=["other-key"]).body == b"1\n"
    assert rt.kv.get("counter", "hits") == b"3"
    assert rt.kv.list("counter", "") == ["hits", "other-key"]
    denied = rt.run_command(lm.key, env={"KV_NS": "billing"})
    assert denied.status == 3 and b"denied" in denied.stderr
    assert rt.kv.list("billing", "") == []
    assert counter(rt, "wasmatrix_runtime_capability_denials_total", module=lm.key, capability="kv") == 1
    assert audit.events[-1]["capability"] == "kv" and audit.events[-1]["detail"] == "billing"


def test_requested_but_ungranted_capabilities_are_denied() -> None:
    # clocks are granted by default (issue 12); this policy denies them explicitly.
    policy = Capabilities.build(env={"A": "1"}, dirs=[DirGrant("/tmp", "/data")], kv_namespaces=["ns"], log=True,
                                clocks=False)
    request = CapabilityRequest(
        env=("A", "B"), dirs=("/data:rw", "/etc"), kv_namespaces=("ns", "x"), http_hosts=("h.example",),
        log=True, clocks=True,
    )
    effective, denied = policy.restrict(request)
    assert effective.env == (("A", "1"),)
    assert effective.dirs == (DirGrant("/tmp", "/data", writable=False),)
    assert effective.kv_namespaces == ("ns",) and effective.log and not effective.clocks
    assert effective.random  # requested by default, granted by default
    assert denied == ["env:B", "dir_write:/data", "dir:/etc", "kv:x", "http:h.example", "clocks"]


def test_default_request_and_default_policy_grant_clocks_and_random() -> None:
    effective, denied = Capabilities().restrict(CapabilityRequest())
    assert (effective.clocks, effective.random, denied) == (True, True, [])
    # A manifest that opts out does not get them, and nothing is counted as denied.
    effective, denied = Capabilities().restrict(CapabilityRequest.from_strings(["no-clocks", "no-random"]))
    assert (effective.clocks, effective.random, denied) == (False, False, [])


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://api.example.com/x", True),
        ("http://API.EXAMPLE.COM", True),
        ("https://evil.example.com", False),
        ("https://api.example.com.evil.net", False),
        ("https://user@api.example.com", False),
        ("ftp://api.example.com", False),
        ("https://a.cdn.example.org", True),
        ("https://cdn.example.org", False),
        ("https://svc.internal:8443/", True),
        ("https://svc.internal:9000/", False),
        ("not a url", False),
    ],
)
def test_http_allowlist(url: str, ok: bool) -> None:
    assert host_allowed(url, ["api.example.com", "*.cdn.example.org", "svc.internal:8443"]) is ok


def test_dir_grant_parsing(tmp_path: Path) -> None:
    g = DirGrant.parse(f"{tmp_path}::/data:rw")
    assert (g.host_path, g.guest_path, g.writable) == (str(tmp_path), "/data", True)
    assert DirGrant.parse(str(tmp_path)).writable is False
