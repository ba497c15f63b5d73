"""Failover and rollback of a replica on real daemons (issue 11: failover <= 100 ms, local rollback <= 10 ms).

Run: PYTHONPATH=. python bench/bench_failover.py [--nodes 4] [--rounds 3]

Starts N `wasmatrix node run` processes on 127.0.0.1, publishes the handler example (direct ABI)
and deploys it with 2 replicas. Each round kill -9s one hosting node and measures, on the host's
CLOCK_MONOTONIC (shared by every process):

* declared -> serving: from the first death declaration of the victim on any survivor (its
  ``node_dead`` lifecycle event) to the first successful local call on the replacement (the
  bench calls ``POST /v1/workloads/invoke`` on every survivor every 5 ms; the node stamps the
  answer). This includes the spread of the death news to the replacement.
* own declaration -> running: the replacement's ``running`` event, from its own death
  declaration (placement, start from the warm standby cache, pool warmed, claim written).

Then the victim restarts and the mesh settles back to 2 replicas before the next round.

Rollback: publish 1.1.0, roll forward (the hosts start 1.1.0 cold while 1.0.0 keeps serving and
then stays warm), roll back: each host's ``switch`` event carries ``since_change_ms``, from the
rollback record applied on that host to serving 1.0.0 again.

Baselines, same run: (1) a bare ``Runtime`` in this process admitting the same signed module on
a warm compiled cache (admitted and unloaded once before) plus its first call: the work a
failover does on the replacement once it knows; (2) the roll-forward's cold start on the hosts
(``running.took_ms`` of 1.1.0: fetch, verify, compile, warm) — what a rollback would cost without
the warm previous version. Never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from mesh.daemon.api import ApiClientError  # noqa: E402
from tests.harness.daemons import Mesh, Node, publisher_and_operator, wait_until  # noqa: E402
from tests.harness.procs import ProcessGroup  # noqa: E402

HANDLER = Path(__file__).resolve().parents[1] / "runtime" / "examples" / "handler.wasm"


def cli(*args: str) -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-m", "mesh.cli", *args], capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).resolve().parents[1])
    if r.returncode != 0:
        raise SystemExit(f"wasmatrix {' '.join(args[:2])} failed: {r.stderr.strip()}")
    out = r.stdout.strip()
    return json.loads(out) if out.startswith("{") else {}


def running_on(mesh: Mesh, dep: str) -> dict[str, str]:
    out = {}
    for n in mesh.running():
        for r in n.client().get("/v1/workloads")["replicas"]:
            if r["deployment"] == dep and r["state"] == "running":
                out[n.name] = r["serving"]
    return out


def events(node: Node) -> list[dict[str, Any]]:
    return node.client().get("/v1/events")["events"]


def baseline_admit_first_call(rounds: int) -> list[float]:
    """A bare Runtime: admit the signed handler on a warm compiled cache, then its first call (ms)."""
    from model import Manifest
    from model.manifest import Abi
    from runtime import Publisher, Runtime, RuntimeConfig, TrustStore

    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    wasm = HANDLER.read_bytes()
    pub = Publisher.generate()
    out = []
    with tempfile.TemporaryDirectory() as d:
        rt = Runtime(RuntimeConfig(data_dir=Path(d)), trust=TrustStore([pub.public_bytes]))
        signed = pub.sign(Manifest.for_module("handler", "1.0.0", wasm, abi=Abi.DIRECT))
        rt.unload(rt.admit(signed, wasm).key)  # compile once: the cache is warm, as on a standby
        for _ in range(rounds):
            t0 = time.perf_counter()
            lm = rt.admit(signed, wasm)
            rt.call(lm.key, b"x")
            out.append((time.perf_counter() - t0) * 1000)
            rt.unload(lm.key)
        rt.close()
    return out


def first_success(nodes: list[Node], dep: str, stop_after: float) -> tuple[str, float] | None:
    """Call every node every 5 ms until one answers; (node name, the node's monotonic stamp)."""
    found: list[tuple[str, float]] = []
    done = threading.Event()

    def poll(n: Node) -> None:
        c = n.client(timeout=2.0)
        while not done.is_set() and time.monotonic() < stop_after:
            try:
                res = c.request("POST", f"/v1/workloads/invoke?deployment={dep}", raw=b"x")
                found.append((n.name, float(res["at"])))
                done.set()
                return
            except (ApiClientError, OSError):
                time.sleep(0.005)

    ts = [threading.Thread(target=poll, args=(n,)) for n in nodes]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return min(found, key=lambda x: x[1]) if found else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", default=None)
    a = ap.parse_args()
    if a.nodes < 3 or a.rounds < 1:
        raise SystemExit("--nodes >= 3 and --rounds >= 1")
    root = Path(tempfile.mkdtemp(prefix="wmx-failover-"))
    names = [f"n{i}" for i in range(a.nodes)]
    try:
        first = root / names[0]
        publisher_and_operator(root, names)
        (root / "logs").mkdir()
        with ProcessGroup(root / "logs") as group:
            mesh = Mesh(group, root, profile=a.profile)
            seed = mesh.start(names[0])
            for n in names[1:]:
                mesh.start(n, seeds=[seed.addr])
            wait_until(lambda: mesh.converged({n: "alive" for n in names}), 30, "all nodes joined")
            d0 = str(first)
            cli("module", "publish", str(HANDLER), "--name", "handler", "--version", "1.0.0", "--abi", "direct",
                "--key", str(root / "pub.key"), "--data-dir", d0)
            cli("deploy", "web", "--module", "handler", "--version", "^1.0.0", "--replicas", "2",
                "--key", str(root / "op.key"), "--data-dir", d0)
            failover, own, detect = [], [], []
            phases: list[tuple[float, float, float]] = []
            for rnd in range(a.rounds):
                wait_until(lambda: len(running_on(mesh, "web")) == 2, 60, "2 replicas running")
                time.sleep(1.5)  # standbys prepare (blob + compiled cache)
                hosts = sorted(running_on(mesh, "web"))
                victim = next(h for h in hosts if h != names[0])
                survivors = [n for n in mesh.running() if n.name != victim]
                vid = mesh.nodes[victim].status()["id"]
                t_kill = time.monotonic()
                mesh.kill(victim)
                got = first_success([n for n in survivors if n.name not in hosts], "web", time.monotonic() + 60)
                if got is None:
                    print(f"round {rnd}: no replacement served within 60 s")
                    continue
                new, served_at = got
                declared = [e["mono"] for n in survivors for e in events(n) if e["kind"] in ("node_dead", "node_left")
                            and e.get("member") == vid and e["mono"] > t_kill]
                run_ev = [e for e in events(mesh.nodes[new]) if e["kind"] == "running" and e.get("failover_from")]
                if declared:
                    failover.append((served_at - min(declared)) * 1000)
                    detect.append((min(declared) - t_kill) * 1000)
                if run_ev:
                    own.append(run_ev[-1]["since_death_ms"])
                    phases.append((run_ev[-1].get("blob_ms", 0.0), run_ev[-1].get("admit_ms", 0.0), run_ev[-1]["took_ms"]))
                print(f"round {rnd}: killed {victim}, replacement {new}: declared->serving "
                      f"{failover[-1] if declared else float('nan'):.1f} ms, own declaration->running "
                      f"{own[-1] if run_ev else float('nan'):.1f} ms (detection took {detect[-1] if declared else float('nan'):.0f} ms)")
                mesh.start(victim)
                wait_until(lambda: mesh.converged({n: "alive" for n in names}), 30, "victim rejoined")
            base = baseline_admit_first_call(max(5, a.rounds))

            # rollback: roll forward to 1.1.0 (cold start), then back to 1.0.0 (warm switch)
            # 1.1.0: the same code with a custom section appended, so its blob and compiled artifact are new
            v11 = root / "handler-1.1.0.wasm"
            v11.write_bytes(HANDLER.read_bytes() + bytes([0, 9, 8]) + b"wmx-1.1.")
            cli("module", "publish", str(v11), "--name", "handler", "--version", "1.1.0", "--abi", "direct",
                "--key", str(root / "pub.key"), "--data-dir", d0)
            cli("deploy", "web", "--module", "handler", "--version", "^1.0.0", "--replicas", "2",
                "--key", str(root / "op.key"), "--data-dir", d0)
            wait_until(lambda: set(running_on(mesh, "web").values()) == {"1.1.0"} and len(running_on(mesh, "web")) == 2, 60,
                       "hosts serve 1.1.0")
            hosts = sorted(running_on(mesh, "web"))
            cold = [e["took_ms"] for h in hosts for e in events(mesh.nodes[h]) if e["kind"] == "running" and e["version"] == "1.1.0"]
            cli("rollback", "web", "--key", str(root / "op.key"), "--data-dir", d0)
            wait_until(lambda: running_on(mesh, "web") == {h: "1.0.0" for h in hosts}, 30, "rollback reached the hosts")
            switch = [e["since_change_ms"] for h in hosts for e in events(mesh.nodes[h])
                      if e["kind"] == "switch" and e["version"] == "1.0.0" and "since_change_ms" in e]

        def line(label: str, xs: list[float]) -> str:
            if not xs:
                return f"{label}: no samples"
            return f"{label}: median {statistics.median(xs):.1f} ms, max {max(xs):.1f} ms (n={len(xs)})"

        print()
        print(f"failover on loopback, {a.nodes} daemons, {a.rounds} kill -9 rounds, profile {a.profile or 'default'}")
        print("  " + line("death declared (first survivor) -> replacement serves a call", failover))
        print("  " + line("replacement's own declaration -> replica running", own))
        if phases:
            print("  " + line("  of which the start on the replacement (blob read + admit + warm + claim)", [p[2] for p in phases]))
            print("  " + line("    of which reading the blob (the standby fetched it) on a worker thread", [p[0] for p in phases]))
            print("  " + line("    of which admit (verify, compile cache, pool warm-up) on a worker thread", [p[1] for p in phases]))
        print("  " + line("(for context) kill -9 -> first death declaration", detect))
        print("  " + line("baseline: bare Runtime admit on a warm compiled cache + first call", base))
        if failover and base:
            print(f"  ratio failover / baseline: {statistics.median(failover) / statistics.median(base):.1f}x  (goal: failover <= 100 ms)")
        print("rollback")
        print("  " + line("local switch (rollback record applied -> serving the warm previous version)", switch))
        print("  " + line("baseline: cold start of a new version on the same hosts (fetch, verify, compile, warm)", cold))
        if switch and cold:
            print(f"  ratio switch / cold start: {statistics.median(switch) / statistics.median(cold):.4f}  (goal: switch <= 10 ms)")
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
