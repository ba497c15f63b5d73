"""``wasmatrix events [--follow] [--json]``: the node's workload lifecycle events; ``wasmatrix
workloads [--json]``: the replicas this node runs (its supervisor's local state).

Without ``--follow``: the recent events (the node keeps a bounded ring) as a table, or JSON lines
with ``--json``. With ``--follow``: new events as JSON lines as they happen (long polls of
``GET /v1/events?after=SEQ&wait=S``), until interrupted or ``--count`` events were printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from mesh.cli.nodecmd import _api_flags, _call

EXIT_OK = 0
POLL_WAIT = 25.0  # seconds one long poll may wait on the node (below its MAX_EVENT_WAIT)
_SKIP = ("seq", "ts", "mono", "node", "kind", "deployment", "version")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("events", help="workload lifecycle events of a running node (placement, start, stop, failover)")
    p.add_argument("--follow", "-f", action="store_true", help="stream new events as JSON lines until interrupted")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    p.add_argument("--limit", type=int, default=0, help="at most this many recent events (default: all the node keeps)")
    p.add_argument("--count", type=int, default=0, help="with --follow: exit after this many events")
    p.add_argument("--after", type=int, default=None, metavar="SEQ",
                   help="with --follow: start after event SEQ (e.g. to resume; default: from now on)")
    _api_flags(p)
    p.set_defaults(handler=events_command)
    w = subparsers.add_parser("workloads", help="the replicas a running node runs (state, serving version, warm versions)")
    w.add_argument("--json", action="store_true", help="machine-readable output")
    _api_flags(w)
    w.set_defaults(handler=workloads_command)


def workloads_command(args: argparse.Namespace) -> int:
    def run(client: Any) -> int:
        res = client.get("/v1/workloads")
        if args.json:
            print(json.dumps(res["replicas"], sort_keys=True))
            return EXIT_OK
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"replicas on {res['node'][:16]} ({res['evaluations']} placement evaluations)")
        for col in ("deployment", "replica", "state", "serving", "wanted", "warm", "failures", "in flight", "on demand"):
            t.add_column(col)
        for r in res["replicas"]:
            t.add_row(r["deployment"], str(r["index"]), r["state"], r["serving"] or "-", r["version"], ", ".join(r["warm"]) or "-",
                      str(r["failures"]), str(r["inflight"]), "yes" if r["on_demand"] else "")
        Console(width=200).print(t)
        return EXIT_OK

    return _call(args, run)


def _detail(ev: dict[str, Any]) -> str:
    return " ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in ev.items() if k not in _SKIP)


def events_command(args: argparse.Namespace) -> int:
    if args.limit < 0 or args.count < 0 or (args.after is not None and args.after < 0):
        print("wasmatrix events: --limit, --count and --after must be >= 0", file=sys.stderr)
        return 2

    def run(client: Any) -> int:
        if args.follow:
            client.timeout = max(client.timeout, POLL_WAIT + 10)
            after = args.after if args.after is not None else client.get("/v1/events?limit=1")["seq"]
            printed = 0
            while True:
                res = client.get(f"/v1/events?after={after}&wait={POLL_WAIT:g}")
                for ev in res["events"]:
                    after = ev["seq"]
                    print(json.dumps(ev, sort_keys=True), flush=True)
                    printed += 1
                    if args.count and printed >= args.count:
                        return EXIT_OK
                if res["seq"] < after:  # the node restarted: its sequence starts again
                    after = 0
        res = client.get(f"/v1/events?limit={args.limit}" if args.limit else "/v1/events")
        if args.json:
            for ev in res["events"]:
                print(json.dumps(ev, sort_keys=True))
            return EXIT_OK
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"lifecycle events of {res['node'][:16]}")
        for col in ("seq", "time (UTC)", "event", "deployment", "version", "detail"):
            t.add_column(col)
        for ev in res["events"]:
            t.add_row(str(ev["seq"]), time.strftime("%H:%M:%S", time.gmtime(ev["ts"])) + f".{int(ev['ts'] % 1 * 1000):03d}",
                      ev["kind"], ev.get("deployment", ""), ev.get("version", ""), _detail(ev))
        Console(width=200).print(t)
        return EXIT_OK

    return _call(args, run)
