"""Events on one node: events/s and publish→delivery latency, against direct invokes of the same module.

Run: PYTHONPATH=. python bench/bench_events.py [--events 300] [--payload 256] [--concurrency 8]

One ``Daemon`` in a trio run on loopback (as tests/test_events_daemon.py). ``handler.wasm``
(runtime/examples, direct ABI: answers its input uppercased) is deployed with 1 replica (warm,
local); a subscription ``bench`` on ``bench/+`` runs it for each event and publishes the output on
``bench-out`` (observed through ``daemon.bus.tap``).

Measured in the same run, same module, same warm replica, same number of calls:
* baseline: ``await daemon.invocations.invoke("echo", payload)`` — the invocation path the bus uses;
* latency: one event at a time, from ``bus.publish`` (validation, admission, the fsynced sqlite
  commit) to its reply event on the tap (dispatch, invoke, reply publish); vs one invoke at a time;
* throughput: ``--concurrency`` publishers as fast as they are acknowledged, until every event's
  reply arrived (the bus delivers up to 8 at once per subscription); vs as many concurrent invokers.
Prints p50/p99 in milliseconds, events/s and the ratios to the baseline. Bounded: --events is
capped at 5000. Never asserts.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import structlog  # noqa: E402
import trio  # noqa: E402

from mesh.cli import main as cli  # noqa: E402
from mesh.daemon.config import load_config  # noqa: E402
from mesh.daemon.node import Daemon  # noqa: E402

HANDLER = Path(__file__).resolve().parents[1] / "runtime" / "examples" / "handler.wasm"


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


async def _run(n: int, size: int, conc: int, root: Path) -> None:
    cfg = load_config({"data_dir": str(root / "a"), "bind": "127.0.0.1:0", "insecure": True, "name": "a",
                       "profile": "lan", "log_level": "warning"})
    payload = b"x" * size
    for role in ("publisher", "operator"):
        assert cli(["keygen", "--role", role, "--out", str(root / f"{role}.key"), "--data-dir", str(root / "a")]) == 0
    (root / "a").chmod(0o700)
    async with trio.open_nursery() as nursery:
        a: Daemon = await nursery.start(Daemon(cfg).run)
        for args in (["module", "publish", str(HANDLER), "--name", "handler", "--version", "1.0.0", "--abi", "direct",
                      "--key", str(root / "publisher.key")],
                     ["deploy", "echo", "--module", "handler", "--version", "1.0.0", "--replicas", "1",
                      "--key", str(root / "operator.key")],
                     ["subscription", "add", "bench", "--topic", "bench/+", "--deployment", "echo", "--queue", "10000",
                      "--reply-topic", "bench-out", "--key", str(root / "operator.key")]):
            assert await trio.to_thread.run_sync(cli, [*args, "--data-dir", str(root / "a")]) == 0
        with trio.fail_after(60):
            while not a.workloads.hosts("echo"):
                await trio.sleep(0.05)
        for _ in range(20):  # warm both paths
            await a.invocations.invoke("echo", payload)
        tap = a.bus.tap("bench-out", maxlen=n + 10)
        seen: dict[str, float] = {}
        waiters: dict[str, trio.Event] = {}
        done_all = [trio.Event(), 0]  # set once `want` replies arrived

        async def reader() -> None:
            async for ev in tap:
                rid = ev.meta["reply_to"]
                seen[rid] = time.perf_counter()
                w = waiters.pop(rid, None)
                if w is not None:
                    w.set()
                if len(seen) >= done_all[1]:
                    done_all[0].set()  # type: ignore[union-attr]

        done_all[1] = 10**9
        nursery.start_soon(reader)

        # --- latency, one at a time
        base_lat, ev_lat = [], []
        for _ in range(n):
            t0 = time.perf_counter()
            r = await a.invocations.invoke("echo", payload)
            assert r["ok"], r
            base_lat.append(time.perf_counter() - t0)
        for i in range(n):
            t0 = time.perf_counter()
            ev = await a.bus.publish(f"bench/{i % 10}", payload)
            if ev.id not in seen:
                w = waiters[ev.id] = trio.Event()
                await w.wait()
            ev_lat.append(seen[ev.id] - t0)

        # --- throughput, `conc` at a time
        async def invokers() -> float:
            left = [n]

            async def worker() -> None:
                while left[0] > 0:
                    left[0] -= 1
                    r = await a.invocations.invoke("echo", payload)
                    assert r["ok"], r

            t0 = time.perf_counter()
            async with trio.open_nursery() as nn:
                for _ in range(conc):
                    nn.start_soon(worker)
            return time.perf_counter() - t0

        async def publishers() -> tuple[float, float]:
            left = [n]
            seen.clear()
            done_all[0], done_all[1] = trio.Event(), n

            async def worker() -> None:
                while left[0] > 0:
                    left[0] -= 1
                    await a.bus.publish("bench/t", payload)

            t0 = time.perf_counter()
            async with trio.open_nursery() as nn:
                for _ in range(conc):
                    nn.start_soon(worker)
            acked = time.perf_counter() - t0
            await done_all[0].wait()  # type: ignore[union-attr]
            return acked, time.perf_counter() - t0

        base_s = await invokers()
        acked_s, ev_s = await publishers()
        tap.close()
        st = a.bus.status()[0]
        nursery.cancel_scope.cancel()

    def ms(x: float) -> str:
        return f"{x * 1000:8.3f}"

    print(f"events bench: 1 node, handler.wasm (direct ABI, warm local replica), payload {size} B, {n} calls each, "
          f"{os.cpu_count()} CPUs")
    print("baseline = the same number of direct daemon.invocations.invoke('echo') calls, same run\n")
    print(f"{'one at a time':34} {'p50 ms':>8} {'p99 ms':>8}")
    print(f"{'baseline invoke':34} {ms(_pct(base_lat, .5))} {ms(_pct(base_lat, .99))}")
    print(f"{'publish -> reply event':34} {ms(_pct(ev_lat, .5))} {ms(_pct(ev_lat, .99))}"
          f"   x{_pct(ev_lat, .5) / _pct(base_lat, .5):.2f} p50, x{_pct(ev_lat, .99) / _pct(base_lat, .99):.2f} p99")
    print(f"\nthroughput with {conc} concurrent callers/publishers")
    print(f"{'baseline invoke':34} {n / base_s:9.0f} calls/s")
    print(f"{'events acknowledged (fsynced)':34} {n / acked_s:9.0f} events/s")
    print(f"{'events delivered (reply seen)':34} {n / ev_s:9.0f} events/s   x{(n / ev_s) / (n / base_s):.2f} of baseline")
    print(f"\nsubscription: delivered {st['delivered']}, retries {st['retries']}, dead letters {st['dead_letters']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=300)
    ap.add_argument("--payload", type=int, default=256)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    with tempfile.TemporaryDirectory() as d:
        trio.run(_run, max(10, min(args.events, 5000)), args.payload, max(1, args.concurrency), Path(d))


if __name__ == "__main__":
    main()
