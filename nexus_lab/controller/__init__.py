"""The notebook-side controller: workload edits, planning, the epoch loop and applying plans to a Dask cluster.

Sits above the planner and the runtime; nothing below imports it, and it never imports widgets.
"""

from .cluster import SERVING_CONFIG, WORKER_MALLOC_ENV, start, worker_malloc_config
from .core import ApplyError, Controller
from .edits import WorkloadEditor
from .placement import Transition, assign_gpus, routes_for, transition, worker_gpus
from .rates import RateMonitor, moved

__all__ = [
    "SERVING_CONFIG",
    "WORKER_MALLOC_ENV",
    "ApplyError",
    "Controller",
    "RateMonitor",
    "Transition",
    "WorkloadEditor",
    "assign_gpus",
    "moved",
    "routes_for",
    "start",
    "transition",
    "worker_gpus",
    "worker_malloc_config",
]
