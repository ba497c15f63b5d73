"""wasmtime runtime: artifacts, compiled cache, instance pools, ABIs, capabilities, limits.

The node uses ``Runtime`` (see ``runtime.runner``); everything else here is a
building block it composes. This package imports nothing from ``mesh``,
``crdt``, ``scheduler`` or ``sim``; the manifest it admits is ``model.Manifest``, the one
definition ``crdt`` stores in the registry.
"""

from model import Manifest, SpecError
from runtime.abi import Abi
from runtime.artifacts import ArtifactStore
from runtime.audit import AuditSink, MemoryAuditSink, NullAuditSink
from runtime.capabilities import Capabilities, CapabilityRequest, DirGrant
from runtime.errors import (
    ArtifactError,
    CacheError,
    CapabilityDenied,
    ExecutionError,
    GuestError,
    HostResourceError,
    InvalidSpecError,
    ManifestError,
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
from runtime.bundled import example_bytes, example_path
from runtime.hostfuncs import HttpFetcher
from runtime.invocation import InvocationResult, Request
from runtime.kv import KVStore, MemoryKVStore
from runtime.limits import Limits, ModuleBounds, PoolConfig
from runtime.runner import LoadedModule, Runtime, RuntimeConfig
from runtime.signing import Publisher, SignedManifest, TrustStore

__all__ = [
    "Abi", "ArtifactError", "ArtifactStore", "AuditSink", "CacheError", "Capabilities", "CapabilityDenied",
    "CapabilityRequest", "DirGrant", "ExecutionError", "GuestError", "HostResourceError", "HttpFetcher", "InvalidSpecError",
    "InvocationResult", "KVStore", "Limits", "LoadedModule", "Manifest", "ManifestError", "MemoryAuditSink", "ModuleBounds", "ModuleTooLarge",
    "MemoryKVStore", "ModuleNotLoaded", "NullAuditSink", "PoolConfig", "Publisher", "Request", "Runtime",
    "RuntimeConfig", "SignatureError", "SignedManifest", "SpecError", "TrustStore", "ValidationError",
    "WasmConcurrencyRejected", "WasmError", "WasmLimitExceeded", "WasmTimeout", "WasmTrap", "example_bytes", "example_path",
]
