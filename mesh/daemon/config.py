"""`wasmatrix node run` settings: flags over an optional TOML file, validated before anything starts.

Every problem is a :class:`DaemonConfigError` naming the flag (or TOML key) and the value, so the
command exits 2 with one line. The TOML file uses the flag names with ``_`` for ``-``::

    data_dir = "/var/lib/wasmatrix"
    bind = "0.0.0.0:7946"
    advertise = "192.0.2.10:7946"
    seed = ["192.0.2.1:7946"]
    mesh_secret = "/etc/wasmatrix/mesh.json"
    name = "truck-7"
    zone = "eu/berlin/truck-7"
    label = ["fleet=north", "gpu=none"]
    geo = "52.52,13.40"
    profile = "vehicle"
    api = "127.0.0.1:7947"
    http = "127.0.0.1:8080"                # HTTP ingress (off unless given) and its bounds:
    http_max_head_bytes = 16384            # 431 above; http_max_body_bytes = 1048576 (413 above),
    http_max_connections = 512             # http_head_timeout = 10, http_idle_timeout = 30,
    http_request_timeout = 30              # (seconds; docs/DAEMON.md "HTTP ingress")
    max_members = 100000                   # membership flood bounds (mesh/membership/config.py)
    max_new_members_per_push_pull = 10000
    max_new_members_per_peer = 20000

    [mqtt]                                 # the MQTT bridge (docs/EVENTS.md "MQTT bridge"); off without it
    broker = "127.0.0.1:1883"
    in = ["sensors/#"]                     # broker topic filters published into the mesh
    out = ["out/#"]                        # mesh topic patterns published to the broker
    client_id = "truck-7-bridge"           # fixed: the broker keeps this client's QoS-1 session
    qos = 1
    keepalive = 60
"""

from __future__ import annotations

import ipaddress
import os
import platform
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh.errors import ConfigError, MeshError
from mesh.ingress.server import IngressConfig
from mesh.membership.config import PROFILES, MembershipConfig
from mesh.membership.config import profile as profile_config
from mesh.membership.meta import MAX_LABELS, MAX_NAME, NodeMeta
from model.errors import SpecError
from model.topics import validate_pattern

MAX_CONFIG_BYTES = 256 << 10
MAX_SEEDS = 64
DEFAULT_PROFILE = "edge"
ARCHES = ("x86_64", "aarch64", "riscv64", "armv7", "wasm32")
# Membership settings an operator may change on top of the profile: the flood bounds. Each is a flag
# (`--max-members N`) and a TOML key (`max_members = N`); `MembershipConfig.validate` checks the relations.
MEMBERSHIP_KEYS = ("max_members", "max_new_members_per_push_pull", "max_new_members_per_peer")
MAX_MEMBER_BOUND = 10_000_000


class DaemonConfigError(MeshError):
    """A flag or config-file value is wrong (exit 2)."""


@dataclass(slots=True, frozen=True)
class MqttConfig:
    """``--mqtt HOST:PORT`` / ``[mqtt]``: the MQTT bridge settings (mesh/mqtt/bridge.py)."""

    broker: tuple[str, int]
    inputs: tuple[str, ...] = ()  # MQTT topic filters subscribed on the broker, published into the mesh
    outputs: tuple[str, ...] = ()  # mesh topic patterns whose events are published to the broker
    client_id: str | None = None  # None: wasmatrix-<node id prefix>
    qos: int = 1
    keepalive: int = 60


MQTT_KEYS = ("broker", "in", "out", "client_id", "qos", "keepalive")
MAX_MQTT_FILTERS = 64


def parse_hostport(text: Any, what: str, *, allow_port_zero: bool = False, need_ip: bool = False) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port); hostnames allowed unless ``need_ip``."""
    if not isinstance(text, str) or not text or len(text) > 300:
        raise DaemonConfigError(f"{what}: expected HOST:PORT, got {text!r:.60}")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise DaemonConfigError(f"{what} {text!r}: expected [IPV6]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise DaemonConfigError(f"{what} {text!r}: expected HOST:PORT")
        if ":" in host:
            raise DaemonConfigError(f"{what} {text!r}: write an IPv6 address as [ADDR]:PORT")
    if not port_text.isdigit():
        raise DaemonConfigError(f"{what} {text!r}: port must be a number")
    port = int(port_text)
    if not (0 if allow_port_zero else 1) <= port <= 65535:
        raise DaemonConfigError(f"{what} {text!r}: port must be in {0 if allow_port_zero else 1}..65535")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if need_ip:
            raise DaemonConfigError(f"{what} {text!r}: needs an IP address, not a host name") from None
        if not all(part and len(part) <= 63 and part.replace("-", "").isalnum() for part in host.split(".")):
            raise DaemonConfigError(f"{what} {text!r}: {host!r} is neither an IP address nor a host name")
    return host, port


def format_hostport(host: str, port: int) -> str:
    """Inverse of :func:`parse_hostport`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(slots=True)
class DaemonConfig:
    """Everything `node run` needs; build it with :func:`load_config`."""

    data_dir: Path
    bind: tuple[str, int]
    advertise: tuple[str, int] | None = None
    seeds: tuple[str, ...] = ()
    mesh_secret: Path | None = None
    insecure: bool = False
    mdns: str | None = None
    name: str = ""
    zone: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    geo: tuple[float, float] | None = None
    arch: str = ""
    profile: str = DEFAULT_PROFILE
    api: tuple[str, int] = ("127.0.0.1", 0)
    log_level: str = "info"
    membership: tuple[tuple[str, int], ...] = ()  # overrides of the profile's MEMBERSHIP_KEYS, sorted
    mqtt: MqttConfig | None = None  # the MQTT bridge, off unless --mqtt / [mqtt] broker is given
    http: tuple[str, int] | None = None  # HTTP ingress address (mesh/ingress), off when None
    http_bounds: IngressConfig = field(default_factory=IngressConfig)

    def membership_config(self) -> MembershipConfig:
        """The profile with the operator's membership overrides (validated by :func:`load_config`)."""
        return profile_config(self.profile).with_overrides(**dict(self.membership))

    def meta(self) -> NodeMeta:
        """The node's metadata as membership carries it."""
        try:
            return NodeMeta(
                arch=self.arch or normal_arch(),
                cores=os.cpu_count() or 1,
                memory_mb=_memory_mb(),
                labels=self.labels,
                fault_domain=self.zone,
                geo=self.geo,
                name=self.name,
            )
        except ConfigError as exc:
            raise DaemonConfigError(str(exc)) from None


def normal_arch() -> str:
    """This machine's architecture in the names the scheduler uses."""
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64", "armv7l": "armv7"}.get(m, m or "x86_64")


def _memory_mb() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20))
    except (ValueError, OSError, AttributeError):
        return 1024


def _labels(items: Any, what: str) -> tuple[tuple[str, str], ...]:
    if items is None:
        return ()
    if isinstance(items, dict):
        items = [f"{k}={v}" for k, v in items.items()]
    if not isinstance(items, (list, tuple)):
        raise DaemonConfigError(f"{what}: expected a list of k=v")
    if len(items) > MAX_LABELS:
        raise DaemonConfigError(f"{what}: at most {MAX_LABELS} labels")
    out: dict[str, str] = {}
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            raise DaemonConfigError(f"{what} {item!r:.60}: expected k=v")
        k, v = item.split("=", 1)
        if not k:
            raise DaemonConfigError(f"{what} {item!r:.60}: empty key")
        if k in out:
            raise DaemonConfigError(f"{what}: key {k!r:.40} given twice")
        out[k] = v
    return tuple(sorted(out.items()))


def _geo(text: Any, what: str) -> tuple[float, float] | None:
    if text is None:
        return None
    if isinstance(text, (list, tuple)) and len(text) == 2:
        parts = list(text)
    elif isinstance(text, str) and text.count(",") == 1:
        parts = text.split(",")
    else:
        raise DaemonConfigError(f"{what} {text!r:.60}: expected LAT,LON")
    try:
        lat, lon = float(parts[0]), float(parts[1])
    except (TypeError, ValueError):
        raise DaemonConfigError(f"{what} {text!r:.60}: expected two numbers LAT,LON") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise DaemonConfigError(f"{what} {text!r:.60}: latitude must be in -90..90 and longitude in -180..180")
    return lat, lon


def _membership(merged: dict[str, Any], profile: str, what: Any) -> tuple[tuple[str, int], ...]:
    """The membership overrides given, each an integer in 1..MAX_MEMBER_BOUND, valid together with the profile."""
    out: dict[str, int] = {}
    for key in MEMBERSHIP_KEYS:
        v = merged.get(key)
        if v is None:
            continue
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_MEMBER_BOUND:
            raise DaemonConfigError(f"{what(key)} {v!r:.40}: expected an integer in 1..{MAX_MEMBER_BOUND}")
        out[key] = v
    try:
        profile_config(profile).with_overrides(**out)
    except ConfigError as exc:
        names = " and ".join(what(k) for k in sorted(out)) or "the profile"
        raise DaemonConfigError(f"{names}: {exc}") from None
    return tuple(sorted(out.items()))


def _topic_filter(text: Any, what: str) -> str:
    """An MQTT topic filter / mesh topic pattern (model/topics.py: the MQTT grammar)."""
    try:
        return validate_pattern(text)
    except SpecError as exc:
        raise DaemonConfigError(f"{what}: {exc}") from None


def _mqtt(base: dict[str, Any], flags: dict[str, Any]) -> MqttConfig | None:
    """The bridge settings: ``[mqtt]`` in the TOML file, overridden by the --mqtt* flags."""
    table = base.get("mqtt", {})
    if not isinstance(table, dict):
        raise DaemonConfigError(f"mqtt (in {flags.get('config')}): expected a [mqtt] table")
    table = {str(k).replace("-", "_"): v for k, v in table.items()}
    unknown = sorted(set(table) - set(MQTT_KEYS))
    if unknown:
        raise DaemonConfigError(f"[mqtt] (in {flags.get('config')}): unknown key(s) {', '.join(unknown)}")
    given = {"broker": "mqtt", "in": "mqtt_in", "out": "mqtt_out", "client_id": "mqtt_client_id"}
    s = dict(table)
    names = {k: f"mqtt.{k} (in {flags.get('config')})" for k in MQTT_KEYS}
    for key, flag in given.items():
        if flags.get(flag) not in (None, [], ()):
            s[key] = flags[flag]
            names[key] = "--" + flag.replace("_", "-")
    if s.get("broker") is None:
        extra = [names[k] for k in MQTT_KEYS if k in s]
        if extra:
            raise DaemonConfigError(f"{extra[0]} needs the broker: --mqtt HOST:PORT (or broker in [mqtt])")
        return None
    broker = parse_hostport(s["broker"], names["broker"])
    lists: dict[str, tuple[str, ...]] = {}
    for key in ("in", "out"):
        items = s.get(key) or []
        if isinstance(items, str):
            items = [items]
        if not isinstance(items, (list, tuple)) or len(items) > MAX_MQTT_FILTERS:
            raise DaemonConfigError(f"{names[key]}: a list of at most {MAX_MQTT_FILTERS} topic filters")
        lists[key] = tuple(dict.fromkeys(_topic_filter(f, names[key]) for f in items))
    if not lists["in"] and not lists["out"]:
        raise DaemonConfigError(f"{names['broker']}: bridges nothing; add --mqtt-in FILTER and/or --mqtt-out PATTERN")
    client_id = s.get("client_id")
    if client_id is not None and (not isinstance(client_id, str) or not 1 <= len(client_id) <= 64
                                  or not all(c.isascii() and c.isprintable() and c != " " for c in client_id)):
        raise DaemonConfigError(f"{names['client_id']} {client_id!r:.70}: 1-64 printable ASCII characters, no spaces")
    qos = s.get("qos", 1)
    if qos not in (0, 1) or isinstance(qos, bool):
        raise DaemonConfigError(f"{names['qos']} {qos!r:.20}: 0 or 1 (1: at least once, the default)")
    keepalive = s.get("keepalive", 60)
    if isinstance(keepalive, bool) or not isinstance(keepalive, int) or not 5 <= keepalive <= 3600:
        raise DaemonConfigError(f"{names['keepalive']} {keepalive!r:.20}: seconds, an integer in 5..3600")
    return MqttConfig(broker, lists["in"], lists["out"], client_id, qos, keepalive)


# HTTP ingress bounds: TOML key / flag (--http-max-head-bytes ...) -> (IngressConfig field, type, min, max).
HTTP_KEYS = {
    "http_max_head_bytes": ("max_head_bytes", int, 1024, 1 << 20),
    "http_max_body_bytes": ("max_body_bytes", int, 0, 1 << 30),
    "http_max_connections": ("max_connections", int, 1, 100_000),
    "http_head_timeout": ("head_timeout_s", float, 0.1, 3600.0),
    "http_idle_timeout": ("idle_timeout_s", float, 0.1, 86400.0),
    "http_request_timeout": ("request_timeout_s", float, 0.1, 600.0),
}


def _http_bounds(merged: dict[str, Any], what: Any) -> IngressConfig:
    out: dict[str, Any] = {}
    for key, (attr, typ, lo, hi) in HTTP_KEYS.items():
        raw = merged.get(key)
        if raw is None:
            continue
        try:
            if isinstance(raw, bool):
                raise ValueError
            value = typ(raw)
            if typ is int and isinstance(raw, float) and raw != value:
                raise ValueError
        except (TypeError, ValueError):
            raise DaemonConfigError(f"{what(key)} {raw!r:.40}: expected a number") from None
        if not lo <= value <= hi:
            raise DaemonConfigError(f"{what(key)} {raw!r:.40}: must be in {lo}..{hi}")
        out[attr] = value
    return IngressConfig(**out)


_KEYS = {
    "data_dir", "bind", "advertise", "seed", "mesh_secret", "insecure", "mdns", "name", "zone", "label",
    "geo", "arch", "profile", "api", "log_level", "mqtt", *MEMBERSHIP_KEYS, "http", *HTTP_KEYS,
}
_MQTT_FLAGS = ("mqtt_in", "mqtt_out", "mqtt_client_id")


def read_toml(path: str) -> dict[str, Any]:
    """The TOML config file as a dict of known keys (unknown keys are an error naming them)."""
    p = Path(path)
    if not p.is_file():
        raise DaemonConfigError(f"--config {path}: no such file")
    try:
        raw = p.read_bytes()[: MAX_CONFIG_BYTES + 1]
    except OSError as exc:
        raise DaemonConfigError(f"--config {path}: cannot read: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise DaemonConfigError(f"--config {path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DaemonConfigError(f"--config {path}: not valid TOML: {exc}") from None
    doc = {k.replace("-", "_"): v for k, v in doc.items()}
    if "seeds" in doc and "seed" not in doc:
        doc["seed"] = doc.pop("seeds")
    if "labels" in doc and "label" not in doc:
        doc["label"] = doc.pop("labels")
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise DaemonConfigError(f"--config {path}: unknown key(s) {', '.join(unknown)}")
    return doc


def load_config(flags: dict[str, Any]) -> DaemonConfig:
    """Merge ``flags`` (None = not given) over the TOML file named by ``flags['config']``; validate."""
    base: dict[str, Any] = read_toml(flags["config"]) if flags.get("config") else {}
    merged = dict(base)
    for k, v in flags.items():
        if k in ("config", "mqtt", *_MQTT_FLAGS) or v is None or (isinstance(v, (list, tuple)) and not v) or v is False:
            continue
        merged[k] = v
    def what(key: str) -> str:
        if flags.get(key) not in (None, False, [], ()) or key not in base:
            return f"--{key.replace('_', '-')}"
        return f"{key} (in {flags['config']})"

    data_dir = merged.get("data_dir") or os.environ.get("WASMATRIX_DATA_DIR")
    if not data_dir or not isinstance(data_dir, str):
        raise DaemonConfigError("--data-dir is required (or data_dir in --config, or $WASMATRIX_DATA_DIR)")
    if "bind" not in merged:
        raise DaemonConfigError("--bind HOST:PORT is required (e.g. --bind 127.0.0.1:7946)")
    bind = parse_hostport(merged["bind"], what("bind"), allow_port_zero=True, need_ip=True)
    advertise = None
    if merged.get("advertise"):
        advertise = parse_hostport(merged["advertise"], what("advertise"), need_ip=True)
    elif ipaddress.ip_address(bind[0]).is_unspecified:
        raise DaemonConfigError(f"{what('bind')} {format_hostport(*bind)}: binding every address needs --advertise HOST:PORT")
    seeds = merged.get("seed") or ()
    if isinstance(seeds, str):
        seeds = [seeds]
    if not isinstance(seeds, (list, tuple)) or len(seeds) > MAX_SEEDS:
        raise DaemonConfigError(f"{what('seed')}: a list of at most {MAX_SEEDS} HOST:PORT")
    seed_list = tuple(dict.fromkeys(format_hostport(*parse_hostport(s, what("seed"))) for s in seeds))
    insecure = bool(merged.get("insecure", False))
    secret = merged.get("mesh_secret")
    if secret is not None and not isinstance(secret, str):
        raise DaemonConfigError(f"{what('mesh_secret')}: expected a file path")
    if secret and insecure:
        raise DaemonConfigError("--mesh-secret and --insecure exclude each other")
    if not secret and not insecure:
        raise DaemonConfigError(
            "no --mesh-secret FILE: a node refuses to start without the mesh secret "
            "(create one with `wasmatrix mesh init --out mesh.json`), or pass --insecure for a test mesh"
        )
    name = merged.get("name") or socket.gethostname()[:MAX_NAME]
    if not isinstance(name, str) or len(name) > MAX_NAME or not name.isprintable():
        raise DaemonConfigError(f"{what('name')} {name!r:.80}: 1 to {MAX_NAME} printable characters")
    zone = merged.get("zone") or ""
    if not isinstance(zone, str) or len(zone) > 200 or (zone and any(not p for p in zone.split("/"))):
        raise DaemonConfigError(f"{what('zone')} {zone!r:.80}: expected region/site/unit (non-empty parts, <= 200 chars)")
    profile = merged.get("profile") or DEFAULT_PROFILE
    if profile not in PROFILES:
        raise DaemonConfigError(f"{what('profile')} {profile!r:.40}: choose one of {', '.join(sorted(PROFILES))}")
    arch = merged.get("arch") or ""
    if arch and arch not in ARCHES:
        raise DaemonConfigError(f"{what('arch')} {arch!r:.40}: choose one of {', '.join(ARCHES)}")
    api = parse_hostport(merged.get("api") or "127.0.0.1:0", what("api"), allow_port_zero=True, need_ip=True)
    mdns = merged.get("mdns")
    if mdns is not None and (not isinstance(mdns, str) or not mdns or len(mdns) > 15 or "/" in mdns):
        raise DaemonConfigError(f"{what('mdns')} {mdns!r:.40}: expected a network interface name")
    level = merged.get("log_level") or "info"
    if level not in ("debug", "info", "warning", "error"):
        raise DaemonConfigError(f"{what('log_level')} {level!r:.20}: debug, info, warning or error")
    membership = _membership(merged, profile, what)
    mqtt = _mqtt(base, flags)
    http = parse_hostport(merged["http"], what("http"), allow_port_zero=True, need_ip=True) if merged.get("http") else None
    http_bounds = _http_bounds(merged, what)
    cfg = DaemonConfig(
        data_dir=Path(data_dir),
        bind=bind,
        advertise=advertise,
        seeds=seed_list,
        mesh_secret=Path(secret) if secret else None,
        insecure=insecure,
        mdns=mdns,
        name=name,
        zone=zone,
        labels=_labels(merged.get("label"), what("label")),
        geo=_geo(merged.get("geo"), what("geo")),
        arch=arch,
        profile=profile,
        api=api,
        log_level=level,
        membership=membership,
        mqtt=mqtt,
        http=http,
        http_bounds=http_bounds,
    )
    cfg.meta()  # every metadata bound (sizes, characters) checked now, not at the first gossip
    return cfg
