"""Capabilities: what a module requests, what a node grants, and the import check.

Deny by default, except clocks and random. A module gets WASI stdio, args, its
granted environment, and (unless denied) WASI clocks and random: seed 004 lists
wall-clock and random among the allowed capabilities, Rust's std seeds ``HashMap``
from WASI random and most language runtimes read the clock (issue 12). Everything
else (preopened directories, key-value namespaces, guest logging, outbound HTTP
hosts, environment values) must be granted. The effective grant is
the intersection of the manifest's request and the node's policy; anything
requested but not granted is a denial (counted and audited) and the module
runs without it. A module whose *imports* need more than the effective grant
is refused at admission with the list of offending imports.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from model.manifest import ENV_NAME_RE, HTTP_HOST_RE, CapabilityRequest
from runtime.errors import InvalidSpecError

__all__ = [
    "Capabilities", "CapabilityRequest", "DirGrant", "HOST_MODULE", "ImportReport", "WASI_MODULE", "check_imports", "host_allowed",
]

WASI_MODULE = "wasi_snapshot_preview1"
HOST_MODULE = "wasmatrix"

# Stdio, args, environment (already filtered by the grant) and process exit:
# every WASI command needs them and they reach nothing outside the sandbox.
_WASI_ALWAYS = frozenset({
    "args_get", "args_sizes_get", "environ_get", "environ_sizes_get", "fd_write", "fd_read",
    "fd_close", "fd_seek", "fd_tell", "fd_fdstat_get", "fd_fdstat_set_flags", "fd_filestat_get",
    "fd_prestat_get", "fd_prestat_dir_name", "proc_exit", "sched_yield",
})
_WASI_FS = frozenset({
    "path_open", "path_create_directory", "path_filestat_get", "path_filestat_set_times",
    "path_link", "path_readlink", "path_remove_directory", "path_rename", "path_symlink",
    "path_unlink_file", "fd_readdir", "fd_filestat_set_size", "fd_filestat_set_times", "fd_pread",
    "fd_pwrite", "fd_allocate", "fd_advise", "fd_sync", "fd_datasync", "fd_renumber",
    "fd_fdstat_set_rights",
})
_WASI_CLOCKS = frozenset({"clock_time_get", "clock_res_get", "poll_oneoff"})
_WASI_RANDOM = frozenset({"random_get"})
# sock_* and proc_raise are never granted (seed 003 R7: no raw sockets).

HOST_KV = frozenset({"kv_get", "kv_set", "kv_delete", "kv_list"})
HOST_LOG = frozenset({"log"})
HOST_HTTP = frozenset({"http_fetch"})

DEFAULT_STDOUT_MAX = 1 << 20
DEFAULT_STDERR_MAX = 64 << 10

# One spelling of names and hosts for what a manifest requests and what a node grants.
_ENV_NAME = ENV_NAME_RE
_HOST_ENTRY = HTTP_HOST_RE


@dataclass(slots=True, frozen=True)
class DirGrant:
    """A host directory visible to the guest at ``guest_path``; read-only unless ``writable``."""

    host_path: str
    guest_path: str
    writable: bool = False

    def __post_init__(self) -> None:
        if not self.guest_path.startswith("/"):
            raise InvalidSpecError(f"guest path {self.guest_path!r} must be absolute")
        if not self.host_path:
            raise InvalidSpecError("host path of a directory grant is empty")

    @classmethod
    def parse(cls, spec: str) -> DirGrant:
        """Parse ``HOST[::GUEST][:ro|:rw]`` (the CLI's --dir syntax); default guest = host, ro."""
        writable = False
        if spec.endswith(":rw") or spec.endswith(":ro"):
            writable = spec.endswith(":rw")
            spec = spec[:-3]
        host, sep, guest = spec.partition("::")
        if not host:
            raise InvalidSpecError("--dir needs a host directory: HOST[::GUEST][:ro|:rw]")
        if not sep:
            guest = host if host.startswith("/") else "/" + host.lstrip("./")
        if not os.path.isdir(host):
            raise InvalidSpecError(f"directory {host!r} does not exist")
        return cls(host_path=os.path.abspath(host), guest_path=guest, writable=writable)


def host_allowed(url: str, allowlist: Iterable[str]) -> bool:
    """True when ``url`` is http(s) and its host matches an allowlist entry.

    Entries are exact hosts (``api.example.com``), a host with a port
    (``api.example.com:8443``) or a subdomain wildcard (``*.example.com``).
    """
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not host or parts.username or parts.password:
        return False
    for entry in allowlist:
        entry_host, _, entry_port = entry.partition(":")
        if entry_port and (port is None or int(entry_port) != port):
            continue
        if entry_host.startswith("*."):
            if host.endswith(entry_host[1:]) and host != entry_host[2:]:
                return True
        elif host == entry_host:
            return True
    return False


@dataclass(slots=True, frozen=True)
class Capabilities:
    """An effective grant: exactly what one loaded module may use."""

    env: tuple[tuple[str, str], ...] = ()
    dirs: tuple[DirGrant, ...] = ()
    kv_namespaces: tuple[str, ...] = ()
    http_hosts: tuple[str, ...] = ()
    log: bool = False
    clocks: bool = True  # granted unless denied (issue 12)
    random: bool = True
    stdout_max_bytes: int = DEFAULT_STDOUT_MAX
    stderr_max_bytes: int = DEFAULT_STDERR_MAX

    def __post_init__(self) -> None:
        for name, _ in self.env:
            if not _ENV_NAME.match(name):
                raise InvalidSpecError(f"invalid environment variable name {name!r}")
        for host in self.http_hosts:
            if not _HOST_ENTRY.match(host):
                raise InvalidSpecError(f"invalid http host entry {host!r}")
        if self.stdout_max_bytes < 0 or self.stderr_max_bytes < 0:
            raise InvalidSpecError("output caps must be >= 0")

    @classmethod
    def build(
        cls,
        *,
        env: Mapping[str, str] | None = None,
        dirs: Sequence[DirGrant] = (),
        kv_namespaces: Sequence[str] = (),
        http_hosts: Sequence[str] = (),
        log: bool = False,
        clocks: bool = True,
        random: bool = True,
        stdout_max_bytes: int = DEFAULT_STDOUT_MAX,
        stderr_max_bytes: int = DEFAULT_STDERR_MAX,
    ) -> Capabilities:
        """Convenience constructor taking a mapping and lists."""
        return cls(
            env=tuple(sorted((env or {}).items())), dirs=tuple(dirs), kv_namespaces=tuple(kv_namespaces),
            http_hosts=tuple(h.lower() for h in http_hosts), log=log, clocks=clocks, random=random,
            stdout_max_bytes=stdout_max_bytes, stderr_max_bytes=stderr_max_bytes,
        )

    def restrict(self, request: CapabilityRequest) -> tuple[Capabilities, list[str]]:
        """Intersect this node policy with a manifest's request.

        Returns the effective grant and the requested items that were denied
        (as ``kind:name`` strings) so the caller can count and audit them.
        """
        denied: list[str] = []
        granted_env = dict(self.env)
        env = []
        for name in request.env:
            if name in granted_env:
                env.append((name, granted_env[name]))
            else:
                denied.append(f"env:{name}")
        by_guest = {d.guest_path: d for d in self.dirs}
        dirs = []
        for spec in request.dirs:
            want_write = spec.endswith(":rw")
            guest = spec[:-3] if spec.endswith((":rw", ":ro")) else spec
            grant = by_guest.get(guest)
            if grant is None:
                denied.append(f"dir:{guest}")
                continue
            if want_write and not grant.writable:
                denied.append(f"dir_write:{guest}")
            dirs.append(DirGrant(grant.host_path, guest, writable=want_write and grant.writable))
        kv = []
        for ns in request.kv_namespaces:
            (kv.append(ns) if ns in self.kv_namespaces else denied.append(f"kv:{ns}"))
        hosts = []
        for host in request.http_hosts:
            (hosts.append(host) if host in self.http_hosts else denied.append(f"http:{host}"))
        flags = {}
        for flag in ("log", "clocks", "random"):
            wanted = getattr(request, flag)
            flags[flag] = wanted and getattr(self, flag)
            if wanted and not getattr(self, flag):
                denied.append(flag)
        effective = Capabilities(
            env=tuple(env), dirs=tuple(dirs), kv_namespaces=tuple(kv), http_hosts=tuple(hosts),
            stdout_max_bytes=self.stdout_max_bytes, stderr_max_bytes=self.stderr_max_bytes, **flags,
        )
        return effective, denied


@dataclass(slots=True, frozen=True)
class ImportReport:
    """The imports of a module, split into allowed and offending."""

    allowed: tuple[str, ...] = field(default=())
    offending: tuple[str, ...] = field(default=())


def check_imports(imports: Iterable[tuple[str, str, str]], caps: Capabilities) -> ImportReport:
    """Classify ``(module, name, kind)`` imports against a grant.

    An import is offending when it is not a function, belongs to an unknown
    module, or needs a capability the grant lacks; the message names the
    capability that would allow it.
    """
    allowed: list[str] = []
    offending: list[str] = []
    for module, name, kind in imports:
        label = f"{module}.{name}"
        need: str | None
        if kind != "func":
            need = f"{kind} imports are not supported"
        elif module == WASI_MODULE:
            if name in _WASI_ALWAYS:
                need = None
            elif name in _WASI_FS:
                need = None if caps.dirs else "needs a directory grant"
            elif name in _WASI_CLOCKS:
                need = None if caps.clocks else "needs the clocks capability"
            elif name in _WASI_RANDOM:
                need = None if caps.random else "needs the random capability"
            else:
                need = "never granted"
        elif module == HOST_MODULE:
            if name in HOST_KV:
                need = None if caps.kv_namespaces else "needs a key-value namespace grant"
            elif name in HOST_LOG:
                need = None if caps.log else "needs the log capability"
            elif name in HOST_HTTP:
                need = None if caps.http_hosts else "needs an http host allowlist"
            else:
                need = "unknown host function"
        else:
            need = "unknown import module"
        if need is None:
            allowed.append(label)
        else:
            offending.append(f"{label} ({need})")
    return ImportReport(allowed=tuple(allowed), offending=tuple(offending))
