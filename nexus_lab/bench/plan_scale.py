"""How planning time and memory grow with the workload: 1 to 100,000 sessions, and the time to refuse one that
needs more GPUs than ``max_gpus``. Each size runs in a fresh process, so its peak RSS is its own.

Workloads mix the four shipped TITAN X models, SLOs of 50-500 ms and rates log-uniform in 1-1,000 req/s (like
``bench.sim.mixed_workload``, but without the simulator's imports, whose memory would count). No Dask.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import numpy as np

MODELS = ("vgg16", "vgg_face", "vgg_s", "yolo9000")
SLOS_MS = (50, 100, 200, 300, 500)
SIZES = (1, 10, 100, 1000, 10_000, 100_000)
#: What the issue asks of every size: planned (or refused) within this time and memory.
LIMIT_S, LIMIT_MB = 10.0, 1024.0


def raw_workload(sessions: int, seed: int = 0) -> dict[str, Any]:
    """A mixed workload of ``sessions`` sessions as a plain mapping (the workload file's contents)."""
    rng = np.random.default_rng(seed)
    rates = 10 ** rng.uniform(0.0, 3.0, sessions)
    slos = rng.choice(SLOS_MS, sessions)
    return {"sessions": [{"name": f"s{i}", "model": MODELS[i % len(MODELS)], "slo_ms": int(slos[i]),
                          "rate": round(float(rates[i]), 2)} for i in range(sessions)]}


def peak_rss_mb() -> float:
    """This process's peak resident memory (MiB): ``VmHWM`` of its own address space. ``ru_maxrss`` would carry
    over the high-water mark of the process that forked it (Linux keeps it across exec)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024.0
    except (OSError, StopIteration, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def measure(sessions: int) -> dict[str, Any]:
    """In this process: load, plan and validate ``sessions`` sessions (``sessions=0``: the refused workload, one
    vgg16 session at 1e9 req/s). Wall-clock seconds and peak RSS in MiB."""
    from ..planner import GpuLimitError, plan_workload, validate
    from ..workload import load_workload

    raw = raw_workload(sessions) if sessions else {"sessions": [{"model": "vgg16", "slo_ms": 100, "rate": 1e9}]}
    base_mb = peak_rss_mb()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    wl = load_workload(raw)
    t1 = time.perf_counter()
    try:
        plan = plan_workload(wl)
    except GpuLimitError as exc:
        return {"refuse_s": time.perf_counter() - t0, "rss_mb": peak_rss_mb(), "message": str(exc)}
    t2 = time.perf_counter()
    validate(plan, wl)
    t3 = time.perf_counter()
    return {"sessions": sessions, "load_s": t1 - t0, "plan_s": t2 - t1, "validate_s": t3 - t2,
            "total_s": t3 - t0, "total_cpu_s": time.process_time() - cpu0, "rss_mb": peak_rss_mb(),
            "imports_rss_mb": base_mb, "gpus": plan.num_gpus,
            "lower_bound_gpus": plan.lower_bound_gpus}


def _in_fresh_process(sessions: int, timeout_s: float) -> dict[str, Any]:
    code = f"import json; from nexus_lab.bench.plan_scale import measure; print(json.dumps(measure({sessions})))"
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s,
                             check=True)
    except subprocess.TimeoutExpired:
        return {"sessions": sessions, "error": f"timed out after {timeout_s:g} s"}
    except subprocess.CalledProcessError as exc:
        return {"sessions": sessions, "error": exc.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> dict[str, Any]:
    """Per size: ``plan_s`` (``plan_workload``), ``total_s`` (load + plan + validate; ``total_cpu_s`` the CPU time,
    which a busy machine does not inflate), peak ``rss_mb``; and ``refuse`` for the over-limit workload.
    ``within_limits``: every size under 10 s and 1 GiB in all, and the refusal under 1 s."""
    sizes = SIZES[:-1] if quick else SIZES
    rows = {str(n): _in_fresh_process(n, timeout_s=120.0) for n in sizes}
    refuse = _in_fresh_process(0, timeout_s=60.0)
    ok = all("error" not in r and r["total_s"] < LIMIT_S and r["rss_mb"] < LIMIT_MB for r in rows.values())
    return {
        "sizes": list(sizes),
        "plan_s": {n: r.get("plan_s") for n, r in rows.items()},
        "total_s": {n: r.get("total_s") for n, r in rows.items()},
        "total_cpu_s": {n: r.get("total_cpu_s") for n, r in rows.items()},
        "rss_mb": {n: r.get("rss_mb") for n, r in rows.items()},
        "gpus": {n: r.get("gpus") for n, r in rows.items()},
        "runs": rows,
        "refuse_s": refuse.get("refuse_s"),
        "refuse_rss_mb": refuse.get("rss_mb"),
        "refuse_message": refuse.get("message", refuse.get("error")),
        "within_limits": ok and refuse.get("refuse_s", LIMIT_S) < 1.0,
    }
