"""Benchmark ``replan``: load doubles mid-run on simulated GPUs; the epoch loop notices, re-plans and applies the
difference. Reports how fast, and what the transition cost (lost and dropped requests).

Drives the public controller and load generator; no logic the runtime or planner should own.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ..workload import load_workload

WORKLOAD = {"sessions": [
    {"name": "classify", "model": "vgg16", "slo_ms": 100, "rate": 120},
    {"name": "scenes", "model": "vgg_s", "slo_ms": 50, "rate": 150},
    {"name": "faces", "model": "vgg_face", "slo_ms": 150, "rate": 80},
]}


def run(quick: bool = False, gpus: int = 6, epoch_s: float = 10.0) -> dict[str, Any]:
    """The controller as users get it (idle GPUs planned as headroom, ``fill=2``), then the same run planning the
    fewest GPUs (``fill=1``, Nexus's own policy), whose figures show what the re-plan alone does."""
    out = run_one(quick, gpus, epoch_s, fill=2.0)
    least = run_one(quick, gpus, epoch_s, fill=1.0)
    out["fewest_gpus"] = {k: least.get(k) for k in (
        "fill", "plan_gpus_before", "plan_gpus_after", "replans", "applied_after_s", "applied_within_epoch",
        "transition_requests", "transition_drops", "transition_drop_rate", "transition_switch_drop_rate",
        "drops_before_replan", "slo_attainment_after", "requests", "lost_requests")}
    out["lost_requests"] += least["lost_requests"]
    return out


def run_one(quick: bool, gpus: int, epoch_s: float, fill: float) -> dict[str, Any]:
    """Serve the rates for a phase, then twice the rates; sessions' rates are measured (``rate=None``)."""
    from ..controller import start
    from ..controller.stats import aggregate
    from ..runtime.loadgen import run_load

    phase = 6.0 if quick else 12.0
    wl = load_workload(WORKLOAD)
    rates = {s.name: s.rate for s in wl.sessions}
    ctl = start(gpus=gpus, device="simulated:titan-x-pascal", workload=wl, epoch_s=epoch_s, poll_s=0.5, fill=fill)
    reports: list[dict[str, Any]] = []
    try:
        plan0 = ctl.apply()
        v0 = ctl.version
        for n in rates:
            ctl.set_rate(n, None)

        def stream(duration: float, seed: int) -> None:
            reports.append(run_load(ctl.frontend, rates, duration, seed=seed, settle_s=5.0))

        first = threading.Thread(target=stream, args=(2 * phase, 1))
        first.start()
        time.sleep(phase)
        t_double = time.time()
        second = threading.Thread(target=stream, args=(phase, 2))
        second.start()
        first.join()
        second.join()
        time.sleep(1.0)
        ctl.collect()
        applied = [e for e in ctl.events() if e["event"] == "applied" and e["t"] >= t_double]
        replans = [e for e in ctl.events() if e["event"] == "replan" and e["t"] >= t_double]
        hist = ctl.history()
        out: dict[str, Any] = {"benchmark": "replan", "gpus": gpus, "fill": fill, "epoch_s": epoch_s, "phase_s": phase,
                               "plan_gpus_before": plan0.num_gpus, "version_before": v0}
        # The re-plans the doubling caused: those applied within one epoch of it, while the load was doubled.
        applied = [e for e in applied if e["t"] <= min(t_double + epoch_s, t_double + phase)]
        if applied:
            a, z = applied[0], applied[-1]
            out["replans"] = [{"after_s": e["t"] - t_double, "version": e["version"], "gpus": e["gpus"],
                               "moved_workers": len(e["moved"])} for e in applied]
            out["replan_reason"] = replans[0]["reason"] if replans else None
            out["plan_gpus_after"] = z["gpus"]
            out["applied_after_s"] = a["t"] - t_double
            out["applied_within_epoch"] = a["t"] - t_double <= epoch_s
            out["apply_duration_s"] = a["t"] - a["started"]
            # The transition: from the start of the first apply until the drain grace (2 s) after the last.
            lo, hi = a["started"], z["t"] + 2.5
            trans = aggregate([w for w in hist if w["t1"] > lo and w["t0"] < hi])
            req = trans["totals"]["requests"]
            out["transition_requests"] = req
            out["transition_drops"] = trans["totals"]["drops"]
            out["transition_drop_rate"] = sum(trans["totals"]["drops"].values()) / req if req else 0.0
            # What the plan switch itself cost (requests reaching a backend that no longer held their session,
            # or lost with a worker), as opposed to capacity drops while the measured rate caught up.
            switch = sum(v for k, v in trans["totals"]["drops"].items() if k in ("no_route", "worker_lost"))
            out["transition_switch_drop_rate"] = (switch + trans["totals"]["errors"]) / req if req else 0.0
            before = aggregate([w for w in hist if w["t0"] >= t_double - 0.5 and w["t1"] <= lo + 0.5])
            out["drops_before_replan"] = before["totals"]["drops"]
            after = aggregate([w for w in hist if w["t0"] >= hi])
            out["slo_attainment_after"] = after["totals"]["slo_attainment"]
        else:
            out.update(applied_after_s=None, applied_within_epoch=False, transition_drop_rate=None)
        sent = sum(s["offered"] for r in reports for s in r["sessions"].values())
        out["requests"] = sent
        out["lost_requests"] = sum(s["unfinished"] for r in reports for s in r["sessions"].values())
        out["client_drops"] = {}
        for r in reports:
            for s in r["sessions"].values():
                for k, v in s["dropped"].items():
                    out["client_drops"][k] = out["client_drops"].get(k, 0) + v
        out["client_failed"] = sum(s["failed"] for r in reports for s in r["sessions"].values())
        out["targets"] = {"applied_within_epoch": True, "lost_requests": 0, "transition_drop_rate": "<= 0.01"}
        out["plan_rate_fraction_before"] = plan0.rate_fraction
        out["note"] = "measured on a shared 2-core machine; other processes disturb timing"
        return out
    finally:
        ctl.close()
