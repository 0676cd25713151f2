"""nexus_lab: the Nexus GPU cluster engine (SOSP 2019) for Jupyter, on Dask.

The control plane (``nexus_lab.planner``, ``nexus_lab.sim``) is pure; the runtime and notebook layers build on it.
"""

from .planner import Plan, plan_workload, validate
from .workload import Workload, WorkloadError, load_workload

__version__ = "0.1.0"

__all__ = ["Controller", "Plan", "Workload", "WorkloadError", "__version__", "load_workload", "plan_workload", "start",
           "validate"]


def __getattr__(name: str):
    """``nexus_lab.start`` and ``nexus_lab.Controller`` load the controller (and Dask) on first use only."""
    if name in ("start", "Controller"):
        from . import controller

        return getattr(controller, name)
    raise AttributeError(f"module 'nexus_lab' has no attribute {name!r}")
