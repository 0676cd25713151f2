"""The simulator's results: per-session and per-GPU metrics, totals and the optional batch trace.

Plain frozen dataclasses with a JSON-able ``to_dict``, and ``outcome_metrics``, which computes them from the GPUs'
batch records, vectorised; no Dask types. Queries' end-to-end figures (``QueryMetrics``) come from ``dag``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..batching import ALL_REASONS, DropReason

if TYPE_CHECKING:
    from ..planner.plan import Plan
    from .queues import Queue, Session


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
class QueryMetrics:
    """One query end to end over the frames born in ``[warmup_s, duration_s)``.

    A frame is good when none of its requests was dropped and every one finished (results back, overheads
    included) by its birth plus the SLO; ``goodput`` is good frames per second, ``attainment`` their share of
    the frames (1.0 when none). Latencies run from birth to the last request's result, over the frames that ran
    whole (``None`` when none did). ``drops`` counts the frames each stage ended by a drop (``drop_reasons``:
    ``deadline``, early drop, or ``no_route``, a stage without a GPU).
    """

    offered_rate: float
    frames: int
    good: int
    goodput: float
    attainment: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    drops: Mapping[str, int]
    drop_reasons: Mapping[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"offered_rate": self.offered_rate, "frames": self.frames, "good": self.good,
                "goodput": self.goodput, "attainment": self.attainment, "latency_p50_ms": self.latency_p50_ms,
                "latency_p99_ms": self.latency_p99_ms, "drops": dict(self.drops),
                "drop_reasons": dict(self.drop_reasons)}


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
    queries: Mapping[str, QueryMetrics] = field(default_factory=dict)  # each planned query, end to end

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "duration_s": self.duration_s,
            "batch_latency": self.batch_latency,
            "sessions": {name: m.to_dict() for name, m in self.sessions.items()},
            "gpus": {str(g): m.to_dict() for g, m in self.gpus.items()},
            "totals": self.totals.to_dict(),
        }
        if self.queries:
            out["queries"] = {name: m.to_dict() for name, m in self.queries.items()}
        if self.trace is not None:
            out["trace"] = [r.to_dict() for r in self.trace]
        return out


def outcome_metrics(plan: Plan, sessions: list[Session], queues: list[Queue], unrouted: list[tuple[int, np.ndarray]],
                    recs: list, duration_s: float, warmup_s: float, want_trace: bool) -> SimResult:
    """Per-request outcomes from the batch records, then every metric, vectorised."""
    S = len(sessions)
    w0, w1 = warmup_s, duration_s
    window = w1 - w0
    rec = np.array(recs, dtype=np.float64).reshape(-1, 5)
    qi = rec[:, 0].astype(np.int64)
    drop = rec[:, 1].astype(np.int64)
    take = rec[:, 2].astype(np.int64)
    start, end = rec[:, 3], rec[:, 4]
    q_sess = np.array([q.sess.index for q in queues], dtype=np.int64)
    q_gpu = np.array([q.gpu for q in queues], dtype=np.int64)
    q_prefix = np.array([bool(q.sess.members) for q in queues], dtype=bool)

    # Each queue's records cover its requests in order: [drop_k dropped][take_k served at end_k], k = 1, 2, ...
    real = ~q_prefix[qi] if len(queues) else np.zeros(0, dtype=bool)
    order = np.argsort(qi[real], kind="stable")
    d_r, t_r, e_r = drop[real][order], take[real][order], end[real][order]
    lens = np.column_stack([d_r, t_r]).ravel()
    finish = np.repeat(np.column_stack([np.full(len(e_r), np.nan), e_r]).ravel(), lens)
    arrival = np.concatenate([q.arr_np for q in queues]) if queues else np.empty(0)
    sess = np.repeat(q_sess, [q.n for q in queues]) if queues else np.empty(0, dtype=np.int64)
    if len(finish) != len(arrival):  # pragma: no cover - an engine bug, never bad input
        raise AssertionError(f"simulator: {len(finish)} outcomes for {len(arrival)} requests")
    overhead = np.array([s.overhead_ms for s in sessions])
    slo = np.array([s.slo_ms for s in sessions])
    latency = (finish - arrival) * 1000.0 + overhead[sess]
    ok = latency <= slo[sess] + 1e-6  # NaN (dropped) compares False
    dropped = np.isnan(finish)
    win = (arrival >= w0) & (arrival < w1)
    requests = np.bincount(sess[win], minlength=S)
    served = np.bincount(sess[win & ~dropped], minlength=S)
    within = np.bincount(sess[win & ok], minlength=S)
    deadline = np.bincount(sess[win & dropped], minlength=S)
    no_route = np.zeros(S, dtype=np.int64)
    for i, arr in unrouted:
        no_route[i] = int(np.count_nonzero((arr >= w0) & (arr < w1)))
    requests = requests + no_route

    # Percentiles: served in-window latencies, grouped by session (sess is non-decreasing).
    sel = win & ~dropped
    lat_sel, sess_sel = latency[sel], sess[sel]
    bounds = np.searchsorted(sess_sel, np.arange(S + 1), side="left")

    # Batches that start in the window: histograms per session, counts per GPU; busy time clipped to it.
    ran = take > 0
    in_w = ran & (start >= w0) & (start < w1)
    rec_sess = q_sess[qi] if len(qi) else np.empty(0, dtype=np.int64)
    rec_gpu = q_gpu[qi] if len(qi) else np.empty(0, dtype=np.int64)
    hist_keys, hist_counts = np.unique(np.column_stack([rec_sess[in_w], take[in_w]]), axis=0, return_counts=True)
    hists: list[dict[int, int]] = [{} for _ in range(S)]
    for (si, b), c in zip(hist_keys.tolist(), hist_counts.tolist(), strict=True):
        hists[si][int(b)] = int(c)
    gpu_ids = [g.id for g in plan.gpus]
    pos = {g: k for k, g in enumerate(gpu_ids)}
    rec_gpos = np.array([pos[g] for g in rec_gpu.tolist()], dtype=np.int64) if len(rec_gpu) else rec_gpu
    busy = np.bincount(rec_gpos[ran], weights=(np.clip(end, w0, w1) - np.clip(start, w0, w1))[ran],
                       minlength=len(gpu_ids))
    nbatch = np.bincount(rec_gpos[in_w], minlength=len(gpu_ids))

    out_sessions: dict[str, SessionMetrics] = {}
    for s in sessions:
        i = s.index
        lat_i = lat_sel[bounds[i]:bounds[i + 1]]
        p50, p99 = (float(x) for x in np.percentile(lat_i, [50, 99])) if len(lat_i) else (None, None)
        drops = dict.fromkeys(ALL_REASONS, 0)
        drops[DropReason.DEADLINE] = int(deadline[i])
        drops[DropReason.NO_ROUTE] = int(no_route[i])
        n = int(requests[i])
        out_sessions[s.name] = SessionMetrics(
            offered_rate=n / window, goodput=int(within[i]) / window,
            slo_attainment=int(within[i]) / n if n else 1.0, requests=n, served=int(served[i]),
            within_slo=int(within[i]), drops=drops, latency_p50_ms=p50, latency_p99_ms=p99,
            batch_hist=dict(sorted(hists[i].items())))
    gpus = {g: GpuMetrics(utilization=min(1.0, float(busy[k]) / window), batches=int(nbatch[k]))
            for k, g in enumerate(gpu_ids)}
    total_req = int(requests.sum())
    total_drops = dict.fromkeys(ALL_REASONS, 0)
    total_drops[DropReason.DEADLINE] = int(deadline.sum())
    total_drops[DropReason.NO_ROUTE] = int(no_route.sum())
    totals = Totals(offered_rate=total_req / window, goodput=int(within.sum()) / window,
                    slo_attainment=int(within.sum()) / total_req if total_req else 1.0, drops=total_drops)
    batch_trace = None
    if want_trace:
        idx = np.flatnonzero(ran)
        idx = idx[np.lexsort((rec_gpu[idx], start[idx]))]
        names = [s.name for s in sessions]
        batch_trace = [BatchRecord(int(rec_gpu[k]), names[int(rec_sess[k])], float(start[k]), float(end[k]),
                                   int(take[k])) for k in idx.tolist()]
    simulated = len(arrival) + sum(len(a) for _, a in unrouted)
    return SimResult(duration_s=duration_s, sessions=out_sessions, gpus=gpus, totals=totals, trace=batch_trace,
                     simulated_requests=simulated)
