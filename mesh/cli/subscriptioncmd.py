"""``wasmatrix subscription add|list|rm`` (operator-signed event subscriptions) and ``wasmatrix publish``.

Like ``deploy``: against a running node (``--api``, or a live node on ``--data-dir``) the node
prepares the record and the key signs it here; on a stopped node's data dir the record is written
to its store directly. ``publish`` needs a running node (events are queued by the node that
takes them; see docs/EVENTS.md).
"""

from __future__ import annotations

import argparse
import base64
import sys
import time
from typing import Any

from crdt.schema import SubscriptionSpec
from mesh.cli.intentcmd import (
    EXIT_OK, EXIT_USAGE, UsageError, _err, target_flags, _guard, _kv_pairs, _open, _out, _remote, _remote_write, _signing_key,
    read_input_file,
)
from mesh.events.event import MAX_DATA


def _view(remote: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    from mesh.events.api import subscriptions_view

    return remote.get("/v1/subscriptions") if remote is not None else subscriptions_view(_open(args).doc.subscriptions())


@_guard
def cmd_add(args: argparse.Namespace) -> int:
    key = _signing_key(args.key)
    spec = SubscriptionSpec(args.name, args.topic, args.deployment, _kv_pairs(args.where, "--where"), args.contains or "",
                            args.reply_topic, args.max_attempts, args.queue)
    remote = _remote(args)
    if remote is not None:
        signer = _remote_write(remote, key, "subscribe", {"spec": spec.to_payload()})["signer"]
    else:
        signer = _open(args).set_subscription(spec, key, time.time()).signer
    _out(args, {**spec.to_payload(), "signer": signer})
    return EXIT_OK


@_guard
def cmd_rm(args: argparse.Namespace) -> int:
    key = _signing_key(args.key)
    remote = _remote(args)
    if remote is not None:
        signer = _remote_write(remote, key, "unsubscribe", {"name": args.name})["signer"]
    else:
        signer = _open(args).delete_subscription(args.name, key, time.time()).signer
    _out(args, {"subscription": args.name, "removed": True, "signer": signer})
    return EXIT_OK


@_guard
def cmd_list(args: argparse.Namespace) -> int:
    rows = _view(_remote(args), args)

    def cell(o: dict[str, Any], k: str) -> str:
        return str(o[k]) if k in o else "-"

    table = [[o["name"], o["topic"], o["deployment"],
              " ".join(f"{k}={g}" for k, g in sorted(o["where"].items())) + (f" contains={o['contains']!r}" if o["contains"] else "") or "-",
              o["reply_topic"] or "-", f"{cell(o, 'depth')}/{o['queue']}", cell(o, "in_flight"), cell(o, "delivered"),
              cell(o, "retries"), cell(o, "dead_letters")] for o in rows]
    _out(args, rows, table, ["NAME", "TOPIC", "DEPLOYMENT", "FILTERS", "REPLY TOPIC", "QUEUED", "IN FLIGHT", "DELIVERED",
                             "RETRIES", "DEAD LETTERS"])
    return EXIT_OK


def _data(spec: str) -> bytes:
    if spec == "-":
        data = sys.stdin.buffer.read(MAX_DATA + 1)
        if len(data) > MAX_DATA:
            raise UsageError(f"--data -: stdin holds more than {MAX_DATA} bytes")
        return data
    if spec.startswith("@"):
        return read_input_file(spec[1:], "--data", MAX_DATA)
    data = spec.encode()
    if len(data) > MAX_DATA:
        raise UsageError(f"--data: larger than {MAX_DATA} bytes")
    return data


@_guard
def cmd_publish(args: argparse.Namespace) -> int:
    data = _data(args.data)
    meta = _kv_pairs(args.meta, "--meta")
    remote = _remote(args)
    if remote is None:
        return _err("publish needs a running node: give --api HOST:PORT --token T, or the --data-dir of a running node", EXIT_USAGE)
    res = remote.post("/v1/publish", {"topic": args.topic, "data_b64": base64.b64encode(data).decode(), "meta": meta})
    _out(args, res)
    return EXIT_OK


def register(subparsers: Any) -> None:
    """Add ``subscription add|list|rm`` and ``publish``."""
    common = target_flags

    s = subparsers.add_parser("subscription", help="event subscriptions: a deployment run for each matching event")
    ssub = s.add_subparsers(dest="subscription_command", metavar="SUBCOMMAND", parser_class=type(s))
    a = ssub.add_parser("add", help="create or replace a subscription (operator key)")
    a.add_argument("name")
    a.add_argument("--topic", required=True, help="topic pattern: '/'-separated levels, + for one level, # (last) for the rest")
    a.add_argument("--deployment", required=True, help="deployment run with each matching event's data as its input")
    a.add_argument("--where", action="append", metavar="KEY=GLOB", help="event meta filter, shell glob (repeatable: all must match)")
    a.add_argument("--contains", help="only events whose data contains this text")
    a.add_argument("--reply-topic", help="publish the deployment's output of each delivery on this topic")
    a.add_argument("--max-attempts", type=int, default=5, help="attempts before the event goes to deadletter/NAME (default 5)")
    a.add_argument("--queue", type=int, default=1000, help="events queued per node before publishers get 429 (default 1000)")
    a.add_argument("--key", required=True, help="operator private key file")
    common(a)
    a.set_defaults(handler=cmd_add)
    ls = ssub.add_parser("list", help="subscriptions, with queue depth and delivery counters when a node runs")
    common(ls)
    ls.set_defaults(handler=cmd_list)
    rm = ssub.add_parser("rm", help="remove a subscription (its queued events are dropped)")
    rm.add_argument("name")
    rm.add_argument("--key", required=True, help="operator private key file")
    common(rm)
    rm.set_defaults(handler=cmd_rm)
    s.set_defaults(handler=lambda _a: (s.print_help(sys.stderr), EXIT_USAGE)[1])

    p = subparsers.add_parser("publish", help="publish an event on a topic through a running node")
    p.add_argument("topic")
    p.add_argument("--data", required=True, metavar="TEXT|@FILE|-", help="event data: text, @FILE, or - for stdin")
    p.add_argument("--meta", action="append", metavar="K=V", help="event metadata (repeatable)")
    common(p)
    p.set_defaults(handler=cmd_publish)
