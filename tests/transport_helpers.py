"""Shared helpers for the transport tests: identities, transports, and a lossy reordering channel."""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from mesh.transport import Datagram, Delivered, LocalIdentity, SecureTransport, TransportConfig

PSK = bytes(range(32))
OTHER_PSK = bytes(range(1, 33))


def ident(name: str) -> LocalIdentity:
    """A deterministic identity for ``name``."""
    # Hashed seeds: X25519 clamping ignores the low 3 bits of byte 0, so padded names could collide.
    return LocalIdentity.from_seeds(
        hashlib.sha256(b"ed25519:" + name.encode()).digest(), hashlib.sha256(b"x25519:" + name.encode()).digest()
    )


def admit_all(node_id: str, ed25519: bytes) -> bool:
    return True


def transport(
    name: str,
    seed: int = 0,
    psk: bytes = PSK,
    admit: Callable[[str, bytes], bool] = admit_all,
    config: TransportConfig | None = None,
) -> SecureTransport:
    return SecureTransport(ident(name), psk, admit, random.Random(seed), config)


@dataclass
class Net:
    """Carries datagrams between named transports with seeded loss and delay (hence reordering)."""

    nodes: dict[str, SecureTransport]
    seed: int = 0
    loss: float = 0.0
    min_delay: float = 0.001
    max_delay: float = 0.05
    lose: Callable[[Datagram], bool] | None = None  # extra, targeted loss
    now: float = 0.0
    delivered: dict[str, list[Delivered]] = field(default_factory=dict)
    _q: list[tuple[float, int, str, str, bytes]] = field(default_factory=list)
    _seq: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        for n in self.nodes:
            self.delivered.setdefault(n, [])

    def send(self, src: str, out: list[Datagram]) -> None:
        for d in out:
            if self.lose is not None and self.lose(d):
                continue
            if self.rng.random() < self.loss:
                continue
            self._seq += 1
            at = self.now + self.rng.uniform(self.min_delay, self.max_delay)
            heapq.heappush(self._q, (at, self._seq, src, str(d.addr), d.data))

    def run(self, until: float) -> None:
        """Deliver datagrams and fire timers in time order until ``until``."""
        while True:
            t_net = self._q[0][0] if self._q else None
            deadlines: list[tuple[float, str]] = []
            for n, t in sorted(self.nodes.items()):
                d = t.next_deadline()
                if d is not None:
                    deadlines.append((d, n))
            t_tick = min(deadlines)[0] if deadlines else None
            times = [x for x in (t_net, t_tick) if x is not None]
            nxt = min(times) if times else None
            if nxt is None or nxt > until:
                self.now = until
                return
            self.now = max(self.now, nxt)
            if t_net is not None and t_net == nxt:
                _, _, src, dst, data = heapq.heappop(self._q)
                got, out = self.nodes[dst].receive_datagram(src, data, self.now)
                self.delivered[dst] += got
                self.send(dst, out)
            else:
                for d, n in deadlines:
                    if d <= self.now:
                        self.send(n, self.nodes[n].tick(self.now))
