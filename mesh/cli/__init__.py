"""The `wasmatrix` command line.

Each subcommand family lives in its own module exposing ``register(subparsers)``;
handlers return a process exit code, by one rule for every command:

* 0: done.
* 1: the operation was attempted and failed (e.g. no such deployment, a host error).
* 2: the invocation is wrong: a bad flag or value, or a file named on the command line
  that is missing, a directory or device, unreadable, over its size bound, or invalid
  (a scenario, a key, a module to publish). One line on stderr names the flag, key or file.
* ``wasmatrix run`` adds its documented codes (65 invalid module, 124 timeout, 125 limit,
  134 trap, or the guest's own exit status); see ``wasmatrix run --help``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import entry_points

# Modules that contribute subcommands. A module that fails to import (e.g. an
# optional native dependency missing) only loses its own commands.
_COMMAND_MODULES = (
    "mesh.cli.runcmd",
    "mesh.cli.intentcmd",
    "mesh.cli.meshcmd",
    "mesh.cli.nodecmd",
    "mesh.cli.trustcmd",
    "mesh.cli.democmd",
    "mesh.cli.invokecmd",
    "mesh.cli.eventscmd",
    "mesh.cli.subscriptioncmd",
    "mesh.cli.routecmd",
    "mesh.cli.tenantcmd",
)
# Packages layered above ``mesh`` (the simulator drives mesh's node core, so mesh
# must not import it) contribute their subcommands through this entry-point
# group: each entry point names a ``register(subparsers)`` function.
ENTRY_POINT_GROUP = "wasmatrix.commands"
# The module that registers each command. ``main`` imports only the one its command line
# names, so `wasmatrix run` does not load the daemon, pycrdt or the demo (a third of the
# start-up time); `wasmatrix`, `--help` and a mistyped command build the full parser.
# tests/test_cli_lazy.py checks this table against what the modules register.
COMMAND_OWNERS = {
    "run": "mesh.cli.runcmd",
    "keygen": "mesh.cli.intentcmd",
    "module": "mesh.cli.intentcmd",
    "deploy": "mesh.cli.intentcmd",
    "rollback": "mesh.cli.intentcmd",
    "mesh": "mesh.cli.meshcmd",
    "audit": "mesh.cli.meshcmd",
    "node": "mesh.cli.nodecmd",
    "members": "mesh.cli.nodecmd",
    "status": "mesh.cli.nodecmd",
    "join": "mesh.cli.nodecmd",
    "leave": "mesh.cli.nodecmd",
    "meta": "mesh.cli.nodecmd",
    "revoke": "mesh.cli.trustcmd",
    "trust": "mesh.cli.trustcmd",
    "demo": "mesh.cli.democmd",
    "invoke": "mesh.cli.invokecmd",
    "placements": "mesh.cli.invokecmd",
    "events": "mesh.cli.eventscmd",
    "workloads": "mesh.cli.eventscmd",
    "subscription": "mesh.cli.subscriptioncmd",
    "publish": "mesh.cli.subscriptioncmd",
    "route": "mesh.cli.routecmd",
    "tenant": "mesh.cli.tenantcmd",
}

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors exit 2 with one clear line
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Build the argument parser: every registered subcommand, or only the module that owns ``command``.

    A ``command`` no module is known to own (an entry point's, or a typo) is looked up
    among the entry points, and failing that gets the full parser, whose error lists
    every command.
    """
    parser = _Parser(prog="wasmatrix", description="Peer-to-peer WebAssembly workload platform")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    if command is not None:
        owner = COMMAND_OWNERS.get(command)
        if owner is not None and _register(owner, sub):
            return parser
        eps = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == command]
        if eps:
            eps[0].load()(sub)
            return parser
        # Nothing was registered: go on to the full parser.
    for name in _COMMAND_MODULES:
        _register(name, sub)
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        ep.load()(sub)
    return parser


def _register(name: str, sub: argparse._SubParsersAction) -> bool:  # type: ignore[type-arg]
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return False
        raise
    module.register(sub)
    return True


def _command_of(argv: list[str]) -> str | None:
    """The subcommand a command line names (its first word; the top level takes no options but -h)."""
    return argv[0] if argv and not argv[0].startswith("-") else None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``wasmatrix`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_of(argv))
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
