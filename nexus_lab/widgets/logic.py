"""The widgets' logic as pure functions: plan previews, session moves, manual placement edits, Gantt lanes.

No ipywidgets, no plotly, no Dask: every check is the workload editor's or the planner's (``validate``), so the
UI refuses exactly what the layers below refuse.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..controller.edits import WorkloadEditor
from ..planner import Allocation, GpuPlan, Plan, PlanInvalid, plan_workload, query_budgets, validate
from ..planner.api import session_profiles, stage_session
from ..planner.query import split_cost
from ..workload import Workload, WorkloadError, topological

#: Session colours: a qualitative palette, picked by a stable hash of the session name.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354",
           "#756bb1", "#636363")


def session_color_index(name: str) -> int:
    """The same colour for a session in every view and every run (a stable hash, not insertion order)."""
    return zlib.crc32(name.encode()) % len(PALETTE)


def session_color(name: str) -> str:
    return PALETTE[session_color_index(name)]


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


def placement_signature(plan: Plan | None) -> dict[str, tuple]:
    """Per session, what it shares its GPUs with and at which batch, independent of how GPUs are numbered.

    Two plans place a session the same way iff its signatures are equal; the preview's "which sessions move".
    """
    out: dict[str, list] = {}
    for g in (plan.gpus if plan else ()):
        mates = tuple(sorted((a.session, a.batch) for a in g.allocations))
        for a in g.allocations:
            out.setdefault(a.session, []).append(mates)
    return {s: tuple(sorted(v)) for s, v in out.items()}


def moved_sessions(before: Plan | None, after: Plan | None) -> list[str]:
    """Sessions whose placement (GPU mates or batch) differs between two plans, added and removed ones included."""
    a, b = placement_signature(before), placement_signature(after)
    return sorted(s for s in set(a) | set(b) if a.get(s) != b.get(s))


# ------------------------------------------------------------------------------------------ SLO / rate edits
@dataclass(frozen=True)
class Preview:
    """What applying edits would do: GPUs before -> after, the sessions that move, or why the edit is refused."""

    before_gpus: int
    after_gpus: int | None
    moved: tuple[str, ...] = ()
    error: str | None = None
    plan: Plan | None = field(default=None, repr=False)
    workload: Workload | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None


def edited_workload(workload: Workload, edits: Mapping[str, Mapping[str, Any]], profile_set: str | None = None
                    ) -> Workload:
    """``workload`` with per-session ``{"slo_ms": .., "rate": ..}`` edits, each checked by the workload editor
    (a ``WorkloadError`` names the field and the allowed range)."""
    ed = WorkloadEditor.from_workload(workload, profile_set)
    for name, change in edits.items():
        if "slo_ms" in change:
            ed.set_slo(name, change["slo_ms"])
        if "rate" in change:
            ed.set_rate(name, change["rate"])
    return ed.workload()


def preview_edits(workload: Workload, edits: Mapping[str, Mapping[str, Any]], *, before: Plan | None = None,
                  policy: str = "nexus", gpus: int | None = None, profile_set: str | None = None) -> Preview:
    """Plan ``workload`` with ``edits`` and compare with ``before`` (default: the plan of ``workload`` itself).

    Refuses with the reason when the workload editor rejects a value or the planner cannot serve an edited
    session (``plan.unserved`` gives its reason).
    """
    if before is None:
        before = plan_workload(workload, policy, gpus=gpus)
    try:
        wl = edited_workload(workload, edits, profile_set)
    except WorkloadError as exc:
        return Preview(before.num_gpus, None, error=str(exc))
    after = plan_workload(wl, policy, gpus=gpus)
    bad = [u for u in after.unserved if u.session in edits or u.session.split("/")[0] in edits]
    if bad:
        return Preview(before.num_gpus, after.num_gpus, error="; ".join(f"{u.session}: {u.reason}" for u in bad),
                       plan=after, workload=wl)
    return Preview(before.num_gpus, after.num_gpus, tuple(moved_sessions(before, after)), plan=after, workload=wl)


# ------------------------------------------------------------------------------------------ query editor
@dataclass(frozen=True)
class QueryPreview:
    """A query as edited: its stages' budgets under the DP and even splits, the GPUs each costs, or the error."""

    name: str
    budgets: Mapping[str, float]
    even_budgets: Mapping[str, float]
    gpu_cost: float | None
    even_gpu_cost: float | None
    error: str | None = None
    workload: Workload | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None


def preview_query(workload: Workload, name: str, slo_ms: float, stages: Sequence[Mapping[str, Any]],
                  rate: float | None = None, profile_set: str | None = None) -> QueryPreview:
    """Check a query with the workload editor, then split its SLO (planner's DP and even splits) and price both
    in GPUs (``planner.query.split_cost``). Replaces a query of the same name."""
    ed = WorkloadEditor.from_workload(workload, profile_set)
    try:
        if name in ed.queries:
            ed.remove(name)
        ed.add_query(name, slo_ms, stages, rate)
    except WorkloadError as exc:
        return QueryPreview(name, {}, {}, None, None, error=str(exc))
    wl = ed.workload()
    only = replace(wl, sessions=(), queries=tuple(q for q in wl.queries if q.name == name))
    q = only.queries[0]
    try:
        dp = query_budgets(only, "dp")[name]
        even = query_budgets(only, "even")[name]
    except (WorkloadError, ValueError) as exc:
        return QueryPreview(name, {}, {}, None, None, error=str(exc), workload=wl)
    cost = split_cost(q, only, dp)
    even_cost = split_cost(q, only, even)
    err = None
    if not math.isfinite(cost):
        err = f"query {name}: no split of {slo_ms} ms serves every stage (too tight for its models)"
    return QueryPreview(name, dp, even, cost if math.isfinite(cost) else None,
                        even_cost if math.isfinite(even_cost) else None, error=err, workload=wl)


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
def edit_placement(plan: Plan, workload: Workload, *, moves: Mapping[str, tuple[int, int]] | None = None,
                   batches: Mapping[tuple[int, str], int] | None = None) -> Plan:
    """A manual variant of ``plan``: ``moves[session] = (from_gpu, to_gpu)`` moves its allocation (merged with one
    already there), ``batches[(gpu, session)] = b`` changes a batch. Duty cycles stay; occupancy and memory are
    recomputed from the profiles, so ``placement_violations`` judges the result honestly."""
    profiles = session_profiles(plan, workload)
    gpus = {g.id: list(g.allocations) for g in plan.gpus}
    for session, (src, dst) in (moves or {}).items():
        if src not in gpus or dst not in gpus:
            raise WorkloadError(f"moves[{session!r}]: gpu must be one of {sorted(gpus)}, got {src}->{dst}")
        a = next((x for x in gpus[src] if x.session == session), None)
        if a is None:
            raise WorkloadError(f"moves[{session!r}]: not on gpu {src}")
        if src == dst:
            continue
        gpus[src] = [x for x in gpus[src] if x.session != session]
        there = next((x for x in gpus[dst] if x.session == session), None)
        if there is None:
            gpus[dst].append(a)
        else:
            gpus[dst] = [replace(x, batch=x.batch + a.batch, rate=x.rate + a.rate) if x is there else x
                         for x in gpus[dst]]
    for (gid, session), b in (batches or {}).items():
        if gid not in gpus or not any(x.session == session for x in gpus[gid]):
            raise WorkloadError(f"batches[({gid}, {session!r})]: session not on that gpu")
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise WorkloadError(f"batches[({gid}, {session!r})]: must be an integer >= 1, got {b!r}")
        gpus[gid] = [replace(x, batch=b) if x.session == session else x for x in gpus[gid]]
    out = []
    for g in plan.gpus:
        allocs = tuple(gpus[g.id])
        load = mem = 0.0
        for a in allocs:
            p = profiles[a.session]
            if 1 <= a.batch <= p.max_batch:
                load += float(p.lat_ms[a.batch])
                mem += float(p.mem_mb[a.batch])
        occ = load / g.duty_cycle_ms if g.duty_cycle_ms > 0 else math.inf
        out.append(replace(g, allocations=allocs, occupancy=occ, memory_mb=mem))
    return replace(plan, gpus=tuple(out))


def placement_violations(plan: Plan, workload: Workload) -> list[str]:
    """Every constraint a (manual) plan breaks, named by the planner's independent ``validate``; [] if feasible."""
    try:
        validate(plan, workload)
    except PlanInvalid as exc:
        return list(exc.errors)
    return []


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
           "preview_query", "session_color", "session_color_index", "session_gpus", "stage_sessions", "topo_names"]
