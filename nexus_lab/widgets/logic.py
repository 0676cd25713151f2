"""What the widgets draw, as pure functions: session colours, placement segments and grids, DAG layout, Gantt lanes.

No ipywidgets, no plotly, no Dask. Edits are judged below the UI: previews in ``controller.preview``, manual
placements in ``planner.manual`` (re-exported here for the editors), so the UI refuses exactly what they refuse.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..controller.preview import Preview, QueryPreview, edited_workload, preview_edits, preview_query
from ..planner import Allocation, GpuPlan, Plan
from ..planner.api import session_profiles, stage_session
from ..planner.manual import edit_placement, moved_sessions, placement_signature, placement_violations
from ..workload import Workload, topological

#: Session colours: a qualitative palette, handed out in order per view (``figures.session_colors``).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354",
           "#756bb1", "#636363")


# ------------------------------------------------------------------------------------------ placement view
@dataclass(frozen=True)
class Segment:
    """One session's share of one GPU's duty cycle: ``share = l(batch) / duty_cycle``."""

    gpu: int
    session: str
    model: str
    batch: int
    rate: float
    duty_cycle_ms: float
    share: float
    occupancy: float


def placement_segments(plan: Plan, workload: Workload) -> list[Segment]:
    """Every allocation of ``plan`` as a segment of its GPU's duty cycle (the stacked placement bars)."""
    profiles = session_profiles(plan, workload)
    out = []
    for g in plan.gpus:
        for a in g.allocations:
            prof = profiles.get(a.session)
            lat = float(prof.lat_ms[a.batch]) if prof is not None and 1 <= a.batch <= prof.max_batch else 0.0
            share = lat / g.duty_cycle_ms if g.duty_cycle_ms > 0 else 0.0
            out.append(Segment(g.id, a.session, a.model, a.batch, a.rate, g.duty_cycle_ms, share, g.occupancy))
    return out


def session_gpus(plan: Plan | None) -> dict[str, list[int]]:
    """Session -> the ids of the GPUs it runs on."""
    out: dict[str, list[int]] = {}
    for g in (plan.gpus if plan else ()):
        for a in g.allocations:
            out.setdefault(a.session, []).append(g.id)
    return out


# ------------------------------------------------------------------------------------------ query editor
def dag_layout(stages: Sequence[Mapping[str, Any]]) -> dict[str, tuple[float, float]]:
    """Stage -> (x, y): x is the depth from the root, y spreads the stages of one depth. For drawing only."""
    depth: dict[str, int] = {}
    order: dict[int, list[str]] = {}
    parents = {st["name"]: [p for p in ([st.get("parent")] if st.get("parent") else list(st.get("parents", ())))]
               for st in stages}
    for _ in range(len(stages) + 1):
        for n, ps in parents.items():
            if n not in depth and all(p in depth for p in ps):
                depth[n] = 1 + max((depth[p] for p in ps), default=-1)
                order.setdefault(depth[n], []).append(n)
    out = {}
    for d, names in order.items():
        for i, n in enumerate(names):
            out[n] = (float(d), (len(names) - 1) / 2.0 - i)
    return out


# ------------------------------------------------------------------------------------------ placement editor
def placement_grid(plan: Plan) -> tuple[list[int], list[str], dict[tuple[int, str], int]]:
    """The plan as a GPU x session grid: GPU ids, session names, and the batch at each occupied cell."""
    cells = {(g.id, a.session): a.batch for g in plan.gpus for a in g.allocations}
    sessions = sorted({s for _, s in cells})
    return [g.id for g in plan.gpus], sessions, cells


# ------------------------------------------------------------------------------------------ Gantt
@dataclass(frozen=True)
class Bar:
    """One batch on one lane (GPU) of the Gantt view, times in seconds."""

    lane: str
    session: str
    start_s: float
    end_s: float
    batch: int


def gantt_bars(traces: Mapping[str, Iterable[Any]], lanes: Mapping[str, str] | None = None, *,
               window_s: float | None = None, max_bars: int = 4000) -> list[Bar]:
    """Batch traces (per worker: ``(session, t0, t1, n)`` tuples, ``BatchRecord``s or their dicts) as Gantt bars,
    keeping the last ``window_s`` seconds before the latest batch end, at most ``max_bars`` of the most recent."""
    bars = []
    for key, recs in traces.items():
        lane = (lanes or {}).get(key, str(key))
        for r in recs:
            if isinstance(r, Mapping):
                bars.append(Bar(lane, r["session"], float(r["start_s"]), float(r["end_s"]), int(r["batch"])))
            elif hasattr(r, "start_s"):
                bars.append(Bar(lane, r.session, float(r.start_s), float(r.end_s), int(r.batch)))
            else:
                s, t0, t1, n = r
                bars.append(Bar(lane, str(s), float(t0), float(t1), int(n)))
    if not bars:
        return []
    if window_s is not None:
        end = max(b.end_s for b in bars)
        bars = [b for b in bars if b.end_s >= end - window_s]
    bars.sort(key=lambda b: b.start_s)
    return bars[-max_bars:]


def last_cycles_window(plan: Plan | None, cycles: int = 3, default_s: float = 1.0) -> float:
    """Seconds covering ``cycles`` of the longest duty cycle in ``plan`` (the Gantt view's window)."""
    if plan is None or not plan.gpus:
        return default_s
    return cycles * max(g.duty_cycle_ms for g in plan.gpus) / 1000.0


def stage_sessions(query: str, stages: Sequence[Mapping[str, Any]]) -> list[str]:
    return [stage_session(query, st["name"]) for st in stages]


def topo_names(workload: Workload, query: str) -> list[str]:
    q = next(x for x in workload.queries if x.name == query)
    return [st.name for st in topological(q.stages)]


__all__ = ["PALETTE", "Allocation", "Bar", "GpuPlan", "Preview", "QueryPreview", "Segment", "dag_layout",
           "edit_placement", "edited_workload", "gantt_bars", "last_cycles_window", "moved_sessions",
           "placement_grid", "placement_segments", "placement_signature", "placement_violations", "preview_edits",
           "preview_query", "session_gpus", "stage_sessions", "topo_names"]
