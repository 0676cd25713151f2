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
from .validate import PlanInvalid

__all__ = ["edit_placement", "moved_sessions", "placement_signature", "placement_violations"]


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
