import json

import pytest

from mesh.cli import main


def test_cli_publish_deploy_rollback(tmp_path, capsys):
    d = str(tmp_path / "data")
    (tmp_path / "a.wasm").write_bytes(b"\0asm\1\0\0\0")
    (tmp_path / "b.wasm").write_bytes(b"\0asm\1\0\0\0\0\2\1x")  # + an empty custom section "x": valid, other bytes
    pub, op = str(tmp_path / "pub.key"), str(tmp_path / "op.key")
    assert main(["keygen", "--role", "publisher", "--out", pub, "--data-dir", d]) == 0
    assert main(["keygen", "--role", "operator", "--out", op, "--data-dir", d]) == 0
    assert main(["module", "publish", str(tmp_path / "a.wasm"), "--name", "hello", "--version", "1.0.0", "--key", pub, "--data-dir", d]) == 0
    assert main(["deploy", "web", "--module", "hello", "--version", "^1.0.0", "--replicas", "2", "--key", op, "--data-dir", d]) == 0
    assert main(["module", "publish", str(tmp_path / "b.wasm"), "--name", "hello", "--version", "1.1.0", "--key", pub, "--data-dir", d]) == 0
    assert main(["deploy", "web", "--module", "hello", "--version", "^1.0.0", "--key", op, "--data-dir", d]) == 0
    capsys.readouterr()
    assert main(["rollback", "web", "--key", op, "--data-dir", d, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["from_version"] == "1.1.0" and out["active_version"] == "1.0.0"
    assert main(["module", "show", "hello", "--data-dir", d, "--json"]) == 0
    assert [v["version"] for v in json.loads(capsys.readouterr().out)] == ["1.0.0", "1.1.0"]
    assert main(["module", "list", "--data-dir", d]) == 0
    assert "hello" in capsys.readouterr().out


def test_cli_rollback_with_no_earlier_version_is_a_clear_error(tmp_path, capsys):
    d = str(tmp_path / "data")
    (tmp_path / "a.wasm").write_bytes(b"\0asm\1\0\0\0")
    pub, op = str(tmp_path / "pub.key"), str(tmp_path / "op.key")
    assert main(["keygen", "--role", "publisher", "--out", pub, "--data-dir", d]) == 0
    assert main(["keygen", "--role", "operator", "--out", op, "--data-dir", d]) == 0
    assert main(["module", "publish", str(tmp_path / "a.wasm"), "--name", "hello", "--version", "1.0.0", "--key", pub, "--data-dir", d]) == 0
    assert main(["deploy", "web", "--module", "hello", "--version", "^1.0.0", "--key", op, "--data-dir", d]) == 0
    capsys.readouterr()
    assert main(["rollback", "web", "--key", op, "--data-dir", d]) == 1
    captured = capsys.readouterr()
    assert captured.err == "wasmatrix: error: deployment web has no earlier version to roll back to\n"
    assert captured.out == ""


@pytest.mark.parametrize(
    "argv,code,msg",
    [
        (["module", "publish", "A", "--name", "x", "--version", "1.0", "--key", "K"], 2, "not a semver"),
        (["module", "publish", "A", "--name", "x", "--version", "1.0.0", "--key", "K", "--capability", "sockets"], 2, "is not one of env:NAME"),
        (["module", "publish", "A", "--name", "x", "--version", "1.0.0", "--key", "K", "--limit", "timeout_ms=0"], 2, "timeout_ms must be within 1..300000"),
        (["module", "publish", "A", "--name", "x", "--version", "1.0.0", "--key", "K"], 2, "not a valid WebAssembly module"),
        (["deploy", "w", "--module", "m", "--version", "^1.0.0", "--key", "nokey"], 2, "does not exist"),
        (["module", "show", "nope"], 1, "no module"),
        (["deploy", "w", "--module", "m", "--version", "^1.0.0", "--key", "K", "--capability", "net"], 2, "is not one of env:NAME"),
        (["rollback", "nope", "--key", "K"], 1, "no deployment"),
    ],
)
def test_cli_errors_are_clear(tmp_path, capsys, argv, code, msg):
    key = tmp_path / "K"
    from crdt.keys import SigningKey

    SigningKey.generate().save(key)
    argv = [str(key) if a == "K" else str(tmp_path / "A") if a == "A" else a for a in argv]
    (tmp_path / "A").write_bytes(b"\0asm")
    assert main(argv + ["--data-dir", str(tmp_path / "d")]) == code
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err
