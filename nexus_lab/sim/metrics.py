"""The simulator's results: per-session and per-GPU metrics, totals and the optional batch trace.

Plain frozen dataclasses with a JSON-able ``to_dict``; no planner or Dask types.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BatchRecord:
    """One batch a GPU ran: for Gantt charts."""

    gpu: int
    session: str
    start_s: float
    end_s: float
    batch: int

    def to_dict(self) -> dict[str, Any]:
        return {"gpu": self.gpu, "session": self.session, "start_s": self.start_s, "end_s": self.end_s,
                "batch": self.batch}


@dataclass(frozen=True)
class SessionMetrics:
    """One planned session over the measurement window (requests arriving in ``[warmup_s, duration_s)``).

    ``goodput``: requests finished within SLO per second; ``slo_attainment``: their share of all requests
    (1.0 when none arrived); latencies are end to end (queueing, batch, pre/post-processing, network) over
    served requests, ``None`` when none was served.
    """

    offered_rate: float
    goodput: float
    slo_attainment: float
    requests: int
    served: int
    within_slo: int
    drops: Mapping[str, int]
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    batch_hist: Mapping[int, int]

    def to_dict(self) -> dict[str, Any]:
        return {"offered_rate": self.offered_rate, "goodput": self.goodput, "slo_attainment": self.slo_attainment,
                "requests": self.requests, "served": self.served, "within_slo": self.within_slo,
                "drops": dict(self.drops), "latency_p50_ms": self.latency_p50_ms,
                "latency_p99_ms": self.latency_p99_ms, "batch_hist": dict(self.batch_hist)}


@dataclass(frozen=True)
class GpuMetrics:
    """One GPU over the measurement window: busy fraction and the number of batches it started."""

    utilization: float
    batches: int

    def to_dict(self) -> dict[str, Any]:
        return {"utilization": self.utilization, "batches": self.batches}


@dataclass(frozen=True)
class Totals:
    offered_rate: float
    goodput: float
    slo_attainment: float
    drops: Mapping[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"offered_rate": self.offered_rate, "goodput": self.goodput, "slo_attainment": self.slo_attainment,
                "drops": dict(self.drops)}


@dataclass(frozen=True)
class SimResult:
    """What ``simulate`` returns; ``to_dict()`` is the JSON contract of ``nexus-lab simulate --json``."""

    duration_s: float
    sessions: Mapping[str, SessionMetrics]
    gpus: Mapping[int, GpuMetrics]
    totals: Totals
    trace: list[BatchRecord] | None = None
    simulated_requests: int = 0  # every request simulated, warm-up and drain included (for throughput figures)
    batch_latency: str = "measured"  # what batches lasted: the profiles' measurements or the planning l(b)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "duration_s": self.duration_s,
            "batch_latency": self.batch_latency,
            "sessions": {name: m.to_dict() for name, m in self.sessions.items()},
            "gpus": {str(g): m.to_dict() for g, m in self.gpus.items()},
            "totals": self.totals.to_dict(),
        }
        if self.trace is not None:
            out["trace"] = [r.to_dict() for r in self.trace]
        return out
