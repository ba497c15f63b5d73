"""``NodeCore``: the one sans-IO object the daemon and the simulator both drive.

It decodes envelopes, dispatches them to the protocol cores it composes
(membership always; replicated intent and blob transfer when given) and returns
the bytes to send. Drivers feed it three things only — received bytes, the time,
and timer ticks — and it never reads a clock, a socket or the global random.

The intent cores (``crdt.intent.IntentNode``, ``crdt.blob.BlobTransfer``) speak in
node *names*; membership knows each name's address, so the node core translates
on the way out and encodes every sync or blob message as a stream (reliable)
frame: sync updates and blob chunks are far larger than a datagram.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Iterable

from mesh.errors import WireError
from mesh.membership import MembershipConfig, NodeMeta, SwimCore
from mesh.membership.messages import Alive, Dead, Suspect
from mesh.membership.state import MemberEvent
from mesh.protocol import BLOB_TYPES, SYNC_TYPES
from mesh.wire import MAX_DATAGRAM, MAX_FRAME, Outgoing, decode, encode

if TYPE_CHECKING:
    from crdt.blob import BlobTransfer
    from crdt.intent import IntentNode

_MEMBERSHIP_TYPES = frozenset(range(1, 16))
_GONE = frozenset({"dead", "left"})


class NodeCore:
    """One WasmMatrix peer, as a pure state machine."""

    def __init__(
        self,
        name: str,
        addr: str,
        meta: NodeMeta,
        config: MembershipConfig,
        rng: random.Random,
        now: float = 0.0,
        seeds: Iterable[str] = (),
        incarnation: int = 0,
        intent: IntentNode | None = None,
        blobs: BlobTransfer | None = None,
        key: bytes = b"",
    ) -> None:
        self.name = name
        self.addr = addr
        self.rng = rng
        self.swim = SwimCore(name, addr, meta, config, rng, now, incarnation=incarnation, seeds=seeds, key=key)
        # Optional sub-cores: None keeps a pure-membership node (tests, large membership sims).
        self.intent = intent
        self.blobs = blobs
        self.counters: dict[str, int] = {
            "datagrams_received": 0,
            "frames_received": 0,
            "bytes_received": 0,
            "wire_errors": 0,
            "unknown_type": 0,
        }
        if intent is not None or blobs is not None:
            self.counters |= {
                "intent_messages_sent": 0,
                "intent_bytes_sent": 0,
                "intent_no_route": 0,
                "intent_errors": 0,
            }
        self.last_error: str | None = None

    # -- driver interface ---------------------------------------------------------

    def start(self, now: float) -> list[Outgoing]:
        """First call after construction: contact seeds."""
        if self.swim.seeds and self.swim.num_members() <= 1:
            return self.swim.join(self.swim.seeds, now)
        return []

    def receive(self, src: str, data: bytes, now: float, reliable: bool = False) -> list[Outgoing]:
        """Feed bytes received from address ``src``; return what to send."""
        self.counters["frames_received" if reliable else "datagrams_received"] += 1
        self.counters["bytes_received"] += len(data)
        try:
            env = decode(data, MAX_FRAME if reliable else MAX_DATAGRAM)
        except WireError as exc:
            # Bad input is counted and dropped; it never raises out of the core.
            self.counters["wire_errors"] += 1
            self.last_error = str(exc)
            return []
        t = env.msg.TYPE
        if t in _MEMBERSHIP_TYPES:
            if self.blobs is None:
                return self.swim.handle(src, env, now)
            mark = len(self.swim.events)
            out = self.swim.handle(src, env, now)
            return out + self._membership_changed(mark, now)
        if t in SYNC_TYPES and self.intent is not None:
            return self._run_intent(self.intent.receive, env.msg, env.sender, src, now)
        if t in BLOB_TYPES and self.blobs is not None:
            return self._run_intent(self.blobs.receive, env.msg, env.sender, src, now)
        self.counters["unknown_type"] += 1
        return []

    def tick(self, now: float) -> list[Outgoing]:
        """Run the timers due at ``now``."""
        if self.intent is None and self.blobs is None:
            return self.swim.tick(now)
        mark = len(self.swim.events)
        out = self.swim.tick(now)
        if self.blobs is not None:
            out += self._membership_changed(mark, now)
            d = self.blobs.next_deadline()
            if d is not None and d <= now:
                out += self._translate(self._guard(lambda: self.blobs.tick(now)), None, None)  # type: ignore[union-attr]
        intent = self.intent
        if intent is not None:
            d = intent.next_deadline()
            # Only when due: handing the live-peer list over costs O(members).
            if d is not None and d <= now:
                out += self._translate(self._guard(lambda: intent.tick(now, self.swim.live_peers())), None, None)
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has work."""
        d = self.swim.next_deadline()
        for sub in (self.intent, self.blobs):
            if sub is not None:
                e = sub.next_deadline()
                if e is not None and (d is None or e < d):
                    d = e
        return d

    # -- intent plumbing ----------------------------------------------------------

    def _guard(self, call: Any) -> list[tuple[str, Any]]:
        """Run a sub-core call; a failure is counted and logged, never raised to the driver."""
        try:
            return list(call())
        except Exception as exc:  # a bug or hostile input in a sub-core must not stop the node
            self.counters["intent_errors"] += 1
            self.last_error = f"{exc.__class__.__name__}: {exc}"
            return []

    def _run_intent(self, handler: Any, msg: Any, sender: str, src: str, now: float) -> list[Outgoing]:
        return self._translate(self._guard(lambda: handler(sender, msg, now)), sender, src)

    def _translate(self, outs: list[tuple[str, Any]], reply_name: str | None, reply_addr: str | None) -> list[Outgoing]:
        """Turn ``[(node name, message)]`` into stream frames to the members' addresses."""
        result: list[Outgoing] = []
        members = self.swim.members
        for dst, msg in outs:
            m = members.get(dst)
            if m is not None:
                addr = m.addr
            elif dst == reply_name and reply_addr is not None:
                addr = reply_addr  # a peer we do not know yet (still joining): answer where it wrote from
            else:
                self.counters["intent_no_route"] += 1
                continue
            try:
                data = encode(self.name, msg)
            except Exception as exc:  # an unencodable message is a bug in a sub-core: count, drop
                self.counters["intent_errors"] += 1
                self.last_error = f"encode {type(msg).__name__}: {exc}"
                continue
            self.counters["intent_messages_sent"] += 1
            self.counters["intent_bytes_sent"] += len(data)
            result.append(Outgoing(addr, data, True))
        return result

    def _membership_changed(self, mark: int, now: float) -> list[Outgoing]:
        """Tell blob transfer about peers that died or left during the last membership call.

        Reads the events this call appended without consuming them: drivers
        (the simulator, the daemon) drain ``swim.events`` themselves.
        """
        events = self.swim.events
        out: list[Outgoing] = []
        for ev in events[mark:]:
            if ev.kind in _GONE and self.blobs is not None:
                blobs = self.blobs
                out += self._translate(self._guard(lambda: blobs.peer_dead(ev.node, now)), None, None)
        return out

    # -- local actions ------------------------------------------------------------

    def leave(self, now: float) -> list[Outgoing]:
        """Start a graceful leave."""
        if self.blobs is None:
            return self.swim.leave(now)
        mark = len(self.swim.events)
        out = self.swim.leave(now)
        return out + self._membership_changed(mark, now)

    def fetch_blob(
        self,
        sha256: str,
        peers: Iterable[str],
        now: float,
        expected_size: int | None = None,
        verify: Any = None,
    ) -> list[Outgoing]:
        """Start fetching a blob from ``peers`` (names), nearest first by Vivaldi estimate."""
        if self.blobs is None:
            return []
        blobs = self.blobs
        ranked = []
        for p in sorted(set(peers)):
            rtt = self.swim.estimate_rtt(self.name, p)
            ranked.append((p, rtt if rtt is not None else float("inf")))
        return self._translate(self._guard(lambda: blobs.fetch(sha256, ranked, now, expected_size, verify)), None, None)

    def update_meta(self, meta: NodeMeta, now: float) -> None:
        """Change this node's metadata; it spreads through gossip."""
        self.swim.update_meta(meta, now)

    def drain_events(self) -> list[MemberEvent]:
        """Membership changes since the last call."""
        ev, self.swim.events = self.swim.events, []
        return ev

    # -- queries ------------------------------------------------------------------

    @property
    def meta(self) -> NodeMeta:
        """This node's current metadata."""
        return self.swim.meta

    def estimate_rtt(self, a: str, b: str) -> float | None:
        """Vivaldi RTT estimate (seconds) between two known nodes."""
        return self.swim.estimate_rtt(a, b)


__all__ = ["NodeCore", "Alive", "Dead", "Suspect"]
