"""The planner's front door: a workload in, a validated ``Plan`` out, for any policy.

Turns sessions and query stages (their SLO split by ``query.py``) into demands, folds prefix groups into composite
demands (``prefix.py``), runs the chosen packer, and, for a fixed cluster, finds the largest common fraction of
every rate that fits; ``validate`` re-checks any plan from the workload alone. Pure and deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from ..fields import label
from ..profiles import ModelProfile
from ..workload import Workload, stage_session
from . import prefix as prefix_mod
from . import query as query_mod
from .bounds import DEFAULT_MAX_GPUS, GpuLimitError, check_bound, check_max_gpus, format_gpus, gpus_needed, lower_bound
from .bounds import check_baseline_size as check_size
from .plan import GpuPlan, Plan, PlannedSession, QueryPlan, StageBudget, Unserved
from .squishy import Demand, renumber, squishy_pack
from .validate import PlanInvalid, plan_violations

Packer = Callable[[Sequence[Demand], float, "int | None"], "tuple[list[GpuPlan], list[Unserved]]"]


def query_budgets(workload: Workload, split: str = "dp") -> dict[str, dict[str, float]]:
    """Per query, per stage, the latency budget (ms) the chosen split gives it (``dp``: fewest GPUs; ``even``)."""
    splitter = {"dp": query_mod.optimal_split, "even": query_mod.even_split}
    if not isinstance(split, str) or split not in splitter:
        raise ValueError(f"split: must be one of {sorted(splitter)}, got {label(split)}")
    return {q.name: splitter[split](q, workload) for q in workload.queries}


def demands(workload: Workload, budgets: Mapping[str, Mapping[str, float]] | None = None) -> list[Demand]:
    """Sessions and query stages as units to pack, each with its profile and device budget L'."""
    known: dict[tuple[str, float], tuple[ModelProfile, float]] = {}  # many sessions share a model and an SLO

    def unit(model: str, slo: float) -> tuple[ModelProfile, float]:
        if (model, slo) not in known:
            known[model, slo] = (workload.profile(model), workload.budget_ms(model, slo))
        return known[model, slo]

    out = [Demand(PlannedSession(s.name, s.model, s.slo_ms, s.rate), *unit(s.model, s.slo_ms))
           for s in workload.sessions]
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


#: Past this many sessions and stages, the greedy packing only: the improvement pass is quadratic in residuals.
IMPROVE_MAX = 10_000


def _nexus(dms: Sequence[Demand], memory_mb: float, gpus: int | None = None
           ) -> tuple[list[GpuPlan], list[Unserved]]:
    placed, unserved = squishy_pack(dms, memory_mb)
    if len(dms) > IMPROVE_MAX:
        return placed, unserved
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


#: Policies that run prefix batching when ``plan_workload(prefix=True)``: Nexus's own; the baselines model
#: systems without it.
PREFIX_POLICIES = frozenset({"nexus", "nexus-greedy"})


def _blocked(workload: Workload, budgets: Mapping[str, Mapping[str, float]]) -> dict[str, str]:
    """Stage sessions of queries that cannot be served whole under ``budgets``, with the reason.

    A query is all or nothing: when no split (or not the chosen one) lets every stage meet ``L' >= 2*l(1)``,
    all its stages are reported in ``plan.unserved`` with a reason naming the field, and none is packed.
    """
    out: dict[str, str] = {}
    for i, q in enumerate(workload.queries):
        reason = query_mod.budget_shortfall(q, workload, budgets[q.name], f"queries[{i}]")
        if reason is not None:
            out.update({stage_session(q.name, st.name): reason for st in q.stages})
    return out


def _pack_prefix(packer: Packer, dms: Sequence[Demand], workload: Workload, gpus: int | None
                 ) -> tuple[list[GpuPlan], list[Unserved], list[Demand], list[prefix_mod.PrefixGroup]]:
    """Pack with prefix groups as composite demands; keep the whole-model plan if that needs fewer GPUs."""
    memory_mb = workload.device.memory_mb
    packed, groups = prefix_mod.group_demands(dms, workload, memory_mb)
    if not groups:
        placed, unserved = packer(dms, memory_mb, gpus)
        return placed, unserved, list(dms), []
    whole = packer(dms, memory_mb, gpus)
    placed, unserved = packer(packed, memory_mb, gpus)
    if len(whole[0]) < len(placed):
        return whole[0], whole[1], list(dms), []
    placed = prefix_mod.expand_prefix_gpus(renumber(placed), groups)
    by_prefix = {g.prefix.session.session: g for g in groups}
    out_unserved: list[Unserved] = []
    for u in unserved:
        out_unserved.append(u)
        if u.session in by_prefix:
            out_unserved += [Unserved(s.session.session, f"prefix group {by_prefix[u.session].group}: {u.reason}")
                             for s in by_prefix[u.session].suffixes]
    return placed, out_unserved, packed, groups


def check_fill(fill: float) -> float:
    """``fill`` as ``plan_workload`` takes it (a number in [1, 100]), or a ``ValueError`` naming the field."""
    if isinstance(fill, bool) or not (isinstance(fill, (int, float)) and 1.0 <= fill <= 100.0):
        raise ValueError(f"fill: must be a number in [1, 100], got {label(fill)}")
    return float(fill)


def plan_workload(workload: Workload, policy: str = "nexus", gpus: int | None = None, *,
                  split: str = "dp", prefix: bool = True, fill: float = 1.0,
                  max_gpus: int = DEFAULT_MAX_GPUS) -> Plan:
    """Plan ``workload`` with ``policy``; with ``gpus``, the largest common rate fraction that fits that many.

    ``fill`` > 1 (with ``gpus``) turns capacity the load leaves idle into headroom: the plan is for the largest common
    factor ``f <= fill`` of every rate that still fits ``gpus`` (``plan.rate_fraction = f``), so Poisson bursts
    and a rising load meet spare batch slots instead of a full queue. 1 plans the minimum, as Nexus does.

    ``split`` picks the query SLO split (``dp``: ``query.optimal_split``; ``even``). With ``prefix`` (and a
    policy in ``PREFIX_POLICIES``) sessions of one prefix group and SLO are planned as a prefix session plus one
    suffix session per model, sharing GPUs (``plan.prefix_groups`` reports them and the memory saved); without
    it every model is planned whole (the "without prefix batching" ablation). Queries that cannot be served
    whole are reported in ``plan.unserved``, every stage with the reason.

    Planning is bounded: without ``gpus``, a workload whose lower bound exceeds ``max_gpus`` is refused before
    packing (``bounds.GpuLimitError`` naming the field); with ``gpus`` (at most ``max_gpus``) overload is scaled
    down as before, but no rate that needs far more than ``gpus`` GPUs is ever packed.

    Examples
    --------
    >>> from nexus_lab.workload import load_workload
    >>> wl = load_workload({"sessions": [{"model": "vgg16", "slo_ms": 100, "rate": 350}]})
    >>> plan_workload(wl).num_gpus
    2
    """
    table = policies()
    if not isinstance(policy, str) or policy not in table:
        raise ValueError(f"policy: must be one of {sorted(table)}, got {label(policy)}")
    check_size(workload, policy, baseline=policy not in PREFIX_POLICIES)
    limit = check_max_gpus(max_gpus)
    if gpus is not None and check_max_gpus(gpus, "gpus") > limit:
        raise ValueError(f"gpus: must be <= max_gpus={limit}, got {label(gpus)}")
    check_fill(fill)
    need = check_bound(workload, limit) if gpus is None else gpus_needed(workload)[0]  # with gpus: scale down
    budgets = query_budgets(workload, split)
    if gpus is None and workload.queries:
        # Stages were priced at the whole query SLO; with their split budgets they may cost more.
        split_need = lower_bound(demands(workload, budgets), workload.device.memory_mb)
        if split_need > limit:
            raise GpuLimitError(f"{gpus_needed(workload)[1]}: needs ~{format_gpus(split_need)} GPUs with the query "
                                f"SLO split, more than max_gpus={limit}")
    blocked = _blocked(workload, budgets)
    packer = table[policy]
    use_prefix = prefix and policy in PREFIX_POLICIES and any(m.prefix is not None
                                                             for m in workload.models.values())

    def make(fraction: float) -> Plan:
        wl = workload if fraction == 1.0 else workload.scaled(fraction)
        dms = demands(wl, budgets)
        todo = [d for d in dms if d.session.session not in blocked]
        groups: list[prefix_mod.PrefixGroup] = []
        if use_prefix:
            placed, unserved, packed, groups = _pack_prefix(packer, todo, wl, gpus)
        else:
            placed, unserved = packer(todo, workload.device.memory_mb, gpus)
            packed = todo
        unserved = [Unserved(d.session.session, blocked[d.session.session])
                    for d in dms if d.session.session in blocked] + list(unserved)
        placed = renumber(placed)
        sessions = [d.session for d in dms]
        report: list[dict] = []
        for g in groups:
            members = {s.session.session: s.session for s in g.suffixes}
            first = next(i for i, s in enumerate(sessions) if s.session in members)
            sessions = [members.get(s.session, s) for s in sessions]
            sessions.insert(first, g.prefix.session)
            names = list(members)
            report.append(g.to_dict(prefix_mod.memory_saved(placed, g.prefix.session.session, g.prefix.profile,
                                                            names)))
        return Plan(
            gpus=tuple(placed),
            sessions=tuple(sessions),
            lower_bound_gpus=lower_bound(packed, workload.device.memory_mb),
            policy=policy,
            unserved=tuple(unserved),
            queries=tuple(QueryPlan(q.name, q.slo_ms, tuple(
                StageBudget(st.name, stage_session(q.name, st.name), budgets[q.name][st.name])
                for st in q.stages)) for q in workload.queries),
            rate_fraction=fraction,
            prefix_groups=tuple(report),
        )

    if gpus is not None and policy not in DEDICATED_POLICIES and need > 2 * gpus + 8:
        return _scaled_search(make, gpus, need, _iterations(workload))
    full = make(1.0)
    if gpus is not None and policy in DEDICATED_POLICIES:
        return _within_capacity(full, workload)
    if gpus is None or full.num_gpus <= gpus:
        if gpus is None or fill <= 1.0:
            return full
        # Headroom: the largest factor f in [1, fill] whose plan still fits, serving everything ``full`` serves
        # (idle GPUs and the unused share of a residual GPU's duty cycle alike).
        unserved = {u.session for u in full.unserved}

        def fits_serving_as_much(p: Plan) -> bool:
            return p.num_gpus <= gpus and {u.session for u in p.unserved} <= unserved

        # No factor whose lower bound exceeds twice the cluster can fit: never pack one.
        top_factor = min(float(fill), max(1.0, 2.0 * gpus / full.lower_bound_gpus)) if full.lower_bound_gpus > 0 \
            else float(fill)
        top = make(top_factor)
        if fits_serving_as_much(top):
            return top
        return _largest_fitting(make, 1.0, top_factor, full, fits_serving_as_much,
                                iterations=min(12, _iterations(workload)), tol=0.01)
    # Largest common fraction f of every rate whose plan fits the cluster: GPUs needed grow with f.
    return _largest_fitting(make, 0.0, 1.0, make(0.0), lambda p: p.num_gpus <= gpus, iterations=_iterations(workload),
                            tol=1e-4)


def _iterations(workload: Workload) -> int:
    """Bisection steps on the rate factor: 30 (a 1e-4 fraction), fewer for large workloads (each step packs the
    whole workload once; 100,000 sessions get 6, a 1/64 fraction), so a fixed cluster plans in bounded time."""
    units = len(workload.sessions) + sum(len(q.stages) for q in workload.queries)
    return max(6, min(30, 60_000 // max(units, 1)))


def _scaled_search(make: Callable[[float], Plan], gpus: int, need: float, iterations: int) -> Plan:
    """The largest common rate factor that fits ``gpus`` when the full rates need ``need`` >> ``gpus`` GPUs.

    A plan at factor f needs at least ``f * need`` GPUs, so the search starts from the factor that needs about
    twice the cluster; where prefix sharing makes plans cheaper than ``need`` it doubles that factor while the
    plan still fits. Every plan packed needs O(``gpus``) GPUs.
    """
    fits = lambda p: p.num_gpus <= gpus  # noqa: E731
    lo, best = 0.0, make(0.0)
    hi = min(1.0, (2 * gpus + 8) / need) if math.isfinite(need) else 0.0
    if hi <= 0.0:
        hi = max((2 * gpus + 8) / 1e300, 5e-324)
    top = make(hi)
    while fits(top) and hi < 1.0:
        lo, best = hi, top
        hi = min(1.0, hi * 2)
        top = make(hi)
    if fits(top):
        return top
    return _largest_fitting(make, lo, hi, best, fits, iterations=iterations, tol=1e-4 * hi)


def _largest_fitting(make: Callable[[float], Plan], lo: float, hi: float, best: Plan, fits: Callable[[Plan], bool],
                     *, iterations: int, tol: float) -> Plan:
    """Bisection on a common rate factor in ``[lo, hi]``: the plan of the largest factor found that ``fits``
    (``best`` is the plan at ``lo``, which fits)."""
    for _ in range(iterations):
        mid = (lo + hi) / 2
        cand = make(mid)
        if fits(cand):
            lo, best = mid, cand
        else:
            hi = mid
        if hi - lo < tol:
            break
    return best


DEDICATED_POLICIES = frozenset({"clipper", "tf-serving", "triton"})


def _within_capacity(plan: Plan, workload: Workload) -> Plan:
    """A dedicated-GPU baseline on a fixed cluster: the GPUs were divided by load, so some sessions may have less
    than their rate needs. Plan the largest common fraction of every rate that its GPUs sustain (each GPU at most
    ``b / l(b)`` at its largest batch); the simulator, offered the full rates, shows the rest as drops."""
    profiles = session_profiles(plan, workload)
    capacity: dict[str, float] = {}
    for g in plan.gpus:
        for a in g.allocations:
            capacity[a.session] = capacity.get(a.session, 0.0) + a.batch * 1000.0 / float(
                profiles[a.session].lat_ms[a.batch])
    fraction = min([1.0] + [capacity[s.session] / s.rate for s in plan.sessions
                            if s.rate > 0 and s.session in capacity])
    if fraction >= 1.0:
        return plan
    scale = lambda a: replace(a, rate=a.rate * fraction)  # noqa: E731
    return replace(plan, rate_fraction=fraction,
                   sessions=tuple(scale(s) for s in plan.sessions),
                   gpus=tuple(replace(g, allocations=tuple(scale(a) for a in g.allocations)) for g in plan.gpus))


def validate(plan: Plan, workload: Workload) -> None:
    """Raise ``PlanInvalid`` listing every violated constraint of ``plan`` for ``workload``.

    Independent of the packers: it re-derives every session's profile, budget and rate from the workload. Prefix
    groups the plan declares (``plan.prefix_groups``) are checked against the workload's prefix declarations;
    on each GPU a prefix session and its suffixes form one composite unit: the prefix must take every request
    its suffixes there serve, and ``d + l_P(b) + sum_i l_Si(b_i) <= L'_i`` for every member i on that GPU
    (the suffixes run back to back after the prefix), on top of the per-GPU duty-cycle and memory checks.
    """
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
    tables = _session_tables(plan, workload, budgets, errors)
    profiles, budget_of, rates, units = tables
    planned = {s.session for s in plan.sessions}
    errors += [f"{n}: missing from plan.sessions" for n in sorted(set(rates) - planned)]
    errors += plan_violations(plan, profiles=profiles, budgets=budget_of, rates=rates,
                              memory_mb=workload.device.memory_mb)
    errors += _composite_violations(plan, units, profiles, budget_of)
    if errors:
        raise PlanInvalid(errors)


def session_profiles(plan: Plan, workload: Workload) -> dict[str, ModelProfile]:
    """The profile every planned session runs with: a session's or stage's model, or, for a prefix group the
    plan declares, the group's prefix profile (prefix session) and each model's suffix profile (its session).

    What a simulator or backend needs to time an allocation: ``Allocation.model`` of a prefix or suffix names
    ``<group>.prefix`` / ``<model>.suffix``, which are not models of the workload.
    """
    budgets = {q.name: {s.name: s.budget_ms for s in q.stages} for q in plan.queries}
    return _session_tables(plan, workload, budgets, [])[0]


def _session_tables(plan: Plan, workload: Workload, budgets: Mapping[str, Mapping[str, float]], errors: list[str]
                    ) -> tuple[dict[str, ModelProfile], dict[str, float], dict[str, float], dict[str, list[str]]]:
    """Per planned session: profile, device budget L' and rate (scaled by the plan's rate fraction), re-derived
    from the workload; plus prefix session -> member sessions for the prefix groups the plan declares."""
    wl = workload if plan.rate_fraction == 1.0 else workload.scaled(plan.rate_fraction)
    dms = demands(wl, budgets)
    profiles = {d.session.session: d.profile for d in dms}
    budget_of = {d.session.session: d.budget_ms for d in dms}
    rates = {d.session.session: d.session.rate for d in dms}
    units = _prefix_units(plan, wl, {d.session.session: d for d in dms}, profiles, budget_of, rates, errors)
    return profiles, budget_of, rates, units


def _prefix_units(plan: Plan, wl: Workload, by_name: Mapping[str, Demand], profiles: dict, budgets: dict,
                  rates: dict, errors: list[str]) -> dict[str, list[str]]:
    """Check each declared prefix group against the workload; point its sessions at the prefix and suffix
    profiles. Returns prefix session -> member sessions."""
    units: dict[str, list[str]] = {}
    for k, raw in enumerate(plan.prefix_groups):
        where = f"prefix_groups[{k}]"
        group, head = raw.get("group"), raw.get("prefix_session")
        members = prefix_mod.members_of(raw)
        if not isinstance(group, str) or not isinstance(head, str) or len(members) < 1:
            errors.append(f"{where}: needs group, prefix_session and sessions")
            continue
        specs = []
        for m in members:
            dm = by_name.get(m)
            spec = wl.models.get(dm.session.model) if dm is not None else None
            if dm is None or spec is None or spec.prefix is None or spec.prefix.group != group:
                errors.append(f"{where}: session {m} does not run a model of prefix group {group}")
                continue
            if any(m in u for u in units.values()):
                errors.append(f"{where}: session {m} is in two prefix groups")
                continue
            specs.append((dm, spec.prefix))
        if len(specs) != len(members):
            continue
        if len({dm.session.slo_ms for dm, _ in specs}) != 1:
            errors.append(f"{where}: sessions of one prefix session must share one SLO")
            continue
        if head in profiles:
            errors.append(f"{where}.prefix_session: {head} clashes with a workload session")
            continue
        profiles[head] = prefix_mod.prefix_profile(group, [p.prefix for _, p in specs])
        budgets[head] = min(dm.budget_ms for dm, _ in specs)
        rates[head] = sum(dm.session.rate for dm, _ in specs)
        for dm, p in specs:
            profiles[dm.session.session] = p.suffix
        units[head] = members
    return units


def _composite_violations(plan: Plan, units: Mapping[str, list[str]], profiles: Mapping, budgets: Mapping
                          ) -> list[str]:
    errors: list[str] = []
    if not units:
        return errors
    member_of = {m: head for head, ms in units.items() for m in ms}
    for g in plan.gpus:
        d = g.duty_cycle_ms
        here = {a.session: a for a in g.allocations}
        for a in g.allocations:
            head = member_of.get(a.session)
            if head is not None and head not in here:
                errors.append(f"gpu {g.id}/{a.session}: suffix without its prefix session {head} on this GPU")
        for head, members in units.items():
            pa = here.get(head)
            if pa is None:
                continue
            ms = [here[m] for m in members if m in here]
            took = sum(m.rate for m in ms)
            if took > pa.rate * (1 + 1e-6) + 1e-6:
                errors.append(f"gpu {g.id}/{head}: prefix takes {pa.rate:.3f}/s but its suffixes here serve "
                              f"{took:.3f}/s")
            p = profiles[head]
            if not 1 <= pa.batch <= p.max_batch or any(not 1 <= m.batch <= profiles[m.session].max_batch
                                                       for m in ms):
                continue  # reported by plan_violations
            unit = float(p.lat_ms[pa.batch]) + sum(float(profiles[m.session].lat_ms[m.batch]) for m in ms)
            for m in ms:
                if d + unit > budgets[m.session] * (1 + 1e-6) + 1e-6:
                    errors.append(f"gpu {g.id}/{m.session}: d + l_prefix + sum l_suffix = {d + unit:.3f} ms "
                                  f"exceeds budget L' = {budgets[m.session]:.3f} ms")
    return errors
