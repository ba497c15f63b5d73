"""mDNS discovery of peers on ONE named interface (``wasmatrix node run --mdns IFACE``).

Each node advertises a ``_wasmatrix._udp.local.`` service whose SRV/A records carry its membership
address (``HOST:PORT``) and whose TXT record carries ``id=<node id>`` and ``v=1``, and browses the same
type; every valid peer it sees is handed to ``on_found(node_id, "HOST:PORT")``. Discovery only
proposes addresses: the daemon still dials them over the Noise transport, so a peer without the mesh
secret is refused there exactly as a seed would be. A forged mDNS record can at most make a node
try a handshake that fails.

Why one interface only: mDNS is link-local multicast. Zeroconf's defaults (``InterfaceChoice.All`` /
``Default``) would join the multicast group on every interface of the host, announcing a vehicle's
node on networks it was never meant to appear on. ``MdnsDiscovery`` resolves the IPv4 address of the
interface it is given and passes exactly ``interfaces=[that address]`` to ``Zeroconf``; there is no
default interface and no fallback.

Timing, all done by zeroconf itself: registration probes for name conflicts (~0.75 s) and then
announces three times; the browser sends its first query within 20-120 ms and repeats at 1, 5 and
14 s, and afterwards only refreshes records at 75 % of their TTL (120 s for SRV/A, 75 min for
PTR/TXT); a registered service is re-announced in answer to any query. Nothing is re-sent after a
link comes back up, so after a partition the daemon either relies on membership (peers already
known) or calls :meth:`MdnsDiscovery.refresh`, which announces and queries once more.

Threads: zeroconf runs its own asyncio loop thread and the ServiceBrowser its own thread.
``on_found`` is called **on the ServiceBrowser thread**, never on the caller's; a trio daemon
marshals it with ``trio.from_thread.run_sync(send_channel.send_nowait, ..., trio_token=token)`` or
a thread-safe queue, and must not block in it for long (it delays the next browse events).
``start``, ``refresh`` and ``close`` block (up to ~2 s) and belong in ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import re
import socket
import struct
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import structlog
from zeroconf import (
    DNSOutgoing,
    DNSQuestion,
    IPVersion,
    NonUniqueNameException,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.const import _CLASS_IN, _FLAGS_QR_QUERY, _TYPE_PTR

from mesh.errors import MeshError

SERVICE_TYPE = "_wasmatrix._udp.local."
TXT_VERSION = "1"
_NODE_ID = re.compile(r"[0-9a-f]{16}")
# Linux IFNAMSIZ is 16 including the NUL; '/' and whitespace are never valid in a name.
_IFACE = re.compile(r"[^\s/]{1,15}")
_SIOCGIFADDR = 0x8915
_LOOKUP_TIMEOUT_MS = 3000

log = structlog.get_logger("mesh.discovery")


class MdnsError(MeshError):
    """mDNS discovery cannot start on the interface given, or a received record is invalid."""


class ServiceRecord(Protocol):
    """What discovery reads from a resolved service (``zeroconf.ServiceInfo`` satisfies it)."""

    @property
    def name(self) -> str: ...
    @property
    def port(self) -> int | None: ...
    @property
    def properties(self) -> Mapping[bytes, bytes | None]: ...
    @property
    def addresses(self) -> Sequence[bytes]: ...


def interface_ipv4(iface: str) -> str:
    """The primary IPv4 address of interface ``iface``; MdnsError if it does not exist or has none."""
    if not isinstance(iface, str) or not _IFACE.fullmatch(iface) or iface in (".", ".."):
        raise MdnsError(f"invalid interface name {iface!r}: 1-15 characters, no '/' or whitespace")
    try:
        socket.if_nametoindex(iface)
    except OSError:
        raise MdnsError(f"no network interface named {iface!r} (see `ip link`)") from None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            req = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", iface.encode()))
        except OSError as exc:
            if exc.errno in (errno.EADDRNOTAVAIL, errno.ENODEV):
                raise MdnsError(f"interface {iface!r} has no IPv4 address; mDNS needs one") from None
            raise MdnsError(f"cannot read the IPv4 address of {iface!r}: {exc}") from None
    # struct ifreq: 16-byte name, then sockaddr_in (family, port, 4-byte address).
    return socket.inet_ntoa(req[20:24])


def parse_peer(record: ServiceRecord, *, allow_loopback: bool = False) -> tuple[str, str]:
    """``(node_id, "HOST:PORT")`` of a resolved service record; MdnsError saying what is wrong."""
    props = record.properties
    if not isinstance(props, Mapping):
        raise MdnsError("TXT record missing")
    version, node_id = props.get(b"v"), props.get(b"id")
    if version != TXT_VERSION.encode():
        raise MdnsError(f"unsupported TXT version {version!r} (want v={TXT_VERSION})")
    if not isinstance(node_id, bytes) or not _NODE_ID.fullmatch(node_id.decode("ascii", "replace")):
        raise MdnsError(f"TXT id must be 16 lowercase hex characters, got {node_id!r:.40}")
    port = record.port
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise MdnsError(f"port must be 1..65535, got {port!r}")
    host = _first_usable_ipv4(record.addresses, allow_loopback)
    return node_id.decode("ascii"), f"{host}:{port}"


def _first_usable_ipv4(addresses: Sequence[bytes], allow_loopback: bool) -> str:
    if not isinstance(addresses, (list, tuple)):
        raise MdnsError(f"no usable IPv4 address in the record (got {type(addresses).__name__})")
    seen = []
    for packed in addresses:
        if not isinstance(packed, bytes) or len(packed) != 4:
            continue
        ip = ipaddress.IPv4Address(packed)
        seen.append(str(ip))
        if ip.is_unspecified or ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
            continue
        if ip.is_loopback and not allow_loopback:
            continue
        return str(ip)
    raise MdnsError(f"no usable IPv4 address in the record (got {seen or 'none'})")


class MdnsDiscovery:
    """Advertise this node and browse for peers with mDNS on exactly one interface."""

    def __init__(self, iface: str, node_id: str, port: int, *,
                 on_found: Callable[[str, str], None], instance: str | None = None) -> None:
        if not isinstance(node_id, str) or not _NODE_ID.fullmatch(node_id):
            raise MdnsError(f"node id must be 16 lowercase hex characters, got {node_id!r}")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise MdnsError(f"port must be 1..65535, got {port!r}")
        self.iface = iface
        self.address = interface_ipv4(iface)
        self.node_id = node_id
        self.port = port
        self.instance = instance or f"wmx-{node_id}"
        self.name = f"{self.instance}.{SERVICE_TYPE}"
        self.counters: dict[str, int] = {"mdns_found": 0, "mdns_rejected": 0, "mdns_errors": 0}
        self._on_found = on_found
        self._allow_loopback = ipaddress.IPv4Address(self.address).is_loopback
        self._peers: dict[str, tuple[str, str]] = {}  # service name -> (node id, addr)
        self._lock = threading.Lock()
        self._zc: Zeroconf | None = None
        self._browser: ServiceBrowser | None = None
        self._closed = False
        self._info = ServiceInfo(
            SERVICE_TYPE, self.name, port=port, addresses=[socket.inet_aton(self.address)],
            properties={"id": node_id, "v": TXT_VERSION}, server=f"{self.instance}.local.",
        )

    def start(self) -> None:
        """Bind zeroconf to the interface address only, browse, then register (blocks ~1-2 s)."""
        with self._lock:
            if self._closed:
                raise MdnsError("discovery was closed; make a new MdnsDiscovery")
            if self._zc is not None:
                return
            # interfaces=[address]: join the group and answer on this interface only, never All/Default.
            try:
                self._zc = Zeroconf(interfaces=[self.address], ip_version=IPVersion.V4Only, use_asyncio=False)
            except OSError as exc:
                raise MdnsError(f"cannot open mDNS sockets on {self.iface} ({self.address}): {exc}") from None
        try:
            self._browser = ServiceBrowser(self._zc, SERVICE_TYPE, handlers=[self._on_change])
            self._zc.register_service(self._info)
        except NonUniqueNameException:
            self.close()
            raise MdnsError(f"another node on {self.iface} already advertises {self.name}") from None
        except Exception as exc:
            self.close()
            raise MdnsError(f"cannot start mDNS on {self.iface} ({self.address}): {exc}") from exc
        log.info("mdns_started", iface=self.iface, address=self.address, port=self.port, name=self.name)

    def refresh(self) -> None:
        """Announce this node again and ask the link for every peer (after a link came back up)."""
        zc = self._zc
        if zc is None or self._closed:
            raise MdnsError("discovery is not running")
        out = DNSOutgoing(_FLAGS_QR_QUERY)
        out.add_question(DNSQuestion(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN))
        try:
            zc.send(out)
            zc.update_service(self._info)
        except Exception as exc:  # e.g. EventLoopBlocked, or zeroconf closing under us
            self._count_error("mdns_refresh_failed", error=repr(exc))
            raise MdnsError(f"mDNS refresh on {self.iface} failed: {exc!r}") from exc

    def peers(self) -> dict[str, str]:
        """Valid peers currently advertised on the link: node id -> ``HOST:PORT``."""
        with self._lock:
            return {nid: addr for nid, addr in sorted(self._peers.values())}

    def close(self) -> None:
        """Stop browsing, send goodbyes and close the sockets; safe to call more than once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            browser, zc = self._browser, self._zc
            self._browser = self._zc = None
        if browser is not None:
            browser.cancel()
        if zc is not None:
            zc.close()  # unregisters (goodbye packets) before closing the sockets

    def __enter__(self) -> MdnsDiscovery:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- ServiceBrowser thread -------------------------------------------------------------------

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str,
                   state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            with self._lock:
                self._peers.pop(name, None)
            return
        if name == self.name:
            return
        try:
            info = zeroconf.get_service_info(service_type, name, timeout=_LOOKUP_TIMEOUT_MS)
        except Exception as exc:  # a closing or failing zeroconf must not kill the browser thread
            self._count_error("mdns_lookup_failed", name=name, error=repr(exc))
            return
        if info is None:
            self._count_error("mdns_lookup_timeout", name=name)
            return
        self.handle_record(info)

    def handle_record(self, record: ServiceRecord) -> None:
        """Validate one resolved record and report it through ``on_found`` unless it is this node."""
        try:
            node_id, addr = parse_peer(record, allow_loopback=self._allow_loopback)
        except MdnsError as exc:
            self.counters["mdns_rejected"] += 1
            log.warning("mdns_rejected", name=str(getattr(record, "name", "?"))[:100], reason=str(exc))
            return
        except Exception as exc:  # malformed objects (e.g. undecodable fields) are rejects too
            self.counters["mdns_rejected"] += 1
            log.warning("mdns_rejected", reason=f"malformed record: {exc!r}"[:200])
            return
        if node_id == self.node_id:
            return
        with self._lock:
            self._peers[record.name] = (node_id, addr)
        self.counters["mdns_found"] += 1
        try:
            self._on_found(node_id, addr)
        except Exception as exc:
            self._count_error("mdns_callback_failed", node=node_id, error=repr(exc))

    def _count_error(self, event: str, **fields: object) -> None:
        self.counters["mdns_errors"] += 1
        log.warning(event, **fields)
