"""Benchmark ``peers``: nexus_lab against Ray Serve with ``@serve.batch`` on the same zoo conv nets, the same 2 CPU
cores and the same 50 ms SLO: goodput at >= 99% SLO attainment, single-model and multi-model (4 models).

Optional (``pip install .[peers]``); prints ``{"skipped": ...}`` without Ray. Drives each system's public API only.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .cpu_model import BATCHES, SLO_MS, linear_profile, load_grid, measure_raw, nexus_sweep, pick_model

MULTI = 4


def _multi_models() -> list[str]:
    """Four zoo models of one input shape: the convnet, its fine-tuned variants, then the detector."""
    from ..models import zoo

    shape = zoo.get_model_spec("convnet").input_shape
    names = [n for n in zoo.available_models()
             if zoo.get_model_spec(n).input_shape == shape and not zoo.get_model_spec(n).passthrough]
    names = sorted(names, key=lambda n: (zoo.get_model_spec(n).group != "convnet", n != "convnet", n))[:MULTI]
    if len(names) < MULTI:
        raise RuntimeError(f"the zoo has {len(names)} models of shape {shape}; the multi-model workload needs {MULTI}")
    return names


def _nexus(quick: bool) -> dict[str, Any]:
    from ..controller import start

    model = pick_model()
    out: dict[str, Any] = {}
    fracs = (0.1, 0.3, 0.5) if quick else load_grid(0.7)  # the cpu-model benchmark's grid
    dur = 4.0 if quick else 8.0
    for label, models in (("single", [model]), ("multi", _multi_models())):
        ctl = start(gpus=2, device="cpu", auto=False, poll_s=1.0)
        try:
            raw, _, lat, std = measure_raw(ctl, models[0], quick)
            fit = linear_profile(lat)
            for m in models:
                ctl.editor.add_model(m, {"latency_ms": fit, "std_ms": std,
                                         "memory_mb": {b: 100.0 + b for b in BATCHES}})
            best, sweep = nexus_sweep(ctl, {f"s{i}": m for i, m in enumerate(models)}, raw, fracs, dur)
        finally:
            ctl.close()
        out[label] = {"models": models, "raw_throughput": raw, "goodput_at_99": best["goodput"] if best else 0.0,
                      "best": best, "sweep": sweep}
    return out


def _deployment(model_name: str, mbs: int, wait: float, replicas: int, cpus: float) -> Any:
    """A Ray Serve app of one zoo model with ``@serve.batch``; ``max_ongoing_requests`` raised so batches fill."""
    import numpy as np
    from ray import serve

    from ..models import zoo

    @serve.deployment(num_replicas=replicas, ray_actor_options={"num_cpus": cpus}, max_ongoing_requests=4 * mbs)
    class Model:
        def __init__(self) -> None:
            import torch

            torch.set_num_threads(1)
            self.torch = torch
            self.net = zoo.build(model_name, "cpu")

        @serve.batch(max_batch_size=mbs, batch_wait_timeout_s=wait)
        async def handle(self, xs: list[Any]) -> list[Any]:
            with self.torch.inference_mode():
                y = self.net(self.torch.from_numpy(np.stack(xs))).numpy()
            return list(y)

        async def __call__(self, x: Any) -> Any:
            return await self.handle(x)

    return Model.options(name=f"{model_name}-{mbs}-{int(wait * 1000)}").bind()


async def _drive(handles: dict[str, Any], payloads: dict[str, Any], rate: float, duration_s: float, seed: int
                 ) -> dict[str, Any]:
    """Open-loop Poisson load over the handles (rate split evenly); latency per request, client-measured."""
    import numpy as np

    rng = np.random.default_rng(seed)
    names = sorted(handles)
    lat: list[float] = []
    errors = 0
    tasks = []

    async def one(name: str) -> None:
        nonlocal errors
        t0 = time.perf_counter()
        try:
            await handles[name].remote(payloads[name])
            lat.append(time.perf_counter() - t0)
        except Exception:
            errors += 1

    t_start = time.perf_counter()
    nxt = 0.0
    k = 0
    while nxt < duration_s:
        delay = t_start + nxt - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(names[k % len(names)])))
        k += 1
        nxt += rng.exponential(1.0 / rate)
    wall = time.perf_counter() - t_start
    await asyncio.wait(tasks, timeout=30.0)
    within = sum(1 for x in lat if x * 1000.0 <= SLO_MS)
    sent = len(tasks)
    return {"offered_rate": sent / wall, "goodput": within / wall, "slo_attainment": within / sent if sent else 0.0,
            "errors": errors, "unfinished": sent - len(lat) - errors,
            "p99_ms": float(np.percentile(lat, 99)) * 1000.0 if lat else None}


def _ray(raws: dict[str, float], models: dict[str, list[str]], quick: bool) -> dict[str, Any]:
    import numpy as np
    import ray
    from ray import serve

    from ..models import zoo

    grid = [(16, 0.005)] if quick else [(8, 0.002), (8, 0.01), (16, 0.005), (16, 0.01), (32, 0.01)]
    # From very light loads up: Ray Serve's per-request overhead on 2 shared cores can miss 99% already at 10% of
    # raw, and its goodput at 99% must be measured, not left undefined.
    fracs = (0.02, 0.05, 0.1, 0.3, 0.5) if quick else (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5,
                                                                        0.6, 0.7)
    dur = 4.0 if quick else 6.0
    from ..controller.cluster import WORKER_MALLOC_ENV

    # Ray's workers get the glibc settings nexus_lab's workers run with (like for like).
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {k: str(v) for k, v in WORKER_MALLOC_ENV.items()}})
    out: dict[str, Any] = {}
    try:
        for label, names in models.items():
            per_model_cpus = 2.0 / len(names) if len(names) > 1 else 1.0
            replicas = 2 if len(names) == 1 else 1
            results = []
            for mbs, wait in grid:
                handles = {n: serve.run(_deployment(n, mbs, wait, replicas, per_model_cpus), name=f"{label}-{n}",
                                        route_prefix=None) for n in names}
                payloads = {n: np.zeros(zoo.input_spec(n).shape, dtype=zoo.input_spec(n).dtype) for n in names}
                points = []
                misses = 0
                for f in fracs:
                    r = asyncio.run(_drive(handles, payloads, raws[label] * f, dur, seed=int(f * 100)))
                    r["fraction_of_raw"] = f
                    points.append(r)
                    if r["slo_attainment"] < 0.99:
                        misses += 1
                        if misses >= 2 and any(p["slo_attainment"] >= 0.99 for p in points):
                            break
                        if misses >= 4:
                            break
                ok = [p for p in points if p["slo_attainment"] >= 0.99]
                results.append({"max_batch_size": mbs, "batch_wait_timeout_s": wait,
                                "goodput_at_99": max((p["goodput"] for p in ok), default=0.0), "sweep": points})
                for n in names:
                    serve.delete(f"{label}-{n}")
            best = max(results, key=lambda x: x["goodput_at_99"])
            out[label] = {"goodput_at_99": best["goodput_at_99"], "best_config": {
                "max_batch_size": best["max_batch_size"], "batch_wait_timeout_s": best["batch_wait_timeout_s"]},
                "grid": results}
    finally:
        serve.shutdown()
        ray.shutdown()
    return out


def ray_pts_best(grid: list[dict[str, Any]], fraction: float) -> float:
    """Ray Serve's best goodput over its grid at one offered load (fraction of raw)."""
    return max((p["goodput"] for g in grid for p in g["sweep"] if p["fraction_of_raw"] == fraction), default=0.0)


def run(quick: bool = False) -> dict[str, Any]:
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        return {"skipped": "ray not installed"}
    nexus = _nexus(quick)
    raws = {k: v["raw_throughput"] for k, v in nexus.items()}
    ray_res = _ray(raws, {k: v["models"] for k, v in nexus.items()}, quick)
    out: dict[str, Any] = {"benchmark": "peers", "slo_ms": SLO_MS, "nexus": nexus, "ray_serve": ray_res}
    for label in nexus:
        r = ray_res[label]["goodput_at_99"]
        out[f"goodput_over_ray_serve_{label}"] = nexus[label]["goodput_at_99"] / r if r else None
        # Side by side at each offered load both sweeps measured (whatever the attainment): goodput ratio.
        ray_pts = {p["fraction_of_raw"]: p["goodput"] for g in ray_res[label]["grid"] for p in g["sweep"]
                   if p["goodput"] >= ray_pts_best(ray_res[label]["grid"], p["fraction_of_raw"])}
        out[f"goodput_ratio_at_equal_load_{label}"] = {
            str(p["fraction_of_raw"]): (p["goodput"] / ray_pts[p["fraction_of_raw"]]
                                        if ray_pts.get(p["fraction_of_raw"]) else None)
            for p in nexus[label]["sweep"] if "goodput" in p and p["fraction_of_raw"] in ray_pts}
    vals = [out[f"goodput_over_ray_serve_{k}"] for k in nexus]
    out["goodput_over_ray_serve"] = min(vals) if all(v is not None for v in vals) else None
    out["targets"] = {"goodput_over_ray_serve": ">= 2 (single and multi)"}
    out["note"] = "2 CPU cores shared with other processes; Ray Serve's proxy/controller also use these cores"
    return out
