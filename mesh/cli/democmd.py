"""`wasmatrix demo`: a real mesh of local daemons on loopback (see :mod:`mesh.demo`)."""

from __future__ import annotations

import argparse
from typing import Any

from mesh.daemon.config import DEFAULT_PROFILE
from mesh.demo import DEFAULT_NODES, MAX_NODES, MIN_NODES
from mesh.membership.config import PROFILES


def _nodes(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not MIN_NODES <= n <= MAX_NODES:
        raise argparse.ArgumentTypeError(f"{n} is outside {MIN_NODES}..{MAX_NODES}")
    return n


def cmd_demo(args: argparse.Namespace) -> int:
    from mesh.demo import run_cli

    return run_cli(args.nodes, args.profile, args.json, args.keep)


def register(subparsers: Any) -> None:
    """Add `demo`."""
    d = subparsers.add_parser(
        "demo",
        help="start a few real daemons on loopback, kill one, watch the mesh detect it (`wasmatrix sim demo`: simulated)",
        description="Start N daemons on 127.0.0.1 joined through one seed under a fresh mesh secret, SIGKILL one and "
                    "show which node saw it suspect and dead, SIGTERM another (a graceful leave), print the seed's view "
                    "and the measured times, and stop every daemon it started.",
    )
    d.add_argument("--nodes", type=_nodes, default=DEFAULT_NODES, metavar="N",
                   help=f"daemons to start, {MIN_NODES}..{MAX_NODES} (default {DEFAULT_NODES})")
    d.add_argument("--profile", choices=sorted(PROFILES), default=DEFAULT_PROFILE,
                   help=f"timing profile of every daemon (default {DEFAULT_PROFILE}, the daemon's)")
    d.add_argument("--json", action="store_true", help="print only a JSON summary")
    d.add_argument("--keep", action="store_true", help="keep the data dirs and logs and print where they are")
    d.set_defaults(handler=cmd_demo)
