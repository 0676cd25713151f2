"""Benchmark of query analysis and prefix batching: GPUs of the DP SLO split vs the even split on traffic-style
queries, and the GPUs and memory prefix batching saves. Pure planning on the TITAN X profiles; no Dask, no I/O.

Run: ``python benchmarks/query.py`` or ``nexus-lab bench query --json``.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from ..planner import plan_workload, validate
from ..planner.query import even_split, optimal_split, split_cost
from ..profiles import ModelProfile, profile_set
from ..workload import Workload, load_workload

DETECT = {"name": "detect", "model": "yolo9000"}

#: Traffic-style queries (docs/architecture.md section 3): a yolo9000 detector, then recognisers on each detected
#: object.
QUERIES: list[dict[str, Any]] = [
    {"name": "faces", "slo_ms": 400, "stages": [
        DETECT, {"name": "face", "model": "vgg_face", "parent": "detect", "gamma": 1.2}]},
    {"name": "traffic", "slo_ms": 400, "stages": [
        DETECT, {"name": "face", "model": "vgg_face", "parent": "detect", "gamma": 1.2},
        {"name": "car", "model": "vgg16", "parent": "detect", "gamma": 2.5}]},
    {"name": "traffic-tight", "slo_ms": 300, "stages": [
        DETECT, {"name": "face", "model": "vgg_face", "parent": "detect", "gamma": 1.2},
        {"name": "car", "model": "vgg16", "parent": "detect", "gamma": 2.5}]},
    {"name": "chain", "slo_ms": 500, "stages": [
        DETECT, {"name": "car", "model": "vgg16", "parent": "detect", "gamma": 2.5},
        {"name": "make", "model": "vgg_s", "parent": "car", "gamma": 1.0}]},
    {"name": "diamond", "slo_ms": 500, "stages": [
        DETECT, {"name": "car", "model": "vgg16", "parent": "detect", "gamma": 2.5},
        {"name": "face", "model": "vgg_face", "parent": "detect", "gamma": 1.2},
        {"name": "track", "model": "vgg_s", "parents": ["car", "face"], "gamma": 0.5}]},
]
RATES = (20.0, 100.0)


def _query_case(spec: dict[str, Any], rate: float) -> dict[str, Any]:
    wl = load_workload({"queries": [{**spec, "rate": rate}]})
    q = wl.queries[0]
    out: dict[str, Any] = {"query": spec["name"], "slo_ms": spec["slo_ms"], "rate": rate, "dag": not q.is_tree}
    for split, fn in (("dp", optimal_split), ("even", even_split)):
        plan = plan_workload(wl, split=split)
        validate(plan, wl)
        budgets = fn(q, wl)
        out[f"{split}_gpus"] = plan.num_gpus
        out[f"{split}_cost"] = round(split_cost(q, wl, budgets), 4)
        out[f"{split}_budgets_ms"] = {k: round(v, 2) for k, v in budgets.items()}
        out[f"{split}_unserved"] = sorted(u.session for u in plan.unserved)
    out["lower_bound_gpus"] = round(plan_workload(wl).lower_bound_gpus, 3)
    return out


def _mixed_case(rate: float) -> dict[str, Any]:
    """Every query in one workload: residuals of different queries share GPUs."""
    wl = load_workload({"queries": [{**spec, "rate": rate} for spec in QUERIES]})
    out: dict[str, Any] = {"rate": rate}
    for split in ("dp", "even"):
        plan = plan_workload(wl, split=split)
        validate(plan, wl)
        out[f"{split}_gpus"] = plan.num_gpus
        out[f"{split}_unserved"] = len(plan.unserved)
    return out


def _split_time_ms(repeats: int) -> float:
    """Median wall time of ``optimal_split`` on a 10-stage tree of TITAN X models."""
    models = ["vgg_s", "vgg16", "vgg_face"]
    stages = [{"name": "s0", "model": "vgg_s"}] + [
        {"name": f"s{i}", "model": models[i % 3], "parent": f"s{(i - 1) // 2}", "gamma": 1.1} for i in range(1, 10)]
    wl = load_workload({"queries": [{"name": "q", "slo_ms": 600, "rate": 120, "stages": stages}]})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        optimal_split(wl.queries[0], wl)
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------- prefix batching
#: Fine-tuned variants of vgg16 that retrain only the last layer (fc8, 4096x1000 weights, ~16 MB). We have no
#: measured split of the TITAN X table, so the suffix is modelled as SUFFIX_SHARE of each batch's measured
#: latency (kernel launches dominate such a small layer) and fc8's weights plus its activations in memory; the
#: prefix is the rest. Prefix + suffix latency equals the measured whole model at every batch.
SUFFIX_SHARE = 0.05
FC8_MB = 4096 * 1000 * 4 / 2**20


def vgg16_prefix_split() -> tuple[ModelProfile, ModelProfile, ModelProfile]:
    """vgg16's TITAN X profile and the prefix / suffix profiles modelled from it (see ``SUFFIX_SHARE``)."""
    whole = profile_set("titan-x-pascal")["vgg16"]
    b = whole.batches
    act = b * (4096 + 1000) * 4.0  # fc8's input and output activations, bytes
    suffix_mem = FC8_MB * 2**20 + act
    prefix = ModelProfile("vgg16.prefix", whole.device, b, whole.latency_us * (1 - SUFFIX_SHARE),
                          whole.std_us * (1 - SUFFIX_SHARE), np.maximum(whole.memory_bytes - FC8_MB * 2**20, 0),
                          whole.preprocess_us, (0.0, 0.0), whole.safety)
    suffix = ModelProfile("vgg16.suffix", whole.device, b, whole.latency_us * SUFFIX_SHARE,
                          whole.std_us * SUFFIX_SHARE, suffix_mem, (0.0, 0.0), whole.postprocess_us, whole.safety)
    return whole, prefix, suffix


def vgg16_variants_workload(variants: int, rate: float, slo_ms: float) -> Workload:
    """``variants`` fine-tuned vgg16 models in one prefix group, one session each (for prefix ablations)."""
    whole, prefix, suffix = vgg16_prefix_split()
    models = [{"name": f"vgg16-ft{i}", "profile": whole,
               "prefix": {"group": "vgg16", "profile": prefix, "suffix_profile": suffix}} for i in range(variants)]
    return load_workload({"models": models, "sessions": [
        {"model": f"vgg16-ft{i}", "slo_ms": slo_ms, "rate": rate} for i in range(variants)]})


def _prefix_case(variants: int, rate: float, slo_ms: float) -> dict[str, Any]:
    wl = vgg16_variants_workload(variants, rate, slo_ms)
    on, off = plan_workload(wl), plan_workload(wl, prefix=False)
    validate(on, wl)
    validate(off, wl)
    mem_on = sum(g.memory_mb for g in on.gpus)
    mem_off = sum(g.memory_mb for g in off.gpus)
    return {"variants": variants, "rate_each": rate, "slo_ms": slo_ms,
            "gpus_prefix": on.num_gpus, "gpus_no_prefix": off.num_gpus,
            "memory_mb_prefix": round(mem_on), "memory_mb_no_prefix": round(mem_off),
            "memory_saved_mb": round(sum(g["memory_saved_mb"] for g in on.prefix_groups)),
            "grouped": bool(on.prefix_groups)}


def run(quick: bool = False) -> dict[str, Any]:
    """Plan every case with both splits and with and without prefix batching; every plan is validated."""
    rates = RATES[:1] if quick else RATES
    cases = [_query_case(spec, r) for spec in QUERIES for r in rates]
    dp = sum(c["dp_gpus"] for c in cases)
    even = sum(c["even_gpus"] for c in cases)
    fair = [c for c in cases if not c["even_unserved"] and not c["dp_unserved"]]
    prefix_grid = [(4, 20.0, 100.0), (10, 20.0, 100.0), (20, 10.0, 100.0), (10, 100.0, 200.0)]
    if quick:
        prefix_grid = prefix_grid[:2]
    pcases = [_prefix_case(*c) for c in prefix_grid]
    mixed = [_mixed_case(r) for r in rates]
    return {
        "queries": cases,
        "dp_gpus_total": dp,
        "even_gpus_total": even,
        "even_over_dp_gpus": round(even / dp, 4) if dp else None,
        "dp_never_worse": all(c["dp_gpus"] <= c["even_gpus"] for c in fair),
        "cases_even_unserved": sum(1 for c in cases if c["even_unserved"]),
        "mixed": mixed,
        "split_10_stage_ms": round(_split_time_ms(5 if quick else 20), 2),
        "prefix": pcases,
        "prefix_gpus_total": sum(c["gpus_prefix"] for c in pcases),
        "no_prefix_gpus_total": sum(c["gpus_no_prefix"] for c in pcases),
        "prefix_memory_ratio": round(sum(c["memory_mb_prefix"] for c in pcases)
                                     / max(sum(c["memory_mb_no_prefix"] for c in pcases), 1), 4),
        "prefix_suffix_share": SUFFIX_SHARE,
    }
