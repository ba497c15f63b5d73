"""The wire format: one msgpack envelope, typed message dataclasses, strict decoding.

Envelope (a msgpack array)::

    [version, type, sender, payload, piggyback]

* ``version`` is :data:`PROTOCOL_VERSION`; anything else is refused.
* ``type`` is the small integer a message class registered with :func:`message`.
* ``sender`` is the sending node's name (its id).
* ``payload`` is whatever the class's ``to_payload()`` returns (msgpack types only).
* ``piggyback`` is a list of pre-encoded broadcasts (``bytes``), each itself a
  msgpack ``[type, payload]`` pair: gossip updates riding on probes and acks.

Piggybacked items are decoded one by one: an item that does not decode, or whose
type this version does not know, is skipped and counted in the envelope
(``bad_items``, ``unknown_items``) and the rest of the datagram is used. An
envelope whose *message* type is unknown decodes to :class:`Unknown` (its
piggyback still usable). Together that is the rolling-upgrade story: a newer node
may add message and broadcast types, and older nodes skip what they do not know.

Names and addresses (:func:`v_name`, :func:`v_addr`): a member name is 1 to
:data:`MAX_NAME` characters from ``A-Z a-z 0-9`` and ``. _ - : @ +``; an address
is 1 to :data:`MAX_ADDR` printable ASCII characters without spaces. Both are
checked at decode time, so a control character never reaches a member table, a
log line or a document.

Every message class follows one small protocol, so packages that must not
import ``mesh`` (``crdt``) can still define messages that travel in the envelope:

* a class attribute ``TYPE: int``;
* ``to_payload(self) -> list`` returning msgpack-encodable values;
* ``from_payload(cls, payload) -> Self`` that validates and may raise anything
  on malformed input: :func:`decode` turns every failure into :class:`WireError`.

Decoding bounds every size (datagram, string, bin, array, map lengths) before
it allocates, so a hostile packet cannot make a node allocate much or raise
anything but :class:`WireError`.
"""

from __future__ import annotations

import math
import re
import struct
import threading
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Protocol, TypeVar

import msgpack

from mesh.errors import WireError

PROTOCOL_VERSION = 1
# UDP payload budget: stays under typical cellular / VPN path MTUs (1280 IPv6 minimum
# minus headers and the Noise tag/counter).
MAX_DATAGRAM = 1200
# Stream frames (push-pull, sync, blob chunks) are length-prefixed and each is one Noise
# transport message, which is at most 65,535 bytes including its 16-byte tag: every
# stream message a core produces fits one frame (its plaintext, this limit), and larger
# state is chunked by the core that sends it (push-pull parts, SyncChunk, blob chunks).
MAX_FRAME = 65_535 - 16  # = mesh.transport.stream.MAX_STREAM_PLAINTEXT

_MAX_STR = 64 * 1024
_MAX_ARRAY = 100_000
# The smallest broadcast a node sends (``Suspect(0, "a", "b")``, 8 bytes) costs 10 bytes
# in an envelope with its bin header, and a node piggybacks only on datagrams: no node
# ever sends more items than this in one envelope, datagram or stream frame. Items beyond
# it are hostile and skipped without being decoded (``Envelope.skipped_items``).
MIN_PIGGYBACK_COST = 10
MAX_PIGGYBACK = MAX_DATAGRAM // MIN_PIGGYBACK_COST

MAX_NAME = 128
MAX_ADDR = 256
NAME_PATTERN = r"[A-Za-z0-9._:@+-]{1,128}"
NAME_RE = re.compile(NAME_PATTERN)
# Names seen valid before (every datagram names its sender, most name a member): a set
# lookup instead of a regex match. Bounded; cleared when full.
_VALID_NAMES: set[str] = set()
_VALID_NAMES_MAX = 65_536
_ADDR_RE = re.compile(r"[\x21-\x7e]{1,256}")


class UnknownTypeError(WireError):
    """A well-formed message or broadcast whose type this version does not know."""


class WireMessage(Protocol):
    TYPE: int

    def to_payload(self) -> list[Any]: ...


M = TypeVar("M")
_REGISTRY: dict[int, Any] = {}


def message(cls: type[M]) -> type[M]:
    """Class decorator: register a message class under its ``TYPE``."""
    type_id = getattr(cls, "TYPE")
    existing = _REGISTRY.get(type_id)
    if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"wire type {type_id} already registered by {existing.__qualname__}")
    _REGISTRY[type_id] = cls
    return cls


def registered_types() -> dict[int, Any]:
    """A copy of the type-id → class registry (for tests and docs)."""
    return dict(_REGISTRY)




_LOCAL = threading.local()


def pack(obj: Any) -> bytes:
    """msgpack-encode plain values (bin for bytes, str for text)."""
    # One Packer per thread, reused: msgpack.packb builds a Packer (and its buffer) per call,
    # which costs more than packing a datagram. Same options, so the same bytes.
    try:
        packer = _LOCAL.packer
    except AttributeError:
        packer = _LOCAL.packer = msgpack.Packer(use_bin_type=True)
    return packer.pack(obj)


_unpackb = msgpack.unpackb
_UNPACK_KW: dict[int, dict[str, Any]] = {}  # limit -> unpackb options (a handful of limits)


def _unpack(data: bytes, limit: int) -> Any:
    if type(data) is not bytes:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise WireError(f"expected bytes, got {type(data).__name__}")
        data = bytes(data)
    if len(data) > limit:
        raise WireError(f"message of {len(data)} bytes exceeds limit {limit}")
    try:
        if limit <= _MAX_STR:
            # msgpack bounds every max_*_len it is not given by len(data) (maps: len // 2):
            # never above the limits below, since len(data) <= limit <= _MAX_STR, and never
            # below what the data can hold. One keyword instead of seven saves a parsing of
            # options that costs more than unpacking a datagram. raw=False and
            # strict_map_key=True are msgpack's defaults.
            return _unpackb(data, max_ext_len=0)
        kw = _UNPACK_KW.get(limit)
        if kw is None:
            kw = _UNPACK_KW[limit] = {
                "raw": False,
                "strict_map_key": True,
                "max_str_len": min(limit, _MAX_STR),
                "max_bin_len": limit,
                "max_array_len": min(limit, _MAX_ARRAY),
                "max_map_len": min(limit, _MAX_ARRAY),
                "max_ext_len": 0,
            }
        return _unpackb(data, **kw)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise WireError(f"undecodable msgpack: {exc.__class__.__name__}") from None


def encode_broadcast(msg: WireMessage) -> bytes:
    """Encode a gossip update for a piggyback slot: msgpack ``[type, payload]``."""
    hit = _ENCODED_CACHE.get(msg)
    if hit is not None:
        return hit
    return pack([msg.TYPE, msg.to_payload()])


def encode(sender: str, msg: WireMessage, piggyback: list[bytes] | tuple[bytes, ...] = ()) -> bytes:
    """Encode one envelope."""
    return pack([PROTOCOL_VERSION, msg.TYPE, sender, msg.to_payload(), list(piggyback)])


def encode_payload(sender: str, type_id: int, payload: list[Any]) -> bytes:
    """``encode(sender, msg)`` from ``msg.TYPE`` and ``msg.to_payload()``, for a hot path
    that has the fields at hand and need not build the message object first."""
    return pack([PROTOCOL_VERSION, type_id, sender, payload, []])


_BIN8 = [bytes((0xC4, n)) for n in range(256)]
_FIXARRAY = [bytes((0x90 | n,)) for n in range(16)]


def _array_header(n: int) -> bytes:
    return _FIXARRAY[n] if n < 16 else struct.pack(">BH", 0xDC, n) if n < 65536 else struct.pack(">BI", 0xDD, n)


def _bin(item: bytes) -> bytes:
    n = len(item)
    return _BIN8[n] + item if n < 256 else struct.pack(">BH", 0xC5, n) + item if n < 65536 else struct.pack(">BI", 0xC6, n) + item


def with_piggyback(base: bytes, piggyback: list[bytes] | tuple[bytes, ...]) -> bytes:
    """``encode(sender, msg, piggyback)`` from ``base = encode(sender, msg)``, without re-encoding the message.

    The envelope's last element is the piggyback array, so ``base`` ends in an empty
    array (``0x90``): swap it for the array of bins. Byte for byte what :func:`encode` gives.
    """
    if not piggyback:
        return base
    return b"".join([base[:-1], _array_header(len(piggyback)), *map(_bin, piggyback)])


def envelope_overhead(sender: str) -> int:
    """Bytes an envelope adds around its payload and piggyback list (upper bound)."""
    return 16 + len(sender.encode())


def piggyback_cost(item: bytes) -> int:
    """Bytes one piggybacked broadcast adds to an envelope."""
    n = len(item)
    return n + (2 if n < 256 else 3 if n < 65536 else 5)


def _build(type_id: Any, payload: Any) -> Any:
    if not isinstance(type_id, int) or isinstance(type_id, bool):
        raise WireError("message type is not an integer")
    cls = _REGISTRY.get(type_id)
    if cls is None:
        if 0 < type_id < 256:
            raise UnknownTypeError(f"unknown message type {type_id}")
        raise WireError(f"message type {type_id} out of range")
    if not isinstance(payload, list):
        raise WireError(f"payload of type {type_id} is not an array")
    try:
        return cls.from_payload(payload)
    except WireError:
        raise
    except Exception as exc:  # validation of a foreign payload: any failure is a wire error
        raise WireError(f"invalid {cls.__name__} payload: {exc.__class__.__name__}: {exc}") from None


# Gossip re-sends the same encoded update many times (retransmit limit x fan-out),
# so a node sees identical broadcast bytes again and again. Messages are immutable,
# so decoding each distinct byte string once is safe; the cache is bounded.
_BROADCAST_CACHE: dict[bytes, Any] = {}
_BROADCAST_CACHE_MAX = 8192
# ...and a received update is usually re-gossiped as is: keep its bytes to skip re-encoding.
_ENCODED_CACHE: dict[Any, bytes] = {}


def decode_broadcast(data: bytes) -> Any:
    """Decode one piggybacked broadcast into its message object."""
    hit = _BROADCAST_CACHE.get(data)
    if hit is not None:
        return hit
    obj = _unpack(data, MAX_DATAGRAM)
    if not isinstance(obj, list) or len(obj) != 2:
        raise WireError("broadcast is not a [type, payload] pair")
    msg = _build(obj[0], obj[1])
    if len(_BROADCAST_CACHE) >= _BROADCAST_CACHE_MAX:
        _BROADCAST_CACHE.clear()
        _ENCODED_CACHE.clear()
    _BROADCAST_CACHE[data] = msg
    _ENCODED_CACHE[msg] = data
    return msg


@dataclass(slots=True, frozen=True)
class Unknown:
    """An envelope message of a type this version does not know (sent by a newer peer)."""

    type_id: int

    @property
    def TYPE(self) -> int:  # noqa: N802 - the message protocol's attribute name
        """The unknown type id, so dispatchers can route and count it."""
        return self.type_id


@dataclass(slots=True)
class Envelope:
    """A decoded envelope: who sent it, the message, and its usable piggybacked updates.

    ``bad_items`` and ``unknown_items`` count piggybacked items that were skipped
    (undecodable, or of a type this version does not know); ``skipped_items`` those
    beyond :data:`MAX_PIGGYBACK`, dropped without being decoded.

    Not frozen: one is built per datagram received, and a frozen dataclass's
    ``__init__`` (``object.__setattr__`` per field) costs twice a plain one. Treat it as
    read-only all the same.
    """

    sender: str
    msg: Any
    piggyback: tuple[Any, ...]
    bad_items: int = 0
    unknown_items: int = 0
    skipped_items: int = 0


def decode(data: bytes, limit: int = MAX_DATAGRAM) -> Envelope:
    """Decode and validate an envelope; raise only :class:`WireError`.

    A bad or unknown piggybacked item does not fail the envelope: it is skipped
    and counted. An unknown message type decodes to :class:`Unknown`.
    """
    obj = _unpack(data, limit)
    if not isinstance(obj, list) or len(obj) != 5:
        raise WireError("envelope is not a 5-element array")
    version, type_id, sender, payload, piggyback = obj
    if version != PROTOCOL_VERSION:
        raise WireError(f"unsupported protocol version {version!r}")
    if type(sender) is not str or (sender not in _VALID_NAMES and not _name_ok(sender)):
        raise WireError("invalid sender name")
    if type(piggyback) is not list:
        raise WireError("piggyback is not an array")
    cls = _REGISTRY.get(type_id) if type(type_id) is int else None
    if cls is not None and type(payload) is list:
        # _build, inlined for a known type (every datagram): the same checks, the same errors.
        try:
            msg = cls.from_payload(payload)
        except WireError:
            raise
        except Exception as exc:
            raise WireError(f"invalid {cls.__name__} payload: {exc.__class__.__name__}: {exc}") from None
    else:
        try:
            msg = _build(type_id, payload)
        except UnknownTypeError:
            msg = Unknown(type_id)
    if not piggyback:  # most probes and acks carry none
        return Envelope(sender, msg, ())
    pig: list[Any] = []
    bad = unknown = skipped = 0
    if len(piggyback) > MAX_PIGGYBACK:
        skipped = len(piggyback) - MAX_PIGGYBACK
        piggyback = piggyback[:MAX_PIGGYBACK]
    cache = _BROADCAST_CACHE
    for item in piggyback:
        if type(item) is not bytes:
            bad += 1
            continue
        hit = cache.get(item)  # decode_broadcast's cache, looked up inline: most items are repeats
        if hit is not None:
            pig.append(hit)
            continue
        try:
            pig.append(decode_broadcast(item))
        except UnknownTypeError:
            unknown += 1
        except WireError:
            bad += 1
    return Envelope(sender, msg, tuple(pig), bad, unknown, skipped)


# --- payload validators (used by from_payload implementations) -----------------------


def v_int(x: Any, lo: int = 0, hi: int = 2**63 - 1) -> int:
    """Validate an integer in [lo, hi]."""
    if not isinstance(x, int) or isinstance(x, bool) or not lo <= x <= hi:
        raise WireError(f"expected integer in [{lo}, {hi}], got {x!r:.40}")
    return x


def v_float(x: Any, lo: float = -1e12, hi: float = 1e12) -> float:
    """Validate a finite number in [lo, hi]."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or not lo <= x <= hi:
        raise WireError(f"expected finite number in [{lo}, {hi}], got {x!r:.40}")
    return float(x)


def v_str(x: Any, max_len: int = 256, allow_empty: bool = False) -> str:
    """Validate a string of bounded length."""
    if not isinstance(x, str) or len(x) > max_len or (not allow_empty and not x):
        raise WireError(f"expected string of length <= {max_len}")
    return x


def _name_ok(x: str) -> bool:
    if NAME_RE.fullmatch(x) is None:
        return False
    if len(_VALID_NAMES) >= _VALID_NAMES_MAX:
        _VALID_NAMES.clear()
    _VALID_NAMES.add(x)
    return True


def v_name(x: Any) -> str:
    """Validate a member name: 1-128 characters of ``A-Z a-z 0-9 . _ - : @ +``."""
    if type(x) is not str or (x not in _VALID_NAMES and not _name_ok(x)):
        raise WireError(f"invalid member name {x!r:.40}")
    return x


def is_valid_name(x: Any) -> bool:
    """True if ``x`` is a valid member name (see :func:`v_name`)."""
    return type(x) is str and (x in _VALID_NAMES or _name_ok(x))


def v_addr(x: Any) -> str:
    """Validate an address: 1-256 printable ASCII characters, no spaces."""
    if type(x) is not str or _ADDR_RE.fullmatch(x) is None:
        raise WireError(f"invalid address {x!r:.40}")
    return x


def is_valid_addr(x: Any) -> bool:
    """True if ``x`` is a valid address (see :func:`v_addr`)."""
    return type(x) is str and _ADDR_RE.fullmatch(x) is not None


def v_bool(x: Any) -> bool:
    """Validate a boolean."""
    if not isinstance(x, bool):
        raise WireError("expected boolean")
    return x


def v_list(x: Any, max_len: int = _MAX_ARRAY, item: Callable[[Any], Any] | None = None) -> list[Any]:
    """Validate an array of bounded length, optionally validating each item."""
    if not isinstance(x, list) or len(x) > max_len:
        raise WireError(f"expected array of length <= {max_len}")
    return [item(i) for i in x] if item else x


def v_fields(payload: list[Any], n: int) -> list[Any]:
    """Validate a payload array has exactly n fields."""
    if len(payload) != n:
        raise WireError(f"expected {n} fields, got {len(payload)}")
    return payload


# A driver's opaque token for one stream (a TCP/Noise session, a simulated stream): the core
# never looks inside it, only hands it back on the replies that must travel on that stream.
StreamHandle = Hashable


# Not frozen (a frozen dataclass's __init__ sets each field through object.__setattr__, and
# cores build one per message sent); hashable all the same, by value. Nobody mutates one.
@dataclass(slots=True, unsafe_hash=True)
class Outgoing:
    """What a core asks its driver to send: bytes to an address, on a datagram or a stream.

    ``node`` and ``key`` name the node the message is for (its id and its expected Ed25519
    public key, when membership knows them) so a driver can pick or open the right
    authenticated session and refuse one whose handshake shows another key. ``stream``,
    when set, is the reply handle of the stream the request came on: the driver writes the
    frame back on that stream and ignores ``dst`` (on TCP the request's source address is
    an ephemeral port nobody listens on).
    """

    dst: str
    data: bytes
    reliable: bool = False
    node: str | None = None
    key: bytes | None = None
    stream: StreamHandle | None = None
