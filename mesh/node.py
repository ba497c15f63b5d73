"""``NodeCore``: the one sans-IO object the daemon and the simulator both drive.

It decodes envelopes, dispatches them to the protocol cores it composes
(membership always; replicated intent and blob transfer when given) and returns
the bytes to send. It never reads a clock, a socket or the global random.

The intent cores (``crdt.intent.IntentNode``, ``crdt.blob.BlobTransfer``) speak in
node *names*; membership knows each name's address, so the node core translates
on the way out and encodes every sync or blob message as a stream (reliable)
frame: sync updates and blob chunks are far larger than a datagram.

The driver seam (the whole contract; ``docs/DRIVER.md`` explains it for driver authors)
----------------------------------------------------------------------------------------

Inputs — every call takes ``now``, the driver's **monotonic** clock in seconds:

* ``start(now)`` once, then ``tick(now, wall=...)`` whenever ``next_deadline()`` comes due.
  ``wall`` is the driver's **wall** clock (seconds since the epoch); it is only ever stored
  inside replicated records (deployment and placement times), never used for a timer.
* ``receive(src, data, now, reliable, peer=..., stream=...)`` for every datagram or stream
  frame. ``peer`` is the node id the driver's *authenticated session* proved (Noise
  handshake, key checked against membership); it overrides the envelope's self-declared
  sender, and an envelope whose sender disagrees with it is dropped and counted
  (``sender_mismatch``). ``stream`` is the driver's opaque handle of the stream the frame
  came on; ``src`` is only the source address (on TCP an ephemeral port).
* ``stream_event(peer, kind, now)``: ``connect_failed``, ``timed_out`` (the driver's
  ``stream_timeout`` expired without progress), ``closed``, ``backpressure`` (the peer's
  send buffer is full) and ``drained`` (it emptied again). Blob transfer fails over to the
  next peer; sync releases the peer's push budget, retries anti-entropy elsewhere and
  pushes to other peers while one is backpressured.
* ``persisted(token, now)`` after the driver made every persist effect up to ``token``
  durable (see below); it returns what to send, and ``take_acks()`` the writes now acknowledged.

Outputs — :class:`mesh.wire.Outgoing`. ``node``/``key`` say which node a message is for
(its id and expected public key, when membership knows them; every message to a member,
datagram or stream), so the driver can pick or open the right encrypted session. A message that answers a stream frame carries that
frame's ``stream`` handle: the driver writes it back on the same stream and ignores
``dst``.

Effects — ``take_blob_puts()`` returns verified blobs to write (``blob_stored`` reports
them done); ``take_effects()`` returns the :class:`crdt.store.PersistEffect` list the intent
core produced (only when it runs on an :class:`crdt.store.EffectStore`). The driver
performs them in order off its event loop (a worker thread; ``SqliteStore.run`` commits a
batch with one fsync) and then calls ``persisted(last_token, now)``; ``take_acks()`` then returns the
:class:`crdt.intent.WriteAck` of every write that is now durable. No write is acknowledged,
none is pushed and no answer carrying it leaves before that call: acknowledged means durable.

Reflection — nobody is contacted at an address no authenticated node vouched for
(``docs/TRANSPORT.md``, "Reflection"). A member is *vouched at an address* once its key was
proven there: an authenticated message from it arrived from that address, or the driver
reported a completed handshake with it there (:meth:`NodeCore.vouch`); and a member the
driver holds a session with (``session_with``) is reached over that session wherever it runs. Membership messages to a
member at an address not vouched for are *first contacts*: a trial window of
``FIRST_CONTACT_WINDOW`` seconds (one handshake and its retries; every message in it shares
that handshake) opens at most ``FIRST_CONTACT_RATE`` times a second, and a trial that ended
without a vouch is retried only after a per-address backoff (5 s doubling to 300 s); anything
else to that address is dropped and counted (``contacts_refused``). Answers to the address an
authenticated message came from, stream replies and the operator's seed addresses are never
held back. An ``IndirectPing`` is relayed only to a target this node knows at that address
(``indirect_pings_refused``). The simulator (``name_outgoing = False``: its network is the
authenticator) skips all of this.

Threads — the core belongs to one thread (the driver's loop). Worker threads (wasm host
functions) reach the replicated KV through ``runtime.kv.LoopKV``, which marshals each call
onto that loop and waits for durability there.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Iterable

from mesh.errors import WireError
from mesh.invoke.messages import INVOKE_TYPES
from mesh.membership import MembershipConfig, NodeMeta, SwimCore
from mesh.membership.messages import Alive, Dead, IndirectPing, Suspect
from mesh.membership.state import MemberEvent
from mesh.protocol import BLOB_TYPES, SYNC_TYPES
from mesh.wire import MAX_DATAGRAM, MAX_FRAME, Outgoing, StreamHandle, Unknown, decode, encode

if TYPE_CHECKING:
    from crdt.blob import BlobPut, BlobTransfer
    from crdt.intent import IntentNode, WriteAck
    from crdt.store import PersistEffect

_MEMBERSHIP_TYPES = frozenset(range(1, 16))  # see mesh.membership.messages
_GONE = frozenset({"dead", "left"})
STREAM_EVENTS = frozenset({"connect_failed", "timed_out", "closed", "backpressure", "drained"})
# What a guard lets through: only the interpreter's own control-flow exceptions. Everything else
# that derives from BaseException (pyo3's PanicException from a Rust extension, a stray
# StopIteration subclass, ...) is a failure of one input and is counted. trio.Cancelled is not
# listed because it cannot arise here: trio raises it only at a checkpoint (an ``await``) and
# the core never awaits; the module check below is defence in depth without importing trio.
_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit)
# First contacts (see "Reflection" above). The window covers one Noise handshake with its
# retransmissions (the transport gives a dial 1 s per attempt); the backoff bounds what a ghost
# member at someone else's address costs that address: one handshake per node per 300 s at most.
FIRST_CONTACT_WINDOW = 3.0
FIRST_CONTACT_BACKOFF = 5.0
FIRST_CONTACT_BACKOFF_MAX = 300.0
FIRST_CONTACT_RATE = 10.0  # new trial windows per second (a token bucket of FIRST_CONTACT_BURST)
FIRST_CONTACT_BURST = 32.0
MAX_CONTACT_TRIALS = 4096  # addresses tracked at once; beyond it new first contacts wait


def _must_propagate(exc: BaseException) -> bool:
    return isinstance(exc, _PASS_THROUGH) or type(exc).__module__.partition(".")[0] == "trio"


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
        # Receive counts of every frame are plain attributes (an int add, not a dict update,
        # per datagram), folded into ``counters`` when it is read.
        self._rx_datagrams = self._rx_frames = self._rx_bytes = 0
        self._counters: dict[str, int] = {
            "datagrams_received": 0,
            "frames_received": 0,
            "bytes_received": 0,
            "wire_errors": 0,
            "unknown_type": 0,
            "sender_mismatch": 0,
            "stream_events": 0,
            "stream_events_unknown": 0,
            "membership_errors": 0,
        }
        if intent is not None or blobs is not None:
            self._counters |= {
                "intent_messages_sent": 0,
                "intent_bytes_sent": 0,
                "intent_no_route": 0,
                "intent_errors": 0,
                "intent_datagrams_refused": 0,
            }
        self.last_error: str | None = None
        self.wall: float | None = None  # the driver's latest wall-clock reading
        # Name the node every membership message is for (``Outgoing.node``/``key``). A driver
        # that does not seal per node (the simulator: its network is the authenticator) may
        # switch this off to save the lookup per message and the address index.
        self.name_outgoing = True
        self._by_addr: dict[str, str] = {}
        self._by_addr_size: tuple[int, int] = (-1, -1)  # (members, address moves) the index was built at
        self._acks: list[WriteAck] = []
        # Invocation messages (mesh/invoke) are for the driver, which runs workloads: a driver that
        # serves invocations sets this to a list and drains it (``take_invocations``) after each
        # ``receive``; left None (the simulator), they are unknown types.
        self.invoke_inbox: list[tuple[str, Any, StreamHandle]] | None = None
        # Reflection guard (daemon mode only, see the module docstring).
        self._vouched: dict[str, str] = {}  # member name -> address its key was proven at
        self._trials: dict[str, list[float]] = {}  # address -> [window end, next trial at, backoff]
        self._trial_tokens = FIRST_CONTACT_BURST
        self._trial_at = now
        self._counters |= {"first_contacts": 0, "contacts_refused": 0, "indirect_pings_refused": 0}
        # Driver query (optional): ``session_with(node, reliable)`` is True while an authenticated
        # session (a datagram session, or a stream when ``reliable``) with ``node`` exists. What is
        # sent to that node then rides the session to wherever it authenticated, whatever address
        # membership names, so it is no first contact (a node behind NAT or a relay is never
        # vouched at its advertised address by the nodes it dialled).
        self.session_with: Callable[[str, bool], bool] | None = None

    @property
    def counters(self) -> dict[str, int]:
        """The node's counters by name (``mesh/metrics.py`` exports them); the live dict."""
        c = self._counters
        c["datagrams_received"] = self._rx_datagrams
        c["frames_received"] = self._rx_frames
        c["bytes_received"] = self._rx_bytes
        return c

    # -- driver interface ---------------------------------------------------------

    def start(self, now: float) -> list[Outgoing]:
        """First call after construction: contact seeds."""
        if self.swim.seeds and self.swim.num_members() <= 1:
            return self._first_contacts(self._name_nodes(self.swim.join(self.swim.seeds, now)), now)
        return []

    def receive(
        self,
        src: str,
        data: bytes,
        now: float,
        reliable: bool = False,
        *,
        peer: str | None = None,
        stream: StreamHandle | None = None,
    ) -> list[Outgoing]:
        """Feed bytes received from address ``src``; return what to send.

        ``peer`` is the authenticated node id of the driver's session (it wins over the
        envelope's sender); ``stream`` is the handle replies to this frame travel back on.
        """
        if stream is not None:
            reliable = True
        if reliable:
            self._rx_frames += 1
        else:
            self._rx_datagrams += 1
        self._rx_bytes += len(data)
        try:
            env = decode(data, MAX_FRAME if reliable else MAX_DATAGRAM)
        except WireError as exc:
            # Bad input is counted and dropped; it never raises out of the core.
            self.counters["wire_errors"] += 1
            self.last_error = str(exc)
            return []
        sender = env.sender
        if peer is not None and sender != peer:
            # A session authenticated as `peer` speaking for someone else: a forgery or a bug.
            self.counters["sender_mismatch"] += 1
            self.last_error = f"envelope claims sender {sender[:64]!r} on a session authenticated as {peer[:64]!r}"
            return []
        t = env.msg.TYPE
        if t in _MEMBERSHIP_TYPES:
            if self.name_outgoing and isinstance(env.msg, IndirectPing):
                target = self.swim.members.peek(env.msg.target)
                if target is None or target.addr != env.msg.addr:
                    # Relay a probe only to a member we know at that address: an IndirectPing
                    # must not make us send to an address of the requester's choosing.
                    self.counters["indirect_pings_refused"] += 1
                    return []
            if self.blobs is None:
                # self._swim_guard(self.swim.handle, ...), inlined: this runs for every datagram
                try:
                    out = self.swim.handle(src, env, now)
                except BaseException as exc:
                    if _must_propagate(exc):
                        raise
                    self._count_error("membership_errors", exc)
                    out = []
            else:
                mark = len(self.swim.events)
                out = self._swim_guard(self.swim.handle, src, env, now)
                out += self._membership_changed(mark, now)
            if stream is not None and out:
                # SwimCore answers a stream message (push-pull) to its source address; on
                # a real transport that is the peer's ephemeral port, so the answer goes
                # back on the request's stream instead.
                key = self._key_of(sender)
                out = [replace(o, node=sender, key=key, stream=stream) if o.reliable and o.dst == src else o for o in out]
            if not self.name_outgoing:
                return out
            self._vouch_sender(sender, src)
            return self._first_contacts(self._name_nodes(out, src, sender), now, src) if out else out
        if self.name_outgoing:
            self._vouch_sender(sender, src)
        if t in SYNC_TYPES and self.intent is not None:
            if not reliable:
                # Sync is stream-only: a datagram cannot be answered on a stream, and a spoofable
                # source must not make us send records anywhere (reflection).
                self.counters["intent_datagrams_refused"] += 1
                return []
            intent, msg, reply_to = self.intent, env.msg, (sender, src, stream)
            return self._translate(self._guard(lambda: intent.receive(sender, msg, now, reply_to)), sender, src, stream)
        if t in BLOB_TYPES and self.blobs is not None:
            return self._run_intent(self.blobs.receive, env.msg, sender, src, stream, now)
        if t in INVOKE_TYPES and self.invoke_inbox is not None:
            if stream is None:
                # Stream-only, like sync: a reply must go back on the request's stream.
                self.counters["invoke_datagrams_refused"] = self.counters.get("invoke_datagrams_refused", 0) + 1
                return []
            self.invoke_inbox.append((sender, env.msg, stream))
            return []
        self.counters["unknown_type"] += 1
        if env.piggyback and isinstance(env.msg, Unknown) and stream is None:
            # A newer peer's message type: its piggybacked membership updates are still
            # ours to use, so a mixed-version mesh keeps disseminating during an upgrade.
            mark = len(self.swim.events)
            out = self._swim_guard(self.swim.handle, src, env, now)
            if self.blobs is not None:
                out += self._membership_changed(mark, now)
            return self._first_contacts(self._name_nodes(out, src, sender), now, src) if out else out
        return []

    def tick(self, now: float, wall: float | None = None) -> list[Outgoing]:
        """Run the timers due at ``now`` (monotonic); ``wall`` updates the record clock."""
        if wall is not None:
            self.wall = wall
            if self.intent is not None:
                self.intent.wall = wall
        if self.intent is None and self.blobs is None:
            try:  # self._swim_guard(self.swim.tick, now), inlined: this runs for every timer
                out = self.swim.tick(now)
            except BaseException as exc:
                if _must_propagate(exc):
                    raise
                self._count_error("membership_errors", exc)
                out = []
            return self._first_contacts(self._name_nodes(out), now) if out and self.name_outgoing else out
        mark = len(self.swim.events)
        out = self._first_contacts(self._name_nodes(self._swim_guard(self.swim.tick, now)), now)
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
                out += self._first_contacts(self._translate(self._guard(lambda: intent.tick(now, self.swim.live_peers())), None, None), now)
        return out

    def stream_event(self, peer: str, kind: str, now: float) -> list[Outgoing]:
        """Driver input about the stream to ``peer``: connect_failed, timed_out, closed, backpressure, drained."""
        if kind not in STREAM_EVENTS:
            self.counters["stream_events_unknown"] += 1
            self.last_error = f"unknown stream event {kind[:40]!r}"
            return []
        self.counters["stream_events"] += 1
        out: list[Outgoing] = []
        intent = self.intent
        if intent is not None:
            self._guard(lambda: intent.stream_event(peer, kind, now))
        blobs = self.blobs
        if blobs is not None:
            out += self._translate(self._guard(lambda: blobs.stream_event(peer, kind, now)), None, None)
        return out

    def take_effects(self) -> list[PersistEffect]:
        """Persist effects the driver must perform off its loop, in order (then call :meth:`persisted`)."""
        return self.intent.take_effects() if self.intent is not None else []

    def persisted(self, token: int, now: float) -> list[Outgoing]:
        """Every persist effect up to ``token`` is durable: acknowledge the writes (see :meth:`take_acks`)
        and send the answers that waited for them, on the streams their requests came on."""
        intent = self.intent
        if intent is None:
            return []
        try:
            self._acks += intent.persisted(token, now)
            released = intent.take_released()
        except BaseException as exc:
            if _must_propagate(exc):
                raise
            self._count_error("intent_errors", exc)
            return []
        out: list[Outgoing] = []
        for (sender, src, stream), msgs in released:
            out += self._translate(msgs, sender, src, stream)
        return out

    def take_acks(self) -> list[WriteAck]:
        """Writes acknowledged (durable) since the last call, oldest first."""
        acks, self._acks = self._acks, []
        return acks

    def take_invocations(self) -> list[tuple[str, Any, StreamHandle]]:
        """Invocation requests and replies received since the last call: ``(sender, message, stream)``."""
        if not self.invoke_inbox:
            return []
        got, self.invoke_inbox = self.invoke_inbox, []
        return got

    def take_blob_puts(self) -> list[BlobPut]:
        """Verified blobs the driver must store durably off its loop (then call :meth:`blob_stored`)."""
        return self.blobs.take_puts() if self.blobs is not None else []

    def blob_stored(self, sha256: str, now: float, error: str | None = None) -> list[Outgoing]:
        """The driver stored a blob (or failed to, with ``error``): its fetch completes."""
        blobs = self.blobs
        if blobs is None:
            return []
        return self._translate(self._guard(lambda: blobs.stored(sha256, now, error)), None, None)

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has work."""
        d = self.swim.next_deadline()
        if self.intent is None and self.blobs is None:
            return d
        for sub in (self.intent, self.blobs):
            if sub is not None:
                e = sub.next_deadline()
                if e is not None and (d is None or e < d):
                    d = e
        return d

    # -- reflection guard ---------------------------------------------------------

    def vouch(self, node: str, addr: str) -> None:
        """Driver input: a session with ``node`` (its key proven) runs at ``addr`` (a handshake completed).

        From now on membership messages to ``node`` at ``addr`` are not first contacts.
        """
        m = self.swim.members.peek(node)
        if m is None or m.addr != addr or self._vouched.get(node) == addr:
            return
        if len(self._vouched) >= 2 * len(self.swim.members) + 64:  # forget members gone or moved
            members = self.swim.members
            self._vouched = {n: a for n, a in self._vouched.items() if (x := members.peek(n)) is not None and x.addr == a}
        self._vouched[node] = addr
        self._trials.pop(addr, None)

    def vouched(self, node: str) -> str | None:
        """The address ``node``'s key was proven at, if any (read-only)."""
        return self._vouched.get(node)

    def _vouch_sender(self, sender: str, src: str) -> None:
        """An authenticated message from ``sender`` came from ``src``: vouched there if that is its address."""
        if self._vouched.get(sender) != src:
            self.vouch(sender, src)

    def _first_contacts(self, out: list[Outgoing], now: float, reply_addr: str | None = None) -> list[Outgoing]:
        """Drop (and count) messages to members at addresses not vouched for, beyond the first-contact budget."""
        if not out or not self.name_outgoing:
            return out
        vouched, session = self._vouched, self.session_with
        keep: list[Outgoing] = []
        for o in out:
            node = o.node
            # Unnamed: a seed address from the operator (the driver sends no unnamed datagram).
            if node is None or o.stream is not None or o.dst == reply_addr or vouched.get(node) == o.dst:
                keep.append(o)
            elif session is not None and session(node, o.reliable):
                keep.append(o)
            elif self._may_contact(o.dst, now):
                keep.append(o)
            else:
                self.counters["contacts_refused"] += 1
        return keep

    def _may_contact(self, addr: str, now: float) -> bool:
        trial = self._trials.get(addr)
        if trial is not None:
            if now < trial[0]:
                return True  # inside the trial window: shares its handshake
            if now < trial[1]:
                return False  # the trial ended without a vouch: back off
        elif len(self._trials) >= MAX_CONTACT_TRIALS:
            self._trials = {a: t for a, t in self._trials.items() if now < t[1]}  # expired backoffs
            if len(self._trials) >= MAX_CONTACT_TRIALS:
                return False
        tokens = min(FIRST_CONTACT_BURST, self._trial_tokens + (now - self._trial_at) * FIRST_CONTACT_RATE)
        self._trial_at = now
        if tokens < 1.0:
            self._trial_tokens = tokens
            return False
        self._trial_tokens = tokens - 1.0
        backoff = FIRST_CONTACT_BACKOFF if trial is None else min(2 * trial[2], FIRST_CONTACT_BACKOFF_MAX)
        self._trials[addr] = [now + FIRST_CONTACT_WINDOW, now + FIRST_CONTACT_WINDOW + backoff, backoff]
        self.counters["first_contacts"] += 1
        return True

    # -- intent plumbing ----------------------------------------------------------

    def _guard(self, call: Any) -> list[tuple[str, Any]]:
        """Run a sub-core call; a failure is counted and logged, never raised to the driver."""
        try:
            return list(call())
        except BaseException as exc:  # a bug, hostile input or Rust panic in a sub-core must not stop the node
            if _must_propagate(exc):
                raise
            self._count_error("intent_errors", exc)
            return []

    def _swim_guard(self, fn: Any, *args: Any) -> list[Outgoing]:
        """Run a membership call; a failure is counted (``membership_errors``), never raised."""
        try:
            return fn(*args)  # type: ignore[no-any-return]
        except BaseException as exc:
            if _must_propagate(exc):
                raise
            self._count_error("membership_errors", exc)
            return []

    def _count_error(self, counter: str, exc: BaseException) -> None:
        self.counters[counter] += 1
        try:
            text = str(exc)
        except Exception:  # a broken __str__ must not escape either
            text = "?"
        self.last_error = f"{exc.__class__.__name__}: {text[:200]}"

    def _run_intent(self, handler: Any, msg: Any, sender: str, src: str, stream: StreamHandle | None, now: float) -> list[Outgoing]:
        return self._translate(self._guard(lambda: handler(sender, msg, now)), sender, src, stream)

    def _name_nodes(self, out: list[Outgoing], reply_addr: str | None = None, reply_name: str | None = None) -> list[Outgoing]:
        """Name the member each SwimCore message is for, so the driver can seal it for that node.

        SwimCore addresses members by address; an answer to ``reply_addr`` is for the
        (authenticated) ``reply_name``, anything else is looked up by address. A join
        push-pull to a seed address names no node: the handshake tells who answered.
        """
        if not self.name_outgoing:
            return out
        peek = self.swim.members.peek  # read-only: never copies a shared record
        by_addr = self._by_addr
        for i, o in enumerate(out):
            if o.node is not None:
                continue
            dst = o.dst
            if reply_name is not None and dst == reply_addr:
                name: str | None = reply_name
                m = peek(reply_name)
            else:
                name = by_addr.get(dst)
                m = peek(name) if name is not None else None
                if m is None or m.addr != dst:  # not indexed yet, or the member moved
                    name = self._name_at(dst)
                    if name is None:
                        continue
                    by_addr = self._by_addr
                    m = peek(name)
            out[i] = Outgoing(dst, o.data, o.reliable, name, (m.key or None) if m is not None else None, o.stream)
        return out

    def _name_at(self, addr: str) -> str | None:
        """The member at ``addr``; the index is rebuilt when membership grew or an address moved."""
        members = self.swim.members
        name = self._by_addr.get(addr)
        if name is not None:
            m = members.peek(name)
            if m is not None and m.addr == addr:
                return name
        elif (len(members), self.swim.addr_moves) == self._by_addr_size:
            return None  # an address no member has (a seed, a node still joining)
        self._by_addr = {m.addr: n for n, m in members.items()}
        self._by_addr_size = (len(members), self.swim.addr_moves)
        return self._by_addr.get(addr)

    def _key_of(self, name: str) -> bytes | None:
        """The public key membership holds for ``name``, if any."""
        m = self.swim.members.peek(name)
        return (m.key or None) if m is not None else None

    def _translate(
        self,
        outs: list[tuple[str, Any]],
        reply_name: str | None,
        reply_addr: str | None,
        stream: StreamHandle | None = None,
    ) -> list[Outgoing]:
        """Turn ``[(node name, message)]`` into stream frames for those nodes.

        A message to the node whose stream frame we are handling goes back on that stream;
        anything else is addressed by the member's address, name and key.
        """
        result: list[Outgoing] = []
        members = self.swim.members
        for dst, msg in outs:
            m = members.peek(dst)
            reply = dst == reply_name
            if m is not None:
                addr = m.addr
            elif reply and (stream is not None or reply_addr is not None):
                addr = reply_addr or dst  # a peer we do not know yet (still joining)
            else:
                self.counters["intent_no_route"] += 1
                continue
            try:
                data = encode(self.name, msg)
            except BaseException as exc:  # an unencodable message is a bug in a sub-core: count, drop
                if _must_propagate(exc):
                    raise
                self.counters["intent_errors"] += 1
                self.last_error = f"encode {type(msg).__name__}: {exc}"
                continue
            self.counters["intent_messages_sent"] += 1
            self.counters["intent_bytes_sent"] += len(data)
            key = (m.key or None) if m is not None else None
            result.append(Outgoing(addr, data, True, dst, key, stream if reply else None))
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
        # Named like every other SwimCore output: a driver seals a datagram only for a named node,
        # so an unnamed leave gossip would be dropped and only the next gossip round would carry it.
        if self.blobs is None:
            return self._first_contacts(self._name_nodes(self.swim.leave(now)), now)
        mark = len(self.swim.events)
        out = self._first_contacts(self._name_nodes(self.swim.leave(now)), now)
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
