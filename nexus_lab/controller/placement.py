"""Mapping a plan's GPUs onto Dask workers, and the ordered steps that move a cluster from one plan to the next.

Pure and deterministic: plans and worker addresses in, assignments and routing tables out; no Dask, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..planner.plan import GpuPlan, Plan


def gpu_key(gpu: Mapping[str, Any] | GpuPlan | None) -> tuple | None:
    """What a backend runs, independent of the GPU's id: two GPUs with equal keys need no change."""
    if gpu is None:
        return None
    raw = gpu.to_dict() if isinstance(gpu, GpuPlan) else gpu
    allocs = tuple(sorted((a["session"], a["model"], float(a["slo_ms"]), int(a["batch"]), round(float(a["rate"]), 6))
                          for a in raw.get("allocations", ())))
    return (round(float(raw["duty_cycle_ms"]), 6), raw.get("batching", "duty-cycle"), allocs)


def _models(gpu: Mapping[str, Any] | GpuPlan | None) -> set[str]:
    if gpu is None:
        return set()
    raw = gpu.to_dict() if isinstance(gpu, GpuPlan) else gpu
    return {a["model"] for a in raw.get("allocations", ())}


def _sessions(gpu: Mapping[str, Any] | GpuPlan | None) -> set[str]:
    if gpu is None:
        return set()
    raw = gpu.to_dict() if isinstance(gpu, GpuPlan) else gpu
    return {a["session"] for a in raw.get("allocations", ())}


def assign_gpus(plan: Plan, workers: Sequence[str], current: Mapping[str, Mapping[str, Any] | None],
                pins: Mapping[str, str] | None = None) -> dict[int, str]:
    """Plan GPU id -> worker address, keeping GPUs on the workers that already run (most of) them.

    A GPU whose allocations a worker already runs stays there (no move at all); otherwise the pairing that
    keeps the most loaded models (each kept model is a load avoided) and sessions wins, greedily, best pair
    first; ties go to the lower worker address and GPU id so the result is deterministic. ``pins`` (session ->
    worker) forces the GPU holding a pinned session onto that worker. Raises ``ValueError`` when the plan has
    more GPUs than workers.
    """
    workers = sorted(workers)
    if plan.num_gpus > len(workers):
        raise ValueError(f"plan: needs {plan.num_gpus} GPUs but the cluster has {len(workers)} workers")
    out: dict[int, str] = {}
    free = list(workers)
    gpus = list(plan.gpus)
    for session, worker in sorted((pins or {}).items()):
        if worker not in free:
            continue
        for g in gpus:
            if session in _sessions(g) and g.id not in out:
                out[g.id] = worker
                free.remove(worker)
                break
    todo = [g for g in gpus if g.id not in out]
    scored = []
    for g in todo:
        key, models, sess = gpu_key(g), _models(g), _sessions(g)
        for w in free:
            cur = current.get(w)
            if cur is None:
                continue
            same = gpu_key(cur) == key
            score = (1 if same else 0, len(models & _models(cur)), len(sess & _sessions(cur)))
            if score > (0, 0, 0):
                scored.append((score, g.id, w))
    # Best score first; among equals the lower GPU id, then the lower worker address.
    scored.sort(key=lambda t: (-t[0][0], -t[0][1], -t[0][2], t[1], t[2]))
    for _score, gid, w in scored:
        if gid in out or w not in free:
            continue
        out[gid] = w
        free.remove(w)
    # The rest: idle workers first (a worker running something else would have to unload it anyway).
    free.sort(key=lambda w: (current.get(w) is not None and bool(_sessions(current.get(w))), w))
    for g in todo:
        if g.id not in out:
            out[g.id] = free.pop(0)
    return out


def by_worker_index(plan: Plan, assignment: Mapping[int, str], workers: Sequence[str]) -> tuple[Plan, dict[int, str]]:
    """``plan`` with each GPU's id the index of the worker running it in ``workers`` (GPU i is the i-th worker, as
    the dashboard names them), GPUs in that order, and the assignment under the new ids."""
    index = {w: i for i, w in enumerate(workers)}
    gpus = sorted((replace(g, id=index[assignment[g.id]]) for g in plan.gpus), key=lambda g: g.id)
    where = {g.id: workers[g.id] for g in gpus}
    if all(index[assignment[g.id]] == g.id for g in plan.gpus) and [g.id for g in plan.gpus] == list(where):
        return plan, where  # numbered so already: the plan itself
    return replace(plan, gpus=tuple(gpus)), where


def worker_gpus(plan: Plan, assignment: Mapping[int, str], workers: Sequence[str]) -> dict[str, dict | None]:
    """Worker -> the ``GpuPlan.to_dict()`` it must run under ``plan`` (``None``: idle, nothing loaded)."""
    out: dict[str, dict | None] = {w: None for w in workers}
    for g in plan.gpus:
        out[assignment[g.id]] = g.to_dict()
    return out


def routes_for(plan: Plan, assignment: Mapping[int, str]) -> dict[str, list[tuple[str, float]]]:
    """Session -> [(worker address, planned rate)]: what frontends need for weighted routing."""
    out: dict[str, list[tuple[str, float]]] = {}
    for session, entries in plan.routes().items():
        out[session] = [(assignment[gid], float(rate)) for gid, rate in entries if gid in assignment]
    return out


def routes_of(gpus: Mapping[str, Mapping[str, Any] | None]) -> dict[str, list[tuple[str, float]]]:
    """Session -> [(worker, rate)] from what each worker runs (worker -> GpuPlan dict)."""
    out: dict[str, list[tuple[str, float]]] = {}
    for w in sorted(gpus):
        g = gpus[w]
        for a in (g or {}).get("allocations", ()):
            out.setdefault(a["session"], []).append((w, float(a["rate"])))
    return out


@dataclass(frozen=True)
class Transition:
    """How to move from ``old`` to ``new`` (worker -> GpuPlan dict or None) without losing a request.

    1. ``first``: workers that only gain or keep sessions apply their new GPU plan (each loads before it
       switches); 2. ``mid_routes``: every session routes to the new workers already running it, or stays on
       its old routes when none is ready yet; 3. ``second``: the workers that drop a session apply theirs (each
       drains its queues before it unloads); 4. ``final_routes``: the new plan's routes.
    """

    first: tuple[str, ...]
    mid_routes: dict[str, list[tuple[str, float]]]
    second: tuple[str, ...]
    final_routes: dict[str, list[tuple[str, float]]]
    unchanged: tuple[str, ...]

    @property
    def changed(self) -> tuple[str, ...]:
        return self.first + self.second


def transition(old: Mapping[str, Mapping[str, Any] | None], new: Mapping[str, Mapping[str, Any] | None]
               ) -> Transition:
    """The ordered steps from ``old`` to ``new``; only workers whose GPU plan differs are touched."""
    workers = sorted(set(old) | set(new))
    changed = [w for w in workers if gpu_key(old.get(w)) != gpu_key(new.get(w))]
    first = tuple(w for w in changed if _sessions(old.get(w)) <= _sessions(new.get(w)))
    second = tuple(w for w in changed if w not in first)
    ready = {w: new.get(w) for w in workers if w not in second}
    ready_routes = routes_of(ready)
    old_routes = routes_of({w: old.get(w) for w in workers})
    final = routes_of({w: new.get(w) for w in workers})
    mid: dict[str, list[tuple[str, float]]] = {}
    for s in sorted(set(final) | set(old_routes)):
        if ready_routes.get(s) and s in final:
            mid[s] = ready_routes[s]
        elif old_routes.get(s):
            mid[s] = old_routes[s]
    return Transition(first=first, mid_routes=mid, second=second, final_routes=final,
                      unchanged=tuple(w for w in workers if w not in changed))
