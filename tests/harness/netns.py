"""Network namespaces on a private bridge, for tests that need real interfaces and multicast (root only).

``NetnsLab(n)`` makes ``n`` node namespaces and one "switch" namespace holding a bridge; each node
namespace has one veth (``veth0``, address ``10.213.<k>.<i+1>/24``) whose peer is a port of the
bridge. Every link is created directly inside the namespaces (``ip -n``), so the host's own
interfaces, routes and multicast groups are never touched, and deleting the namespaces deletes every
link with them. Names are ``wmx-<pid>-<serial>-sw`` and ``wmx-<pid>-<serial>-n<i>``.

Processes started with :meth:`NetnsLab.run` go through ``tests/harness/procs.py``'s ProcessGroup
(new session, killed by the PID we started, never by name). Leaving the ``with`` block — also on an
exception — kills them and then deletes the namespaces; an ``atexit`` hook does the same for a lab
that was never closed, and a new lab first removes namespaces left by a test process that is no
longer alive (a SIGKILLed pytest), matching only ``wmx-<dead pid>-``.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.harness.procs import Proc, ProcError, ProcessGroup, pid_alive

PREFIX = f"wmx-{os.getpid()}-"
IFACE = "veth0"
_STALE = re.compile(r"wmx-(\d+)-\d+-(?:sw|n\d+)")
_serial = itertools.count()
_open_labs: weakref.WeakSet[NetnsLab] = weakref.WeakSet()
_IP_TIMEOUT = 10.0


class NetnsError(RuntimeError):
    """A namespace, link or address could not be made or removed."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=_IP_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise NetnsError(f"`ip {' '.join(args)}` did not finish within {_IP_TIMEOUT}s") from None
    if check and done.returncode != 0:
        raise NetnsError(f"`ip {' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done


def namespaces() -> list[str]:
    """Names of every network namespace that ``ip netns`` knows."""
    out = _ip("-j", "netns", "list").stdout.strip()
    return sorted(entry["name"] for entry in json.loads(out)) if out else []


def netns_available() -> str | None:
    """None when this process can make network namespaces, otherwise the reason it cannot."""
    if os.geteuid() != 0:
        return f"needs root to create network namespaces (running as uid {os.geteuid()})"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"{PREFIX}{next(_serial)}-n0"
    try:
        made = _ip("netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"`ip netns add` failed: {made.stderr.strip()}"
        bridge = _ip("-n", probe, "link", "add", "br0", "type", "bridge", check=False)
        if bridge.returncode != 0:
            return f"cannot create a bridge inside a namespace: {bridge.stderr.strip()}"
    except (OSError, NetnsError) as exc:
        return f"`ip netns` is unavailable: {exc}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def remove_stale() -> list[str]:
    """Delete namespaces named ``wmx-<pid>-...`` whose creating process is gone; return their names."""
    removed = []
    for name in namespaces():
        m = _STALE.fullmatch(name)
        if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
            _ip("netns", "del", name, check=False)
            removed.append(name)
    return removed


class NetnsLab:
    """``n`` namespaces on one bridge; processes inside them; partitions by setting a veth down."""

    def __init__(self, n: int, *, subnet: int = 1, workdir: Path | None = None,
                 group: ProcessGroup | None = None) -> None:
        if not 1 <= n <= 200:
            raise ValueError(f"node count must be 1..200, got {n}")
        if not 0 <= subnet <= 255:
            raise ValueError(f"subnet must be 0..255 (10.213.<subnet>.0/24), got {subnet}")
        base = f"{PREFIX}{next(_serial)}-"
        self.switch = f"{base}sw"
        self.names = [f"{base}n{i}" for i in range(n)]
        self.addresses = [f"10.213.{subnet}.{i + 1}" for i in range(n)]
        self.iface = IFACE
        self.group = group or ProcessGroup(Path(workdir or tempfile.mkdtemp(prefix="wasmatrix-netns-")))
        self._created: list[str] = []
        self._procs: list[Proc] = []
        self._closed = False

    # --- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> NetnsLab:
        _open_labs.add(self)
        try:
            remove_stale()
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        sw = self.switch
        self._add_netns(sw)
        _ip("-n", sw, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0", "stp_state", "0")
        _ip("-n", sw, "link", "set", "lo", "up")
        _ip("-n", sw, "link", "set", "br0", "up")
        for i, ns in enumerate(self.names):
            self._add_netns(ns)
            port = f"p{i}"
            # Both ends are made inside namespaces: nothing ever appears in the host namespace.
            _ip("-n", ns, "link", "add", IFACE, "type", "veth", "peer", "name", port, "netns", sw)
            _ip("-n", sw, "link", "set", port, "master", "br0")
            _ip("-n", sw, "link", "set", port, "multicast", "on", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{self.addresses[i]}/24", "dev", IFACE)
            _ip("-n", ns, "link", "set", IFACE, "multicast", "on", "up")

    def _add_netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._created.append(name)

    def close(self) -> None:
        """Kill every process started here (by PID), then delete every namespace; raise if any is left."""
        if self._closed:
            return
        self._closed = True
        _open_labs.discard(self)
        errors: list[str] = []
        for proc in reversed(self._procs):  # only ours, even when the group is shared
            try:
                self.group.stop(proc)
            except ProcError as exc:  # still delete the namespaces, then report
                errors.append(f"stopping processes: {exc}")
        for name in reversed(self._created):
            done = _ip("netns", "del", name, check=False)
            if done.returncode != 0:
                errors.append(f"deleting {name}: {done.stderr.strip()}")
        left = sorted(set(self._created) & set(namespaces()))
        if left:
            errors.append(f"namespaces still present: {left}")
        if errors:
            raise NetnsError("; ".join(errors))

    # --- use -----------------------------------------------------------------------------------------

    def run(self, i: int, argv: Sequence[str], *, name: str | None = None,
            env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Proc:
        """Start ``argv`` inside namespace ``i`` (``ip netns exec``), tracked and killed by its PID."""
        proc = self.group.start(["ip", "netns", "exec", self.names[i], *argv],
                                name=name or f"n{i}-{len(self.group.procs)}", env=env, cwd=cwd)
        self._procs.append(proc)
        return proc

    def check_output(self, i: int, argv: Sequence[str], timeout: float = 10.0) -> str:
        """Run ``argv`` to completion inside namespace ``i``; its stdout, NetnsError if it fails."""
        try:
            done = subprocess.run(["ip", "netns", "exec", self.names[i], *argv],
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise NetnsError(f"{argv!r} in {self.names[i]} did not finish within {timeout}s") from None
        if done.returncode != 0:
            raise NetnsError(f"{argv!r} in {self.names[i]} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def link_down(self, i: int) -> None:
        """Partition node ``i``: set its veth down (its address stays; its link and routes go)."""
        _ip("-n", self.names[i], "link", "set", IFACE, "down")

    def link_up(self, i: int) -> None:
        """Heal node ``i``'s partition: set its veth up again."""
        _ip("-n", self.names[i], "link", "set", IFACE, "up")

    def link_state(self, i: int) -> str:
        """``operstate`` of node ``i``'s veth as the kernel reports it (``UP``, ``DOWN``, ...)."""
        info = json.loads(_ip("-j", "-n", self.names[i], "link", "show", IFACE).stdout)
        return str(info[0]["operstate"])


@atexit.register
def _close_forgotten_labs() -> None:
    for lab in list(_open_labs):
        try:
            lab.close()
        except NetnsError as exc:  # nothing left to raise to at exit: say it
            print(f"netns cleanup at exit: {exc}", file=sys.stderr)
