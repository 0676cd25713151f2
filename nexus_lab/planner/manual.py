"""Manual placements: edit a plan by hand (move a session between GPUs, change a batch), judge the result with the
independent ``validate``, and compare two plans session by session.

Pure: what the placement editor and the controller's previews use, so the UI refuses exactly what the planner does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace

from ..workload import Workload, WorkloadError
from .api import session_profiles, validate
from .plan import Plan
from .squishy import ceil_batch
from .validate import PlanInvalid

__all__ = ["edit_placement", "moved_sessions", "placement_signature", "placement_violations", "real_occupancy"]


def edit_placement(plan: Plan, workload: Workload, *, moves: Mapping[str, tuple[int, int]] | None = None,
                   batches: Mapping[tuple[int, str], int] | None = None,
                   duty: Mapping[int, float] | None = None, real_rates: bool = False) -> Plan:
    """A manual variant of ``plan``: ``moves[session] = (from_gpu, to_gpu)`` moves its allocation (merged with one
    already there), ``batches[(gpu, session)] = b`` changes a batch, ``duty[gpu] = ms`` changes a duty cycle.
    Other duty cycles stay; occupancy and memory are recomputed from the profiles, so ``placement_violations``
    judges the result honestly.

    ``real_rates``: judge the placement at the workload's own rates, not the plan's ``rate_fraction`` (a plan
    with headroom, ``fill > 1``, is planned at up to ``fill`` times every rate and so fills its GPUs): every
    rate is scaled back, and on each GPU a move or a duty-cycle edit touches, every batch not set by hand
    shrinks to the smallest that serves its rate (the planner's ``ceil_batch``): the headroom is what a move can
    use.
    """
    profiles = session_profiles(plan, workload)
    frac = plan.rate_fraction if real_rates and plan.rate_fraction > 0 else 1.0
    gpus = {g.id: [replace(x, rate=x.rate / frac) for x in g.allocations] for g in plan.gpus}
    durations = {g.id: g.duty_cycle_ms for g in plan.gpus}
    for gid, d in (duty or {}).items():
        if gid not in gpus:
            raise WorkloadError(f"duty[{gid}]: gpu must be one of {sorted(gpus)}")
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) or d <= 0:
            raise WorkloadError(f"The duty cycle of GPU {gid} must be a time above 0 ms (you entered {d!r})")
        durations[gid] = float(d)
    touched = set(duty or ())
    for session, (src, dst) in (moves or {}).items():
        if src not in gpus or dst not in gpus:
            raise WorkloadError(f"moves[{session!r}]: gpu must be one of {sorted(gpus)}, got {src}->{dst}")
        a = next((x for x in gpus[src] if x.session == session), None)
        if a is None:
            raise WorkloadError(f"moves[{session!r}]: not on gpu {src}")
        if src == dst:
            continue
        touched |= {src, dst}
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
        p = profiles.get(session)
        if p is not None and b > p.max_batch:
            raise WorkloadError(f"batches[({gid}, {session!r})]: must be at most {p.max_batch} (the largest batch "
                                f"its model runs), got {b}")
        gpus[gid] = [replace(x, batch=b) if x.session == session else x for x in gpus[gid]]
    if real_rates:
        for gid in touched:
            gpus[gid] = [x if (gid, x.session) in (batches or {}) else
                         replace(x, batch=int(ceil_batch(x.rate, durations[gid]))) for x in gpus[gid]]
    out = []
    for g in plan.gpus:
        g = replace(g, duty_cycle_ms=durations[g.id])
        allocs = tuple(gpus[g.id])
        load = mem = 0.0
        for a in allocs:
            p = profiles[a.session]
            if 1 <= a.batch <= p.max_batch:
                load += float(p.lat_ms[a.batch])
                mem += float(p.mem_mb[a.batch])
        occ = load / g.duty_cycle_ms if g.duty_cycle_ms > 0 else math.inf
        out.append(replace(g, allocations=allocs, occupancy=occ, memory_mb=mem))
    return replace(plan, gpus=tuple(out), rate_fraction=plan.rate_fraction if frac == 1.0 else 1.0)


def real_occupancy(plan: Plan, workload: Workload) -> dict[int, float]:
    """GPU id -> its occupancy at the workload's own rates (every batch the smallest serving its rate there, duty
    cycles as planned). Equal to ``occupancy`` for a plan at ``rate_fraction`` 1; below it, the difference is
    the headroom a plan with ``fill > 1`` keeps."""
    profiles = session_profiles(plan, workload)
    frac = plan.rate_fraction if plan.rate_fraction > 0 else 1.0
    out = {}
    for g in plan.gpus:
        load = 0.0
        for a in g.allocations:
            p = profiles.get(a.session)
            if p is not None and g.duty_cycle_ms > 0:
                b = min(a.batch, int(ceil_batch(a.rate / frac, g.duty_cycle_ms)), p.max_batch)
                load += float(p.lat_ms[max(b, 1)])
        out[g.id] = load / g.duty_cycle_ms if g.duty_cycle_ms > 0 else math.inf
    return out


def placement_violations(plan: Plan, workload: Workload) -> list[str]:
    """Every constraint a (manual) plan breaks, named by the planner's independent ``validate``; [] if feasible."""
    try:
        validate(plan, workload)
    except PlanInvalid as exc:
        return list(exc.errors)
    return []


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
