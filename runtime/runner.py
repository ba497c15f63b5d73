"""The ``Runtime``: admits modules, keeps them compiled and pre-linked, and runs them.

Sync calls (``invoke_sync``, ``run_command``, ``call``) run on the caller's
thread; ``invoke`` runs them on a trio worker thread behind a
``CapacityLimiter`` so the event loop stays responsive. Every failure inside
a guest becomes a ``WasmError`` subclass and the instance involved is thrown
away; nothing a guest does reaches the host process.
"""

from __future__ import annotations

import atexit
import gc
import hashlib
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry
from wasmtime import ExitTrap, Instance, InstancePre, Linker, Memory, Module, Store, Trap, TrapCode, WasmtimeError

from model.manifest import Manifest, sha256_hex
from runtime.abi import ABI_VERSION_EXPORT, INITIAL_INPUT_CAPACITY, ONE_CALL_VERSION, Abi, detect_abi
from runtime.artifacts import DEFAULT_MAX_BLOB_BYTES, ArtifactStore
from runtime.audit import AuditSink, NullAuditSink
from runtime.cache import DEFAULT_DISK_BYTES, DEFAULT_MEMORY_ENTRIES, CompiledCache, load_or_create_key
from runtime.capabilities import Capabilities
from runtime.engine import DEFAULT_TICK_MS, EngineHandle, EngineSettings
from runtime.fastcall import FAST, GuestCall, GuestMemory, epoch_setter
from runtime.errors import (
    ArtifactError,
    CapabilityDenied,
    GuestError,
    HostResourceError,
    InvalidSpecError,
    ModuleNotLoaded,
    ModuleTooLarge,
    SignatureError,
    ValidationError,
    WasmConcurrencyRejected,
    WasmError,
    WasmLimitExceeded,
    WasmTimeout,
    WasmTrap,
)
from runtime.hostfuncs import HostContext, HttpFetcher, define_host_functions
from runtime.invocation import InvocationResult, Request
from runtime.kv import KVStore, MemoryKVStore
from runtime.limits import (
    DEFAULT_COMPILE_MEMORY_BYTES,
    DEFAULT_COMPILE_TIMEOUT_S,
    MAX_MEMORY_BYTES,
    MAX_TIMEOUT_MS,
    MIB,
    Limits,
    ModuleBounds,
    PoolConfig,
)
from runtime.metrics import RuntimeMetrics
from runtime.pool import DEFAULT_MAX_TOTAL_IDLE, DEFAULT_MEMORY_BUDGET, DEFAULT_PRESSURE_RATIO, PoolManager
from runtime.signing import SignedManifest, TrustStore
from runtime.validation import check_bounds, check_header, check_module, validate_binary
from runtime.wasi import OutputBuffer, make_wasi

if TYPE_CHECKING:
    import trio

log = structlog.get_logger("wasmatrix.runtime")

# A trap with less than this much linear memory left under the cap is reported
# as the memory limit: wasmtime's C API does not say that a memory.grow was
# refused, and an allocator that fails near the cap aborts (traps) in every
# libc we know. Headroom, not a fraction, because allocators grow in chunks
# (wasi-libc's malloc asks for the whole block plus its own overhead).
MEMORY_NEAR_CAP_MIN_HEADROOM = 2 * MIB
MEMORY_NEAR_CAP_FRACTION = 0.125


def near_memory_cap(used: int, cap: int) -> bool:
    """True when ``used`` is close enough to ``cap`` that a refused grow is the likely cause of a trap."""
    return cap - used < max(MEMORY_NEAR_CAP_MIN_HEADROOM, int(cap * MEMORY_NEAR_CAP_FRACTION))
MAX_DIRECT_OUTPUT = 16 << 20

_live_runtimes: weakref.WeakSet[Runtime] = weakref.WeakSet()


@atexit.register
def _close_live_runtimes() -> None:
    # wasmtime's WASI releases custom stdout/stderr sinks from its own (tokio)
    # threads, shortly after a store closes. If that callback into Python runs
    # while the interpreter is finalizing, the thread is torn down mid-FFI and
    # Rust aborts with "panic in a function that cannot unwind". So close every
    # runtime while Python is whole, then wait (bounded) for those releases.
    for rt in list(_live_runtimes):
        rt.close()
    gc.collect()
    try:
        from wasmtime import _wasi

        pending = _wasi.CUSTOM_OUTPUTS.handles
    except (ImportError, AttributeError):  # pragma: no cover - other wasmtime-py layouts
        return
    deadline = time.monotonic() + 2.0
    while pending and time.monotonic() < deadline:
        time.sleep(0.001)


@dataclass(slots=True, frozen=True)
class RuntimeConfig:
    """Node-level settings of the runtime; every field has a safe default."""

    data_dir: Path | None = None  # None: no artifact store, compiled cache in memory only
    allow_unsigned: bool = False  # development flag: run modules without a signed manifest
    max_module_bytes: int = DEFAULT_MAX_BLOB_BYTES
    cache_disk_bytes: int = DEFAULT_DISK_BYTES
    cache_memory_entries: int = DEFAULT_MEMORY_ENTRIES
    epoch_tick_ms: int = DEFAULT_TICK_MS
    max_workers: int = 8  # worker threads running guests for the async API
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET
    pressure_ratio: float = DEFAULT_PRESSURE_RATIO
    max_total_idle: int = DEFAULT_MAX_TOTAL_IDLE
    default_pool: PoolConfig = field(default_factory=PoolConfig)
    module_bounds: ModuleBounds = field(default_factory=ModuleBounds)
    # "process": compile in a child process under compile_memory_bytes / compile_timeout_s, so a
    # module that exhausts the compiler kills the child, not the node (costs a process start per
    # compile miss). "inline": compile on the calling thread, protected only by module_bounds.
    compile_isolation: str = "process"
    compile_memory_bytes: int = DEFAULT_COMPILE_MEMORY_BYTES
    compile_timeout_s: float = DEFAULT_COMPILE_TIMEOUT_S
    # Direct-ABI calls through wasmtime's C API in one FFI call each (runtime/fastcall.py); False (or a
    # wasmtime-py without the internals it uses) takes wasmtime-py's public API: same behaviour, slower.
    fast_calls: bool = True
    # Direct-ABI calls of a module that has proven fast run on the caller's (trio) thread instead of a
    # worker thread (``Runtime.invoke``; docs/RUNTIME.md "Inline calls"), each under a deadline of
    # INLINE_TICKS epoch ticks: the event loop is never blocked longer than that by a guest.
    inline_calls: bool = True

    def __post_init__(self) -> None:
        if self.compile_isolation not in ("process", "inline"):
            raise InvalidSpecError(f"compile_isolation must be 'process' or 'inline', got {self.compile_isolation!r}")
        if not self.compile_timeout_s > 0:
            raise InvalidSpecError(f"compile_timeout_s must be > 0, got {self.compile_timeout_s}")
    limit_ceiling: Limits = field(
        default_factory=lambda: Limits(memory_bytes=MAX_MEMORY_BYTES, timeout_ms=MAX_TIMEOUT_MS, max_concurrency=1000)
    )


class _Instance:
    """One live direct-ABI instance in its own store (a store is used by one thread at a time).

    ``one_call`` instances (ABI version 2) keep a host-owned input buffer
    ``in_ptr``/``in_cap`` in guest memory for their whole life.
    """

    __slots__ = ("store", "instance", "mem", "alloc", "handle", "dealloc", "stderr", "set_deadline",
                 "one_call", "in_ptr", "in_cap")

    def __init__(self, store: Store, instance: Instance, exports: Any, stderr: OutputBuffer, fast: bool) -> None:
        self.store = store
        self.instance = instance
        self.mem = GuestMemory(store, exports["memory"], fast=fast)
        self.alloc = GuestCall(store, exports["alloc"], 1, 1, fast=fast).call
        self.handle = GuestCall(store, exports["handle"], 2, 1, result_i64=True, fast=fast).call
        dealloc = exports.get("dealloc")
        self.dealloc = GuestCall(store, dealloc, 2, 0, fast=fast).call if dealloc is not None else None
        self.stderr = stderr
        self.set_deadline = epoch_setter(store, fast=fast)
        self.one_call = False
        self.in_ptr = 0
        self.in_cap = 0

    def memory_bytes(self) -> int:
        return self.mem.size()

    def close(self) -> None:
        self.store.close()


# Inline calls (Runtime.invoke). Only a module whose imports are all in INLINE_SAFE_IMPORTS (pure
# WASI output to per-call buffers, clocks, random: nothing that sleeps, blocks, or calls back into the
# node like KV or HTTP) may run inline, and only after INLINE_AFTER consecutive calls each within
# INLINE_MAX_S. An inline call runs under min(INLINE_TICKS, its own) epoch ticks; one interrupted by
# that bound (not by its own timeout) is re-run from scratch on a worker thread under its full
# timeout (safe: with these imports the first attempt had no effect outside its discarded instance)
# and the module needs INLINE_PENALTY + INLINE_AFTER fast calls before it runs inline again.
INLINE_SAFE_IMPORTS = frozenset({
    "fd_write", "fd_close", "fd_seek", "fd_fdstat_get", "fd_prestat_get", "fd_prestat_dir_name",
    "args_get", "args_sizes_get", "environ_get", "environ_sizes_get", "clock_time_get", "clock_res_get",
    "random_get", "proc_exit",
})
INLINE_TICKS = 2  # the interrupt comes 1..2 ticks after the call starts (5..10 ms with the default tick)
INLINE_AFTER = 32
INLINE_MAX_S = 0.001
INLINE_PENALTY = 1024
INLINE_STREAK_CAP = 4 * INLINE_AFTER


def next_streak(streak: int, seconds: float) -> int:
    """A module's fast-call streak after a call that took ``seconds``: +1 when fast (up to the cap);
    halved when slow, so a call the OS preempted now and then keeps a hot module inline while a
    module slow three times in a row (from the cap) goes back to worker threads; a negative streak
    (after the inline bound was hit) is never raised by a slow call."""
    if seconds <= INLINE_MAX_S:
        return min(streak + 1, INLINE_STREAK_CAP)
    return streak // 2 if streak > 0 else streak


def _inline_safe(module: Module) -> bool:
    return all(i.module == "wasi_snapshot_preview1" and i.name in INLINE_SAFE_IMPORTS for i in module.imports)


class _InlineExpired(Exception):
    """An inline call reached the inline bound (not its own timeout): run it again on a thread."""


class LoadedModule:
    """A compiled, pre-linked module version with its effective grant and limits."""

    def __init__(
        self,
        manifest: Manifest,
        abi: Abi,
        limits: Limits,
        capabilities: Capabilities,
        engine: EngineHandle,
        module: Module,
        pre: InstancePre,
        signed: bool,
        metrics: RuntimeMetrics,
        key: str | None = None,
    ) -> None:
        self.manifest = manifest
        self.key = key or manifest.key  # name@version, plus ~GRANT when that version also runs under another grant
        self.abi = abi
        self.limits = limits
        self.capabilities = capabilities
        self.engine = engine
        self.module = module
        self.pre = pre
        self.signed = signed
        self.deadline_ticks = engine.deadline_ticks(limits.timeout_ms)
        # Inline calls (see INLINE_SAFE_IMPORTS): eligible at all, and the streak of fast calls
        # (negative after an inline call hit the bound). Written on the event loop's thread only.
        self.inline_ok = abi is Abi.DIRECT and _inline_safe(module)
        self.inline_ticks = min(INLINE_TICKS, self.deadline_ticks)
        self.fast_streak = 0
        self._inflight = 0
        self._lock = threading.Lock()
        # Pre-bound metric children: label lookup off the hot path.
        self.m_ok = metrics.invocations.labels(module=self.key, outcome="ok")
        self.m_failed = metrics.invocations.labels(module=self.key, outcome="error")
        self.m_seconds = metrics.invoke_seconds.labels(module=self.key)
        self.m_instantiations = metrics.instantiations.labels(module=self.key)

    @property
    def inflight(self) -> int:
        """Calls currently admitted (queued or running)."""
        return self._inflight


class Runtime:
    """Runs WebAssembly modules for one node: the runtime package's entry point."""

    def __init__(
        self,
        config: RuntimeConfig | None = None,
        *,
        trust: TrustStore | None = None,
        kv: KVStore | None = None,
        audit: AuditSink | None = None,
        http: HttpFetcher | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config or RuntimeConfig()
        self.trust = trust or TrustStore()
        self.kv: KVStore = kv if kv is not None else MemoryKVStore()
        self.audit: AuditSink = audit or NullAuditSink()
        self.http = http
        self.metrics = RuntimeMetrics(registry)
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._engines: dict[EngineSettings, EngineHandle] = {}
        self._modules: dict[str, LoadedModule] = {}
        self._limiter: trio.CapacityLimiter | None = None
        self._closed = False
        data_dir = Path(self.config.data_dir) if self.config.data_dir is not None else None
        self.artifacts = ArtifactStore(data_dir / "artifacts", max_blob_bytes=self.config.max_module_bytes) if data_dir else None
        self.cache = CompiledCache(
            data_dir / "compiled" if data_dir else None,
            metrics=self.metrics,
            hmac_key=load_or_create_key(data_dir / "keys" / "compiled-cache.key") if data_dir else None,
            max_disk_bytes=self.config.cache_disk_bytes,
            memory_entries=self.config.cache_memory_entries,
            compiler=self._compile_in_worker if self.config.compile_isolation == "process" else None,
        )
        self._fast = self.config.fast_calls and FAST
        self.pools: PoolManager[_Instance] = PoolManager(
            clock=clock,
            size_of=lambda inst: inst.memory_bytes(),
            close=lambda inst: inst.close(),
            memory_budget_bytes=self.config.memory_budget_bytes,
            pressure_ratio=self.config.pressure_ratio,
            max_total_idle=self.config.max_total_idle,
            on_evict=self._on_evict,
        )
        self.metrics.attach_pools(self.pools.all_stats, self.pools.memory_bytes)
        _live_runtimes.add(self)

    # -- engines -------------------------------------------------------------------------------

    def _compile_in_worker(self, engine: EngineHandle, wasm: bytes) -> Module:
        from runtime.compileworker import compile_serialized

        blob = compile_serialized(engine.settings, wasm, self.config.compile_memory_bytes, self.config.compile_timeout_s)
        try:
            return Module.deserialize(engine.engine, blob)
        except WasmtimeError as exc:
            raise HostResourceError(f"the compile worker's artifact does not load: {_first_line(str(exc))}") from None

    def _engine(self, *, fuel: bool) -> EngineHandle:
        settings = EngineSettings(consume_fuel=fuel)
        with self._lock:
            handle = self._engines.get(settings)
            if handle is None:
                handle = EngineHandle(settings, self.config.epoch_tick_ms)
                self._engines[settings] = handle
            return handle

    # -- admission -----------------------------------------------------------------------------

    def admit(
        self,
        signed: SignedManifest,
        wasm: bytes | None = None,
        *,
        grant: Capabilities | None = None,
        pool: PoolConfig | None = None,
    ) -> LoadedModule:
        """Verify a signed manifest and its blob, then compile, check and load the module.

        ``wasm=None`` reads the blob from the artifact store. ``grant`` is the
        node's policy for this module; what the manifest requests beyond it is
        denied (counted and audited) and the module runs without it.
        """
        key = signed.manifest.key
        try:
            manifest = self.trust.verify(signed)
        except SignatureError as exc:
            self._reject("signature", key, exc)
            raise
        try:
            if wasm is None:
                if self.artifacts is None:
                    raise ArtifactError(f"no blob given for {key} and this runtime has no artifact store")
                wasm = self.artifacts.get(manifest.sha256)
            elif len(wasm) != manifest.size or sha256_hex(wasm) != manifest.sha256:
                raise ArtifactError(
                    f"blob for {key} does not match its signed manifest (sha256 or size differ); refusing it"
                )
            elif self.artifacts is not None:
                self.artifacts.put(wasm, manifest.sha256)
                self.metrics.artifact_bytes_written.inc(len(wasm))
        except ArtifactError as exc:
            self._reject("artifact", key, exc)
            raise
        effective, denied = (grant or Capabilities()).restrict(manifest.capabilities)
        for item in denied:
            kind, _, detail = item.partition(":")
            self._deny(key, kind, detail or kind, stage="admission")
        return self._load(manifest, wasm, effective, pool, signed=True)

    def load_unsigned(
        self,
        wasm: bytes,
        *,
        name: str = "dev",
        version: str = "0.0.0-dev",
        capabilities: Capabilities | None = None,
        limits: Limits | None = None,
        abi: Abi | None = None,
        pool: PoolConfig | None = None,
    ) -> LoadedModule:
        """Load a module without a signed manifest; only with ``allow_unsigned`` (development mode)."""
        if not self.config.allow_unsigned:
            exc = SignatureError(
                f"module {name}@{version} is unsigned; unsigned modules run only with the development flag "
                "(RuntimeConfig.allow_unsigned=True)"
            )
            self._reject("unsigned", f"{name}@{version}", exc)
            raise exc
        try:
            check_header(wasm, self.config.max_module_bytes)
            check_bounds(wasm, self.config.module_bounds)
        except ValidationError as exc:
            self._reject(_reject_reason(exc), f"{name}@{version}", exc)
            raise
        manifest = Manifest.for_module(
            name, version, wasm, limits=limits or Limits(), abi=abi or Abi.WASI_COMMAND,
        )
        return self._load(manifest, wasm, capabilities or Capabilities(), pool, signed=False, detect=abi is None)

    def _load(
        self,
        manifest: Manifest,
        wasm: bytes,
        caps: Capabilities,
        pool: PoolConfig | None,
        *,
        signed: bool,
        detect: bool = False,
    ) -> LoadedModule:
        key = manifest.key
        with self._lock:
            existing = self._modules.get(key)
        if existing is not None:
            if existing.manifest.sha256 != manifest.sha256:
                raise ArtifactError(f"{key} is already loaded with different bytes; versions are immutable, bump it")
            if existing.capabilities == caps:
                return existing
            # The same version under another grant (two deployments, one denying random or without a
            # KV grant) is another loaded module: sharing one would hand it the first one's grant.
            key = f"{manifest.key}~{grant_fingerprint(caps)}"
            with self._lock:
                other = self._modules.get(key)
            if other is not None:
                return other
        limits = manifest.limits.clamp(self.config.limit_ceiling)
        engine = self._engine(fuel=limits.fuel is not None)
        max_bytes = self.config.max_module_bytes

        def verified_bytes() -> bytes:
            validate_binary(engine.engine, wasm, max_bytes)
            return wasm

        try:
            check_header(wasm, max_bytes)
            check_bounds(wasm, self.config.module_bounds)
            module = self.cache.get_or_compile(engine, manifest.sha256, verified_bytes)
            abi = manifest.abi
            if detect:
                abi = detect_abi((e.name, e.type) for e in module.exports)
            check_module(module, abi, caps, key)
            linker = Linker(engine.engine)
            linker.define_wasi()
            ctx = HostContext(
                module=key, caps=caps, kv=self.kv, http=self.http,
                deny=lambda capability, detail: self._deny(key, capability, detail, stage="call"),
            )
            define_host_functions(linker, ctx)
            try:
                pre = linker.instantiate_pre(module)
            except WasmtimeError as exc:
                raise ValidationError(f"module {key} cannot be linked: {_first_line(str(exc))}") from None
        except CapabilityDenied as exc:
            for item in exc.offending:
                self._deny(key, "import", item, stage="admission")
            self._reject("capability", key, exc)
            raise
        except ValidationError as exc:
            self._reject(_reject_reason(exc), key, exc)
            raise
        except HostResourceError as exc:
            self._reject("host_resource", key, exc)
            raise
        if manifest.abi is not abi:
            manifest = replace(manifest, abi=abi)
        lm = LoadedModule(manifest, abi, limits, caps, engine, module, pre, signed, self.metrics, key=key)
        with self._lock:
            if key in self._modules:  # lost a race with an identical load
                return self._modules[key]
            self._modules[key] = lm
        if abi is Abi.DIRECT:
            cfg = pool or self.config.default_pool
            self.pools.register(key, cfg, lambda: self._new_direct_instance(lm))
            try:
                self.pools.prewarm(key)
            except WasmError:
                self.unload(key)
                raise
        log.info("module_loaded", module=key, abi=abi.value, signed=signed, sha256=manifest.sha256,
                 memory_mib=limits.memory_bytes // MIB, timeout_ms=limits.timeout_ms, fuel=limits.fuel)
        return lm

    def unload(self, key: str) -> None:
        """Stop serving ``name@version`` and destroy its pooled instances."""
        with self._lock:
            lm = self._modules.pop(key, None)
        if lm is None:
            return
        if lm.abi is Abi.DIRECT:
            self.pools.unregister(key)
        log.info("module_unloaded", module=key)

    def module(self, key: str) -> LoadedModule:
        """The loaded module ``name@version``, or ModuleNotLoaded."""
        lm = self._modules.get(key)
        if lm is None:
            raise ModuleNotLoaded(f"module {key} is not loaded on this node")
        return lm

    def modules(self) -> list[str]:
        """Keys of every loaded module, sorted."""
        with self._lock:
            return sorted(self._modules)

    # -- stores and instances ------------------------------------------------------------------

    def _new_store(self, lm: LoadedModule) -> Store:
        store = Store(lm.engine.engine)
        # One store holds one module instance; WASI adds none (preview1 is host functions).
        store.set_limits(memory_size=lm.limits.memory_bytes, table_elements=lm.limits.table_elements, instances=1)
        store.set_epoch_deadline(lm.deadline_ticks)
        if lm.limits.fuel is not None:
            store.set_fuel(lm.limits.fuel)
        return store

    def _new_direct_instance(self, lm: LoadedModule) -> _Instance:
        store = self._new_store(lm)
        stdout = OutputBuffer(0)  # a direct handler answers through memory, not stdout
        stderr = OutputBuffer(lm.capabilities.stderr_max_bytes)
        store.set_wasi(make_wasi(lm.capabilities, argv=[lm.manifest.name], env=lm.capabilities.env,
                                 stdin=b"", stdout=stdout, stderr=stderr))
        inst: _Instance | None = None
        try:
            instance = lm.pre.instantiate(store)
            exports = instance.exports(store)
            init = exports.get("_initialize")
            if init is not None:
                GuestCall(store, init, 0, 0, fast=self._fast).call()
            inst = _Instance(store, instance, exports, stderr, self._fast)
            version_fn = exports.get(ABI_VERSION_EXPORT)
            if version_fn is not None:
                version = GuestCall(store, version_fn, 0, 1, fast=self._fast).call()  # once per instance
                if version != ONE_CALL_VERSION:
                    raise WasmTrap(f"module {lm.key} exports {ABI_VERSION_EXPORT}() = {version}; this host speaks "
                                   f"direct ABI versions 1 (no such export) and {ONE_CALL_VERSION}", "abi_version")
                inst.one_call = True
                self._grow_input(lm, inst, INITIAL_INPUT_CAPACITY)
        except (Trap, WasmtimeError) as exc:
            err = self._map_failure(lm, exc, inst.mem.size() if inst is not None else None)
            store.close()
            raise err from None
        except WasmError:
            store.close()
            raise
        lm.m_instantiations.inc()
        assert inst is not None
        return inst

    def _grow_input(self, lm: LoadedModule, inst: _Instance, needed: int) -> None:
        """Give a version-2 instance an input buffer of at least ``needed`` bytes (doubling, 4 KiB pages);
        the old one is handed to ``dealloc`` when exported. Raises a WasmError when the guest has no room."""
        want = max(needed, 2 * inst.in_cap, INITIAL_INPUT_CAPACITY)
        want = (want + 4095) & ~4095
        ptr = inst.alloc(want) & 0xFFFFFFFF
        if ptr == 0 and want > needed:  # doubling did not fit: try for exactly what this request needs
            want = needed
            ptr = inst.alloc(want) & 0xFFFFFFFF
        if ptr == 0 or ptr + want > inst.mem.size():
            raise self._map_failure(lm, None, inst.mem.size(), b"",
                                    f"alloc({want}) returned an unusable pointer {ptr} for the input buffer")
        if inst.in_cap and inst.dealloc is not None:
            inst.dealloc(inst.in_ptr, inst.in_cap)
        inst.in_ptr, inst.in_cap = ptr, want

    # -- invocation ----------------------------------------------------------------------------

    def _enter(self, lm: LoadedModule) -> None:
        with lm._lock:
            if lm._inflight >= lm.limits.max_concurrency:
                rejected = True
            else:
                lm._inflight += 1
                rejected = False
        if rejected:
            self.metrics.concurrency_rejections.labels(module=lm.key).inc()
            self.metrics.invoke_errors.labels(module=lm.key, code=WasmConcurrencyRejected.code).inc()
            raise WasmConcurrencyRejected(
                f"module {lm.key} is at its concurrency limit of {lm.limits.max_concurrency}; retry later"
            )

    def _leave(self, lm: LoadedModule) -> None:
        with lm._lock:
            lm._inflight -= 1

    def invoke_sync(self, key: str, request: Request | bytes = b"") -> InvocationResult:
        """Run one invocation on the calling thread; raises a WasmError subclass on failure."""
        lm = self.module(key)
        self._enter(lm)
        try:
            return self._run(lm, request if isinstance(request, Request) else Request(body=bytes(request)))
        finally:
            self._leave(lm)

    async def invoke(
        self,
        key: str,
        request: Request | bytes = b"",
        *,
        limiter: trio.CapacityLimiter | None = None,
    ) -> InvocationResult:
        """Run one invocation on a trio worker thread; a call over the concurrency cap fails at once."""
        import trio

        lm = self.module(key)
        self._enter(lm)
        try:
            req = request if isinstance(request, Request) else Request(body=bytes(request))
            if lm.inline_ok and lm.fast_streak >= INLINE_AFTER and self.config.inline_calls:
                # Hot and proven fast: run here, bounded by inline_ticks (see INLINE_SAFE_IMPORTS).
                await trio.lowlevel.checkpoint_if_cancelled()
                try:
                    result = self._run(lm, req, lm.inline_ticks)
                except _InlineExpired:
                    lm.fast_streak = -INLINE_PENALTY
                    self.metrics.inline_calls.labels(outcome="expired").inc()
                    log.info("inline_call_expired", module=lm.key, bound_ticks=lm.inline_ticks)
                except BaseException:
                    lm.fast_streak = 0
                    raise
                else:
                    self.metrics.inline_calls.labels(outcome="ok").inc()
                    lm.fast_streak = next_streak(lm.fast_streak, result.duration_s)
                    return result
            if limiter is None:
                if self._limiter is None:
                    self._limiter = trio.CapacityLimiter(self.config.max_workers)
                limiter = self._limiter
            try:
                result = await trio.to_thread.run_sync(self._run, lm, req, limiter=limiter)
            except BaseException:
                lm.fast_streak = min(lm.fast_streak, 0)
                raise
            if lm.inline_ok:
                lm.fast_streak = next_streak(lm.fast_streak, result.duration_s)
            return result
        finally:
            self._leave(lm)

    def run_command(
        self, key: str, stdin: bytes = b"", args: tuple[str, ...] | list[str] = (), env: dict[str, str] | None = None
    ) -> InvocationResult:
        """Run a WASI command once: stdin in, stdout and exit status out."""
        return self.invoke_sync(key, Request.build(stdin, args, env))

    def call(self, key: str, payload: bytes) -> bytes:
        """Call a direct-ABI handler: bytes in, bytes out."""
        return self.invoke_sync(key, Request(body=payload)).body

    def _run(self, lm: LoadedModule, request: Request, inline_ticks: int = 0) -> InvocationResult:
        started = time.perf_counter()
        try:
            if lm.abi is Abi.DIRECT:
                result = self._call_direct(lm, request, started, inline_ticks or lm.deadline_ticks)
            else:
                result = self._run_command(lm, request, started)
        except WasmError as exc:
            if inline_ticks and inline_ticks < lm.deadline_ticks and isinstance(exc, WasmTimeout):
                raise _InlineExpired() from None  # the inline bound, not the module's timeout
            lm.m_failed.inc()
            self.metrics.invoke_errors.labels(module=lm.key, code=exc.code).inc()
            lm.m_seconds.observe(time.perf_counter() - started)
            log.warning("invoke_failed", module=lm.key, code=exc.code, error=str(exc))
            raise
        lm.m_ok.inc()
        lm.m_seconds.observe(result.duration_s)
        return result

    def _run_command(self, lm: LoadedModule, request: Request, started: float) -> InvocationResult:
        caps = lm.capabilities
        stdout = OutputBuffer(caps.stdout_max_bytes)
        stderr = OutputBuffer(caps.stderr_max_bytes)
        env = list(caps.env) + list(request.env) if request.env else caps.env
        store = self._new_store(lm)
        memory: Memory | None = None
        try:
            store.set_wasi(make_wasi(caps, argv=[lm.manifest.name, *request.args], env=env,
                                     stdin=request.body, stdout=stdout, stderr=stderr))
            try:
                instance = lm.pre.instantiate(store)
                lm.m_instantiations.inc()
                exports = instance.exports(store)
                mem = exports.get("memory")
                memory = mem if isinstance(mem, Memory) else None
                try:
                    exports["_start"](store)
                    status = 0
                except ExitTrap as exit_trap:
                    status = exit_trap.code
            except (Trap, WasmtimeError, MemoryError) as exc:
                raise self._map_failure(lm, exc, memory.data_len(store) if memory is not None else None,
                                        stderr.value()) from None
            fuel_used = lm.limits.fuel - store.get_fuel() if lm.limits.fuel is not None else None
        finally:
            store.close()
        return InvocationResult(
            status=status, body=stdout.value(), stderr=stderr.value(),
            truncated=stdout.truncated or stderr.truncated,
            duration_s=time.perf_counter() - started, fuel_consumed=fuel_used,
        )

    def _call_direct(self, lm: LoadedModule, request: Request, started: float, ticks: int) -> InvocationResult:
        inst = self.pools.acquire(lm.key)
        reusable = False
        try:
            inst.set_deadline(ticks)
            fuel = lm.limits.fuel
            if fuel is not None:
                inst.store.set_fuel(fuel)
            stderr = inst.stderr
            if stderr.size or stderr.truncated:
                stderr.reset()
            data = request.body
            n = len(data)
            one_call = inst.one_call
            try:
                if one_call:
                    # Version 2: the request goes straight into the instance's input buffer; handle() is the
                    # only call into wasm unless this request is larger than any before it.
                    if n > inst.in_cap:
                        self._grow_input(lm, inst, n)
                    ptr = inst.in_ptr
                    if n and not inst.mem.write(ptr, data):
                        raise WasmTrap(f"module {lm.key}: its input buffer left linear memory", "bad_alloc")
                else:
                    ptr = inst.alloc(n) & 0xFFFFFFFF
                    if n and (ptr == 0 or not inst.mem.write(ptr, data)):
                        raise self._map_failure(lm, None, inst.mem.size(), b"",
                                                f"alloc({n}) returned an unusable pointer {ptr}")
                packed = inst.handle(ptr, n)
                if packed < 0:
                    if not one_call and inst.dealloc is not None:
                        inst.dealloc(ptr, n)
                    reusable = True
                    raise GuestError(f"module {lm.key} handler returned error status {packed}", packed)
                out_ptr = (packed >> 32) & 0xFFFFFFFF
                out_len = packed & 0xFFFFFFFF
                if out_len > MAX_DIRECT_OUTPUT:
                    raise WasmLimitExceeded(
                        f"module {lm.key} returned {out_len} bytes, over the {MAX_DIRECT_OUTPUT} byte output limit",
                        "output",
                    )
                body = inst.mem.read(out_ptr, out_len)
                if body is None:
                    raise WasmTrap(f"module {lm.key} returned an out-of-bounds buffer", "bad_result")
                if not one_call and inst.dealloc is not None:
                    inst.dealloc(ptr, n)
                    if out_len:
                        inst.dealloc(out_ptr, out_len)
                fuel_used = fuel - inst.store.get_fuel() if fuel is not None else None
            except (Trap, WasmtimeError) as exc:
                raise self._map_failure(lm, exc, inst.mem.size(), stderr.value()) from None
            reusable = True
            return InvocationResult(
                status=0, body=body, stderr=stderr.value() if stderr.size else b"", truncated=stderr.truncated,
                duration_s=time.perf_counter() - started, fuel_consumed=fuel_used,
            )
        finally:
            # A trapped or interrupted instance may hold broken state: never reuse it.
            self.pools.release(lm.key, inst, reusable=reusable)

    def _map_failure(
        self,
        lm: LoadedModule,
        exc: BaseException | None,
        memory_bytes: int | None,
        stderr: bytes = b"",
        detail: str | None = None,
    ) -> WasmError:
        key = lm.key
        limits = lm.limits
        message = detail or _trap_summary(exc)
        tail = _stderr_tail(stderr)
        if exc is not None and _host_out_of_memory(exc):
            # mmap refused by the host (ulimit -v, a cgroup, overcommit): nothing the guest did.
            return HostResourceError(
                f"host could not allocate memory to run module {key} ({_first_line(message)}): a host resource "
                "limit (ulimit -v, cgroup memory), not a guest trap; retry on a node with more memory")
        if isinstance(exc, Trap) and exc.trap_code == TrapCode.INTERRUPT:
            return WasmTimeout(f"module {key} exceeded its {limits.timeout_ms} ms timeout and was interrupted",
                               limits.timeout_ms)
        if isinstance(exc, Trap) and exc.trap_code == TrapCode.OUT_OF_FUEL:
            return WasmLimitExceeded(f"module {key} ran out of fuel ({limits.fuel} units)", "fuel")
        if isinstance(exc, ExitTrap):
            return WasmTrap(f"module {key} called proc_exit({exc.code}) inside a direct-ABI call", "exit")
        if isinstance(exc, WasmtimeError) and not isinstance(exc, Trap):
            text = str(exc)
            if "memory" in text and "limit" in text:
                return WasmLimitExceeded(
                    f"module {key} needs more linear memory than its {limits.memory_bytes // MIB} MiB limit "
                    f"({_first_line(text)})", "memory")
            if "table" in text and "limit" in text:
                return WasmLimitExceeded(f"module {key} exceeds its table limit ({_first_line(text)})", "table")
        if isinstance(exc, Trap) and exc.trap_code == TrapCode.STACK_OVERFLOW:
            return WasmTrap(f"module {key} trapped: stack exhausted (wasm call stack overflow, runaway recursion?)"
                            f"{tail}", "stack_exhausted")
        depth = _recursion_depth(exc)
        if depth is not None:
            return WasmTrap(
                f"module {key} trapped: stack exhausted (out-of-bounds access at least {depth} frames deep in a "
                f"recursive call: the guest's C stack in linear memory overflowed){tail}", "stack_exhausted")
        if memory_bytes is not None and near_memory_cap(memory_bytes, limits.memory_bytes):
            return WasmLimitExceeded(
                f"module {key} hit its memory limit: trapped with {memory_bytes // MIB} of "
                f"{limits.memory_bytes // MIB} MiB in use ({message}){tail}", "memory")
        code = exc.trap_code.name.lower() if isinstance(exc, Trap) and exc.trap_code is not None else "error"
        return WasmTrap(f"module {key} trapped: {message}{tail}", code)

    # -- maintenance and introspection ---------------------------------------------------------

    def tick(self) -> int:
        """Run pool maintenance (idle and pressure eviction); call it periodically. Returns evictions."""
        return self.pools.tick()

    def _on_evict(self, key: Hashable, reason: str) -> None:
        self.metrics.pool_evictions.labels(module=str(key), reason=reason).inc()
        if reason not in ("discarded", "no_reuse"):
            log.info("pool_instance_evicted", module=str(key), reason=reason)

    def _deny(self, module: str, capability: str, detail: str, *, stage: str) -> None:
        self.metrics.capability_denials.labels(module=module, capability=capability).inc()
        log.warning("capability_denied", module=module, capability=capability, detail=detail, stage=stage)
        self.audit.record({
            "event": "capability_denied", "module": module, "capability": capability,
            "detail": detail, "stage": stage, "ts": self._wall_clock(),
        })

    def _reject(self, reason: str, module: str, exc: Exception) -> None:
        self.metrics.admission_rejections.labels(reason=reason).inc()
        log.warning("module_rejected", module=module, reason=reason, error=str(exc))
        self.audit.record({
            "event": "module_rejected", "module": module, "reason": reason, "error": str(exc),
            "ts": self._wall_clock(),
        })

    def close(self) -> None:
        """Destroy pooled instances and stop epoch tickers; the runtime is unusable afterwards."""
        if self._closed:
            return
        self._closed = True
        self.pools.close()
        with self._lock:
            self._modules.clear()
            engines = list(self._engines.values())
        for handle in engines:
            handle.close()
        _live_runtimes.discard(self)

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def grant_fingerprint(caps: Capabilities) -> str:
    """8 hex characters naming an effective grant (a frozen dataclass: its repr is canonical)."""
    return hashlib.blake2b(repr(caps).encode(), digest_size=4).hexdigest()


def _reject_reason(exc: ValidationError) -> str:
    """The admission_rejections label: over a bound is told apart from malformed."""
    return "module_too_large" if isinstance(exc, ModuleTooLarge) else "invalid_module"


def _first_line(message: str) -> str:
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    return lines[0] if lines else message


def _trap_summary(exc: BaseException | None) -> str:
    """The human part of a wasmtime trap message (its last line), without the backtrace."""
    if exc is None:
        return "unknown failure"
    text = exc.message if isinstance(exc, Trap) else str(exc)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


_ENOMEM_MARKERS = ("Cannot allocate memory", "os error 12", "out of memory")


def _host_out_of_memory(exc: BaseException) -> bool:
    """True when wasmtime failed because the host refused memory (ENOMEM), not because the guest trapped."""
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, Trap) and exc.trap_code is not None:
        return False  # a guest trap with a trap code is the guest's, whatever its text
    text = exc.message if isinstance(exc, Trap) else str(exc)
    return any(marker in text for marker in _ENOMEM_MARKERS)


# wasmtime captures at most 20 frames of a trap's backtrace. An out-of-bounds
# access with the whole captured backtrace inside a short cycle of functions is
# a recursion that ran the C shadow stack (which lives in linear memory and
# grows down) off the bottom of memory: clang/wasm-ld emit no stack check.
RECURSION_MIN_FRAMES = 16
RECURSION_MAX_DISTINCT = 3


def _recursion_depth(exc: BaseException | None) -> int | None:
    """The captured depth if ``exc`` is an out-of-bounds trap deep inside a recursion, else None."""
    if not isinstance(exc, Trap) or exc.trap_code != TrapCode.MEMORY_OUT_OF_BOUNDS:
        return None
    try:
        frames = exc.frames
    except WasmtimeError:  # pragma: no cover - a trap without a backtrace
        return None
    # The innermost frame may be a leaf helper (memset) called from the recursion.
    inner = [f.func_index for f in frames[1:]]
    if len(inner) + 1 < RECURSION_MIN_FRAMES or len(set(inner)) > RECURSION_MAX_DISTINCT:
        return None
    return len(frames)


def _stderr_tail(stderr: bytes) -> str:
    if not stderr:
        return ""
    last = stderr.decode("utf-8", "replace").strip().splitlines()
    return f"; guest stderr: {last[-1][:200]}" if last else ""

