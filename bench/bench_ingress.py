"""HTTP ingress throughput and latency: a trivial wasm handler through ``--http`` vs a bare trio+h11 server.

Run: PYTHONPATH=. python bench/bench_ingress.py [--duration 5] [--runs 3] [--connections 8]

Load generator: ``wrk --latency`` (Debian ``wrk``; one thread, N keep-alive connections) on loopback,
each measurement ``--duration`` seconds, ``--runs`` rounds alternating the targets so that drift of
this shared machine hits them alike. Targets, all GET of a ~10-byte answer:

* baseline: a bare trio + h11 server (this file, ``--baseline-server``, its own process) answering
  the same status, headers and bytes the ingress sends, without routing, invocation or wasm;
* local: a daemon (``wasmatrix node run --http``, its own process, log level warning so the
  per-request info line is not written) routing ``/echo`` to ``handler.wasm`` (direct ABI,
  runtime/examples) that runs on this node, its tenant's quota lifted (``tenant set default``);
* forwarded: a second daemon without a replica: every request crosses the Noise stream to the first.

Prints requests/s and p50/p99 per target (median of the runs, with min..max), and the ratios
local/baseline and forwarded/local. Never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

ROOT = Path(__file__).resolve().parents[1]
HANDLER = ROOT / "runtime" / "examples" / "handler.wasm"
WRK = shutil.which("wrk") or "/usr/bin/wrk"


# ---------------------------------------------------------------------------------- the baseline


def baseline_server(port_file: str) -> None:
    """A bare trio+h11 keep-alive server answering every request with the ingress's headers and 'n=1:'."""
    import h11
    import trio

    body = b"n=1:"
    headers = [("content-type", "text/plain; charset=utf-8"), ("content-length", str(len(body))),
               ("x-content-type-options", "nosniff"), ("x-request-id", "0123456789abcdef"),
               ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]

    async def conn_task(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                    continue
                if isinstance(ev, h11.EndOfMessage):
                    out = conn.send(h11.Response(status_code=200, headers=headers))
                    out += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
                    await stream.send_all(out)
                    conn.start_next_cycle()
                elif isinstance(ev, h11.ConnectionClosed):
                    return
        except (trio.BrokenResourceError, h11.ProtocolError):
            return

    async def main() -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        Path(port_file).write_text(str(listeners[0].socket.getsockname()[1]))
        await trio.serve_listeners(conn_task, listeners)

    trio.run(main)


# ---------------------------------------------------------------------------------- helpers


def _cli(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "mesh.cli", *args], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"wasmatrix {' '.join(args[:2])} failed: {r.stderr.strip()}")
    return r.stdout


def _wait_file(p: Path, timeout: float = 30.0) -> None:
    t0 = time.monotonic()
    while not p.exists() or not p.read_text().strip():
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"{p} did not appear within {timeout} s")
        time.sleep(0.05)


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _wrk(port: int, duration: float, connections: int) -> dict[str, float]:
    out = subprocess.run([WRK, "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "--timeout", "5s",
                          f"http://127.0.0.1:{port}/echo"], capture_output=True, text=True, timeout=duration + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {}
    for q in ("50", "99"):
        m = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        lat[q] = float(m.group(1)) * _UNIT[m.group(2)] if m else float("nan")  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": lat["50"], "p99": lat["99"], "non2xx": float(errors.group(1)) if errors else 0.0}


def _summary(rows: list[dict[str, float]], key: str) -> tuple[float, float, float]:
    xs = [r[key] for r in rows]
    return statistics.median(xs), min(xs), max(xs)


# ---------------------------------------------------------------------------------- the run


def run(duration: float, runs: int, connections: int) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    root = Path(tempfile.mkdtemp(prefix="bench-ingress-"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        procs.append(subprocess.Popen([sys.executable, __file__, "--baseline-server", str(root / "base.port")],
                                      env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for role in ("publisher", "operator"):
            _cli("keygen", "--role", role, "--out", str(root / f"{role}.key"), "--data-dir", str(root / "a"))
        (root / "b").mkdir(mode=0o700)
        shutil.copy(root / "a" / "trust.json", root / "b" / "trust.json")
        (root / "a").chmod(0o700)

        def start(name: str, seeds: list[str], extra: list[str]) -> subprocess.Popen[bytes]:
            args = [sys.executable, "-m", "mesh.cli", "node", "run", "--data-dir", str(root / name), "--bind",
                    "127.0.0.1:0", "--insecure", "--name", name, "--profile", "lan", "--log-level", "warning",
                    "--http", "127.0.0.1:0", *extra]
            for s in seeds:
                args += ["--seed", s]
            p = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                 stderr=open(root / f"{name}.log", "wb"))
            procs.append(p)
            _wait_file(root / name / "api.json")
            return p

        start("a", [], ["--label", "role=host"])
        info_a = json.loads((root / "a" / "api.json").read_text())
        from mesh.daemon.api import ApiClient

        ca = ApiClient(info_a["addr"], info_a["token"])
        st_a = ca.get("/v1/status")
        start("b", [st_a["addr"]], [])
        info_b = json.loads((root / "b" / "api.json").read_text())
        cb = ApiClient(info_b["addr"], info_b["token"])
        _cli("module", "publish", str(HANDLER), "--name", "handler", "--version", "1.0.0", "--abi", "direct",
             "--key", str(root / "publisher.key"), "--data-dir", str(root / "a"))
        _cli("deploy", "echo", "--module", "handler", "--version", "1.0.0", "--replicas", "1", "--label", "role=host",
             "--key", str(root / "operator.key"), "--data-dir", str(root / "a"))
        _cli("route", "add", "--host", "*", "--path", "/echo", "--method", "GET", "--deployment", "echo",
             "--key", str(root / "operator.key"), "--data-dir", str(root / "a"))
        # The default tenant quota (10,000 calls a minute per node) would answer most of the load 429:
        # lift it, the bench measures the path, not the quota.
        _cli("tenant", "set", "default", "--per-minute", "100000000", "--concurrency", "10000",
             "--cpu-seconds-per-day", "1000000", "--key", str(root / "operator.key"), "--data-dir", str(root / "a"))
        port_a = int(ca.get("/v1/status")["http"].rsplit(":", 1)[1])
        port_b = int(cb.get("/v1/status")["http"].rsplit(":", 1)[1])
        _wait_file(root / "base.port")
        port_base = int((root / "base.port").read_text())
        t0 = time.monotonic()
        while True:  # the replica runs on a and b knows it: both ingresses answer 200
            sa, ba = _get(port_a, "/echo")
            sb, bb = _get(port_b, "/echo")
            if sa == 200 and sb == 200:
                break
            if time.monotonic() - t0 > 60:
                raise SystemExit(f"ingress not ready: a {sa} {ba[:80]!r}, b {sb} {bb[:80]!r}")
            time.sleep(0.2)
        while "100000000" not in _cli("tenant", "list", "--json", "--data-dir", str(root / "b")):
            if time.monotonic() - t0 > 60:
                raise SystemExit("the lifted tenant quota did not reach b")
            time.sleep(0.2)
        for p in (port_base, port_a, port_b):
            _wrk(p, 1.0, connections)  # warm-up
        results: dict[str, list[dict[str, float]]] = {"baseline": [], "local": [], "forwarded": []}
        for i in range(runs):
            for name, port in (("baseline", port_base), ("local", port_a), ("forwarded", port_b)):
                results[name].append(_wrk(port, duration, connections))
                print(f"  run {i + 1}/{runs} {name:<9} {results[name][-1]['rps']:9.0f} req/s", file=sys.stderr)
        cores = os.cpu_count()
        print(f"bench_ingress: wrk -t1 -c{connections} -d{duration:g}s --latency, {runs} runs each, {cores} cores, "
              f"GET of a ~10-byte answer over loopback")
        print("baseline = a bare trio+h11 server (one process) sending the same status, headers and bytes, no wasm")
        print(f"{'target':<10} {'req/s median (min..max)':>28} {'p50 ms median (min..max)':>28} {'p99 ms median (min..max)':>28}")
        med = {}
        for name, rows in results.items():
            cols = []
            for key, fmt in (("rps", "{:.0f}"), ("p50", "{:.2f}"), ("p99", "{:.2f}")):
                m, lo, hi = _summary(rows, key)
                med[(name, key)] = m
                cols.append(f"{fmt.format(m)} ({fmt.format(lo)}..{fmt.format(hi)})")
            bad = sum(r["non2xx"] for r in rows)
            print(f"{name:<10} {cols[0]:>28} {cols[1]:>28} {cols[2]:>28}" + (f"  non-2xx: {bad:.0f}" if bad else ""))
        print(f"ratio local/baseline req/s: {med[('local', 'rps')] / med[('baseline', 'rps')]:.3f}  "
              f"forwarded/local req/s: {med[('forwarded', 'rps')] / med[('local', 'rps')]:.3f}  "
              f"p50 forwarded - local: {med[('forwarded', 'p50')] - med[('local', 'p50')]:.2f} ms")
        print(f"seed 004 asks 10000 req/s per node: local reaches {med[('local', 'rps')] / 10000:.1%} of it here")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measurement (default 5)")
    ap.add_argument("--runs", type=int, default=3, help="rounds per target (default 3)")
    ap.add_argument("--connections", type=int, default=8, help="wrk keep-alive connections (default 8)")
    ap.add_argument("--baseline-server", metavar="PORT_FILE", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baseline_server:
        baseline_server(args.baseline_server)
        return
    if not os.path.exists(WRK):
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    run(min(args.duration, 60.0), max(1, min(args.runs, 10)), max(1, min(args.connections, 256)))


if __name__ == "__main__":
    main()
