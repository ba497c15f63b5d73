"""Invoke latency: local vs forwarded over the mesh, against a raw runtime call (issue 11).

Run: PYTHONPATH=. python bench/bench_invoke.py [--calls 300] [--payload 1024]

Three ``Daemon`` objects in one trio run on loopback (real sockets, Noise streams, membership,
intent sync, the workload lifecycle), as in tests/test_invoke_daemons.py. ``handler.wasm``
(runtime/examples, direct ABI: answers its input uppercased) is published and deployed with 2
replicas; the lifecycle places, fetches, verifies, compiles and warms them.

Measured, same run, same module, same warm replica:
* baseline: ``await Runtime.invoke(key, Request(payload))`` on a host's runtime (no invocation path);
* local: ``InvokeService.invoke`` on a host (target choice, traceparent, breakers, metrics, logs,
  in-flight accounting);
* forwarded: ``InvokeService.invoke`` on the node without a replica: request and reply cross the
  pooled Noise stream to the nearest host.
Prints p50/p99 in microseconds and the ratios to the baseline. Never asserts.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import structlog  # noqa: E402
import trio  # noqa: E402

from mesh.cli import main as cli  # noqa: E402
from mesh.daemon.config import load_config  # noqa: E402
from mesh.daemon.node import Daemon  # noqa: E402
from mesh.membership.state import MemberState  # noqa: E402
from runtime.invocation import Request  # noqa: E402

HANDLER = Path(__file__).resolve().parents[1] / "runtime" / "examples" / "handler.wasm"


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


async def _run(calls: int, size: int, root: Path) -> None:
    def cfg(name: str, seeds: list[str]) -> Any:
        return load_config({"data_dir": str(root / name), "bind": "127.0.0.1:0", "insecure": True, "name": name,
                            "seed": seeds, "profile": "lan", "log_level": "warning"})

    payload = b"x" * size
    for role in ("publisher", "operator"):
        assert cli(["keygen", "--role", role, "--out", str(root / f"{role}.key"), "--data-dir", str(root / "a")]) == 0
    for n in ("b", "c"):
        (root / n).mkdir(mode=0o700)
        (root / n / "trust.json").write_bytes((root / "a" / "trust.json").read_bytes())
    (root / "a").chmod(0o700)
    async with trio.open_nursery() as nursery:
        a: Daemon = await nursery.start(Daemon(cfg("a", [])).run)
        b: Daemon = await nursery.start(Daemon(cfg("b", [a.advertise])).run)
        c: Daemon = await nursery.start(Daemon(cfg("c", [a.advertise])).run)
        ds = [a, b, c]
        while not all(sum(m.state == MemberState.ALIVE for m in d.core.swim.members.values()) == 3 for d in ds):
            await trio.sleep(0.05)
        for args in (["module", "publish", str(HANDLER), "--name", "handler", "--version", "1.0.0", "--abi", "direct",
                      "--key", str(root / "publisher.key")],
                     ["deploy", "echo", "--module", "handler", "--version", "1.0.0", "--replicas", "2",
                      "--key", str(root / "operator.key")]):
            assert await trio.to_thread.run_sync(cli, [*args, "--data-dir", str(root / "a")]) == 0
        while sum(d.workloads.hosts("echo") for d in ds) < 2 or not all(
                sum(c.deployment == "echo" and c.state == "running" for e in d.core.intent.doc.placements().values()
                    for c in e.replicas) == 2 for d in ds):
            await trio.sleep(0.05)
        host = next(d for d in ds if d.workloads.hosts("echo"))
        caller = next(d for d in ds if not d.workloads.hosts("echo"))
        wl = host.workloads
        key = wl._keys[("echo", wl.sup.serving("echo"))]

        async def measure(fn: Any) -> list[float]:
            for _ in range(min(20, calls)):  # warm-up: streams up, caches filled
                await fn()
            out = []
            for _ in range(calls):
                t0 = time.perf_counter()
                await fn()
                out.append(time.perf_counter() - t0)
            return out

        async def direct() -> None:
            await wl.rt.invoke(key, Request(body=payload))  # type: ignore[union-attr]

        async def local() -> None:
            res = await host.invocations.invoke("echo", payload)
            assert res["ok"] and res["mode"] == "local", res

        async def forwarded() -> None:
            res = await caller.invocations.invoke("echo", payload)
            assert res["ok"] and res["mode"] == "forwarded", res

        base = await measure(direct)
        loc = await measure(local)
        fwd = await measure(forwarded)
        b50 = statistics.median(base)
        print(f"invoke latency, {calls} calls each, {size}-byte payload, 3 daemons on loopback (in one process)")
        print("baseline: Runtime.invoke on the host's warm replica of handler.wasm (no invocation path)")
        for name, xs in (("baseline", base), ("local", loc), ("forwarded", fwd)):
            p50, p99 = statistics.median(xs), _pct(xs, 0.99)
            print(f"  {name:<10} p50 {p50 * 1e6:9.1f} us  p99 {p99 * 1e6:9.1f} us  p50/baseline {p50 / b50:8.1f}x")
        print(f"  forwarded/local p50 ratio: {statistics.median(fwd) / statistics.median(loc):.1f}x")
        nursery.cancel_scope.cancel()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--payload", type=int, default=1024)
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory(prefix="bench-invoke-") as d:
        trio.run(_run, max(1, min(args.calls, 100_000)), max(0, min(args.payload, 60_000)), Path(d))


if __name__ == "__main__":
    main()
