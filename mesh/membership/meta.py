"""Node metadata carried by membership (last writer wins by incarnation)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mesh.wire import v_float, v_int, v_list, v_str

MAX_LABELS = 16
MAX_TAGS = 16


@dataclass(slots=True, frozen=True)
class NodeMeta:
    """What a node says about itself: hardware, placement hints and load.

    It rides on every ``Alive`` message, so it is bounded to keep one update well
    inside a 1200-byte datagram.
    """

    arch: str = "x86_64"
    cores: int = 1
    memory_mb: int = 1024
    labels: tuple[tuple[str, str], ...] = ()
    fault_domain: str = ""
    geo: tuple[float, float] | None = None
    load: float = 0.0
    hardware: tuple[str, ...] = field(default=())

    def to_wire(self) -> list[Any]:
        """Encode as a msgpack-friendly list."""
        return [
            self.arch,
            self.cores,
            self.memory_mb,
            [list(kv) for kv in self.labels],
            self.fault_domain,
            list(self.geo) if self.geo is not None else None,
            round(self.load, 3),
            list(self.hardware),
        ]

    @classmethod
    def from_wire(cls, x: Any) -> "NodeMeta":
        """Decode and validate (raises WireError)."""
        f = v_list(x, 8)
        if len(f) != 8:
            raise ValueError("meta needs 8 fields")
        labels = tuple(
            (v_str(kv[0], 64), v_str(kv[1], 128, allow_empty=True))
            for kv in (v_list(i, 2) for i in v_list(f[3], MAX_LABELS))
        )
        geo = None
        if f[5] is not None:
            g = v_list(f[5], 2)
            geo = (v_float(g[0], -90, 90), v_float(g[1], -180, 180))
        return cls(
            arch=v_str(f[0], 32),
            cores=v_int(f[1], 0, 1 << 16),
            memory_mb=v_int(f[2], 0, 1 << 40),
            labels=tuple(sorted(labels)),
            fault_domain=v_str(f[4], 200, allow_empty=True),
            geo=geo,
            load=v_float(f[6], 0.0, 1e6),
            hardware=tuple(sorted(v_str(t, 64) for t in v_list(f[7], MAX_TAGS))),
        )

    def label(self, key: str) -> str | None:
        """The value of a label, or None."""
        for k, v in self.labels:
            if k == key:
                return v
        return None

    @staticmethod
    def make_labels(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
        """Normalise a label dict into the sorted tuple form."""
        return tuple(sorted((str(k), str(v)) for k, v in labels.items()))
