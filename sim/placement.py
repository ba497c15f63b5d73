"""Placement in the simulator: every node runs ``scheduler.place`` and a supervisor core.

Switched on by ``[[deployments]]`` in a scenario (docs/SIMULATOR.md, "Deployments and
placement"). Every simulated node runs the daemon's cores, driven by simulated time:

* **evaluate** — after a membership change the node sees (any membership event at that node:
  join, suspect, dead, left, update, ...), ``evaluate_delay`` later, the node builds a
  ``scheduler.View`` from *its own* member table (status, metadata, the Vivaldi coordinates it
  holds, the failed marks announced) and computes the target of every deployment with
  ``scheduler.place``;
* **supervise** — the node's share goes to its own :class:`scheduler.supervisor.Supervisor`
  (``set_targets``), as in the daemon (mesh/daemon/workloads.py). The simulator performs the
  supervisor's actions as timed events: a ``start`` completes ``start_delay`` later (reported
  ``started``, or ``start_failed`` when a ``crash_replica`` fault made the next starts fail), a
  ``stop`` completes ``stop_delay`` later (``stopped``), ``next_deadline``/``tick`` run as timers
  (restarts with backoff, expiry of failed marks). A ``crash_replica`` fault reports ``crashed``;
* **claims** — a node announces its supervisor's ``claims()`` in its metadata (the simulator's
  stand-in for the replicated placement document): label ``wasmatrix.run`` lists the deployments
  it claims ``starting``/``running`` (the daemon's incumbent states, ``mesh.lifecycle.HOLDING``;
  only with ``incumbents = "gossip"``, the default), label ``wasmatrix.failed`` the ones marked
  failed (always). Every node passes the announced holders as incumbents (hysteresis) and reads
  the failed marks into ``NodeInfo.failed``, which ``place`` treats as a hard filter: the
  replica moves.

Measurements (in the report under ``placement``): after each membership change (``crash``,
``restart``, ``leave``, ``join``, ``partition``, ``heal`` and the initial start), the time until
every live node computes the identical placement of every deployment with every chosen node
live (during a partition: on each side, with the chosen nodes on that side), and the replicas
started, stopped and restarted and the failed marks until the next change.

Nothing here reads a clock or the global ``random``; bookkeeping events carry no bytes and are
not part of the trace hash, so only the metadata gossip changes traffic (and only in scenarios
with deployments).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

# The daemon's encodings and claim states: one definition for both.
from mesh.lifecycle import COORD_LABEL, HOLDING, MEMBER_STATUS, coord_moved, decode_coord, encode_coord
from mesh.membership.meta import NodeMeta
from scheduler import ALIVE, NodeInfo, Placement, PlacementSpec, View, place, placement_digest, reject_reason
from scheduler.supervisor import Action, Supervisor, SupervisorConfig, Target

if TYPE_CHECKING:
    from mesh.node import NodeCore
    from sim.engine import SimNode, Simulation

RUN_LABEL = "wasmatrix.run"  # metadata label: the deployments a node claims starting or running
FAILED_LABEL = "wasmatrix.failed"  # metadata label: the deployments a node marked failed
_OURS = (RUN_LABEL, FAILED_LABEL, COORD_LABEL)
VERSION = "1"  # simulated deployments have one version
LOG_LIMIT = 20_000  # lifecycle log entries kept (tests read them)


MEMBERSHIP_ACTIONS = frozenset({"crash", "restart", "leave", "join", "partition", "heal"})
# (name, status, published) -> (metadata, row, deployments announced): rows shared by all nodes.
_ROWS: dict[tuple[str, str, bool], tuple[NodeMeta, NodeInfo, tuple[str, ...]]] = {}


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(d for d in (text or "").split(",") if d)


def build_view(core: NodeCore, published: bool = True) -> tuple[View, dict[str, frozenset[str]]]:
    """One node's scheduling view from its member table, and who it sees holding each deployment.

    ``published``: coordinates come from the nodes' own published labels (the same numbers at
    every node once gossip converged); otherwise from this node's Vivaldi table. Failed marks
    (label ``wasmatrix.failed``) become ``NodeInfo.failed``.
    """
    swim = core.swim
    rows = []
    running: dict[str, set[str]] = {}
    for name, m in sorted(dict.items(swim.members)):  # read-only: no private copies of shared records
        meta = swim.meta if name == swim.name else m.meta
        status = MEMBER_STATUS[m.state]
        hit = _ROWS.get((name, status, published)) if published else None
        if hit is not None and (hit[0] is meta or hit[0] == meta):
            info, deps = hit[1], hit[2]
        else:
            labels = meta.labels
            ours = dict(kv for kv in labels if kv[0] in _OURS)
            deps = ()
            failed: frozenset[str] = frozenset()
            if ours:
                labels = tuple(kv for kv in labels if kv[0] not in _OURS)
                deps = _names(ours.get(RUN_LABEL))
                failed = frozenset(_names(ours.get(FAILED_LABEL)))
            if published:
                text = ours.get(COORD_LABEL)
                coord = None if text is None else decode_coord(text)
            else:
                c = swim.coordinate_of(name)
                coord = None if c is None else (*c.vec, c.error, c.adjustment, c.height)
            info = NodeInfo(
                node_id=name, status=status, arch=meta.arch, cores=meta.cores, memory_mb=meta.memory_mb,
                labels=labels, hardware=meta.hardware, zone=meta.fault_domain, geo=meta.geo, load=meta.load, coord=coord,
                failed=failed,
            )
            if published:
                # With published coordinates a row is a function of (name, status, metadata): share it.
                if len(_ROWS) > 200_000:
                    _ROWS.clear()
                _ROWS[(name, status, published)] = (meta, info, deps)
        for dep in deps:
            running.setdefault(dep, set()).add(name)
        rows.append(info)
    return View(tuple(rows)), {k: frozenset(v) for k, v in running.items()}


@dataclass(slots=True)
class Change:
    """One membership change and what placement did after it."""

    at: float
    action: str
    nodes: tuple[str, ...]
    converged_at: float | None = None
    started: int = 0
    stopped: int = 0
    restarts: int = 0
    failed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "at": round(self.at, 6), "action": self.action, "nodes": list(self.nodes[:10]),
            "converged_after": None if self.converged_at is None else round(self.converged_at - self.at, 6),
            "replicas_started": self.started, "replicas_stopped": self.stopped,
            "restarts": self.restarts, "failed_marks": self.failed,
        }


@dataclass(slots=True)
class NodePlacement:
    """One simulated node's placement and supervisor (lost in a crash)."""

    sup: Supervisor
    targets: dict[str, Placement] = field(default_factory=dict)
    digest: str = ""
    assigned: dict[str, Target] = field(default_factory=dict)  # this node's share, as given to the supervisor
    running: set[str] = field(default_factory=set)  # deployments the simulated runtime serves
    announced: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())  # (holding, failed) last announced
    failed: frozenset[str] = frozenset()  # the supervisor's failed marks last seen
    tick_at: float | None = None  # the supervisor timer scheduled
    pending: bool = False  # an evaluation is queued
    coord: tuple[float, ...] | None = None  # the coordinate last published
    coord_timer: bool = False
    evaluations: int = 0


class PlacementHarness:
    """The simulator's side of placement (one per simulation with deployments)."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        sc = sim.scenario
        assert sc.placement is not None
        self.cfg = sc.placement
        self.supervisor_config = SupervisorConfig()  # the daemon's defaults (docs/LIFECYCLE.md)
        self.specs: tuple[PlacementSpec, ...] = sc.deployments
        self.state: dict[str, NodePlacement] = {}
        self.changes: list[Change] = [Change(0.0, "start", ())]
        self.evaluations = 0
        self.coord_publications = 0
        # (node, deployment) -> starts that will fail (crash_replica's fail_starts); survives a node restart.
        self.fail_starts: dict[tuple[str, str], int] = {}
        # (time, node, kind, deployment): start, restart, running, start_failed, crashed, failed, stop, stopped.
        self.log: list[tuple[float, str, str, str]] = []
        # Coordinates are published only when a deployment scores proximity by RTT.
        self.publish = self.cfg.coordinates == "published" and any(
            s.near_node is not None or s.near_label is not None for s in self.specs)

    # ------------------------------------------------------------------ engine hooks

    def _new_state(self, name: str) -> NodePlacement:
        return NodePlacement(Supervisor(name, self.supervisor_config))

    def booted(self, node: SimNode) -> None:
        """A (re)started process: nothing runs, nothing is known; evaluate soon."""
        self.state[node.name] = self._new_state(node.name)
        self.changed(node)

    def changed(self, node: SimNode) -> None:
        """The node's membership view changed: queue one evaluation (``evaluate_delay`` later)."""
        if node.left:
            return  # leaving: its replicas stopped with the leave, it places nothing any more
        st = self._st(node)
        if self.publish and not st.coord_timer:
            st.coord_timer = True
            self._push(node, 0.0, ("coord",))
        if st.pending:
            return
        st.pending = True
        self._push(node, self.cfg.evaluate_delay, ("evaluate",))

    def on_fault(self, action: str, nodes: list[str]) -> None:
        """A scenario fault ran: membership changes open a new measurement window."""
        if action not in MEMBERSHIP_ACTIONS:
            return
        self.changes.append(Change(self.sim.now, action, tuple(nodes)))
        if action in ("crash", "leave"):
            for n in nodes:
                self._drop(n)
        self._check()

    def crash_replica(self, node: SimNode, deployment: str, fail_starts: int) -> None:
        """Fault ``crash_replica``: the serving instance traps (kill and restart), and the next
        ``fail_starts`` starts of ``deployment`` on this node fail."""
        if fail_starts:
            self.fail_starts[(node.name, deployment)] = fail_starts
        if not node.up or node.left:
            return
        st = self._st(node)
        version = st.sup.serving(deployment)
        if version is None:
            return
        self._log(node, "crashed", deployment)
        self._run(node, st, st.sup.crashed(deployment, version, "injected crash", self.sim.now))

    def _drop(self, name: str) -> None:
        """The node's process is gone (crash) or going (leave): its replicas stop with it."""
        st = self.state.pop(name, None)
        if st is not None and st.running:
            self.changes[-1].stopped += len(st.running)

    def event(self, node: SimNode, what: tuple[Any, ...]) -> None:
        """A bookkeeping event of this node's current generation."""
        if node.left:
            return
        st = self._st(node)
        now = self.sim.now
        kind = what[1]
        if kind == "evaluate":
            st.pending = False
            self._evaluate(node, st)
        elif kind == "coord":
            self._push(node, self.cfg.coord_interval, ("coord",))
            c = node.core.swim.vivaldi.coord
            mine = (*c.vec, c.error, c.adjustment, c.height)
            if st.coord is None or coord_moved(st.coord, mine) > self.cfg.coord_threshold_ms / 1000.0:
                st.coord = mine
                self.coord_publications += 1
                self._set_labels(node, {COORD_LABEL: encode_coord(mine)})
        elif kind == "start":  # a start completed: fetched, compiled and warm, or failed
            dep, version = what[2], what[3]
            left = self.fail_starts.get((node.name, dep), 0)
            if left > 0:
                self.fail_starts[(node.name, dep)] = left - 1
                self._log(node, "start_failed", dep)
                self._run(node, st, st.sup.start_failed(dep, version, "injected start failure", now))
                return
            actions = st.sup.started(dep, version, now)
            if st.sup.serving(dep) == version and dep not in st.running:
                st.running.add(dep)
                self.changes[-1].started += 1
                self._log(node, "running", dep)
            self._run(node, st, actions)
        elif kind == "stop":  # drained and unloaded
            dep = what[2]
            if dep in st.running:
                st.running.discard(dep)
                self.changes[-1].stopped += 1
            self._log(node, "stopped", dep)
            actions = st.sup.stopped(dep, now)
            # Assigned again while it stopped: the supervisor starts it afresh now.
            self._run(node, st, actions + st.sup.set_targets(st.assigned, now))
        elif kind == "tick":
            if st.tick_at != what[2]:
                return  # superseded by an earlier deadline
            st.tick_at = None
            self._run(node, st, st.sup.tick(now))

    # ------------------------------------------------------------------ internals

    def _st(self, node: SimNode) -> NodePlacement:
        st = self.state.get(node.name)
        if st is None:
            st = self.state[node.name] = self._new_state(node.name)
        return st

    def _log(self, node: SimNode, kind: str, dep: str) -> None:
        if len(self.log) < LOG_LIMIT:
            self.log.append((self.sim.now, node.name, kind, dep))

    def _push(self, node: SimNode, delay: float, what: tuple[Any, ...]) -> None:
        from sim.engine import _STOP

        self.sim._push(self.sim.now + delay, _STOP, (node.name, ("placement", *what), node.generation))

    def _run(self, node: SimNode, st: NodePlacement, actions: list[Action]) -> None:
        """Perform the supervisor's actions as timed events, then announce its claims and arm its timer."""
        for a in actions:
            if a.kind == "start":
                if a.restart:
                    self.changes[-1].restarts += 1
                self._log(node, "restart" if a.restart else "start", a.deployment)
                self._push(node, self.cfg.start_delay, ("start", a.deployment, a.version))
            elif a.kind == "stop":
                self._log(node, "stop", a.deployment)
                self._push(node, self.cfg.stop_delay, ("stop", a.deployment))
            elif a.kind == "unload":
                if st.sup.serving(a.deployment) is None and a.deployment in st.running:
                    st.running.discard(a.deployment)  # a crashed instance: killed at once
            # switch, prepare: nothing to simulate (one version, no standbys)
        failed = st.sup.failed()
        for dep in sorted(failed - st.failed):
            self.changes[-1].failed += 1
            self._log(node, "failed", dep)
        st.failed = failed
        self._announce(node, st)
        d = st.sup.next_deadline()
        if d is not None and (st.tick_at is None or d < st.tick_at):
            st.tick_at = max(d, self.sim.now)
            self._push(node, st.tick_at - self.sim.now, ("tick", st.tick_at))

    def _evaluate(self, node: SimNode, st: NodePlacement) -> None:
        view, running = build_view(node.core, self.cfg.coordinates == "published")
        gossip = self.cfg.incumbents == "gossip"
        st.targets = {s.name: place(s, view, running.get(s.name, frozenset()) if gossip else frozenset()) for s in self.specs}
        st.digest = placement_digest(st.targets.values())
        st.evaluations += 1
        self.evaluations += 1
        st.assigned = {d: Target(d, VERSION, p.nodes.index(node.name)) for d, p in st.targets.items() if node.name in p.nodes}
        self._run(node, st, st.sup.set_targets(st.assigned, self.sim.now))
        self._check()

    def _announce(self, node: SimNode, st: NodePlacement) -> None:
        """Put the supervisor's claims in the node's metadata when they changed: the deployments it
        holds (only with ``incumbents = "gossip"``) and its failed marks (always: placement needs them)."""
        claims = st.sup.claims()
        gossip = self.cfg.incumbents == "gossip"
        now = (tuple(d for d, _, s, _ in claims if gossip and s in HOLDING), tuple(d for d, _, s, _ in claims if s == "failed"))
        if now == st.announced:
            return
        old, st.announced = st.announced, now
        updates: dict[str, str | None] = {}
        for label, new, before in ((RUN_LABEL, now[0], old[0]), (FAILED_LABEL, now[1], old[1])):
            if new != before:
                updates[label] = ",".join(new)[:128] if new else None
        self._set_labels(node, updates)

    def _set_labels(self, node: SimNode, updates: dict[str, str | None]) -> None:
        """Change this node's own metadata labels (None removes one); the change spreads by gossip."""
        core = node.core
        old = core.meta
        labels = dict(old.labels)
        for k, v in updates.items():
            if v is None:
                labels.pop(k, None)
            else:
                labels[k] = v
        meta = NodeMeta(arch=old.arch, cores=old.cores, memory_mb=old.memory_mb, labels=NodeMeta.make_labels(labels),
                        fault_domain=old.fault_domain, geo=old.geo, load=old.load, hardware=old.hardware, name=old.name)
        core.update_meta(meta, node.local(self.sim.now))
        self.sim.meta_updates.append((node.name, meta, self.sim.now))
        self.sim._after(node, [])

    def _check(self) -> None:
        """Close the open change once, on each side of a partition (one side without), every live
        node computes one identical placement whose chosen nodes are live and on that side."""
        ch = self.changes[-1]
        if ch.converged_at is not None:
            return
        # A joining or restarting node counts once it is up and has computed its placement.
        if ch.action in ("join", "restart") and not all(self.sim.nodes[n].up and n in self.state for n in ch.nodes):
            return
        part = self.sim.partition
        sides: dict[int, list[str]] = {}
        for n in self.sim.live_names():
            sides.setdefault(part.get(n, -1) if part is not None else 0, []).append(n)
        if not sides:
            return
        for side, names in sides.items():
            digest = None
            for n in names:
                st = self.state.get(n)
                if st is None or not st.targets or (digest is not None and st.digest != digest):
                    return
                digest = st.digest
            members = set(names)
            if not all(x in members for t in self.state[names[0]].targets.values() for x in t.nodes):
                return
        ch.converged_at = self.sim.now

    # ------------------------------------------------------------------ results

    def running(self) -> dict[str, list[str]]:
        """Deployment -> live nodes running a replica (the truth), sorted."""
        out: dict[str, list[str]] = {s.name: [] for s in self.specs}
        for n in self.sim.live_names():
            st = self.state.get(n)
            for dep in sorted(st.running) if st else ():
                out.setdefault(dep, []).append(n)
        return out

    def agreed(self) -> bool:
        """Every live node computed the same targets."""
        live = self.sim.live_names()
        return len({self.state[n].digest if n in self.state else "" for n in live}) <= 1

    def targets(self, name: str) -> dict[str, Placement]:
        """The targets node ``name`` computed last."""
        st = self.state.get(name)
        return dict(st.targets) if st else {}

    def eligible_live(self, spec: PlacementSpec) -> list[str]:
        """Live nodes (truth) whose own metadata satisfies ``spec``'s hard constraints."""
        out = []
        for n in self.sim.live_names():
            meta = self.sim.nodes[n].core.meta
            labels = tuple(kv for kv in meta.labels if kv[0] not in _OURS)
            info = NodeInfo(n, ALIVE, meta.arch, meta.cores, meta.memory_mb, labels, meta.hardware, meta.fault_domain)
            if reject_reason(spec, info) is None:
                out.append(n)
        return out

    def report(self) -> dict[str, Any]:
        """The ``placement`` section of the simulation report."""
        conv = [c.converged_at - c.at for c in self.changes if c.converged_at is not None]
        conv.sort()
        running = self.running()
        return {
            "deployments": {
                s.name: {"replicas": s.replicas, "running": running.get(s.name, []), "eligible_live": len(self.eligible_live(s))}
                for s in self.specs
            },
            "agreed": self.agreed(),
            "evaluations": self.evaluations,
            "coordinate_publications": self.coord_publications,
            "changes": [c.to_json() for c in self.changes[:200]],
            "convergence_seconds": {
                "p50": round(conv[len(conv) // 2], 6) if conv else None,
                "max": round(conv[-1], 6) if conv else None,
                "never": sum(1 for c in self.changes if c.converged_at is None),
            },
            "replicas_started": sum(c.started for c in self.changes),
            "replicas_stopped": sum(c.stopped for c in self.changes),
            "restarts": sum(c.restarts for c in self.changes),
            "failed_marks": sum(c.failed for c in self.changes),
            "failed": {n: sorted(self.state[n].failed) for n in self.sim.live_names() if n in self.state and self.state[n].failed},
        }
