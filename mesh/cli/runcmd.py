"""``wasmatrix run``: run a local WebAssembly module once, like ``wasmtime run``.

Development mode: the module is a local file, unsigned, and gets exactly the
capabilities given on the command line, plus WASI clocks and random unless
``--no-clocks`` / ``--no-random`` deny them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INVALID_MODULE = 65  # EX_DATAERR: not wasm, fails validation, or imports what it was not granted
EXIT_TIMEOUT = 124  # as GNU timeout(1)
EXIT_LIMIT = 125  # memory, fuel or output limit exceeded
EXIT_TRAP = 134  # 128 + SIGABRT, as `wasmtime run` reports a trap
# Guest stdin is read whole before the run; past this it is refused, so `--stdin /dev/zero`
# fails at once instead of growing until MemoryError. Same order as the module size bound.
MAX_STDIN_BYTES = 64 << 20

_EPILOG = f"""\
exit codes:
  N    the guest's own exit status (WASI commands)
  {EXIT_OK}    success (direct ABI)
  {EXIT_FAILURE}    other runtime failure (e.g. the handler returned an error status)
  {EXIT_USAGE}    usage error: bad arguments; a missing or unreadable file, a directory or
       device given as FILE.wasm; --stdin over {MAX_STDIN_BYTES >> 20} MiB
  {EXIT_INVALID_MODULE}   invalid module: not WebAssembly, fails validation, over an admission
       bound (size, function count, compile memory), or needs ungranted imports
  {EXIT_TIMEOUT}  timeout: the guest ran past --timeout-ms and was interrupted
  {EXIT_LIMIT}  limit exceeded: memory (--memory-mb), fuel (--fuel) or output cap
  {EXIT_TRAP}  trap: the guest trapped (unreachable, out-of-bounds access, abort)
"""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``run`` subcommand."""
    p = subparsers.add_parser(
        "run",
        help="run a WebAssembly module once (WASI command or direct ABI)",
        description="Run FILE.wasm once in the sandbox. Its stdout goes to stdout and its exit code "
        "becomes this process's exit code. Nothing is granted unless given below.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_options(p)
    # Everything from FILE on is re-parsed by _parse_rest so options may follow FILE and
    # guest arguments follow "--" (argparse alone would swallow or reject them).
    p.add_argument("rest", nargs=argparse.REMAINDER, metavar="FILE.wasm [-- ARGS...]",
                   help="the module to run, then arguments passed to the guest after --")
    p.set_defaults(handler=run_command)


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stdin", metavar="FILE", help="file fed to the guest's stdin (default: piped stdin, "
                   "or nothing when stdin is a terminal)")
    p.add_argument("--env", metavar="K=V", action="append", default=[], help="grant an environment variable")
    p.add_argument("--dir", metavar="HOST[::GUEST][:ro|:rw]", action="append", default=[],
                   help="preopen a host directory (read-only unless :rw)")
    p.add_argument("--timeout-ms", type=int, default=30_000, metavar="N", help="wall-clock limit (default 30000)")
    p.add_argument("--memory-mb", type=int, default=128, metavar="N", help="linear memory limit (default 128)")
    p.add_argument("--fuel", type=int, default=None, metavar="N", help="deterministic instruction budget")
    p.add_argument("--kv-ns", metavar="NS", action="append", default=[],
                   help="grant a key-value namespace (in-memory for this run)")
    p.add_argument("--allow-http", metavar="HOST", action="append", default=[],
                   help="allow outbound HTTP to HOST (allowlist check only)")
    p.add_argument("--log", action="store_true", help="grant the guest logging host function")
    p.add_argument("--clocks", action=argparse.BooleanOptionalAction, default=True,
                   help="grant WASI clocks (default: granted; --no-clocks denies them)")
    p.add_argument("--random", action=argparse.BooleanOptionalAction, default=True,
                   help="grant WASI random (default: granted; --no-random denies it)")
    p.add_argument("--abi", choices=["auto", "wasi-command", "direct"], default="auto",
                   help="handler ABI (default: detect from exports)")
    p.add_argument("--invoke", action="store_true", help="shorthand for --abi direct: stdin bytes in, "
                   "handler output bytes out")
    p.add_argument("-v", "--verbose", action="store_true", help="show the runtime's structured logs on stderr")


def _parse_rest(args: argparse.Namespace) -> argparse.Namespace:
    """Parse FILE, options given after it, and the guest's arguments after ``--``."""
    inner = argparse.ArgumentParser(prog="wasmatrix run", add_help=False)
    _add_options(inner)
    inner.add_argument("file")
    inner.add_argument("args", nargs="*")
    rest = list(args.rest)
    guest: list[str] = []
    if "--" in rest:
        cut = rest.index("--")
        rest, guest = rest[:cut], rest[cut + 1:]
    defaults = {k: v for k, v in vars(args).items() if k not in ("rest", "handler")}
    ns = inner.parse_args(rest, namespace=argparse.Namespace(**defaults))
    ns.args = list(ns.args) + guest
    return ns


def _error(message: str, code: int) -> int:
    print(f"wasmatrix run: {message}", file=sys.stderr)
    return code


class _TooBig(Exception):
    """An input over its read bound."""


def _read_bounded(stream: Any, limit: int) -> bytes:
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise _TooBig
    return bytes(data)


def _read_stdin(path: str | None) -> bytes:
    """The guest's stdin: the --stdin file (any kind, e.g. a pipe) or piped stdin, at most MAX_STDIN_BYTES."""
    if path is not None:
        if Path(path).is_dir():
            raise IsADirectoryError(21, "is a directory, not a file", path)
        with open(path, "rb") as f:
            return _read_bounded(f, MAX_STDIN_BYTES)
    stream = sys.stdin
    if stream is None or stream.closed:
        return b""
    try:
        if os.isatty(stream.fileno()):
            return b""  # never block on a terminal
    except (OSError, ValueError):
        return b""
    return _read_bounded(stream.buffer, MAX_STDIN_BYTES)


def _read_module(path: Path, limit: int) -> bytes:
    """Up to ``limit + 1`` bytes of the module: the runtime refuses what is over its size bound."""
    with open(path, "rb") as f:
        return bytes(f.read(limit + 1))


def _configure_logging(verbose: bool) -> None:
    """Send runtime logs to stderr (stdout belongs to the guest); quiet unless --verbose."""
    import logging

    import structlog

    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG if verbose else logging.CRITICAL),
        cache_logger_on_first_use=False,
    )


def run_command(args: argparse.Namespace) -> int:
    """Handler of ``wasmatrix run``; returns the process exit code."""
    from runtime import (
        Abi,
        Capabilities,
        CapabilityDenied,
        DirGrant,
        GuestError,
        Limits,
        PoolConfig,
        Request,
        Runtime,
        RuntimeConfig,
        SpecError,
        ValidationError,
        WasmError,
        WasmLimitExceeded,
        WasmTimeout,
        WasmTrap,
    )
    from runtime.limits import MIB

    if not args.rest:
        return _error("missing FILE.wasm (see wasmatrix run --help)", EXIT_USAGE)
    args = _parse_rest(args)
    _configure_logging(args.verbose)
    guest_args = list(args.args)
    path = Path(args.file)
    if not path.exists():
        return _error(f"{args.file}: no such file", EXIT_USAGE)
    if path.is_dir():
        return _error(f"{args.file}: is a directory, not a module file", EXIT_USAGE)
    if not path.is_file():
        return _error(f"{args.file}: not a regular file (a device, pipe or socket)", EXIT_USAGE)
    try:
        wasm = _read_module(path, RuntimeConfig().max_module_bytes)
    except OSError as exc:
        return _error(f"cannot read {args.file}: {exc.strerror}", EXIT_USAGE)
    try:
        stdin = _read_stdin(args.stdin)
    except _TooBig:
        return _error(f"--stdin {args.stdin or '-'}: more than {MAX_STDIN_BYTES} bytes (the stdin bound)", EXIT_USAGE)
    except OSError as exc:
        return _error(f"--stdin {exc.filename or args.stdin}: {exc.strerror}", EXIT_USAGE)
    env: dict[str, str] = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            return _error(f"--env {item!r}: expected K=V", EXIT_USAGE)
        env[name] = value
    try:
        dirs = [DirGrant.parse(spec) for spec in args.dir]
        caps = Capabilities.build(env=env, dirs=dirs, kv_namespaces=args.kv_ns, http_hosts=args.allow_http,
                                  log=args.log, clocks=args.clocks, random=args.random)
        limits = Limits(memory_bytes=args.memory_mb * MIB, timeout_ms=args.timeout_ms, fuel=args.fuel)
    except SpecError as exc:  # also runtime's InvalidSpecError (grants), a subclass
        return _error(str(exc), EXIT_USAGE)
    abi = Abi.DIRECT if args.invoke else (None if args.abi == "auto" else Abi(args.abi))
    # A manifest name starts and ends with [a-z0-9] (model.manifest.NAME_RE).
    name = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "-" for c in path.stem.lower())
    name = name[:64].strip("._-") or "module"
    with Runtime(RuntimeConfig(allow_unsigned=True)) as rt:
        try:
            lm = rt.load_unsigned(wasm, name=name, capabilities=caps, limits=limits, abi=abi,
                                  pool=PoolConfig(min_instances=0, max_instances=1))
            result = rt.invoke_sync(lm.key, Request.build(stdin, guest_args))
        except (ValidationError, CapabilityDenied) as exc:
            return _error(str(exc), EXIT_INVALID_MODULE)
        except WasmTimeout as exc:
            return _error(str(exc), EXIT_TIMEOUT)
        except WasmLimitExceeded as exc:
            return _error(str(exc), EXIT_LIMIT)
        except WasmTrap as exc:
            return _error(str(exc), EXIT_TRAP)
        except GuestError as exc:
            return _error(str(exc), EXIT_FAILURE)
        except WasmError as exc:
            return _error(str(exc), EXIT_FAILURE)
    out = sys.stdout.buffer
    out.write(result.body)
    out.flush()
    if result.stderr:
        sys.stderr.buffer.write(result.stderr)
        sys.stderr.flush()
    if result.truncated:
        print("wasmatrix run: guest output was truncated at its cap", file=sys.stderr)
    return result.status
