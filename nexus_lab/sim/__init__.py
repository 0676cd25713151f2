"""The discrete-event simulator of a Plan in virtual time, with the same early-drop policy the backends run.

Pure and deterministic under a seed; depends on the planner's data types and numpy only, never on Dask.
"""

from ..arrivals import ARRIVAL_KINDS, ArrivalSpec, generate
from .engine import BATCH_LATENCIES, BATCHING_POLICIES, simulate
from .metrics import BatchRecord, GpuMetrics, SessionMetrics, SimResult, Totals
from .routing import weighted_round_robin

__all__ = [
    "ARRIVAL_KINDS",
    "BATCHING_POLICIES",
    "BATCH_LATENCIES",
    "ArrivalSpec",
    "BatchRecord",
    "GpuMetrics",
    "SessionMetrics",
    "SimResult",
    "Totals",
    "generate",
    "simulate",
    "weighted_round_robin",
]
