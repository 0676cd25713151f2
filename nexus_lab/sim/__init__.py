"""The discrete-event simulator of a Plan in virtual time, with the same early-drop policy the backends run.

Pure and deterministic under a seed; depends on the planner's data types and numpy only, never on Dask. Queries
run as DAGs in virtual time (``dag.py``); their end-to-end figures are ``SimResult.queries``.
"""

from ..arrivals import ARRIVAL_KINDS, ArrivalSpec, generate
from .deployment import DeploymentSpec as DeploymentSpec
from .deployment import run_deployment as run_deployment
from .engine import BATCH_LATENCIES, BATCHING_POLICIES, simulate
from .metrics import BatchRecord, GpuMetrics, QueryMetrics, SessionMetrics, SimResult, Totals
from .routing import weighted_round_robin

__all__ = [
    "ARRIVAL_KINDS",
    "BATCHING_POLICIES",
    "BATCH_LATENCIES",
    "ArrivalSpec",
    "BatchRecord",
    "GpuMetrics",
    "QueryMetrics",
    "SessionMetrics",
    "SimResult",
    "Totals",
    "generate",
    "simulate",
    "weighted_round_robin",
]
