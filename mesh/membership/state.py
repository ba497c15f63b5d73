"""The SWIM + Lifeguard membership state machine (memberlist's state.go), sans-IO.

``SwimCore`` is fed decoded envelopes and the time, and returns the datagrams
and stream messages to send. It never reads a clock, never touches a socket
and draws every random choice from the ``random.Random`` it was given, so the
daemon and the simulator run exactly the same code and a seed replays a run.

Protocol summary (what memberlist does, and so do we):

* every ``probe_interval`` (scaled by local health) ping the next member of a
  shuffled round-robin list; no ack within ``probe_timeout`` → ask
  ``indirect_checks`` random peers to ping it (they answer ack or nack); still
  nothing by the end of the interval → *suspect* it;
* a suspicion becomes *dead* after Lifeguard's timeout, which shrinks as other
  nodes independently confirm it; the suspect refutes by re-announcing itself
  alive with a higher incarnation;
* ``Alive``/``Suspect``/``Dead`` updates ride piggybacked on every datagram and
  on gossip rounds, each retransmitted about ``mult * ceil(log10(N + 1))`` times;
* a periodic push-pull exchanges the full state with one random peer over a
  stream, and joining is a push-pull with a seed;
* a graceful leave is a ``Dead`` about oneself (state *left*, not *dead*).

Where we differ from memberlist, after a partition heals (issue 8): a remote
"dead" merged from a push-pull stays a local suspicion that is neither gossiped
nor counted as a confirmation (the subject is told directly); our own ``Alive``
goes ahead of the gossip backlog; a dead member coming back makes the next
Serf-style reconnect prompt (see ``merge_states`` and ``_reconnect_soon``); and
gossip sent to a suspect or recently dead member does not count against an
update's retransmit limit (see ``_gossip``: during a partition half of every
refutation's copies went to the unreachable side); a Suspect or Dead below the
incarnation we hold alive is answered with our Alive, straight to its sender
(memberlist ignores it; see ``_note_stale``).

Hostile or buggy input (every rule counted in ``counters``):

* **Names**: a member is only ever created under a valid name and address
  (``mesh.wire.NAME_PATTERN``; see ``mesh.membership.config``), including from
  push-pull entries and bootstrap lists (``bad_names``, ``bad_states``).
* **Incarnation window**: an update more than ``config.incarnation_window``
  above the incarnation we hold for its subject — ourselves included — is
  refused (``incarnation_jumps``). We refute only within the window, so our own
  incarnation stays far below what every decoder accepts.
* **Public keys**: ``Alive`` and push-pull entries carry the member's raw
  Ed25519 public key (or nothing). An empty key stored is learnt from the first
  keyed ``Alive`` accepted. Once a key is known for a name, an update with a
  *different* key (empty included) is refused at any incarnation
  (``key_conflicts``), unless the member has been dead or left for longer than
  ``dead_node_reclaim_time`` (> 0) — the same rule that lets a new address
  reclaim a name. With reclaim disabled (0) a name with a new key comes back only
  after its tombstone is reaped. An ``Alive`` about ourselves with another key is
  refuted like any false claim. :meth:`SwimCore.member_key` gives a driver the
  key to expect at a member's address.
* **Piggyback**: undecodable or unknown items are skipped by the decoder and
  counted here (``piggyback_bad``, ``piggyback_unknown``); items beyond
  ``mesh.wire.MAX_PIGGYBACK`` (more than any node puts in a datagram) are not
  decoded at all (``piggyback_skipped``).
* **Member floods**: a member never seen before is admitted only while the table
  holds fewer than ``config.max_members`` (``members_refused_full``), within
  ``config.max_new_members_per_push_pull`` per push-pull message, and within a
  token bucket per sending node of ``config.max_new_members_per_peer`` per
  ``push_pull_interval`` (``members_refused_rate``). Members already held always
  update. A refused legitimate member arrives through a later push-pull.
"""

from __future__ import annotations

import bisect
import random
from array import array
import sys
import zlib
from dataclasses import dataclass, fields
from itertools import compress, repeat
from operator import and_, is_, ne
from enum import IntEnum
from typing import Any, Callable, Iterable

try:  # only the optional mypyc build (docs/SIMULATOR.md) reads it; a no-op without mypy installed
    from mypy_extensions import mypyc_attr
except ImportError:

    def mypyc_attr(*_: Any, **__: Any) -> Callable[[Any], Any]:
        return lambda cls: cls


from mesh.coords import Coordinate, PackedTable, VivaldiClient
from mesh.errors import ConfigError, WireError
from mesh.membership.awareness import Awareness
from mesh.membership.broadcast import BroadcastQueue
from mesh.membership.config import MembershipConfig
from mesh.membership.messages import (
    COORD_BUCKETS,
    DIGEST_BUCKETS,
    MAX_COORD_PAIRS,
    Ack,
    Alive,
    Dead,
    Gossip,
    IndirectPing,
    Nack,
    Ping,
    PushPull,
    PushPullCoords,
    PushPullDigest,
    PushPullState,
    Suspect,
    coord_ok,
    coord_values,
    decode_coord,
    meta_wire,
)
from mesh.membership.meta import NodeMeta
from mesh.membership.suspicion import Suspicion
from mesh.wire import (
    MAX_DATAGRAM,
    MAX_FRAME,
    Envelope,
    Outgoing,
    Unknown,
    encode,
    encode_broadcast,
    encode_payload,
    envelope_overhead,
    with_piggyback,
    is_valid_addr,
    is_valid_name,
)


class MemberState(IntEnum):
    """Liveness of a member as seen by one node."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


# The states as module constants: ``MemberState.ALIVE`` is a class attribute lookup through
# the enum's metaclass (~10x a global's cost), and these comparisons run per probe and message.
_ALIVE, _SUSPECT, _DEAD, _LEFT = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT


@dataclass(slots=True)
class Member:
    """One node's knowledge about one member."""

    name: str
    addr: str
    meta: NodeMeta
    incarnation: int
    state: MemberState
    state_change: float
    meta_wire: bytes | None = None  # encoded meta, cached for push-pull
    key: bytes = b""  # raw 32-byte Ed25519 public key, or empty when unknown


_MEMBER_FIELDS = tuple(f.name for f in fields(Member))


class _SharedMember(Member):
    """A member record that several tables hold at once (simulated nodes bootstrapped alike).

    Read-only: a :class:`MemberTable` hands out a private copy on ``get``/``[]``
    before anyone can change it, and a write that bypasses the table fails loudly.
    """

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        if not _building_shared:
            raise TypeError(f"member {self.name} is shared: take it from its MemberTable (get or []) to change it")
        super().__setattr__(name, value)


# True only while shared_member builds a record. (Built through __init__ rather than with
# object.__new__/object.__setattr__, which a mypyc-compiled class refuses: docs/SIMULATOR.md.)
_building_shared = False


def shared_member(m: Member) -> Member:
    """A read-only copy of ``m`` that many tables may hold (copy-on-access, see MemberTable)."""
    global _building_shared
    _building_shared = True
    try:
        return _SharedMember(*[getattr(m, f) for f in _MEMBER_FIELDS])
    finally:
        _building_shared = False


@mypyc_attr(native_class=False)  # mypyc compiles no list subclass: stays a Python class
class _SharedRecords(list[Member]):
    """The records :meth:`SwimCore.bootstrap` builds from ``states`` (checked) at ``now``, for
    nodes bootstrapped alike to share; with the entries they were built from, their names in
    order, and whether those are distinct."""

    __slots__ = ("entries", "names", "distinct", "_digest")

    def __init__(self, states: list[PushPullState], now: float) -> None:
        super().__init__()
        for st in states:
            m = Member(st.node, st.addr, st.decoded_meta(), st.incarnation, _ALIVE, now, key=st.key)
            m.meta_wire = st.meta_raw
            self.append(shared_member(m))
        self.entries = tuple(states)
        self.names = [st.node for st in states]
        self.distinct = len(set(self.names)) == len(states)
        self._digest: array[int] | None = None

    def state_digest(self) -> array[int]:
        """The state digest (see ``SwimCore.state_digest``) of a table of exactly these records."""
        if self._digest is None:
            d = array("Q", bytes(8 * DIGEST_BUCKETS))
            for m in self:
                h = _name_crc(m.name)
                d[h & (DIGEST_BUCKETS - 1)] ^= _member_part(h, m)
            self._digest = d
        return self._digest

    def built_from(self, states: list[PushPullState]) -> bool:
        """True if these records were built from the very objects of ``states``."""
        return len(self.entries) == len(states) and all(map(is_, self.entries, states))


def _built_from(m: Member, st: PushPullState) -> bool:
    """True if shared record ``m`` was built (by ``bootstrap``, after validation) from entry ``st``."""
    return (
        m.meta_wire is st.meta_raw and m.name == st.node and m.addr == st.addr and m.incarnation == st.incarnation and m.key == st.key
    )


@mypyc_attr(native_class=False)  # a dict subclass with a class-level alias: stays a Python class under mypyc
class MemberTable(dict[str, Member]):
    """A node's members by name; members shared with other nodes are copied on access.

    A simulation of N nodes that all start knowing all N would hold N² member
    records; bootstrapped alike, they share one record per member until a node
    touches it (``get``/``[]``), which swaps in the node's own copy. Bulk reads
    (iteration, ``peek``) do not copy.

    Every record is changed right after a ``get``/``[]`` (``peek`` and iteration hand
    out records to read). So the push-pull digests (``digest``, see
    ``SwimCore.state_digest``) are kept current here: a record handed out by
    ``get``/``[]`` or replaced has its part taken out of the digest until the next
    read of it puts it back as it is then, and a member added or removed adds or
    removes its part. Bulk changes (``update``, ``clear``, ...) drop the digest
    (``digest = None``): the next read recomputes it over the whole table.
    """

    __slots__ = ("digest",)
    peek = dict.get  # read-only lookup that never copies

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.digest: _Digest | None = None

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        m = dict.get(self, key)
        if m is None:
            return default
        dg = self.digest
        if dg is not None and key not in dg.out:
            dg.take_out(key, m)
        if type(m) is _SharedMember:
            m = self._own(key, m)
        return m

    def __getitem__(self, key: str) -> Member:
        m = dict.__getitem__(self, key)
        dg = self.digest
        if dg is not None and key not in dg.out:
            dg.take_out(key, m)
        if type(m) is _SharedMember:
            m = self._own(key, m)
        return m

    def __setitem__(self, key: str, value: Member) -> None:
        dg = self.digest
        if dg is not None and key not in dg.out:
            old = dict.get(self, key)
            if old is None:
                dg.coord_flip(key)  # a new member: its coordinate, if we hold one, now counts
                dg.out.add(key)
            else:
                dg.take_out(key, old)
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: str) -> None:
        m = dict.__getitem__(self, key)
        if self.digest is not None:
            self.digest.remove(key, m)
        dict.__delitem__(self, key)

    def pop(self, key: str, *default: Any) -> Any:  # type: ignore[override]
        m = dict.get(self, key)
        if m is not None and self.digest is not None:
            self.digest.remove(key, m)
        return dict.pop(self, key, *default)

    def popitem(self) -> Any:
        self.digest = None
        return dict.popitem(self)

    def setdefault(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.digest = None
        return dict.setdefault(self, key, default)

    def update(self, *args: Any, **kw: Any) -> None:  # type: ignore[override]
        self.digest = None
        dict.update(self, *args, **kw)

    def clear(self) -> None:
        self.digest = None
        dict.clear(self)

    def __ior__(self, other: Any) -> "MemberTable":  # type: ignore[override]
        self.digest = None
        dict.update(self, other)
        return self

    def _own(self, key: str, m: Member) -> Member:
        c = Member(*[getattr(m, f) for f in _MEMBER_FIELDS])
        dict.__setitem__(self, key, c)
        return c


JOIN_RETRY_MAX = 60.0  # seconds between join attempts of a node alone, at most (after backoff)


@dataclass(slots=True, frozen=True)
class MemberEvent:
    """A change in the local view, for drivers, metrics and reports."""

    kind: str  # join | alive | suspect | dead | left | update | refute | reap
    node: str
    incarnation: int
    time: float
    source: str = ""  # for suspect/dead: the node whose verdict this is (for a merge: the push-pull peer)
    origin: str = ""  # for suspect: "merge" when it comes from a push-pull's state, else ""


@dataclass(slots=True)
class _Probe:
    target: str
    seq: int
    sent_at: float
    indirect_at: float
    end_at: float
    acked: bool = False
    indirect_sent: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@dataclass(slots=True)
class _Relay:
    origin_addr: str
    origin_seq: int
    nack_at: float
    expires_at: float
    nacked: bool


_SEQ_MASK = 2**32 - 1
_PING, _ACK = Ping.TYPE, Ack.TYPE
_MAX_INCARNATION = 2**63 - 1  # what every decoder accepts
_MAX_RELAYS = 512  # indirect probes in flight for others; more is a flood
_MAX_CORRECTIONS = 4  # Alive records sent back for the stale verdicts of one datagram (see _note_stale)
_INF = float("inf")
# Entries per push-pull frame are sized to this many bytes, leaving MAX_FRAME headroom.
_PP_FRAME_BUDGET = 60_000
# Token buckets kept for senders of new members; beyond this, senders we have no bucket for share one.
_MAX_BUCKETS = 1024
# Above this many members a periodic push-pull opens with a digest (PushPullDigest) instead of
# the full state: at or below it the full state is about as small as the digest.
DIGEST_MIN_MEMBERS = 64
# Digests are kept as arrays of machine words ('Q' and 'I' are 8 and 4 bytes on every CPython
# platform we run on); on a big-endian CPU their wire form (little-endian) is byte-swapped.
if array("Q").itemsize != 8 or array("I").itemsize != 4:
    raise ImportError("mesh.membership.state needs 8-byte 'Q' and 4-byte 'I' arrays")
_BIG_ENDIAN = sys.byteorder == "big"


def _words_out(a: array[int]) -> bytes:
    """A digest array in its wire form (little-endian words)."""
    if _BIG_ENDIAN:
        a = array(a.typecode, a)
        a.byteswap()
    return a.tobytes()


def _words_in(typecode: str, data: bytes) -> array[int]:
    """A digest in its wire form as an array of words (``typecode`` 'Q' or 'I')."""
    a = array(typecode, data)
    if _BIG_ENDIAN:
        a.byteswap()
    return a


_U64_MASK = 2**64 - 1


class _CrcCache(dict[str, int]):
    """name -> CRC-32 of its UTF-8 bytes (its digest bucket is the low bits), computed on a
    miss (so a lookup is one C call). Bounded: cleared when full."""

    __slots__ = ()

    def __missing__(self, name: str) -> int:
        if len(self) >= _NAME_CRC_MAX:
            self.clear()
        h = self[name] = zlib.crc32(name.encode())
        return h


_NAME_CRC = _CrcCache()
_NAME_CRC_MAX = 65_536
_name_crc = _NAME_CRC.__getitem__  # the CRC-32 of a name, cached
_COORD_RANGE = range(COORD_BUCKETS)
_DIGEST_RANGE = range(DIGEST_BUCKETS)


def _member_part(h: int, m: Member) -> int:
    """A member's part of its bucket's state digest (``h``: the CRC-32 of its name)."""
    # (an IntEnum state hashes as its int)
    return hash((h, m.incarnation, m.state)) & _U64_MASK


class _Digest:
    """A member table's push-pull digests (see ``SwimCore.state_digest``), kept current
    by the table (:class:`MemberTable`) as members change, come and go.

    ``d`` and ``c`` are the state and coordinate digests as machine words (6 KiB,
    not lists of int objects). ``out`` names the records handed out for change:
    their parts are out of ``d`` until :meth:`sync` puts them back as they are
    then. Whether we hold a member's coordinate is read from the coordinate
    table's ``slots`` and ``present`` (see PackedTable). Holds neither the member
    table nor the core, so it makes no reference cycle.
    """

    __slots__ = ("d", "c", "out", "slots", "present")

    def __init__(self, d: array[int], c: array[int], coords: PackedTable) -> None:
        self.d, self.c = d, c  # c empty: not computed yet (see SwimCore.bootstrap)
        self.out: set[str] = set()
        self.slots, self.present = coords.slots, coords.present

    def take_out(self, name: str, m: Member) -> None:
        """Record ``m`` of ``name`` is about to change: its part leaves the digest until :meth:`sync`."""
        h = _name_crc(name)
        self.d[h & (DIGEST_BUCKETS - 1)] ^= _member_part(h, m)
        self.out.add(name)

    def remove(self, name: str, m: Member) -> None:
        """Member ``name`` (record ``m``) leaves the table."""
        if name in self.out:
            self.out.discard(name)  # its part is out already
        else:
            h = _name_crc(name)
            self.d[h & (DIGEST_BUCKETS - 1)] ^= _member_part(h, m)
        self.coord_flip(name)

    def coord_flip(self, name: str) -> None:
        """Member ``name`` joins or leaves the table: its coordinate, if we hold one, counts or stops counting."""
        i = self.slots.get(name)
        if i is not None and i < len(self.present) and self.present[i] and self.c:
            h = _name_crc(name)
            self.c[h & (COORD_BUCKETS - 1)] ^= h

    def sync(self, members: MemberTable) -> None:
        """Put the parts of the records handed out since the last call back, as they are now."""
        d, mask, peek = self.d, DIGEST_BUCKETS - 1, members.peek
        for name in self.out:
            h = _name_crc(name)
            d[h & mask] ^= _member_part(h, peek(name))  # type: ignore[arg-type]  # (``out`` names members)
        self.out.clear()


class _CoordDigest:
    """A node's coordinate digest kept current as coordinates of members come and go:
    the ``on_change`` of its coordinate table. Holds the member table and its digest,
    not the core, so it makes no reference cycle."""

    __slots__ = ("members", "dg", "c")

    def __init__(self, members: MemberTable, dg: _Digest) -> None:
        self.members = members
        self.dg = dg
        self.c = dg.c

    def __call__(self, name: str) -> None:
        if name in self.members:  # `in` reads only: the member table's digest is unchanged
            h = _name_crc(name)
            self.c[h & (COORD_BUCKETS - 1)] ^= h


class SwimCore:
    """Membership for one node: probe, suspect, refute, disseminate, push-pull."""

    def __init__(
        self,
        name: str,
        addr: str,
        meta: NodeMeta,
        config: MembershipConfig,
        rng: random.Random,
        now: float = 0.0,
        incarnation: int = 0,
        seeds: Iterable[str] = (),
        join_retry_interval: float = 5.0,
        key: bytes = b"",
    ) -> None:
        config.validate()
        if not is_valid_name(name):
            raise ConfigError(f"invalid node name {name!r:.60}: use 1-128 characters of A-Z a-z 0-9 . _ - : @ +")
        if not is_valid_addr(addr):
            raise ConfigError(f"invalid node address {addr!r:.60}: use 1-256 printable ASCII characters, no spaces")
        if type(key) is not bytes or len(key) not in (0, 32):
            raise ConfigError("node key must be a raw 32-byte Ed25519 public key (or empty)")
        self.name = name
        self.key = key
        self.addr = addr
        self.config = config
        self.rng = rng
        self.incarnation = incarnation
        self.meta = meta
        self.vivaldi = VivaldiClient(rng)
        # Peers' coordinates as packed float32s (their push-pull encoding): a node holds
        # one per member, so they are kept compact and re-sent without re-encoding.
        # Packed in one bytearray (PackedTable): 44 bytes per member instead of an 80-byte object.
        self.coords = PackedTable(4 * (self.vivaldi.config.dimensionality + 3))
        self._pp_row_bytes = 96.0  # running estimate of a push-pull entry's size, for chunking
        self.members: MemberTable = MemberTable(
            {name: Member(name, addr, meta, incarnation, _ALIVE, now, key=key)}
        )
        self.awareness = Awareness(config.awareness_max_multiplier)
        self.broadcasts = BroadcastQueue(lambda: config.retransmit_limit(self.num_members()))
        self.events: list[MemberEvent] = []
        self.counters: dict[str, int] = {
            "probes": 0,
            "indirect_probes": 0,
            "refutes": 0,
            "decode_errors": 0,
            "push_pulls": 0,
            "misdirected_pings": 0,
            "reconnects": 0,
            "bad_states": 0,
            "bad_names": 0,
            "incarnation_jumps": 0,
            "key_conflicts": 0,
            "piggyback_bad": 0,
            "piggyback_unknown": 0,
            "unknown_messages": 0,
            "relays_dropped": 0,
            "merge_suspicions": 0,
            "stale_corrections": 0,
            "piggyback_skipped": 0,
            "members_refused_full": 0,
            "members_refused_rate": 0,
        }
        # Admission of members never seen before (see the module docstring): who is introducing
        # them now ("" when nobody: a local call), what the current push-pull may still add, and
        # a token bucket [tokens, at] per sending node.
        self._introducer = ""
        self._stale: list[Member] | None = None  # while handling a datagram: see _note_stale
        self._merge_left = -1  # -1: not in a push-pull merge
        self._buckets: dict[str, list[float]] = {}
        self.leaving = False
        self.seeds = tuple(seeds)
        self.join_retry_interval = join_retry_interval
        self._seq = 0
        self._probe: _Probe | None = None
        self._probe_order: list[str] = []
        self._probe_index = 0
        self._next_probe_at = now + rng.random() * config.probe_interval
        self._next_gossip_at = now + config.gossip_interval
        self._next_push_pull_at = now + (0.5 + rng.random()) * config.push_pull_interval
        self._next_join_at: float | None = now if self.seeds else None
        self._seed_order: list[str] = list(self.seeds)
        self._seed_index = 0
        self._next_reconnect_at = now + config.reconnect_interval * (0.5 + rng.random())
        self._reconnect_boost = False  # next reconnect skips Serf's failed/alive coin (see _reconnect_soon)
        self._suspicions: dict[str, Suspicion] = {}
        self._relays: dict[int, _Relay] = {}
        self._relay_next = float("inf")  # earliest nack or expiry among the relays
        self._num_live = 1
        self.addr_moves = 0  # members that changed address (restarted elsewhere, DHCP, ...)
        self._next_reap_at = now + config.tombstone_time / 10
        self._alive_names: list[str] = []  # sorted, excluding self; ALIVE or SUSPECT
        self._recent_dead: dict[str, float] = {}  # dead/left member -> when, for gossip to the dead
        self._queue_alive(now)

    # ------------------------------------------------------------------ queries

    def num_members(self) -> int:
        """Members believed alive or suspect, including this node."""
        return self._num_live

    def live_peers(self) -> list[str]:
        """Sorted names of other members believed alive or suspect."""
        return list(self._alive_names)

    def view(self) -> dict[str, MemberState]:
        """This node's membership view: name → state."""
        return {n: m.state for n, m in self.members.items()}

    def share_peer_index(self, index: dict[str, int]) -> None:
        """Number this node's per-peer records (coordinates, latency filters) through
        ``index``, shared by every node of one process (a simulator): see PackedTable."""
        if len(self.coords):
            raise ValueError("share_peer_index must be called before any coordinate is known")
        self.coords = PackedTable(self.coords.width, index)
        self.vivaldi.share_index(index)

    def member_key(self, name: str) -> bytes | None:
        """The public key announced for member ``name``: None if unknown, b"" if it announced none."""
        m = self.members.peek(name)
        return None if m is None else m.key

    def estimate_rtt(self, a: str, b: str) -> float | None:
        """Estimated RTT in seconds between two nodes from their Vivaldi coordinates."""
        ca, cb = self.coordinate_of(a), self.coordinate_of(b)
        if ca is None or cb is None:
            return None
        return ca.distance(cb)

    def coordinate_of(self, node: str) -> Coordinate | None:
        """The Vivaldi coordinate we know for ``node`` (our own for ourselves)."""
        if node == self.name:
            return self.vivaldi.coord
        raw = self.coords.get(node)
        return None if raw is None else decode_coord(raw, node)

    # ------------------------------------------------------------------ local actions

    def join(self, seeds: Iterable[str], now: float) -> list[Outgoing]:
        """Join through the seed addresses: push-pull with one, the next one on retry.

        One seed at a time (in a shuffled order) rather than all at once keeps a
        mass start from making every seed ship its full state N times over; a node
        still alone after ``join_retry_interval`` tries the next seed.
        """
        self.seeds = tuple(s for s in seeds if s != self.addr)
        self._seed_order = list(self.seeds)
        self.rng.shuffle(self._seed_order)
        self._seed_index = 0
        self._next_join_at = None
        return self._join_next(now)

    def _join_next(self, now: float) -> list[Outgoing]:
        if not self._seed_order:
            return []
        seed = self._seed_order[self._seed_index % len(self._seed_order)]
        self._seed_index += 1
        # One address per attempt. Once every address was tried, back off (x2 per round of
        # the list, at most JOIN_RETRY_MAX) with +-20 % jitter, so a fleet that lost its seeds
        # does not redial in lock-step; the first round keeps the plain interval (the
        # simulator's traces depend on it, and a node starting with its seeds wants them fast).
        rounds = (self._seed_index - 1) // len(self._seed_order)
        if rounds == 0:
            self._next_join_at = now + self.join_retry_interval
        else:
            wait = min(self.join_retry_interval * 2 ** min(rounds, 8), max(JOIN_RETRY_MAX, self.join_retry_interval))
            self._next_join_at = now + wait * (0.8 + 0.4 * self.rng.random())
        return self._push_pull_to(seed, join=True, reply=False)

    def leave(self, now: float) -> list[Outgoing]:
        """Announce a graceful leave; the driver should keep running briefly to spread it."""
        self.leaving = True
        me = self.members[self.name]
        me.state = _LEFT
        me.state_change = now
        self.broadcasts.queue(self.name, encode_broadcast(Dead(self.incarnation, self.name, self.name)), urgent=True)
        self._next_gossip_at = min(self._next_gossip_at, now)
        return self._gossip(now)

    def update_meta(self, meta: NodeMeta, now: float) -> None:
        """Change our metadata: bump the incarnation and gossip it like any update.

        Ignored once we leave: an Alive with a higher incarnation would take us from left back to
        alive on every peer (which would then declare us dead once we are gone).
        """
        if self.leaving:
            return
        self.meta = meta
        self.incarnation += 1
        me = self.members[self.name]
        me.meta, me.incarnation, me.meta_wire = meta, self.incarnation, None
        self._emit("update", self.name, now)
        self._queue_alive(now)

    # ------------------------------------------------------------------ driver interface

    def handle(self, src: str, env: Envelope, now: float) -> list[Outgoing]:
        """Process one decoded envelope from ``src`` (an address)."""
        if not env.piggyback and not (env.bad_items or env.unknown_items or env.skipped_items):
            # A bare probe or ack (most datagrams): what _handle does for it, without the
            # piggyback loop and the introducer (only piggybacked updates admit members).
            msg = env.msg
            cls = type(msg)
            if cls is Ping:
                if msg.target != self.name:
                    self.counters["misdirected_pings"] += 1
                    return []
                # Ack(msg.seq, coordinate), encoded without building it: one per probe received
                return [self._datagram_bytes(src, encode_payload(self.name, _ACK, [msg.seq, self.vivaldi.packed()]))]
            if cls is Ack:
                out: list[Outgoing] = []
                self._on_ack(env.sender, msg, now, out)
                return out
        out = []
        if env.bad_items:
            self.counters["piggyback_bad"] += env.bad_items
        if env.unknown_items:
            self.counters["piggyback_unknown"] += env.unknown_items
        if env.skipped_items:
            self.counters["piggyback_skipped"] += env.skipped_items
        self._introducer = env.sender
        self._stale = []
        try:
            out = self._handle(src, env, now, out)
        finally:
            self._introducer = ""
            stale, self._stale = self._stale, None
        if stale:
            self.counters["stale_corrections"] += 1
            out.append(self._correction(src, stale))
        return out

    def _note_stale(self, m: Member) -> None:
        """A Suspect or Dead about ``m`` (or us) at an incarnation below the one we hold alive.

        Whoever sent it still holds the old incarnation, and if it holds a suspicion
        the timer will declare a live node dead: it missed the refutation. The
        refutation goes back to it directly (:meth:`_correction`), instead of being
        ignored, as memberlist does. One datagram per datagram that carried stale
        verdicts: no more traffic than the stale verdicts that caused it.
        """
        stale = self._stale
        if stale is not None and m.state == _ALIVE and len(stale) < _MAX_CORRECTIONS and all(x.name != m.name for x in stale):
            stale.append(m)

    def _correction(self, dst: str, stale: list[Member]) -> Outgoing:
        """A Gossip datagram to ``dst`` carrying our Alive of each member in ``stale`` (what fits half a datagram)."""
        alive: list[bytes] = []
        room = MAX_DATAGRAM // 2
        for m in stale:
            b = encode_broadcast(self._alive_of(m))
            room -= len(b) + 3
            if room < 0:
                break
            alive.append(b)
        return Outgoing(dst, encode(self.name, Gossip(), alive), False)  # nothing from the queue: it may hold the same

    def _alive_of(self, m: Member) -> Alive:
        if m.name == self.name:
            return Alive(self.incarnation, self.name, self.addr, self.meta, self.key)
        return Alive(m.incarnation, m.name, m.addr, m.meta, m.key)

    def _handle(self, src: str, env: Envelope, now: float, out: list[Outgoing]) -> list[Outgoing]:
        for update in env.piggyback:
            self._apply_update(update, now)
        msg = env.msg
        if isinstance(msg, Ping):
            if msg.target != self.name:
                self.counters["misdirected_pings"] += 1
            else:
                # Ack(msg.seq, coordinate), encoded without building it: one per probe received
                out.append(self._datagram_bytes(src, encode_payload(self.name, _ACK, [msg.seq, self._coord_wire()])))
        elif isinstance(msg, Ack):
            self._on_ack(env.sender, msg, now, out)
        elif isinstance(msg, Nack):
            p = self._probe
            if p is not None and p.seq == msg.seq and not p.acked:
                p.nacks += 1
        elif isinstance(msg, IndirectPing):
            self._on_indirect_ping(src, msg, now, out)
        elif isinstance(msg, PushPull):
            self._on_push_pull(src, env.sender, msg, now, out)
        elif isinstance(msg, PushPullDigest):
            self._on_digest(src, msg, out)
        elif isinstance(msg, PushPullCoords):
            self._on_coords(msg)
        elif isinstance(msg, (Alive, Suspect, Dead)):
            self._apply_update(msg, now)
        elif isinstance(msg, Gossip):
            pass
        elif isinstance(msg, Unknown):
            # A newer peer's message type: skipped, counted; its piggyback was used above.
            self.counters["unknown_messages"] += 1
        return out

    def tick(self, now: float) -> list[Outgoing]:
        """Run every timer that is due at ``now``."""
        out: list[Outgoing] = []
        if self._suspicions:
            for name in sorted(self._suspicions):
                s = self._suspicions[name]
                if now >= s.deadline:
                    del self._suspicions[name]
                    m = self.members.peek(name)
                    if m is not None and m.state == _SUSPECT and m.incarnation == s.incarnation:
                        self._apply_dead(Dead(s.incarnation, name, self.name), now)
        if self._relays and now >= self._relay_next:
            self._tick_relays(now, out)
        if self._next_join_at is not None and now >= self._next_join_at:
            if self._num_live <= 1 and self.seeds and not self.leaving:
                out.extend(self._join_next(now))
            else:
                self._next_join_at = None
        if now >= self._next_reap_at:
            self._next_reap_at = now + self.config.tombstone_time / 10
            self.reap(now)
        if not self.leaving:
            self._tick_probe(now, out)
            if now >= self._next_push_pull_at:
                self._next_push_pull_at = now + self.config.push_pull_period(self._num_live)
                peers = self._alive_names
                if peers:
                    target = self.members.peek(peers[self.rng.randrange(len(peers))])
                    self.counters["push_pulls"] += 1
                    out.extend(self._sync_to(target.addr))
            if now >= self._next_reconnect_at:
                self._next_reconnect_at = now + self.config.reconnect_interval
                self._reconnect(out)
        if now >= self._next_gossip_at:
            self._next_gossip_at = now + self.config.gossip_interval
            if len(self.broadcasts):
                out.extend(self._gossip(now))
        return out

    def next_deadline(self) -> float | None:
        """The earliest time at which :meth:`tick` has work to do."""
        # Runs after every event a node handles: plain comparisons, no min() calls.
        d = self._next_gossip_at if self.broadcasts else _INF
        if not self.leaving:
            p = self._probe
            if p is None:
                x = self._next_probe_at
            else:
                x = p.end_at if p.indirect_sent or p.acked else p.indirect_at
            if x < d:
                d = x
            if self._next_push_pull_at < d:
                d = self._next_push_pull_at
            if self._next_reconnect_at < d:
                d = self._next_reconnect_at
        j = self._next_join_at
        if j is not None and j < d:
            d = j
        if self._suspicions:
            for s in self._suspicions.values():
                if s.deadline < d:
                    d = s.deadline
        if self._relays and self._relay_next < d:
            d = self._relay_next
        return d

    # ------------------------------------------------------------------ probing

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & _SEQ_MASK
        return self._seq

    def _tick_probe(self, now: float, out: list[Outgoing]) -> None:
        p = self._probe
        if p is not None:
            if p.acked:
                self._probe = None
            elif not p.indirect_sent and now >= p.indirect_at:
                self._send_indirect(p, now, out)
            if p.indirect_sent and not p.acked and now >= p.end_at:
                self._probe_failed(p, now)
                self._probe = None
        if self._probe is None and now >= self._next_probe_at:
            self._start_probe(now, out)

    def _pick_probe_target(self) -> Member | None:
        peek = self.members.peek  # read-only: a probe changes no record
        for _ in range(2):
            order, i = self._probe_order, self._probe_index
            while i < len(order):
                m = peek(order[i])
                i += 1
                if m is not None and m.state in (_ALIVE, _SUSPECT):
                    self._probe_index = i
                    return m
            # Wrapped around: reshuffle the current membership (memberlist's resetNodes).
            self._probe_order = list(self._alive_names)
            self.rng.shuffle(self._probe_order)
            self._probe_index = 0
            if not self._probe_order:
                return None
        return None

    def _start_probe(self, now: float, out: list[Outgoing]) -> None:
        interval = self.config.probe_interval * (self.awareness.score + 1)  # awareness.scale(), inlined
        self._next_probe_at = now + interval
        target = self._pick_probe_target()
        if target is None:
            return
        seq = self._seq = (self._seq + 1) & _SEQ_MASK  # _next_seq(), inlined
        self.counters["probes"] += 1
        # Only the interval is scaled by local health, as in memberlist: waiting longer
        # for a UDP ack does not make it arrive, while a longer interval gives the
        # indirect probes and their nacks more time.
        self._probe = _Probe(target.name, seq, now, now + self.config.probe_timeout, now + interval)
        extra: list[bytes] = []
        if target.state == _SUSPECT:
            # Tell a suspect it is suspected so it can refute right away.
            extra.append(encode_broadcast(Suspect(target.incarnation, target.name, self.name)))
        # Ping(seq, target.name), encoded without building it: one per probe
        out.append(self._datagram_bytes(target.addr, encode_payload(self.name, _PING, [seq, target.name]), extra))

    def _send_indirect(self, p: _Probe, now: float, out: list[Outgoing]) -> None:
        p.indirect_sent = True
        # Leave the helpers a full probe timeout (their nacks come at 80% of it).
        p.end_at = max(p.end_at, now + self.config.probe_timeout)
        peek = self.members.peek  # read-only: choosing helpers changes no record
        target = peek(p.target)
        if target is None:
            return
        # Live members that are not suspect, the target excluded. _alive_names holds exactly the
        # ALIVE and SUSPECT members, and a member is SUSPECT exactly while it has a running
        # suspicion (only _start_suspicion makes one; every way out of SUSPECT drops it), so no
        # record needs reading: without suspicions the list is _alive_names minus the target.
        name, alive_names, suspicions = p.target, self._alive_names, self._suspicions
        if suspicions:
            candidates = [n for n in alive_names if n != name and n not in suspicions]
        else:
            i = bisect.bisect_left(alive_names, name)
            if i < len(alive_names) and alive_names[i] == name:
                candidates = alive_names[:i] + alive_names[i + 1 :]
            else:
                candidates = list(alive_names)
        k = min(self.config.indirect_checks, len(candidates))
        helpers = self.rng.sample(candidates, k) if k else []
        p.expected_nacks = len(helpers)
        for h in helpers:
            self.counters["indirect_probes"] += 1
            out.append(self._datagram(self.members.peek(h).addr, IndirectPing(p.seq, p.target, target.addr, True)))

    def _probe_failed(self, p: _Probe, now: float) -> None:
        # Lifeguard: missing nacks mean *our* network may be the problem.
        if p.expected_nacks > 0:
            self.awareness.apply_delta(p.expected_nacks - p.nacks)
        else:
            self.awareness.apply_delta(1)
        m = self.members.peek(p.target)
        if m is not None and m.state in (_ALIVE, _SUSPECT):
            self._apply_suspect(Suspect(m.incarnation, m.name, self.name), now)

    def _on_ack(self, sender: str, ack: Ack, now: float, out: list[Outgoing]) -> None:
        relay = self._relays.pop(ack.seq, None)
        if relay is not None:
            out.append(self._datagram(relay.origin_addr, Ack(relay.origin_seq, None)))
            return
        p = self._probe
        if p is None or p.seq != ack.seq or p.acked:
            return
        p.acked = True
        # Any successful probe, direct or relayed, is evidence our own link works
        # (memberlist applies -1 whenever probeNode returns on an ack); at 0 it stays 0.
        if self.awareness.score:
            self.awareness.apply_delta(-1)
        raw = ack.coord
        # A coordinate of other dimensions or with non-finite values is ignored (the ack counts).
        if raw is not None and sender == p.target:
            values = coord_values(raw, self.vivaldi.config.dimensionality)
            if values is not None:
                # Keyed by p.target, the name object the member table holds, not the decoder's copy.
                target = p.target
                self.coords[target] = raw
                self.vivaldi.update_packed(target, values, now - p.sent_at)

    def _coord_wire(self) -> bytes:
        """Our coordinate, packed (for acks and our push-pull entry): packed once per change."""
        return self.vivaldi.packed()

    def _on_indirect_ping(self, src: str, msg: IndirectPing, now: float, out: list[Outgoing]) -> None:
        if len(self._relays) >= _MAX_RELAYS:
            self.counters["relays_dropped"] += 1
            return
        seq = self._next_seq()
        # Lifeguard: nack at 80% of the probe timeout, so it reaches the origin before
        # the origin's own wait ends and it can tell "target silent" from "my link is bad";
        # but keep relaying a late ack until the full timeout (memberlist's ack handler lives that long).
        timeout = self.config.probe_timeout
        r = _Relay(src, msg.seq, now + 0.8 * timeout, now + timeout, not msg.nack)
        self._relays[seq] = r
        self._relay_next = min(self._relay_next, r.expires_at if r.nacked else r.nack_at)
        out.append(self._datagram(msg.addr, Ping(seq, msg.target)))

    def _tick_relays(self, now: float, out: list[Outgoing]) -> None:
        # Every relay has the same timeout, so insertion order (a deterministic dict
        # order) is deadline order: stop at the first relay with nothing due.
        nxt = float("inf")
        done: list[int] = []
        for seq, r in self._relays.items():
            if not r.nacked:
                if now < r.nack_at:
                    nxt = min(nxt, r.nack_at)
                    break
                r.nacked = True
                out.append(self._datagram(r.origin_addr, Nack(r.origin_seq)))
            if now >= r.expires_at:
                done.append(seq)
            else:
                nxt = min(nxt, r.expires_at)
        for seq in done:
            del self._relays[seq]
        self._relay_next = nxt

    def _reconnect(self, out: list[Outgoing]) -> None:
        # Serf's reconnect: with probability failed/alive, try one random failed member.
        boosted, self._reconnect_boost = self._reconnect_boost, False
        # Members not alive/suspect (dead or left) bound the failed count from above, so
        # the coin usually settles it without walking every member.
        gone = len(self.members) - 1 - len(self._alive_names)
        if gone <= 0:
            return
        live = max(1, self._num_live)
        r = 0.0 if boosted else self.rng.random()
        if r > gone / live:
            return
        failed = sorted(n for n, m in self.members.items() if m.state == _DEAD)
        if not failed or r > len(failed) / live:
            return
        target = self.members.peek(failed[self.rng.randrange(len(failed))])
        self.counters["reconnects"] += 1
        out.extend(self._sync_to(target.addr))

    def _reconnect_soon(self, now: float) -> None:
        """Evidence that members we hold dead are alive: reconnect within about a probe interval.

        Called when a member we had declared dead comes back (a healed partition:
        the other side refuted) or when we learn others declared *us* dead. Then
        the rest of our dead list is probably alive too, and Serf's reconnect
        (every ``reconnect_interval``, with probability failed/alive — 1/N once
        only one missed refutation is left) would leave it dead for minutes at
        large N. A boosted reconnect skips the coin; each further comeback it
        reveals boosts the next one, so the chain stops when the dead list holds
        only the really dead.
        """
        self._reconnect_boost = True
        if self._next_reconnect_at > now + 1.5 * self.config.probe_interval:
            self._next_reconnect_at = now + (0.5 + self.rng.random()) * self.config.probe_interval

    # ------------------------------------------------------------------ dissemination

    def _datagram(self, dst: str, msg: Any, extra: list[bytes] | None = None) -> Outgoing:
        return self._datagram_bytes(dst, encode(self.name, msg), extra)

    def _datagram_bytes(self, dst: str, base: bytes, extra: list[bytes] | None = None) -> Outgoing:
        """A datagram of the envelope ``base`` (no piggyback yet) with what fits of our broadcasts."""
        budget = MAX_DATAGRAM - (len(base) + 4)
        if extra:
            pig = list(extra)
            budget -= sum(len(x) + 3 for x in pig)
            pig.extend(self.broadcasts.take(budget))
        else:
            pig = self.broadcasts.take(budget)
        # The message is encoded once; the piggyback is spliced in after it.
        return Outgoing(dst, with_piggyback(base, pig) if pig else base, False)

    def _gossip(self, now: float) -> list[Outgoing]:
        candidates = self._alive_names
        if self._recent_dead:
            # Recently dead members still get gossip, so a falsely declared node hears it and refutes.
            cutoff = now - self.config.gossip_to_the_dead_time
            for n in [n for n, t in self._recent_dead.items() if t < cutoff]:
                del self._recent_dead[n]
            if self._recent_dead:
                if len(self._recent_dead) <= 16:
                    # _alive_names is sorted and holds none of them: insert the few into a copy
                    candidates = candidates.copy()
                    for n in self._recent_dead:
                        bisect.insort(candidates, n)
                else:
                    candidates = sorted([*candidates, *self._recent_dead])
        k = min(self.config.gossip_nodes, len(candidates))
        out = []
        budget = MAX_DATAGRAM - envelope_overhead(self.name) - 8
        peek = self.members.peek
        for name in self.rng.sample(candidates, k) if k else []:
            m = peek(name)
            # A copy for a suspect or recently dead member (so it can refute) is not counted
            # against the retransmit limit: each update still reaches that many members we
            # believe alive. Counting it, a partition that left half the members unreachable
            # halved every update's live copies, and now and then one node missed a refutation.
            pig = self.broadcasts.take(budget, m.state == _ALIVE)
            if not pig:
                break
            out.append(Outgoing(m.addr, encode(self.name, Gossip(), pig), False))
        return out

    def _queue_alive(self, now: float) -> None:
        self._queue(self.name, Alive(self.incarnation, self.name, self.addr, self.meta, self.key), now)

    def _queue(self, key: str, msg: Any, now: float) -> None:
        if not len(self.broadcasts):
            self._next_gossip_at = max(min(self._next_gossip_at, now + self.config.gossip_interval), now)
        # Our own Alive (a refutation above all) goes ahead of the backlog of others' updates.
        self.broadcasts.queue(key, encode_broadcast(msg), urgent=key == self.name)

    def _emit(self, kind: str, node: str, now: float, source: str = "", origin: str = "") -> None:
        m = self.members.peek(node)
        self.events.append(MemberEvent(kind, node, m.incarnation if m else 0, now, source, origin))

    def _admit_new(self, now: float) -> bool:
        """May a member never seen before join the table now? Refusals are counted.

        Bounds: the table size (``max_members``), the current push-pull message
        (``max_new_members_per_push_pull``) and a token bucket per introducing node
        (``max_new_members_per_peer`` per ``push_pull_interval``), all driven by ``now``.
        """
        cfg = self.config
        if len(self.members) >= cfg.max_members:
            self.counters["members_refused_full"] += 1
            return False
        if self._merge_left == 0:
            self.counters["members_refused_rate"] += 1
            return False
        who = self._introducer
        if who:
            cap = float(cfg.max_new_members_per_peer)
            buckets = self._buckets
            b = buckets.get(who)
            if b is None:
                if len(buckets) >= _MAX_BUCKETS:
                    # Forget buckets that have refilled (the same as having none); if every one
                    # is still in use, the rest of the senders share one.
                    rate = cap / cfg.push_pull_interval
                    for k in [k for k, (t, at) in buckets.items() if t + (now - at) * rate >= cap]:
                        del buckets[k]
                    if len(buckets) >= _MAX_BUCKETS:
                        who = ""
                b = buckets.get(who)
                if b is None:
                    b = buckets[who] = [cap, now]
            tokens = b[0]
            if now > b[1]:
                tokens = min(cap, tokens + (now - b[1]) * cap / cfg.push_pull_interval)
                b[1] = now
            if tokens < 1.0:
                b[0] = tokens
                self.counters["members_refused_rate"] += 1
                return False
            b[0] = tokens - 1.0
        if self._merge_left > 0:
            self._merge_left -= 1
        return True

    def _jump_refused(self, incarnation: int, held: int) -> bool:
        """True (and counted) if ``incarnation`` leaps beyond the window over ``held``."""
        if incarnation - held > self.config.incarnation_window or incarnation >= _MAX_INCARNATION:
            self.counters["incarnation_jumps"] += 1
            return True
        return False

    def _reclaimable(self, m: Member, now: float) -> bool:
        """Dead or left for longer than the reclaim time: its name may take a new address or key."""
        return (
            self.config.dead_node_reclaim_time > 0
            and m.state in (_DEAD, _LEFT)
            and now - m.state_change > self.config.dead_node_reclaim_time
        )

    def _refute(self, accused_incarnation: int, now: float) -> None:
        self.incarnation = max(self.incarnation, accused_incarnation) + 1
        me = self.members[self.name]
        me.incarnation = self.incarnation
        me.state = _ALIVE
        self.counters["refutes"] += 1
        self.awareness.apply_delta(1)
        self._emit("refute", self.name, now)
        self._queue_alive(now)

    # ------------------------------------------------------------------ state transitions

    def _apply_update(self, msg: Any, now: float) -> None:
        if isinstance(msg, Alive):
            self._apply_alive(msg, now)
        elif isinstance(msg, Suspect):
            self._apply_suspect(msg, now)
        elif isinstance(msg, Dead):
            self._apply_dead(msg, now)

    def _set_live(self, name: str, live: bool) -> None:
        i = bisect.bisect_left(self._alive_names, name)
        present = i < len(self._alive_names) and self._alive_names[i] == name
        if live:
            self._recent_dead.pop(name, None)
        if live and not present:
            self._alive_names.insert(i, name)
            # New members enter the probe order at a random offset (memberlist does the same).
            self._probe_order.insert(self.rng.randint(0, len(self._probe_order)), name)
        elif not live and present:
            del self._alive_names[i]
        self._num_live = len(self._alive_names) + (0 if self.leaving else 1)

    def _apply_alive(self, a: Alive, now: float) -> None:
        if a.node == self.name:
            if self.leaving:
                return
            if a.incarnation > self.incarnation:
                if not self._jump_refused(a.incarnation, self.incarnation):
                    self._refute(a.incarnation, now)
            elif a.incarnation == self.incarnation and (a.addr, a.meta, a.key) != (self.addr, self.meta, self.key):
                # Someone claims our name at our incarnation with other data: assert ours.
                self._refute(a.incarnation, now)
            return
        # Read the (possibly shared) record first: most updates are old news and change nothing.
        m = self.members.peek(a.node)
        if m is None:
            # Every path that creates a member comes through here (gossip, push-pull).
            if not is_valid_name(a.node) or not is_valid_addr(a.addr) or len(a.key) not in (0, 32):
                self.counters["bad_names"] += 1
                return
            if not self._admit_new(now):
                return
            self.members[a.node] = Member(a.node, a.addr, a.meta, a.incarnation, _ALIVE, now, key=a.key)
            self._set_live(a.node, True)
            self._emit("join", a.node, now)
            self._queue(a.node, a, now)
            return
        if a.key != m.key and m.key and not self._reclaimable(m, now):
            self.counters["key_conflicts"] += 1
            return
        if a.incarnation > m.incarnation and self._jump_refused(a.incarnation, m.incarnation):
            return
        reclaim = False
        if a.addr != m.addr:
            if not is_valid_addr(a.addr):
                self.counters["bad_names"] += 1
                return
            can_reclaim = self._reclaimable(m, now)
            if not can_reclaim:
                if a.incarnation <= m.incarnation:
                    return
                # A higher incarnation at a new address is the same node moving (e.g. DHCP).
            else:
                reclaim = True
        if a.incarnation <= m.incarnation and not reclaim:
            return
        m = self.members[a.node]  # our own copy: the update changes it
        was = m.state
        self._suspicions.pop(a.node, None)
        changed_meta = a.meta != m.meta
        if a.addr != m.addr:
            self.addr_moves += 1  # drivers index members by address (NodeCore._name_at)
        m.addr, m.meta, m.incarnation, m.key = a.addr, a.meta, a.incarnation, a.key
        if changed_meta:
            m.meta_wire = None
        if was != _ALIVE:
            m.state = _ALIVE
            m.state_change = now
            self._set_live(a.node, True)
            if was == _DEAD and not self.leaving:
                self._reconnect_soon(now)
            self._emit("alive" if was == _SUSPECT else "join", a.node, now)
        elif changed_meta:
            self._emit("update", a.node, now)
        self._queue(a.node, a, now)

    def _apply_suspect(self, s: Suspect, now: float) -> None:
        if s.node == self.name:
            if not self.leaving:
                if s.incarnation >= self.incarnation:
                    if not self._jump_refused(s.incarnation, self.incarnation):
                        self._refute(s.incarnation, now)
                else:
                    # Someone still holds an older incarnation of us and suspects it: our
                    # newer Alive evidently did not reach everyone, so tell the sender and announce it again.
                    self._note_stale(self.members.peek(self.name))
                    if self.name not in self.broadcasts:
                        self._queue_alive(now)
            return
        m = self.members.peek(s.node)  # read-only until _start_suspicion
        if m is None:
            return
        if s.incarnation < m.incarnation:
            self._note_stale(m)
            return
        if s.incarnation > m.incarnation and self._jump_refused(s.incarnation, m.incarnation):
            return
        if m.state == _SUSPECT:
            timer = self._suspicions.get(s.node)
            if timer is not None and timer.confirm(s.sender):
                self._queue(s.node, s, now)
            return
        if m.state != _ALIVE:
            return
        self._start_suspicion(self.members[s.node], s.incarnation, s.sender, now)
        self._queue(s.node, s, now)

    def _start_suspicion(self, m: Member, incarnation: int, suspector: str, now: float, origin: str = "") -> None:
        m.incarnation = incarnation
        m.state = _SUSPECT
        m.state_change = now
        n = self._num_live
        lo, hi = self.config.suspicion_timeouts(n)
        # Expected independent confirmations: suspicion_mult - 2, as in memberlist; none in tiny clusters.
        k = self.config.suspicion_mult - 2
        if n - 2 < k:
            k = 0
        self._suspicions[m.name] = Suspicion(incarnation, suspector, now, k, lo, hi)
        self._emit("suspect", m.name, now, suspector, origin)

    def declare_dead(self, name: str, now: float) -> bool:
        """Declare a member dead on this node's own authority (e.g. its node id was revoked).

        Applied and gossiped like the end of a suspicion; True if the member was alive or suspect.
        """
        m = self.members.peek(name)  # read-only: _apply_dead takes its own copy
        if m is None or name == self.name or m.state in (_DEAD, _LEFT):
            return False
        self._apply_dead(Dead(m.incarnation, name, self.name), now)
        return True

    def _apply_dead(self, d: Dead, now: float) -> None:
        if d.node == self.name:
            if not self.leaving:
                if d.incarnation >= self.incarnation:
                    if not self._jump_refused(d.incarnation, self.incarnation):
                        self._refute(d.incarnation, now)
                        # Declared dead: whoever did so is likely in our dead list too (a healed partition).
                        self._reconnect_soon(now)
                else:
                    self._note_stale(self.members.peek(self.name))
                    if self.name not in self.broadcasts:
                        self._queue_alive(now)
            return
        m = self.members.peek(d.node)
        if m is None:
            return
        if d.incarnation < m.incarnation:
            self._note_stale(m)
            return
        if m.state in (_DEAD, _LEFT):
            return
        if d.incarnation > m.incarnation and self._jump_refused(d.incarnation, m.incarnation):
            return
        m = self.members[d.node]  # our own copy: the verdict changes it
        self._suspicions.pop(d.node, None)
        m.incarnation = d.incarnation
        m.state = _LEFT if d.sender == d.node else _DEAD
        m.state_change = now
        self._set_live(d.node, False)
        self._recent_dead[d.node] = now
        self.vivaldi.forget(d.node)
        self._emit("left" if m.state == _LEFT else "dead", d.node, now, d.sender)
        self._queue(d.node, d, now)

    # ------------------------------------------------------------------ push-pull

    def local_states(self) -> tuple[PushPullState, ...]:
        """Our full membership state, for a push-pull exchange."""
        # Rows hold the MemberState enum (msgpack encodes it as its int); a state handed
        # over in-process must carry the plain int that every decoder checks for.
        return tuple(PushPullState(*row[:3], int(row[3]), *row[4:]) for row in self._state_rows())

    def _state_rows(self, names: list[str] | None = None) -> list[list[Any]]:
        """Push-pull entries of every member, or of ``names`` (members we hold)."""
        coords = self.coords
        items: Any = self.members.items() if names is None else [(n, self.members.peek(n)) for n in names]
        if names is not None and len(names) < 64:
            buf = None  # a few entries: no copy of every packed coordinate
        else:
            buf = coords.snapshot()
        if buf is None:
            get = coords.get
            rows = [
                [name, m.addr, m.incarnation, m.state, m.meta_wire or self._meta_wire(m), get(name), m.key]
                for name, m in items
            ]
        else:
            # coords.get inlined over one copy of the packed records: this runs for every member
            slot, w, present = coords.slots.get, coords.width, coords.present
            size = len(present)
            rows = [
                [
                    name,
                    m.addr,
                    m.incarnation,
                    m.state,
                    m.meta_wire or self._meta_wire(m),
                    None if (i := slot(name)) is None or i >= size or not present[i] else buf[i * w : i * w + w],
                    m.key,
                ]
                for name, m in items
            ]
        # Our own row carries our own coordinate (we keep none for ourselves in ``coords``).
        for row in rows:
            if row[0] == self.name:
                row[5] = self._coord_wire()
                break
        return rows

    @staticmethod
    def _meta_wire(m: Member) -> bytes:
        m.meta_wire = meta_wire(m.meta)
        return m.meta_wire

    def _push_pull_to(self, addr: str, join: bool, reply: bool) -> list[Outgoing]:
        """Our full state for ``addr``: one stream frame per chunk, each within MAX_FRAME."""
        return self._frames(addr, join, reply, self._state_rows())

    def _frames(self, addr: str, join: bool, reply: bool, rows: list[list[Any]]) -> list[Outgoing]:
        """Push-pull entries as stream frames for ``addr``, each within MAX_FRAME."""
        while True:
            per = max(1, int(_PP_FRAME_BUDGET / self._pp_row_bytes))
            chunks = [rows[i : i + per] for i in range(0, len(rows), per)]
            frames = [encode(self.name, PushPull(join, reply, c, i, len(chunks))) for i, c in enumerate(chunks)]
            big = max(frames, key=len)
            if len(big) <= MAX_FRAME:
                return [Outgoing(addr, f, True) for f in frames]
            # Entries larger than estimated (long names, rich metadata): re-split.
            self._pp_row_bytes = max(self._pp_row_bytes * 1.25, len(big) / per)

    def state_digest(self) -> tuple[list[int], list[int]]:
        """Digests of our members: state per DIGEST_BUCKETS bucket, coordinates per COORD_BUCKETS bucket.

        A member falls in bucket ``crc32(name) % DIGEST_BUCKETS``. A bucket's state
        digest is the XOR over its members of ``hash((crc32(name), incarnation,
        state))`` (Python's hash of a tuple of ints: the same on every 64-bit
        CPython >= 3.8; another hash only makes every bucket differ, which costs a
        full exchange, never a wrong one). Addresses, metadata and keys change only
        with the incarnation, so two nodes whose state digests agree on a bucket
        hold the same members there. The coordinate digest of bucket
        ``crc32(name) % COORD_BUCKETS`` is the XOR of ``crc32(name)`` over its members
        whose coordinate we hold (we hold our own).
        """
        dg = self._digests()
        return dg.d.tolist(), dg.c.tolist()

    def _digests(self) -> _Digest:
        """Our digests (see :meth:`state_digest`), current.

        Computed over every member once, then kept current as members change
        (:class:`MemberTable`, its ``digest``) and as coordinates are gained or dropped
        (``PackedTable.on_change``): a push-pull walks no table.
        """
        members, coords = self.members, self.coords
        dg = members.digest
        folder = coords.on_change
        if dg is not None and type(folder) is _CoordDigest and folder.dg is dg and dg.present is coords.present:
            if dg.out:
                dg.sync(members)
            return dg
        if dg is not None and not dg.c:
            # Seeded by bootstrap with the state digest only: add the coordinate digest.
            if dg.out:
                dg.sync(members)
            dg.c = array("I", self._coord_digest())
            dg.slots, dg.present = coords.slots, coords.present
            coords.on_change = _CoordDigest(members, dg)
            return dg
        mask, cmask = DIGEST_BUCKETS - 1, COORD_BUCKETS - 1
        d = [0] * DIGEST_BUCKETS
        c = [0] * COORD_BUCKETS
        crc = _name_crc
        slot, present = coords.slots.get, coords.present  # `name in coords`, inlined
        size = len(present)
        # (one pass in Python beats splitting it into map/zip/compress passes in C)
        for name, m in members.items():
            h = crc(name)
            d[h & mask] ^= hash((h, m.incarnation, m.state))  # (an IntEnum state hashes as its int)
            i = slot(name)
            if i is not None and i < size and present[i]:
                c[h & cmask] ^= h
        h = _name_crc(self.name)  # our own coordinate (never kept in self.coords)
        c[h & cmask] ^= h
        dg = members.digest = _Digest(array("Q", [x & _U64_MASK for x in d]), array("I", c), coords)
        coords.on_change = _CoordDigest(members, dg)
        return dg

    def _coord_digest(self) -> list[int]:
        """The coordinate digest (see :meth:`state_digest`), over every member."""
        c = [0] * COORD_BUCKETS
        cmask, crc, coords = COORD_BUCKETS - 1, _name_crc, self.coords
        # Members whose coordinate we hold picked in C: `name in coords` over a copy of ``present``
        # long enough for every record number (a shared index numbers names we hold none for).
        slots = coords.slots
        present = bytes(coords.present) + bytes(max(0, len(slots) - len(coords.present)) + 1)
        absent = len(present) - 1  # a record number whose flag is 0, for names without one
        for h in map(crc, compress(self.members, map(present.__getitem__, map(slots.get, self.members, repeat(absent))))):
            c[h & cmask] ^= h
        h = crc(self.name)  # our own coordinate (never kept in self.coords)
        c[h & cmask] ^= h
        return c

    def _sync_to(self, addr: str) -> list[Outgoing]:
        """Open a periodic push-pull (or reconnect) with ``addr``: digests in a big mesh, else the full state."""
        if len(self.members) > DIGEST_MIN_MEMBERS:
            dg = self._digests()
            return [Outgoing(addr, encode(self.name, PushPullDigest(False, _words_out(dg.d), _words_out(dg.c))), True)]
        return self._push_pull_to(addr, join=False, reply=False)

    def _on_digest(self, src: str, msg: PushPullDigest, out: list[Outgoing]) -> None:
        """A peer's digests: answer an opening with ours, then send what differs (see PushPullDigest)."""
        dg = self._digests()
        d, c = dg.d, dg.c
        db, cb = _words_out(d), _words_out(c)
        if not msg.reply:
            out.append(Outgoing(src, encode(self.name, PushPullDigest(True, db, cb)), True))
        if db == msg.digests:
            if cb == msg.coord_digests:
                return
        # Which buckets differ, found in C (map/compress over the words), as a flag per
        # coordinate bucket: 2 where the state bucket (its low bits) differs (send the
        # entries), else 1 where the coordinate bucket differs (send the coordinates).
        flags = bytearray(COORD_BUCKETS)
        if cb != msg.coord_digests:
            for b in compress(_COORD_RANGE, map(ne, c, _words_in("I", msg.coord_digests))):
                flags[b] = 1
        if db != msg.digests:
            for b in compress(_DIGEST_RANGE, map(ne, d, _words_in("Q", msg.digests))):
                for fb in range(b, COORD_BUCKETS, DIGEST_BUCKETS):
                    flags[fb] = 2
        # The members of flagged buckets, in table order, picked in C: per name its CRC
        # (cached), its coordinate bucket, that bucket's flag.
        members, cmask, crc = self.members, COORD_BUCKETS - 1, _name_crc
        picked = compress(members, map(flags.__getitem__, map(and_, map(crc, members), repeat(cmask))))
        entries: list[str] = []
        pairs: list[Any] = []
        coords = self.coords
        me = self.name
        for n in picked:
            if flags[crc(n) & cmask] == 2:
                entries.append(n)  # an entry carries the coordinate too
            else:
                raw = self._coord_wire() if n == me else coords.get(n)
                if raw is not None:
                    pairs += (n, raw)
        if entries:
            out.extend(self._frames(src, False, True, self._state_rows(entries)))
        step = 2 * MAX_COORD_PAIRS
        for i in range(0, len(pairs), step):
            out.append(Outgoing(src, encode(me, PushPullCoords(pairs[i : i + step])), True))

    def _on_coords(self, msg: PushPullCoords) -> None:
        """Coordinates from a digest push-pull: kept for members we hold and have none for."""
        pairs = msg.pairs
        dims = self.vivaldi.config.dimensionality
        peek, coords, me = self.members.peek, self.coords, self.name
        slot, present = coords.slots.get, coords.present  # `name in coords`, inlined
        it = iter(pairs)
        for name, raw in zip(it, it):  # (name, coordinate) pairs (the decoder checked the count is even)
            if type(name) is not str or type(raw) is not bytes:
                self.counters["bad_states"] += 1
                continue
            if (j := slot(name)) is not None and j < len(present) and present[j]:
                continue  # we hold one: ours is as good (a push-pull only ever fills a gap)
            m = peek(name)
            if m is None or name == me:
                continue
            if not coord_ok(raw, dims):
                self.counters["bad_states"] += 1
                continue
            coords[m.name] = raw  # keyed by the name object the table holds

    def _on_push_pull(self, src: str, sender: str, msg: PushPull, now: float, out: list[Outgoing]) -> None:
        if not msg.reply and msg.part == 0:
            out.extend(self._push_pull_to(src, join=False, reply=True))
        joined = self._num_live <= 1
        out.extend(self._merge_rows(msg.rows, now, sender))
        if joined and self._num_live > 1:
            # Just joined: the join was a full sync, so stagger the first periodic
            # push-pull over the period scaled for the size we now know.
            self._next_push_pull_at = now + self.rng.random() * self.config.push_pull_period(self._num_live)

    def merge_states(self, states: Iterable[PushPullState], now: float, peer: str = "") -> list[Outgoing]:
        """Merge a remote full state from ``peer`` (memberlist's mergeState); return notices to send.

        A remote "dead" or "suspect" about a member we hold alive is hearsay, not
        a failed probe of ours. memberlist turns it into a suspicion *from the
        merging node* and gossips it; after a partition heals every node of one
        side merges the other side's state, so each one's copy of the same stale
        belief arrives as an independent confirmation, the Lifeguard timeout
        collapses to its minimum and live nodes die at the hands of their own
        side. Here a merge-derived suspicion stays local: it is not gossiped, it
        never confirms a running suspicion, and its timer starts at the maximum
        (only real suspicions from other probers shorten it). The subject is told
        directly (a ``Suspect`` datagram to at most ``retransmit_limit`` of the
        new suspects, a random choice), so it refutes right away.
        """
        return self._merge_rows([st.to_wire() for st in states], now, peer)

    def _merge_rows(self, rows: list[Any], now: float, peer: str = "") -> list[Outgoing]:
        """:meth:`merge_states` on entries as received (``PushPullState.to_wire`` rows)."""
        introducer, self._introducer = self._introducer, peer
        self._merge_left = self.config.max_new_members_per_push_pull
        try:
            return self._merge_rows_admitted(rows, now, peer)
        finally:
            self._introducer, self._merge_left = introducer, -1

    def _merge_rows_admitted(self, rows: list[Any], now: float, peer: str) -> list[Outgoing]:
        dims = self.vivaldi.config.dimensionality
        members = self.members
        peek = members.peek  # no copy of a shared member just to compare it
        coords = self.coords
        # `node in coords` inlined (no Python-level __contains__ per row)
        coord_slot, coord_present = coords.slots.get, coords.present
        me = self.name
        dead = _DEAD
        hearsay: list[Member] = []
        for row in rows:
            # Fast path: an entry equal to what we hold (most of a steady mesh's state) is
            # skipped after a dict lookup, before it is validated or decoded; anything
            # else goes through PushPullState.from_wire's full validation below.
            # (fields by position: node, addr, incarnation, state, meta, coordinate, ...)
            if type(row) is not list or len(row) < 6 or type(row[0]) is not str:
                self.counters["bad_states"] += 1
                continue
            node = row[0]
            m = peek(node)
            if m is not None:
                inc = row[2]
                if node == me:
                    m = None
                elif type(inc) is int:
                    if inc < m.incarnation:
                        continue  # stale
                    if row[3] == 0 and inc == m.incarnation and m.state != dead and (
                        row[5] is None
                        or ((i := coord_slot(node)) is not None and i < len(coord_present) and coord_present[i])
                    ):
                        continue  # alive at the incarnation we know: nothing to learn
            # ``m`` stays the (possibly shared) record, read only: the _apply_* calls take
            # their own copy, and so does a merge-derived suspicion below. A node that copied
            # every member a push-pull merely brought a coordinate for held N records of its own.
            try:
                st = PushPullState.from_wire(row)
                if st.coord_raw is not None and m is not None and st.node not in coords:
                    if coord_ok(st.coord_raw, dims):
                        coords[m.name] = st.coord_raw  # keyed by the name object the table holds
                    else:
                        decode_coord(st.coord_raw, st.node)  # malformed: WireError, as ever; other dimensions: ignored
                state = MemberState(st.state)
                if state == _ALIVE:
                    if m is not None and st.incarnation == m.incarnation and m.state != _DEAD:
                        continue
                    self._apply_alive(Alive(st.incarnation, st.node, st.addr, st.decoded_meta(), st.key), now)
                elif state == _LEFT:
                    self._apply_dead(Dead(st.incarnation, st.node, st.node), now)
                elif st.node == self.name:
                    # Others hold us suspect or dead: refute (and, if dead, reconnect soon).
                    if state == _DEAD:
                        self._apply_dead(Dead(st.incarnation, st.node, peer or self.name), now)
                    else:
                        self._apply_suspect(Suspect(st.incarnation, st.node, peer or self.name), now)
                elif (
                    m is not None
                    and m.state == _ALIVE
                    and st.incarnation >= m.incarnation
                    and not (st.incarnation > m.incarnation and self._jump_refused(st.incarnation, m.incarnation))
                ):
                    # A remote "dead" is only a suspicion here: we give the node a chance to refute.
                    m = members[node]  # our own copy: the suspicion changes it
                    self._start_suspicion(m, st.incarnation, peer or self.name, now, "merge")
                    self.counters["merge_suspicions"] += 1
                    hearsay.append(m)
            except WireError:
                self.counters["bad_states"] += 1
        if not hearsay:
            return []
        limit = self.config.retransmit_limit(self._num_live)
        if len(hearsay) > limit:
            hearsay = sorted(self.rng.sample(hearsay, limit), key=lambda m: m.name)
        return [self._datagram(m.addr, Suspect(m.incarnation, m.name, self.name)) for m in hearsay]

    def bootstrap(self, states: Iterable[PushPullState], now: float, shared: list[Member] | None = None) -> list[Member]:
        """Start with a known member list (e.g. persisted from a previous run) without gossiping it.

        Entries are taken as alive at their incarnation; the protocol then
        verifies them by probing like any member. ``shared`` is what an earlier
        call with the same ``states`` and ``now`` returned: a simulator that
        bootstraps many nodes alike passes it so they share the records until
        each touches one (copy on access, see :class:`MemberTable`). Returns the
        records to share.
        """
        states = list(states)
        # Records built from these very entries (identical objects: frozen, checked then)?
        recs = shared if isinstance(shared, _SharedRecords) and shared.built_from(states) else None
        if recs is None and not (shared is not None and len(shared) == len(states) and all(map(_built_from, shared, states))):
            # Bypasses the decoder (a persisted list): names, addresses, keys and metadata are checked
            # here (unless ``shared`` holds records built from these very entries, already checked).
            valid = [st for st in states if self._bootstrap_entry_ok(st)]
            self.counters["bad_names"] += len(states) - len(valid)
            states = valid
        if shared is None or len(shared) != len(states):
            shared = recs = _SharedRecords(states, now)
        members = self.members
        room = self.config.max_members - len(members)
        if recs is not None and recs.distinct and room >= len(states) and len(members) == 1 and self.name in members:
            # A fresh node (the simulator's case, N nodes of N members each): the records go
            # in with one dict update, in order, our own record kept.
            own = dict.__getitem__(members, self.name)
            dict.update(members, zip(recs.names, recs))
            dict.__setitem__(members, self.name, own)
            added = recs.names.copy()
            # Our state digest: the shared records' (computed once for all nodes), with our own
            # record in place of the entry about us; the coordinate digest follows at first use.
            d = array("Q", recs.state_digest())
            h = _name_crc(self.name)
            if self.name in added:
                added.remove(self.name)
                d[h & (DIGEST_BUCKETS - 1)] ^= _member_part(h, recs[recs.names.index(self.name)])
            d[h & (DIGEST_BUCKETS - 1)] ^= _member_part(h, own)
            members.digest = _Digest(d, array("I"), self.coords)
            if self._recent_dead:
                for n in added:
                    self._recent_dead.pop(n, None)
        else:
            added = []
            for st, m in zip(states, shared):
                if st.node == self.name or st.node in members or m.name != st.node:
                    continue
                if room <= 0:
                    self.counters["members_refused_full"] += 1
                    continue
                room -= 1
                dict.__setitem__(members, st.node, m)
                members.digest = None
                self._recent_dead.pop(st.node, None)
                added.append(st.node)
        if added:
            # One sort and one shuffle rather than an ordered insert per member: O(N log N).
            # (sorted() of already-sorted names, the usual case, is linear)
            self._alive_names = sorted([*self._alive_names, *added]) if self._alive_names else sorted(added)
            self.rng.shuffle(added)
            self._probe_order[self._probe_index :] = [*self._probe_order[self._probe_index :], *added]
            self._num_live = len(self._alive_names) + (0 if self.leaving else 1)
        self._next_join_at = None
        self._next_push_pull_at = now + self.rng.random() * self.config.push_pull_period(self._num_live)
        return shared

    @staticmethod
    def _bootstrap_entry_ok(st: PushPullState) -> bool:
        if not is_valid_name(st.node) or not is_valid_addr(st.addr) or len(st.key) not in (0, 32):
            return False
        try:
            st.decoded_meta()
        except WireError:
            return False
        return True

    def reap(self, now: float) -> None:
        """Forget dead/left members whose tombstone has expired, everywhere they are referenced."""
        cutoff = now - self.config.tombstone_time
        for name in sorted(n for n, m in self.members.items() if n != self.name and m.state >= _DEAD):
            if self.members[name].state_change < cutoff:
                del self.members[name]
                # A reaped member must not stay a gossip-to-the-dead target (that raised KeyError).
                self._recent_dead.pop(name, None)
                self._suspicions.pop(name, None)
                self.coords.pop(name, None)
                self.vivaldi.forget(name)
                self._emit("reap", name, now)
