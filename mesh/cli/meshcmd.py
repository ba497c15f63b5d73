"""`wasmatrix mesh init | rotate | show` and `wasmatrix audit verify`.

These commands work on files only (the mesh file, a data dir's audit log); they never need a running
node. Secrets are never printed: ``mesh show`` prints a fingerprint of each secret instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from mesh import meshfile
from mesh.audit import AuditError, safe_text, verify
from mesh.datadir import AUDIT_FILE
from mesh.meshfile import MeshFile, MeshFileError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _err(msg: str, code: int = EXIT_FAILURE) -> int:
    print(f"wasmatrix: error: {msg}", file=sys.stderr)
    return code


def _print(args: argparse.Namespace, obj: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(obj, indent=2, sort_keys=True))
        return
    for k, v in obj.items():
        if isinstance(v, list):
            v = ", ".join(str(x) for x in v) or "-"
        print(f"{k:<28} {'-' if v is None else v}")


def _iso(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _describe(mesh: MeshFile, now_wall: float) -> dict[str, Any]:
    prev = mesh.previous
    window_open = mesh.window_open(now_wall)
    return {
        "mesh_id": mesh.mesh_id,
        "created": _iso(mesh.created),
        "admin_key_ids": [a.key_id for a in mesh.admins],
        "secret_fingerprint": meshfile.secret_fingerprint(mesh.secret),
        "previous_secret_fingerprint": meshfile.secret_fingerprint(prev.secret) if prev else None,
        "previous_accept_until": _iso(prev.accept_until) if prev else None,
        "rotation_window_open": window_open,
    }


def cmd_init(args: argparse.Namespace) -> int:
    """Create a mesh file and its first admin key."""
    try:
        mesh, key_path = meshfile.init_mesh(args.out, now_wall=time.time(), force=args.force)
    except MeshFileError as exc:
        return _err(str(exc))
    out = _describe(mesh, time.time())
    out["mesh_file"] = str(args.out)
    out["admin_key_file"] = str(key_path)
    _print(args, out)
    if not args.json:
        print(f"\nCopy {args.out} to every node (mode 0600) and start them with --mesh-secret; "
              f"keep {key_path} offline: it is the mesh's admin key.", file=sys.stderr)
    return EXIT_OK


def cmd_rotate(args: argparse.Namespace) -> int:
    """Replace the mesh secret, keeping the old one accepted for the grace period."""
    if not Path(args.mesh_secret).exists():
        return _err(f"mesh file {args.mesh_secret} does not exist", EXIT_USAGE)
    if not 0 < args.grace <= meshfile.MAX_GRACE_S:
        return _err(f"--grace must be between 1 and {meshfile.MAX_GRACE_S} seconds", EXIT_USAGE)
    now = time.time()
    try:
        mesh = meshfile.rotate(args.mesh_secret, now_wall=now, grace_s=args.grace, force=args.force)
    except MeshFileError as exc:
        return _err(str(exc))
    _print(args, _describe(mesh, now))
    if not args.json:
        assert mesh.previous is not None
        print(f"\nCopy {args.mesh_secret} to every node before {_iso(mesh.previous.accept_until)}; "
              "after that the old secret is refused.", file=sys.stderr)
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    """Describe a mesh file without printing any secret."""
    if not Path(args.mesh_secret).exists():
        return _err(f"mesh file {args.mesh_secret} does not exist", EXIT_USAGE)
    try:
        mesh = meshfile.load(args.mesh_secret)
    except MeshFileError as exc:
        return _err(str(exc))
    _print(args, _describe(mesh, time.time()))
    return EXIT_OK


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Verify a data dir's audit log (or an audit log file given directly)."""
    target = Path(args.data_dir)
    if not target.exists():
        return _err(f"{target} does not exist", EXIT_USAGE)
    path = target / AUDIT_FILE if target.is_dir() else target
    if not path.exists():
        result_obj: dict[str, Any] = {"ok": True, "entries": 0, "path": str(path), "note": "no audit log yet"}
        if args.json:
            print(json.dumps(result_obj, indent=2, sort_keys=True))
        else:
            print(f"OK 0 entries (no audit log at {safe_text(str(path))})")
        return EXIT_OK
    try:
        r = verify(path)
    except AuditError as exc:
        return _err(str(exc))
    listed = _verified_entries(path, r.entries) if getattr(args, "list", False) else None
    if args.json:
        obj = {
            "ok": r.ok, "entries": r.entries, "first_bad_line": r.first_bad_line, "reason": r.reason,
            "kind": r.kind, "head_seq": r.head_seq, "head_hash": r.head_hash, "path": str(path),
        }
        if listed is not None:
            obj["listed"] = listed
        print(json.dumps(obj, indent=2, sort_keys=True))
        return EXIT_OK if r.ok else EXIT_FAILURE
    if r.ok:
        print(f"OK {r.entries} entries (head seq {r.head_seq} hash {r.head_hash})")
    else:
        print(f"BROKEN line {r.first_bad_line}: {safe_text(r.reason, 300)} [{r.kind}]")
        print(f"{r.entries} entries verified before it (last good seq {r.head_seq} hash {r.head_hash})")
    for e in listed or []:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e["time"]))
        fields = safe_text(json.dumps(e["fields"], sort_keys=True, separators=(",", ":")), 200)
        print(f"{e['seq']:>6} {when} {safe_text(e['event'], 64)} {fields}")
    return EXIT_OK if r.ok else EXIT_FAILURE


def _verified_entries(path: Path, n: int) -> list[dict[str, Any]]:
    """The first ``n`` entries of the log (the ones ``verify`` found intact), without their hashes."""
    out: list[dict[str, Any]] = []
    with open(path, "rb") as f:
        for raw in f:
            if len(out) >= n:
                break
            e = json.loads(raw)
            out.append({k: e[k] for k in ("seq", "time", "event", "fields")})
    return out


def register(subparsers: Any) -> None:
    """Add the mesh (init, rotate, show) and audit (verify) subcommands."""
    m = subparsers.add_parser("mesh", help="create and rotate the mesh secret file")
    msub = m.add_subparsers(dest="mesh_command", metavar="SUBCOMMAND", parser_class=type(m))
    pi = msub.add_parser("init", help="create a mesh file and its first admin key (FILE.admin.key)")
    pi.add_argument("--out", required=True, help="mesh file to write (mode 0600)")
    pi.add_argument("--force", action="store_true", help="overwrite an existing mesh file and admin key")
    pi.add_argument("--json", action="store_true", help="machine-readable output")
    pi.set_defaults(handler=cmd_init)
    pr = msub.add_parser("rotate", help="new mesh secret; the old one stays accepted for --grace seconds")
    pr.add_argument("--mesh-secret", required=True, help="mesh file to rotate in place")
    pr.add_argument("--grace", type=int, default=meshfile.DEFAULT_GRACE_S,
                    help=f"seconds the old secret stays accepted (default {meshfile.DEFAULT_GRACE_S})")
    pr.add_argument("--force", action="store_true", help="rotate even while a previous window is still open")
    pr.add_argument("--json", action="store_true", help="machine-readable output")
    pr.set_defaults(handler=cmd_rotate)
    ps = msub.add_parser("show", help="describe a mesh file (never prints the secret)")
    ps.add_argument("--mesh-secret", required=True, help="mesh file")
    ps.add_argument("--json", action="store_true", help="machine-readable output")
    ps.set_defaults(handler=cmd_show)
    m.set_defaults(handler=lambda a: (m.print_help(sys.stderr), EXIT_USAGE)[1])

    a = subparsers.add_parser("audit", help="check the hash-chained audit log")
    asub = a.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", parser_class=type(a))
    av = asub.add_parser("verify", help="verify DATA_DIR/audit.log: OK, or the first broken entry (exit 1)")
    av.add_argument("data_dir", metavar="DATA_DIR", help="node data dir (or an audit log file)")
    av.add_argument("--json", action="store_true", help="machine-readable output")
    av.add_argument("--list", action="store_true", help="also list the verified entries (seq, time, event, fields)")
    av.set_defaults(handler=cmd_audit_verify)
    a.set_defaults(handler=lambda a_: (a.print_help(sys.stderr), EXIT_USAGE)[1])
