"""`wasmatrix tenant set|list|rm` and `deploy --tenant` offline on a data dir (no daemon): the records they
write, what only operators may do, and one clear line for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crdt.schema import TenantQuota
from mesh.cli import main
from mesh.cli.intentcmd import _open
from tests.cli_helpers import one_line_naming

HELLO = Path(__file__).resolve().parents[1] / "runtime" / "examples" / "hello.wasm"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_tenant_set_list_rm_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = ("--data-dir", str(tmp_path / "d"))
    op, pub = str(tmp_path / "op.key"), str(tmp_path / "pub.key")
    assert _run(capsys, "keygen", "--role", "operator", "--out", op, *d)[0] == 0
    assert _run(capsys, "keygen", "--role", "publisher", "--out", pub, *d)[0] == 0

    code, out, _ = _run(capsys, "tenant", "set", "acme", "--per-minute", "3", "--key", op, "--json", *d)
    assert code == 0 and json.loads(out)["per_minute"] == 3
    # A second set changes only the flag given: per_minute stays 3.
    assert _run(capsys, "tenant", "set", "acme", "--cpu-seconds-per-day", "1.5", "--key", op, *d)[0] == 0
    args = type("A", (), {"data_dir": d[1]})()
    assert _open(args).doc.tenant("acme") == TenantQuota("acme", 100, 3, 1.5)  # type: ignore[arg-type]

    assert _run(capsys, "module", "publish", str(HELLO), "--name", "hello", "--version", "1.0.0", "--key", pub, *d)[0] == 0
    code, out, _ = _run(capsys, "deploy", "web", "--module", "hello", "--version", "1.0.0", "--tenant", "shop",
                        "--key", op, "--json", *d)
    assert code == 0 and json.loads(out)["tenant"] == "shop"

    code, out, _ = _run(capsys, "tenant", "list", "--json", *d)
    rows = {r["tenant"]: r for r in json.loads(out)}
    assert sorted(rows) == ["acme", "default", "shop"]  # a record, the default, a deployment's tenant
    assert (rows["acme"]["record"], rows["acme"]["per_minute"], rows["acme"]["cpu_seconds_per_day"]) == (True, 3, 1.5)
    assert (rows["shop"]["record"], rows["shop"]["max_concurrency"], rows["shop"]["in_flight"]) == (False, 100, None)
    code, out, _ = _run(capsys, "tenant", "list", *d)
    assert code == 0 and "acme" in out and "offline" in out

    # Only operators (and admins) write quotas.
    code, _, err = _run(capsys, "tenant", "set", "acme", "--per-minute", "1000000", "--key", pub, *d)
    assert code == 1
    one_line_naming(err, "may not write tenant")

    assert _run(capsys, "tenant", "rm", "acme", "--key", op, *d)[0] == 0
    assert _open(args).doc.tenant("acme") is None  # back to the defaults
    code, _, err = _run(capsys, "tenant", "rm", "acme", "--key", op, *d)
    assert code == 1
    one_line_naming(err, "no quota record for tenant 'acme'")


@pytest.mark.parametrize("argv,words", [
    (["tenant", "set", "Acme"], ["tenant name", "Acme"]),
    (["tenant", "set", "acme", "--per-minute", "-1"], ["--per-minute", "0 or more"]),
    (["tenant", "set", "acme", "--concurrency", "x"], ["--concurrency", "not an integer"]),
    (["tenant", "set", "acme", "--cpu-seconds-per-day", "nan"], ["--cpu-seconds-per-day", "0 or more"]),
    (["tenant", "set", "acme", "--cpu-seconds-per-day", "inf"], ["cpu_seconds_per_day", "finite"]),
])
def test_tenant_bad_input_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                              words: list[str]) -> None:
    op = str(tmp_path / "op.key")
    assert _run(capsys, "keygen", "--role", "operator", "--out", op, "--data-dir", str(tmp_path / "d"))[0] == 0
    try:
        code = main([*argv, "--key", op, "--data-dir", str(tmp_path / "d")])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code  # type: ignore[assignment]
    _, err = capsys.readouterr()
    assert code == 2
    one_line_naming(err, *words)
