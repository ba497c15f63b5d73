"""`wasmatrix keygen --admin-key`, `wasmatrix revoke`, `wasmatrix trust list`: replicated trust through a running node.

The admin (or operator) key signs the ``trust`` record here, in the CLI; the node verifies it,
stores it durably and replicates it (``crdt/client.py``, ``POST /v1/intent/records``). Every node
then trusts the granted key for its roles, or refuses the revoked node. Offline on a plain data
dir (no node running there, no ``--api``), ``keygen`` keeps writing the local ``trust.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from crdt.client import head, sign_next, submit
from crdt.errors import CrdtError
from crdt.keys import SigningKey, load_signing_key
from crdt.meshtrust import grant_payload, grant_slot, revoke_payload, revoke_slot

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _err(msg: str, code: int = EXIT_FAILURE) -> int:
    print(f"wasmatrix: {msg}", file=sys.stderr)
    return code


def node_client(args: argparse.Namespace, required: bool) -> Any:
    """The running node's API client: ``--api``/``--token``, or ``DATA_DIR/api.json``; None if none runs (and not required)."""
    from mesh.daemon.api import ApiClient
    from mesh.datadir import DataDirError, resolve_api

    api, token = getattr(args, "api", None), getattr(args, "token", None)
    data_dir = args.data_dir or (None if api else os.environ.get("WASMATRIX_DATA_DIR", "wasmatrix-data"))
    if api is None and token is None and not required and not (Path(data_dir) / "api.json").exists():
        return None
    try:
        info = resolve_api(data_dir, api, token)
    except DataDirError as exc:
        raise UsageErr(str(exc)) from None
    return ApiClient(info.addr, info.token, timeout=getattr(args, "timeout", 10.0))


class UsageErr(Exception):
    pass


def _load_key(path: str, what: str) -> SigningKey:
    try:
        return load_signing_key(path)
    except CrdtError as exc:
        raise UsageErr(f"{what}: {exc}") from None


def _print(args: argparse.Namespace, obj: dict[str, Any], text: str) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True) if getattr(args, "json", False) else text)


def keygen_online(args: argparse.Namespace) -> int | None:
    """`keygen` through a running node (None: no node, no --admin-key: the caller does the offline keygen)."""
    from mesh.daemon.api import ApiClientError

    try:
        client = node_client(args, required=bool(getattr(args, "api", None)))
        if client is None:
            if args.admin_key:
                return _err("--admin-key needs a running node (DATA_DIR/api.json) or --api HOST:PORT --token T: "
                            "a grant replicates through the mesh", EXIT_USAGE)
            return None
        if not args.admin_key:
            return _err("a node runs on this data dir: pass --admin-key FILE.admin.key so the role grant is signed "
                        "and replicated (trust.json of a running node is not re-read)", EXIT_USAGE)
        admin = _load_key(args.admin_key, "--admin-key")
        out = Path(args.out)
        if out.exists() and not args.force:
            return _err(f"{out} exists; pass --force to overwrite")
        key = SigningKey.generate()
        payload = grant_payload(key.public_raw, [args.role], getattr(args, "comment", "") or "")
        rec = sign_next(client, admin, "trust", grant_slot(key.key_id), payload)
        res = submit(client, [rec])[0]
        key.save(out)  # only once the grant is durable on the node
    except UsageErr as exc:
        return _err(str(exc), EXIT_USAGE)
    except ApiClientError as exc:
        return _err(f"the node refused the grant: {exc}")
    except CrdtError as exc:
        return _err(str(exc))
    _print(args, {"key_id": key.key_id, "role": args.role, "private_key": str(out), "public_key": f"{out}.pub",
                  "granted_by": admin.key_id, "grant_seq": res.get("seq")},
           f"{key.key_id} {args.role}: granted by {admin.key_id} (replicating); private key {out}")
    return EXIT_OK


def cmd_revoke(args: argparse.Namespace) -> int:
    from mesh.daemon.api import ApiClientError

    target = args.id
    try:
        client = node_client(args, required=True)
        signer = _load_key(args.key, "--key")
        now_ms = int(time.time() * 1000)
        if args.through_seq is not None:
            through = args.through_seq
        else:  # the records of the target this node holds now stay; anything later is cut
            through = head(client, target)[0] - 1
        payload = revoke_payload(args.reason, now_ms, max(0, through))
        rec = sign_next(client, signer, "trust", revoke_slot(target), payload, now_ms=now_ms)
        res = submit(client, [rec])[0]
    except UsageErr as exc:
        return _err(str(exc), EXIT_USAGE)
    except ApiClientError as exc:
        return _err(f"the node refused the revocation: {exc}")
    except CrdtError as exc:
        return _err(str(exc), EXIT_USAGE)
    _print(args, {"revoked": target, "through_seq": payload["through_seq"], "at_ms": now_ms, "signer": signer.key_id,
                  "seq": res.get("seq")},
           f"{target} revoked by {signer.key_id} (records after seq {payload['through_seq']} cut; the node id is refused mesh-wide)")
    return EXIT_OK


def cmd_trust_list(args: argparse.Namespace) -> int:
    from mesh.daemon.api import ApiClientError

    try:
        t = node_client(args, required=True).get("/v1/trust")
    except UsageErr as exc:
        return _err(str(exc), EXIT_USAGE)
    except ApiClientError as exc:
        return _err(str(exc))
    if args.json:
        print(json.dumps(t, indent=2, sort_keys=True))
        return EXIT_OK
    rows = [["root", r["key_id"], "admin", "", "mesh file"] for r in t["roots"]]
    rows += [["grant", g["key_id"], ",".join(g["roles"]), "revoked" if g["revoked"] else "", f"by {g['signer']}"] for g in t["grants"]]
    rows += [["revoked", r["id"], "", r["reason"][:40], f"by {r['signer']} through seq {r['through_seq']}"] for r in t["revocations"]]
    rows += [["local", k["key_id"], ",".join(k["roles"]), "", "trust.json"] for k in t["local"]]
    header = ["SOURCE", "ID", "ROLES", "NOTE", "DETAIL"]
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for r in [header] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    return EXIT_OK


def _api_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="data dir of the running node (reads DATA_DIR/api.json)")
    p.add_argument("--api", help="node API address HOST:PORT (with --token)")
    p.add_argument("--token", help="API token (with --api)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the node (default 10)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def register(subparsers: Any) -> None:
    """Add revoke and trust list (keygen's online path is reached from keygen itself)."""
    r = subparsers.add_parser("revoke", help="revoke a key or node id mesh-wide (a signed, replicated revocation)")
    r.add_argument("id", metavar="KEY_ID_OR_NODE_ID")
    r.add_argument("--key", required=True, help="admin key (FILE.admin.key or a granted admin), or an operator key to revoke a node")
    r.add_argument("--reason", required=True)
    r.add_argument("--through-seq", type=int, help="keep the target's records up to this seq (default: what the node holds now)")
    _api_flags(r)
    r.set_defaults(handler=cmd_revoke)
    t = subparsers.add_parser("trust", help="inspect the replicated trust of a running node")
    tsub = t.add_subparsers(dest="trust_command", metavar="SUBCOMMAND", parser_class=type(t))
    tl = tsub.add_parser("list", help="roots, grants, revocations and local trust.json keys")
    _api_flags(tl)
    tl.set_defaults(handler=cmd_trust_list)
