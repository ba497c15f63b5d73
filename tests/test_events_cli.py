"""`wasmatrix subscription add|list|rm` offline on a data dir, and the CLI's bad-input answers for events."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mesh.cli import main


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_subscription_add_list_rm_offline_and_roles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dd = str(tmp_path / "data")
    for role in ("operator", "publisher"):
        code, _, err = _cli(capsys, "keygen", "--role", role, "--out", str(tmp_path / f"{role}.key"), "--data-dir", dd)
        assert code == 0, err
    op = ("--key", str(tmp_path / "operator.key"), "--data-dir", dd)
    code, out, err = _cli(capsys, "subscription", "add", "s1", "--topic", "a/+/c", "--deployment", "web", "--where", "k=v*",
                          "--contains", "hot", "--reply-topic", "r/1", "--max-attempts", "3", "--queue", "10", *op, "--json")
    assert code == 0, err
    assert json.loads(out)["where"] == {"k": "v*"}
    code, out, err = _cli(capsys, "subscription", "list", "--data-dir", dd, "--json")
    assert code == 0, err
    [row] = json.loads(out)
    assert (row["name"], row["topic"], row["deployment"], row["contains"], row["reply_topic"], row["max_attempts"], row["queue"]) \
        == ("s1", "a/+/c", "web", "hot", "r/1", 3, 10)
    code, out, _ = _cli(capsys, "subscription", "list", "--data-dir", dd)
    assert code == 0 and "s1" in out and "k=v* contains='hot'" in out
    # a publisher key may not write subscriptions (operators and admins may)
    code, _, err = _cli(capsys, "subscription", "add", "s2", "--topic", "x", "--deployment", "web",
                        "--key", str(tmp_path / "publisher.key"), "--data-dir", dd)
    assert code == 1 and "may not write subscriptions" in err and err.count("\n") == 1
    code, _, err = _cli(capsys, "subscription", "rm", "s1", *op)
    assert code == 0, err
    code, out, _ = _cli(capsys, "subscription", "list", "--data-dir", dd, "--json")
    assert json.loads(out) == []
    code, _, err = _cli(capsys, "subscription", "rm", "s1", *op)
    assert code == 1 and "no subscription s1" in err


@pytest.mark.parametrize("argv,needle", [
    (["--topic", "a/#/b", "--deployment", "web"], "'#' must be the whole last level"),
    (["--topic", "a", "--deployment", "Web!"], "deployment name"),
    (["--topic", "a", "--deployment", "web", "--where", "novalue"], "--where"),
    (["--topic", "a", "--deployment", "web", "--queue", "0"], "queue"),
])
def test_bad_subscription_flags_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                                      needle: str) -> None:
    dd = str(tmp_path / "data")
    assert _cli(capsys, "keygen", "--role", "operator", "--out", str(tmp_path / "op.key"), "--data-dir", dd)[0] == 0
    code, _, err = _cli(capsys, "subscription", "add", "s", *argv, "--key", str(tmp_path / "op.key"), "--data-dir", dd)
    assert code == 2 and needle in err and err.count("\n") == 1, err


def test_publish_needs_a_running_node_and_a_readable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(capsys, "publish", "a/b", "--data", "x", "--data-dir", str(tmp_path / "none"))
    assert code == 2 and "running node" in err
    code, _, err = _cli(capsys, "publish", "a/b", "--data", f"@{tmp_path / 'missing'}", "--data-dir", str(tmp_path))
    assert code == 2 and "no such file" in err
