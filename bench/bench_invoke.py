"""Invoke latency: local vs forwarded over the mesh, against the executor called directly (issue 11).

Run: PYTHONPATH=. python bench/bench_invoke.py [--calls 300] [--payload 1024]

Three ``Daemon`` objects in one trio run on loopback (real sockets, Noise streams, membership,
intent sync), as in tests/test_invoke_daemons.py. b and c host ``echo`` through a small in-memory
executor implementing the ``Workloads`` protocol (the workload supervisor is another branch): it
returns the payload, so the figures are the invocation path's own cost, not a guest's.

Measured, same run, same executor:
* baseline: ``await executor.invoke_local(...)`` called directly (no invocation path);
* local: ``InvokeService.invoke`` on b (target choice, traceparent, breakers, metrics, logs);
* forwarded: ``InvokeService.invoke`` on a, which hosts nothing: request and reply cross the
  pooled Noise stream to b or c.
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

from crdt.schema import ReplicaClaim  # noqa: E402
from mesh.daemon.config import load_config  # noqa: E402
from mesh.daemon.node import Daemon  # noqa: E402
from mesh.membership.state import MemberState  # noqa: E402
from runtime.invocation import InvocationResult  # noqa: E402


class Echo:
    """The in-memory executor (``Workloads`` protocol)."""

    def hosts(self, deployment: str) -> bool:
        return deployment == "echo"

    async def invoke_local(self, deployment: str, payload: bytes, *, traceparent: str | None = None) -> Any:
        return InvocationResult(0, payload)


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


async def _run(calls: int, size: int, root: Path) -> None:
    def cfg(name: str, seeds: list[str]) -> Any:
        return load_config({"data_dir": str(root / name), "bind": "127.0.0.1:0", "insecure": True, "name": name,
                            "seed": seeds, "profile": "lan", "log_level": "warning"})

    payload = os.urandom(size)
    async with trio.open_nursery() as nursery:
        a: Daemon = await nursery.start(Daemon(cfg("a", [])).run)
        b: Daemon = await nursery.start(Daemon(cfg("b", [a.advertise])).run)
        c: Daemon = await nursery.start(Daemon(cfg("c", [a.advertise])).run)
        ds = [a, b, c]
        while not all(sum(m.state == MemberState.ALIVE for m in d.core.swim.members.values()) == 3 for d in ds):
            await trio.sleep(0.05)
        echo = Echo()
        for d in (b, c):
            d.workloads = echo
            d.core.intent.set_placement([ReplicaClaim("echo", "1.0.0", "running", 0)], trio.current_time(), wall=time.time())
            d.emit([])
        while not all(d.node_id in a.core.intent.doc.placements() for d in (b, c)):
            await trio.sleep(0.05)

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
            await echo.invoke_local("echo", payload, traceparent=None)

        async def local() -> None:
            res = await b.invocations.invoke("echo", payload)
            assert res["ok"] and res["mode"] == "local", res

        async def forwarded() -> None:
            res = await a.invocations.invoke("echo", payload)
            assert res["ok"] and res["mode"] == "forwarded", res

        base = await measure(direct)
        loc = await measure(local)
        fwd = await measure(forwarded)
        b50 = statistics.median(base)
        print(f"invoke latency, {calls} calls each, {size}-byte payload, 3 daemons on loopback (in one process)")
        print("baseline: the same in-memory executor awaited directly (no invocation path)")
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
