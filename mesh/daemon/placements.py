"""Placements on a running node: where replicas run, why the scheduler chose them, and whether nodes agree.

* ``GET /v1/placements[?deployment=N&explain=1]``: per deployment the target the workload lifecycle
  placed at its last evaluation (``Workloads.last``, a :class:`mesh.lifecycle.Assignment`: the
  same view, spec and incumbents it gave ``scheduler.place``), the replicas the placement
  document says run (node, zone, version, state, index) and, with ``explain``, every candidate's
  filter verdict or score over those same inputs (``scheduler.explain``).
* ``GET /v1/placements/check``: the agreement digests every member gossips in its metadata
  (``NodeMeta.agreement``, mesh/agreement.py) grouped into agreeing sets, with why the others differ.

The digests: the lifecycle calls ``Daemon.set_placement_digest`` after every evaluation
(``mesh.lifecycle.digests``). A changed value reaches the node's metadata at most once per
:data:`MIN_DIGEST_INTERVAL` (each change is an ``Alive`` gossiped to every member); a value that
arrives sooner is applied by :meth:`PlacementService.loop` when the interval is over.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import trio

from crdt.errors import NotFound
from mesh import agreement
from mesh.daemon.api import ApiError, Request, json_answer
from mesh.errors import ConfigError
from mesh.membership.state import MemberState
from scheduler import explain

if TYPE_CHECKING:
    from mesh.daemon.node import Daemon

MIN_DIGEST_INTERVAL = 1.0  # seconds between two metadata updates carrying new digests


class PlacementService:
    def __init__(self, daemon: "Daemon") -> None:
        self.d = daemon
        self.wanted = ""  # the agreement field to publish
        self.last_update = -1e9
        self._pending = trio.Event()  # set when ``wanted`` changed
        self.too_large = 0  # digests refused because the metadata would exceed its bound
        self._refused = ""

    def routes(self) -> dict[tuple[str, str], Any]:
        return {("GET", "/v1/placements"): self.api_placements, ("GET", "/v1/placements/check"): self.api_check}

    # ------------------------------------------------------------------ digests

    def set_digest(self, view: str, placement: str, specs: str = "") -> None:
        """Publish new digests (rate-limited: see the module docstring)."""
        wanted = agreement.encode(view, specs or "0", placement)
        if wanted != self.wanted:
            self.wanted = wanted
            self._pending.set()
        self._apply(trio.current_time())

    def _apply(self, now: float) -> None:
        core = self.d.core
        if self.d._leaving or self.d._stopping:
            return  # a metadata update now would gossip an Alive with a higher incarnation over our Left
        if not self.wanted or core.meta.agreement == self.wanted or now - self.last_update < MIN_DIGEST_INTERVAL:
            return
        from mesh.daemon.node import _meta_fields

        self.last_update = now
        try:
            meta = type(core.meta)(**{**_meta_fields(core.meta), "agreement": self.wanted})
        except ConfigError as exc:
            # The digests do not fit next to this node's labels (metadata is bounded): others see
            # "no digest yet" for this node; said once per value, counted every time.
            self.too_large += 1
            if self.too_large == 1 or self.wanted != self._refused:
                self.d.log.warning("placement_digest_not_gossiped", error=str(exc))
            self._refused = self.wanted
            return
        core.update_meta(meta, now)
        self.d.emit([])

    async def loop(self) -> None:
        """Apply a value the rate limit held back once the interval is over."""
        while True:
            await self._pending.wait()
            self._pending = trio.Event()
            await trio.sleep_until(self.last_update + MIN_DIGEST_INTERVAL)
            self._apply(trio.current_time())

    # ------------------------------------------------------------------ API

    def _names(self) -> dict[str, tuple[str, str, str]]:
        """node id -> (display name, zone, member status) from membership."""
        return {n: (m.meta.name, m.meta.fault_domain, m.state.name.lower()) for n, m in self.d.core.swim.members.items()}

    async def api_placements(self, req: Request) -> tuple[int, str, bytes]:
        q = parse_qs(req.query)
        name = (q.get("deployment") or [None])[0]
        want_explain = (q.get("explain") or ["0"])[0] in ("1", "true", "yes")
        doc = self.d.core.intent.doc  # type: ignore[union-attr]
        if name is not None:
            try:
                deps = [doc.deployment(name)]
            except NotFound as exc:
                raise ApiError(404, str(exc)) from None
        else:
            deps = sorted(doc.deployments(), key=lambda d: d.name)
        last = self.d.workloads.last  # None until the first evaluation (the loop runs one at start)
        names = self._names()
        entries = doc.placements()
        out = []
        for dep in deps:
            target: tuple[str, ...] = ()
            if last is not None and dep.name in last.placements:
                target = last.placements[dep.name][0]
            running = []
            for node, entry in sorted(entries.items()):
                for r in entry.replicas:
                    if r.deployment == dep.name:
                        nm, zone, status = names.get(node, ("", "", "unknown"))
                        running.append({"node": node, "name": nm, "zone": zone, "member": status,
                                        "version": r.version, "state": r.state, "index": r.index})
            running.sort(key=lambda r: (r["index"], r["node"]))
            item: dict[str, Any] = {
                "deployment": dep.name, "replicas": dep.spec.replicas, "active_version": dep.active_version,
                "target": list(target), "shortfall": max(0, dep.spec.replicas - len(target)), "running": running,
                "error": (last.errors.get(dep.name) or None) if last is not None else None,
            }
            spec = last.specs.get(dep.name) if last is not None else None
            if want_explain:
                # Over the inputs the lifecycle placed with; its standbys are the nodes that replace
                # each replica's host once it is gone (mesh.lifecycle.replacements).
                rows = explain(spec, last.view, last.incumbents[dep.name]) if spec is not None and last is not None else []
                spares = set(last.spares.get(dep.name, ())) if last is not None else set()
                item["candidates"] = [
                    {"node": c.node_id, "name": names.get(c.node_id, ("", "", ""))[0],
                     "zone": names.get(c.node_id, ("", "", ""))[1], "rejected": c.rejected,
                     "replica": c.replica,
                     "standby": c.node_id in spares,
                     "score": None if c.score is None else {
                         "base": round(c.score.base, 6), "proximity": round(c.score.proximity, 6),
                         "locality": round(c.score.locality, 6), "load": round(c.score.load, 6),
                         "incumbent": c.score.incumbent}}
                    for c in rows
                ]
            out.append(item)
        digest = agreement.parse(self.wanted)
        return json_answer({"node": self.d.node_id, "view_digest": digest.view if digest else None,
                            "evaluations": self.d.workloads.evaluations, "deployments": out})

    async def api_check(self, req: Request) -> tuple[int, str, bytes]:
        rows = []
        for node, m in sorted(self.d.core.swim.members.items()):
            if m.state not in (MemberState.ALIVE, MemberState.SUSPECT):
                continue
            d = agreement.parse(m.meta.agreement)
            rows.append({"node": node, "name": m.meta.name, "status": m.state.name.lower(), "agreement": m.meta.agreement,
                         "format": d.format if d else None, "view": d.view if d else None,
                         "specs": d.specs if d else None, "placement": d.placement if d else None})
        gs = agreement.groups((r["node"], r["agreement"]) for r in rows)
        return json_answer({
            "node": self.d.node_id, "agree": agreement.agree(gs), "nodes": rows,
            "groups": [{"reason": g.reason, "nodes": list(g.nodes), "digests": g.digests.encode() if g.digests else None}
                       for g in gs],
        })
