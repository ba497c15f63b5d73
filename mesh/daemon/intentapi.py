"""Control-API routes for the replicated intent: registry and deployments against a running node.

Private keys never leave the CLI. A write is two calls:

1. ``POST /v1/intent/prepare {"op", "signer", "args"}``: the node runs the very write method a
   local write would (role checks, "already published", version-range resolution, the signer's
   next sequence number, chain link and wall time) up to the signature and answers the record's
   fields (``prepared``: base64 msgpack ``[kind, key, payload, tombstone, seq, prev, wall_ms]``).
2. The CLI signs them with ``LogRecord.create`` and sends ``POST /v1/intent/records
   {"records": [base64]}``. The node verifies the signature against its trust, refuses a record
   that is not the signer's next position here (412: prepare again; a second record at one
   position would fork the signer's chain and freeze the key), stores it, answers **after** the
   write is durable, and pushes it to peers.

Module bytes go first with ``POST /v1/blobs?sha256=HEX`` (raw body, checked against the hash).
Reads: ``GET /v1/modules``, ``GET /v1/module?name=N``, ``GET /v1/deployment?name=N``,
``GET /v1/routes`` (the HTTP routes in match order). Route writes are the ops ``route`` and ``route_rm``.
Tenant quotas are written the same way (ops ``tenant``, ``tenant_rm``); ``GET /v1/tenants``
(mesh/daemon/quotas.py) lists them with this node's view of their usage.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import msgpack
import trio

from crdt.errors import Conflict, CrdtError, NotFound, PermissionDenied, ValidationError
from crdt.intent import PendingWrite
from crdt.logrecord import LogRecord
from crdt.records import KINDS
from crdt.signedlog import LogError, StoreRecovering
from crdt.schema import DeploymentSpec, RouteSpec, TenantQuota, manifest_from_payload
from crdt.views import deployment_view, module_view, modules_view
from mesh.daemon.api import ApiError, Request, json_answer
from model import SpecError
from model.manifest import MAX_MODULE_BYTES

if TYPE_CHECKING:
    from mesh.daemon.node import Daemon

MAX_RECORDS = 16
_SHA = re.compile(r"^[0-9a-f]{64}$")
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")
DURABLE_TIMEOUT = 30.0


def crdt_status(exc: CrdtError | SpecError) -> int:
    """The HTTP status of a refused intent operation."""
    if isinstance(exc, StoreRecovering):
        return 503  # the store is catching up with peers: retry in a few seconds
    if isinstance(exc, PermissionDenied):
        return 403
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, (ValidationError, SpecError)):
        return 400
    return 422


def pack_prepared(p: Any) -> str:
    return base64.b64encode(msgpack.packb([p.kind, p.key, p.payload, p.tombstone, p.seq, p.prev, p.wall_ms], use_bin_type=True)).decode()


class IntentApi:
    """The routes; ``daemon`` gives the core, the blob store and the durability wait."""

    def __init__(self, daemon: "Daemon") -> None:
        self.d = daemon

    def routes(self) -> dict[tuple[str, str], Any]:
        return {
            ("POST", "/v1/intent/prepare"): self.prepare,
            ("POST", "/v1/intent/records"): self.records,
            ("POST", "/v1/blobs"): self.blob,
            ("GET", "/v1/modules"): self.modules,
            ("GET", "/v1/module"): self.module,
            ("GET", "/v1/deployment"): self.deployment,
            ("GET", "/v1/intent/visible"): self.visible,
            ("GET", "/v1/intent/head"): self.head,
            ("GET", "/v1/trust"): self.trust,
            ("GET", "/v1/routes"): self.routes_list,
        }

    async def head(self, req: Request) -> tuple[int, str, bytes]:
        """Where ``signer``'s next record goes (``seq``, ``prev``) and the minimum wall time for ``kind:key``."""
        q = parse_qs(req.query, keep_blank_values=True)
        signer = (q.get("signer") or [""])[0]
        kind = (q.get("kind") or [""])[0]
        key = (q.get("key") or [""])[0]
        if not _KEY_ID.match(signer):
            raise ApiError(400, "signer must be a key id (16 hex digits)")
        if kind and kind not in KINDS:
            raise ApiError(400, f"unknown kind {kind!r:.40} (kinds: {', '.join(KINDS)})")
        if bool(kind) != bool(key) or len(key) > 1024:
            raise ApiError(400, "give kind and key together (or neither, for the signer's chain head only)")
        try:
            seq, prev, wall_ms = self.intent.head(signer, kind or "registry", key or "-", trio.current_time(), time.time())
        except LogError as exc:
            raise ApiError(crdt_status(exc) if isinstance(exc, StoreRecovering) else 409, str(exc)) from None
        return json_answer({"seq": seq, "prev": prev.hex(), "wall_ms": wall_ms, "signer": signer})

    async def trust(self, req: Request) -> tuple[int, str, bytes]:
        """The effective replicated trust (roots, grants, revocations) and this node's local trust.json keys."""
        adapter = self.intent.doc.adapter
        out = adapter.to_json()
        out["local"] = self.d.trust.to_json()["keys"]
        out["insecure"] = not adapter.roots
        return json_answer(out)

    @property
    def intent(self) -> Any:
        return self.d.core.intent

    async def prepare(self, req: Request) -> tuple[int, str, bytes]:
        body = req.json()
        op, signer, args = body.get("op"), body.get("signer"), body.get("args") or {}
        if not isinstance(signer, str) or not _KEY_ID.match(signer):
            raise ApiError(400, "signer must be a key id (16 hex digits)")
        if not isinstance(args, dict):
            raise ApiError(400, "args must be an object")
        node, now, wall = self.intent, trio.current_time(), time.time()
        try:
            if op == "publish":
                m = manifest_from_payload(_unb64_msgpack(args.get("manifest"), "manifest"))
                write = lambda k: node.publish(m, k, now, wall=wall)  # noqa: E731
            elif op == "deploy":
                spec = DeploymentSpec.from_payload(_unb64_msgpack(args.get("spec"), "spec"))
                write = lambda k: node.set_deployment(spec, k, now, wall=wall)  # noqa: E731
            elif op == "rollback":
                name, to = _text(args.get("name"), "name"), args.get("to")
                if to is not None:
                    to = _text(to, "to")
                write = lambda k: node.rollback(name, k, now, to_version=to, wall=wall)  # noqa: E731
            elif op == "remove":
                name, version = _text(args.get("name"), "name"), _text(args.get("version"), "version")
                reason = str(args.get("reason") or "")[:200]
                write = lambda k: node.remove_version(name, version, k, now, reason, wall=wall)  # noqa: E731
            elif op in ("subscribe", "unsubscribe"):  # events (mesh/events/api.py)
                from mesh.events.api import prepare_write

                write = prepare_write(node, op, args, now, wall)
            elif op == "route":
                route = RouteSpec.from_payload(_unb64_msgpack(args.get("route"), "route"))
                write = lambda k: node.set_route(route, k, now)  # noqa: E731
            elif op == "route_rm":
                host, path, method = _text(args.get("host"), "host"), _text(args.get("path"), "path"), _text(args.get("method"), "method")
                write = lambda k: node.delete_route(host, path, method, k, now)  # noqa: E731
            elif op == "tenant":
                quota = TenantQuota.from_payload(args.get("quota"))
                write = lambda k: node.set_tenant(quota, k, now, wall=wall)  # noqa: E731
            elif op == "tenant_rm":
                tname = _text(args.get("name"), "name")
                write = lambda k: node.delete_tenant(tname, k, now, wall=wall)  # noqa: E731
            else:
                raise ApiError(400, "op must be publish, deploy, rollback, remove, subscribe, unsubscribe, route, route_rm, "
                                    "tenant or tenant_rm")
            prepared = node.prepare(signer, write)
        except (CrdtError, SpecError) as exc:
            raise ApiError(crdt_status(exc), str(exc)) from None
        return json_answer({"prepared": pack_prepared(prepared)})

    async def records(self, req: Request) -> tuple[int, str, bytes]:
        body = req.json()
        recs = body.get("records")
        if not isinstance(recs, list) or not 1 <= len(recs) <= MAX_RECORDS:
            raise ApiError(400, f"records must be a list of 1 to {MAX_RECORDS} base64 records")
        acks = []
        for item in recs:
            data = _unb64(item, "record")
            if not self.intent.doc.adapter.roots and _kind_of(data) == "trust":
                raise ApiError(400, "this mesh has no admin keys (an --insecure node, no mesh file): trust records cannot be "
                               "written here; use a mesh file (`wasmatrix mesh init`) or offline `keygen --data-dir` on a stopped node")
            try:
                res = self.intent.submit(data, trio.current_time(), wall=time.time())
            except Conflict as exc:
                raise ApiError(412, str(exc)) from None
            except (CrdtError, SpecError) as exc:
                raise ApiError(crdt_status(exc), str(exc)) from None
            self.d.audit.append("intent_write", {"kind": res.kind, "key": res.key[:120], "signer": res.signer, "seq": res.seq}, now_wall=time.time())
            self.d.emit([])  # persist kick
            if isinstance(res, PendingWrite):
                await self.d.wait_durable(res.token, DURABLE_TIMEOUT)
            acks.append({"kind": res.kind, "key": res.key, "signer": res.signer, "seq": res.seq})
        return json_answer({"acks": acks})

    async def blob(self, req: Request) -> tuple[int, str, bytes]:
        sha = (parse_qs(req.query).get("sha256") or [""])[0]
        if not _SHA.match(sha):
            raise ApiError(400, "sha256 must be 64 lowercase hex digits")
        if len(req.body) > MAX_MODULE_BYTES:
            raise ApiError(413, f"module larger than {MAX_MODULE_BYTES} bytes")
        if hashlib.sha256(req.body).hexdigest() != sha:
            raise ApiError(400, "body does not match its sha256")
        await trio.to_thread.run_sync(self.d.blob_store.put, sha, req.body)
        return json_answer({"sha256": sha, "size": len(req.body)})

    async def visible(self, req: Request) -> tuple[int, str, bytes]:
        """When record (signer, seq) became visible on this node (``time.monotonic()``; null if not seen)."""
        q = parse_qs(req.query)
        signer, seq = (q.get("signer") or [""])[0], (q.get("seq") or [""])[0]
        if not _KEY_ID.match(signer) or not seq.isdigit() or len(seq) > 16:
            raise ApiError(400, "signer (key id) and seq (number) are required")
        return json_answer({"at": self.d.visible_at.get((signer, int(seq)))})

    async def routes_list(self, req: Request) -> tuple[int, str, bytes]:
        """The replicated routes in match order (priority, then specificity)."""
        return json_answer([r.to_payload() | {"format": r.format} for r in self.intent.doc.routes()])

    async def modules(self, req: Request) -> tuple[int, str, bytes]:
        return json_answer(modules_view(self.intent.doc))

    async def module(self, req: Request) -> tuple[int, str, bytes]:
        name = _text((parse_qs(req.query).get("name") or [""])[0], "name")
        return json_answer(module_view(self.intent.doc, name))

    async def deployment(self, req: Request) -> tuple[int, str, bytes]:
        name = _text((parse_qs(req.query).get("name") or [""])[0], "name")
        try:
            return json_answer(deployment_view(self.intent.doc, name))
        except NotFound as exc:
            raise ApiError(404, str(exc)) from None


def _kind_of(data: bytes) -> str:
    try:
        return LogRecord.decode(data).kind
    except ValidationError:
        return ""


def _text(x: Any, what: str) -> str:
    if not isinstance(x, str) or not x or len(x) > 200:
        raise ApiError(400, f"{what} must be a non-empty string of at most 200 characters")
    return x


def _unb64(x: Any, what: str) -> bytes:
    if not isinstance(x, str) or len(x) > 200_000:
        raise ApiError(400, f"{what} must be base64 text")
    try:
        return base64.b64decode(x, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{what} is not valid base64") from None


def _unb64_msgpack(x: Any, what: str) -> Any:
    try:
        return msgpack.unpackb(_unb64(x, what), raw=False, strict_map_key=True, max_ext_len=0)
    except ApiError:
        raise
    except Exception:
        raise ApiError(400, f"{what} is not msgpack") from None
