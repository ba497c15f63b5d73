"""Daemons whose traffic all passes a fault-injecting relay (one relay pair per daemon).

Membership advertises addresses, so a daemon advertises its relay (``--advertise 127.0.0.1:R``)
while it binds its own port P; a UDP relay and a TCP relay both listen on R and forward to P.
Every peer therefore reaches the daemon through that relay: datagrams sent *to* the daemon pass
its relay ``up``; answers go back to the source address they came from, which is the relay's
per-client upstream socket, so they pass the same relay ``down``. Either way each datagram crosses
exactly one relay, once: a relay delay ``d`` each way adds ``2 d`` to every round trip, and a loss
``p`` each way drops each datagram with probability ``p``.

Streams (push-pull, sync) cross the TCP relay, which can delay and stall (partition) but not drop
bytes: TCP would retransmit them anyway. Datagram faults (loss, reordering, duplication) apply to
the UDP relay only. Every relay is stopped at the end (``RelayMesh`` is a context manager), also on
failure; the daemons are stopped by the :class:`ProcessGroup` they were started in.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

from tests.harness.daemons import Mesh, Node
from tests.harness.procs import ProcError, ProcessGroup, free_port_pair
from tests.harness.relay import RelayError, TcpRelay, UdpRelay


class RelayPair:
    """A UDP and a TCP relay on one loopback port, both forwarding to one daemon port."""

    def __init__(self, target_port: int, *, seed: int, max_lifetime: float) -> None:
        for _ in range(20):
            udp = UdpRelay(("127.0.0.1", target_port), seed=seed, max_lifetime=max_lifetime)
            udp.start()
            port = udp.address[1]
            tcp = TcpRelay(("127.0.0.1", target_port), listen_port=port, seed=seed, max_lifetime=max_lifetime)
            try:
                tcp.start()
            except OSError as exc:
                udp.stop()
                if exc.errno == errno.EADDRINUSE:
                    continue  # that UDP port's TCP twin is taken: draw another
                raise
            self.udp, self.tcp, self.port = udp, tcp, port
            return
        raise RelayError("no loopback port free for both a UDP and a TCP relay")

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set(self, **faults: Any) -> None:
        """Apply faults both ways; datagram-only faults (loss, reorder, duplicate) go to UDP only."""
        self.udp.set(**faults)
        stream = {k: v for k, v in faults.items() if k not in ("loss", "reorder", "duplicate", "reorder_gap",
                                                                 "reorder_timeout")}
        if stream:
            self.tcp.set(**stream)

    def stop(self) -> None:
        errors: list[RelayError] = []
        for r in (self.tcp, self.udp):
            try:
                r.stop()
            except RelayError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


class RelayMesh:
    """A :class:`Mesh` in which node ``name`` is reached only through ``relays[name]``."""

    def __init__(self, group: ProcessGroup, root: Path, *, mesh_file: Path | None = None, profile: str = "lan",
                 max_lifetime: float = 300.0) -> None:
        self.mesh = Mesh(group, root, mesh_file=mesh_file, profile=profile)
        self.relays: dict[str, RelayPair] = {}
        self.max_lifetime = max_lifetime

    def __enter__(self) -> RelayMesh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_relays()

    def stop_relays(self) -> None:
        errors: list[RelayError] = []
        for pair in reversed(list(self.relays.values())):
            try:
                pair.stop()
            except RelayError as exc:
                errors.append(exc)
        self.relays.clear()
        if errors:
            raise errors[0]

    def start(self, name: str, *, seeds: list[str] = (), **kwargs: Any) -> Node:
        """Start daemon ``name`` behind its own relay pair (made on first start, kept on restart)."""
        node = self.mesh.nodes.get(name)
        extra = list(kwargs.pop("extra", None) or [])
        if node is not None:
            pair = self.relays[name]
            return self.mesh.start(name, seeds=list(seeds), port=node.port,
                                   extra=extra + ["--advertise", pair.addr], **kwargs)
        for attempt in range(5):
            port = self._free_port()
            pair = RelayPair(port, seed=len(self.relays), max_lifetime=self.max_lifetime)
            if pair.port == port:  # the relay drew the port we had just picked and released
                pair.stop()
                continue
            self.relays[name] = pair
            try:
                return self.mesh.start(name, seeds=list(seeds), port=port,
                                       extra=extra + ["--advertise", pair.addr], **kwargs)
            except ProcError as exc:
                # Something (an ephemeral port of another connection) took the port between the
                # pick and the daemon's bind: start over on another port with new relays.
                if "Address already in use" not in str(exc) or attempt == 4:
                    raise
                del self.relays[name]
                del self.mesh.nodes[name]
                pair.stop()
        raise RelayError(f"could not start {name} behind a relay")

    def _free_port(self) -> int:
        """A port free for both UDP and TCP and not one of our relays' or daemons'."""
        taken = {p.port for p in self.relays.values()} | {n.port for n in self.mesh.nodes.values()}
        return free_port_pair(avoid=taken)

    def addr(self, name: str) -> str:
        """The address peers use for ``name``: its relay's."""
        return self.relays[name].addr

    def partition(self, group_a: list[str], group_b: list[str]) -> None:
        """Drop every datagram between the two groups, none within either; stall every stream.

        Datagrams: a relay knows each client by its source address, which for a daemon is its bound
        UDP port, so each node's relay blocks the nodes of the other group, both ways (their requests
        and its answers to them). Streams: a daemon dials from an ephemeral port, so a TCP relay
        cannot tell who dialled; every TCP relay stalls until :meth:`heal` (within a group too,
        which only delays push-pull there: membership within a group runs on datagrams).
        """
        ports = {n: self.mesh.nodes[n].port for n in group_a + group_b}
        for mine, other in ((group_a, group_b), (group_b, group_a)):
            for n in mine:
                self.relays[n].udp.block_clients([("127.0.0.1", ports[o]) for o in other])
        for pair in self.relays.values():
            pair.tcp.partition()

    def heal(self) -> None:
        """End a :meth:`partition`."""
        for pair in self.relays.values():
            pair.udp.block_clients(())
            pair.tcp.heal()
