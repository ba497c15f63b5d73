"""The module manifest: what a publisher vouches for, and the one validation of it.

``wasmatrix module publish`` builds a ``Manifest``, the registry stores ``to_payload()`` inside a
record signed by the publisher, every node re-validates it with ``from_payload`` when it merges
the record, and the runtime admits exactly that manifest (typed capability request and limits)
after checking the same signature over ``manifest_signing_bytes``.
"""

from __future__ import annotations

import enum
import hashlib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any

from model.canonical import record_signing_bytes
from model.errors import SpecError
from model.semver import Version

MANIFEST_VERSION = 1
# Seed 004: modules up to 50 MB; the smallest valid module is its 8-byte header.
MAX_MODULE_BYTES = 50 * 1024 * 1024
MIN_MODULE_BYTES = 8
MAX_DESCRIPTION = 1024
MAX_ITEMS = 64  # per capability list: a manifest stays small (it rides in a CRDT record)

NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
HTTP_HOST_RE = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?$")
KV_NAMESPACE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

WASM_PAGE_BYTES = 65536
MIB = 1 << 20
# Seed 004 FR-WASM-006: 128 MB default memory, configurable 1-512 MB;
# 30 s default execution time, configurable up to 300 s.
DEFAULT_MEMORY_BYTES = 128 * MIB
MAX_MEMORY_BYTES = 512 * MIB
DEFAULT_TIMEOUT_MS = 30_000
MAX_TIMEOUT_MS = 300_000
# Tables hold function references; C and Rust modules need a few hundred.
DEFAULT_TABLE_ELEMENTS = 10_000
MAX_TABLE_ELEMENTS = 10_000_000
# Seed 003 R14: 100 concurrent executions per tenant; a module is one tenant here.
DEFAULT_MAX_CONCURRENCY = 100
MAX_CONCURRENCY = 100_000
MAX_FUEL = 2**62


def sha256_hex(data: bytes) -> str:
    """The lowercase hex SHA-256 of ``data``: the name of a blob."""
    return hashlib.sha256(data).hexdigest()


def _int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class Abi(str, enum.Enum):
    """How a module receives a request and returns a response (see docs/ABI.md)."""

    WASI_COMMAND = "wasi-command"
    DIRECT = "direct"


# CLI spelling of opting out of a capability granted by default -> the field it clears.
_DENY_FLAGS = {"no-clocks": "clocks", "no-random": "random"}


@dataclass(slots=True, frozen=True)
class CapabilityRequest:
    """The capabilities a manifest asks for, by name (no host paths or secret values).

    The CLI spelling of one item (``--capability``) is ``env:NAME``, ``dir:/guest/path[:rw]``,
    ``kv:NAMESPACE``, ``http:HOST``, ``log``, ``no-clocks`` or ``no-random``.

    Clocks and random are requested by default (issue 12, seed 004 lists wall-clock and random
    among the allowed capabilities: Rust's std seeds ``HashMap`` from WASI random and most
    languages read the clock); ``no-clocks`` / ``no-random`` opt out. ``clocks`` / ``random`` are
    still accepted on the command line and request the default. Filesystem, network and
    environment stay deny-by-default.

    The signed plain-data form (``to_payload``) is unchanged from before the new default: it lists
    ``clocks`` / ``random`` when requested and an absent item means not requested, so records
    signed earlier keep their bytes and their meaning.
    """

    env: tuple[str, ...] = ()
    dirs: tuple[str, ...] = ()  # guest paths; suffix ":rw" asks for write access
    kv_namespaces: tuple[str, ...] = ()
    http_hosts: tuple[str, ...] = ()
    log: bool = False
    clocks: bool = True
    random: bool = True

    def __post_init__(self) -> None:
        for name in ("env", "dirs", "kv_namespaces", "http_hosts"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
                raise SpecError(f"capability {name} must be a tuple of strings")
            if len(value) > MAX_ITEMS:
                raise SpecError(f"capability {name} lists {len(value)} items; at most {MAX_ITEMS}")
        for flag in ("log", "clocks", "random"):
            if not isinstance(getattr(self, flag), bool):
                raise SpecError(f"capability {flag} must be a boolean")
        for env in self.env:
            if not ENV_NAME_RE.match(env):
                raise SpecError(f"invalid environment variable name {env!r:.60}")
        for host in self.http_hosts:
            if not HTTP_HOST_RE.match(host) or len(host) > 253:
                raise SpecError(f"invalid http host entry {host!r:.60} (use host, host:port or *.suffix)")
        for d in self.dirs:
            if not d.startswith("/") or len(d) > 1024:
                raise SpecError(f"requested directory {d!r:.60} must be an absolute guest path")
        for ns in self.kv_namespaces:
            if not KV_NAMESPACE_RE.match(ns):
                raise SpecError(f"KV namespace {ns!r:.60} must be 1-64 of [a-z0-9._-], starting alphanumeric")

    @classmethod
    def from_strings(cls, items: Iterable[str]) -> CapabilityRequest:
        """Parse the CLI spelling (``env:NAME``, ``dir:/p[:rw]``, ``kv:NS``, ``http:HOST``, ``log``, ``no-clocks``, ...).

        Clocks and random are requested unless ``no-clocks`` / ``no-random`` is given.
        """
        return cls._parse(items, defaults=True)

    @classmethod
    def _parse(cls, items: Iterable[str], *, defaults: bool) -> CapabilityRequest:
        """``defaults``: clocks/random start requested (CLI) or absent-means-not (the signed payload)."""
        lists: dict[str, list[str]] = {"env": [], "dir": [], "kv": [], "http": []}
        flags = {"log": False, "clocks": defaults, "random": defaults}
        for item in items:
            kind, sep, value = item.partition(":")
            if not sep and kind in flags:
                flags[kind] = True
            elif defaults and not sep and kind in _DENY_FLAGS:
                flags[_DENY_FLAGS[kind]] = False
            elif sep and value and kind in lists:
                lists[kind].append(value)
            else:
                raise SpecError(
                    f"capability {item!r:.60} is not one of env:NAME, dir:/path[:rw], kv:NAMESPACE, "
                    "http:HOST, log, no-clocks, no-random"
                )
        return cls(
            env=tuple(lists["env"]), dirs=tuple(lists["dir"]), kv_namespaces=tuple(lists["kv"]),
            http_hosts=tuple(lists["http"]), **flags,
        )

    def to_strings(self) -> list[str]:
        """The CLI spelling of every item, in field order (``no-clocks`` / ``no-random`` when opted out)."""
        out = [f"env:{e}" for e in self.env] + [f"dir:{d}" for d in self.dirs]
        out += [f"kv:{n}" for n in self.kv_namespaces] + [f"http:{h}" for h in self.http_hosts]
        out += ["log"] if self.log else []
        return out + [deny for deny, flag in _DENY_FLAGS.items() if not getattr(self, flag)]

    def to_payload(self) -> list[str]:
        """Plain-data form (inside the signed manifest): the items requested, in canonical order.

        A list of strings rather than a map of seven fields: a manifest rides in every registry
        record every node receives. ``clocks`` and ``random`` are listed when requested (the
        encoding records signed before they became the default used), so a default request is
        ``["clocks", "random"]``.
        """
        out = self.to_strings()
        out = [item for item in out if item not in _DENY_FLAGS]
        return out + [f for f in ("clocks", "random") if getattr(self, f)]

    @classmethod
    def from_payload(cls, data: Any) -> CapabilityRequest:
        """Parse the plain-data form strictly: canonical order, each item once (one encoding per request)."""
        if not isinstance(data, (list, tuple)) or not all(isinstance(x, str) for x in data):
            raise SpecError("capabilities must be a list of strings such as env:NAME, kv:NAMESPACE, log")
        if len(data) > 4 * MAX_ITEMS + 3:
            raise SpecError(f"capabilities lists {len(data)} items; at most {MAX_ITEMS} of each kind")
        request = cls._parse(data, defaults=False)
        if request.to_payload() != list(data):
            raise SpecError(
                "capabilities must list each item once, env first, then dir, kv, http, log, clocks, random"
            )
        return request


@dataclass(slots=True, frozen=True)
class Limits:
    """What one module may consume: memory, tables, concurrent instances, time, fuel."""

    memory_bytes: int = DEFAULT_MEMORY_BYTES
    table_elements: int = DEFAULT_TABLE_ELEMENTS
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    fuel: int | None = None

    def __post_init__(self) -> None:
        for name in ("memory_bytes", "table_elements", "max_concurrency", "timeout_ms"):
            if not _int(getattr(self, name)):
                raise SpecError(f"limit {name} must be an integer")
        if self.fuel is not None and not _int(self.fuel):
            raise SpecError("limit fuel must be an integer or None")
        if not WASM_PAGE_BYTES <= self.memory_bytes <= MAX_MEMORY_BYTES:
            raise SpecError(
                f"memory limit {self.memory_bytes} bytes is outside 64 KiB..{MAX_MEMORY_BYTES // MIB} MiB"
            )
        if not 0 <= self.table_elements <= MAX_TABLE_ELEMENTS:
            raise SpecError(f"table_elements must be within 0..{MAX_TABLE_ELEMENTS}, got {self.table_elements}")
        if not 1 <= self.max_concurrency <= MAX_CONCURRENCY:
            raise SpecError(f"max_concurrency must be within 1..{MAX_CONCURRENCY}, got {self.max_concurrency}")
        if not 1 <= self.timeout_ms <= MAX_TIMEOUT_MS:
            raise SpecError(f"timeout_ms must be within 1..{MAX_TIMEOUT_MS}, got {self.timeout_ms}")
        if self.fuel is not None and not 1 <= self.fuel <= MAX_FUEL:
            raise SpecError(f"fuel must be a positive integer or None, got {self.fuel}")

    @classmethod
    def from_pages(cls, pages: int, **kwargs: Any) -> Limits:
        """Build limits with linear memory expressed in 64 KiB wasm pages."""
        if pages < 1:
            raise SpecError(f"memory pages must be >= 1, got {pages}")
        return cls(memory_bytes=pages * WASM_PAGE_BYTES, **kwargs)

    @classmethod
    def from_strings(cls, items: Iterable[str]) -> Limits:
        """Parse the CLI spelling ``NAME=INTEGER`` (names are the field names); the rest default."""
        names = {f.name for f in fields(cls)}
        kwargs: dict[str, int] = {}
        for item in items:
            name, _, value = item.partition("=")
            if name not in names or not value.isdigit():
                raise SpecError(f"limit {item!r:.60} must be NAME=INTEGER with NAME one of {', '.join(sorted(names))}")
            kwargs[name] = int(value)
        return cls(**kwargs)

    @property
    def memory_pages(self) -> int:
        """The memory limit in 64 KiB wasm pages."""
        return self.memory_bytes // WASM_PAGE_BYTES

    def clamp(self, ceiling: Limits) -> Limits:
        """Return these limits lowered to ``ceiling`` wherever they exceed it."""
        fuel = self.fuel
        if ceiling.fuel is not None:
            fuel = ceiling.fuel if fuel is None else min(fuel, ceiling.fuel)
        return Limits(
            memory_bytes=min(self.memory_bytes, ceiling.memory_bytes),
            table_elements=min(self.table_elements, ceiling.table_elements),
            max_concurrency=min(self.max_concurrency, ceiling.max_concurrency),
            timeout_ms=min(self.timeout_ms, ceiling.timeout_ms),
            fuel=fuel,
        )

    def to_payload(self) -> dict[str, Any]:
        """Plain-data form (inside the signed manifest)."""
        return {
            "memory_bytes": self.memory_bytes, "table_elements": self.table_elements,
            "max_concurrency": self.max_concurrency, "timeout_ms": self.timeout_ms, "fuel": self.fuel,
        }

    @classmethod
    def from_payload(cls, data: Any) -> Limits:
        """Parse the plain-data form strictly: exactly the known fields, integers (fuel may be None)."""
        _exact(data, "limits", {f.name for f in fields(cls)})
        return cls(**data)


def _exact(data: Any, what: str, expected: set[str]) -> None:
    """Strictness: a payload has exactly the expected fields, so no two encodings mean one manifest."""
    if not isinstance(data, dict):
        raise SpecError(f"{what} must be a map")
    missing = sorted(expected - set(data))
    unknown = sorted(map(str, set(data) - expected))
    if missing or unknown:
        problems = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unknown {', '.join(unknown)}"] if unknown else [])
        raise SpecError(f"{what} fields must be exactly {', '.join(sorted(expected))} ({'; '.join(problems)})")


@dataclass(slots=True, frozen=True)
class Manifest:
    """What a publisher vouches for: which bytes, under which name and version, needing what."""

    name: str
    version: str
    sha256: str
    size: int
    capabilities: CapabilityRequest = field(default_factory=CapabilityRequest)
    limits: Limits = field(default_factory=Limits)
    abi: Abi = Abi.WASI_COMMAND
    created_at: float = 0.0
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_RE.match(self.name):
            raise SpecError(
                f"module name {self.name!r:.70} is invalid: use 1-64 lowercase letters, digits, '.', '_' or '-', "
                "starting and ending with a letter or digit"
            )
        Version.parse(self.version)
        if not isinstance(self.sha256, str) or not SHA256_RE.match(self.sha256):
            raise SpecError("manifest sha256 must be 64 lowercase hex characters")
        if not _int(self.size) or not MIN_MODULE_BYTES <= self.size <= MAX_MODULE_BYTES:
            raise SpecError(f"module size {self.size!r:.20} is outside {MIN_MODULE_BYTES}..{MAX_MODULE_BYTES} bytes")
        if not isinstance(self.capabilities, CapabilityRequest):
            raise SpecError("manifest capabilities must be a CapabilityRequest")
        if not isinstance(self.limits, Limits):
            raise SpecError("manifest limits must be a Limits")
        if not isinstance(self.abi, Abi):
            raise SpecError(f"manifest abi must be one of {', '.join(a.value for a in Abi)}")
        if isinstance(self.created_at, bool) or not isinstance(self.created_at, (int, float)) \
                or not math.isfinite(self.created_at) or not 0 <= self.created_at <= 1e15:
            raise SpecError("manifest created_at must be a finite number of seconds >= 0")
        if not isinstance(self.description, str) or len(self.description) > MAX_DESCRIPTION:
            raise SpecError(f"manifest description must be a string of at most {MAX_DESCRIPTION} characters")

    @property
    def key(self) -> str:
        """``name@version``: the registry key, the identity of a loaded module and its metric label."""
        return f"{self.name}@{self.version}"

    @classmethod
    def for_module(
        cls,
        name: str,
        version: str,
        wasm: bytes,
        *,
        capabilities: CapabilityRequest | None = None,
        limits: Limits | None = None,
        abi: Abi = Abi.WASI_COMMAND,
        created_at: float = 0.0,
        description: str = "",
    ) -> Manifest:
        """Build a manifest describing ``wasm`` (hash and size computed here)."""
        return cls(
            name=name, version=version, sha256=sha256_hex(wasm), size=len(wasm),
            capabilities=capabilities or CapabilityRequest(), limits=limits or Limits(), abi=abi,
            created_at=created_at, description=description,
        )

    def to_payload(self) -> dict[str, Any]:
        """Plain-data form: the registry record's payload, and what the publisher signs."""
        return {
            "v": MANIFEST_VERSION, "name": self.name, "version": self.version, "sha256": self.sha256,
            "size": self.size, "capabilities": self.capabilities.to_payload(), "limits": self.limits.to_payload(),
            "abi": self.abi.value, "created_at": self.created_at, "description": self.description,
        }

    @classmethod
    def from_payload(cls, data: Any) -> Manifest:
        """Parse and validate the plain-data form; raises SpecError (or SemverError) naming the bad field."""
        _exact(data, "manifest", {"v", *(f.name for f in fields(cls))})
        if data["v"] != MANIFEST_VERSION:
            raise SpecError(f"unsupported manifest format version {data['v']!r:.20} (this node reads {MANIFEST_VERSION})")
        try:
            abi = Abi(data["abi"])
        except ValueError:
            raise SpecError(f"manifest abi must be one of {', '.join(a.value for a in Abi)}") from None
        return cls(
            name=data["name"], version=data["version"], sha256=data["sha256"], size=data["size"],
            capabilities=CapabilityRequest.from_payload(data["capabilities"]),
            limits=Limits.from_payload(data["limits"]), abi=abi,
            created_at=data["created_at"], description=data["description"],
        )


def manifest_signing_bytes(manifest: Manifest, seq: int) -> bytes:
    """What a publisher's signature covers: the registry record ``(registry, name@version, payload, seq)``."""
    return record_signing_bytes("registry", manifest.key, manifest.to_payload(), seq)
