"""User-space fault-injecting relay for loopback process tests (toxiproxy style).

Why: this kernel has no ``netem`` qdisc, so delay, loss, duplication, reordering and
partitions between real daemons are injected by a relay that sits between them on
loopback.  A relay runs one background thread (plain sockets + ``selectors``) so it never
blocks pytest's main thread; it is a context manager and ``stop()`` returns within a bound,
also when the test body raises.  Every random decision comes from a seeded
``random.Random`` per direction, so a run is reproducible for a given packet sequence.

Directions: ``up`` is client -> target, ``down`` is target -> client.

Only 127.0.0.0/8 and ::1 are accepted, for listening and for targets; anything else
raises :class:`RelayError` before a socket is made.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import random
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import pytest

Direction = Literal["up", "down"]
DIRECTIONS: tuple[Direction, Direction] = ("up", "down")
Which = Literal["up", "down", "both"]

_MAX_DATAGRAM = 65535
# Reads per readiness event are bounded so one busy socket cannot starve the timers.
_READ_BATCH = 64
# Longest sleep in select(): the loop re-checks its stop flag and lifetime at least this often.
_TICK = 0.05


class RelayError(ValueError):
    """A relay was misconfigured (non-loopback address, bad fault value) or failed to stop."""


def loopback_host(host: str) -> str:
    """Return ``host`` as a loopback IP literal, or raise RelayError (no DNS lookups)."""
    literal = "127.0.0.1" if host == "localhost" else host
    try:
        ip = ipaddress.ip_address(literal)
    except ValueError:
        raise RelayError(
            f"relay address {host!r} is not an IP literal; tests may only use 127.0.0.0/8 or ::1"
        ) from None
    if not ip.is_loopback:
        raise RelayError(
            f"relay refuses non-loopback address {host}: tests may only use 127.0.0.0/8 or ::1"
        )
    return literal


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


@dataclass(slots=True, frozen=True)
class Faults:
    """Faults applied to one direction; probabilities in [0, 1], times in seconds."""

    delay: float = 0.0
    jitter: float = 0.0  # uniform in [-jitter, +jitter] around delay, clamped at 0
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0  # probability a datagram is held back
    reorder_gap: int = 1  # a held datagram is released after this many later ones
    reorder_timeout: float = 0.5  # ... or after this long, so a quiet link never keeps it
    blackhole: bool = False  # partition: drop everything in this direction
    bandwidth: float = 0.0  # TCP only: bytes per second, 0 = unlimited

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise RelayError(f"fault {name}={value} is not a probability in [0, 1]")
        for name in ("delay", "jitter", "reorder_timeout", "bandwidth"):
            if getattr(self, name) < 0:
                raise RelayError(f"fault {name}={getattr(self, name)} must be >= 0")
        if self.reorder_gap < 1:
            raise RelayError(f"fault reorder_gap={self.reorder_gap} must be >= 1")


_FAULT_NAMES = frozenset(f.name for f in fields(Faults))


class _Relay:
    """Shared lifecycle: thread, wake-up pipe, faults per direction, counters, lifetime bound."""

    _counter_names: tuple[str, ...] = ()
    _kind = "relay"

    def __init__(
        self,
        target: tuple[str, int],
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        seed: int = 0,
        max_lifetime: float = 120.0,
        **faults: Any,
    ) -> None:
        self.target: tuple[str, int] = (loopback_host(target[0]), int(target[1]))
        self._listen_host = loopback_host(listen_host)
        self._listen_port = listen_port
        self._max_lifetime = max_lifetime
        self._lock = threading.Lock()
        self._faults: dict[Direction, Faults] = {d: Faults() for d in DIRECTIONS}
        # One stream per direction: the decisions on `up` do not depend on how `down` interleaves.
        self._rng: dict[Direction, random.Random] = {
            d: random.Random(f"{seed}:{d}") for d in DIRECTIONS
        }
        self._counters: dict[Direction, dict[str, int]] = {
            d: dict.fromkeys(self._counter_names, 0) for d in DIRECTIONS
        }
        self._extra: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._seq = itertools.count()
        self._listen: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        if faults:
            self.set(**faults)  # validated before any socket exists, so a bad value leaks nothing
        # Made by start(): an unstarted (or refused) relay holds no file descriptors.
        self._sel: selectors.BaseSelector
        self._wake_r: socket.socket

    # ---- configuration (any thread) ----
    def set(self, direction: Which = "both", **changes: Any) -> None:
        """Change faults at run time, e.g. ``relay.set(loss=0.1)`` or ``set("down", delay=0.05)``."""
        unknown = set(changes) - _FAULT_NAMES
        if unknown:
            raise RelayError(f"unknown fault(s) {sorted(unknown)}; known: {sorted(_FAULT_NAMES)}")
        dirs: tuple[Direction, ...] = DIRECTIONS if direction == "both" else (direction,)
        if any(d not in DIRECTIONS for d in dirs):
            raise RelayError(f"direction {direction!r} is not one of up, down, both")
        with self._lock:
            new = {d: replace(self._faults[d], **changes) for d in dirs}
            self._faults.update(new)
        self._wake()

    def faults(self, direction: Direction) -> Faults:
        """Return the faults currently applied to ``direction``."""
        with self._lock:
            return self._faults[direction]

    def partition(self, direction: Which = "both") -> None:
        """Blackhole traffic in ``direction`` (both = full partition, one side = one-way loss)."""
        self.set(direction, blackhole=True)

    def heal(self) -> None:
        """End any partition in both directions."""
        self.set("both", blackhole=False)

    def stats(self) -> dict[str, dict[str, int]]:
        """Snapshot of the counters: ``{"up": {...}, "down": {...}, "relay": {...}}``."""
        with self._lock:
            out: dict[str, dict[str, int]] = {d: dict(self._counters[d]) for d in DIRECTIONS}
            out["relay"] = dict(self._extra)
        return out

    def count(self, name: str, direction: Which = "both") -> int:
        """One counter, summed over ``direction`` when it is ``both``."""
        snap = self.stats()
        dirs = DIRECTIONS if direction == "both" else (direction,)
        return sum(snap[d][name] for d in dirs)

    def wait_until(self, predicate: Any, timeout: float = 2.0) -> bool:
        """Poll ``predicate(self)`` until true or ``timeout``; returns the last result."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.005)
        return bool(predicate(self))

    @property
    def address(self) -> tuple[str, int]:
        """The loopback address clients should send to (valid after ``start()``)."""
        if self._listen is None:
            raise RelayError(f"{self._kind} relay is not started")
        host, port = self._listen.getsockname()[:2]
        return host, port

    # ---- lifecycle ----
    def start(self) -> _Relay:
        """Bind the listening socket and start the relay thread."""
        if self._thread is not None:
            raise RelayError(f"{self._kind} relay already started")
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        try:
            self._listen = self._make_listener()
        except OSError:
            self._close_all()
            raise
        self._sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._thread = threading.Thread(
            target=self._main, name=f"{self._kind}-relay-{self.address[1]}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread and close every socket; raise RelayError if it does not stop in time."""
        self._stop.set()
        self._wake()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                raise RelayError(f"{self._kind} relay thread did not stop within {timeout}s")
        self._close_all()
        if self._error is not None:
            err, self._error = self._error, None
            raise RelayError(f"{self._kind} relay thread failed: {err!r}") from err

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- relay thread ----
    def _wake(self) -> None:
        if self._wake_w is None:
            return  # not started: the loop reads the faults when it starts
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending, or we are closed: the loop ticks anyway

    def _main(self) -> None:
        deadline = time.monotonic() + self._max_lifetime
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                self._step()
        except BaseException as exc:  # surfaced to the test by stop()
            self._error = exc

    def _bump(self, direction: Direction, name: str, by: int = 1) -> None:
        with self._lock:
            self._counters[direction][name] += by

    def _bump_extra(self, name: str, by: int = 1) -> None:
        with self._lock:
            self._extra[name] = self._extra.get(name, 0) + by

    def _drain_wake(self) -> None:
        try:
            self._wake_r.recv(4096)
        except BlockingIOError:
            pass

    def _jittered(self, f: Faults, r: float) -> float:
        return max(0.0, f.delay + (2.0 * r - 1.0) * f.jitter)

    # subclass hooks
    def _make_listener(self) -> socket.socket:
        raise NotImplementedError

    def _step(self) -> None:
        raise NotImplementedError

    def _close_all(self) -> None:
        for s in (self._listen, getattr(self, "_wake_r", None), self._wake_w):
            if s is not None:
                s.close()
        sel = getattr(self, "_sel", None)
        if sel is not None:
            sel.close()


@dataclass(slots=True)
class _Held:
    remaining: int
    deadline: float
    due: float
    copies: int
    data: bytes
    sock: socket.socket
    dest: tuple[str, int]


class UdpRelay(_Relay):
    """Forward datagrams to ``target`` and replies back to the sender, with faults per direction.

    Each client address gets its own upstream socket, so the target sees a distinct source
    per client (like a NAT).  Counters per direction: ``received`` (datagrams in),
    ``dropped`` (loss or blackhole), ``duplicated`` (extra copies made), ``reordered`` (held
    back), ``delayed`` (given a delay > 0), ``forwarded`` (datagrams sent out, copies
    included), ``send_errors``.  Once the queues are empty:
    ``forwarded == received - dropped + duplicated``.
    """

    _counter_names = (
        "received", "forwarded", "dropped", "duplicated", "reordered", "delayed", "send_errors",
    )
    _kind = "udp"

    def __init__(self, target: tuple[str, int], **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self._clients: dict[tuple[str, int], socket.socket] = {}
        self._queue: list[tuple[float, int, socket.socket, bytes, tuple[str, int], Direction]] = []
        self._held: dict[Direction, list[_Held]] = {d: [] for d in DIRECTIONS}
        self._blocked: frozenset[tuple[str, int]] = frozenset()

    def block_clients(self, clients: Any) -> None:
        """Drop every datagram from and to these client addresses, both ways (a partition from some
        peers only); ``block_clients(())`` ends it. Counted as ``dropped`` and, relay-wide, ``blocked``."""
        blocked = frozenset((loopback_host(h), int(p)) for h, p in clients)
        with self._lock:
            self._blocked = blocked
        self._wake()

    def _make_listener(self) -> socket.socket:
        s = socket.socket(_family(self._listen_host), socket.SOCK_DGRAM)
        s.setblocking(False)
        try:
            s.bind((self._listen_host, self._listen_port))
        except OSError:
            s.close()
            raise
        self._sel.register(s, selectors.EVENT_READ, ("listen", None))
        return s

    def _upstream_for(self, client: tuple[str, int]) -> socket.socket:
        up = self._clients.get(client)
        if up is None:
            up = socket.socket(_family(self.target[0]), socket.SOCK_DGRAM)
            up.setblocking(False)
            up.bind((self._listen_host if _family(self._listen_host) == _family(self.target[0])
                     else self.target[0], 0))
            self._sel.register(up, selectors.EVENT_READ, ("upstream", client))
            self._clients[client] = up
            self._bump_extra("clients")
        return up

    def _step(self) -> None:
        now = time.monotonic()
        timeout = _TICK
        if self._queue:
            timeout = min(timeout, max(0.0, self._queue[0][0] - now))
        for held in self._held.values():
            for h in held:
                timeout = min(timeout, max(0.0, h.deadline - now))
        for key, _ in self._sel.select(timeout):
            kind, client = key.data
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            if kind == "wake":
                self._drain_wake()
                continue
            for _ in range(_READ_BATCH):
                try:
                    data, src = sock.recvfrom(_MAX_DATAGRAM)
                except BlockingIOError:
                    break
                except OSError:
                    self._bump_extra("recv_errors")
                    break
                src = (src[0], src[1])
                if kind == "listen":
                    if self._is_blocked("up", src):
                        continue
                    self._ingress("up", data, self._upstream_for(src), self.target)
                elif src == self.target:
                    assert self._listen is not None
                    if self._is_blocked("down", client):
                        continue
                    self._ingress("down", data, self._listen, client)
                else:
                    self._bump_extra("foreign")  # not from the target: a relay is not an open proxy
        self._flush(time.monotonic())

    def _is_blocked(self, d: Direction, client: tuple[str, int]) -> bool:
        with self._lock:
            blocked = client in self._blocked
        if blocked:
            self._bump(d, "received")
            self._bump(d, "dropped")
            self._bump_extra("blocked")
        return blocked

    def _ingress(self, d: Direction, data: bytes, sock: socket.socket, dest: tuple[str, int]) -> None:
        now = time.monotonic()
        with self._lock:
            f = self._faults[d]
        rng = self._rng[d]
        # Always draw the same four numbers, so changing one fault does not shift the others.
        r_loss, r_dup, r_reorder, r_jitter = rng.random(), rng.random(), rng.random(), rng.random()
        self._bump(d, "received")
        if f.blackhole or r_loss < f.loss:
            self._bump(d, "dropped")
            return
        copies = 1
        if r_dup < f.duplicate:
            copies = 2
            self._bump(d, "duplicated")
        delay = self._jittered(f, r_jitter)
        if delay > 0:
            self._bump(d, "delayed")
        due = now + delay
        if r_reorder < f.reorder:
            self._bump(d, "reordered")
            self._held[d].append(_Held(f.reorder_gap, now + f.reorder_timeout, due, copies, data, sock, dest))
            return
        self._enqueue(d, due, copies, data, sock, dest)
        # Held datagrams go out after this later one: same or later due time, later sequence.
        still: list[_Held] = []
        for h in self._held[d]:
            h.remaining -= 1
            if h.remaining <= 0:
                self._enqueue(d, max(h.due, due), h.copies, h.data, h.sock, h.dest)
            else:
                still.append(h)
        self._held[d] = still

    def _enqueue(self, d: Direction, due: float, copies: int, data: bytes,
                 sock: socket.socket, dest: tuple[str, int]) -> None:
        for _ in range(copies):
            heapq.heappush(self._queue, (due, next(self._seq), sock, data, dest, d))

    def _flush(self, now: float) -> None:
        for d in DIRECTIONS:
            if any(h.deadline <= now for h in self._held[d]):
                late = [h for h in self._held[d] if h.deadline <= now]
                self._held[d] = [h for h in self._held[d] if h.deadline > now]
                for h in late:
                    self._enqueue(d, max(h.due, now), h.copies, h.data, h.sock, h.dest)
        while self._queue and self._queue[0][0] <= now:
            _, _, sock, data, dest, d = heapq.heappop(self._queue)
            try:
                sock.sendto(data, dest)
                self._bump(d, "forwarded")
            except OSError:
                self._bump(d, "send_errors")

    def _close_all(self) -> None:
        for s in self._clients.values():
            s.close()
        self._clients.clear()
        super()._close_all()


class _Conn:
    __slots__ = ("client", "upstream", "eof")

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.eof: set[Direction] = set()

    def close(self) -> None:
        for s in (self.client, self.upstream):
            try:
                s.close()
            except OSError:
                pass


class TcpRelay(_Relay):
    """Accept connections and pipe bytes both ways to ``target`` with delay and a bandwidth cap.

    Order is preserved: a chunk is never sent before the previous chunk of the same
    direction.  ``partition()`` stalls every connection (nothing read, nothing sent, new
    connections wait in the backlog) until ``heal()``; ``cut()`` closes every existing
    connection at once.  Loss, duplication and reordering do not apply to a byte stream.
    Counters per direction: ``bytes_received``, ``bytes_forwarded``, ``chunks``,
    ``delayed``; relay-wide: ``accepted``, ``closed``, ``cut``, ``connect_errors``,
    ``send_errors``.
    """

    _counter_names = ("bytes_received", "bytes_forwarded", "chunks", "delayed")
    _kind = "tcp"

    def __init__(self, target: tuple[str, int], *, send_timeout: float = 1.0, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self._conns: list[_Conn] = []
        self._queue: list[tuple[float, int, _Conn, Direction, bytes | None]] = []
        self._last_due: dict[tuple[int, Direction], float] = {}
        self._send_timeout = send_timeout
        self._registered = False
        self._cut_requested = threading.Event()

    def set(self, direction: Which = "both", **changes: Any) -> None:
        """Change delay, jitter, bandwidth or blackhole at run time (datagram faults are refused)."""
        stream_faults = {k for k in ("loss", "duplicate", "reorder") if changes.get(k)}
        if stream_faults:
            raise RelayError(
                f"TCP relay cannot apply {sorted(stream_faults)} to a byte stream; "
                "use delay/jitter/bandwidth, partition() or cut()"
            )
        super().set(direction, **changes)

    def cut(self) -> None:
        """Close every existing connection now (peers see EOF); new connections still work."""
        self._cut_requested.set()
        self._wake()
        # Wait (bounded) so the caller can rely on the cut having happened when this returns.
        deadline = time.monotonic() + 2.0
        while self._cut_requested.is_set() and time.monotonic() < deadline:
            time.sleep(0.005)
        if self._cut_requested.is_set():
            raise RelayError("tcp relay did not perform cut() within 2s")

    def _make_listener(self) -> socket.socket:
        s = socket.socket(_family(self._listen_host), socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((self._listen_host, self._listen_port))
            s.listen(64)
        except OSError:
            s.close()
            raise
        s.setblocking(False)
        return s

    def _stalled(self) -> bool:
        with self._lock:
            return any(self._faults[d].blackhole for d in DIRECTIONS)

    def _set_registered(self, on: bool) -> None:
        # While partitioned, nothing is read: unregistering avoids a busy select() loop.
        if on == self._registered:
            return
        assert self._listen is not None
        socks: list[tuple[socket.socket, tuple[str, Any]]] = [(self._listen, ("listen", None))]
        for c in self._conns:
            if "up" not in c.eof:
                socks.append((c.client, ("up", c)))
            if "down" not in c.eof:
                socks.append((c.upstream, ("down", c)))
        for s, data in socks:
            if on:
                self._sel.register(s, selectors.EVENT_READ, data)
            else:
                self._sel.unregister(s)
        self._registered = on

    def _step(self) -> None:
        if self._cut_requested.is_set():
            self._set_registered(False)
            n = len(self._conns)
            for c in self._conns:
                c.close()
            self._conns.clear()
            self._queue.clear()
            self._last_due.clear()
            self._bump_extra("cut", n)
            self._cut_requested.clear()
        stalled = self._stalled()
        self._set_registered(not stalled)
        now = time.monotonic()
        timeout = _TICK
        if self._queue and not stalled:
            timeout = min(timeout, max(0.0, self._queue[0][0] - now))
        for key, _ in self._sel.select(timeout):
            kind, conn = key.data
            if kind == "wake":
                self._drain_wake()
            elif self._stalled():
                continue  # a partition set while select() waited: accept and read nothing
            elif kind == "listen":
                self._accept()
            else:
                self._read(kind, conn)
        if not self._stalled():
            self._flush(time.monotonic())

    def _accept(self) -> None:
        assert self._listen is not None
        for _ in range(_READ_BATCH):
            try:
                client, _addr = self._listen.accept()
            except BlockingIOError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=self._send_timeout)
            except OSError:
                self._bump_extra("connect_errors")
                client.close()
                continue
            for s in (client, upstream):
                s.settimeout(self._send_timeout)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(client, upstream)
            self._conns.append(conn)
            self._sel.register(client, selectors.EVENT_READ, ("up", conn))
            self._sel.register(upstream, selectors.EVENT_READ, ("down", conn))
            self._bump_extra("accepted")

    def _read(self, d: Direction, conn: _Conn) -> None:
        src = conn.client if d == "up" else conn.upstream
        try:
            data = src.recv(65536)
        except OSError:
            data = b""  # reset by the peer: treat as end of stream
        now = time.monotonic()
        with self._lock:
            f = self._faults[d]
        if not data:
            conn.eof.add(d)
            self._sel.unregister(src)
            self._schedule(conn, d, None, now, f)  # the EOF travels behind the data, in order
            return
        self._bump(d, "bytes_received", len(data))
        self._schedule(conn, d, data, now, f)

    def _schedule(self, conn: _Conn, d: Direction, data: bytes | None, now: float, f: Faults) -> None:
        delay = self._jittered(f, self._rng[d].random())
        if data is not None and delay > 0:
            self._bump(d, "delayed")
        key = (id(conn), d)
        due = max(now + delay, self._last_due.get(key, 0.0))
        if data is not None and f.bandwidth > 0:
            due += len(data) / f.bandwidth
        self._last_due[key] = due
        heapq.heappush(self._queue, (due, next(self._seq), conn, d, data))

    def _flush(self, now: float) -> None:
        while self._queue and self._queue[0][0] <= now:
            _, _, conn, d, data = heapq.heappop(self._queue)
            if conn not in self._conns:
                continue
            dst = conn.upstream if d == "up" else conn.client
            try:
                if data is None:
                    dst.shutdown(socket.SHUT_WR)
                else:
                    dst.sendall(data)
                    self._bump(d, "bytes_forwarded", len(data))
                    self._bump(d, "chunks")
            except OSError:
                self._bump_extra("send_errors")
                self._drop(conn)
                continue
            if conn.eof >= {"up", "down"} and not any(q[2] is conn for q in self._queue):
                self._drop(conn)

    def _drop(self, conn: _Conn) -> None:
        for s in (conn.client, conn.upstream):
            try:
                self._sel.unregister(s)
            except (KeyError, ValueError):
                pass  # already unregistered after its EOF
        conn.close()
        self._conns.remove(conn)
        self._bump_extra("closed")

    def _close_all(self) -> None:
        for c in self._conns:
            c.close()
        self._conns.clear()
        super()._close_all()


class Relays:
    """Starts relays and stops every one of them on exit, also when the test fails."""

    def __init__(self) -> None:
        self._started: list[_Relay] = []

    def udp(self, target: tuple[str, int], **kwargs: Any) -> UdpRelay:
        """Start a UdpRelay to ``target`` (see UdpRelay for faults)."""
        relay = UdpRelay(target, **kwargs)
        relay.start()
        self._started.append(relay)
        return relay

    def tcp(self, target: tuple[str, int], **kwargs: Any) -> TcpRelay:
        """Start a TcpRelay to ``target`` (see TcpRelay for faults)."""
        relay = TcpRelay(target, **kwargs)
        relay.start()
        self._started.append(relay)
        return relay

    def stop_all(self) -> None:
        """Stop every started relay, newest first; raise the first failure after trying all."""
        errors: list[RelayError] = []
        for relay in reversed(self._started):
            try:
                relay.stop()
            except RelayError as exc:
                errors.append(exc)
        self._started.clear()
        if errors:
            raise errors[0]

    def __enter__(self) -> Relays:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


@pytest.fixture
def relays() -> Iterator[Relays]:
    """Pytest fixture: ``relays.udp(target, loss=0.1)``; all are stopped at teardown."""
    with Relays() as group:
        yield group
