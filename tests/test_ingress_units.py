"""The ingress's pure parts: invoke result → HTTP answer (the serving contract's table), the
--http flags and TOML keys, route format in the signed record, and route CLI offline on a data dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crdt.errors import ValidationError
from crdt.routes import RouteTable
from crdt.schema import RouteSpec
from mesh.cli import main
from mesh.daemon.config import DaemonConfigError, load_config
from mesh.ingress.server import IngressConfig, answer_for


def _res(code: str, **kw: object) -> dict:
    return {"code": code, "ok": code == "ok", "status": 0, "output": b"", "message": "", **kw}


@pytest.mark.parametrize("code,status", [
    ("trap", 500), ("internal", 500), ("guest_error", 500), ("limit_exceeded", 500),
    ("no_replica", 502), ("connect_failed", 502), ("breaker_open", 502), ("stream_closed", 502), ("not_hosted", 502),
    ("unavailable", 503), ("timeout", 504), ("no_answer", 504), ("bad_request", 400),
])
def test_error_codes_map_to_the_contract_statuses(code: str, status: int) -> None:
    ans, err = answer_for(_res(code, message="WasmTrap: module web@1.0.0 trapped at /srv/node/data/x.wasm"), "body")
    assert ans.status == status and err.startswith(code)
    assert b"/srv" not in ans.body and b"WasmTrap" not in ans.body


def test_quota_and_overloaded_are_429_with_retry_after() -> None:
    ans, _ = answer_for(_res("quota", retry_after_s=2.2, message="tenant acme: 10000 invocations per minute"), "body")
    assert ans.status == 429 and dict(ans.headers)["retry-after"] == b"3"
    assert ans.body == b"tenant acme: 10000 invocations per minute\n"
    ans, _ = answer_for(_res("overloaded", retry_after_s=None), "body")
    assert ans.status == 429 and dict(ans.headers)["retry-after"] == b"1"


def test_ok_results() -> None:
    ans, err = answer_for(_res("ok", output=b"Status: 201\r\n\r\nmade"), "body")
    assert (ans.status, ans.body, err) == (200, b"Status: 201\r\n\r\nmade", "")  # body format: output verbatim
    ans, err = answer_for(_res("ok", output=b"Status: 201\r\nX-A: b\r\n\r\nmade"), "http")
    assert (ans.status, ans.headers, ans.body, err) == (201, (("x-a", b"b"),), b"made", "")
    ans, err = answer_for(_res("ok", status=3, output=b"partial"), "body")
    assert ans.status == 500 and ans.body == b"handler exited with status 3\n"
    ans, err = answer_for(_res("ok", output=b"Status: 999\r\n\r\n"), "http")
    assert ans.status == 500 and "invalid Status" in err


def _cfg(**kw: object) -> object:
    return load_config({"data_dir": "/tmp/x", "bind": "127.0.0.1:0", "insecure": True, **kw})


def test_http_flags_and_toml(tmp_path: Path) -> None:
    assert _cfg().http is None and _cfg().http_bounds == IngressConfig()
    c = _cfg(http="127.0.0.1:8080", http_max_connections="7", http_head_timeout="2.5")
    assert c.http == ("127.0.0.1", 8080)
    assert (c.http_bounds.max_connections, c.http_bounds.head_timeout_s, c.http_bounds.max_body_bytes) == (7, 2.5, 1 << 20)
    toml = tmp_path / "n.toml"
    toml.write_text('http = "127.0.0.1:9000"\nhttp_max_body_bytes = 4096\n')
    c = load_config({"config": str(toml), "data_dir": "/tmp/x", "bind": "127.0.0.1:0", "insecure": True})
    assert c.http == ("127.0.0.1", 9000) and c.http_bounds.max_body_bytes == 4096
    for bad, words in ((dict(http="localhost"), "--http"), (dict(http="127.0.0.1:8080", http_max_connections="0"), "--http-max-connections"),
                       (dict(http_head_timeout="soon"), "--http-head-timeout"), (dict(http="example.com:80"), "IP address")):
        with pytest.raises(DaemonConfigError, match=words):
            _cfg(**bad)


def test_route_format_is_validated_and_old_records_decode_as_body() -> None:
    old = {"host": "a.test", "path": "/x", "method": "GET", "deployment": "web", "priority": 0}
    r = RouteSpec.from_payload(old)
    assert r.format == "body" and r.to_payload() == old  # written as before: older nodes still decode it
    h = RouteSpec.from_payload({**old, "format": "http"})
    assert h.format == "http" and h.to_payload()["format"] == "http"
    for bad in ("cgi", "", 1):
        with pytest.raises(ValidationError):
            RouteSpec.from_payload({**old, "format": bad})
    with pytest.raises(ValidationError):
        RouteSpec.from_payload({**old, "extra": 1})


def test_allowed_methods_for_405() -> None:
    t = RouteTable([RouteSpec("a.test", "/x", "GET", "w"), RouteSpec("a.test", "/x", "POST", "w"),
                    RouteSpec("*", "/y/*", "PUT", "w")])
    assert t.match("a.test", "/x", "DELETE") is None
    assert t.allowed("a.test:8080", "/x") == ["GET", "POST"]
    assert t.allowed("b.test", "/y/z") == ["PUT"]
    assert t.allowed("b.test", "/x") == []


def test_route_cli_offline_on_a_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "d")
    assert main(["keygen", "--role", "operator", "--out", str(tmp_path / "op.key"), "--data-dir", d]) == 0
    assert main(["route", "add", "--host", "API.test", "--path", "/v/*", "--method", "get", "--method", "POST",
                 "--deployment", "web", "--format", "http", "--priority", "5", "--key", str(tmp_path / "op.key"),
                 "--data-dir", d]) == 0
    capsys.readouterr()
    assert main(["route", "list", "--json", "--data-dir", d]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted((r["method"], r["host"], r["path"], r["priority"], r["format"]) for r in rows) == [
        ("GET", "api.test", "/v/*", 5, "http"), ("POST", "api.test", "/v/*", 5, "http")]
    assert main(["route", "rm", "--host", "api.test", "--path", "/v/*", "--method", "GET", "--key", str(tmp_path / "op.key"),
                 "--data-dir", d]) == 0
    assert main(["route", "rm", "--host", "api.test", "--path", "/v/*", "--method", "GET", "--key", str(tmp_path / "op.key"),
                 "--data-dir", d]) == 1  # already gone
    assert main(["route", "add", "--host", "a.test", "--path", "nope", "--deployment", "web",
                 "--key", str(tmp_path / "op.key"), "--data-dir", d]) == 2
    assert main(["route", "add", "--host", "a.test", "--path", "/", "--method", "BREW", "--deployment", "web",
                 "--key", str(tmp_path / "op.key"), "--data-dir", d]) == 2
    capsys.readouterr()
    assert main(["route", "list", "--json", "--data-dir", d]) == 0
    assert [r["method"] for r in json.loads(capsys.readouterr().out)] == ["POST"]
