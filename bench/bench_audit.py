"""Audit log benchmarks: prints figures (never asserts). Run: python bench/bench_audit.py [--entries N]

Baselines, measured in the same run on the same disk:
* append: ``os.write`` of the very same pre-encoded lines to an ``O_APPEND`` file (no hashing, no
  JSON, no lock): what the file system costs alone. ``AuditLog.append`` adds encoding + SHA-256.
  The fsync-per-entry variant is compared with the same raw writes plus ``fsync`` each.
* verify: ``json.loads`` + SHA-256 of each line (parse and hash once, no chain checks).
Each figure is the median of 5 runs with the min-max range.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from mesh.audit import AuditLog, verify  # noqa: E402

RUNS = 5
FIELDS = {"module": "billing-eu", "capability": "net:tcp", "detail": "connect 10.0.0.7:5432 not granted", "stage": "call"}


def _clock() -> float:
    return 1_800_000_000.0


def _median(samples: list[float]) -> str:
    return f"{statistics.median(samples):,.0f}/s ({min(samples):,.0f}-{max(samples):,.0f})"


def _rate(fn: Callable[[Path], int]) -> list[float]:
    out = []
    for _ in range(RUNS):
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            n = fn(Path(d))
            out.append(n / (time.perf_counter() - t0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=20_000)
    ap.add_argument("--fsync-entries", type=int, default=300)
    args = ap.parse_args()
    n, nf = args.entries, args.fsync_entries

    with tempfile.TemporaryDirectory() as d:
        log = AuditLog(Path(d) / "a.log", "a1b2c3d4e5f60718", _clock)
        for i in range(n):
            log.append("capability_denied", FIELDS, now_wall=1000.0 + i)
        log.close()
        lines = (Path(d) / "a.log").read_bytes().splitlines(keepends=True)
    print(f"entry size: {len(lines[0])} B")

    def audit(count: int, fsync_each: bool) -> Callable[[Path], int]:
        def run(d: Path) -> int:
            log = AuditLog(d / "a.log", "a1b2c3d4e5f60718", _clock, fsync_each=fsync_each)
            for i in range(count):
                log.append("capability_denied", FIELDS, now_wall=1000.0 + i)
            log.close()
            return count
        return run

    def raw(count: int, fsync_each: bool) -> Callable[[Path], int]:
        def run(d: Path) -> int:
            fd = os.open(d / "r.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            for line in lines[:count]:
                os.write(fd, line)
                if fsync_each:
                    os.fsync(fd)
            os.fsync(fd)
            os.close(fd)
            return count
        return run

    for label, count, each in (("batched fsync", n, False), ("fsync per entry", nf, True)):
        a, b = _rate(audit(count, each)), _rate(raw(count, each))
        ratio = statistics.median(a) / statistics.median(b)
        print(f"append, {label}: AuditLog {_median(a)}  raw os.write {_median(b)}  ratio {ratio:.2f} "
              f"(range {min(a) / max(b):.2f}-{max(a) / min(b):.2f})")

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "v.log"
        p.write_bytes(b"".join(lines))
        v: list[float] = []
        base: list[float] = []
        for _ in range(RUNS):
            t0 = time.perf_counter()
            r = verify(p)
            v.append(r.entries / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            for line in p.read_bytes().splitlines():
                json.loads(line)
                hashlib.sha256(line).digest()
            base.append(len(lines) / (time.perf_counter() - t0))
        assert r.ok
        ratio = statistics.median(v) / statistics.median(base)
        print(f"verify: {_median(v)} entries  baseline parse+hash {_median(base)}  ratio {ratio:.2f} "
              f"(range {min(v) / max(base):.2f}-{max(v) / min(base):.2f})")


if __name__ == "__main__":
    main()
