"""Benchmark ``cpu-model``: a small conv net of the zoo served on 2 single-threaded CPU workers under a 50 ms SLO,
against the raw batched torch throughput of the same model on the same 2 worker processes, in one run.

Drives the public controller and load generator, and times torch directly for the raw figure; no serving logic.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from . import cluster_processes, cpu_seconds

SLO_MS = 50.0
BATCHES = (1, 2, 4, 8, 16, 32)


def load_grid(top: float, fine_from: float = 0.5) -> tuple[float, ...]:
    """Offered loads as fractions of raw: 0.10 to ``fine_from`` in 5% steps, then to ``top`` in 2.5% steps, where
    the edge lies: a 5% step there would round the goodput at 99% down by up to 5% of raw. Fine enough that one
    noisy point near the edge does not end a sweep early (a sweep stops after two misses)."""
    coarse = [round(0.1 + 0.05 * k, 3) for k in range(round((min(top, fine_from) - 0.1) / 0.05) + 1)]
    fine = [round(fine_from + 0.025 * k, 3) for k in range(1, round((top - fine_from) / 0.025) + 1)]
    return tuple(coarse + fine)


def pick_model() -> str:
    """The zoo's small image classifier (a conv net with an input spec)."""
    from ..models import zoo

    names = zoo.available_models()
    if "convnet" in names:
        return "convnet"
    for n in names:
        spec = zoo.get_model_spec(n)
        if spec.input_shape is not None and not spec.passthrough and n != "tiny":
            return n
    raise RuntimeError("the model zoo has no conv net with an input spec")


def _time_batches(model_name: str, batches: tuple[int, ...], seconds: float) -> dict[str, Any]:
    """Runs in a worker process: single-threaded batched forward passes, mean and std latency per batch size."""
    import numpy as np
    import torch

    from ..models import zoo

    torch.set_num_threads(1)
    net = zoo.build(model_name, "cpu")
    spec = zoo.input_spec(model_name)
    out: dict[str, Any] = {}
    with torch.inference_mode():
        for b in batches:
            x = torch.from_numpy(np.zeros((b, *spec.shape), dtype=spec.dtype))
            for _ in range(2):
                net(x)
            lats = []
            t_end = time.perf_counter() + seconds
            while time.perf_counter() < t_end or len(lats) < 5:
                t0 = time.perf_counter()
                net(x)
                lats.append(time.perf_counter() - t0)
            out[b] = (float(np.mean(lats)) * 1000.0, float(np.std(lats)) * 1000.0)
    return out


def measure_raw(ctl: Any, model: str, quick: bool) -> tuple[float, dict[str, float], dict, dict]:
    """Both single-threaded workers run batched forward passes concurrently (the same 2 cores): the summed best
    throughput, per worker, and the worst mean and std latency per batch size (for the profile)."""
    workers = sorted(ctl.client.scheduler_info()["workers"])
    timed = ctl.client.run(_time_batches, model, BATCHES, 0.5 if quick else 1.5, workers=workers)
    per_worker = {w: max(b / (t[b][0] / 1000.0) for b in BATCHES) for w, t in timed.items()}
    lat = {b: max(t[b][0] for t in timed.values()) for b in BATCHES}
    std = {b: max(t[b][1] for t in timed.values()) for b in BATCHES}
    return float(sum(per_worker.values())), per_worker, lat, std


def linear_profile(lat: dict[int, float]) -> dict[int, float]:
    """``l(b) = alpha * b + beta`` fitted to measured means (relative error): a CPU forward pass is close to
    linear in the batch, and the fit keeps one noisy point (the host is shared) from steering the planner to an
    odd batch size."""
    import numpy as np

    b = np.array(sorted(lat), dtype=float)
    y = np.array([lat[int(k)] for k in b])
    alpha, beta = np.polyfit(b, y, 1, w=1.0 / y)
    return {int(k): float(max(alpha * k + beta, 1e-3)) for k in b}


def probe_raw(ctl: Any, model: str, batch: int, seconds: float) -> float:
    """The raw throughput now: both workers run ``batch``-sized forward passes at once for ``seconds``."""
    workers = sorted(ctl.client.scheduler_info()["workers"])
    timed = ctl.client.run(_time_batches, model, (batch,), seconds, workers=workers)
    return float(sum(batch / (t[batch][0] / 1000.0) for t in timed.values()))


def _payloads(sessions: dict[str, str]) -> dict[str, Any]:
    import numpy as np

    from ..models import zoo

    return {n: np.zeros(zoo.input_spec(m).shape, dtype=zoo.input_spec(m).dtype) for n, m in sessions.items()}


def measure_point(ctl: Any, rates: dict[str, float], duration_s: float, seed: int, payloads: dict[str, Any],
                  procs: list[Any]) -> dict[str, Any]:
    """Drive the controller's frontend open loop at ``rates``: goodput, attainment, drops, p99, and the CPU time of
    every process (this one with the load generator and scheduler, workers, nannies) per offered request, over
    the run and its settling: what serving one request costs the 2 cores."""
    from ..runtime.loadgen import run_load

    cpu0 = cpu_seconds(procs)
    rep = run_load(ctl.frontend, rates, duration_s, seed=seed, payloads=payloads, settle_s=3.0)
    cpu = cpu_seconds(procs) - cpu0
    offered = sum(s["offered"] for s in rep["sessions"].values())
    within = sum(s["within_slo"] for s in rep["sessions"].values())
    drops: dict[str, int] = {}
    for s in rep["sessions"].values():
        for k, v in s["dropped"].items():
            drops[k] = drops.get(k, 0) + v
    return {"offered_rate": offered / rep["duration_s"], "goodput": within / rep["duration_s"],
            "slo_attainment": within / offered if offered else 0.0, "dropped": drops,
            "failed": sum(s["failed"] for s in rep["sessions"].values()),
            "p99_ms": max((s["p99_ms"] or 0.0) for s in rep["sessions"].values()),
            "cpu_ms_per_offered": cpu / offered * 1000.0 if offered else None}


def nexus_sweep(ctl: Any, sessions: dict[str, str], raw: float, fracs: tuple[float, ...], duration_s: float,
                raw_probe: Callable[[], float] | None = None) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Offer ``fraction * raw`` req/s split evenly over ``sessions`` (name -> model) for each fraction; returns
    the best point with >= 99% SLO attainment and every point measured. With ``raw_probe``, the raw throughput
    is measured again right before each point (``raw_before``): the machine's speed drifts between points."""
    for name, model in sessions.items():
        if name not in ctl.editor.names():
            ctl.add_session(model, SLO_MS, rate=raw * fracs[0] / len(sessions), name=name)
    payloads = _payloads(sessions)
    procs = cluster_processes(ctl.client)
    sweep: list[dict[str, Any]] = []
    misses = 0
    for f in fracs:
        rates = {n: raw * f / len(sessions) for n in sessions}
        for n, r in rates.items():
            ctl.set_rate(n, r)
        try:
            plan = ctl.apply()
        except Exception as exc:  # a rate no plan fits: the sweep is over
            sweep.append({"fraction_of_raw": f, "error": str(exc)})
            break
        if plan.unserved:  # e.g. the measured l(1) leaves no batch within the budget
            sweep.append({"fraction_of_raw": f, "error": "; ".join(f"{u.session}: {u.reason}" for u in plan.unserved)})
            break
        time.sleep(0.5)
        before = {"raw_before": raw_probe()} if raw_probe is not None else {}
        point = measure_point(ctl, rates, duration_s, int(f * 100), payloads, procs)
        sweep.append({"fraction_of_raw": f, **point, **before, "plan_gpus": plan.num_gpus,
                      "batches": [a.batch for g in plan.gpus for a in g.allocations]})
        if point["slo_attainment"] < 0.99:
            misses += 1
            if misses >= 2:
                break
    ok = [x for x in sweep if x.get("slo_attainment", 0.0) >= 0.99]
    return (max(ok, key=lambda x: x["goodput"]) if ok else None), sweep


def floor_ab(ctl: Any, sessions: dict[str, str], raw: float, fraction: float, duration_s: float, pairs: int
             ) -> dict[str, Any]:
    """The batch floor's effect at one load, side by side: runs alternate floor off / on (``pairs`` of each,
    so a drift of the machine's speed hits both alike) on the plan in force; means per setting."""
    rates = {n: raw * fraction / len(sessions) for n in sessions}
    for n, r in rates.items():
        ctl.set_rate(n, r)
    ctl.apply()
    payloads = _payloads(sessions)
    procs = cluster_processes(ctl.client)
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    floors: dict[str, Any] = {}
    for k in range(pairs):
        for setting in ("off", "on"):
            floors[setting] = ctl.set_batch_floor(setting == "on")
            time.sleep(0.5)
            runs[setting].append(measure_point(ctl, rates, duration_s, 500 + k, payloads, procs))
    ctl.set_batch_floor(None)

    def mean(setting: str, key: str) -> float:
        return float(sum(r[key] for r in runs[setting]) / len(runs[setting]))

    return {"fraction_of_raw": fraction, "floors": floors["on"],
            **{f"{key}_{s}": mean(s, key) for s in ("off", "on")
               for key in ("cpu_ms_per_offered", "slo_attainment", "goodput", "p99_ms")}}


def run(quick: bool = False) -> dict[str, Any]:
    """Measure the raw limit on both workers at once, plan with the measured profile, then sweep offered load and
    keep the best goodput at >= 99% SLO attainment."""
    from ..controller import start

    model = pick_model()
    ctl = start(gpus=2, device="cpu", auto=False, poll_s=1.0)
    try:
        raw0, per_worker, lat, std = measure_raw(ctl, model, quick)
        fit = linear_profile(lat)
        ctl.editor.add_model(model, {"latency_ms": fit, "std_ms": std,
                                     "memory_mb": {b: 100.0 + b for b in BATCHES}})
        best_b = max(BATCHES, key=lambda b: b / lat[b])
        samples = [raw0]

        def probe() -> float:
            samples.append(probe_raw(ctl, model, best_b, 0.5 if quick else 1.0))
            return samples[-1]

        best, sweep = nexus_sweep(ctl, {"convnet": model}, raw0, (0.2, 0.4, 0.6) if quick else
                                  load_grid(0.8), 4.0 if quick else 6.0, raw_probe=probe)
        probe()
        # The machine's speed drifts by +-20% over minutes (shared host): the limit is the median of every raw
        # measurement of the run (the first one, then one before each point and one after the last), and each
        # point is also set against the raw measured around it.
        raw = float(statistics.median(samples))
        for k, pt in enumerate(x for x in sweep if "raw_before" in x):
            pt["raw_around"] = (samples[k + 1] + samples[k + 2]) / 2.0
            pt["goodput_over_raw_around"] = pt["goodput"] / pt["raw_around"]
        # below the best load, where both settings meet the SLO: what the floor saves
        ab = floor_ab(ctl, {"convnet": model}, raw0, round(0.75 * best["fraction_of_raw"], 3) if best else 0.1,
                      4.0 if quick else 6.0, 1 if quick else 2)
    finally:
        ctl.close()
    goodput = best["goodput"] if best else 0.0
    return {
        "benchmark": "cpu-model",
        "model": model,
        "slo_ms": SLO_MS,
        "raw_throughput": raw,
        "raw_samples": samples,
        "raw_first": raw0,
        "raw_per_worker": per_worker,
        "profile_ms": lat,
        "profile_fit_ms": fit,
        "goodput_at_99": goodput,
        "goodput_over_raw": goodput / raw if raw else None,
        "goodput_over_raw_around": best.get("goodput_over_raw_around") if best else None,
        "sweep": sweep,
        "batch_floor": ab,
        "targets": {"goodput_over_raw": ">= 0.6"},
        "note": "2 single-threaded CPU workers; the load generator and frontend share the same 2 cores; "
                "other processes on the machine disturb timing",
    }
