"""Benchmark ``sim-to-real``: the runtime on 8 simulated TITAN X GPUs against ``nexus_lab.sim``'s prediction for the
same plan and the same load (80% of the plan's capacity), measured side by side in one run.

Drives the public controller and load generator; no logic the runtime or simulator should own.
"""

from __future__ import annotations

import time
from typing import Any

from ..workload import load_workload

#: A paper-style mix: detection, several classifiers and one face model, tight and loose SLOs (rates are relative;
#: the benchmark scales them to the capacity of the cluster).
MIX = {"sessions": [
    {"name": "detect-loose", "model": "yolo9000", "slo_ms": 300, "rate": 60},
    {"name": "detect-tight", "model": "yolo9000", "slo_ms": 150, "rate": 20},
    {"name": "classify", "model": "vgg16", "slo_ms": 100, "rate": 20},
    {"name": "face", "model": "vgg_face", "slo_ms": 150, "rate": 20},
    {"name": "scene", "model": "vgg_s", "slo_ms": 50, "rate": 10},
]}


def run(quick: bool = False, gpus: int = 8, load: float = 0.8) -> dict[str, Any]:
    """Plan the mix at the largest rates 8 GPUs carry, serve ``load`` times those rates for a while, and compare
    client-measured goodput and SLO attainment with the simulator's for the same plan and rates."""
    from ..controller import start
    from ..controller.stats import aggregate
    from ..planner import plan_workload
    from ..runtime.loadgen import run_load
    from ..sim import simulate

    duration = 8.0 if quick else 20.0
    from ..controller.core import RUNTIME_NET_MS

    base = load_workload({**MIX, "net_ms": RUNTIME_NET_MS})
    # Capacity: the common rate fraction of a generously scaled mix that just fits ``gpus`` GPUs.
    big = base.scaled(20.0)
    cap_plan = plan_workload(big, gpus=gpus)
    capacity = big.scaled(cap_plan.rate_fraction)
    offered = {s.name: s.rate * load for s in capacity.sessions}
    ctl = start(gpus=gpus, device="simulated:titan-x-pascal", workload=capacity, auto=False, poll_s=1.0)
    try:
        plan = ctl.apply()
        time.sleep(1.0)
        ctl.collect()
        rep = run_load(ctl.frontend, offered, duration, seed=3, settle_s=5.0)
        backend = aggregate(ctl.collect())
        wl = ctl.workload
    finally:
        ctl.close()
    sim = simulate(plan, wl, duration_s=duration, seed=3, rates=offered, warmup_s=0.0).to_dict()
    within = sum(s["within_slo"] for s in rep["sessions"].values())
    sent = sum(s["offered"] for s in rep["sessions"].values())
    runtime_goodput = within / rep["duration_s"]
    sim_goodput = sim["totals"]["goodput"]
    return {
        "benchmark": "sim-to-real",
        "gpus": gpus,
        "plan_gpus": plan.num_gpus,
        "load_fraction_of_capacity": load,
        "offered_rate": sum(offered.values()),
        "duration_s": rep["duration_s"],
        "runtime_goodput": runtime_goodput,
        "sim_goodput": sim_goodput,
        "runtime_over_sim": runtime_goodput / sim_goodput if sim_goodput else None,
        "runtime_slo_attainment": within / sent if sent else None,
        "sim_slo_attainment": sim["totals"]["slo_attainment"],
        "runtime_drops": {k: sum(s["dropped"].get(k, 0) for s in rep["sessions"].values())
                          for k in {r for s in rep["sessions"].values() for r in s["dropped"]}},
        "runtime_unfinished": sum(s["unfinished"] for s in rep["sessions"].values()),
        "backend_utilization": sorted(round(g["utilization"], 3) for g in backend["gpus"].values()),
        "backend_slo_attainment": backend["totals"]["slo_attainment"],
        "sessions": {n: {"offered": s["offered"], "within_slo": s["within_slo"], "p99_ms": s["p99_ms"],
                         "sim_attainment": sim["sessions"][n]["slo_attainment"]}
                     for n, s in rep["sessions"].items()},
        "targets": {"runtime_over_sim": ">= 0.9", "runtime_slo_attainment": ">= 0.99"},
        "note": "measured on a shared 2-core machine; other processes disturb timing",
    }
