"""`wasmatrix tenant set | list | rm`: per-tenant quotas (operator-signed intent records of kind ``tenant``).

Like ``deploy``: against a running node (``--data-dir`` of a live node, or ``--api``) the node
prepares the record and the key signs it here; on a stopped node's data dir the store is written
directly. ``list`` against a node adds that node's view of the usage (calls in flight and in the
last minute on that node, CPU seconds today mesh-wide); offline it shows the limits only.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from crdt.schema import DEFAULT_CPU_SECONDS_PER_DAY, DEFAULT_MAX_CONCURRENCY, DEFAULT_PER_MINUTE, DEFAULT_TENANT, TenantQuota
from mesh.cli.intentcmd import EXIT_OK, _guard, _open, _remote, _remote_write, _signing_key, target_flags


def _current(args: argparse.Namespace, remote: Any, name: str) -> TenantQuota:
    """The tenant's limits now (its record, or the defaults): ``set`` changes only the flags given."""
    if remote is not None:
        rows = {r["tenant"]: r for r in remote.get("/v1/tenants")}
        r = rows.get(name)
        if r is None or not r.get("record"):
            return TenantQuota(name)
        return TenantQuota(name, r["max_concurrency"], r["per_minute"], r["cpu_seconds_per_day"])
    return _open(args).doc.tenant(name) or TenantQuota(name)


@_guard
def cmd_set(args: argparse.Namespace) -> int:
    key = _signing_key(args.key)
    TenantQuota(args.name)  # a bad name is a usage error before anything else
    remote = _remote(args)
    cur = _current(args, remote, args.name)
    q = TenantQuota(
        args.name,
        cur.max_concurrency if args.concurrency is None else args.concurrency,
        cur.per_minute if args.per_minute is None else args.per_minute,
        cur.cpu_seconds_per_day if args.cpu_seconds_per_day is None else args.cpu_seconds_per_day,
    )
    if remote is not None:
        signer = _remote_write(remote, key, "tenant", {"quota": q.to_payload()})["signer"]
    else:
        signer = _open(args).set_tenant(q, key, time.time()).signer
    row = q.to_payload()
    row["tenant"] = row.pop("name")
    _print(args, {**row, "signer": signer})
    return EXIT_OK


@_guard
def cmd_rm(args: argparse.Namespace) -> int:
    key = _signing_key(args.key)
    TenantQuota(args.name)
    remote = _remote(args)
    if remote is not None:
        signer = _remote_write(remote, key, "tenant_rm", {"name": args.name})["signer"]
    else:
        signer = _open(args).delete_tenant(args.name, key, time.time()).signer
    _print(args, {"tenant": args.name, "removed": True, "signer": signer,
                  "now": f"defaults ({DEFAULT_MAX_CONCURRENCY} concurrent, {DEFAULT_PER_MINUTE}/min, "
                         f"{DEFAULT_CPU_SECONDS_PER_DAY:g} CPU s/day)"})
    return EXIT_OK


@_guard
def cmd_list(args: argparse.Namespace) -> int:
    remote = _remote(args)
    if remote is not None:
        rows = remote.get("/v1/tenants")
    else:
        doc = _open(args).doc
        quotas = {q.name: q for q in doc.tenants()}
        names = set(quotas) | {d.spec.tenant for d in doc.deployments()} | {DEFAULT_TENANT}
        rows = []
        for n in sorted(names):
            q = quotas.get(n) or TenantQuota(n)
            rows.append({**q.to_payload(), "tenant": n, "record": n in quotas, "in_flight": None,
                         "calls_last_minute": None, "cpu_seconds_today": None, "cpu_seconds_today_here": None})
        for r in rows:
            del r["name"]
    if args.json:
        _print(args, rows)
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    def usage(v: Any, limit: Any) -> str:
        return "-" if v is None else f"{v:g} / {limit:g}"

    t = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("TENANT", "QUOTA", "IN FLIGHT (here)", "CALLS LAST MIN (here)", "CPU S TODAY (mesh)"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["tenant"], "record" if r["record"] else "defaults", usage(r["in_flight"], r["max_concurrency"]),
                  usage(r["calls_last_minute"], r["per_minute"]), usage(r["cpu_seconds_today"], r["cpu_seconds_per_day"]))
    if remote is None:
        t.caption = "offline (no node running on the data dir): limits only"
    Console(width=200).print(t)
    return EXIT_OK


def _print(args: argparse.Namespace, obj: Any) -> None:
    from mesh.cli.intentcmd import _out

    _out(args, obj)


def _non_negative(kind: type) -> Any:
    def parse(s: str) -> Any:
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not a{'n integer' if kind is int else ' number'}") from None
        if not v >= 0:
            raise argparse.ArgumentTypeError(f"{s!r} must be 0 or more")
        return v

    return parse


def register(subparsers: Any) -> None:
    common = target_flags
    ten = subparsers.add_parser("tenant", help="per-tenant quotas: concurrency, calls per minute, CPU seconds per day")
    sub = ten.add_subparsers(dest="tenant_command", metavar="SUBCOMMAND", parser_class=type(ten))
    s = sub.add_parser("set", help="create or change a tenant's quotas (flags not given keep their value)")
    s.add_argument("name")
    s.add_argument("--concurrency", type=_non_negative(int),
                   help=f"calls running at once, per node (default {DEFAULT_MAX_CONCURRENCY})")
    s.add_argument("--per-minute", type=_non_negative(int),
                   help=f"calls admitted in any 60 s, per node (default {DEFAULT_PER_MINUTE})")
    s.add_argument("--cpu-seconds-per-day", type=_non_negative(float),
                   help=f"guest CPU seconds per UTC day, mesh-wide (default {DEFAULT_CPU_SECONDS_PER_DAY:g})")
    s.add_argument("--key", required=True, help="operator private key file")
    common(s)
    s.set_defaults(handler=cmd_set)
    ls = sub.add_parser("list", help="tenants with their limits and usage")
    common(ls)
    ls.set_defaults(handler=cmd_list)
    rm = sub.add_parser("rm", help="remove a tenant's quota record (the defaults apply again)")
    rm.add_argument("name")
    rm.add_argument("--key", required=True, help="operator private key file")
    common(rm)
    rm.set_defaults(handler=cmd_rm)
    ten.set_defaults(handler=lambda a: (ten.print_help(), 2)[1])
