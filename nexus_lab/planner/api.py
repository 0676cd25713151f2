"""The planner's front door: a workload in, a validated ``Plan`` out, for any policy.

Turns sessions and query stages into demands, runs the chosen packer, and, for a fixed cluster, finds the largest
common fraction of every rate that fits. Pure and deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from ..workload import Workload
from . import query as query_mod
from .plan import GpuPlan, Plan, PlannedSession, QueryPlan, StageBudget, Unserved
from .squishy import Demand, lower_bound, renumber, squishy_pack
from .validate import PlanInvalid, plan_violations

Packer = Callable[[Sequence[Demand], float, "int | None"], "tuple[list[GpuPlan], list[Unserved]]"]


def stage_session(query: str, stage: str) -> str:
    """Name of the session that serves one query stage."""
    return f"{query}/{stage}"


def query_budgets(workload: Workload, split: str = "dp") -> dict[str, dict[str, float]]:
    """Per query, per stage, the latency budget (ms) the chosen split gives it."""
    splitter = {"dp": getattr(query_mod, "optimal_split", query_mod.even_split), "even": query_mod.even_split}
    if split not in splitter:
        raise ValueError(f"split: must be one of {sorted(splitter)}, got {split!r}")
    return {q.name: splitter[split](q, workload) for q in workload.queries}


def demands(workload: Workload, budgets: Mapping[str, Mapping[str, float]] | None = None) -> list[Demand]:
    """Sessions and query stages as units to pack, each with its profile and device budget L'."""
    out = [Demand(PlannedSession(s.name, s.model, s.slo_ms, s.rate), workload.profile(s.model),
                  workload.budget_ms(s.model, s.slo_ms)) for s in workload.sessions]
    budgets = budgets if budgets is not None else query_budgets(workload)
    for q in workload.queries:
        rates = q.stage_rates()
        for st in q.stages:
            slo = budgets[q.name][st.name]
            out.append(Demand(PlannedSession(stage_session(q.name, st.name), st.model, slo, rates[st.name]),
                              workload.profile(st.model), workload.budget_ms(st.model, slo)))
    return out


def _greedy(dms: Sequence[Demand], memory_mb: float, gpus: int | None = None
            ) -> tuple[list[GpuPlan], list[Unserved]]:
    return squishy_pack(dms, memory_mb)


def _nexus(dms: Sequence[Demand], memory_mb: float, gpus: int | None = None
           ) -> tuple[list[GpuPlan], list[Unserved]]:
    placed, unserved = squishy_pack(dms, memory_mb)
    try:
        from .improve import improve
    except ImportError:
        return placed, unserved
    return renumber(improve(placed, dms, memory_mb)), unserved


def policies() -> dict[str, Packer]:
    """Every policy by CLI name; dedicated-GPU baselines use ``gpus`` to divide a fixed cluster."""
    out: dict[str, Packer] = {"nexus": _nexus, "nexus-greedy": _greedy}
    try:
        from .baselines import BASELINES
    except ImportError:
        return out
    out.update(BASELINES)
    return out


def plan_workload(workload: Workload, policy: str = "nexus", gpus: int | None = None, *,
                  split: str = "dp") -> Plan:
    """Plan ``workload`` with ``policy``; with ``gpus``, the largest common rate fraction that fits that many.

    Examples
    --------
    >>> from nexus_lab.workload import load_workload
    >>> wl = load_workload({"sessions": [{"model": "vgg16", "slo_ms": 100, "rate": 350}]})
    >>> plan_workload(wl).num_gpus
    2
    """
    table = policies()
    if policy not in table:
        raise ValueError(f"policy: must be one of {sorted(table)}, got {policy!r}")
    if gpus is not None and gpus < 1:
        raise ValueError(f"gpus: must be >= 1, got {gpus}")
    budgets = query_budgets(workload, split)
    packer = table[policy]

    def make(fraction: float) -> Plan:
        wl = workload if fraction == 1.0 else workload.scaled(fraction)
        dms = demands(wl, budgets)
        placed, unserved = packer(dms, workload.device.memory_mb, gpus)
        return Plan(
            gpus=tuple(renumber(placed)),
            sessions=tuple(d.session for d in dms),
            lower_bound_gpus=lower_bound(dms, workload.device.memory_mb),
            policy=policy,
            unserved=tuple(unserved),
            queries=tuple(QueryPlan(q.name, q.slo_ms, tuple(
                StageBudget(st.name, stage_session(q.name, st.name), budgets[q.name][st.name])
                for st in q.stages)) for q in workload.queries),
            rate_fraction=fraction,
        )

    full = make(1.0)
    if gpus is None or full.num_gpus <= gpus:
        return full
    # Largest common fraction f of every rate whose plan fits the cluster: GPUs needed grow with f.
    lo, hi, best = 0.0, 1.0, make(0.0)
    for _ in range(30):
        mid = (lo + hi) / 2
        cand = make(mid)
        if cand.num_gpus <= gpus:
            lo, best = mid, cand
        else:
            hi = mid
        if hi - lo < 1e-4:
            break
    return best


def validate(plan: Plan, workload: Workload) -> None:
    """Raise ``PlanInvalid`` listing every violated constraint of ``plan`` for ``workload``."""
    budgets = {q.name: {s.name: s.budget_ms for s in q.stages} for q in plan.queries}
    errors: list[str] = []
    for q in workload.queries:
        if q.name not in budgets:
            errors.append(f"query {q.name}: missing from the plan")
            continue
        # Every root-to-leaf path's budgets must sum to at most the end-to-end SLO.
        finish: dict[str, float] = {}
        for st in query_mod.topological(q.stages):
            b = budgets[q.name].get(st.name)
            if b is None or b <= 0:
                errors.append(f"query {q.name}/{st.name}: budget {b} must be > 0")
                b = 0.0
            finish[st.name] = b + max((finish[p] for p in st.parents), default=0.0)
        if max(finish.values()) > q.slo_ms * (1 + 1e-9):
            errors.append(f"query {q.name}: a path needs {max(finish.values()):.3f} ms > SLO {q.slo_ms} ms")
    if errors:
        raise PlanInvalid(errors)
    wl = workload if plan.rate_fraction == 1.0 else workload.scaled(plan.rate_fraction)
    dms = demands(wl, budgets)
    names = {d.session.session for d in dms}
    planned = {s.session for s in plan.sessions}
    errors += [f"{n}: missing from plan.sessions" for n in sorted(names - planned)]
    errors += plan_violations(
        plan,
        profiles={d.session.session: d.profile for d in dms},
        budgets={d.session.session: d.budget_ms for d in dms},
        rates={d.session.session: d.session.rate for d in dms},
        memory_mb=workload.device.memory_mb,
    )
    if errors:
        raise PlanInvalid(errors)
