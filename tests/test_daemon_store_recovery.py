"""A daemon whose intent store was truncated to 0 bytes while it was down rejoins, refetches its
records from peers and never reuses a sequence number of a key it signs for (issue 9)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.harness.daemons import wait_until
from tests.harness.procs import ProcessGroup, procs  # noqa: F401  (fixture)
from tests.test_daemon_registry import HELLO, _cli, three_nodes


@pytest.mark.slow
def test_a_truncated_store_recovers_from_peers_and_the_next_write_takes_the_next_seq(procs: ProcessGroup, tmp_path: Path) -> None:
    names = ["a", "b", "c"]
    mesh = three_nodes(procs, tmp_path, names)

    def publish(version: str) -> tuple[int, str, str]:
        r = _cli("module", "publish", str(HELLO), "--name", "hello", "--version", version, "--key", str(tmp_path / "pub.key"),
                 "--data-dir", str(tmp_path / "a"), "--json")
        return r.returncode, r.stdout, r.stderr

    for v in ("1.0.0", "1.1.0"):
        code, _, err = publish(v)
        assert code == 0, err
    versions = lambda n: sorted(m["version"] for m in mesh.nodes[n].client().get("/v1/module?name=hello"))  # noqa: E731
    wait_until(lambda: all(versions(n) == ["1.0.0", "1.1.0"] for n in ("b", "c")), 10, "both versions on b and c")

    mesh.kill("a")
    store = tmp_path / "a" / "intent.sqlite3"
    store.write_bytes(b"")  # the disk lost the store; the key and the marker survived
    for suffix in ("-wal", "-shm"):
        Path(str(store) + suffix).unlink(missing_ok=True)
    mesh.start("a")  # rejoins through its members.json snapshot (same address)

    # The publisher key's head is seq 2 on b and c. Until a learned that, a write through it is
    # refused (503, "damaged") rather than signed as seq 1 (equivocation: the key would freeze).
    t0 = time.monotonic()
    refusals = 0
    while True:
        code, out, err = publish("2.0.0")
        if code == 0:
            break
        assert "intent store was damaged" in err, err
        refusals += 1
        assert time.monotonic() - t0 < 30, "a never recovered"
        time.sleep(0.3)
    assert json.loads(out)["seq"] == 3
    print(f"recovered {time.monotonic() - t0:.1f} s after restart; {refusals} writes refused meanwhile")
    wait_until(lambda: all(versions(n) == ["1.0.0", "1.1.0", "2.0.0"] for n in names), 10, "2.0.0 everywhere, nothing frozen")
    audit = (tmp_path / "a" / "audit.log").read_text()
    assert '"store_damaged"' in audit and '"store_recovered"' in audit
    for n in ("b", "c"):
        assert '"record_equivocation"' not in (tmp_path / n / "audit.log").read_text()
