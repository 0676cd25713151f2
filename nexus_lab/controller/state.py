"""The JSON-able snapshot views read (``state()``): one builder for the cluster controller and the teaching
simulator alike, so the dashboard, the HTML summary and the JupyterLab panel see the same shape from both.

Pure: a workload, a plan, which worker runs which GPU plan and aggregated stats in; a dict out.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ..planner import Plan
from ..planner.api import stage_session
from ..workload import Workload

__all__ = ["build_state"]


def _measured(m: Mapping[str, Any]) -> dict[str, Any]:
    """The measured part of a session's (or query stage's) row."""
    return {"offered_rate": m.get("offered_rate"), "goodput": m.get("goodput"),
            "slo_attainment": m.get("slo_attainment"), "drops": m.get("drops", {}),
            "latency_p50_ms": m.get("latency_p50_ms"), "latency_p99_ms": m.get("latency_p99_ms")}


def build_state(wl: Workload, plan: Plan | None, assignment: Mapping[str, Mapping[str, Any] | None],
                stats: Mapping[str, Any], *, measured: set[str], pins: Mapping[str, Any], version: int,
                planned_at: float | None, cluster: Mapping[str, Any]) -> dict[str, Any]:
    """The snapshot: ``cluster`` facts, one row per worker (``assignment``: worker -> the ``GpuPlan.to_dict()`` it
    runs, or None; rows in its order), per session and per query stage with the ``stats`` measured for it
    (``stats["sessions"]`` by session, ``stats["gpus"]`` by worker), and the plan's unserved sessions.

    ``cluster`` holds what only the caller knows (``scheduler``, ``device``, ``epoch_s``, ``paused``,
    ``dashboard_link``); the plan's figures are added here.
    """
    gpus = []
    where: dict[str, list[int]] = {}
    for w, g in assignment.items():
        sess = [a["session"] for a in (g or {}).get("allocations", ())]
        for s in sess:
            where.setdefault(s, []).append(int(g["id"]))
        gpus.append({"worker": w, "gpu": None if g is None else int(g["id"]),
                     "duty_cycle_ms": None if g is None else g["duty_cycle_ms"],
                     "occupancy": None if g is None else g["occupancy"],
                     "utilization": stats["gpus"].get(w, {}).get("utilization"), "sessions": sess,
                     "allocations": list((g or {}).get("allocations", ()))})
    sessions = [{"name": s.name, "model": s.model, "slo_ms": s.slo_ms, "rate": s.rate, "measured": s.name in measured,
                 "pinned": pins.get(s.name), **_measured(stats["sessions"].get(s.name, {})),
                 "gpus": where.get(s.name, [])} for s in wl.sessions]
    queries = []
    for q in wl.queries:
        qp = next((x for x in (plan.queries if plan else ()) if x.name == q.name), None)
        budgets = {b.name: b.budget_ms for b in qp.stages} if qp else {}
        queries.append({"name": q.name, "slo_ms": q.slo_ms, "rate": q.rate, "measured": q.name in measured,
                        "stages": [{"name": st.name, "model": st.model, "parents": list(st.parents),
                                    "gamma": st.gamma, "budget_ms": budgets.get(st.name, 0.0),
                                    "session": stage_session(q.name, st.name),
                                    "gpus": where.get(stage_session(q.name, st.name), []),
                                    **_measured(stats["sessions"].get(stage_session(q.name, st.name), {}))}
                                   for st in q.stages]})
    return {
        "cluster": {**cluster, "workers": len(assignment),
                    "gpus_used": plan.num_gpus if plan else sum(g is not None for g in assignment.values()),
                    "version": version, "plan_age_s": None if planned_at is None else time.time() - planned_at,
                    "lower_bound_gpus": plan.lower_bound_gpus if plan else None,
                    "rate_fraction": plan.rate_fraction if plan else None},
        "gpus": gpus, "sessions": sessions, "queries": queries,
        "unserved": [u.to_dict() for u in plan.unserved] if plan else [],
    }
