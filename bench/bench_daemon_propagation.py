"""Loopback propagation of registry writes across real daemons (issue 10: goal p99 <= 100 ms at 10 daemons).

Run: PYTHONPATH=. python bench/bench_daemon_propagation.py [--nodes 10] [--writes 20]

Starts N `wasmatrix node run` processes on 127.0.0.1 (one seed, a mesh file, trust.json copied
into every data dir), waits until all see each other, then publishes W module versions through
node 0's API the way the CLI does (prepare -> sign here -> submit; the answer comes once durable),
one every 100 ms. Every daemon records when each record became visible on it, on the host's
CLOCK_MONOTONIC (shared by all processes): GET /v1/intent/visible. A record's latency on a node is
that time minus when it became visible on the writer (no polling load, no polling error).

Baseline, same run: the writer's own acknowledgement latency (visible there -> durable -> the
API answered), the work a single node does for the same write. Never asserts.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import msgpack  # noqa: E402

from crdt.keys import SigningKey  # noqa: E402
from crdt.logrecord import LogRecord  # noqa: E402
from crdt.trust import Role, TrustConfig  # noqa: E402
from mesh.daemon.api import ApiClient  # noqa: E402
from mesh.meshfile import init_mesh  # noqa: E402
from model import Manifest  # noqa: E402
from tests.harness.daemons import Mesh, wait_until  # noqa: E402
from tests.harness.procs import ProcessGroup  # noqa: E402

WASM = b"\x00asm\x01\x00\x00\x00"  # the smallest valid module: the record, not the blob, is measured


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def publish(client: ApiClient, key: SigningKey, version: str) -> float:
    m = Manifest.for_module("bench", version, WASM, created_at=time.time())
    args = {"manifest": base64.b64encode(msgpack.packb(m.to_payload(), use_bin_type=True)).decode()}
    prep = client.post("/v1/intent/prepare", {"op": "publish", "signer": key.key_id, "args": args})
    kind, slot, payload, tomb, seq, prev, wall_ms = msgpack.unpackb(base64.b64decode(prep["prepared"]), raw=False)
    rec = LogRecord.create(key, seq, prev, kind, slot, payload, wall_ms, tombstone=tomb)
    client.post("/v1/intent/records", {"records": [base64.b64encode(rec.encode()).decode()]})
    return time.monotonic()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--writes", type=int, default=20)
    ap.add_argument("--profile", default=None)
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="wmx-prop-"))
    try:
        init_mesh(root / "mesh.json", now_wall=time.time())
        key = SigningKey.generate()
        trust = TrustConfig()
        trust.add_key(key.public_raw, [Role.PUBLISHER])
        names = [f"n{i}" for i in range(a.nodes)]
        for n in names:
            (root / n).mkdir(mode=0o700)
            trust.save(root / n / "trust.json")
        (root / "logs").mkdir()
        with ProcessGroup(root / "logs") as group:
            mesh = Mesh(group, root, mesh_file=root / "mesh.json", profile=a.profile)
            seed = mesh.start(names[0])
            for n in names[1:]:
                mesh.start(n, seeds=[seed.addr])
            took = wait_until(lambda: mesh.converged({n: "alive" for n in names}), 60, "all nodes alive", interval=0.2)
            print(f"{a.nodes} daemons on 127.0.0.1 joined through one seed in {took:.1f} s")
            clients = {n: mesh.nodes[n].client() for n in names}
            writer = clients[names[0]]
            lat: list[float] = []
            ack_lat: list[float] = []
            missing = 0
            seqs = []
            for i in range(a.writes):
                t_ack = publish(writer, key, f"1.0.{i}")
                seq = i + 1
                seqs.append(seq)
                t_vis = writer.get(f"/v1/intent/visible?signer={key.key_id}&seq={seq}")["at"]
                ack_lat.append((t_ack - t_vis) * 1000)
                time.sleep(0.1)
            time.sleep(1.0)
            for seq in seqs:
                t0 = writer.get(f"/v1/intent/visible?signer={key.key_id}&seq={seq}")["at"]
                for n in names[1:]:
                    t = clients[n].get(f"/v1/intent/visible?signer={key.key_id}&seq={seq}")["at"]
                    if t is None:
                        missing += 1
                    else:
                        lat.append((t - t0) * 1000)
            print(f"{a.writes} registry writes through {names[0]}; visible on the {a.nodes - 1} other nodes, "
                  f"ms after visible on the writer:")
            print(f"  propagation  : p50 {pct(lat, .5):6.1f}  p99 {pct(lat, .99):6.1f}  max {max(lat):6.1f}  (n={len(lat)}, missing {missing})")
            print(f"  baseline     : p50 {pct(ack_lat, .5):6.1f}  p99 {pct(ack_lat, .99):6.1f}  max {max(ack_lat):6.1f}  "
                  f"(the writer's own durable acknowledgement of the same write)")
            print(f"  ratio p99 propagation / p99 local ack: {pct(lat, .99) / max(pct(ack_lat, .99), 1e-9):.2f}; "
                  f"goal p99 <= 100 ms: {'meets it' if pct(lat, .99) <= 100 else 'MISSES it'}")
            print(json.dumps({"nodes": a.nodes, "writes": a.writes, "p50_ms": pct(lat, .5), "p99_ms": pct(lat, .99),
                              "max_ms": max(lat), "ack_p99_ms": pct(ack_lat, .99), "missing": missing}))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
