"""Previews of edits before they are applied: what an SLO/rate edit does to the plan (GPUs before -> after, the
sessions that move) and how a query's SLO splits over its stages (DP against even split, priced in GPUs).

Pure: the workload editor checks every value and the planner plans; the editors only show the result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..planner import Plan, plan_workload, query_budgets
from ..planner.bounds import DEFAULT_MAX_GPUS, check_bound
from ..planner.manual import moved_sessions
from ..planner.query import split_cost
from ..workload import Workload, WorkloadError
from .edits import WorkloadEditor

__all__ = ["Preview", "QueryPreview", "edited_workload", "preview_edits", "preview_query"]


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
                  policy: str = "nexus", gpus: int | None = None, profile_set: str | None = None,
                  fill: float = 1.0, max_gpus: int = DEFAULT_MAX_GPUS, what: str = "max_gpus") -> Preview:
    """Plan ``workload`` with ``edits`` and compare with ``before`` (default: the plan of ``workload`` itself).

    Refuses with the reason when the workload editor rejects a value (an SLO over a minute among them), when the
    edited workload needs more than ``max_gpus`` GPUs (``planner.check_bound``'s message, ``what`` naming the
    limit, e.g. ``"cluster size"``; checked before planning, so an absurd rate costs nothing), or when the
    planner cannot serve an edited session (``plan.unserved`` gives its reason).
    """
    if before is None:
        before = plan_workload(workload, policy, gpus=gpus, fill=fill, max_gpus=max(max_gpus, gpus or 1))
    try:
        wl = edited_workload(workload, edits, profile_set)
        check_bound(wl, max_gpus, what, by_name=True)
        after = plan_workload(wl, policy, gpus=gpus, fill=fill, max_gpus=max(max_gpus, gpus or 1))
    except WorkloadError as exc:
        return Preview(before.num_gpus, None, error=str(exc))
    bad = [u for u in after.unserved if u.session in edits or u.session.split("/")[0] in edits]
    if bad:
        return Preview(before.num_gpus, after.num_gpus, error="; ".join(f"{u.session}: {u.reason}" for u in bad),
                       plan=after, workload=wl)
    return Preview(before.num_gpus, after.num_gpus, tuple(moved_sessions(before, after)), plan=after, workload=wl)


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
                  rate: float | None = None, profile_set: str | None = None, *, max_gpus: int = DEFAULT_MAX_GPUS,
                  what: str = "max_gpus") -> QueryPreview:
    """Check a query with the workload editor and against ``max_gpus`` (as ``preview_edits``), then split its SLO
    (planner's DP and even splits) and price both in GPUs (``planner.query.split_cost``). Replaces a query of
    the same name."""
    ed = WorkloadEditor.from_workload(workload, profile_set)
    try:
        if name in ed.queries:
            ed.remove(name)
        ed.add_query(name, slo_ms, stages, rate)
        wl = ed.workload()
        check_bound(wl, max_gpus, what, by_name=True)
    except WorkloadError as exc:
        return QueryPreview(name, {}, {}, None, None, error=str(exc))
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
