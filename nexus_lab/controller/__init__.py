"""The notebook-side controller: workload edits, planning, the epoch loop and applying plans to a Dask cluster.

Sits above the planner and the runtime; nothing below imports it, and it never imports widgets or the lab.
Names load on first use, so ``nexus_lab.controller.protocol`` stays cheap for the lab inside a kernel.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "SERVING_CONFIG": "cluster", "WORKER_MALLOC_ENV": "cluster", "start": "cluster", "worker_malloc_config": "cluster",
    "ApplyError": "deploy", "ClusterLost": "rpc", "Controller": "core", "WorkloadEditor": "edits",
    "RateMonitor": "rates", "moved": "rates",
    "Transition": "placement", "assign_gpus": "placement", "routes_for": "placement", "transition": "placement",
    "worker_gpus": "placement", "ControllerView": "protocol", "PanelControl": "protocol", "build_state": "state",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'nexus_lab.controller' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
