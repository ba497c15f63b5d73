"""The runtime package's exception hierarchy, rooted at ``WasmError``.

Each error carries a stable ``code`` (a metric label and a wire value) and the
HTTP status an ingress should answer with, so callers map failures without
string matching.
"""

from __future__ import annotations

from collections.abc import Sequence

from model.errors import SpecError


class WasmError(Exception):
    """Base class of every error raised by the runtime package."""

    code: str = "wasm_error"
    http_status: int = 500


class InvalidSpecError(WasmError, SpecError):
    """A grant, directory or pool specification with an invalid value (manifest values raise ``SpecError``)."""

    code = "invalid_spec"
    http_status = 400


class ArtifactError(WasmError):
    """A module blob that is missing, corrupt or does not match its manifest."""

    code = "artifact_error"
    http_status = 502


class ManifestError(ArtifactError, SpecError):
    """A signed manifest that does not parse or has invalid fields (wraps the model's ``SpecError``)."""

    code = "manifest_invalid"


class SignatureError(ArtifactError):
    """A manifest whose signature is missing, malformed or not from a trusted publisher."""

    code = "signature_invalid"


class ValidationError(ArtifactError):
    """A binary that is not a valid WebAssembly module for this runtime."""

    code = "module_invalid"


class ModuleTooLarge(ValidationError):
    """A module over an admission bound (size, functions, imports, ...): ``bound`` names it, ``value`` is what was found."""

    code = "module_too_large"
    http_status = 413

    def __init__(self, message: str, bound: str, value: int, limit: int) -> None:
        super().__init__(message)
        self.bound = bound
        self.value = value
        self.limit = limit


class HostResourceError(WasmError):
    """The host, not the guest, ran out of a resource (memory, address space, a worker): retry elsewhere or later."""

    code = "host_resource"
    http_status = 503


class CacheError(WasmError):
    """The compiled-module cache cannot be used (I/O failure, bad configuration)."""

    code = "cache_error"


class CapabilityDenied(WasmError):
    """A module needs capabilities (imports) that it was not granted."""

    code = "capability_denied"
    http_status = 403

    def __init__(self, message: str, offending: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.offending: tuple[str, ...] = tuple(offending)


class ModuleNotLoaded(WasmError):
    """An invocation named a module version that is not loaded on this node."""

    code = "module_not_loaded"
    http_status = 404


class ExecutionError(WasmError):
    """Base class of failures while a guest runs; the instance is discarded."""

    code = "execution_error"


class WasmTimeout(ExecutionError):
    """The guest ran past its wall-clock deadline and was interrupted."""

    code = "timeout"
    http_status = 504

    def __init__(self, message: str, timeout_ms: int) -> None:
        super().__init__(message)
        self.timeout_ms = timeout_ms


class WasmTrap(ExecutionError):
    """The guest trapped (unreachable, out-of-bounds access, abort, ...)."""

    code = "trap"
    http_status = 500

    def __init__(self, message: str, trap_code: str = "unknown") -> None:
        super().__init__(message)
        self.trap_code = trap_code


class WasmLimitExceeded(ExecutionError):
    """The guest hit a resource limit: ``kind`` is "memory", "fuel", "table" or "output"."""

    code = "limit_exceeded"
    http_status = 500

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class GuestError(ExecutionError):
    """A direct-ABI handler returned a negative status of its own."""

    code = "guest_error"
    http_status = 500

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class WasmConcurrencyRejected(WasmError):
    """A call was refused at once because the module is at its concurrency cap."""

    code = "concurrency_rejected"
    http_status = 429
