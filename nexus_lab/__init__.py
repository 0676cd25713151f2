"""nexus_lab: the Nexus GPU cluster engine (SOSP 2019) for Jupyter, on Dask.

The control plane (``nexus_lab.planner``, ``nexus_lab.sim``) is pure; the runtime and notebook layers build on it.
"""

from .planner import Plan, plan_workload, validate
from .workload import Workload, WorkloadError, load_workload

__version__ = "0.1.0"

__all__ = ["Plan", "Workload", "WorkloadError", "__version__", "load_workload", "plan_workload", "validate"]
