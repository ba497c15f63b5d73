"""Membership wire messages (types 1–15; 1–11 in use).

Names are validated with :func:`mesh.wire.v_name` and addresses with
:func:`mesh.wire.v_addr` in every decoder, so no message can introduce a member
whose name holds control characters. Public keys (``Alive.key``,
``PushPullState.key``) are raw 32-byte Ed25519 keys or empty (unknown); any other
length is a decode error.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import msgpack

from mesh.coords import Coordinate
from mesh.membership.meta import NodeMeta
from mesh.errors import WireError
from mesh.wire import _VALID_NAMES, MAX_ADDR, NAME_RE, message, pack, v_addr, v_bool, v_fields, v_int, v_list, v_name

class _F32Structs(dict[int, struct.Struct]):
    def __missing__(self, n: int) -> struct.Struct:
        self[n] = st = struct.Struct(f"<{n}f")
        return st


_F32 = _F32Structs()  # n -> packer of n float32s (packed coordinates)

_U32 = 2**32 - 1
MAX_COORD_BYTES = 140  # a packed coordinate: at most 32 dimensions + error, adjustment, height
_U64 = 2**63 - 1
KEY_BYTES = 32


def v_key(x: Any) -> bytes:
    """Validate a public key field: empty (unknown) or a raw 32-byte Ed25519 key."""
    if type(x) is not bytes or len(x) not in (0, KEY_BYTES):
        raise WireError(f"public key must be empty or {KEY_BYTES} bytes")
    return x


@message
@dataclass(slots=True, unsafe_hash=True)  # not frozen: one is decoded per probe; nobody mutates one
class Ping:
    """Direct probe. ``target`` lets a restarted node ignore pings meant for its predecessor."""

    TYPE = 1
    seq: int
    target: str

    def to_payload(self) -> list[Any]:
        return [self.seq, self.target]

    @classmethod
    def from_payload(cls, p: list[Any]) -> "Ping":
        # v_fields(p, 2), v_int(seq, 0, _U32) and v_name(target) on the common case, inlined
        # (one per probe); anything else goes through them for their errors.
        if len(p) == 2:
            seq, target = p
            if type(seq) is int and 0 <= seq <= _U32 and type(target) is str and target in _VALID_NAMES:
                return cls(seq, target)
        v_fields(p, 2)
        return cls(v_int(p[0], 0, _U32), v_name(p[1]))


@message
@dataclass(slots=True, frozen=True)
class IndirectPing:
    """Ask the receiver to probe ``target`` at ``addr`` on our behalf."""

    TYPE = 2
    seq: int
    target: str
    addr: str
    nack: bool

    def to_payload(self) -> list[Any]:
        return [self.seq, self.target, self.addr, self.nack]

    @classmethod
    def from_payload(cls, p: list[Any]) -> "IndirectPing":
        v_fields(p, 4)
        return cls(v_int(p[0], 0, _U32), v_name(p[1]), v_addr(p[2]), v_bool(p[3]))


@message
@dataclass(slots=True, unsafe_hash=True)  # not frozen: one is decoded per probe; nobody mutates one
class Ack:
    """Probe answer; a direct ack carries the responder's Vivaldi coordinate.

    ``coord`` is packed as push-pull entries carry it (float32s: vec..., error,
    adjustment, height; :meth:`PushPullState.pack_coord`) and stays packed: the
    prober keeps it as is and checks its values (:func:`coord_ok`) before using
    it. The decoder bounds its size.
    """

    TYPE = 3
    seq: int
    coord: bytes | None

    def to_payload(self) -> list[Any]:
        return [self.seq, self.coord]

    @classmethod
    def from_payload(cls, p: list[Any]) -> "Ack":
        v_fields(p, 2)
        seq, c = p
        if c is not None and (type(c) is not bytes or not 16 <= len(c) <= MAX_COORD_BYTES or len(c) % 4):
            raise WireError("ack coordinate must be 4 to 35 packed float32s")
        # v_int(seq, 0, _U32) on the common case, inlined (one per probe)
        return cls(seq if type(seq) is int and 0 <= seq <= _U32 else v_int(seq, 0, _U32), c)


@message
@dataclass(slots=True, frozen=True)
class Nack:
    """An indirect prober reached no ack: tells the origin its own path is fine."""

    TYPE = 4
    seq: int

    def to_payload(self) -> list[Any]:
        return [self.seq]

    @classmethod
    def from_payload(cls, p: list[Any]) -> "Nack":
        v_fields(p, 1)
        return cls(v_int(p[0], 0, _U32))


@dataclass(slots=True, frozen=True)
class _Verdict:
    """``sender``'s verdict about ``node`` at ``incarnation`` (shared by Suspect and Dead)."""

    incarnation: int
    node: str
    sender: str

    def to_payload(self) -> list[Any]:
        return [self.incarnation, self.node, self.sender]

    @classmethod
    def from_payload(cls, p: list[Any]) -> Any:
        v_fields(p, 3)
        return cls(v_int(p[0], 0, _U64), v_name(p[1]), v_name(p[2]))


@message
@dataclass(slots=True, frozen=True)
class Suspect(_Verdict):
    """``sender`` suspects ``node`` at ``incarnation``."""

    TYPE = 5


@message
@dataclass(slots=True, frozen=True)
class Alive:
    """``node`` is alive at ``incarnation`` with this address, metadata and public key."""

    TYPE = 6
    incarnation: int
    node: str
    addr: str
    meta: NodeMeta
    key: bytes = b""

    def to_payload(self) -> list[Any]:
        return [self.incarnation, self.node, self.addr, self.meta.to_wire(), self.key]

    @classmethod
    def from_payload(cls, p: list[Any]) -> "Alive":
        v_fields(p, 5)
        return cls(v_int(p[0], 0, _U64), v_name(p[1]), v_addr(p[2]), NodeMeta.from_wire(p[3]), v_key(p[4]))


@message
@dataclass(slots=True, frozen=True)
class Dead(_Verdict):
    """``sender`` declares ``node`` dead; ``sender == node`` means a graceful leave."""

    TYPE = 7


# Every node of a mesh (and, in the simulator, every simulated node) holds the same few
# metadata values: decode each distinct encoding once and share the object, and keep
# each object's encoding once for push-pull. Both caches are bounded.
_META_CACHE: dict[bytes, NodeMeta] = {}
_META_WIRE: dict[int, tuple[NodeMeta, bytes]] = {}
_META_CACHE_MAX = 8192
_MAX_PARTS = 4096


def meta_wire(meta: NodeMeta) -> bytes:
    """The push-pull encoding of ``meta``, shared by every holder of the same object."""
    hit = _META_WIRE.get(id(meta))
    # The cache holds the object itself, so its id cannot be reused while the entry lives.
    if hit is not None and hit[0] is meta:
        return hit[1]
    raw = pack(meta.to_wire())
    if len(_META_WIRE) >= _META_CACHE_MAX:
        _META_WIRE.clear()
    _META_WIRE[id(meta)] = (meta, raw)
    return raw


@dataclass(slots=True, frozen=True)
class PushPullState:
    """One member's state inside a push-pull exchange.

    A push-pull carries every member (a thousand entries in a large mesh) but
    the receiver acts on few of them — most equal what it has. So an entry is
    six flat fields: metadata travels as a nested msgpack ``bin`` and the
    coordinate as packed float32s, both decoded and validated only when used
    (:meth:`decoded_meta`, :meth:`decoded_coord`, which raise WireError; the
    receiver skips and counts an entry that fails).
    """

    node: str
    addr: str
    incarnation: int
    state: int
    meta_raw: bytes
    coord_raw: bytes | None
    key: bytes = b""

    @staticmethod
    def pack_meta(meta: NodeMeta) -> bytes:
        """Encode metadata for an entry."""
        return meta_wire(meta)

    @staticmethod
    def pack_coord(coord: Coordinate | None) -> bytes | None:
        """Encode a coordinate for an entry (float32 is ample for seconds-scale RTTs)."""
        if coord is None:
            return None
        vec = coord.vec
        return _F32[len(vec) + 3].pack(*vec, coord.error, coord.adjustment, coord.height)

    @classmethod
    def of(
        cls, node: str, addr: str, incarnation: int, state: int, meta: NodeMeta, coord: Coordinate | None, key: bytes = b""
    ) -> "PushPullState":
        """Build an entry from typed values."""
        return cls(node, addr, incarnation, state, cls.pack_meta(meta), cls.pack_coord(coord), key)

    def decoded_meta(self) -> NodeMeta:
        """The validated metadata (raises WireError)."""
        return decode_meta(self.meta_raw, self.node)

    def decoded_coord(self) -> Coordinate | None:
        """The validated coordinate, if any (raises WireError)."""
        return None if self.coord_raw is None else decode_coord(self.coord_raw, self.node)

    def to_wire(self) -> list[Any]:
        return [self.node, self.addr, self.incarnation, self.state, self.meta_raw, self.coord_raw, self.key]

    @classmethod
    def from_wire(cls, x: Any) -> "PushPullState":
        # Hot path (up to thousands of entries per push-pull): the checks are inlined.
        if type(x) is not list or len(x) != 7:
            raise WireError("push-pull entry is not a 7-element array")
        node, addr, inc, state, meta, coord, key = x
        if type(node) is not str or NAME_RE.fullmatch(node) is None:
            raise WireError("push-pull entry has an invalid name")
        if type(addr) is not str or not 0 < len(addr) <= MAX_ADDR or not (addr.isascii() and addr.isprintable()) or " " in addr:
            raise WireError("push-pull entry has an invalid address")
        if type(key) is not bytes or len(key) not in (0, KEY_BYTES):
            raise WireError("push-pull entry has an invalid public key")
        if type(inc) is not int or not 0 <= inc <= _U64 or type(state) is not int or not 0 <= state <= 3:
            raise WireError("push-pull entry has an invalid incarnation or state")
        if type(meta) is not bytes or len(meta) > 2048:
            raise WireError("metadata is not a bounded bin")
        if coord is not None and (type(coord) is not bytes or len(coord) > MAX_COORD_BYTES):
            raise WireError("invalid coordinate")
        return cls(node, addr, inc, state, meta, coord, key)


def decode_meta(raw: bytes, node: str = "") -> NodeMeta:
    """Decode and validate a push-pull metadata blob, sharing equal results (raises WireError)."""
    hit = _META_CACHE.get(raw)
    if hit is not None:
        return hit
    try:
        meta = NodeMeta.from_wire(msgpack.unpackb(raw, raw=False, max_str_len=512, max_bin_len=0, max_array_len=64, max_map_len=0, max_ext_len=0))
    except WireError:
        raise
    except Exception as exc:
        raise WireError(f"invalid metadata for {node}: {exc.__class__.__name__}") from None
    if len(_META_CACHE) >= _META_CACHE_MAX:
        _META_CACHE.clear()
    _META_CACHE[raw] = meta
    if len(_META_WIRE) >= _META_CACHE_MAX:
        _META_WIRE.clear()
    # Its received encoding decodes to the same value: re-sending it needs no re-encode.
    _META_WIRE[id(meta)] = (meta, raw)
    return meta


def coord_ok(raw: bytes, dims: int) -> bool:
    """True when ``raw`` is a packed coordinate of ``dims`` dimensions with finite, bounded values."""
    return coord_values(raw, dims) is not None


def coord_values(raw: bytes, dims: int) -> tuple[float, ...] | None:
    """The values of ``raw`` (vec..., error, adjustment, height) if :func:`coord_ok` accepts it, else None."""
    n = len(raw) // 4
    if n != dims + 3 or n * 4 != len(raw):
        return None
    vals = _F32[n].unpack(raw)
    # Every |v| is at most their Euclidean norm, and a NaN or an infinity makes the norm NaN or
    # infinite: one C call accepts the common case (min() and max() cost four times as much).
    if math.hypot(*vals) <= 1e6:
        return vals
    # A sum of finite floats is finite (float32 values cannot overflow a float64 sum).
    if math.isfinite(sum(vals)) and -1e6 <= min(vals) and max(vals) <= 1e6:
        return vals
    return None


def coord_of_packed(raw: bytes) -> Coordinate:
    """The coordinate of a packed record that :func:`coord_ok` accepted (no further checks)."""
    v = _F32[len(raw) // 4].unpack(raw)
    return Coordinate(v[:-3], v[-3], v[-2], v[-1])


def decode_coord(raw: bytes, node: str = "") -> Coordinate:
    """Decode and validate a packed float32 coordinate (raises WireError)."""
    n = len(raw) // 4
    if n < 4 or n * 4 != len(raw):
        raise WireError(f"invalid coordinate for {node}")
    return Coordinate.from_wire(list(_F32[n].unpack(raw)))


@message
@dataclass(slots=True, frozen=True)
class PushPull:
    """One frame of a membership state exchange over a stream (join or periodic anti-entropy).

    A big mesh's state does not fit one 65,535-byte stream frame, so an exchange
    is ``parts`` frames, each a self-contained chunk of entries that the receiver
    merges on arrival (part 0 is the one that asks for the reply). Entries are
    ``PushPullState.to_wire()`` rows, kept undecoded here: the receiver validates
    an entry only when it acts on it, and a steady mesh's entries mostly equal
    what the receiver holds (see ``SwimCore._merge_rows``).
    """

    TYPE = 8
    join: bool
    reply: bool
    rows: list[list[Any]]
    part: int = 0
    parts: int = 1

    @classmethod
    def of(cls, join: bool, reply: bool, states: Any, part: int = 0, parts: int = 1) -> "PushPull":
        """Build a frame from typed entries."""
        return cls(join, reply, [s.to_wire() for s in states], part, parts)

    def states(self) -> tuple[PushPullState, ...]:
        """The entries, validated (raises WireError)."""
        return tuple(PushPullState.from_wire(r) for r in self.rows)

    def to_payload(self) -> list[Any]:
        return [self.join, self.reply, self.rows, self.part, self.parts]

    @classmethod
    def from_payload(cls, p: list[Any]) -> "PushPull":
        v_fields(p, 5)
        parts = v_int(p[4], 1, _MAX_PARTS)
        return cls(v_bool(p[0]), v_bool(p[1]), v_list(p[2]), v_int(p[3], 0, parts - 1), parts)


# Digest push-pull (types 10, 11): members are hashed into DIGEST_BUCKETS buckets by name.
DIGEST_BUCKETS = 256
DIGEST_BYTES = 8 * DIGEST_BUCKETS
# Coordinates are reconciled in finer buckets (about one member each at 1000 members),
# so that the coordinates sent are close to those the peer lacks.
COORD_BUCKETS = 1024
COORD_DIGEST_BYTES = 4 * COORD_BUCKETS
# (name, coordinate) pairs per PushPullCoords frame: 200 of the longest names and widest
# coordinates (128 + 2 + 140 + 2 bytes each, 54.4 KB) stay within one stream frame.
MAX_COORD_PAIRS = 200


@message
@dataclass(slots=True, frozen=True)
class PushPullDigest:
    """The opening (``reply`` false) or answer of a digest push-pull, over a stream.

    A periodic push-pull of a big mesh sends, instead of every member, a 64-bit
    digest per bucket of members over their (name, incarnation, state)
    (``DIGEST_BUCKETS`` buckets; see ``SwimCore.state_digest``) and a 32-bit one
    per finer bucket (``COORD_BUCKETS``) over the names whose Vivaldi coordinate
    the sender holds. The receiver
    answers with its own digests and then, for every bucket whose state digest
    differs, its entries as ``PushPull`` frames with ``reply`` set; for every
    bucket whose coordinate digest alone differs, its coordinates as
    ``PushPullCoords``. The opener, given the answer, does the same for the
    buckets that still differ. Both sides end where a full exchange would leave
    them; two nodes that agree exchange two frames of 6 KiB. A node of an older
    version counts these types as unknown and answers nothing (that exchange is
    lost, nothing else).
    """

    TYPE = 10
    reply: bool
    digests: bytes
    coord_digests: bytes

    def to_payload(self) -> list[Any]:
        return [self.reply, self.digests, self.coord_digests]

    @classmethod
    def from_payload(cls, p: list[Any]) -> "PushPullDigest":
        v_fields(p, 3)
        if type(p[1]) is not bytes or len(p[1]) != DIGEST_BYTES:
            raise WireError(f"state digest must be {DIGEST_BYTES} bytes")
        if type(p[2]) is not bytes or len(p[2]) != COORD_DIGEST_BYTES:
            raise WireError(f"coordinate digest must be {COORD_DIGEST_BYTES} bytes")
        return cls(v_bool(p[0]), p[1], p[2])


@message
@dataclass(slots=True, frozen=True)
class PushPullCoords:
    """Coordinates of members, for a digest push-pull: ``pairs`` is [name, packed coordinate, ...].

    Kept undecoded like push-pull entries: the receiver checks each pair when it
    uses it (only for a member it holds and has no coordinate for), and a bad
    pair is skipped and counted. It never creates a member.
    """

    TYPE = 11
    pairs: list[Any]

    def to_payload(self) -> list[Any]:
        return [self.pairs]

    @classmethod
    def from_payload(cls, p: list[Any]) -> "PushPullCoords":
        v_fields(p, 1)
        pairs = v_list(p[0], 2 * MAX_COORD_PAIRS)
        if len(pairs) % 2:
            raise WireError("coordinate pairs must be name, coordinate")
        return cls(pairs)


@message
@dataclass(slots=True, frozen=True)
class Gossip:
    """A datagram that exists only to carry piggybacked updates."""

    TYPE = 9

    def to_payload(self) -> list[Any]:
        return []

    @classmethod
    def from_payload(cls, p: list[Any]) -> "Gossip":
        v_fields(p, 0)
        return cls()
