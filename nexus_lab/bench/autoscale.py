"""Benchmark ``autoscale``: a real ``LocalCluster`` of simulated GPUs under ``ctl.autoscale``, with a load that rises
3x (a ramp) and falls back. Reports requests lost (sent and never answered), SLO attainment over the whole run,
and how long after the load changed the cluster reached its new worker count with the plan applied on it.

Drives the public controller and load generator (one open-loop stream replaying a seeded non-homogeneous Poisson
trace); no logic the controller or planner should own.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from ..workload import load_workload

SESSION = {"name": "classify", "model": "vgg16", "slo_ms": 200, "rate": 150}


def ramp_trace(low: float, high: float, phases: tuple[float, float, float, float, float], seed: int) -> np.ndarray:
    """Arrival times (s) of a Poisson stream at ``low`` req/s, ramping linearly to ``high``, holding, ramping back
    and holding: ``phases`` = (low, ramp up, high, ramp down, low) durations. Thinning of a ``high`` stream."""
    rng = np.random.default_rng(seed)
    total = sum(phases)
    t = np.cumsum(rng.exponential(1.0 / high, int(high * total * 1.2) + 100))
    t = t[t < total]
    a, b, c, d, _ = np.cumsum(phases)
    rate = np.select([t < a, t < b, t < c, t < d],
                     [low, low + (high - low) * (t - a) / phases[1], high, high - (high - low) * (t - c) / phases[3]],
                     low)
    return t[rng.random(len(t)) < rate / high]


def run(quick: bool = False) -> dict[str, Any]:
    """Start on one worker; autoscale within [1, 4] workers while the load ramps from ``low`` to 3x and back."""
    from ..controller import start
    from ..runtime.loadgen import run_load

    low = float(SESSION["rate"])
    phases = (8.0, 20.0, 15.0, 8.0, 20.0) if quick else (10.0, 30.0, 25.0, 10.0, 30.0)
    trace = ramp_trace(low, 3 * low, phases, seed=1)
    ctl = start(gpus=1, device="simulated:titan-x-pascal", workload=load_workload({"sessions": [SESSION]}),
                epoch_s=10.0, poll_s=0.5)
    samples: list[tuple[float, int, int, int | None]] = []
    stop = threading.Event()
    try:
        ctl.apply()
        ctl.set_rate(SESSION["name"], None)  # measured from now on
        ctl.autoscale(minimum=1, maximum=4, up_cooldown_s=1.0, down_cooldown_s=8.0, down_after_s=8.0,
                      lookahead_s=15.0, interval_s=0.5)

        def watch() -> None:  # worker count, workers running part of the plan, target: every 0.25 s
            while not stop.wait(0.25):
                try:
                    serving = sum(1 for g in ctl.assignment.values() if g)
                    samples.append((time.time(), len(ctl.io.workers()), serving,
                                    ctl.autoscale_state().get("target")))
                except Exception:  # the cluster closing under the watcher
                    return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        t0 = time.time()
        report = run_load(ctl.frontend, {SESSION["name"]: low}, sum(phases), kind="trace",
                          traces={SESSION["name"]: trace.tolist()}, seed=3, settle_s=5.0)
        stop.set()
        watcher.join()
        events = ctl.events()
    finally:
        stop.set()
        ctl.close()
    s = report["sessions"][SESSION["name"]]
    t_up, t_down = t0 + phases[0], t0 + sum(phases[:3])
    high_n = max((n for t, n, _, _ in samples if t_up <= t <= t_down), default=1)
    end_n = samples[-1][1] if samples else 1
    up = [t for t, n, serving, _ in samples if t >= t_up and n >= high_n and serving >= high_n]
    down = [t for t, n, _, _ in samples if t >= t_down and n <= end_n]
    return {
        "lost_requests": int(s["offered"] - s["ok"] - sum(s["dropped"].values()) - s["failed"]),
        "attainment_during": s["within_slo"] / s["offered"] if s["offered"] else None,
        "scale_up_s": (up[0] - t_up) if up and high_n > 1 else None,
        "scale_down_s": (down[0] - t_down) if down and end_n < high_n else None,
        "workers_start": samples[0][1] if samples else None,
        "workers_peak": high_n,
        "workers_end": end_n,
        "requests": s["offered"],
        "dropped": s["dropped"],
        "failed": s["failed"],
        "p99_ms": s["p99_ms"],
        "autoscale_actions": [{"after_s": round(e["t"] - t0, 2), "target": e["target"], "actual": e["actual"],
                               "why": e["why"]} for e in events if e["event"] == "autoscale"],
        "load": {"low_rps": low, "high_rps": 3 * low, "phases_s": list(phases)},
        "targets": {"lost_requests": 0, "attainment_during": ">= 0.99"},
        "note": "scale_up_s: from the start of the ramp up to the peak worker count all running part of the plan; "
                "scale_down_s: from the start of the ramp down to the final count. Shared 2-core host.",
    }
