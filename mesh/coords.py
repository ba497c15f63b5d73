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
from collections import deque
from dataclasses import dataclass
from typing import Any

from mesh.wire import v_float, v_list

ZERO_THRESHOLD = 1.0e-6


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
        return _magnitude(_diff(self.vec, other.vec)) + self.height + other.height

    def distance(self, other: "Coordinate") -> float:
        """Estimated RTT in seconds between the two coordinates."""
        dist = self.raw_distance(other)
        adjusted = dist + self.adjustment + other.adjustment
        return adjusted if adjusted > 0.0 else dist

    def is_valid(self) -> bool:
        """True when every component is a finite number."""
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
        vals = [v_float(v, -1e6, 1e6) for v in f]
        return cls(tuple(vals[:-3]), vals[-3], vals[-2], vals[-1])


def _diff(a: tuple[float, ...], b: tuple[float, ...]) -> list[float]:
    return [x - y for x, y in zip(a, b)]


def _magnitude(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


class VivaldiClient:
    """Maintains one node's coordinate from observed RTTs (Serf's coordinate.Client)."""

    def __init__(self, rng: random.Random, config: VivaldiConfig | None = None) -> None:
        self.config = config or VivaldiConfig()
        self._rng = rng
        self.coord = Coordinate.origin(self.config)
        self._origin = Coordinate.origin(self.config)
        self._adjustment_samples = [0.0] * self.config.adjustment_window
        self._adjustment_index = 0
        self._latency_filter: dict[str, deque[float]] = {}
        self.updates = 0
        self.resets = 0

    def forget(self, node: str) -> None:
        """Drop the latency filter kept for a node that left."""
        self._latency_filter.pop(node, None)

    def update(self, node: str, other: Coordinate, rtt: float) -> Coordinate:
        """Feed one RTT sample (seconds) towards ``node`` at ``other``; return the new coordinate."""
        if (
            rtt < 0
            or not math.isfinite(rtt)
            or rtt > 10.0
            or not other.is_valid()
            or len(other.vec) != self.config.dimensionality
        ):
            return self.coord
        rtt = self._filtered(node, rtt)
        self._update_vivaldi(other, rtt)
        self._update_adjustment(other, rtt)
        self._update_gravity()
        if not self.coord.is_valid():
            # Serf resets on NaN/Inf rather than poisoning every peer's estimate.
            self.coord = Coordinate.origin(self.config)
            self.resets += 1
        self.updates += 1
        return self.coord

    def _filtered(self, node: str, rtt: float) -> float:
        samples = self._latency_filter.get(node)
        if samples is None:
            samples = deque(maxlen=self.config.latency_filter_size)
            self._latency_filter[node] = samples
        samples.append(rtt)
        ordered = sorted(samples)
        return ordered[len(ordered) // 2]

    def _update_vivaldi(self, other: Coordinate, rtt: float) -> None:
        cfg = self.config
        c = self.coord
        rtt = max(rtt, ZERO_THRESHOLD)
        dist = c.distance(other)
        wrongness = abs(dist - rtt) / rtt
        total_error = max(c.error + other.error, ZERO_THRESHOLD)
        weight = c.error / total_error
        error = min(cfg.ce * weight * wrongness + c.error * (1.0 - cfg.ce * weight), cfg.error_max)
        force = cfg.cc * weight * (rtt - dist)
        moved = self._apply_force(c, force, other)
        self.coord = Coordinate(moved.vec, error, c.adjustment, moved.height)

    def _update_adjustment(self, other: Coordinate, rtt: float) -> None:
        window = self.config.adjustment_window
        if window == 0:
            return
        c = self.coord
        self._adjustment_samples[self._adjustment_index] = rtt - c.raw_distance(other)
        self._adjustment_index = (self._adjustment_index + 1) % window
        adjustment = sum(self._adjustment_samples) / (2.0 * window)
        self.coord = Coordinate(c.vec, c.error, adjustment, c.height)

    def _update_gravity(self) -> None:
        c = self.coord
        dist = self._origin.distance(c)
        force = -1.0 * (dist / self.config.gravity_rho) ** 2
        moved = self._apply_force(c, force, self._origin)
        self.coord = Coordinate(moved.vec, c.error, c.adjustment, moved.height)

    def _apply_force(self, c: Coordinate, force: float, other: Coordinate) -> Coordinate:
        unit, mag = self._unit_vector_at(c.vec, other.vec)
        vec = tuple(x + u * force for x, u in zip(c.vec, unit))
        height = c.height
        if mag > ZERO_THRESHOLD:
            height = max((c.height + other.height) * force / mag + c.height, self.config.height_min)
        return Coordinate(vec, c.error, c.adjustment, height)

    def _unit_vector_at(self, a: tuple[float, ...], b: tuple[float, ...]) -> tuple[list[float], float]:
        d = _diff(a, b)
        mag = _magnitude(d)
        if mag > ZERO_THRESHOLD:
            return [x / mag for x in d], mag
        # Coincident points: push in a random direction (seeded for determinism).
        for _ in range(5):
            d = [self._rng.random() - 0.5 for _ in a]
            mag = _magnitude(d)
            if mag > ZERO_THRESHOLD:
                return [x / mag for x in d], 0.0
        return [0.0] * len(a), 0.0
