"""The epoch's planning decision: re-plan incrementally from the current plan, or from scratch.

One pure function, ``epoch_plan``, called by the controller's epoch loop and by the deployment simulator alike (the
same rule, never a copy). It plans the workload both ways: the incremental plan (``incremental.py``) wins unless it
needs more than ``1 + band.repack_share`` times the GPUs of a from-scratch packing of the same rates; among plans
within that share, the one loading fewer models wins. Pure and deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

from ..workload import Workload, stage_session
from .api import demands, plan_workload, policies
from .bounds import lower_bound
from .incremental import Band, incremental_gpus, model_loads
from .plan import Plan, QueryPlan, StageBudget
from .squishy import renumber
from .validate import PlanInvalid

__all__ = ["INCREMENTAL_POLICIES", "EpochDecision", "epoch_plan", "served_rates"]

#: Policies the incremental re-plan serves (the duty-cycle packers); the baselines always plan from scratch.
INCREMENTAL_POLICIES = frozenset({"nexus", "nexus-greedy"})


@dataclass(frozen=True)
class EpochDecision:
    """The plan to apply, how it was made (``incremental``, ``repack`` or ``scratch``) and why, the GPUs a
    from-scratch packing of the same rates needs, and the model loads each plan needs at least."""

    plan: Plan
    mode: str
    reason: str
    scratch_gpus: int
    loads: int
    scratch_loads: int
    kept: tuple[str, ...] = ()
    resized: tuple[str, ...] = ()
    consolidated: int = 0

    def summary(self) -> dict:
        return {"mode": self.mode, "reason": self.reason, "gpus": self.plan.num_gpus, "scratch_gpus": self.scratch_gpus,
                "loads": self.loads, "scratch_loads": self.scratch_loads, "kept": len(self.kept),
                "resized": len(self.resized), "consolidated": self.consolidated}


def _budgets(previous: Plan, workload: Workload) -> dict[str, dict[str, float]] | None:
    """The query stage budgets of the current plan when it has every query of the workload with its stages and
    their models (a re-plan keeps each stage's SLO, so its GPUs stay valid; only rates and fan-outs moved); None
    when a query is new or changed."""
    have = {q.name: q for q in previous.queries}
    models = {s.session: s.model for s in previous.sessions}
    out: dict[str, dict[str, float]] = {}
    for q in workload.queries:
        old = have.get(q.name)
        if old is None or abs(old.slo_ms - q.slo_ms) > 1e-9 or {s.name for s in old.stages} != {
                s.name for s in q.stages}:
            return None
        if any(models.get(stage_session(q.name, st.name)) != st.model for st in q.stages):
            return None
        out[q.name] = {s.name: s.budget_ms for s in old.stages}
    return out


def served_rates(plan: Plan, workload: Workload) -> dict[str, float]:
    """Per session and query of ``workload``, the largest rate ``plan`` serves in full (before its rate
    fraction): a session's planned rate; a query's entry rate that every stage's planned rate keeps up with (a
    stage's rate per unit of entry rate follows from the fan-outs). What the epoch loop records as a measured
    session's or query's planned rate, so that the plan validates against the workload it then holds."""
    got = {s.session: s.rate for s in plan.sessions}
    frac = plan.rate_fraction if plan.rate_fraction > 0 else 1.0
    out = {s.name: got.get(s.name, s.rate * frac) / frac for s in workload.sessions}
    for q in workload.queries:
        unit = replace(q, rate=1.0).stage_rates()
        out[q.name] = min((got.get(stage_session(q.name, n), q.rate * u * frac) / (u * frac)
                           for n, u in unit.items() if u > 0), default=q.rate)
    return out


def _scratch(workload: Workload, policy: str, gpus: int | None, fill: float, previous: Plan | None, mode: str,
             reason: str, scratch_gpus: int | None = None, high: float = 1.0) -> EpochDecision:
    """The from-scratch plan of every rate times ``high`` (the headroom a resized session gets)."""
    plan = plan_workload(workload if high == 1.0 else workload.scaled(high), policy, gpus=gpus, fill=fill)
    loads = model_loads(previous, plan.gpus)
    return EpochDecision(plan, mode, reason, plan.num_gpus if scratch_gpus is None else scratch_gpus, loads, loads)


def epoch_plan(previous: Plan | None, workload: Workload, *, policy: str = "nexus", gpus: int | None = None,
               fill: float = 1.0, band: Band | None = None) -> EpochDecision:
    """The next epoch's plan for ``workload`` (the rates it needs now), given the plan in force (``previous``).

    Every plan serves at least those rates; a session resized or planned from scratch gets ``band.high`` times
    its rate (the headroom), one kept by the band what its capacity gives up to that (``plan.sessions`` carries
    the rate each is served).

    ``gpus``/``fill`` as ``plan_workload`` takes them: on a fixed cluster of ``gpus`` an incremental plan must
    fit it, and with ``fill`` > 1 the incremental plan keeps the current plan's headroom fraction (a re-plan is
    not needed to raise it), unless idle workers could raise it. Plans from scratch when there is no current plan,
    for a baseline policy, for prefix groups or a new or changed query, and when the incremental plan is invalid
    (never expected) or does not fit the cluster. Raises what ``plan_workload`` raises for bad input.
    """
    band = Band() if band is None else band
    if not isinstance(band, Band):
        raise ValueError(f"band: must be a nexus_lab.planner.incremental.Band, got {type(band).__name__}")
    scratch = partial(_scratch, workload, policy, gpus, fill, previous, high=band.high)
    if previous is None:
        return scratch("scratch", "no current plan")
    if policy not in INCREMENTAL_POLICIES:
        return scratch("scratch", f"policy {policy} plans from scratch")
    if previous.prefix_groups or any(m.prefix is not None for m in workload.models.values()):
        return scratch("scratch", "prefix groups plan from scratch")
    if gpus is not None and fill > 1.0 and previous.num_gpus < gpus and previous.rate_fraction < fill:
        # Idle workers and headroom still to give (``fill``): a from-scratch plan turns them into headroom.
        return scratch("scratch", f"{gpus - previous.num_gpus} idle worker(s) become headroom")
    budgets = _budgets(previous, workload)
    if budgets is None:
        return scratch("scratch", "a query is new or changed")
    fraction = 1.0 if fill <= 1.0 else min(max(previous.rate_fraction, 1.0), float(fill))
    dms = demands(workload if fraction == 1.0 else workload.scaled(fraction), budgets)
    memory = workload.device.memory_mb
    # What a from-scratch packing of the same rates needs: every rate with the headroom a resize gives.
    scratch_gpus, unserved = policies()[policy](demands(workload.scaled(fraction * band.high), budgets), memory,
                                                None)
    out = {u.session for u in unserved}  # no plan can serve them (reported with the reason, as from scratch)
    result = incremental_gpus(previous, [d for d in dms if d.session.session not in out], memory, band,
                              target=len(scratch_gpus))
    served: dict[str, float] = {}
    for g in result.gpus:
        for a in g.allocations:
            served[a.session] = served.get(a.session, 0.0) + a.rate
    plan = Plan(gpus=tuple(renumber(result.gpus)),
                sessions=tuple(replace(d.session, rate=served.get(d.session.session, d.session.rate)) for d in dms),
                lower_bound_gpus=lower_bound(dms, memory), policy=policy, unserved=tuple(unserved),
                queries=tuple(QueryPlan(q.name, q.slo_ms, tuple(
                    StageBudget(st.name, stage_session(q.name, st.name), budgets[q.name][st.name]) for st in q.stages))
                    for q in workload.queries),
                rate_fraction=fraction)
    try:
        from .api import validate

        validate(plan, workload)
    except PlanInvalid as exc:
        return scratch("scratch", f"incremental plan invalid: {exc}")
    if gpus is not None and plan.num_gpus > gpus:
        return scratch("repack",
                        f"incremental plan needs {plan.num_gpus} GPUs, the cluster has {gpus}")
    limit = len(scratch_gpus) * (1 + band.repack_share)
    if plan.num_gpus > limit + 1e-9:
        return scratch("repack",
                        f"incremental plan needs {plan.num_gpus} GPUs, over {1 + band.repack_share:g} x the "
                        f"{len(scratch_gpus)} of a from-scratch plan", len(scratch_gpus))
    scratch_loads = model_loads(previous, scratch_gpus)
    return EpochDecision(plan, "incremental", f"kept {len(result.kept)}, resized {len(result.resized)}",
                         len(scratch_gpus), result.loads, scratch_loads, result.kept, result.resized,
                         result.consolidated)

