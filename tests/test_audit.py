"""Hash-chained audit log: chain format, tamper detection by line and reason, torn tail, threads, CLI."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mesh import audit
from mesh.audit import AuditError, AuditLog, AuditLogBroken, verify
from mesh.cli import main

ROOT = Path(__file__).resolve().parents[1]
NODE = "a1b2c3d4e5f60718"


def _clock() -> float:
    return 1_800_000_000.0


def _spec_hash(entry: dict) -> str:
    # The format from docs/OPERATIONS.md: SHA-256 over sorted-key, compact, ASCII JSON without "hash".
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()).hexdigest()


def _log(path: Path, n: int) -> None:
    log = AuditLog(path, NODE, _clock)
    for i in range(1, n + 1):
        log.append("capability_denied", {"module": f"mod{i}", "capability": "net"}, now_wall=1000.0 + i)
    log.close()


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def _put(path: Path, lines: list[bytes], trailing_newline: bool = True) -> None:
    path.write_bytes(b"\n".join(lines) + (b"\n" if trailing_newline else b""))


def test_entries_follow_the_documented_chain(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    _log(p, 3)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    entries = [json.loads(line) for line in _lines(p)]
    assert [e["seq"] for e in entries] == [1, 2, 3]
    assert entries[0]["prev"] == "0" * 64
    assert entries[1]["prev"] == entries[0]["hash"] and entries[2]["prev"] == entries[1]["hash"]
    for e in entries:
        assert e["hash"] == _spec_hash(e)
    assert entries[1] == {
        "seq": 2, "time": 1002.0, "node_id": NODE, "event": "capability_denied",
        "fields": {"module": "mod2", "capability": "net"}, "prev": entries[0]["hash"], "hash": entries[1]["hash"],
    }
    r = verify(p)
    assert (r.ok, r.entries, r.head_seq, r.head_hash, r.kind) == (True, 3, 3, entries[2]["hash"], "ok")


def test_edit_one_byte_of_a_field(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    _log(p, 5)
    lines = _lines(p)
    assert b'"module":"mod3"' in lines[2]
    lines[2] = lines[2].replace(b'"module":"mod3"', b'"module":"mod4"')
    _put(p, lines)
    r = verify(p)
    assert (r.ok, r.first_bad_line, r.kind, r.entries) == (False, 3, "tampered", 2)
    assert "entry seq 3 was edited" in r.reason


def test_edit_with_recomputed_hash_breaks_the_next_link(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    _log(p, 5)
    lines = _lines(p)
    e = json.loads(lines[2])
    e["fields"]["module"] = "innocent"
    e["hash"] = _spec_hash(e)
    lines[2] = audit.canonical(e).encode()
    _put(p, lines)
    r = verify(p)
    assert (r.first_bad_line, r.kind) == (4, "tampered")
    assert "seq 4 does not chain" in r.reason


def test_whitespace_rewrite_is_detected(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    _log(p, 3)
    lines = _lines(p)
    lines[1] = json.dumps(json.loads(lines[1]), sort_keys=True).encode()  # same content, other spacing
    _put(p, lines)
    r = verify(p)
    assert (r.first_bad_line, r.kind) == (2, "tampered")
    assert "not in canonical encoding" in r.reason


def test_deleted_entry(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    _log(p, 5)
    lines = _lines(p)
    del lines[2]
    _put(p, lines)
    r = verify(p)
    assert (r.first_bad_line, r.kind, r.entries) == (3, "tampered", 2)
    assert r.reason == "entry seq 3 is missing before seq 4 (deleted)"


def test_deleted_first_entries(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    _log(p, 4)
    _put(p, _lines(p)[2:])
    r = verify(p)
    assert (r.first_bad_line, r.reason) == (1, "entry seq 1..2 is missing before seq 3 (deleted)")


def test_swapped_entries(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    _log(p, 5)
    lines = _lines(p)
    lines[1], lines[2] = lines[2], lines[1]
    _put(p, lines)
    r = verify(p)
    assert (r.first_bad_line, r.kind) == (2, "tampered")
    assert r.reason == "entries are out of order: seq 3 comes before seq 2 (reordered)"


def test_duplicated_entry(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    _log(p, 3)
    lines = _lines(p)
    _put(p, lines[:2] + [lines[1]] + lines[2:])
    r = verify(p)
    assert (r.first_bad_line, r.reason) == (3, "seq 2 appears again after seq 2 (reordered or duplicated)")


def test_truncated_mid_line_is_a_torn_write(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    _log(p, 4)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 40])
    r = verify(p)
    assert (r.ok, r.first_bad_line, r.kind, r.entries) == (False, 4, "torn_write", 3)
    assert "cut off" in r.reason and "not an edit" in r.reason


def test_missing_final_newline_is_a_torn_write(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    _log(p, 2)
    p.write_bytes(p.read_bytes()[:-1])
    r = verify(p)
    assert (r.first_bad_line, r.kind, r.entries) == (2, "torn_write", 1)


def test_garbage_line_with_control_characters_is_reported_escaped(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    _log(p, 3)
    lines = _lines(p)
    _put(p, lines[:1] + [b"\x1b[31mEVIL\x07\x00\xff"] + lines[1:])
    r = verify(p)
    assert (r.first_bad_line, r.kind) == (2, "garbage")
    assert "\\u001b[31mEVIL\\u0007\\u0000" in r.reason
    assert all(ch.isprintable() for ch in r.reason)


def test_control_characters_in_fields_are_stored_escaped_and_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    nasty = "a\x1b[2J\r\n\x00\x7f\u0085é\u202e"
    log = AuditLog(p, NODE, _clock)
    log.append("signature_failed", {"detail": nasty, nasty: 1}, now_wall=1.0)
    log.close()
    data = p.read_bytes()
    assert data.count(b"\n") == 1 and data.endswith(b"\n")
    assert all(0x20 <= b < 0x7F for b in data[:-1])  # printable ASCII only on disk
    e = json.loads(data)
    assert e["fields"] == {"detail": nasty, nasty: 1}
    assert verify(p).ok


def test_reopen_continues_the_chain(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    _log(p, 2)
    head = json.loads(_lines(p)[-1])
    log = AuditLog(p, NODE, _clock)
    assert log.head == (2, head["hash"])
    e = log.append("key_changed", {"key_id": "x"}, now_wall=5.0)
    log.close()
    assert (e["seq"], e["prev"]) == (3, head["hash"])
    r = verify(p)
    assert (r.ok, r.entries) == (True, 3)


def test_reopen_reads_the_tail_across_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit, "_TAIL_CHUNK", 7)  # force many backwards reads
    p = tmp_path / "audit.log"
    _log(p, 3)
    log = AuditLog(p, NODE, _clock)
    log.append("revoked", {"node": "n"}, now_wall=9.0)
    log.close()
    assert verify(p).entries == 4


def test_reopen_recovers_a_torn_tail_and_keeps_it(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    _log(p, 3)
    fragment = b'{"event":"capability_denied","fields":{"mod'
    with open(p, "ab") as f:
        f.write(fragment)
    log = AuditLog(p, NODE, _clock)
    assert log.counters.torn_tails_recovered_total == 1
    log.append("admission_refused", {"node": "z"}, now_wall=7.0)
    log.close()
    side = tmp_path / "audit.log.torn.4"
    assert side.read_bytes() == fragment
    assert stat.S_IMODE(os.stat(side).st_mode) == 0o600
    r = verify(p)
    assert (r.ok, r.entries) == (True, 5)
    rec = json.loads(_lines(p)[3])
    assert (rec["seq"], rec["event"], rec["time"]) == (4, "audit_torn_tail", _clock())
    assert rec["fields"] == {"bytes": len(fragment), "sha256": hashlib.sha256(fragment).hexdigest(),
                             "saved_to": "audit.log.torn.4"}


def test_reopen_recovers_a_log_that_is_only_a_torn_first_write(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    p.write_bytes(b'{"event":"adm')
    log = AuditLog(p, NODE, _clock)
    assert log.head[0] == 1  # the recovery entry itself
    log.close()
    assert (tmp_path / "audit.log.torn.1").read_bytes() == b'{"event":"adm'
    r = verify(p)
    assert (r.ok, r.entries) == (True, 1)


def test_reopen_finishes_an_entry_cut_just_before_its_newline(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    _log(p, 3)
    p.write_bytes(p.read_bytes()[:-1])
    log = AuditLog(p, NODE, _clock)
    assert log.head == (3, json.loads(_lines(p)[2])["hash"])
    assert log.counters.torn_tails_recovered_total == 0
    log.append("revoked", {}, now_wall=1.0)
    log.close()
    assert not list(tmp_path.glob("audit.log.torn.*"))
    assert (verify(p).ok, verify(p).entries) == (True, 4)


def test_reopen_refuses_a_damaged_last_entry(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    _log(p, 3)
    lines = _lines(p)
    lines[2] = lines[2].replace(b"mod3", b"modX")
    _put(p, lines)
    with pytest.raises(AuditLogBroken, match="last entry .* is damaged"):
        AuditLog(p, NODE, _clock)


def test_concurrent_records_keep_one_chain(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    log = AuditLog(p, NODE, _clock)

    def work(t: int) -> None:
        for i in range(50):
            log.record({"event": "capability_denied", "module": f"t{t}", "i": i, "ts": float(i)})

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    r = verify(p)
    assert (r.ok, r.entries) == (True, 400)
    seen = sorted((e["fields"]["module"], e["fields"]["i"]) for e in map(json.loads, _lines(p)))
    assert seen == sorted((f"t{t}", i) for t in range(8) for i in range(50))


def test_record_adapter_maps_runtime_events(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    log = AuditLog(p, NODE, _clock)
    # The dict runtime/runner.py hands to its AuditSink.
    log.record({"event": "module_rejected", "module": "m", "reason": "hash", "error": "bad", "ts": 1234.5})
    log.record({"event": "Not Snake", "x": 1})
    log.record({"event": "capability_denied", "weird": object(), "nan": float("nan"), "ts": float("inf")})
    loop: dict = {}
    loop["self"] = loop
    log.record({"event": "capability_denied", "loop": loop})  # cannot be encoded: dropped, counted
    assert log.counters.dropped_total == 1
    log.close()
    log.record({"event": "capability_denied"})  # closed: dropped and counted, never raised
    assert log.counters.dropped_total == 2
    assert log.counters.invalid_events_total == 1
    e1, e2, e3 = map(json.loads, _lines(p))
    assert (e1["event"], e1["time"], e1["fields"]) == ("module_rejected", 1234.5, {"module": "m", "reason": "hash", "error": "bad"})
    assert (e2["event"], e2["time"], e2["fields"]) == ("invalid_event", _clock(), {"x": 1, "invalid_event_name": "Not Snake"})
    assert e3["time"] == _clock() and e3["fields"]["nan"] == "nan" and e3["fields"]["weird"].startswith("<object")
    assert verify(p).entries == 3


def test_append_rejects_bad_names_and_closed_log(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log", NODE, _clock)
    with pytest.raises(AuditError, match="snake_case"):
        log.append("Bad-Name\x1b", {}, now_wall=1.0)
    log.close()
    with pytest.raises(AuditError, match="closed"):
        log.append("ok_name", {}, now_wall=1.0)


def test_fsync_each_and_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(audit.os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    log = AuditLog(tmp_path / "a.log", NODE, _clock)
    calls.clear()  # opening may sync the directory entry
    log.append("x", {}, now_wall=1.0)
    log.append("x", {}, now_wall=1.0)
    assert calls == []  # batched: nothing synced until sync()
    log.sync()
    assert len(calls) == 1
    log.close()  # close syncs too
    assert len(calls) == 2
    eager = AuditLog(tmp_path / "b.log", NODE, _clock, fsync_each=True)
    calls.clear()
    eager.append("x", {}, now_wall=1.0)
    eager.append("x", {}, now_wall=1.0)
    assert len(calls) == 2
    eager.close()


# -- CLI ---------------------------------------------------------------------------------------------


def test_cli_verify_ok_and_broken(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _log(tmp_path / "audit.log", 4)
    assert main(["audit", "verify", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("OK 4 entries")
    lines = _lines(tmp_path / "audit.log")
    lines[1], lines[2] = lines[2], lines[1]
    _put(tmp_path / "audit.log", lines)
    assert main(["audit", "verify", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("BROKEN line 2: entries are out of order")
    assert main(["audit", "verify", str(tmp_path), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert (doc["ok"], doc["first_bad_line"], doc["kind"], doc["entries"]) == (False, 2, "tampered", 1)


def test_cli_verify_never_prints_raw_control_characters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _put(tmp_path / "audit.log", [b"\x1b]0;pwned\x07\x1b[2J"])
    assert main(["audit", "verify", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "garbage" in out


def test_cli_verify_missing_dir_and_empty_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "mesh.cli", "audit", "verify", str(tmp_path / "nope")],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert main(["audit", "verify", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("OK 0 entries")


def test_every_single_byte_edit_is_reported_at_its_line(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    _log(p, 3)
    data = p.read_bytes()
    line_of = [data.count(b"\n", 0, i) + 1 for i in range(len(data))]
    for i in range(len(data) - 1):  # the final newline is the torn-write case, tested above
        for new in {data[i] ^ 0x01, ord("x") if data[i] != ord("x") else ord("y")}:
            r = audit.verify_bytes(data[:i] + bytes([new]) + data[i + 1:])
            assert not r.ok, f"byte {i} -> {new:#x} undetected"
            assert r.first_bad_line == line_of[i], f"byte {i} -> {new:#x}: line {r.first_bad_line}, expected {line_of[i]}"


def test_cutting_whole_entries_off_the_end_leaves_a_valid_chain_with_an_earlier_head(tmp_path: Path) -> None:
    # The documented limit: only a head recorded elsewhere shows a cut tail.
    p = tmp_path / "audit.log"
    _log(p, 4)
    full = verify(p)
    lines = _lines(p)
    _put(p, lines[:3])
    cut = verify(p)
    assert (cut.ok, cut.entries, cut.head_seq) == (True, 3, 3)
    assert cut.head_hash == json.loads(lines[2])["hash"] != full.head_hash


def test_runtime_denials_land_in_the_chained_log(tmp_path: Path) -> None:
    # AuditLog as the runtime's AuditSink: what the daemon will wire.
    from runtime import CapabilityDenied, Runtime, RuntimeConfig, example_bytes

    p = tmp_path / "audit.log"
    log = AuditLog(p, NODE, _clock)
    with Runtime(RuntimeConfig(allow_unsigned=True), audit=log) as rt:
        with pytest.raises(CapabilityDenied):
            rt.load_unsigned(example_bytes("escape"), name="escape")
    log.close()
    r = verify(p)
    assert r.ok
    entries = [json.loads(line) for line in _lines(p)]
    # Two ungranted imports (http_fetch, path_open), then the admission rejection.
    assert [e["event"] for e in entries] == ["capability_denied", "capability_denied", "module_rejected"]
    assert {e["fields"]["capability"] for e in entries[:2]} == {"import"}
    assert entries[2]["fields"]["reason"] == "capability"
