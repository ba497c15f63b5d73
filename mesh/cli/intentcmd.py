"""`wasmatrix keygen | module publish/list/show | deploy | rollback` against a local data dir.

For now these commands open the node's intent store directly (``--data-dir``, default
``$WASMATRIX_DATA_DIR`` or ``./wasmatrix-data``); later they will talk to the daemon.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from crdt.blob import DirBlobStore
from crdt.errors import CrdtError, ValidationError
from crdt.intent import IntentNode
from crdt.keys import SigningKey, load_signing_key
from crdt.schema import Constraints, DeploymentSpec, Preferences
from crdt.store import SqliteStore
from crdt.trust import Role, TrustConfig
from model import Abi, CapabilityRequest, Limits, Manifest, SpecError, Version
from model.manifest import MAX_MODULE_BYTES

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
MAX_WASM = MAX_MODULE_BYTES


# A key file is a PEM block or a 32-byte seed; anything bigger is not a key.
MAX_KEY_BYTES = 64 << 10


class UsageError(Exception):
    """The invocation is wrong (a bad value, or a file named on the command line that cannot be used): exit 2."""


def read_input_file(path: str | Path, what: str, limit: int) -> bytes:
    """Read a file named on the command line, at most ``limit`` bytes; UsageError names it otherwise."""
    p = Path(path)
    label = f"{what} {p}" if what else str(p)
    if not p.exists():
        raise UsageError(f"{label}: no such file")
    if p.is_dir():
        raise UsageError(f"{label}: is a directory, not a file")
    if not p.is_file():
        raise UsageError(f"{label}: not a regular file (a device, pipe or socket)")
    try:
        with open(p, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise UsageError(f"{label}: cannot read: {exc.strerror}") from None
    if len(data) > limit:
        raise UsageError(f"{label}: larger than {limit} bytes")
    return data


def _signing_key(path: str) -> SigningKey:
    """The private key named by --key; every problem with it is a usage error naming the file."""
    if not Path(path).exists():
        raise UsageError(f"--key {path}: key file does not exist (create one with `wasmatrix keygen`)")
    read_input_file(path, "--key", MAX_KEY_BYTES)  # bounded: never hand /dev/zero to the PEM parser
    try:
        return load_signing_key(path)
    except CrdtError as exc:
        raise UsageError(f"--key {path}: {exc}") from None


def _check_module(path: Path, data: bytes) -> None:
    """Refuse what the runtime would refuse, before anything is signed."""
    from wasmtime import Engine

    from runtime.errors import ValidationError as ModuleInvalid
    from runtime.limits import ModuleBounds
    from runtime.validation import check_bounds, check_header, validate_binary

    try:
        check_header(data, MAX_WASM)
        check_bounds(data, ModuleBounds())
        validate_binary(Engine(), data, MAX_WASM)
    except ModuleInvalid as exc:
        raise UsageError(f"{path}: not a valid WebAssembly module for the runtime: {exc}") from None


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir or os.environ.get("WASMATRIX_DATA_DIR", "wasmatrix-data"))


def _quiet_logs() -> None:
    # Command output goes to stdout (tables, --json, reports); logs go to stderr.
    import logging

    from mesh.cli.logs import logs_to_stderr

    logs_to_stderr(logging.WARNING)


def _open(args: argparse.Namespace) -> IntentNode:
    _quiet_logs()
    d = _data_dir(args)
    if _node_running(d):
        raise UsageError(f"a node is running on {d}: its store is the node's; this command talks to it through its API")
    d.mkdir(parents=True, exist_ok=True)
    trust = TrustConfig.load(d / "trust.json")
    key_path = d / "node.key"
    node_key = load_signing_key(key_path) if key_path.exists() else SigningKey.generate()
    if not key_path.exists():
        node_key.save(key_path)
    trust.admit_node("local", node_key.public_raw)
    return IntentNode("local", node_key, trust, random.Random(os.urandom(16)), store=SqliteStore(d))


def _node_running(d: Path) -> bool:
    """True while a daemon holds ``d``'s lock (the store is then the node's alone)."""
    import fcntl

    lock = d / "lock"
    if not lock.exists():
        return False
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # releases our probe lock, if we got it
    return False


def _remote(args: argparse.Namespace) -> Any:
    """An API client when the command must talk to a running node (``--api``, or a live node on
    ``--data-dir``); None to work offline on the data dir."""
    from mesh.daemon.api import ApiClient
    from mesh.datadir import DataDirError, resolve_api

    api, token = getattr(args, "api", None), getattr(args, "token", None)
    if api is not None or token is not None:
        try:
            info = resolve_api(None, api, token)
        except DataDirError as exc:
            raise UsageError(str(exc)) from None
        return ApiClient(info.addr, info.token)
    d = _data_dir(args)
    if not _node_running(d):
        return None
    try:
        info = resolve_api(d, None, None)
    except DataDirError as exc:
        raise UsageError(f"a node is running on {d} but its API is not published yet ({exc}); retry in a moment") from None
    return ApiClient(info.addr, info.token)


def _remote_write(client: Any, key: SigningKey, op: str, op_args: dict[str, Any]) -> dict[str, Any]:
    """Have the node prepare the record, sign it here (the key never leaves), submit it; retry a stale one."""
    import base64

    import msgpack

    from crdt.logrecord import LogRecord
    from mesh.daemon.api import ApiClientError

    for _ in range(5):
        prep = client.post("/v1/intent/prepare", {"op": op, "signer": key.key_id, "args": op_args})
        kind, slot, payload, tombstone, seq, prev, wall_ms = msgpack.unpackb(
            base64.b64decode(prep["prepared"]), raw=False, strict_map_key=True
        )
        rec = LogRecord.create(key, seq, prev, kind, slot, payload, wall_ms, tombstone=tombstone)
        try:
            return client.post("/v1/intent/records", {"records": [base64.b64encode(rec.encode()).decode()]})["acks"][0]
        except ApiClientError as exc:
            if exc.status != 412:  # 412: another write of this key took the position: prepare again
                raise
    raise CrdtError(f"key {key.key_id} is busy writing elsewhere; try again")


def _b64_msgpack(obj: Any) -> str:
    import base64

    import msgpack

    return base64.b64encode(msgpack.packb(obj, use_bin_type=True)).decode()


def _out(args: argparse.Namespace, obj: Any, rows: list[list[str]] | None = None, header: list[str] | None = None) -> None:
    if getattr(args, "json", False):
        print(json.dumps(obj, indent=2, sort_keys=True, default=str))
        return
    if rows is None:
        for k, v in obj.items():
            print(f"{k:<14} {v}")
        return
    table = [header or []] + rows
    widths = [max(len(str(r[i])) for r in table) for i in range(len(table[0]))]
    for r in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def _err(msg: str, code: int = EXIT_FAILURE) -> int:
    print(f"wasmatrix: error: {msg}", file=sys.stderr)
    return code


from mesh.daemon.api import ApiClientError  # noqa: E402  (light: http.client, h11, trio)


def _guard(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except UsageError as exc:
            return _err(str(exc), EXIT_USAGE)
        except SpecError as exc:  # the model's, and crdt's ValidationError/SemverError (subclasses)
            return _err(str(exc), EXIT_USAGE)
        except CrdtError as exc:
            return _err(str(exc))
        except ApiClientError as exc:
            return _err(str(exc), EXIT_USAGE if exc.status == 400 else EXIT_FAILURE)
        except OSError as exc:
            return _err(f"{exc.strerror}: {exc.filename}")

    return run


@_guard
def cmd_keygen(args: argparse.Namespace) -> int:
    from mesh.cli.trustcmd import keygen_online

    online = keygen_online(args)  # a node runs on --data-dir, or --api: a replicated, admin-signed grant
    if online is not None:
        return online
    out = Path(args.out)
    if out.exists() and not args.force:
        return _err(f"{out} exists; pass --force to overwrite")
    key = SigningKey.generate()
    key.save(out)
    d = _data_dir(args)
    d.mkdir(parents=True, exist_ok=True)
    trust = TrustConfig.load(d / "trust.json")
    trust.add_key(key.public_raw, [args.role])
    trust.save(d / "trust.json")
    _out(args, {"key_id": key.key_id, "role": args.role, "private_key": str(out), "public_key": f"{out}.pub", "trusted_in": str(d / "trust.json")})
    return EXIT_OK


@_guard
def cmd_publish(args: argparse.Namespace) -> int:
    Version.parse(args.version)
    key = _signing_key(args.key)
    path = Path(args.file)
    # Flags first, then the file: a bad --capability is named even when the module is bad too.
    capabilities = CapabilityRequest.from_strings(args.capability or ())
    limits = Limits.from_strings(args.limit or ())
    data = read_input_file(path, "", MAX_WASM)
    _check_module(path, data)  # what the runtime would refuse is never signed
    # The one manifest: what the registry stores and what the runtime admits, validated here first.
    m = Manifest.for_module(
        args.name, args.version, data,
        capabilities=capabilities,
        limits=limits, abi=Abi(args.abi),
        created_at=time.time(), description=args.description or "",
    )
    sha = m.sha256
    remote = _remote(args)
    if remote is not None:
        remote.request("POST", f"/v1/blobs?sha256={sha}", raw=data)
        ack = _remote_write(remote, key, "publish", {"manifest": _b64_msgpack(m.to_payload())})
        signer, seq = ack["signer"], ack["seq"]
    else:
        node = _open(args)
        DirBlobStore(_data_dir(args) / "blobs").put(sha, data)
        a = node.publish(m, key, time.time())
        signer, seq = a.signer, a.seq
    _out(args, {"module": args.name, "version": args.version, "sha256": sha, "size": len(data), "publisher": signer, "seq": seq})
    return EXIT_OK


@_guard
def cmd_list(args: argparse.Namespace) -> int:
    from crdt.views import modules_view

    remote = _remote(args)
    objs = remote.get("/v1/modules") if remote is not None else modules_view(_open(args).doc)
    rows = [[o["name"], o["live"][-1] if o["live"] else "-", str(len(o["versions"])),
             str(len(o["versions"]) - len(o["live"]))] for o in objs]
    _out(args, objs, rows, ["MODULE", "LATEST", "VERSIONS", "REMOVED"])
    return EXIT_OK


@_guard
def cmd_show(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    from crdt.views import module_view

    remote = _remote(args)
    objs = remote.get(f"/v1/module?name={quote(args.name)}") if remote is not None else module_view(_open(args).doc, args.name)
    if not objs:
        return _err(f"no module named {args.name!r} (see `wasmatrix module list`)")
    rows = [[o["version"], o["sha256"][:16], str(o["size"]), o["publisher"], "removed" if o["removed"] else "live"] for o in objs]
    _out(args, objs, rows, ["VERSION", "SHA256", "SIZE", "PUBLISHER", "STATE"])
    return EXIT_OK


def _kv_pairs(items: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise ValidationError(f"{what} {item!r} must be KEY=VALUE")
        out[k] = v
    return out


@_guard
def cmd_deploy(args: argparse.Namespace) -> int:
    key = _signing_key(args.key)
    near = None
    if args.near_location:
        try:
            lat, lon = (float(x) for x in args.near_location.split(","))
        except ValueError:
            return _err("--near-location must be LAT,LON", EXIT_USAGE)
        near = (lat, lon)
    spec = DeploymentSpec(
        args.name, args.module, args.version, args.replicas,
        Constraints(tuple(args.arch or ()), args.min_memory_mb, _kv_pairs(args.label, "--label"), tuple(args.hardware or ())),
        Preferences(near, args.near_label, args.near_node, args.spread),
        CapabilityRequest.from_strings(args.capability or ()),
        Limits.from_strings(args.limit) if args.limit else None,
        tenant=args.tenant,
    )
    from urllib.parse import quote

    from crdt.views import deployment_view

    remote = _remote(args)
    if remote is not None:
        signer = _remote_write(remote, key, "deploy", {"spec": _b64_msgpack(spec.to_payload())})["signer"]
        view = remote.get(f"/v1/deployment?name={quote(args.name)}")
    else:
        node = _open(args)
        signer = node.set_deployment(spec, key, time.time()).signer
        view = deployment_view(node.doc, args.name)
    _out(args, {**view, "module": spec.module, "version": spec.version, "replicas": spec.replicas, "tenant": spec.tenant,
                "signer": signer})
    return EXIT_OK


@_guard
def cmd_rollback(args: argparse.Namespace) -> int:
    if args.to:
        Version.parse(args.to)
    key = _signing_key(args.key)
    from urllib.parse import quote

    from crdt.views import deployment_view

    remote = _remote(args)
    if remote is not None:
        before = remote.get(f"/v1/deployment?name={quote(args.deployment)}")["active_version"]
        _remote_write(remote, key, "rollback", {"name": args.deployment, "to": args.to})
        view = remote.get(f"/v1/deployment?name={quote(args.deployment)}")
    else:
        node = _open(args)
        before = node.deployment(args.deployment).active_version
        node.rollback(args.deployment, key, time.time(), to_version=args.to)
        view = deployment_view(node.doc, args.deployment)
    _out(args, {"deployment": view["deployment"], "from_version": before, "active_version": view["active_version"],
                "revision": view["revision"]})
    return EXIT_OK


def target_flags(p: argparse.ArgumentParser) -> None:
    """--data-dir / --api / --token / --json: where an intent command works (a running node or a data dir)."""
    p.add_argument("--data-dir", help="node data directory (default $WASMATRIX_DATA_DIR or ./wasmatrix-data); "
                   "when a node runs on it, the command talks to that node")
    p.add_argument("--api", help="a running node's API HOST:PORT (with --token) instead of --data-dir")
    p.add_argument("--token", help="API token (with --api)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def register(subparsers: Any) -> None:
    """Add keygen, module, deploy and rollback subcommands."""
    common = target_flags

    p = subparsers.add_parser("keygen", help="generate an Ed25519 key and trust it with a role")
    p.add_argument("--role", required=True, choices=[r.value for r in Role if r is not Role.NODE])
    p.add_argument("--out", required=True, help="private key file (the public key goes to FILE.pub)")
    p.add_argument("--force", action="store_true")
    p.add_argument("--admin-key", help="mesh admin key (FILE.admin.key): sign a replicated role grant through the running node")
    p.add_argument("--comment", default="", help="note stored with the grant")
    common(p)
    p.set_defaults(handler=cmd_keygen)

    mod = subparsers.add_parser("module", help="publish and inspect modules in the registry")
    msub = mod.add_subparsers(dest="module_command", metavar="SUBCOMMAND", parser_class=type(mod))
    pp = msub.add_parser("publish", help="sign and publish a .wasm module version")
    pp.add_argument("file")
    pp.add_argument("--name", required=True)
    pp.add_argument("--version", required=True)
    pp.add_argument("--key", required=True, help="publisher private key file")
    pp.add_argument("--description")
    pp.add_argument("--capability", action="append", metavar="CAP",
                    help="capability requested (repeatable): env:NAME, dir:/path[:rw], kv:NAMESPACE, http:HOST, log; "
                         "clocks and random are requested by default, no-clocks / no-random opt out")
    pp.add_argument("--limit", action="append", metavar="NAME=N",
                    help="resource limit (repeatable): memory_bytes, table_elements, max_concurrency, timeout_ms, fuel")
    pp.add_argument("--abi", choices=[a.value for a in Abi], default=Abi.WASI_COMMAND.value,
                    help="handler ABI (default wasi-command; see docs/ABI.md)")
    common(pp)
    pp.set_defaults(handler=cmd_publish)
    pl = msub.add_parser("list", help="list modules")
    common(pl)
    pl.set_defaults(handler=cmd_list)
    ps = msub.add_parser("show", help="show every version of a module")
    ps.add_argument("name")
    common(ps)
    ps.set_defaults(handler=cmd_show)
    mod.set_defaults(handler=lambda a: (mod.print_help(sys.stderr), EXIT_USAGE)[1])

    d = subparsers.add_parser("deploy", help="create or update a deployment")
    d.add_argument("name")
    d.add_argument("--module", required=True)
    d.add_argument("--version", required=True, help="exact version or semver range (^1.2.0, ~1.2.0, >=1 <2, *)")
    d.add_argument("--replicas", type=int, default=1, help="0 = on demand")
    d.add_argument("--key", required=True, help="operator private key file")
    d.add_argument("--arch", action="append")
    d.add_argument("--min-memory-mb", type=int, default=0)
    d.add_argument("--label", action="append", help="KEY=VALUE node label required (repeatable)")
    d.add_argument("--hardware", action="append")
    d.add_argument("--near-location")
    d.add_argument("--near-label")
    d.add_argument("--near-node")
    d.add_argument("--spread", help="fault-domain level to spread across, e.g. site")
    d.add_argument("--capability", action="append", metavar="CAP",
                   help="capability the deployment may use (repeatable; spelled as for module publish: "
                        "clocks and random are granted unless no-clocks / no-random is given)")
    d.add_argument("--limit", action="append", metavar="NAME=N",
                   help="resource ceiling below the manifest's limits (repeatable; as for module publish)")
    d.add_argument("--tenant", default="default",
                   help="tenant whose quotas the deployment's calls count against (default: default; see `wasmatrix tenant`)")
    common(d)
    d.set_defaults(handler=cmd_deploy)

    r = subparsers.add_parser("rollback", help="point a deployment back at an earlier version")
    r.add_argument("deployment")
    r.add_argument("--to", help="version to roll back to (default: the previous one)")
    r.add_argument("--key", required=True, help="operator private key file")
    common(r)
    r.set_defaults(handler=cmd_rollback)
