"""Vivaldi network coordinates, as in Serf's ``coordinate`` package.

Each node keeps a point in an 8-dimensional Euclidean space plus a *height*
(the access-link latency that no direction explains), an *error* estimate and an
*adjustment* term (a running offset that corrects the systematic error of the
embedding). Every direct probe RTT moves the node's own point like a spring
towards or away from the peer's point; the timestep adapts to the relative
error of both nodes so a confident node is not dragged by an unconfident one.
A weak *gravity* pulls coordinates to the origin so the whole system does not
drift. Then ``estimate_rtt(a, b)`` is the distance between two coordinates.

Defaults follow Serf's ``DefaultConfig`` (dimensionality 8, error max 1.5,
ce = cc = 0.25, adjustment window 20, height min 10 µs, latency filter 3,
gravity rho 150). Randomness (the direction to push two coincident points) comes
from an injected ``random.Random`` so simulations stay reproducible.
"""

from __future__ import annotations

import math
import random
import struct
import threading
from array import array
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from mesh.wire import v_float, v_list

ZERO_THRESHOLD = 1.0e-6
_FLOAT = {float}


class _F64Structs(dict[int, struct.Struct]):
    def __missing__(self, n: int) -> struct.Struct:
        self[n] = st = struct.Struct(f"<{n}d")
        return st


_F64 = _F64Structs()  # n -> packer of n float64s (latency filters)
_NAN = float("nan")

# Slot numbers shared by every PackedTable: an int above 256 is a 28-byte object of its
# own, and a table of N entries would otherwise hold N of them per node.
_SLOTS: list[int] = list(range(1024))
_SLOTS_LOCK = threading.Lock()


def _slot_int(i: int) -> int:
    if i < len(_SLOTS):
        return _SLOTS[i]
    with _SLOTS_LOCK:
        while len(_SLOTS) <= i:
            _SLOTS.append(len(_SLOTS))
    return _SLOTS[i]


class PackedTable:
    """A dict of name -> fixed-width ``bytes`` record, the records packed in one bytearray.

    A node keeps small per-peer records (a packed coordinate, a latency filter) for up to
    every member of the mesh. As separate ``bytes`` objects each costs a 33-byte header and
    allocator rounding on top of its payload (80 bytes for a 44-byte coordinate); here it
    costs its payload. ``get`` returns a fresh ``bytes``. A value of another width (a
    coordinate of other dimensions) is kept aside as is, so any value round-trips.

    Record numbers come from ``slots`` (name -> number). By default the table owns it and
    reuses the numbers of removed records. A driver running many nodes in one process (the
    simulator) may pass one ``index`` dict to all their tables: numbers are then assigned
    once per name, never reused, and a table holds no dict of its own (at 1000 members a
    dict is ~37 KiB per table). Tables sharing an index must be used from one thread.
    """

    __slots__ = ("width", "slots", "present", "_shared", "_buf", "_free", "_odd", "_count", "on_change")

    def __init__(self, width: int, index: dict[str, int] | None = None) -> None:
        self.width = width
        self._shared = index is not None
        # name -> record number; read-only outside the table (bulk readers: see snapshot).
        self.slots: dict[str, int] = index if index is not None else {}
        # present[n] is 1 iff record n holds a value (a shared index numbers absent names too).
        self.present = bytearray()
        self._buf = bytearray()
        self._free: list[int] = []
        self._odd: dict[str, bytes] = {}
        self._count = 0
        # Set by a reader that keeps something derived from the set of keys of ``width``
        # records: called with the key whenever one is added or removed (overwriting a
        # record is no change; values of another width are not tracked).
        self.on_change: Callable[[str], None] | None = None

    def _number(self, key: object) -> int | None:
        n = self.slots.get(key)  # type: ignore[call-overload]
        if n is None or n >= len(self.present) or not self.present[n]:
            return None
        return n

    def __len__(self) -> int:
        return self._count + len(self._odd)

    def __contains__(self, key: object) -> bool:
        return self._number(key) is not None or key in self._odd

    def __iter__(self) -> Iterator[str]:
        present, size = self.present, len(self.present)
        return iter([*(k for k, n in self.slots.items() if n < size and present[n]), *self._odd])

    def get(self, key: str, default: Any = None) -> Any:
        """The record for ``key`` (a new bytes object), or ``default``."""
        n = self._number(key)
        if n is None:
            return self._odd.get(key, default) if self._odd else default
        w = self.width
        o = n * w
        return bytes(self._buf[o : o + w])

    def unpacked(self, key: str, st: struct.Struct) -> tuple[Any, ...] | None:
        """``st.unpack(self.get(key))`` without the copy (``st.size`` must be the width), or None."""
        n = self.slots.get(key)
        if n is None or n >= len(self.present) or not self.present[n]:
            if self._odd and key in self._odd:
                return st.unpack(self._odd[key])
            return None
        return st.unpack_from(self._buf, n * self.width)

    def pack_into(self, key: str, st: struct.Struct, *values: Any) -> None:
        """``self[key] = st.pack(*values)``, written in place when ``key`` already holds a record of this width."""
        n = self.slots.get(key)
        if n is None or n >= len(self.present) or not self.present[n] or st.size != self.width:
            self[key] = st.pack(*values)
            return
        st.pack_into(self._buf, n * self.width, *values)

    def __getitem__(self, key: str) -> bytes:
        v = self.get(key)
        if v is None:
            raise KeyError(key)
        return v

    def offset(self, key: str) -> int | None:
        """Where ``key``'s record starts in the packed buffer, or None if it holds none of this width."""
        n = self.slots.get(key)
        if n is None or n >= len(self.present) or not self.present[n]:
            return None
        return n * self.width

    def __setitem__(self, key: str, value: bytes) -> None:
        w = self.width
        n = self.slots.get(key)
        if n is not None and len(value) == w and n < len(self.present) and self.present[n]:
            # Overwriting a record of this width (every ack rewrites its sender's coordinate):
            # in place, nothing else changes.
            o = n * w
            self._buf[o : o + w] = value
            return
        if len(value) != w:
            self.pop(key, None)
            self._odd[key] = bytes(value)
            return
        if self._odd:
            self._odd.pop(key, None)
        slots = self.slots
        n = slots.get(key)
        if n is None:
            if self._shared:
                n = slots[key] = _slot_int(len(slots))
            elif self._free:
                n = slots[key] = self._free.pop()
            else:
                n = slots[key] = _slot_int(len(self.present))
        present = self.present
        if n >= len(present):
            grow = n + 1 - len(present)
            present += bytes(grow)
            self._buf += bytes(grow * w)
        o = n * w
        self._buf[o : o + w] = value
        if not present[n]:
            present[n] = 1
            self._count += 1
            if self.on_change is not None:
                self.on_change(key)

    def snapshot(self) -> bytes | None:
        """A copy of the packed records for many reads in a row (building a push-pull):
        the record of a name with ``n = slots[name]``, if ``n < len(present) and present[n]``,
        is ``buf[n * width:(n + 1) * width]``. None when some value of another width is kept
        aside (then read with ``get``)."""
        return None if self._odd else bytes(self._buf)

    def pop(self, key: str, default: Any = None) -> Any:
        """Remove ``key``; return its record or ``default``."""
        n = self._number(key)
        if n is None:
            return self._odd.pop(key, default) if self._odd else default
        if self.on_change is not None:
            self.on_change(key)
        w = self.width
        o = n * w
        self.present[n] = 0
        self._count -= 1
        if not self._shared:
            del self.slots[key]
            self._free.append(n)
        return bytes(self._buf[o : o + w])


@dataclass(slots=True, frozen=True)
class VivaldiConfig:
    """Tuning of the Vivaldi update rule (Serf's defaults)."""

    dimensionality: int = 8
    error_max: float = 1.5
    ce: float = 0.25
    cc: float = 0.25
    adjustment_window: int = 20
    height_min: float = 10.0e-6
    latency_filter_size: int = 3
    gravity_rho: float = 150.0


@dataclass(slots=True, frozen=True)
class Coordinate:
    """A point in the Vivaldi space (seconds)."""

    vec: tuple[float, ...]
    error: float
    adjustment: float
    height: float

    @classmethod
    def origin(cls, config: VivaldiConfig) -> "Coordinate":
        """The starting coordinate: origin, maximal error."""
        return cls((0.0,) * config.dimensionality, config.error_max, 0.0, config.height_min)

    def raw_distance(self, other: "Coordinate") -> float:
        """Euclidean distance plus both heights, without adjustments."""
        return math.dist(self.vec, other.vec) + self.height + other.height

    def distance(self, other: "Coordinate") -> float:
        """Estimated RTT in seconds between the two coordinates."""
        dist = self.raw_distance(other)
        adjusted = dist + self.adjustment + other.adjustment
        return adjusted if adjusted > 0.0 else dist

    def is_valid(self) -> bool:
        """True when every component is a finite number."""
        # A sum of finite floats is finite unless it overflows; inf/nan anywhere makes it non-finite.
        if math.isfinite(sum(self.vec) + self.error + self.adjustment + self.height):
            return True
        return all(math.isfinite(x) for x in (*self.vec, self.error, self.adjustment, self.height))

    def to_wire(self) -> list[Any]:
        """Encode as a flat list: vec..., error, adjustment, height."""
        return [*self.vec, self.error, self.adjustment, self.height]

    @classmethod
    def from_wire(cls, x: Any) -> "Coordinate":
        """Decode and validate a coordinate (raises WireError)."""
        f = v_list(x, 35)
        if len(f) < 4:
            raise ValueError("coordinate too short")
        # Fast path (every ack carries one): all floats, finite (their sum is), in bounds.
        if set(map(type, f)) == _FLOAT and math.isfinite(sum(f)) and -1e6 <= min(f) and max(f) <= 1e6:
            vals = f
        else:
            vals = [v_float(v, -1e6, 1e6) for v in f]
        return cls(tuple(vals[:-3]), vals[-3], vals[-2], vals[-1])


_DEFAULT_CONFIG = VivaldiConfig()


class VivaldiClient:
    """Maintains one node's coordinate from observed RTTs (Serf's coordinate.Client).

    The update runs once per acked probe on every node, so it works on plain floats:
    the coordinate is kept as its fields (vector as a list, error, adjustment, height),
    and the ``Coordinate`` object and the packed float32 form are built only when read
    (:attr:`coord`, :meth:`packed`), once per change (the maths is Serf's: spring force,
    adjustment window, gravity).
    """

    # Slots: a node reads a dozen of these per acked probe, from one object instead of an
    # object and its attribute values stored apart.
    __slots__ = (
        "config", "_rng", "_origin", "_vec", "_error", "_adjustment", "_height", "_coord", "_packed",
        "_adjustment_samples", "_adjustment_index", "_keep", "_latency_filter", "_packer", "updates", "resets",
    )
    _coord: Coordinate | None  # built from the fields on first read after a change
    _packed: bytes | None  # likewise, its float32 form

    def __init__(self, rng: random.Random, config: VivaldiConfig | None = None) -> None:
        # Frozen: every client without a config of its own shares the default one.
        self.config = cfg = config or _DEFAULT_CONFIG
        self._rng = rng
        self._origin = Coordinate.origin(cfg)
        self._set(self._origin)
        # Packed doubles, not a list of floats: each update replaces one sample, so a list's
        # float objects end up scattered over the heap and sum() would touch as many cache lines.
        self._adjustment_samples = array("d", bytes(8 * cfg.adjustment_window))
        self._adjustment_index = 0
        # node -> the samples the filter keeps between updates (the last size - 1; NaN where
        # there are fewer yet), packed float64s: a node keeps one filter per peer it probes,
        # so it must be small (a deque costs ~600 bytes, these 8 * (size - 1)).
        self._keep = max(0, cfg.latency_filter_size - 1)
        self._latency_filter = PackedTable(8 * self._keep)
        self._packer = struct.Struct(f"<{cfg.dimensionality + 3}f")
        self.updates = 0
        self.resets = 0

    def _set(self, c: Coordinate) -> None:
        self._vec = list(c.vec)
        self._error = c.error
        self._adjustment = c.adjustment
        self._height = c.height
        self._coord = c
        self._packed = None

    @property
    def coord(self) -> Coordinate:
        """The current coordinate (built on first read after a change)."""
        c = self._coord
        if c is None:
            c = self._coord = Coordinate(tuple(self._vec), self._error, self._adjustment, self._height)
        return c

    @coord.setter
    def coord(self, c: Coordinate) -> None:
        self._set(c)

    def packed(self) -> bytes:
        """The current coordinate as float32s (vec..., error, adjustment, height), as
        ``PushPullState.pack_coord(self.coord)`` gives it: packed once per change."""
        p = self._packed
        if p is None:
            vec = self._vec
            st = self._packer if len(vec) + 3 == self._packer.size // 4 else struct.Struct(f"<{len(vec) + 3}f")
            p = self._packed = st.pack(*vec, self._error, self._adjustment, self._height)
        return p

    def share_index(self, index: dict[str, int]) -> None:
        """Number latency filters through ``index``, shared with other tables (see PackedTable)."""
        if len(self._latency_filter):
            raise ValueError("share_index must be called before any RTT sample")
        self._latency_filter = PackedTable(8 * self._keep, index)

    def forget(self, node: str) -> None:
        """Drop the latency filter kept for a node that left."""
        self._latency_filter.pop(node, None)

    def update(self, node: str, other: Coordinate, rtt: float) -> Coordinate:
        """Feed one RTT sample (seconds) towards ``node`` at ``other``; return the new coordinate."""
        if len(other.vec) != self.config.dimensionality or not other.is_valid():
            return self.coord
        self._update(node, other.vec, other.error, other.adjustment, other.height, rtt)
        return self.coord

    def update_packed(self, node: str, values: tuple[float, ...], rtt: float) -> None:
        """:meth:`update` with the peer's coordinate as its flat values (vec..., error,
        adjustment, height: a packed coordinate unpacked), already known to have
        ``dimensionality`` dimensions and finite values (e.g. ``coord_ok``): no
        ``Coordinate`` is built for it, nor for ours (read :attr:`coord` for it)."""
        self._update(node, values[:-3], values[-3], values[-2], values[-1], rtt)

    def update_values(
        self, node: str, ovec: tuple[float, ...], oerror: float, oadjustment: float, oheight: float, rtt: float
    ) -> Coordinate:
        """:meth:`update` on a peer coordinate of the right dimensionality and finite values."""
        self._update(node, ovec, oerror, oadjustment, oheight, rtt)
        return self.coord

    def _update(
        self, node: str, ovec: tuple[float, ...], oerror: float, oadjustment: float, oheight: float, rtt: float
    ) -> None:
        if rtt < 0 or not math.isfinite(rtt) or rtt > 10.0:
            return
        cfg = self.config
        # Runs on every acked probe of every node: Serf's arithmetic, term for term (the
        # same floats in the same order as _apply_force), with the common case inlined.
        rtt = self._filtered(node, rtt) if self._keep else rtt
        vec = self._vec
        height = self._height
        c_error = self._error
        c_adjustment = self._adjustment
        # Serf's updateVivaldi: a spring between us and the peer, weighted by relative error.
        if rtt < ZERO_THRESHOLD:
            rtt = ZERO_THRESHOLD
        dist_ = math.dist
        mag = dist_(vec, ovec)
        raw = mag + height + oheight
        adjusted = raw + c_adjustment + oadjustment
        dist = adjusted if adjusted > 0.0 else raw
        wrongness = abs(dist - rtt) / rtt
        total_error = c_error + oerror
        if total_error < ZERO_THRESHOLD:
            total_error = ZERO_THRESHOLD
        weight = c_error / total_error
        ce = cfg.ce
        error = ce * weight * wrongness + c_error * (1.0 - ce * weight)
        if error > cfg.error_max:  # min(error, error_max): the same float either way
            error = cfg.error_max
        force = cfg.cc * weight * (rtt - dist)
        height_min = cfg.height_min
        if mag > ZERO_THRESHOLD:
            f = force / mag
            vec = [x + (x - y) * f for x, y in zip(vec, ovec)]
            height = (height + oheight) * force / mag + height
            if height < height_min:
                height = height_min
        else:
            tvec, height = self._apply_force(tuple(vec), height, force, ovec, oheight, mag)
            vec = list(tvec)
        # updateAdjustment: a running mean of the residual over the window.
        adjustment = c_adjustment
        window = cfg.adjustment_window
        if window:
            samples = self._adjustment_samples
            i = self._adjustment_index
            samples[i] = rtt - (dist_(vec, ovec) + height + oheight)
            self._adjustment_index = (i + 1) % window
            adjustment = sum(samples) / (2.0 * window)
        # updateGravity: a weak pull towards the origin keeps the system from drifting.
        mag = math.hypot(*vec)
        oheight = height_min  # the origin's height
        raw = mag + oheight + height
        adjusted = raw + adjustment
        dist = adjusted if adjusted > 0.0 else raw
        force = -1.0 * (dist / cfg.gravity_rho) ** 2
        if mag > ZERO_THRESHOLD:
            # the origin's vector is all zeros: x + (x - 0.0) * f is x + x * f, bit for bit
            f = force / mag
            vec = [x + x * f for x in vec]
            height = (height + oheight) * force / mag + height
            if height < height_min:
                height = height_min
        else:
            tvec, height = self._apply_force(tuple(vec), height, force, self._origin.vec, oheight, mag)
            vec = list(tvec)
        self.updates += 1
        # Coordinate.is_valid's test: a finite sum means all finite.
        if not math.isfinite(sum(vec) + error + adjustment + height):
            if not Coordinate(tuple(vec), error, adjustment, height).is_valid():
                # Serf resets on NaN/Inf rather than poisoning every peer's estimate.
                self._set(self._origin)
                self.resets += 1
                return
        self._vec, self._error, self._adjustment, self._height = vec, error, adjustment, height
        self._coord = self._packed = None  # rebuilt when read

    def _filtered(self, node: str, rtt: float) -> float:
        """The median of the last ``latency_filter_size`` samples towards ``node``, this one included."""
        keep = self._keep
        if keep == 0:
            return rtt
        table = self._latency_filter
        st = _F64[keep]
        o = table.offset(node)
        if o is None:
            kept = table.unpacked(node, st)  # a record of another width, kept aside
            if kept is None:
                table[node] = st.pack(*([_NAN] * (keep - 1)), rtt)
                return rtt
        else:
            kept = st.unpack_from(table._buf, o)
        if keep == 2:
            # Serf's default filter (3 samples), without the lists: what the general case gives.
            a, b = kept
            if b == b:
                if o is None:
                    table.pack_into(node, st, b, rtt)
                else:
                    st.pack_into(table._buf, o, b, rtt)
                if a != a:  # one sample kept: the larger of two
                    return b if b > rtt else rtt
                # median of three
                if a > b:
                    a, b = b, a
                return b if rtt >= b else (a if rtt <= a else rtt)
        # rtt is finite (checked by update), so NaN marks only the slots not filled yet.
        samples = [x for x in kept if x == x]
        samples.append(rtt)
        last = samples[-keep:]
        table[node] = st.pack(*([_NAN] * (keep - len(last))), *last) if len(last) < keep else st.pack(*last)
        samples.sort()
        return samples[len(samples) // 2]

    def _apply_force(
        self, vec: tuple[float, ...], height: float, force: float, other: tuple[float, ...], other_height: float, mag: float
    ) -> tuple[tuple[float, ...], float]:
        """Move ``vec`` by ``force`` along the unit vector from ``other`` (``mag`` = their distance)."""
        if mag > ZERO_THRESHOLD:
            f = force / mag
            moved = tuple([x + (x - y) * f for x, y in zip(vec, other)])
            return moved, max((height + other_height) * force / mag + height, self.config.height_min)
        # Coincident points: push in a random direction (seeded for determinism).
        unit = [0.0] * len(vec)
        for _ in range(5):
            d = [self._rng.random() - 0.5 for _ in vec]
            m = math.hypot(*d)
            if m > ZERO_THRESHOLD:
                unit = [x / m for x in d]
                break
        return tuple([x + u * force for x, u in zip(vec, unit)]), height

