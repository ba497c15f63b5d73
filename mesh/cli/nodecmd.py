"""`wasmatrix node run | members | status | join | leave | meta set`: run a peer and talk to it.

Commands that talk to a running node find it from ``--data-dir`` (``DATA_DIR/api.json`` holds the
API address and token, mode 0600) or from ``--api HOST:PORT`` with ``--token``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from mesh.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE

LABEL_HELP = "k=v label (repeatable)"


def _err(msg: str, code: int = EXIT_FAILURE) -> int:
    print(f"wasmatrix: error: {msg}", file=sys.stderr)
    return code


def cmd_node_run(args: argparse.Namespace) -> int:
    import trio

    from mesh.daemon.config import HTTP_KEYS, DaemonConfigError, load_config
    from mesh.daemon.node import Daemon, configure_logging
    from mesh.datadir import DataDirError, DataDirLocked
    from mesh.errors import MeshError

    flags = {
        "config": args.config, "data_dir": args.data_dir, "bind": args.bind, "advertise": args.advertise,
        "seed": args.seed, "mesh_secret": args.mesh_secret, "insecure": args.insecure, "mdns": args.mdns,
        "name": args.name, "zone": args.zone, "label": args.label, "geo": args.geo, "arch": args.arch,
        "profile": args.profile, "api": args.api, "log_level": args.log_level,
        "max_members": args.max_members, "max_new_members_per_push_pull": args.max_new_members_per_push_pull,
        "max_new_members_per_peer": args.max_new_members_per_peer,
        "mqtt": args.mqtt, "mqtt_in": args.mqtt_in, "mqtt_out": args.mqtt_out, "mqtt_client_id": args.mqtt_client_id,
        "http": args.http, **{k: getattr(args, k) for k in HTTP_KEYS},
    }
    try:
        cfg = load_config(flags)
    except DaemonConfigError as exc:
        return _err(str(exc), EXIT_USAGE)
    configure_logging(cfg.log_level)
    daemon = Daemon(cfg)
    try:
        return trio.run(daemon.run)
    except DataDirLocked as exc:
        return _err(str(exc), EXIT_FAILURE)
    except DaemonConfigError as exc:
        return _err(str(exc), EXIT_USAGE)
    except (DataDirError, MeshError) as exc:
        return _err(str(exc), EXIT_FAILURE)


def _client(args: argparse.Namespace) -> Any:
    from mesh.daemon.api import ApiClient
    from mesh.datadir import DataDirError, resolve_api

    data_dir = args.data_dir or (None if args.api else os.environ.get("WASMATRIX_DATA_DIR", "wasmatrix-data"))
    try:
        info = resolve_api(data_dir, args.api, args.token)
    except DataDirError as exc:
        raise _Usage(str(exc)) from None
    return ApiClient(info.addr, info.token, timeout=args.timeout)


class _Usage(Exception):
    pass


def _call(args: argparse.Namespace, fn: Any) -> int:
    from mesh.daemon.api import ApiClientError

    try:
        client = _client(args)
        return fn(client)
    except _Usage as exc:
        return _err(str(exc), EXIT_USAGE)
    except ApiClientError as exc:
        return _err(str(exc), EXIT_FAILURE)


def _table(rows: list[list[str]], header: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(box=None, pad_edge=False, header_style="bold")
    for h in header:
        t.add_column(h, no_wrap=True)
    for r in rows:
        t.add_row(*r)
    Console(width=200).print(t)


def cmd_members(args: argparse.Namespace) -> int:
    def run(client: Any) -> int:
        rows = client.get("/v1/members")
        if args.json:
            print(json.dumps(rows, indent=2, sort_keys=True))
            return EXIT_OK
        _table(
            [[r["name"], r["id"], r["addr"], r["status"], str(r["incarnation"]), r["zone"] or "-",
              ",".join(f"{k}={v}" for k, v in sorted(r["labels"].items())) or "-",
              "-" if r["rtt_ms"] is None else f"{r['rtt_ms']:.2f}"] for r in rows],
            ["NAME", "ID", "ADDR", "STATUS", "INC", "ZONE", "LABELS", "RTT_MS"],
        )
        return EXIT_OK

    return _call(args, run)


def cmd_status(args: argparse.Namespace) -> int:
    def run(client: Any) -> int:
        st = client.get("/v1/status")
        if args.json:
            print(json.dumps(st, indent=2, sort_keys=True))
            return EXIT_OK
        m = st["members"]
        lines = [
            ("node", f"{st['name']} ({st['id']})"),
            ("address", st["addr"]),
            ("api", st["api"]),
            ("http", st.get("http") or "-"),
            ("mesh", "INSECURE (no mesh secret: anyone can join)" if st["insecure"] else st["mesh_id"]),
            ("profile", st["profile"]),
            ("zone", st["zone"] or "-"),
            ("incarnation", str(st["incarnation"])),
            ("members", f"{m['alive']} alive, {m['suspect']} suspect, {m['dead']} dead, {m['left']} left"),
            ("health", f"{st['health']} (0 is healthy)"),
            ("sessions", str(st["sessions"])),
            ("uptime", f"{st['uptime_s']:.0f} s"),
            ("version", st["version"]),
        ]
        for k, v in lines:
            print(f"{k:<12} {v}")
        return EXIT_OK

    return _call(args, run)


def cmd_join(args: argparse.Namespace) -> int:
    from mesh.daemon.config import DaemonConfigError, parse_hostport

    try:
        for a in args.addr:
            parse_hostport(a, "HOST:PORT")
    except DaemonConfigError as exc:
        return _err(str(exc), EXIT_USAGE)

    def run(client: Any) -> int:
        from mesh.daemon.api import ApiClientError

        try:
            res = client.post("/v1/join", {"addrs": args.addr})
        except ApiClientError as exc:
            if exc.status == 504:
                return _err(f"no answer from {', '.join(args.addr)} (the node keeps trying its seeds)")
            raise
        if args.json:
            print(json.dumps(res, sort_keys=True))
        else:
            print(f"joined: {res['members']} members")
        return EXIT_OK

    return _call(args, run)


def cmd_leave(args: argparse.Namespace) -> int:
    def run(client: Any) -> int:
        client.post("/v1/leave")
        print("leaving: the node announces its leave and stops")
        return EXIT_OK

    return _call(args, run)


def cmd_meta_set(args: argparse.Namespace) -> int:
    set_: dict[str, str] = {}
    unset: list[str] = []
    for item in args.pairs:
        if "=" not in item:
            return _err(f"{item!r}: expected k=v (or k= to remove the label)", EXIT_USAGE)
        k, v = item.split("=", 1)
        if not k:
            return _err(f"{item!r}: empty key", EXIT_USAGE)
        if v == "":
            unset.append(k)
        else:
            set_[k] = v

    def run(client: Any) -> int:
        from mesh.daemon.api import ApiClientError

        try:
            res = client.post("/v1/meta", {"set": set_, "unset": unset})
        except ApiClientError as exc:
            if exc.status == 400:
                return _err(str(exc), EXIT_USAGE)
            raise
        if args.json:
            print(json.dumps(res, sort_keys=True))
        else:
            print("labels: " + (", ".join(f"{k}={v}" for k, v in sorted(res["labels"].items())) or "-"))
        return EXIT_OK

    return _call(args, run)


def _api_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="data dir of the running node (reads DATA_DIR/api.json)")
    p.add_argument("--api", help="node API address HOST:PORT (with --token)")
    p.add_argument("--token", help="API token (with --api)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the node (default 10)")


def register(subparsers: Any) -> None:
    """Add node run, members, status, join, leave and meta set."""
    n = subparsers.add_parser("node", help="run a peer daemon")
    nsub = n.add_subparsers(dest="node_command", metavar="SUBCOMMAND", parser_class=type(n))
    r = nsub.add_parser("run", help="run this node: join the mesh, serve the control API (flags override --config)")
    r.add_argument("--data-dir", help="node state: keys, store, audit log (default $WASMATRIX_DATA_DIR)")
    r.add_argument("--bind", metavar="HOST:PORT", help="UDP and TCP address for mesh traffic (port 0: any free port)")
    r.add_argument("--advertise", metavar="HOST:PORT", help="address peers use to reach this node (default: --bind)")
    r.add_argument("--seed", metavar="HOST:PORT", action="append", help="a node to join through (repeatable)")
    r.add_argument("--mesh-secret", metavar="FILE", help="mesh file from `wasmatrix mesh init`")
    r.add_argument("--insecure", action="store_true", default=None, help="run without a mesh secret (test meshes only)")
    r.add_argument("--mdns", metavar="IFACE", help="advertise and browse _wasmatrix._udp.local. on this interface only")
    r.add_argument("--name", help="display name (default: host name)")
    r.add_argument("--zone", metavar="REGION/SITE/UNIT", help="fault domain path")
    r.add_argument("--label", metavar="K=V", action="append", help=LABEL_HELP)
    r.add_argument("--geo", metavar="LAT,LON", help="position")
    r.add_argument("--arch", help="architecture to announce (default: this machine's)")
    r.add_argument("--profile", help="timing profile: edge (default), lan, wan, local, vehicle")
    r.add_argument("--api", metavar="HOST:PORT", help="control API address (default 127.0.0.1 on a free port)")
    r.add_argument("--config", metavar="FILE.toml", help="settings file; flags override it")
    r.add_argument("--log-level", help="debug, info (default), warning, error")
    r.add_argument("--max-members", metavar="N", help="most members held, tombstones included (default 100000)")
    r.add_argument("--max-new-members-per-push-pull", metavar="N",
                   help="most unknown members one push-pull frame may add (default 10000)")
    r.add_argument("--max-new-members-per-peer", metavar="N",
                   help="unknown members one peer may introduce at once and per push-pull interval (default 20000)")
    r.add_argument("--mqtt", metavar="HOST:PORT", help="bridge events with this MQTT broker (docs/EVENTS.md)")
    r.add_argument("--mqtt-in", metavar="FILTER", action="append",
                   help="broker topic filter published into the mesh as events (repeatable)")
    r.add_argument("--mqtt-out", metavar="PATTERN", action="append",
                   help="mesh topic pattern whose events are published to the broker (repeatable)")
    r.add_argument("--mqtt-client-id", metavar="ID", help="MQTT client id (default wasmatrix-<node id prefix>)")
    r.add_argument("--http", metavar="HOST:PORT", help="serve the HTTP ingress (the replicated routes) here; off unless given")
    for flag, default, unit in (("max-head-bytes", "16384: 431 above", "N"), ("max-body-bytes", "1048576: 413 above", "N"),
                                ("max-connections", "512: 503 above", "N"),
                                ("head-timeout", "10: the whole request head within it (slowloris)", "S"),
                                ("idle-timeout", "30: idle keep-alive connections closed after it", "S"),
                                ("request-timeout", "30: body and call deadline, 504 past it", "S")):
        r.add_argument(f"--http-{flag}", metavar=unit, help=f"HTTP ingress bound (default {default})")
    r.set_defaults(handler=cmd_node_run)
    n.set_defaults(handler=lambda a: (n.print_help(sys.stderr), EXIT_USAGE)[1])

    m = subparsers.add_parser("members", help="known members as seen by a running node")
    _api_flags(m)
    m.add_argument("--json", action="store_true", help="a JSON list of member objects")
    m.set_defaults(handler=cmd_members)

    s = subparsers.add_parser("status", help="a running node's identity, addresses and health")
    _api_flags(s)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(handler=cmd_status)

    j = subparsers.add_parser("join", help="ask a running node to join through HOST:PORT")
    j.add_argument("addr", nargs="+", metavar="HOST:PORT")
    _api_flags(j)
    j.add_argument("--json", action="store_true", help="machine-readable output")
    j.set_defaults(handler=cmd_join)

    lv = subparsers.add_parser("leave", help="ask a running node to leave the mesh gracefully and stop")
    _api_flags(lv)
    lv.set_defaults(handler=cmd_leave)

    mt = subparsers.add_parser("meta", help="change a running node's metadata")
    msub = mt.add_subparsers(dest="meta_command", metavar="SUBCOMMAND", parser_class=type(mt))
    ms = msub.add_parser("set", help="set labels k=v (k= removes k)")
    ms.add_argument("pairs", nargs="+", metavar="K=V")
    _api_flags(ms)
    ms.add_argument("--json", action="store_true", help="machine-readable output")
    ms.set_defaults(handler=cmd_meta_set)
    mt.set_defaults(handler=lambda a: (mt.print_help(sys.stderr), EXIT_USAGE)[1])
