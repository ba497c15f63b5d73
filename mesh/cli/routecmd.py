"""`wasmatrix route add | list | rm`: the replicated HTTP routes (served by every node's ``--http`` ingress).

Like ``deploy``, these work against a running node (``--data-dir`` of a live node, or ``--api`` with
``--token``: the node prepares the record, the operator key signs it here and never leaves) or
offline on a stopped node's data dir.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from crdt.schema import METHODS, ROUTE_FORMATS, RouteSpec
from mesh.cli.intentcmd import (
    EXIT_OK, EXIT_USAGE, UsageError, _b64_msgpack, _guard, _open, _out, _remote, _remote_write, _signing_key, target_flags,
)


def _methods(args: argparse.Namespace) -> list[str]:
    methods = [m.upper() for m in (args.method or ["*"])]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise UsageError(f"--method {bad[0]}: one of {', '.join(sorted(METHODS))}")
    return list(dict.fromkeys(methods))


@_guard
def cmd_route_add(args: argparse.Namespace) -> int:
    methods = _methods(args)
    # Validated before the key is read or anything is signed (a bad host/path is a usage error).
    routes = [RouteSpec(args.host.lower(), args.path, m, args.deployment, args.priority, args.format) for m in methods]
    key = _signing_key(args.key)
    remote = _remote(args)
    acks = []
    if remote is not None:
        for r in routes:
            acks.append(_remote_write(remote, key, "route", {"route": _b64_msgpack(r.to_payload())})["seq"])
    else:
        node = _open(args)
        for r in routes:
            acks.append(node.set_route(r, key, time.time()).seq)
    rows = [_row(r.to_payload() | {"format": r.format}) for r in routes]
    if args.json:
        _out(args, {"routes": [r.to_payload() | {"format": r.format} for r in routes], "signer": key.key_id, "seq": acks})
    else:
        _table(rows, "routes added")
    return EXIT_OK


@_guard
def cmd_route_list(args: argparse.Namespace) -> int:
    remote = _remote(args)
    if remote is not None:
        objs = remote.get("/v1/routes")
    else:
        objs = [r.to_payload() | {"format": r.format} for r in _open(args).doc.routes()]
    if args.json:
        _out(args, objs)
    else:
        _table([_row(o) for o in objs], f"{len(objs)} route(s), in match order")
    return EXIT_OK


@_guard
def cmd_route_rm(args: argparse.Namespace) -> int:
    methods = _methods(args)
    key = _signing_key(args.key)
    host = args.host.lower()
    remote = _remote(args)
    for m in methods:
        if remote is not None:
            _remote_write(remote, key, "route_rm", {"host": host, "path": args.path, "method": m})
        else:
            _open(args).delete_route(host, args.path, m, key, time.time())
    removed = [{"host": host, "path": args.path, "method": m} for m in methods]
    if args.json:
        _out(args, {"removed": removed, "signer": key.key_id})
    else:
        _table([[r["method"], r["host"], r["path"], "", "", ""] for r in removed], "routes removed")
    return EXIT_OK


_HEADER = ["METHOD", "HOST", "PATH", "DEPLOYMENT", "PRIORITY", "FORMAT"]


def _row(o: dict[str, Any]) -> list[str]:
    return [o["method"], o["host"], o["path"], o["deployment"], str(o["priority"]), o.get("format", "body")]


def _table(rows: list[list[str]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for h in _HEADER:
        t.add_column(h, no_wrap=True)
    for r in rows:
        t.add_row(*r)
    Console(width=200).print(t)


def register(subparsers: Any) -> None:
    """Add the ``route`` command family."""

    common = target_flags
    rt = subparsers.add_parser("route", help="HTTP routes served by every node's --http ingress")
    sub = rt.add_subparsers(dest="route_command", metavar="SUBCOMMAND", parser_class=type(rt))
    a = sub.add_parser("add", help="route requests for a host and path (and methods) to a deployment")
    a.add_argument("--host", required=True, help="exact host, *.suffix or * (matched without the port)")
    a.add_argument("--path", required=True, help="exact path or a /prefix/* pattern")
    a.add_argument("--method", action="append", metavar="M",
                   help="HTTP method (repeatable: one route per method; default * = any)")
    a.add_argument("--deployment", required=True)
    a.add_argument("--priority", type=int, default=0, help="higher wins before specificity (-1000..1000, default 0)")
    a.add_argument("--format", choices=ROUTE_FORMATS, default="body",
                   help="body (default): request body in, response body out; http: the whole request in, "
                        "a CGI-style answer out (docs/ABI.md \"HTTP handlers\")")
    a.add_argument("--key", required=True, help="operator private key file")
    common(a)
    a.set_defaults(handler=cmd_route_add)
    ls = sub.add_parser("list", help="the routes, in match order")
    common(ls)
    ls.set_defaults(handler=cmd_route_list)
    rm = sub.add_parser("rm", help="remove a route (one per --method; default the * route)")
    rm.add_argument("--host", required=True)
    rm.add_argument("--path", required=True)
    rm.add_argument("--method", action="append", metavar="M")
    rm.add_argument("--key", required=True, help="operator private key file")
    common(rm)
    rm.set_defaults(handler=cmd_route_rm)
    rt.set_defaults(handler=lambda _a: (rt.print_help(sys.stderr), EXIT_USAGE)[1])
