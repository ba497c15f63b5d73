"""SWIM fidelity: mean time to first suspicion against the SWIM analytic value.

SWIM (Das et al., 2002) gives the expected number of protocol periods until some
member probes a failed one as 1 / (1 - (1 - 1/N)^(N-1)) ≈ 1.58; with the probe
timeout on top, first suspicion comes T / (1 - (1 - 1/N)^(N-1)) + timeout after a
crash. We crash one node at a time in a mesh of a few hundred and compare the mean.
"""

from __future__ import annotations

import statistics

import pytest

from sim_helpers import replay_hint, run

from mesh.membership import profile


@pytest.mark.slow
def test_mean_time_to_first_suspicion_matches_swim_analytic_value() -> None:
    n, crashes, gap, seed = 300, 150, 1.0, 2026
    doc = {
        "nodes": n,
        "profile": "lan",
        "duration": 30.0 + crashes * gap + 15.0,
        "join_window": 10.0,
        "network": {"latency_ms": 2.0, "jitter_ms": 1.0},
        "faults": [{"at": 30.0 + i * gap, "action": "crash", "node": "random:1"} for i in range(crashes)],
    }
    _, report = run(doc, seed)
    samples = [c["first_suspect_at"] for c in report["crashes"]]
    assert len(samples) == crashes and None not in samples, replay_hint(doc, seed)
    cfg = profile("lan")
    # N shrinks as nodes crash; use the mean mesh size over the run.
    mean_n = n - crashes / 2
    analytic = cfg.probe_interval / (1 - (1 - 1 / mean_n) ** (mean_n - 1)) + cfg.probe_timeout
    mean = statistics.mean(samples)
    assert abs(mean - analytic) / analytic < 0.10, f"mean={mean:.3f}s analytic={analytic:.3f}s" + replay_hint(doc, seed)
