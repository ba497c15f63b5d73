"""Run one MdnsDiscovery and print what it finds as JSON lines (for tests inside network namespaces).

    python -m tests.harness.mdns_probe --iface veth0 --node-id 0123456789abcdef --port 7946 \
        [--refresh SECONDS] [--lifetime SECONDS]

stdout lines: ``{"event": "ready", "address": ..., "wall": ...}`` once started,
``{"event": "found", "id": ..., "addr": ..., "wall": ...}`` per peer report, and on SIGTERM/SIGINT or
at ``--lifetime`` (a bound so a forgotten probe ends by itself) ``{"event": "stopped", "counters": ...}``.
An error starting discovery prints ``{"event": "error", "error": ...}`` and exits 2. ``wall`` is
``time.time()``, comparable across namespaces (the clock is not namespaced).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time

import structlog

from mesh.discovery import MdnsDiscovery, MdnsError

_out = threading.Lock()


def emit(**fields: object) -> None:
    """One JSON line on stdout, whole, from any thread."""
    with _out:
        sys.stdout.write(json.dumps(fields, sort_keys=True) + "\n")
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """Start discovery, report peers until signalled or the lifetime ends, then close."""
    ap = argparse.ArgumentParser(prog="mdns_probe")
    ap.add_argument("--iface", required=True)
    ap.add_argument("--node-id", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--refresh", type=float, default=0.0, help="call refresh() every SECONDS (0: never)")
    ap.add_argument("--lifetime", type=float, default=60.0)
    args = ap.parse_args(argv)
    # stdout carries only this probe's JSON lines; discovery's own log lines go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def found(node_id: str, addr: str) -> None:  # runs on the zeroconf browser thread
        emit(event="found", id=node_id, addr=addr, wall=time.time())

    try:
        disc = MdnsDiscovery(args.iface, args.node_id, args.port, on_found=found)
        disc.start()
    except MdnsError as exc:
        emit(event="error", error=str(exc))
        return 2
    try:
        emit(event="ready", address=disc.address, wall=time.time())
        deadline = time.monotonic() + args.lifetime
        while not stop.is_set() and time.monotonic() < deadline:
            wait = args.refresh if args.refresh > 0 else 0.2
            if stop.wait(min(wait, max(0.0, deadline - time.monotonic()))):
                break
            if args.refresh > 0 and time.monotonic() < deadline:
                disc.refresh()
    finally:
        disc.close()
    emit(event="stopped", counters=disc.counters, peers=disc.peers())
    return 0


if __name__ == "__main__":
    sys.exit(main())
