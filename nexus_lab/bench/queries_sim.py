"""The simulator's half of the ``queries`` benchmark (issue 14): queries run as DAGs in virtual time.

Two shared workloads on the shipped TITAN X profiles, which the runtime half measures too: ``TRAFFIC`` (a yolo9000
detector, then vgg16 on each car and vgg_face on each face it finds) and ``JOIN`` (the same, then a vgg_s tracker
that waits for both). ``shared_case`` scales both by one factor to the most the planner fits on ``GPUS`` GPUs and
says which frame rates to offer (``LOAD`` of the planned ones): the runtime half deploys the same workload at the
same rates. Pure planning and simulation, seeded; no Dask, no wall clock in the figures.
"""

from __future__ import annotations

from typing import Any

from ..planner import Plan, plan_workload
from ..sim import simulate
from ..workload import Workload, load_workload

GPUS = 8  # simulated TITAN X (Pascal) GPUs of ``sim_query_attainment``
LOAD = 0.8  # offered share of the planned frame rates
TARGET = 0.99  # end-to-end attainment a rate must reach to count as sustained
SPLIT_GPUS = 16  # the cluster of ``dp_over_even_max_rate``

TRAFFIC: dict[str, Any] = {"name": "traffic", "slo_ms": 400, "rate": 100.0, "stages": [
    {"name": "detect", "model": "yolo9000"},
    {"name": "car", "model": "vgg16", "parent": "detect", "gamma": 1.5},
    {"name": "face", "model": "vgg_face", "parent": "detect", "gamma": 0.5},
]}
JOIN: dict[str, Any] = {"name": "join", "slo_ms": 500, "rate": 50.0, "stages": [
    {"name": "detect", "model": "yolo9000"},
    {"name": "car", "model": "vgg16", "parent": "detect", "gamma": 1.5},
    {"name": "face", "model": "vgg_face", "parent": "detect", "gamma": 0.5},
    {"name": "track", "model": "vgg_s", "parents": ["car", "face"], "gamma": 1.0},
]}


def workload_dict(scale: float = 1.0, queries: tuple[dict[str, Any], ...] = (TRAFFIC, JOIN)) -> dict[str, Any]:
    """``load_workload`` input: ``queries`` with their rates times ``scale`` (models: the shipped profiles)."""
    return {"queries": [{**q, "rate": q["rate"] * scale} for q in queries]}


def shared_case(gpus: int = GPUS, load: float = LOAD) -> dict[str, Any]:
    """Both queries at the largest common rate scale whose plan fits ``gpus`` GPUs, and the frame rates to offer.

    Returns ``{"workload": load_workload input at the planned rates, "offered": {query: frames/s}, "scale",
    "plan_gpus"}``; ``plan_workload(load_workload(case["workload"]))`` is the plan both halves run."""
    wl, plan, scale = _fill(load_workload(workload_dict()), gpus)
    return {"workload": workload_dict(scale), "offered": {q.name: q.rate * load for q in wl.queries},
            "scale": scale, "plan_gpus": plan.num_gpus}


def _fill(base: Workload, gpus: int) -> tuple[Workload, Plan, float]:
    """The largest scale of ``base`` (within 0.5%) whose plan, made for exactly those rates, fits ``gpus``."""
    lo, hi = 0.0, 1.0
    while _fits(base, hi, gpus):
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise RuntimeError("rate search diverged: the plan never outgrows the cluster")
    while hi - lo > 0.005 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _fits(base, mid, gpus) else (lo, mid)
    if lo <= 0:
        raise RuntimeError(f"no rate of the workload fits {gpus} GPUs")
    wl = base.scaled(lo)
    return wl, plan_workload(wl), lo


def _fits(base: Workload, scale: float, gpus: int, split: str = "dp") -> bool:
    plan = plan_workload(base.scaled(scale), split=split)
    return not plan.unserved and plan.num_gpus <= gpus


def sim_query_attainment(quick: bool = False) -> dict[str, Any]:
    """Both queries on ``GPUS`` simulated GPUs at ``LOAD`` of the planned rates: the lower end-to-end attainment
    (``sim_query_attainment``) and each query's frames, goodput and latency percentiles."""
    duration = 20.0 if quick else 60.0
    case = shared_case()
    wl = load_workload(case["workload"])
    plan = plan_workload(wl)
    res = simulate(plan, wl, duration_s=duration, seed=0, rates=case["offered"])
    details = {name: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.to_dict().items()}
               for name, m in res.queries.items()}
    return {"sim_query_attainment": round(min(m.attainment for m in res.queries.values()), 4),
            "sim_query_goodput": {n: round(m.goodput, 2) for n, m in res.queries.items()},
            "sim_query_details": details, "sim_query_offered": {k: round(v, 2) for k, v in case["offered"].items()},
            "sim_query_plan_gpus": plan.num_gpus, "sim_query_load": LOAD, "sim_query_duration_s": duration}


def max_rate(split: str, *, gpus: int = SPLIT_GPUS, duration_s: float = 20.0, tol: float = 0.01,
             seed: int = 0) -> float:
    """Highest frame rate of ``TRAFFIC`` whose plan (``split`` of the SLO) fits ``gpus`` GPUs and reaches ``TARGET``
    end-to-end attainment in the simulator at that rate (bisection to ``tol``, relative)."""
    base = load_workload(workload_dict(queries=(TRAFFIC,)))
    rate0 = base.queries[0].rate

    def ok(scale: float) -> bool:
        wl = base.scaled(scale)
        plan = plan_workload(wl, split=split)
        if plan.unserved or plan.num_gpus > gpus:
            return False
        return simulate(plan, wl, duration_s=duration_s, seed=seed).queries["traffic"].attainment >= TARGET

    lo, hi = 0.0, 1.0
    while ok(hi):
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise RuntimeError("rate search diverged: the query never misses its SLO")
    while hi - lo > tol * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo * rate0


def dp_over_even_max_rate(quick: bool = False) -> dict[str, Any]:
    """``max_rate`` of ``TRAFFIC`` under the DP SLO split over that under the even split, on ``SPLIT_GPUS`` GPUs."""
    kw = {"duration_s": 10.0, "tol": 0.02} if quick else {"duration_s": 30.0, "tol": 0.01}
    dp, even = max_rate("dp", **kw), max_rate("even", **kw)
    return {"dp_over_even_max_rate": round(dp / even, 3) if even > 0 else None,
            "dp_max_rate": round(dp, 1), "even_max_rate": round(even, 1), "split_gpus": SPLIT_GPUS}


def run(quick: bool = False) -> dict[str, Any]:
    """Both simulator figures (the ``queries`` benchmark merges them with the runtime's)."""
    return {**sim_query_attainment(quick), **dp_over_even_max_rate(quick)}
