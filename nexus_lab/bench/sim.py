"""Benchmark of the simulator: simulated requests per wall-clock second on a 100-GPU plan, and SLO attainment at
90% of a plan's capacity. Depends on the planner and the simulator only; prints nothing itself."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..planner import plan_workload
from ..planner.plan import Plan
from ..sim import simulate
from ..workload import Workload, load_workload

MODELS = ("vgg16", "vgg_face", "vgg_s", "yolo9000")
SLOS_MS = (50, 100, 200, 300, 500)


def mixed_workload(sessions: int = 20, seed: int = 0) -> Workload:
    """A mixed TITAN X workload: the four profiled models round robin, SLOs of 50-500 ms, random rates 20-400/s.

    Sessions whose SLO no plan can serve (``L' < 2*l(1)``) are left out, so every session has a route.
    """
    rng = np.random.default_rng(seed)
    raw = [{"name": f"s{i}", "model": MODELS[i % len(MODELS)], "slo_ms": SLOS_MS[(i // len(MODELS)) % len(SLOS_MS)],
            "rate": round(float(rng.uniform(20, 400)), 1)} for i in range(sessions)]
    wl = load_workload({"sessions": raw})
    served = [s for s in wl.sessions if 2 * float(wl.profile(s.model).lat_ms[1]) <= wl.budget_ms(s.model, s.slo_ms)]
    return wl.with_sessions(served)


def scaled_to_gpus(wl: Workload, gpus: int) -> tuple[Workload, Plan]:
    """Scale every rate by one factor until the Nexus plan uses about ``gpus`` GPUs (bisection on the factor)."""
    lo, hi = 0.0, 1.0
    while plan_workload(wl.scaled(hi)).num_gpus < gpus:
        lo, hi = hi, hi * 2
    best = None
    for _ in range(40):
        mid = (lo + hi) / 2
        plan = plan_workload(wl.scaled(mid))
        if best is None or abs(plan.num_gpus - gpus) < abs(best[1].num_gpus - gpus):
            best = (wl.scaled(mid), plan)
        if plan.num_gpus == gpus:
            break
        lo, hi = (mid, hi) if plan.num_gpus < gpus else (lo, mid)
    assert best is not None
    return best


def attainment_at_load(wl: Workload, plan: Plan, fraction: float, *, duration_s: float, seed: int = 0,
                       arrivals: str = "poisson", batch_latency: str = "measured") -> dict[str, float]:
    """Per planned session with a route, SLO attainment when every session is offered ``fraction`` of its rate."""
    res = simulate(plan, wl, duration_s=duration_s, seed=seed, arrivals=arrivals, batch_latency=batch_latency,
                   rates={s.session: fraction * s.rate for s in plan.sessions})
    routed = {a.session for g in plan.gpus for a in g.allocations}
    return {name: m.slo_attainment for name, m in res.sessions.items() if name in routed and m.requests}


def run(quick: bool = False) -> dict[str, Any]:
    wl100, plan100 = scaled_to_gpus(mixed_workload(24, seed=1), 100)
    duration = 10.0 if quick else 30.0
    best = float("inf")
    simulated = 0
    for rep in range(1 if quick else 3):
        t0 = time.perf_counter()
        res = simulate(plan100, wl100, duration_s=duration, seed=rep)
        best = min(best, time.perf_counter() - t0)
        simulated = res.simulated_requests
    # Done-item 6 on five mixed workloads: Poisson at 90% of every session's planned rate; batches last what the
    # device measured (the default), and, for the record, the worst case of every batch taking the planning l(b).
    worst: dict[str, float] = {}
    worst_planned: dict[str, float] = {}
    for seed in range(1, 6):
        mixed = mixed_workload(16, seed=seed)
        plan = plan_workload(mixed)
        att = attainment_at_load(mixed, plan, 0.9, duration_s=duration)
        worst[f"seed{seed}"] = min(att.values())
        worst_planned[f"seed{seed}"] = min(attainment_at_load(mixed, plan, 0.9, duration_s=duration,
                                                              batch_latency="planned").values())
        if seed == 2:
            att90, gpus90 = att, plan.num_gpus
            att90u = attainment_at_load(mixed, plan, 0.9, duration_s=duration, arrivals="uniform")
    return {
        "gpus": plan100.num_gpus,
        "sessions": len(plan100.sessions),
        "simulated_requests": simulated,
        "duration_s": duration,
        "wall_s": round(best, 4),
        "requests_per_s": round(simulated / best),
        "attainment_at_90pct_min": round(min(worst.values()), 4),
        "attainment_at_90pct_min_by_workload": {k: round(v, 4) for k, v in worst.items()},
        "attainment_at_90pct_planned_latency_min": round(min(worst_planned.values()), 4),
        "attainment_at_90pct_planned_latency_by_workload": {k: round(v, 4) for k, v in worst_planned.items()},
        "attainment_at_90pct_uniform_min": round(min(att90u.values()), 4),
        "attainment_at_90pct": {k: round(v, 4) for k, v in att90.items()},
        "attainment_gpus": gpus90,
    }
