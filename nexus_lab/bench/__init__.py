"""Benchmarks as importable modules: each ``nexus_lab.bench.<name>`` has ``run(quick=False) -> dict``.

``benchmarks/<name>.py`` and ``nexus-lab bench NAME`` both call ``run_benchmark``; each prints one JSON object.
"""

from __future__ import annotations

import importlib
from typing import Any

# CLI name -> module under nexus_lab.bench
BENCHMARKS = {
    "planner": "planner",
    "plan-scale": "plan_scale",
    "sim": "sim",
    "paper": "paper",
    "query": "query",
    "queries": "queries",
    "dispatch": "dispatch",
    "cpu-model": "cpu_model",
    "real-models": "real_models",
    "peers": "peers",
    "sim-to-real": "sim_to_real",
    "replan": "replan",
    "dashboard": "dashboard",
    "panel": "panel",
    "ingress": "ingress",
    "epochs": "epochs",
    "deployment": "deployment",
    "autoscale": "autoscale",
}


def cluster_processes(client: Any) -> list[Any]:
    """This process (client, and a LocalCluster's scheduler), every worker process and its nanny (psutil)."""
    import os

    import psutil

    pids = client.run(os.getpid)
    procs = [psutil.Process()] + [psutil.Process(pids[w]) for w in sorted(pids)]
    procs += [p.parent() for p in procs[1:] if p.parent() is not None and p.parent().pid != os.getpid()]
    return procs


def cpu_seconds(procs: list[Any]) -> float:
    """User plus system CPU time of ``procs`` so far (s)."""
    total = 0.0
    for p in procs:
        t = p.cpu_times()
        total += t.user + t.system
    return total


def run_benchmark(name: str, quick: bool = False) -> dict[str, Any]:
    if name not in BENCHMARKS:
        raise ValueError(f"benchmark: must be one of {sorted(BENCHMARKS)}, got {name!r}")
    try:
        module = importlib.import_module(f"nexus_lab.bench.{BENCHMARKS[name]}")
    except ModuleNotFoundError as exc:
        if exc.name == f"nexus_lab.bench.{BENCHMARKS[name]}":
            raise ValueError(f"benchmark {name!r} is not available in this build") from None
        raise
    return module.run(quick=quick)


def main_for(name: str) -> None:
    """Entry point of ``benchmarks/<name>.py``: run it and print its JSON object."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=f"nexus_lab benchmark {name!r}")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run_benchmark(name, quick=args.quick), indent=2))
