"""`wasmatrix invoke | placements` against a running node (``--data-dir``, or ``--api`` with ``--token``).

* ``invoke DEPLOYMENT [--data @FILE|-|TEXT]``: the node runs the call locally when it hosts a
  replica, else forwards it to the nearest healthy replica; the guest's output goes to stdout.
  ``--json`` prints the node that ran it, local or forwarded, latency, traceparent and attempts.
  Exit 0 when the guest ran to completion with status 0; 1 when the call failed (no replica,
  a trap, a timeout) or the guest exited non-zero; 2 for a usage error.
* ``placements [DEPLOYMENT] [--explain]``: where each replica runs, and why (``--explain``).
* ``placements --check``: every node's view/placement digests, grouped into agreeing sets.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from typing import Any

from mesh.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from mesh.cli.nodecmd import _api_flags, _call, _err, _table

MAX_DATA = 60_000  # mesh.invoke.messages.MAX_INVOKE_PAYLOAD (one stream frame)


def _read_data(spec: str | None) -> bytes:
    from mesh.cli.intentcmd import UsageError, read_input_file

    if spec is None:
        return b""
    if spec == "-":
        data = sys.stdin.buffer.read(MAX_DATA + 1)
    elif spec.startswith("@"):
        data = read_input_file(spec[1:], "--data", MAX_DATA)
    else:
        data = spec.encode()
    if len(data) > MAX_DATA:
        raise UsageError(f"--data: larger than {MAX_DATA} bytes")
    return data


def cmd_invoke(args: argparse.Namespace) -> int:
    from mesh.cli.intentcmd import UsageError

    try:
        data = _read_data(args.data)
    except UsageError as exc:
        return _err(str(exc), EXIT_USAGE)
    body: dict[str, Any] = {"deployment": args.deployment, "payload_b64": base64.b64encode(data).decode()}
    if args.traceparent:
        body["traceparent"] = args.traceparent
    if args.timeout_s is not None:
        body["timeout_s"] = args.timeout_s

    def run(client: Any) -> int:
        from mesh.daemon.api import ApiClientError

        try:
            res = client.post("/v1/invoke", body)
        except ApiClientError as exc:
            if exc.status == 400:
                return _err(str(exc), EXIT_USAGE)
            if args.json and isinstance(exc.body, dict) and "code" in exc.body:
                _print_json(exc.body)
            return _err(str(exc), EXIT_FAILURE)
        if args.json:
            _print_json(res)
        else:
            sys.stdout.buffer.write(base64.b64decode(res["output_b64"]))
            sys.stdout.flush()
        return EXIT_OK if res["ok"] and res["status"] == 0 else EXIT_FAILURE

    # The call's own budget plus slack for the API round trip.
    if args.timeout_s is not None:
        args.timeout = max(args.timeout, args.timeout_s + 5.0)
    else:
        args.timeout = max(args.timeout, 35.0)
    return _call(args, run)


def _print_json(res: dict[str, Any]) -> None:
    out = dict(res)
    raw = base64.b64decode(out.pop("output_b64", "") or "")
    try:
        out["output"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        out["output_b64"] = base64.b64encode(raw).decode()
    print(json.dumps(out, indent=2, sort_keys=True))


def cmd_placements(args: argparse.Namespace) -> int:
    if args.check and (args.deployment or args.explain):
        return _err("--check takes no DEPLOYMENT and no --explain", EXIT_USAGE)

    def run(client: Any) -> int:
        from mesh.daemon.api import ApiClientError

        if args.check:
            return _check(client.get("/v1/placements/check"), args.json)
        q = []
        if args.deployment:
            q.append(f"deployment={args.deployment}")
        if args.explain:
            q.append("explain=1")
        try:
            res = client.get("/v1/placements" + ("?" + "&".join(q) if q else ""))
        except ApiClientError as exc:
            if exc.status == 404:
                return _err(str(exc), EXIT_FAILURE)
            raise
        if args.json:
            print(json.dumps(res, indent=2, sort_keys=True))
            return EXIT_OK
        rows = []
        for d in res["deployments"]:
            if not d["running"]:
                rows.append([d["deployment"], "-", "-", "-", "-", "-", "-", "-"])
            # A dead node's last claim stays in the document (only it may rewrite its entry): the
            # MEMBER column says whether the claimant is alive, so a stale "running" is not mistaken.
            for r in d["running"]:
                rows.append([d["deployment"], str(r["index"]), r["name"] or r["node"], r["node"], r["zone"] or "-",
                             r["version"], r["state"], r.get("member") or "-"])
        if not rows:
            print("no deployments")
        else:
            _table(rows, ["DEPLOYMENT", "INDEX", "NODE", "ID", "ZONE", "VERSION", "STATE", "MEMBER"])
        if args.explain:
            for d in res["deployments"]:
                print(f"\n{d['deployment']}: {d['replicas']} wanted, target {', '.join(d['target']) or '-'}"
                      + (f" ({d['shortfall']} short)" if d["shortfall"] else "") + (f" — {d['error']}" if d.get("error") else ""))
                _table([[c["name"] or c["node"], c["node"], c["zone"] or "-",
                         "standby" if c.get("standby") else "-" if c["replica"] is None else str(c["replica"]),
                         c["rejected"] and "filtered" or "eligible",
                         c["rejected"] or _score(c["score"])] for c in d["candidates"]],
                       ["NODE", "ID", "ZONE", "REPLICA", "VERDICT", "WHY / SCORE"])
        return EXIT_OK

    return _call(args, run)


def _score(s: dict[str, Any]) -> str:
    return (f"score {s['base']:.3f} (proximity {s['proximity']:.3f}, locality {s['locality']:.2f}, "
            f"load {s['load']:.2f}{', incumbent' if s['incumbent'] else ''})")


def _check(res: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(res, indent=2, sort_keys=True))
        return EXIT_OK if res["agree"] else EXIT_FAILURE
    names = {r["node"]: r["name"] or r["node"] for r in res["nodes"]}
    _table([[r["name"] or r["node"], r["node"], r["status"], r["view"] or "-", r["specs"] or "-", r["placement"] or "-",
             r["format"] or "-"] for r in res["nodes"]],
           ["NODE", "ID", "STATUS", "VIEW", "DEPLOYMENTS", "PLACEMENT", "FORMAT"])
    print()
    for g in res["groups"]:
        who = ", ".join(names.get(n, n) for n in g["nodes"])
        label = "agree" if g["reason"] == "reference" else g["reason"]
        print(f"{label}: {who}")
    print("all nodes agree" if res["agree"] else "nodes disagree")
    return EXIT_OK if res["agree"] else EXIT_FAILURE


def register(subparsers: Any) -> None:
    """Add invoke and placements."""
    i = subparsers.add_parser("invoke", help="run a deployment once, here or on the nearest healthy replica")
    i.add_argument("deployment", metavar="DEPLOYMENT")
    i.add_argument("--data", metavar="@FILE|-|TEXT", help="input: @FILE, - for stdin, or the text itself (default empty)")
    i.add_argument("--traceparent", help="W3C traceparent to continue (default: a new trace)")
    i.add_argument("--timeout-s", type=float, dest="timeout_s", help="the call's budget in seconds (default 30)")
    _api_flags(i)
    i.add_argument("--json", action="store_true", help="result object: output, node, mode, latency, traceparent, attempts")
    i.set_defaults(handler=cmd_invoke)

    p = subparsers.add_parser("placements", help="where replicas run; --explain why; --check whether nodes agree")
    p.add_argument("deployment", nargs="?", metavar="DEPLOYMENT")
    p.add_argument("--explain", action="store_true", help="every candidate node: filtered (why) or its score")
    p.add_argument("--check", action="store_true", help="compare every node's view and placement digests")
    _api_flags(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_placements)
