"""Host functions of the ``wasmatrix`` import module: key-value, logging, outbound HTTP.

Every function returns an i32 status (see ``docs/ABI.md`` and
``examples/wasm/wasmatrix.h``) and never raises: wasmtime-py keeps a host
exception in one process-wide slot, which concurrent worker threads would
race on, so failures become error codes here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from wasmtime import Caller, FuncType, Linker, Memory, ValType

from runtime.capabilities import HOST_MODULE, Capabilities, host_allowed
from runtime.kv import KVStore

log = structlog.get_logger("wasmatrix.runtime.guest")

WMX_OK = 0
WMX_ENOTFOUND = -1
WMX_EDENIED = -2
WMX_EINVAL = -3
WMX_ETOOBIG = -4
WMX_EINTERNAL = -5
WMX_EUNSUPPORTED = -6

MAX_KEY_BYTES = 1024
MAX_VALUE_BYTES = 1 << 20
MAX_LOG_BYTES = 4096
MAX_URL_BYTES = 4096
MAX_HTTP_BODY = 1 << 20

_LEVELS = {0: "debug", 1: "info", 2: "warning", 3: "error"}


class HttpFetcher(Protocol):
    """Performs an allowlisted outbound GET for a guest (the node provides one)."""

    def fetch(self, url: str, max_bytes: int) -> bytes:
        """Return the response body (at most ``max_bytes``); raise on failure."""
        ...


@dataclass(slots=True)
class HostContext:
    """What the host functions of one loaded module may reach."""

    module: str
    caps: Capabilities
    kv: KVStore | None
    http: HttpFetcher | None
    deny: Callable[[str, str], None]  # (capability, detail): counts, logs and audits


def _mem(caller: Caller) -> Memory | None:
    mem = caller.get("memory")
    return mem if isinstance(mem, Memory) else None


def _read(caller: Caller, ptr: int, length: int, limit: int) -> bytes | None:
    ptr &= 0xFFFFFFFF
    length &= 0xFFFFFFFF
    if length > limit:
        return None
    mem = _mem(caller)
    if mem is None or ptr + length > mem.data_len(caller):
        return None
    return bytes(mem.read(caller, ptr, ptr + length)) if length else b""


def _read_str(caller: Caller, ptr: int, length: int, limit: int) -> str | None:
    raw = _read(caller, ptr, length, limit)
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _write(caller: Caller, ptr: int, cap: int, data: bytes) -> int:
    """Copy as much of ``data`` as fits in ``cap``; return len(data) (the size the guest needs)."""
    ptr &= 0xFFFFFFFF
    cap &= 0xFFFFFFFF
    n = min(cap, len(data))
    if n:
        mem = _mem(caller)
        if mem is None or ptr + n > mem.data_len(caller):
            return WMX_EINVAL
        mem.write(caller, data[:n], ptr)
    return len(data)


def _guarded(fn: Callable[..., int]) -> Callable[..., int]:
    def wrapper(*args: Any) -> int:
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - must not escape into wasmtime (see module doc)
            log.error("host_function_failed", function=fn.__name__, error=repr(exc))
            return WMX_EINTERNAL

    wrapper.__name__ = fn.__name__
    return wrapper


def define_host_functions(linker: Linker, ctx: HostContext) -> None:
    """Define every ``wasmatrix.*`` function on ``linker``, bound to one module's grant."""
    i32 = ValType.i32()

    def read_ns_and(caller: Caller, ns_p: int, ns_l: int, s_p: int, s_l: int) -> tuple[str, str] | None:
        # Every KV call starts with a namespace and one more string (key or prefix).
        ns = _read_str(caller, ns_p, ns_l, MAX_KEY_BYTES)
        other = _read_str(caller, s_p, s_l, MAX_KEY_BYTES)
        return None if ns is None or other is None else (ns, other)

    def open_ns(ns: str) -> KVStore | int:
        """The store for a granted namespace, or the error code to return to the guest."""
        if ns not in ctx.caps.kv_namespaces:
            ctx.deny("kv", ns)
            return WMX_EDENIED
        return WMX_EUNSUPPORTED if ctx.kv is None else ctx.kv

    @_guarded
    def kv_get(caller: Caller, ns_p: int, ns_l: int, k_p: int, k_l: int, out_p: int, out_cap: int) -> int:
        names = read_ns_and(caller, ns_p, ns_l, k_p, k_l)
        if names is None:
            return WMX_EINVAL
        ns, key = names
        store = open_ns(ns)
        if isinstance(store, int):
            return store
        value = store.get(ns, key)
        if value is None:
            return WMX_ENOTFOUND
        return _write(caller, out_p, out_cap, value)

    @_guarded
    def kv_set(caller: Caller, ns_p: int, ns_l: int, k_p: int, k_l: int, v_p: int, v_l: int) -> int:
        names = read_ns_and(caller, ns_p, ns_l, k_p, k_l)
        if names is None:
            return WMX_EINVAL
        ns, key = names
        if (v_l & 0xFFFFFFFF) > MAX_VALUE_BYTES:
            return WMX_ETOOBIG
        value = _read(caller, v_p, v_l, MAX_VALUE_BYTES)
        if value is None:
            return WMX_EINVAL
        store = open_ns(ns)
        if isinstance(store, int):
            return store
        store.set(ns, key, value)
        return WMX_OK

    @_guarded
    def kv_delete(caller: Caller, ns_p: int, ns_l: int, k_p: int, k_l: int) -> int:
        names = read_ns_and(caller, ns_p, ns_l, k_p, k_l)
        if names is None:
            return WMX_EINVAL
        ns, key = names
        store = open_ns(ns)
        if isinstance(store, int):
            return store
        store.delete(ns, key)
        return WMX_OK

    @_guarded
    def kv_list(caller: Caller, ns_p: int, ns_l: int, p_p: int, p_l: int, out_p: int, out_cap: int) -> int:
        names = read_ns_and(caller, ns_p, ns_l, p_p, p_l)
        if names is None:
            return WMX_EINVAL
        ns, prefix = names
        store = open_ns(ns)
        if isinstance(store, int):
            return store
        # NUL-separated: keys are UTF-8 strings and may contain newlines.
        blob = b"".join(k.encode("utf-8") + b"\x00" for k in store.list(ns, prefix))
        return _write(caller, out_p, out_cap, blob)

    @_guarded
    def guest_log(caller: Caller, level: int, m_p: int, m_l: int) -> int:
        if not ctx.caps.log:
            ctx.deny("log", "")
            return WMX_EDENIED
        length = min(m_l & 0xFFFFFFFF, MAX_LOG_BYTES)
        raw = _read(caller, m_p, length, MAX_LOG_BYTES)
        if raw is None:
            return WMX_EINVAL
        method = _LEVELS.get(level, "info")
        getattr(log, method)("guest_log", module=ctx.module, message=raw.decode("utf-8", "replace"))
        return WMX_OK

    @_guarded
    def http_fetch(caller: Caller, u_p: int, u_l: int, out_p: int, out_cap: int) -> int:
        url = _read_str(caller, u_p, u_l, MAX_URL_BYTES)
        if url is None:
            return WMX_EINVAL
        if not host_allowed(url, ctx.caps.http_hosts):
            ctx.deny("http", url)
            return WMX_EDENIED
        if ctx.http is None:
            return WMX_EUNSUPPORTED
        body = ctx.http.fetch(url, MAX_HTTP_BODY)
        return _write(caller, out_p, out_cap, body)

    def ty(n: int) -> FuncType:
        return FuncType([i32] * n, [i32])

    linker.define_func(HOST_MODULE, "kv_get", ty(6), kv_get, access_caller=True)
    linker.define_func(HOST_MODULE, "kv_set", ty(6), kv_set, access_caller=True)
    linker.define_func(HOST_MODULE, "kv_delete", ty(4), kv_delete, access_caller=True)
    linker.define_func(HOST_MODULE, "kv_list", ty(6), kv_list, access_caller=True)
    linker.define_func(HOST_MODULE, "log", ty(3), guest_log, access_caller=True)
    linker.define_func(HOST_MODULE, "http_fetch", ty(4), http_fetch, access_caller=True)
