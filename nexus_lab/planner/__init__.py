"""The control plane: sessions and queries in, GPU placements with batch sizes and duty cycles out.

Pure and deterministic: no Dask, no I/O beyond what the workload loader reads.
"""

from .api import demands, plan_workload, policies, query_budgets, stage_session, validate
from .bounds import DEFAULT_MAX_GPUS, GpuLimitError, check_bound, gpus_needed, lower_bound
from .plan import Allocation, GpuPlan, Plan, PlannedSession, QueryPlan, StageBudget, Unserved
from .squishy import Demand, squishy_pack
from .validate import PlanInvalid

__all__ = [
    "DEFAULT_MAX_GPUS",
    "Allocation",
    "Demand",
    "GpuLimitError",
    "GpuPlan",
    "Plan",
    "PlanInvalid",
    "PlannedSession",
    "QueryPlan",
    "StageBudget",
    "Unserved",
    "check_bound",
    "demands",
    "gpus_needed",
    "lower_bound",
    "plan_workload",
    "policies",
    "query_budgets",
    "squishy_pack",
    "stage_session",
    "validate",
]
