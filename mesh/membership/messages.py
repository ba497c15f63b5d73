"""Membership wire messages (types 1–15).

Names are validated with :func:`mesh.wire.v_name` and addresses with
:func:`mesh.wire.v_addr` in every decoder, so no message can introduce a member
whose name holds control characters. Public keys (``Alive.key``,
``PushPullState.key``) are raw 32-byte Ed25519 keys or empty (unknown); any other
length is a decode error.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import msgpack

from mesh.coords import Coordinate
from mesh.membership.meta import NodeMeta
from mesh.errors import WireError
from mesh.wire import MAX_ADDR, NAME_RE, message, pack, v_addr, v_bool, v_fields, v_int, v_list, v_name

_U32 = 2**32 - 1
_U64 = 2**63 - 1
KEY_BYTES = 32


def v_key(x: Any) -> bytes:
    """Validate a public key field: empty (unknown) or a raw 32-byte Ed25519 key."""
    if type(x) is not bytes or len(x) not in (0, KEY_BYTES):
        raise WireError(f"public key must be empty or {KEY_BYTES} bytes")
    return x


@message
@dataclass(slots=True, frozen=True)
class Ping:
    """Direct probe. ``target`` lets a restarted node ignore pings meant for its predecessor."""

    TYPE = 1
    seq: int
    target: str

    def to_payload(self) -> list[Any]:
        return [self.seq, self.target]

    @classmethod
    def from_payload(cls, p: list[Any]) -> "Ping":
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
@dataclass(slots=True, frozen=True)
class Ack:
    """Probe answer; a direct ack carries the responder's Vivaldi coordinate."""

    TYPE = 3
    seq: int
    coord: Coordinate | None

    def to_payload(self) -> list[Any]:
        return [self.seq, self.coord.to_wire() if self.coord is not None else None]

    @classmethod
    def from_payload(cls, p: list[Any]) -> "Ack":
        v_fields(p, 2)
        return cls(v_int(p[0], 0, _U32), Coordinate.from_wire(p[1]) if p[1] is not None else None)


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


_META_CACHE: dict[bytes, NodeMeta] = {}


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
        return pack(meta.to_wire())

    @staticmethod
    def pack_coord(coord: Coordinate | None) -> bytes | None:
        """Encode a coordinate for an entry (float32 is ample for seconds-scale RTTs)."""
        if coord is None:
            return None
        vals = coord.to_wire()
        return struct.pack(f"<{len(vals)}f", *vals)

    @classmethod
    def of(
        cls, node: str, addr: str, incarnation: int, state: int, meta: NodeMeta, coord: Coordinate | None, key: bytes = b""
    ) -> "PushPullState":
        """Build an entry from typed values."""
        return cls(node, addr, incarnation, state, cls.pack_meta(meta), cls.pack_coord(coord), key)

    def decoded_meta(self) -> NodeMeta:
        """The validated metadata (raises WireError)."""
        hit = _META_CACHE.get(self.meta_raw)
        if hit is not None:
            return hit
        try:
            meta = NodeMeta.from_wire(msgpack.unpackb(self.meta_raw, raw=False, max_str_len=512, max_bin_len=0, max_array_len=64, max_map_len=0, max_ext_len=0))
        except WireError:
            raise
        except Exception as exc:
            raise WireError(f"invalid metadata for {self.node}: {exc.__class__.__name__}") from None
        if len(_META_CACHE) > 8192:
            _META_CACHE.clear()
        _META_CACHE[self.meta_raw] = meta
        return meta

    def decoded_coord(self) -> Coordinate | None:
        """The validated coordinate, if any (raises WireError)."""
        if self.coord_raw is None:
            return None
        n = len(self.coord_raw) // 4
        if n < 4 or n * 4 != len(self.coord_raw):
            raise WireError(f"invalid coordinate for {self.node}")
        return Coordinate.from_wire(list(struct.unpack(f"<{n}f", self.coord_raw)))

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
        if coord is not None and (type(coord) is not bytes or len(coord) > 140):
            raise WireError("invalid coordinate")
        return cls(node, addr, inc, state, meta, coord, key)


@message
@dataclass(slots=True, frozen=True)
class PushPull:
    """Full membership state exchange over a stream (join or periodic anti-entropy)."""

    TYPE = 8
    join: bool
    reply: bool
    states: tuple[PushPullState, ...]

    def to_payload(self) -> list[Any]:
        return [self.join, self.reply, [s.to_wire() for s in self.states]]

    @classmethod
    def from_payload(cls, p: list[Any]) -> "PushPull":
        v_fields(p, 3)
        return cls(v_bool(p[0]), v_bool(p[1]), tuple(PushPullState.from_wire(s) for s in v_list(p[2])))


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
