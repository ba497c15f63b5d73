"""Turn a finished simulation into the JSON report and the human summary."""

from __future__ import annotations

import statistics
from typing import Any

from sim.engine import Simulation


def build_report(sim: Simulation) -> dict[str, Any]:
    """The machine-readable report of a finished run."""
    sc = sim.scenario
    live = sim.live_names()
    swim_counters: dict[str, int] = {}
    wire_errors = 0
    for n in sim.order:
        core = sim.nodes[n].core
        if core is None:
            continue
        wire_errors += core.counters["wire_errors"]
        for k, v in core.swim.counters.items():
            swim_counters[k] = swim_counters.get(k, 0) + v
    vs = sim.scenario.duration or 1.0
    report = {
        "scenario": sc.name,
        "seed": sim.seed,
        "profile": sc.profile.name,
        "nodes": len(sim.order),
        "live_nodes": len(live),
        "virtual_seconds": round(sim.now, 6),
        "wall_seconds": round(sim.wall_seconds, 3),
        "events": sim.events_processed,
        "events_per_second": round(sim.events_processed / sim.wall_seconds, 1) if sim.wall_seconds else None,
        "trace_hash": sim.trace_hash(),
        "messages_sent": sim.messages_sent,
        "messages_dropped": sim.messages_dropped,
        "bytes_sent": sim.bytes_sent,
        "msgs_per_node_per_second": round(sim.messages_sent / max(1, len(sim.order)) / vs, 3),
        "max_msgs_per_node_per_second": sim.max_msgs_per_node_sec,
        "false_positives": len(sim.false_positives),
        "false_positives_across_partition": sum(1 for f in sim.false_positives if f["across_partition"]),
        "false_positives_other": sum(1 for f in sim.false_positives if not f["across_partition"]),
        # Every unexplained death is listed (there should be none); partition effects are many and expected.
        "false_positive_events": [f for f in sim.false_positives if not f["across_partition"]],
        "false_positive_partition_sample": [f for f in sim.false_positives if f["across_partition"]][:20],
        "verdicts": dict(sorted(sim.verdicts.items())),
        "converged": sim.converged(),
        "meta_updates_reached_all": sim.meta_reached_all(),
        "crashes": [c.to_json() for c in sim.crashes],
        "counters": dict(sorted(swim_counters.items())) | {"wire_errors": wire_errors},
    }
    if sim.intent is not None:
        # Only intent runs carry these keys: membership-only reports stay exactly as before.
        report |= sim.intent.report()
    if sim.placement is not None:
        # Only scenarios with deployments carry it (sim/placement.py).
        report["placement"] = sim.placement.report()
    return report


def _fmt(x: float | None) -> str:
    return "never" if x is None else f"{x:7.2f}s"


def render_text(report: dict[str, Any]) -> str:
    """A short human-readable report."""
    r = report
    lines = [
        f"scenario {r['scenario']}  seed={r['seed']}  profile={r['profile']}",
        f"  nodes {r['nodes']} ({r['live_nodes']} live at end), {r['virtual_seconds']:.0f} virtual s "
        f"in {r['wall_seconds']:.2f} wall s ({r['events']} events)",
        f"  traffic: {r['messages_sent']} messages, {r['bytes_sent'] / 1e6:.2f} MB, "
        f"{r['msgs_per_node_per_second']:.2f} msg/node/s avg, peak {r['max_msgs_per_node_per_second']} msg/node/s",
        f"  converged: {'yes' if r['converged'] else 'NO'}   live nodes declared dead: {r['false_positives']}"
        f" ({r['false_positives_across_partition']} across a partition, {r['false_positives_other']} other)",
    ]
    for f in r["false_positive_events"][:10]:
        lines.append(
            f"    unexplained: {f['observer']} declared {f['node']} (incarnation {f['incarnation']}) dead at "
            f"{f['at']:.2f}s, decided by {f['source'] or f['observer']}"
        )
    if len(r["false_positive_events"]) > 10:
        lines.append(f"    ... {len(r['false_positive_events']) - 10} more (--json lists them all, --trace has every verdict)")
    if r["crashes"]:
        lines.append("  crashes:            crashed   1st suspect   1st dead    all dead")
        for c in r["crashes"]:
            lines.append(
                f"    {c['node']:<12} {c['crashed_at']:9.2f}s   +{_fmt(c['first_suspect_at'])}   "
                f"+{_fmt(c['first_dead_at'])}   +{_fmt(c['all_dead_at'])}"
            )
        det = [c["all_dead_at"] for c in r["crashes"] if c["all_dead_at"] is not None]
        if det:
            lines.append(f"  detection (all nodes agree dead): median {statistics.median(det):.2f}s, max {max(det):.2f}s")
    if "intent_converged" in r:
        lines.extend(_intent_lines(r))
    if "placement" in r:
        lines.extend(_placement_lines(r["placement"]))
    lines.append(f"  trace_hash {r['trace_hash']}")
    return "\n".join(lines)


def _secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}s"


def _intent_lines(r: dict[str, Any]) -> list[str]:
    c = r["intent_convergence_seconds"]
    b = r["blob_fetches"]
    lines = [
        f"  intent: converged {'yes' if r['intent_converged'] else 'NO'}, "
        f"{c['converged_writes']}/{c['writes']} acknowledged writes everywhere "
        f"({r['intent_lost_write_count']} missing somewhere), {r['intent_failed_write_count']} writes refused",
        f"    write -> all live nodes: p50 {_secs(c['p50'])}, p99 {_secs(c['p99'])}, max {_secs(c['max'])}"
        " (includes time nodes spent down or partitioned)",
        f"    sync+blob traffic: {r['sync_messages_sent']} messages, {r['sync_bytes_sent'] / 1e6:.2f} MB",
        f"    forged writes: {r['intent_forged_writes']} injected, {r['intent_forged_visible']} visible anywhere",
    ]
    if b["started"] or b["results"]:
        lines.append(f"    blob fetches: {b['started']} started, {b['done']} done, {b['failed']} failed")
    for f in r["intent_failed_writes"][:5]:
        lines.append(f"    refused at {f['at']:.2f}s {f['action']} on {f['node']}: {f['error']}")
    return lines


def _placement_lines(p: dict[str, Any]) -> list[str]:
    c = p["convergence_seconds"]
    lines = [
        f"  placement: all live nodes agree: {'yes' if p['agreed'] else 'NO'}; "
        f"{p['replicas_started']} replicas started, {p['replicas_stopped']} stopped, "
        f"{p.get('restarts', 0)} restarts, {p.get('failed_marks', 0)} failed marks, {p['evaluations']} evaluations",
        f"    convergence after a membership change: p50 {_secs(c['p50'])}, max {_secs(c['max'])}, never {c['never']}",
    ]
    for name, d in p["deployments"].items():
        lines.append(f"    {name}: {len(d['running'])}/{d['replicas']} running ({d['eligible_live']} eligible) on {', '.join(d['running'][:8])}")
    for ch in p["changes"][:12]:
        lines.append(f"    {ch['at']:8.2f}s {ch['action']:<9} {','.join(ch['nodes'][:3]):<16} converged {'never' if ch['converged_after'] is None else '+' + _secs(ch['converged_after'])}"
                     f"  started {ch['replicas_started']}, stopped {ch['replicas_stopped']}"
                     + (f", {ch['restarts']} restarts, {ch['failed_marks']} failed marks" if ch.get("restarts") or ch.get("failed_marks") else ""))
    return lines
