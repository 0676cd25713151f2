"""The end-to-end deadline rule of a query's stages: one definition for the simulator and the runtime.

A frame of a query born at ``t0`` gives every request of stage ``s`` the deadline
``min(t0 + up[s], t0 + SLO)`` with ``up[s] = budget[s] + max(up[p] for p in parents[s])`` (0 for a root): the
stage's SLO budget from the plan's split, stacked on its slowest parent's. The split keeps every root-to-leaf path
within the SLO, so the min only bites when budgets were edited by hand. The deadline is end to end (what the
stage's result must be back by, post-processing and network included); an executor keeps back what follows its
batch (``runtime.backend.queues.device_allowance_s``; the simulator the stage's overhead) for the device deadline.

Pure functions of plain values (names, parents, seconds); no planner, simulator or Dask types.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["StageTiming", "plan_stage_timings", "stage_deadlines", "stage_offsets"]

#: One stage as the rule reads it: ``(name, parent names, SLO budget in seconds)``.
StageTiming = tuple[str, Sequence[str], float]


def stage_offsets(stages: Iterable[StageTiming], slo_s: float) -> dict[str, float]:
    """Seconds after a frame's birth by which each stage's requests must be done: ``min(up[s], slo_s)``.

    ``stages`` may come in any order; an unknown parent, a cycle, a duplicate stage or a budget that is not a
    finite number >= 0 raises ``ValueError`` naming the stage.

    Examples
    --------
    >>> stage_offsets([("detect", (), 0.125), ("car", ("detect",), 0.25), ("face", ("detect",), 0.0625),
    ...                ("track", ("car", "face"), 0.125)], 0.4)
    {'detect': 0.125, 'car': 0.375, 'face': 0.1875, 'track': 0.4}
    """
    if not (isinstance(slo_s, (int, float)) and math.isfinite(slo_s) and slo_s > 0):
        raise ValueError(f"slo_s: must be a finite number > 0, got {slo_s!r}")
    budget: dict[str, float] = {}
    parents: dict[str, tuple[str, ...]] = {}
    for name, ps, b in stages:
        if name in budget:
            raise ValueError(f"stages[{name!r}]: duplicate stage")
        if not (isinstance(b, (int, float)) and math.isfinite(b) and b >= 0):
            raise ValueError(f"stages[{name!r}].budget: must be a finite number of seconds >= 0, got {b!r}")
        budget[name] = float(b)
        parents[name] = (ps,) if isinstance(ps, str) else tuple(ps)
    for name, ps in parents.items():
        for p in ps:
            if p not in budget:
                raise ValueError(f"stages[{name!r}].parents: unknown stage {p!r}")
    up: dict[str, float] = {}
    for root in parents:  # depth first, iterative: parents before children
        path = [root]
        while path:
            top = path[-1]
            if top in up:
                path.pop()
                continue
            todo = [p for p in parents[top] if p not in up]
            if not todo:
                up[top] = budget[top] + max((up[p] for p in parents[top]), default=0.0)
                path.pop()
                continue
            if todo[0] in path:
                raise ValueError(f"stages[{top!r}].parents: cycle through {todo[0]!r}")
            path.append(todo[0])
    return {n: min(up[n], float(slo_s)) for n in parents}


def stage_deadlines(stages: Iterable[StageTiming], t0: float, slo_s: float) -> dict[str, float]:
    """Absolute deadline of each stage's requests for a frame born at ``t0`` (same clock as ``t0``):
    ``min(t0 + up[s], t0 + slo_s)`` (see ``stage_offsets``).

    Examples
    --------
    >>> stage_deadlines([("detect", (), 0.125), ("car", ["detect"], 0.25)], 10.0, 0.25)
    {'detect': 10.125, 'car': 10.25}
    """
    return {n: t0 + off for n, off in stage_offsets(stages, slo_s).items()}


def plan_stage_timings(query_stages: Sequence[Mapping], parents: Mapping[str, Sequence[str]]) -> list[StageTiming]:
    """The rule's input from a plan's query (``QueryPlan.to_dict()["stages"]``: ``{"name", "budget_ms", ...}``)
    and each stage's parents (the workload's ``StageSpec.parents``)."""
    out: list[StageTiming] = []
    for k, st in enumerate(query_stages):
        name = st.get("name")
        if name not in parents:
            raise ValueError(f"query.stages[{k}].name: {name!r} has no parents entry")
        out.append((name, tuple(parents[name]), float(st["budget_ms"]) / 1000.0))
    return out
