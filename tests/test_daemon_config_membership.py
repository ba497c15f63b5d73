"""The membership flood bounds are daemon settings: flags and TOML keys, validated, reaching the core."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.daemon.config import DaemonConfigError, load_config


def _flags(tmp_path: Path, **extra: object) -> dict[str, object]:
    return {"data_dir": str(tmp_path / "d"), "bind": "127.0.0.1:0", "insecure": True, **extra}


def test_toml_and_flags_set_the_flood_bounds_and_the_daemon_core_uses_them(tmp_path: Path) -> None:
    from mesh.daemon.node import Daemon

    toml = tmp_path / "node.toml"
    toml.write_text("max_members = 500\nmax_new_members_per_push_pull = 40\nmax_new_members_per_peer = 90\n")
    cfg = load_config(_flags(tmp_path, config=str(toml), max_new_members_per_peer="120"))  # the flag wins
    mc = cfg.membership_config()
    assert (mc.max_members, mc.max_new_members_per_push_pull, mc.max_new_members_per_peer) == (500, 40, 120)
    assert mc.probe_interval == 0.4  # the rest is still the edge profile
    d = Daemon(cfg)
    d._open()
    try:
        d._build_core("127.0.0.1:1", 0.0)
        core_cfg = d.core.swim.config
        assert (core_cfg.max_members, core_cfg.max_new_members_per_push_pull, core_cfg.max_new_members_per_peer) == (500, 40, 120)
    finally:
        d.store.close()
        d.dd.close()
    # Nothing given: the profile's defaults.
    plain = load_config(_flags(tmp_path)).membership_config()
    assert (plain.max_members, plain.max_new_members_per_push_pull, plain.max_new_members_per_peer) == (100_000, 10_000, 20_000)


@pytest.mark.parametrize(
    ("toml_text", "flag", "needle"),
    [
        ("max_members = 1\n", None, "max_members (in"),
        ("max_members = -5\n", None, "max_members (in"),
        ('max_members = "many"\n', None, "max_members (in"),
        ("max_members = 1.5\n", None, "max_members (in"),
        ("max_members = true\n", None, "max_members (in"),
        ("max_new_members_per_push_pull = 0\n", None, "max_new_members_per_push_pull (in"),
        ("max_new_members_per_peer = 99999999999\n", None, "max_new_members_per_peer (in"),
        # per peer below per push-pull: the relation is named, with both keys
        ("max_new_members_per_push_pull = 50\nmax_new_members_per_peer = 10\n", None, "max_new_members_per_peer"),
        ("", ("max_members", "lots"), "--max-members"),
    ],
)
def test_bad_flood_bounds_are_one_line_naming_the_key_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml_text: str, flag: tuple[str, str] | None, needle: str
) -> None:
    from mesh.cli import main

    toml = tmp_path / "bad.toml"
    toml.write_text('bind = "127.0.0.1:0"\ninsecure = true\n' + toml_text)
    args = ["node", "run", "--data-dir", str(tmp_path / "x"), "--config", str(toml)]
    if flag:
        args += ["--" + flag[0].replace("_", "-"), flag[1]]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(DaemonConfigError):
        load_config({"config": str(toml), "data_dir": str(tmp_path / "x"), **({flag[0]: flag[1]} if flag else {})})
