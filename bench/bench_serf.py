"""Failure detection and idle cost on loopback, side by side with HashiCorp Serf. Prints figures, never asserts.

Run (from the repo root):

    PYTHONPATH=. python bench/bench_serf.py                   # detection: Serf vs ours, 5 nodes, 3 runs
    PYTHONPATH=. python bench/bench_serf.py --serf-only       # the baseline alone (before the daemon exists)
    PYTHONPATH=. python bench/bench_serf.py --loss 0.1        # both under 10% datagram loss, false positives
    PYTHONPATH=. python bench/bench_serf.py --idle            # RSS and CPU of idle converged clusters

Baseline: HashiCorp Serf (Debian package ``serf``, installed with apt-get when missing and root),
``-profile=lan``, N agents bound to 127.0.0.1 and joined through the first; ours: N
``wasmatrix node run`` daemons with the daemon's default profile (``--profile`` to pick one), one
seed, a mesh file from ``wasmatrix mesh init`` (``--insecure`` to skip it).  Each run starts a fresh
cluster of each kind, waits until every agent lists every agent alive, SIGKILLs the same agent
index (the last, not the seed) and polls every other agent every ``--interval`` s until all of them
report it failed (Serf ``failed``, ours ``dead``).  The figure is that time; the ratio ours/serf is
taken per run, Serf and ours alternating so both see the same machine.  Goal (issue 10): ours/serf
<= 0.5, and zero false positives under 10% loss with the same profile.

Loss (``--loss P``): each agent advertises a relay (tests/harness/relay.py) that drops P of the
datagrams to it (TCP through the relay unfaulted); both kinds, so the baseline sees the same loss.
After convergence the cluster is watched ``--soak`` s for false positives (a live agent shown failed
by anyone), then the kill is timed as above, still counting false positives.

Idle (``--idle``): one converged cluster of each kind, the RSS (VmRSS, max over 1 s samples) and CPU
(utime+stime over ``--idle-seconds``, as % of one core) of every agent, sampled in the same window.
Goal (issue 10): ours <= 60 MB RSS and < 2% of a core per daemon.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.serf_harness import (  # noqa: E402
    Cluster, Detection, DetectionRun, HarnessError, LossRelays, MakeCluster, SerfCluster, Usage, cluster_session,
    ensure_serf, run_detection, sample_idle, wait_converged,
)
from bench.wasmatrix_harness import DEFAULT_COMMAND, WasmatrixCluster, daemon_available  # noqa: E402
from tests.harness.procs import ProcessGroup  # noqa: E402
from mesh.membership.config import PROFILES  # noqa: E402

GOAL_RATIO = 0.5


def _spread(xs: list[float], unit: str = " s", fmt: str = ".2f") -> str:
    return f"median {statistics.median(xs):{fmt}}{unit} (min {min(xs):{fmt}}, max {max(xs):{fmt}})"


def _make(kind: str, args: argparse.Namespace) -> MakeCluster:
    def make(group: ProcessGroup, relays: LossRelays | None) -> Cluster:
        if kind == "serf":
            return SerfCluster(group, args.nodes, profile=args.serf_profile, serf=args.serf, loss=relays).start()
        return WasmatrixCluster(group, args.nodes, profile=args.profile, insecure=args.insecure, loss=relays,
                                command=args.command).start()
    return make


def detect_once(kind: str, args: argparse.Namespace, loss: float) -> DetectionRun:
    """One fresh cluster of ``kind``: converge, soak (under loss), kill, time the detection."""
    return run_detection(_make(kind, args), args.nodes, loss=loss, soak=args.soak if loss > 0 else 0.0,
                         victim=args.victim, timeout=args.timeout, interval=args.interval)


def _line(kind: str, run: int, r: DetectionRun) -> str:
    det = r.detection
    per = ", ".join(f"{k} {v:.2f}" for k, v in det.per_observer.items())
    s = (f"  run {run} {kind:9s} detected {det.victim} in {det.seconds:6.2f} s  [{per}]  "
         f"converged {r.converged_seconds:.2f} s, round {det.round_seconds * 1000:.0f} ms")
    sus = r.soak_suspect_sightings + det.suspect_sightings
    if r.false_positives or sus:
        s += f", false positives {len(r.false_positives)}, suspect sightings {sus}"
    if r.relay_stats is not None:
        s += f", relays dropped {r.relay_stats['dropped']}/{r.relay_stats['received']} datagrams"
    if r.polled_via == "cli":
        s += " (members polled with the CLI: +~0.3 s per round)"
    return s


def detection(args: argparse.Namespace, kinds: list[str], loss: float) -> int:
    """Alternate Serf and ours for ``--runs`` runs; print per-run figures and the ratio."""
    serf_v = subprocess.run([args.serf, "version"], capture_output=True, text=True).stdout.splitlines()[:1]
    title = f"Failure detection, {args.nodes} agents on 127.0.0.1, kill -9 of agent {args.nodes - 1 if args.victim is None else args.victim}"
    if loss > 0:
        title += f", {loss:.0%} datagram loss per hop (relay), {args.soak:.0f} s soak before the kill"
    print(title)
    if "serf" in kinds:
        print(f"baseline: HashiCorp Serf {' '.join(serf_v)} -profile={args.serf_profile}, same node count, same run")
    if "wasmatrix" in kinds:
        print(f"ours: {' '.join(args.command)} node run, profile {args.profile or 'default'}, "
              f"{'--insecure' if args.insecure else 'mesh file from `mesh init`'}")
    print(f"time until EVERY other agent reports it failed (Serf 'failed', ours 'dead'); polled every "
          f"{args.interval * 1000:.0f} ms, late by at most one round")
    results: dict[str, list[Detection]] = {k: [] for k in kinds}
    fps: dict[str, int] = dict.fromkeys(kinds, 0)
    for run in range(1, args.runs + 1):
        for kind in kinds:
            r = detect_once(kind, args, loss)
            results[kind].append(r.detection)
            fps[kind] += len(r.false_positives)
            print(_line(kind, run, r), flush=True)
            for t, obs, member in r.false_positives[:5]:
                print(f"      false positive: {obs} showed {member} failed at {t:.2f} s")
    print()
    header = f"{'run':>6} " + " ".join(f"{k + ' s':>12}" for k in kinds)
    if len(kinds) == 2:
        header += f" {'ours/serf':>10}"
    print(header)
    ratios: list[float] = []
    for r in range(args.runs):
        row = f"{r + 1:>6} " + " ".join(f"{results[k][r].seconds:12.2f}" for k in kinds)
        if len(kinds) == 2:
            ratio = results["wasmatrix"][r].seconds / results["serf"][r].seconds
            ratios.append(ratio)
            row += f" {ratio:10.2f}"
        print(row)
    for k in kinds:
        xs = [d.seconds for d in results[k]]
        print(f"{k:>9}: {_spread(xs)}" + (f"; false positives {fps[k]}" if loss > 0 else ""))
    if ratios:
        verdict = "meets" if statistics.median(ratios) <= GOAL_RATIO else "MISSES"
        print(f"ratio ours/serf: {_spread(ratios, unit='', fmt='.2f')}; goal <= {GOAL_RATIO} ({verdict} it)")
    if loss > 0 and "wasmatrix" in kinds:
        print(f"false positives, ours under {loss:.0%} loss: {fps['wasmatrix']} (goal 0)")
    return 0


def idle(args: argparse.Namespace, kinds: list[str]) -> int:
    """Converge one cluster of each kind, then sample every agent's RSS and CPU in one window."""
    with cluster_session(_make(kinds[0], args)) as (c0, _):
        wait_converged(c0, timeout=args.timeout)
        if len(kinds) == 2:
            with cluster_session(_make(kinds[1], args)) as (c1, _):
                wait_converged(c1, timeout=args.timeout)
                usage = _sample([c0, c1], args)
        else:
            usage = _sample([c0], args)
    print(f"Idle cost, {args.nodes} converged agents per kind on 127.0.0.1, sampled together over "
          f"{args.idle_seconds:.0f} s (RSS: max VmRSS; CPU: utime+stime, % of one core)")
    print(f"{'kind':>10} {'pid':>8} {'RSS MiB':>9} {'CPU %':>7}")
    for kind, us in usage.items():
        for u in us:
            print(f"{kind:>10} {u.pid:>8} {u.rss_max_mib:9.1f} {u.cpu_percent:7.2f}")
    for kind, us in usage.items():
        print(f"{kind:>10}: RSS {_spread([u.rss_max_mib for u in us], ' MiB', '.1f')}, "
              f"CPU {_spread([u.cpu_percent for u in us], ' %', '.2f')}")
    if len(usage) == 2:
        rss = statistics.median(u.rss_max_mib for u in usage["wasmatrix"]) / statistics.median(
            u.rss_max_mib for u in usage["serf"])
        print(f"ratio ours/serf median RSS {rss:.1f}x; goal: ours <= 60 MB RSS, < 2% of a core")
    return 0


def _sample(clusters: list[Cluster], args: argparse.Namespace) -> dict[str, list[Usage]]:
    pids = [(c.kind, p) for c in clusters for p in c.pids()]
    usage = sample_idle([p for _, p in pids], seconds=args.idle_seconds)
    out: dict[str, list[Usage]] = {}
    for (kind, _), u in zip(pids, usage):
        out.setdefault(kind, []).append(u)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=5, help="agents per cluster (default 5)")
    p.add_argument("--runs", type=int, default=3, help="runs per kind (default 3)")
    side = p.add_mutually_exclusive_group()
    side.add_argument("--serf-only", action="store_true", help="measure only the Serf baseline")
    side.add_argument("--ours-only", action="store_true", help="measure only our daemon")
    p.add_argument("--profile", choices=sorted(PROFILES), default=None,
                   help="our daemon's profile (default: the daemon's default, no --profile flag)")
    p.add_argument("--serf-profile", choices=["lan", "wan", "local"], default="lan")
    p.add_argument("--insecure", action="store_true", help="run ours with --insecure instead of a mesh file")
    p.add_argument("--loss", type=float, default=0.0, help="datagram loss per hop through relays, e.g. 0.1")
    p.add_argument("--soak", type=float, default=30.0, help="seconds watched for false positives under --loss")
    p.add_argument("--idle", action="store_true", help="measure idle RSS and CPU instead of detection")
    p.add_argument("--idle-seconds", type=float, default=30.0)
    p.add_argument("--victim", type=int, default=None, help="agent index to kill (default: the last)")
    p.add_argument("--interval", type=float, default=0.02, help="pause between polling rounds, s")
    p.add_argument("--timeout", type=float, default=60.0, help="bound on convergence and on detection, s")
    p.add_argument("--wasmatrix", default=None,
                   help=f"command that runs our CLI (default: {' '.join(DEFAULT_COMMAND)})")
    args = p.parse_args(argv)
    if args.nodes < 2 or args.runs < 1 or not 0.0 <= args.loss < 1.0:
        p.error("--nodes >= 2, --runs >= 1 and 0 <= --loss < 1")
    if args.victim is not None and not 0 <= args.victim < args.nodes:
        p.error("--victim must be an agent index below --nodes")
    args.command = tuple(shlex.split(args.wasmatrix)) if args.wasmatrix else DEFAULT_COMMAND
    kinds = ["serf", "wasmatrix"]
    if args.serf_only:
        kinds = ["serf"]
    elif args.ours_only:
        kinds = ["wasmatrix"]
    try:
        if "serf" in kinds:
            args.serf = ensure_serf()
        else:
            args.serf = "serf"
        if "wasmatrix" in kinds:
            ok, why = daemon_available(args.command)
            if not ok:
                print(f"{why}\nour daemon is not in this tree yet: run with --serf-only for the baseline alone",
                      file=sys.stderr)
                return 1
        if args.idle:
            return idle(args, kinds)
        return detection(args, kinds, args.loss)
    except HarnessError as exc:
        print(f"bench_serf: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
