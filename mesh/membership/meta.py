"""Node metadata carried by membership (last writer wins by incarnation).

A ``NodeMeta`` is normalised and validated when it is built: labels and
hardware tags are sorted tuples, ``load`` is rounded to the three decimals the
wire carries, numbers have their wire types, and every bound the decoder checks
is checked here too. So what a node holds is exactly what every peer decodes
(``NodeMeta.from_wire(meta.to_wire()) == meta``): a node never sees its own
``Alive`` come back "different" and refute it. Building an invalid one raises
:class:`~mesh.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mesh.errors import ConfigError, WireError
from mesh.wire import pack, v_float, v_int, v_list, v_str

MAX_LABELS = 16
MAX_TAGS = 16
# Encoded size bound: an Alive (name, address, key, metadata) must fit one gossip
# datagram of MAX_DATAGRAM bytes with the largest name and address (see test_wire).
MAX_META_BYTES = 512
MAX_LOAD = 1e6
LOAD_DECIMALS = 3
MAX_NAME = 64  # display name
MAX_AGREEMENT = 64  # the agreement digests field
MAX_META_FIELDS = 16  # fields a decoder accepts (newer peers may append some)


def _text(what: str, x: Any, max_len: int, allow_empty: bool = False) -> str:
    if type(x) is not str:
        raise ConfigError(f"node metadata {what} must be a string, got {type(x).__name__}")
    if len(x) > max_len or (not allow_empty and not x):
        bound = f"at most {max_len}" if allow_empty else f"1 to {max_len}"
        raise ConfigError(f"node metadata {what} must have {bound} characters")
    if not x.isprintable():
        # Metadata is shown in tables and logs: no control, format or separator characters.
        raise ConfigError(f"node metadata {what} {x!r:.40} contains non-printable characters")
    return x


def _integer(what: str, x: Any, hi: int) -> int:
    if type(x) is bool or not isinstance(x, int) or not 0 <= x <= hi:
        raise ConfigError(f"node metadata {what} must be an integer in [0, {hi}], got {x!r:.40}")
    return int(x)


def _number(what: str, x: Any, lo: float, hi: float) -> float:
    if type(x) is bool or not isinstance(x, (int, float)) or not math.isfinite(x) or not lo <= x <= hi:
        raise ConfigError(f"node metadata {what} must be a finite number in [{lo}, {hi}], got {x!r:.40}")
    return float(x)


@dataclass(slots=True, frozen=True)
class NodeMeta:
    """What a node says about itself: hardware, placement hints and load.

    It rides on every ``Alive`` message, so it is bounded (at most
    ``MAX_META_BYTES`` encoded) to keep one update well inside a datagram.
    """

    arch: str = "x86_64"
    cores: int = 1
    memory_mb: int = 1024
    labels: tuple[tuple[str, str], ...] = ()
    fault_domain: str = ""
    geo: tuple[float, float] | None = None
    load: float = 0.0
    hardware: tuple[str, ...] = field(default=())
    name: str = ""  # display name (``--name``); the member's identity is its node id
    # "FORMAT:VIEW:SPECS:PLACEMENT" digests of what this node schedules over and computed
    # (``wasmatrix placements --check``, mesh/agreement.py); empty until it first placed.
    agreement: str = ""

    def __post_init__(self) -> None:
        # Normalise once, here, so the held value equals the decoded one.
        put = object.__setattr__
        put(self, "arch", _text("arch", self.arch, 32))
        put(self, "cores", _integer("cores", self.cores, 1 << 16))
        put(self, "memory_mb", _integer("memory_mb", self.memory_mb, 1 << 40))
        labels = self.labels
        if isinstance(labels, dict):
            labels = tuple(labels.items())
        if not isinstance(labels, (tuple, list)) or len(labels) > MAX_LABELS:
            raise ConfigError(f"node metadata labels must be at most {MAX_LABELS} (key, value) pairs")
        norm = []
        for kv in labels:
            if not isinstance(kv, (tuple, list)) or len(kv) != 2:
                raise ConfigError("node metadata labels must be (key, value) pairs")
            norm.append((_text("label key", kv[0], 64), _text("label value", kv[1], 128, allow_empty=True)))
        norm.sort()
        if len({k for k, _ in norm}) != len(norm):
            raise ConfigError("node metadata labels have a duplicate key")
        put(self, "labels", tuple(norm))
        put(self, "fault_domain", _text("fault_domain", self.fault_domain, 200, allow_empty=True))
        if self.geo is not None:
            if not isinstance(self.geo, (tuple, list)) or len(self.geo) != 2:
                raise ConfigError("node metadata geo must be (latitude, longitude)")
            put(self, "geo", (_number("latitude", self.geo[0], -90, 90), _number("longitude", self.geo[1], -180, 180)))
        load = round(_number("load", self.load, 0.0, MAX_LOAD), LOAD_DECIMALS)
        put(self, "load", load + 0.0)  # + 0.0 turns -0.0 into 0.0
        hardware = self.hardware
        if not isinstance(hardware, (tuple, list)) or len(hardware) > MAX_TAGS:
            raise ConfigError(f"node metadata hardware must be at most {MAX_TAGS} tags")
        put(self, "hardware", tuple(sorted(_text("hardware tag", t, 64) for t in hardware)))
        put(self, "name", _text("name", self.name, MAX_NAME, allow_empty=True))
        put(self, "agreement", _text("agreement", self.agreement, MAX_AGREEMENT, allow_empty=True))
        size = len(pack(self.to_wire()))
        if size > MAX_META_BYTES:
            raise ConfigError(f"node metadata encodes to {size} bytes, more than {MAX_META_BYTES}")

    def to_wire(self) -> list[Any]:
        """Encode as a msgpack-friendly list (the 10th field only when set: older encodings stay byte-identical)."""
        wire = [
            self.arch,
            self.cores,
            self.memory_mb,
            [list(kv) for kv in self.labels],
            self.fault_domain,
            list(self.geo) if self.geo is not None else None,
            self.load,
            list(self.hardware),
            self.name,
        ]
        if self.agreement:
            wire.append(self.agreement)
        return wire

    @classmethod
    def from_wire(cls, x: Any) -> "NodeMeta":
        """Decode and validate (raises WireError)."""
        # 8 fields before the display name existed; a newer peer may append more (ignored).
        f = v_list(x, MAX_META_FIELDS)
        if len(f) < 8:
            raise WireError("meta needs at least 8 fields")
        labels = tuple(
            (v_str(kv[0], 64), v_str(kv[1], 128, allow_empty=True))
            for kv in (v_list(i, 2) for i in v_list(f[3], MAX_LABELS))
        )
        geo = None
        if f[5] is not None:
            g = v_list(f[5], 2)
            if len(g) != 2:
                raise WireError("geo needs 2 fields")
            geo = (v_float(g[0], -90, 90), v_float(g[1], -180, 180))
        try:
            return cls(
                arch=v_str(f[0], 32),
                cores=v_int(f[1], 0, 1 << 16),
                memory_mb=v_int(f[2], 0, 1 << 40),
                labels=labels,
                fault_domain=v_str(f[4], 200, allow_empty=True),
                geo=geo,
                load=v_float(f[6], 0.0, MAX_LOAD),
                hardware=tuple(v_str(t, 64) for t in v_list(f[7], MAX_TAGS)),
                name=v_str(f[8], MAX_NAME, allow_empty=True) if len(f) > 8 else "",
                agreement=v_str(f[9], MAX_AGREEMENT, allow_empty=True) if len(f) > 9 else "",
            )
        except ConfigError as exc:
            raise WireError(str(exc)) from None

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
