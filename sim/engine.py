"""The discrete-event simulator: a virtual clock and network driving real NodeCores.

One priority queue of events ordered by (virtual time, sequence number). Each
node is the very ``NodeCore`` the daemon runs; the simulator only plays the
driver: it delivers bytes, calls ``tick`` when ``next_deadline`` comes due and
carries what the core returns across a modelled network (latency distribution,
loss, duplication, reordering, partitions, one-way loss, bandwidth). Every
random draw comes from generators seeded by the scenario seed, and the event
trace is hashed as it is produced, so the same seed gives the same
``trace_hash`` on any machine.
"""

from __future__ import annotations

import gc
import hashlib
import heapq
import math
import random
import struct
import time
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Callable

from mesh.membership.meta import NodeMeta
from mesh.membership.state import MemberState
from mesh.node import NodeCore
from sim.scenario import INTENT_ACTIONS, Fault, LinkModel, Scenario, ScenarioError

if TYPE_CHECKING:
    from sim.intent import IntentHarness
    from sim.placement import PlacementHarness

_DELIVER = 0
_TIMER = 1
_FAULT = 2
_STOP = 3

_T = struct.Struct("<dB")
# Wall clocks read like real time (seconds since 1970) so records look like a daemon's;
# each node's wall clock is off by a seeded skew in [-WALL_SKEW, WALL_SKEW] (NTP-grade).
WALL_EPOCH = 1_700_000_000.0
WALL_SKEW = 0.05


@dataclass(slots=True, frozen=True)
class SimStream:
    """The simulator's stream handle: opened by ``opener`` to ``acceptor``; replies ride it back."""

    opener: str
    acceptor: str
    sid: int

    def other(self, name: str) -> str:
        """The far end of this stream as seen from ``name``."""
        return self.acceptor if name == self.opener else self.opener


@dataclass(slots=True)
class SimNode:
    """Driver-side state of one simulated node."""

    name: str
    index: int
    core: NodeCore | None = None  # set when the node boots
    up: bool = True
    left: bool = False
    generation: int = 0
    skew: float = 0.0
    drift: float = 0.0
    slow: float = 0.0
    timer_at: float = math.inf
    pos: tuple[float, float] = (0.0, 0.0)
    sec: int = -1
    sec_count: int = 0
    wall_skew: float = 0.0
    plain: bool = True  # no skew or drift: local time is virtual time
    to_me: bytes = b""  # b"\0" + the name encoded: the tail of a delivery's trace record

    def __post_init__(self) -> None:
        self.to_me = b"\0" + self.name.encode()

    def local(self, t: float) -> float:
        """This node's (possibly skewed, drifting) clock reading at virtual time t."""
        return t * (1.0 + self.drift) + self.skew

    def wall(self, t: float) -> float:
        """This node's wall-clock reading at virtual time t (for record timestamps, never timers)."""
        return WALL_EPOCH + t * (1.0 + self.drift) + self.wall_skew

    def to_global(self, local: float) -> float:
        """Virtual time at which this node's clock reads ``local``."""
        return (local - self.skew) / (1.0 + self.drift)


@dataclass(slots=True)
class CrashRecord:
    """Detection timeline of one crash."""

    node: str
    crashed_at: float
    first_suspect_at: float | None = None
    first_dead_at: float | None = None
    all_dead_at: float | None = None
    dead_observers: set[str] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "crashed_at": _r(self.crashed_at),
            "first_suspect_at": _r(self.first_suspect_at),
            "first_dead_at": _r(self.first_dead_at),
            "all_dead_at": _r(self.all_dead_at),
        }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


class Simulation:
    """Runs one scenario with one seed."""

    def __init__(self, scenario: Scenario, seed: int, trace: IO[str] | None = None) -> None:
        self.scenario = scenario
        self.seed = seed
        self.now = 0.0
        self.net_rng = random.Random(f"{seed}:net")
        self.fault_rng = random.Random(f"{seed}:faults")
        self.nodes: dict[str, SimNode] = {}
        self.order: list[str] = []
        # Entries are flat: (time, seq, kind, data, src, payload, stream, delayed); a delivery
        # has data = its destination, a timer data = node name and src = its generation, the
        # other kinds leave the last four unset. One tuple per event, none nested.
        self._heap: list[tuple[Any, ...]] = []
        self._seq = 0
        self._stream_seq = 0
        self._trace = hashlib.blake2b(digest_size=16)
        self._trace_file = trace
        self.events_processed = 0
        self.datagrams_delivered = 0
        self.frames_delivered = 0
        self.messages_sent = 0
        self.bytes_sent = 0
        self.messages_dropped = 0
        self.max_msgs_per_node_sec = 0
        self.crashes: list[CrashRecord] = []
        self._open_crash: dict[str, CrashRecord] = {}
        self.false_positives: list[dict[str, Any]] = []
        self.verdicts: dict[str, int] = {}
        self.partition: dict[str, int] | None = None
        # Every partition as (start, end, groups); end is inf while it is in force.
        self._partitions: list[tuple[float, float, dict[str, int]]] = []
        # (observer, subject) -> when the observer's current suspicion began, minus one probe round.
        self._suspect_since: dict[tuple[str, str], float] = {}
        # (decider, subject, incarnation) -> True if that dead verdict is a partition effect.
        self._decisions: dict[tuple[str, str, int], bool] = {}
        self.one_way: dict[tuple[str, str], float] = {}
        self.link_overrides: dict[tuple[str, str], LinkModel] = {}
        self.meta_updates: list[tuple[str, NodeMeta, float]] = []
        self.observers: list[Callable[["Simulation", str, Any], None]] = []
        self._next_index = 0
        self._seed_names: list[str] = []
        self.wall_seconds = 0.0
        self._initial: list[Any] | None = None
        self._shared_members: dict[float, list[Any]] = {}
        self._peer_index: dict[str, int] = {}
        # Replicated intent only when the scenario asks for it: membership-only runs pay nothing.
        self.intent: IntentHarness | None = None
        if scenario.intent is not None:
            from sim.intent import IntentHarness

            self.intent = IntentHarness(self, scenario.intent)
        # Placement only when the scenario has deployments (sim/placement.py).
        self.placement: PlacementHarness | None = None
        if scenario.deployments:
            from sim.placement import PlacementHarness

            self.placement = PlacementHarness(self)
        self._build()

    # ------------------------------------------------------------------ setup

    def _build(self) -> None:
        sc = self.scenario
        self._seed_names = [sc.node_name(i) for i in range(sc.seeds)]
        for ov in sc.network.links:
            for a in self.select(ov.src, initial=True):
                for b in self.select(ov.dst, initial=True):
                    self.link_overrides[(a, b)] = ov.model
                    if ov.symmetric:
                        self.link_overrides[(b, a)] = ov.model
        for i in range(sc.nodes):
            start = 0.0 if i < sc.seeds or sc.bootstrap == "full" else self.fault_rng.random() * sc.join_window
            self._add_node(start)
        for idx, f in enumerate(sc.faults):
            self._push(f.at, _FAULT, idx)

    def _make_meta(self, index: int) -> NodeMeta:
        r = random.Random(f"{self.seed}:meta:{index}")
        arch = self.scenario.arch_mix[index % len(self.scenario.arch_mix)]
        region = f"r{index % 4}"
        return NodeMeta(
            arch=arch,
            cores=r.choice((2, 4, 8)),
            memory_mb=r.choice((1024, 2048, 4096, 8192)),
            labels=(("zone", region),),
            fault_domain=f"{region}/s{index % 16}/v{index}",
            geo=(round(r.uniform(-60, 60), 4), round(r.uniform(-170, 170), 4)),
        )

    def _add_node(self, start: float) -> SimNode:
        index = self._next_index
        self._next_index += 1
        name = self.scenario.node_name(index)
        pos_rng = random.Random(f"{self.seed}:pos:{index}")
        node = SimNode(name, index, pos=(pos_rng.random(), pos_rng.random()))
        node.wall_skew = random.Random(f"{self.seed}:wall:{index}").uniform(-WALL_SKEW, WALL_SKEW)
        node.up = False  # boots at `start`
        self.nodes[name] = node
        self.order.append(name)
        self._push(start, _STOP, (name, "boot", 0))
        return node

    def _initial_states(self) -> list[Any]:
        if self._initial is None:
            from mesh.membership.messages import PushPullState

            sc = self.scenario
            self._initial = [
                PushPullState.of(sc.node_name(i), sc.node_name(i), 0, 0, self._make_meta(i), None) for i in range(sc.nodes)
            ]
        return self._initial

    def _new_core(self, name: str, index: int, generation: int, now: float) -> NodeCore:
        rng = random.Random(f"{self.seed}:{name}:{generation}")
        seeds = [s for s in self._seed_names if s != name]
        if self.intent is None:
            core = NodeCore(name, name, self._make_meta(index), self.scenario.profile, rng, now=now, seeds=seeds)
        else:
            intent, blobs = self.intent.make(name, generation)
            core = NodeCore(
                name, name, self._make_meta(index), self.scenario.profile, rng, now=now, seeds=seeds, intent=intent, blobs=blobs
            )
        # The simulated network is the authenticator and addresses are names: nothing reads
        # Outgoing.node/key here, so the core skips naming them (a lookup per message).
        core.name_outgoing = False
        # One numbering of names for every node's per-peer records (coordinates, latency
        # filters): a node then holds packed records and no name -> record dict of its own.
        core.swim.share_peer_index(self._peer_index)
        return core

    # ------------------------------------------------------------------ selectors

    def select(self, sel: Any, initial: bool = False) -> list[str]:
        """Resolve a node selector: a name, a list, "nA-nB", "random:K", "all"."""
        if isinstance(sel, list):
            out: list[str] = []
            for s in sel:
                out.extend(x for x in self.select(s, initial) if x not in out)
            return out
        if not isinstance(sel, str):
            raise ScenarioError(f"bad node selector {sel!r}")
        names = [self.scenario.node_name(i) for i in range(self.scenario.nodes)] if initial else self.order
        if sel == "all":
            return list(names)
        if sel.startswith("random:"):
            k = int(sel.split(":", 1)[1])
            pool = [n for n in names if n in self.nodes and self.nodes[n].up and not self.nodes[n].left]
            return sorted(self.fault_rng.sample(pool, min(k, len(pool))))
        if "-" in sel:
            a, b = sel.split("-", 1)
            return [n for n in names if a <= n <= b]
        if sel not in names and not initial:
            raise ScenarioError(f"unknown node {sel!r}")
        return [sel]

    def _fault_nodes(self, f: Fault) -> list[str]:
        return self.select(f.args.get("nodes", f.args.get("node")))

    # ------------------------------------------------------------------ event queue

    def _push(self, t: float, kind: int, data: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, data, None, None, None, False))

    def _push_delivery(self, t: float, dst: str, src: str, payload: bytes, stream: Any, delayed: bool) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, _DELIVER, dst, src, payload, stream, delayed))

    def _schedule_timer(self, node: SimNode) -> None:
        d = node.core.next_deadline()
        if d is None or d == math.inf:
            return
        if node.plain:
            t = d
        else:
            t = node.to_global(d)
        if t < self.now:
            t = self.now
        t += node.slow
        if t != node.timer_at:
            node.timer_at = t
            self._seq += 1
            heapq.heappush(self._heap, (t, self._seq, _TIMER, node.name, node.generation, None, None, False))

    def _record(self, kind: int, a: str, b: str, data: bytes) -> None:
        # One hash update per event (the fields joined): each update call has a fixed cost.
        self._trace.update(b"".join((_T.pack(self.now, kind), a.encode(), b"\0", b.encode(), data)))
        if self._trace_file is not None:
            self._trace_file.write(f"{self.now:.6f} {kind} {a} {b} {len(data)} {hashlib.sha1(data).hexdigest()[:10]}\n")

    # ------------------------------------------------------------------ network

    def _link(self, src: str, dst: str) -> LinkModel:
        return self.link_overrides.get((src, dst), self.scenario.network.default)

    def _latency(self, src: str, dst: str, model: LinkModel) -> float:
        base = model.latency_ms
        net = self.scenario.network
        if net.topology == "plane" and net.plane_ms > 0:
            a, b = self.nodes[src].pos, self.nodes[dst].pos
            base += net.plane_ms * math.hypot(a[0] - b[0], a[1] - b[1]) / math.sqrt(2)
        j = model.jitter_ms
        if j > 0:
            if model.distribution == "uniform":
                base += self.net_rng.uniform(-j, j)
            elif model.distribution == "normal":
                base += self.net_rng.gauss(0.0, j)
            else:
                base += self.net_rng.expovariate(1.0 / j)
        return max(base, 0.01) / 1000.0

    def _blocked(self, src: str, dst: str) -> bool:
        p = self.partition
        return p is not None and p.get(src, -1) != p.get(dst, -1)

    def _send(self, node: SimNode, outs: list[Any]) -> None:
        if not outs:
            return
        now = self.now
        sec = int(now)
        if sec != node.sec:
            node.sec, node.sec_count = sec, 0
        nodes = self.nodes
        name = node.name
        net = self.scenario.network
        # The common case (no overrides, no partition, plain topology) skips the per-link lookups.
        simple = not self.link_overrides and self.partition is None and not (net.topology == "plane" and net.plane_ms > 0)
        default = net.default
        rnd = self.net_rng.random
        self.messages_sent += len(outs)
        node.sec_count += len(outs)
        nbytes = 0
        # A datagram on a simple network with uniform jitter, no one-way loss, no reordering
        # or duplication (the bench): the loop below for it, inlined, the same draws in the same order.
        fj = default.jitter_ms
        fast = simple and fj > 0 and default.distribution == "uniform" and not self.one_way and default.reorder <= 0 and default.duplicate <= 0
        lat, fj2, loss0 = default.latency_ms, 2.0 * fj, default.loss
        heap, heappush = self._heap, heapq.heappush
        for o in outs:
            nbytes += len(o.data)
            if fast and not o.reliable and o.stream is None and o.dst in nodes:
                delay = lat + (-fj + fj2 * rnd())
                delay = (delay if delay > 0.01 else 0.01) / 1000.0
                if loss0 > 0 and rnd() < loss0:
                    self.messages_dropped += 1
                    continue
                self._seq += 1
                heappush(heap, (now + delay, self._seq, _DELIVER, o.dst, name, o.data, None, False))
                continue
            # A reply rides the request's stream back to its other end, whatever dst says.
            stream = o.stream
            dst = stream.other(name) if stream is not None else o.dst
            if simple:
                if dst not in nodes:
                    self.messages_dropped += 1
                    if o.reliable and self.intent is not None:
                        self.intent.stream_failed(node, dst)
                    continue
                model = default
                j = model.jitter_ms
                if j > 0 and model.distribution == "uniform":
                    # random.uniform(-j, j), inlined: this runs for every message
                    delay = model.latency_ms + (-j + 2.0 * j * rnd())
                    delay = (delay if delay > 0.01 else 0.01) / 1000.0
                else:
                    delay = self._latency(name, dst, model)
            else:
                if dst not in nodes or self._blocked(name, dst):
                    self.messages_dropped += 1
                    if o.reliable and self.intent is not None:
                        self.intent.stream_failed(node, dst)
                    continue
                model = self._link(name, dst)
                delay = self._latency(name, dst, model)
            if o.reliable:
                if stream is None:
                    self._stream_seq += 1
                    stream = SimStream(node.name, dst, self._stream_seq)
                bw = self.scenario.network.bandwidth_kbps
                if bw > 0:
                    delay += len(o.data) * 8 / (bw * 1000.0)
                self._push_delivery(self.now + delay, dst, name, o.data, stream, False)
                continue
            loss = model.loss
            ow = self.one_way.get((name, dst)) if self.one_way else None
            if ow is not None:
                loss = 1.0 - (1.0 - loss) * (1.0 - ow)
            if loss > 0 and rnd() < loss:
                self.messages_dropped += 1
                continue
            if model.reorder > 0 and rnd() < model.reorder:
                delay += rnd() * model.reorder_ms / 1000.0
            self._seq += 1
            heapq.heappush(self._heap, (now + delay, self._seq, _DELIVER, dst, name, o.data, None, False))
            if model.duplicate > 0 and self.net_rng.random() < model.duplicate:
                self._push_delivery(self.now + delay + self._latency(name, dst, model), dst, name, o.data, None, False)
        self.bytes_sent += nbytes
        if node.sec_count > self.max_msgs_per_node_sec:
            self.max_msgs_per_node_sec = node.sec_count

    # ------------------------------------------------------------------ run

    def run(self, until: float | None = None) -> None:
        """Process events up to ``until`` (default: the scenario duration)."""
        # The membership cores make no reference cycles (a 1000-node, 600-s run frees about
        # a thousand objects through the cycle collector), yet its passes over the millions
        # of long-lived member records cost an eighth of the run: switch it off meanwhile.
        # Runs with replicated intent keep it (pycrdt documents are not ours to vouch for).
        pause_gc = self.intent is None and gc.isenabled()
        if pause_gc:
            gc.disable()
        try:
            self._run(until)
        finally:
            if pause_gc:
                gc.enable()

    def _run(self, until: float | None) -> None:
        end = self.scenario.duration if until is None else until
        wall0 = time.perf_counter()
        heap = self._heap
        nodes = self.nodes
        trace_file = self._trace_file
        update = self._trace.update
        pack_t = _T.pack
        heappop = heapq.heappop
        heappush = heapq.heappush
        inf = math.inf
        # _after, inlined below for deliveries and timers, unless intent or placement watch each event.
        plain_after = self.intent is None and self.placement is None
        # Event counters kept in locals, written back once (nothing reads them mid-run).
        events = datagrams = frames = 0
        try:
            while heap and heap[0][0] <= end:
                t, _, kind, data, src, payload, stream, delayed = heappop(heap)
                self.now = t
                events += 1
                if kind == _DELIVER:
                    dst = data
                    node = nodes[dst]
                    if not node.up:
                        if stream is not None and self.intent is not None:
                            self.intent.stream_failed(nodes[src], dst)
                        continue
                    if node.slow > 0 and not delayed:
                        # A slow node processes each message late.
                        self._push_delivery(t + node.slow, dst, src, payload, stream, True)
                        continue
                    if trace_file is None:
                        # _record, inlined for the hottest event (same bytes hashed)
                        update(b"".join((pack_t(t, kind), src.encode(), node.to_me, payload)))
                    else:
                        self._record(kind, src, dst, payload)
                    if stream is not None:
                        frames += 1
                    else:
                        datagrams += 1
                    # The simulated network is the authenticator: `src` is who really sent it.
                    outs = node.core.receive(src, payload, t if node.plain else node.local(t), stream is not None, peer=src, stream=stream)
                elif kind == _TIMER:
                    node = nodes[data]
                    if not node.up or src != node.generation or t != node.timer_at:
                        continue
                    node.timer_at = inf
                    outs = node.core.tick(t if node.plain else node.local(t), node.wall(t))
                elif kind == _FAULT:
                    self._apply_fault(self.scenario.faults[data])
                    continue
                else:
                    self._lifecycle(*data)
                    continue
                if not plain_after:
                    self._after(node, outs)
                    continue
                # self._after(node, outs), inlined for a membership-only run: it follows every event.
                if outs:
                    self._send(node, outs)
                swim = node.core.swim
                d = swim.next_deadline()  # what core.next_deadline() returns without intent
                if swim.events:
                    evs, swim.events = swim.events, []
                    self._observe(node, evs)
                if d is None or d == inf:
                    continue
                if not node.plain:
                    d = node.to_global(d)
                if d < t:
                    d = t
                d += node.slow
                if d != node.timer_at:  # see _after: a moved deadline replaces the queued one
                    node.timer_at = d
                    self._seq += 1
                    heappush(heap, (d, self._seq, _TIMER, node.name, node.generation, None, None, False))
        finally:
            self.events_processed += events
            self.datagrams_delivered += datagrams
            self.frames_delivered += frames
        self.now = max(self.now, end)
        self.wall_seconds += time.perf_counter() - wall0

    def _after(self, node: SimNode, outs: list[Any]) -> None:
        if outs:
            self._send(node, outs)
        core = node.core
        swim = core.swim
        if self.intent is not None:
            self.intent.after(node)
            d = core.next_deadline()
        else:
            d = swim.next_deadline()  # what core.next_deadline() returns without intent, one call less
        if swim.events:
            events, swim.events = swim.events, []
            self._observe(node, events)
            if self.placement is not None:
                self.placement.changed(node)
        # _schedule_timer, inlined: it runs after every event.
        if d is None or d == math.inf:
            return
        t = d if node.plain else node.to_global(d)
        if t < self.now:
            t = self.now
        t += node.slow
        # A deadline that moved later (a probe acked before its indirect-probe time)
        # replaces the queued one too: the stale entry is skipped when popped, instead
        # of ticking a core that has nothing due.
        if t != node.timer_at:
            node.timer_at = t
            self._seq += 1
            heapq.heappush(self._heap, (t, self._seq, _TIMER, node.name, node.generation, None, None, False))

    # ------------------------------------------------------------------ observation

    def live_names(self) -> list[str]:
        """Nodes that are up and have not left (the truth, not anyone's view)."""
        return [n for n in self.order if self.nodes[n].up and not self.nodes[n].left]

    def _observe(self, observer: SimNode, events: list[Any]) -> None:
        for ev in events:
            for cb in self.observers:
                cb(self, observer.name, ev)
            verdicts = self.verdicts
            verdicts[ev.kind] = verdicts.get(ev.kind, 0) + 1
            if ev.kind not in ("suspect", "dead"):
                if self._trace_file is not None:
                    self._trace_verdict(observer.name, ev, "-")
                continue
            subject = self.nodes.get(ev.node)
            cause = "-"
            if ev.kind == "suspect":
                # The evidence window opens one (health-scaled) probe round before the suspicion.
                swim = observer.core.swim
                window = swim.config.probe_interval * (swim.awareness.score + 1)
                self._suspect_since[(observer.name, ev.node)] = self.now - window
            else:
                partition = self._dead_is_partition_effect(observer.name, ev)
                if subject is not None and subject.up and not subject.left and ev.node not in self._open_crash:
                    cause = "partition" if partition else "other"
            if self._trace_file is not None:
                self._trace_verdict(observer.name, ev, cause)
            rec = self._open_crash.get(ev.node)
            if rec is not None:
                if ev.kind == "suspect" and rec.first_suspect_at is None:
                    rec.first_suspect_at = self.now - rec.crashed_at
                if ev.kind == "dead":
                    if rec.first_dead_at is None:
                        rec.first_dead_at = self.now - rec.crashed_at
                    rec.dead_observers.add(observer.name)
                    self._check_all_dead(rec)
            elif cause != "-":
                self.false_positives.append(
                    {
                        "observer": observer.name,
                        "node": ev.node,
                        "incarnation": ev.incarnation,
                        "at": round(self.now, 6),
                        "source": ev.source,
                        "across_partition": cause == "partition",
                    }
                )

    def _dead_is_partition_effect(self, observer: str, ev: Any) -> bool:
        """Whether a dead verdict goes back to a suspicion that a partition explains.

        A dead verdict is *decided* by one node (``source``) when its suspicion
        timer runs out; every other node that says "dead" relays that decision. The
        decision is a partition effect iff a partition separated the decider from
        the subject at some moment of the decider's suspicion (from one probe round
        before it began to its end): then the subject really could not answer or
        refute. A suspicion that began after the heal, on the subject's own side —
        e.g. one merged from the other side's stale state — is not explained by the
        partition and counts as a real false positive.
        """
        decider = ev.source or observer
        key = (decider, ev.node, ev.incarnation)
        if decider == observer:
            since = self._suspect_since.pop((observer, ev.node), self.now)
            verdict = self._separated_during(decider, ev.node, since, self.now)
            self._decisions[key] = verdict
            return verdict
        verdict = self._decisions.get(key)
        if verdict is None:  # decided before we could see it (e.g. by a node since restarted)
            verdict = self._separated_during(decider, ev.node, self.now, self.now)
        return verdict

    def _separated_during(self, a: str, b: str, start: float, end: float) -> bool:
        for p_start, p_end, groups in self._partitions:
            if p_start <= end and p_end >= start and groups.get(a, -1) != groups.get(b, -1):
                return True
        return False

    def _trace_verdict(self, observer: str, ev: Any, cause: str) -> None:
        assert self._trace_file is not None
        self._trace_file.write(
            f"{self.now:.6f} V {observer} {ev.kind} {ev.node} {ev.incarnation} {ev.source or '-'} "
            f"{ev.origin or '-'} {cause}\n"
        )

    def _check_all_dead(self, rec: CrashRecord) -> None:
        if rec.all_dead_at is not None:
            return
        live = self.live_names()
        if len(rec.dead_observers) + 1 < len(live):
            return
        for n in live:
            m = self.nodes[n].core.swim.members.peek(rec.node)  # read-only: no private copy
            if m is not None and m.state < MemberState.DEAD:
                return
        rec.all_dead_at = self.now - rec.crashed_at

    # ------------------------------------------------------------------ faults

    def _lifecycle(self, name: str, what: str | tuple[Any, ...], gen: int) -> None:
        node = self.nodes[name]
        if what == "boot":
            node.up = True
            node.core = self._new_core(name, node.index, node.generation, node.local(self.now))
            if self.scenario.bootstrap == "full" and node.generation == 0 and node.index < self.scenario.nodes:
                # Nodes booting at the same instant share their initial member records (copy on access).
                at = node.local(self.now)
                self._shared_members[at] = node.core.swim.bootstrap(self._initial_states(), at, self._shared_members.get(at))
            self._record(_STOP, name, "boot", b"")
            self._after(node, node.core.start(node.local(self.now)))
            if self.placement is not None:
                self.placement.booted(node)
        elif what == "stop" and gen == node.generation:
            node.up = False
            self._record(_STOP, name, "stop", b"")
        elif isinstance(what, tuple) and what[0] == "placement":
            if gen == node.generation and node.up and self.placement is not None:
                self.placement.event(node, what)
        elif isinstance(what, tuple) and gen == node.generation and node.up and self.intent is not None:
            self.intent.driver_event(node, what)  # persist effects done, stream failures

    def _apply_fault(self, f: Fault) -> None:
        self._record(_FAULT, f.action, repr(sorted(f.args.items())), b"")
        if self.placement is None:
            self._do_fault(f)
            return
        before = {n: (self.nodes[n].up, self.nodes[n].left, self.nodes[n].generation) for n in self.order}
        self._do_fault(f)
        # The nodes whose process state the fault changed (random:K is drawn inside the fault).
        nodes = [n for n in self.order if before.get(n) != (self.nodes[n].up, self.nodes[n].left, self.nodes[n].generation)]
        self.placement.on_fault(f.action, nodes)

    def _do_fault(self, f: Fault) -> None:
        a = f.args
        if f.action == "crash":
            for n in self._fault_nodes(f):
                node = self.nodes[n]
                if node.up:
                    node.up = False
                    node.generation += 1
                    rec = CrashRecord(n, self.now)
                    self.crashes.append(rec)
                    self._open_crash[n] = rec
                    if self.intent is not None:
                        self.intent.on_crash(n)
        elif f.action == "restart":
            for n in self._fault_nodes(f):
                node = self.nodes[n]
                if node.up:
                    continue
                node.generation += 1
                node.left = False
                node.timer_at = math.inf
                self._open_crash.pop(n, None)
                self._lifecycle(n, "boot", node.generation)
        elif f.action == "leave":
            grace = float(a.get("grace", 3 * self.scenario.profile.probe_interval))
            for n in self._fault_nodes(f):
                node = self.nodes[n]
                if node.up and not node.left:
                    node.left = True
                    self._after(node, node.core.leave(node.local(self.now)))
                    self._push(self.now + grace, _STOP, (n, "stop", node.generation))
        elif f.action == "join":
            for _ in range(int(a.get("count", 1))):
                self._add_node(self.now)
        elif f.action == "partition":
            self._end_partition()
            self.partition = {}
            for gi, group in enumerate(a["groups"]):
                for n in self.select(group):
                    self.partition[n] = gi
            self._partitions.append((self.now, math.inf, self.partition))
        elif f.action == "heal":
            self._end_partition()
            self.one_way.clear()
        elif f.action == "one_way_loss":
            loss = float(a.get("loss", 1.0))
            for s in self.select(a["from"]):
                for d in self.select(a["to"]):
                    self.one_way[(s, d)] = loss
        elif f.action == "clear_loss":
            self.one_way.clear()
        elif f.action == "link":
            from sim.scenario import _link

            model = _link(a, "link.", self.scenario.network.default)
            for s in self.select(a["from"]):
                for d in self.select(a["to"]):
                    self.link_overrides[(s, d)] = model
                    if a.get("symmetric", True):
                        self.link_overrides[(d, s)] = model
        elif f.action == "slow":
            delay = float(a.get("delay_ms", 100.0)) / 1000.0
            for n in self._fault_nodes(f):
                self.nodes[n].slow = delay
        elif f.action == "clock":
            for n in self._fault_nodes(f):
                node = self.nodes[n]
                node.skew = float(a.get("skew", 0.0))
                node.drift = float(a.get("drift", 0.0))
                node.wall_skew = float(a.get("wall_skew", node.wall_skew))
                node.plain = node.skew == 0.0 and node.drift == 0.0
                node.timer_at = math.inf
                self._schedule_timer(node)
        elif f.action in INTENT_ACTIONS:
            assert self.intent is not None  # any intent action switches intent on at load
            self.intent.apply(f)
        elif f.action == "crash_replica":
            assert self.placement is not None  # the scenario names one of its deployments
            for n in self._fault_nodes(f):
                self.placement.crash_replica(self.nodes[n], str(a["deployment"]), int(a.get("fail_starts", 0)))
        elif f.action == "meta":
            for n in self._fault_nodes(f):
                node = self.nodes[n]
                if not node.up:
                    continue
                old = node.core.meta
                labels = dict(old.labels)
                labels.update({str(k): str(v) for k, v in a.get("labels", {}).items()})
                meta = NodeMeta(
                    arch=old.arch,
                    cores=old.cores,
                    memory_mb=old.memory_mb,
                    labels=NodeMeta.make_labels(labels),
                    fault_domain=str(a.get("fault_domain", old.fault_domain)),
                    geo=old.geo,
                    load=float(a.get("load", old.load)),
                    hardware=old.hardware,
                )
                node.core.update_meta(meta, node.local(self.now))
                self.meta_updates.append((n, meta, self.now))
                self._schedule_timer(node)

    def _end_partition(self) -> None:
        if self.partition is not None:
            start, _, groups = self._partitions[-1]
            self._partitions[-1] = (start, self.now, groups)
        self.partition = None

    # ------------------------------------------------------------------ results

    def views(self) -> dict[str, frozenset[str]]:
        """For each live node: the set of members it believes alive (or suspect)."""
        out = {}
        for n in self.live_names():
            swim = self.nodes[n].core.swim
            out[n] = frozenset([*swim.live_peers(), n])
        return out

    def converged(self) -> bool:
        """All live nodes believe exactly the live nodes are alive."""
        truth = frozenset(self.live_names())
        # One view at a time: at 10,000 nodes all views at once would be gigabytes.
        for n in truth:
            swim = self.nodes[n].core.swim
            if swim.num_members() != len(truth) or frozenset([*swim.live_peers(), n]) != truth:
                return False
        return True

    def meta_reached_all(self) -> bool:
        """Every metadata update is visible, as the latest, at every live node."""
        latest: dict[str, NodeMeta] = {}
        for n, meta, _ in self.meta_updates:
            latest[n] = meta
        for n, meta in latest.items():
            if not self.nodes[n].up or self.nodes[n].left:
                continue
            for o in self.live_names():
                m = self.nodes[o].core.swim.members.peek(n)
                if m is None or m.meta != meta:
                    return False
        return True

    def trace_hash(self) -> str:
        """Hash over the ordered event trace so far."""
        return self._trace.hexdigest()
