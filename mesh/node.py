"""``NodeCore``: the one sans-IO object the daemon and the simulator both drive.

It decodes envelopes, dispatches them to the protocol cores it composes
(membership now; replication and scheduling plug in beside it) and returns the
bytes to send. Drivers feed it three things only — received bytes, the time,
and timer ticks — and it never reads a clock, a socket or the global random.
"""

from __future__ import annotations

import random
from typing import Iterable

from mesh.errors import WireError
from mesh.membership import MembershipConfig, NodeMeta, SwimCore
from mesh.membership.messages import Alive, Dead, Suspect
from mesh.membership.state import MemberEvent
from mesh.wire import MAX_DATAGRAM, MAX_FRAME, Outgoing, decode

_MEMBERSHIP_TYPES = frozenset(range(1, 16))


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
    ) -> None:
        self.name = name
        self.addr = addr
        self.rng = rng
        self.swim = SwimCore(name, addr, meta, config, rng, now, incarnation=incarnation, seeds=seeds)
        self.counters: dict[str, int] = {
            "datagrams_received": 0,
            "frames_received": 0,
            "bytes_received": 0,
            "wire_errors": 0,
            "unknown_type": 0,
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
        if env.msg.TYPE in _MEMBERSHIP_TYPES:
            return self.swim.handle(src, env, now)
        self.counters["unknown_type"] += 1
        return []

    def tick(self, now: float) -> list[Outgoing]:
        """Run the timers due at ``now``."""
        return self.swim.tick(now)

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has work."""
        return self.swim.next_deadline()

    # -- local actions ------------------------------------------------------------

    def leave(self, now: float) -> list[Outgoing]:
        """Start a graceful leave."""
        return self.swim.leave(now)

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
