"""A node's data directory: layout, format marker, single-process lock, identity keys, ``api.json``.

One directory holds everything a node keeps on disk (layout in docs/OPERATIONS.md). ``DataDir.open()``
creates it (mode 0700), checks the format marker, takes an exclusive ``flock`` on ``DATA_DIR/lock``
(so a second process on the same directory is refused, naming the PID that holds it) and loads or
creates the node identity. The lock is an advisory ``flock`` on an open file description: the kernel
drops it when the holder exits or dies, so a lock left by a crashed process is simply taken over; the
file itself is never deleted (unlinking a lock file races with a process that has just opened it).

This is driver-side code (it touches the file system); cores never import it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from crdt.errors import KeyFileError
from crdt.files import atomic_write, fsync_dir, private_file_problem
from crdt.keys import SigningKey, load_signing_key
from crdt.store import DB_NAME
from mesh.errors import MeshError
from mesh.transport.errors import TransportError
from mesh.transport.identity import LocalIdentity, load_or_create_x25519

FORMAT_NAME = "wasmatrix-data-dir"
FORMAT_VERSION = 1  # bump when the layout changes incompatibly; older binaries then refuse the dir

FORMAT_FILE = "format.json"
LOCK_FILE = "lock"
NODE_KEY_FILE = "node.key"  # Ed25519 private key, PKCS8 PEM (same format `wasmatrix keygen` writes)
NODE_X25519_FILE = "node.x25519"  # 32 raw bytes, see mesh/transport/identity.py
STORE_FILE = DB_NAME  # the intent store (crdt/store.py)
AUDIT_FILE = "audit.log"
MEMBERS_FILE = "members.json"  # membership snapshot, written by the daemon (later)
API_FILE = "api.json"

# What a pre-marker (pre-daemon CLI) data dir may hold; a dir without format.json holding anything
# else is someone's other directory, and we refuse to put keys into it.
_KNOWN_NAMES = frozenset({
    LOCK_FILE, NODE_KEY_FILE, NODE_KEY_FILE + ".pub", NODE_X25519_FILE, AUDIT_FILE, MEMBERS_FILE, API_FILE,
    "trust.json", "blobs", STORE_FILE, STORE_FILE + "-wal", STORE_FILE + "-shm", STORE_FILE + "-journal",
})
_KNOWN_PREFIXES = (STORE_FILE + ".corrupt-", STORE_FILE + "-wal.corrupt-", STORE_FILE + "-shm.corrupt-",
                   AUDIT_FILE + ".torn.", ".")

API_INFO_VERSION = 1
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{16,256}$")  # hex today (secrets.token_hex); urlsafe tokens of older nodes still read
_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)$")


class DataDirError(MeshError):
    """A data directory that cannot be used as it is (mode, format, key files)."""


class DataDirLocked(DataDirError):
    """Another process holds the data directory's lock."""

    def __init__(self, path: Path, pid: int | None) -> None:
        who = f"process {pid}" if pid is not None else "another process (PID not yet written)"
        super().__init__(
            f"data dir {path} is in use by {who}; stop that node first or pick another --data-dir"
        )
        self.path = path
        self.pid = pid


class ApiInfoError(DataDirError):
    """``api.json`` is missing, insecure or malformed."""


@dataclass(slots=True, frozen=True)
class ApiInfo:
    """How CLI commands reach a running node: ``host:port`` of its HTTP API and the bearer token."""

    addr: str
    token: str = field(repr=False)  # a bearer token: keep it out of tracebacks and logs


def check_private_mode(path: Path, what: str) -> None:
    """Raise DataDirError when ``path`` grants any permission to group or others (secrets are 0600)."""
    problem = private_file_problem(path, what)
    if problem is not None:
        raise DataDirError(problem)


def _validate_addr(addr: object) -> str:
    if not isinstance(addr, str) or ":" not in addr:
        raise ApiInfoError(f"api address must be 'host:port', got {addr!r}")
    host, _, port = addr.rpartition(":")
    if not _HOST_RE.match(host) or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ApiInfoError(f"api address must be 'host:port' with a port 1-65535, got {addr!r}")
    return addr


def _validate_token(token: object) -> str:
    if not isinstance(token, str) or not _TOKEN_RE.match(token):
        raise ApiInfoError("api token must be 16-256 characters of [A-Za-z0-9_-]")
    return token


def write_api_info(path: Path, info: ApiInfo) -> None:
    """Write ``api.json`` (mode 0600, atomic) after validating the address and token."""
    doc = {"version": API_INFO_VERSION, "addr": _validate_addr(info.addr), "token": _validate_token(info.token)}
    atomic_write(path, (json.dumps(doc, sort_keys=True, indent=2) + "\n").encode())


def read_api_info(path: Path) -> ApiInfo:
    """Read and validate ``api.json``; refuses a file readable by group or others (it holds a token)."""
    try:
        check_private_mode(path, "api file")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ApiInfoError(
            f"{path} does not exist: is the node running (`wasmatrix node run --data-dir {path.parent}`)? "
            "or pass --api and --token"
        ) from None
    except DataDirError as exc:
        raise ApiInfoError(str(exc)) from None
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiInfoError(f"{path} is not valid JSON") from None
    if not isinstance(doc, dict) or set(doc) != {"version", "addr", "token"}:
        raise ApiInfoError(f"{path} must be an object with exactly the keys version, addr, token")
    if doc["version"] != API_INFO_VERSION:
        raise ApiInfoError(f"{path} has version {doc['version']!r}; this wasmatrix reads version {API_INFO_VERSION}")
    return ApiInfo(_validate_addr(doc["addr"]), _validate_token(doc["token"]))


def resolve_api(data_dir: str | os.PathLike[str] | None, api: str | None, token: str | None) -> ApiInfo:
    """Where a CLI command finds its node: ``--api`` with ``--token``, else ``DATA_DIR/api.json``."""
    if api is not None or token is not None:
        if api is None or token is None:
            raise ApiInfoError("--api and --token go together: pass both, or neither and --data-dir")
        return ApiInfo(_validate_addr(api), _validate_token(token))
    if data_dir is None:
        raise ApiInfoError("no node given: pass --data-dir DIR (reads DIR/api.json) or --api HOST:PORT with --token")
    return read_api_info(Path(data_dir) / API_FILE)


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class DataDir:
    """A node's data directory; ``open()`` it (or use ``with``) before touching keys or the store."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None
        self._identity: LocalIdentity | None = None
        self._signing_key: SigningKey | None = None
        self.identity_created = False  # True when open() made a new node key (the daemon audits it)

    # -- layout ---------------------------------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        """``DATA_DIR/lock``: holds the PID of the process that owns the dir."""
        return self.path / LOCK_FILE

    @property
    def node_key_path(self) -> Path:
        """The node's Ed25519 private key (PEM, 0600)."""
        return self.path / NODE_KEY_FILE

    @property
    def x25519_path(self) -> Path:
        """The node's X25519 Noise static key (32 raw bytes, 0600)."""
        return self.path / NODE_X25519_FILE

    @property
    def store_path(self) -> Path:
        """The intent store's sqlite file."""
        return self.path / STORE_FILE

    @property
    def audit_path(self) -> Path:
        """The hash-chained audit log (mesh/audit.py)."""
        return self.path / AUDIT_FILE

    @property
    def members_path(self) -> Path:
        """The membership snapshot the daemon will write."""
        return self.path / MEMBERS_FILE

    @property
    def api_path(self) -> Path:
        """``api.json``: address and token of the running node's API."""
        return self.path / API_FILE

    # -- lifecycle ------------------------------------------------------------------------------
    def open(self) -> "DataDir":
        """Create or check the directory, take the lock, then load or create the identity keys."""
        self._ensure_dir()
        self.lock()
        try:
            self._check_format()
            self._load_identity()
        except BaseException:
            self.close()
            raise
        return self

    def lock(self) -> None:
        """Take the exclusive lock or raise DataDirLocked naming the holder's PID."""
        if self._lock_fd is not None:
            return
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise DataDirError(f"cannot open lock file {self.lock_path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise DataDirLocked(self.path, _read_pid(self.lock_path)) from None
            raise DataDirError(f"cannot lock {self.lock_path}: {exc.strerror}") from None
        # We own the lock: record our PID for the error message a second process prints.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        self._lock_fd = fd

    @property
    def locked(self) -> bool:
        """True while this object holds the lock."""
        return self._lock_fd is not None

    def close(self) -> None:
        """Release the lock (the lock file stays; see the module docstring)."""
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            os.close(fd)  # closing the only descriptor releases the flock

    def __enter__(self) -> "DataDir":
        return self.open()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- identity -------------------------------------------------------------------------------
    @property
    def identity(self) -> LocalIdentity:
        """The node's identity (Ed25519 + bound X25519); available after ``open()``."""
        if self._identity is None:
            raise DataDirError("data dir is not open: call open() first")
        return self._identity

    @property
    def signing_key(self) -> SigningKey:
        """The node's Ed25519 key as a crdt SigningKey (signs intent records)."""
        if self._signing_key is None:
            raise DataDirError("data dir is not open: call open() first")
        return self._signing_key

    @property
    def node_id(self) -> str:
        """The node id: key id of the Ed25519 public key."""
        return self.identity.node_id

    # -- api.json -------------------------------------------------------------------------------
    def write_api_info(self, addr: str, token: str) -> None:
        """Publish the API address and token for CLI commands (0600, atomic)."""
        write_api_info(self.api_path, ApiInfo(addr, token))

    def read_api_info(self) -> ApiInfo:
        """Read ``api.json`` (works without the lock: CLI commands read it while the node runs)."""
        return read_api_info(self.api_path)

    def clear_api_info(self) -> None:
        """Remove ``api.json`` on shutdown so clients do not dial a dead address."""
        self.api_path.unlink(missing_ok=True)

    # -- internals ------------------------------------------------------------------------------
    def _ensure_dir(self) -> None:
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise DataDirError(f"cannot create data dir {self.path}: {exc.strerror}") from None
        st = self.path.stat()
        if not stat.S_ISDIR(st.st_mode):
            raise DataDirError(f"{self.path} is not a directory")
        # Anyone who can write the directory can swap our key files: refuse group/world-writable.
        if st.st_mode & 0o022:
            raise DataDirError(
                f"data dir {self.path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"run `chmod 700 {self.path}`"
            )
        if not (self.path / FORMAT_FILE).exists():
            foreign = sorted(
                n for n in os.listdir(self.path) if n not in _KNOWN_NAMES and not n.startswith(_KNOWN_PREFIXES)
            )
            if foreign:
                raise DataDirError(
                    f"{self.path} is not a wasmatrix data dir (no {FORMAT_FILE}, and it holds {', '.join(foreign[:3])}"
                    f"{', ...' if len(foreign) > 3 else ''}); pick an empty or new --data-dir"
                )

    def _check_format(self) -> None:
        p = self.path / FORMAT_FILE
        if not p.exists():
            # New dir, or one written before the marker existed (same layout): stamp it.
            atomic_write(p, (json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION}) + "\n").encode(), 0o644)
            return
        try:
            doc = json.loads(p.read_bytes())
        except (OSError, ValueError, UnicodeDecodeError):
            raise DataDirError(f"{p} is not valid JSON; is {self.path} a wasmatrix data dir?") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise DataDirError(f"{p} does not mark a wasmatrix data dir")
        version = doc.get("version")
        if version != FORMAT_VERSION:
            raise DataDirError(
                f"data dir {self.path} has format version {version!r}; this wasmatrix uses version {FORMAT_VERSION}"
            )

    def _load_identity(self) -> None:
        key_path = self.node_key_path
        if key_path.exists():
            check_private_mode(key_path, "node key")
            try:
                key = load_signing_key(key_path)
            except KeyFileError as exc:
                raise DataDirError(f"node key {key_path} is malformed or unreadable: {exc}") from None
        else:
            key = SigningKey.generate()
            self.identity_created = True
            try:
                atomic_write(key_path, key.private_pem())
            except OSError as exc:
                raise DataDirError(f"cannot write node key {key_path}: {exc.strerror}") from None
        x_path = self.x25519_path
        if x_path.exists():
            check_private_mode(x_path, "node X25519 key")
        try:
            x_raw = load_or_create_x25519(x_path)
        except TransportError as exc:
            raise DataDirError(f"node X25519 key is malformed: {exc}") from None
        except OSError as exc:
            raise DataDirError(f"cannot read or create node X25519 key {x_path}: {exc.strerror}") from None
        self._signing_key = key
        self._identity = LocalIdentity.from_keys(key.private, x_raw)


__all__ = [
    "API_FILE", "AUDIT_FILE", "ApiInfo", "ApiInfoError", "DataDir", "DataDirError", "DataDirLocked",
    "FORMAT_VERSION", "LOCK_FILE", "MEMBERS_FILE", "NODE_KEY_FILE", "NODE_X25519_FILE", "STORE_FILE",
    "atomic_write", "check_private_mode", "fsync_dir", "read_api_info", "resolve_api", "write_api_info",
]
