"""Membership wire messages (types 1–15)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mesh.coords import Coordinate
from mesh.membership.meta import NodeMeta
from mesh.errors import WireError
from mesh.wire import message, v_bool, v_fields, v_int, v_list, v_str

_U32 = 2**32 - 1
_U64 = 2**63 - 1


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
        return cls(v_int(p[0], 0, _U32), v_str(p[1]))


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
        return cls(v_int(p[0], 0, _U32), v_str(p[1]), v_str(p[2]), v_bool(p[3]))


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


@message
@dataclass(slots=True, frozen=True)
class Suspect:
    """``sender`` suspects ``node`` at ``incarnation``."""

    TYPE = 5
    incarnation: int
    node: str
    sender: str

    def to_payload(self) -> list[Any]:
        return [self.incarnation, self.node, self.sender]

    @classmethod
    def from_payload(cls, p: list[Any]) -> "Suspect":
        v_fields(p, 3)
        return cls(v_int(p[0], 0, _U64), v_str(p[1]), v_str(p[2]))


@message
@dataclass(slots=True, frozen=True)
class Alive:
    """``node`` is alive at ``incarnation`` with this address and metadata."""

    TYPE = 6
    incarnation: int
    node: str
    addr: str
    meta: NodeMeta

    def to_payload(self) -> list[Any]:
        return [self.incarnation, self.node, self.addr, self.meta.to_wire()]

    @classmethod
    def from_payload(cls, p: list[Any]) -> "Alive":
        v_fields(p, 4)
        return cls(v_int(p[0], 0, _U64), v_str(p[1]), v_str(p[2]), NodeMeta.from_wire(p[3]))


@message
@dataclass(slots=True, frozen=True)
class Dead:
    """``sender`` declares ``node`` dead; ``sender == node`` means a graceful leave."""

    TYPE = 7
    incarnation: int
    node: str
    sender: str

    def to_payload(self) -> list[Any]:
        return [self.incarnation, self.node, self.sender]

    @classmethod
    def from_payload(cls, p: list[Any]) -> "Dead":
        v_fields(p, 3)
        return cls(v_int(p[0], 0, _U64), v_str(p[1]), v_str(p[2]))


@dataclass(slots=True, frozen=True)
class PushPullState:
    """One member's state inside a push-pull exchange.

    A push-pull carries every member (hundreds of entries) but the receiver acts
    on few of them — most are identical to what it has. So metadata and
    coordinate are checked for shape at decode time and fully validated only
    when used (:meth:`decoded_meta`, :meth:`decoded_coord`, which raise
    WireError); the receiver skips and counts an entry that fails.
    """

    node: str
    addr: str
    incarnation: int
    state: int
    meta_raw: list[Any]
    coord_raw: list[Any] | None

    @classmethod
    def of(cls, node: str, addr: str, incarnation: int, state: int, meta: NodeMeta, coord: Coordinate | None) -> "PushPullState":
        """Build an entry from typed values."""
        return cls(node, addr, incarnation, state, meta.to_wire(), coord.to_wire() if coord is not None else None)

    def decoded_meta(self) -> NodeMeta:
        """The validated metadata (raises WireError)."""
        try:
            return NodeMeta.from_wire(self.meta_raw)
        except WireError:
            raise
        except Exception as exc:
            raise WireError(f"invalid metadata for {self.node}: {exc}") from None

    def decoded_coord(self) -> Coordinate | None:
        """The validated coordinate, if any (raises WireError)."""
        if self.coord_raw is None:
            return None
        try:
            return Coordinate.from_wire(self.coord_raw)
        except WireError:
            raise
        except Exception as exc:
            raise WireError(f"invalid coordinate for {self.node}: {exc}") from None

    def to_wire(self) -> list[Any]:
        return [self.node, self.addr, self.incarnation, self.state, self.meta_raw, self.coord_raw]

    @classmethod
    def from_wire(cls, x: Any) -> "PushPullState":
        f = v_list(x, 6)
        v_fields(f, 6)
        meta = v_list(f[4], 8)
        if len(meta) != 8:
            raise WireError("metadata needs 8 fields")
        coord = None if f[5] is None else v_list(f[5], 35)
        return cls(v_str(f[0]), v_str(f[1]), v_int(f[2], 0, _U64), v_int(f[3], 0, 3), meta, coord)


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
