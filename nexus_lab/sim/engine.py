"""The discrete-event simulator: runs a Plan in virtual time with the shared early-drop batching policy.

Pure and deterministic under a seed: numpy and the planner's data types only; no Dask, no clocks, no I/O.

How it stays fast (>= 500k simulated requests per wall second): arrivals are generated per session with numpy
and routed up front (frontend routing depends only on arrival order, never on GPU state), so every GPU is an
independent event loop over its own queues. A plan with queries runs them as DAGs (``dag.py``): their frames are
generated up front, their other stages' requests appear as parent batches end, and the GPUs advance together.
A queue is an index range over its sorted arrival array; forming a batch is a bisection plus, when the head
request would miss its deadline, ``early_drop_sorted`` (O(log n)); one event per batch. Latencies and metrics are
computed vectorised at the end from the per-batch records.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Mapping

import numpy as np

from ..arrivals import ARRIVAL_KINDS, ArrivalSpec, generate
from ..planner.plan import Allocation, GpuPlan, Plan
from ..profiles import BATCH_LATENCIES
from ..workload import Workload
from .dag import QueryRun
from .gpu import GpuLoop, baseline, duty_cycle
from .metrics import SimResult, outcome_metrics
from .queues import Queue, normal_draws, resolve_sessions
from .routing import weighted_round_robin

BATCHING_POLICIES = ("duty-cycle", "tf-serving", "triton", "clipper")
_DEVICE_STREAM = zlib.crc32(b"device")  # seeds the batch-latency draws apart from every session's arrivals


def _arrival_specs(arrivals: str | Mapping[str, ArrivalSpec], cv: float, names: list[str]) -> dict[str, ArrivalSpec]:
    if isinstance(arrivals, str):
        if arrivals not in ARRIVAL_KINDS or arrivals == "trace":
            raise ValueError(f"arrivals: must be one of {[k for k in ARRIVAL_KINDS if k != 'trace']} or a mapping "
                             f"of session to ArrivalSpec, got {arrivals!r}")
        spec = ArrivalSpec(arrivals, cv)
        return {n: spec for n in names}
    unknown = sorted(set(arrivals) - set(names))
    if unknown:
        raise ValueError(f"arrivals: unknown session(s) {unknown}; planned sessions: {names}")
    out = {n: ArrivalSpec("poisson", cv) for n in names}
    for n, spec in arrivals.items():
        if not isinstance(spec, ArrivalSpec):
            raise ValueError(f"arrivals[{n!r}]: must be an ArrivalSpec, got {type(spec).__name__}")
        out[n] = spec
    return out


# ------------------------------------------------------------------------------------------ the entry point
def simulate(plan: Plan, workload: Workload, *, duration_s: float = 30.0, seed: int = 0,
             arrivals: str | Mapping[str, ArrivalSpec] = "poisson", cv: float = 2.0, early_drop: bool = True,
             trace: bool = False, warmup_s: float = 1.0, rates: Mapping[str, float] | None = None,
             fixed_slots: bool = False, batch_latency: str = "measured", batch_floor: bool = False) -> SimResult:
    """Run ``plan`` on ``workload``'s profiles for ``duration_s`` of virtual time.

    Every planned session (user sessions and query stages alike, each at its own rate) gets its own arrival
    process (``arrivals``: ``poisson``, ``uniform``, ``bursty`` with coefficient of variation ``cv``, or per
    session an ``ArrivalSpec``, traces included) at the plan's rate, or ``rates[session]`` when given. Prefix
    sessions have no requests of their own: they run for their members'. Frontends route each request to the
    session's GPUs in proportion to the plan's per-GPU rates (deterministic weighted round robin). GPUs run
    their ``batching`` policy: ``duty-cycle`` (Nexus, early drop unless ``early_drop=False``), ``tf-serving``,
    ``triton`` or ``clipper``. Batches are formed with the plan's numbers (the profile's inflated ``l(b)``) and
    run as long as the device really takes (``batch_latency="measured"``, the default: the profile's measured
    mean at b plus its measured std times a normal draw, seeded per GPU), so the planner's inflation (mean + std,
    times the safety factor) is the margin it is on a real GPU; ``"planned"`` runs every batch for the inflated
    ``l(b)`` instead: the worst case the plan is validated against. A duty-cycle GPU runs its
    allocations in turn, work-conserving, each taking up to its allocation's batch (early drop:
    ``deadline = arrival + L'``) and growing it in a burst while the oldest request still makes its deadline; with
    ``fixed_slots=True`` it runs the paper's fixed cycle instead (see ``gpu.duty_cycle``). ``batch_floor=True``
    holds a plain session's batch below its floor as a backend on the host's CPU does (``batching.batch_floor``:
    until its oldest request has waited ``min(d, l(floor))``). After
    ``duration_s`` no more requests arrive and the queues drain, so every request ends served or dropped; metrics
    count the requests arriving in ``[warmup_s, duration_s)``.

    Queries (``plan.queries``) run as DAGs in virtual time (``sim.dag``): frames arrive at the query's rate
    (``rates[query]``, else the root stage session's rate over its gamma; ``arrivals`` may name the query), each
    root stage gets one request per frame, and when a request's batch ends (plus its stage's overhead) every
    child stage gets Poisson(gamma) requests of that frame (a join, Poisson(gamma * its parents' items), once all
    its parents' requests have ended), drawn from numpy generators seeded by ``seed`` and the stage's session.
    Every request carries its frame's end-to-end deadline (``querytime.stage_offsets``), so early drop is end to
    end, and a drop ends the frame. ``result.queries`` gives each query's frames, goodput, attainment and
    latency percentiles; ``rates`` for non-root stages are ignored (their rate is the fan-out's). Without
    queries the GPUs run one after another, exactly as before.

    Examples
    --------
    >>> from nexus_lab.planner import plan_workload
    >>> from nexus_lab.workload import load_workload
    >>> wl = load_workload({"sessions": [{"model": "vgg16", "slo_ms": 100, "rate": 350}]})
    >>> res = simulate(plan_workload(wl), wl, duration_s=5.0, rates={"vgg16:100": 300.0}, arrivals="uniform")
    >>> res.sessions["vgg16:100"].slo_attainment > 0.99
    True
    """
    if not (isinstance(duration_s, (int, float)) and math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"duration_s: must be a finite number > 0, got {duration_s!r}")
    if not (isinstance(warmup_s, (int, float)) and 0 <= warmup_s < duration_s):
        raise ValueError(f"warmup_s: must be in [0, duration_s={duration_s}), got {warmup_s!r}")
    if not isinstance(batch_floor, bool):
        raise ValueError(f"batch_floor: must be True or False, got {batch_floor!r}")
    if not (math.isfinite(cv) and cv > 0):
        raise ValueError(f"cv: must be a finite number > 0, got {cv!r}")
    if batch_latency not in BATCH_LATENCIES:
        raise ValueError(f"batch_latency: must be one of {list(BATCH_LATENCIES)}, got {batch_latency!r}")
    measured = batch_latency == "measured"
    sessions = resolve_sessions(plan, workload)
    names = [s.name for s in sessions]
    if len(set(names)) != len(names):
        raise ValueError("plan.sessions: session names must be unique")
    index = {s.name: s for s in sessions}
    offered = {s.session: float(s.rate) for s in plan.sessions}
    query_names = [q.name for q in plan.queries]
    for name, r in (rates or {}).items():
        if name not in offered and name not in query_names:
            raise ValueError(f"rates: unknown session {name!r}; planned sessions: {names}"
                             + (f", queries: {query_names}" if query_names else ""))
        if not (isinstance(r, (int, float)) and math.isfinite(r) and r >= 0):
            raise ValueError(f"rates[{name!r}]: must be a finite number >= 0, got {r!r}")
        if name in offered:
            offered[name] = float(r)
    specs = _arrival_specs(arrivals, cv, names + query_names)
    gpu_index = {g.id: k for k, g in enumerate(plan.gpus)}
    if len(gpu_index) != len(plan.gpus):
        raise ValueError("plan.gpus: GPU ids must be unique")
    allocs: dict[str, list[tuple[GpuPlan, Allocation]]] = {n: [] for n in names}
    for k, g in enumerate(plan.gpus):
        if g.batching not in BATCHING_POLICIES:
            raise ValueError(f"gpus[{k}].batching: must be one of {list(BATCHING_POLICIES)}, got {g.batching!r}")
        if g.batching == "duty-cycle" and not g.duty_cycle_ms > 0:
            raise ValueError(f"gpus[{k}].duty_cycle_ms: must be > 0, got {g.duty_cycle_ms}")
        if g.batching != "duty-cycle" and len(g.allocations) != 1:
            raise ValueError(f"gpus[{k}].allocations: a {g.batching} GPU holds exactly one session")
        for j, a in enumerate(g.allocations):
            if a.session not in allocs:
                raise ValueError(f"gpus[{k}].allocations[{j}].session: {a.session!r} is not in plan.sessions")
            if a.batch < 1:
                raise ValueError(f"gpus[{k}].allocations[{j}].batch: must be >= 1, got {a.batch}")
            allocs[a.session].append((g, a))

    # Arrivals and routing, session by session; queues are numbered session by session so a session's
    # requests are contiguous in the concatenated arrays below.
    queues: list[Queue] = []
    unrouted: list[tuple[int, np.ndarray]] = []
    by_gpu: dict[int, list[Queue]] = {g.id: [] for g in plan.gpus}
    dag = QueryRun(plan, workload, offered, rates or {}, specs, int(seed), float(duration_s)) if plan.queries else None
    for s in sessions:
        if dag is not None and s.name in dag.stage_of:
            for q in dag.queues(s, allocs[s.name], len(queues), measured):
                queues.append(q)
                by_gpu[q.gpu].append(q)
            continue
        if s.members:
            arr = np.empty(0)
        else:
            rng = np.random.default_rng([int(seed), zlib.crc32(s.name.encode())])
            sp = specs[s.name]
            arr = generate(sp.kind, offered[s.name], float(duration_s), rng, cv=sp.cv, trace=sp.trace)
        routes = allocs[s.name]
        if not routes:
            unrouted.append((s.index, arr))
            continue
        target = weighted_round_robin(len(arr), [a.rate for _, a in routes])
        for k, (g, a) in enumerate(routes):
            q = Queue(len(queues), s, g.id, a, arr[target == k], measured)
            queues.append(q)
            by_gpu[g.id].append(q)

    recs: list[tuple[int, int, int, float, float]] = []
    loops: list[tuple[int, GpuLoop]] = []
    for k, g in enumerate(plan.gpus):
        qs = by_gpu[g.id]
        draws = normal_draws(np.random.default_rng([int(seed), _DEVICE_STREAM, k]))
        # A GPU whose queues all hold known arrivals (sessions, query roots) never waits for another: it runs to
        # the end at once (its generator never yields); the others run together under ``dag.run``.
        waits = any(q.dynamic for q in qs)
        if g.batching != "duty-cycle":
            loops.append((g.id, baseline(g, qs[0], recs, draws, waits)))
            if not waits:
                for _ in loops.pop()[1]:
                    pass
            continue
        here = {q.sess.name: q for q in qs}
        prefix: dict[str, tuple[Queue, list]] = {}
        for name, q in here.items():
            members = [here[m] for m in index[name].members if m in here]
            if not index[name].members:
                continue
            prefix[name] = (q, members)
        if batch_floor and not fixed_slots:
            for q in qs:
                if q.sess.name not in prefix and not any(q in ms for _, ms in prefix.values()):
                    q.set_floor(g.duty_cycle_ms / 1000.0)
        loops.append((g.id, duty_cycle(g, qs, prefix, early_drop, recs, draws, fixed_slots, waits)))
        if not waits:
            for _ in loops.pop()[1]:
                pass
    if dag is not None:
        dag.run(loops)
        unrouted += dag.unrouted(index)

    res = outcome_metrics(plan, sessions, queues, unrouted, recs, float(duration_s), float(warmup_s), trace)
    queries = dag.metrics(float(warmup_s), float(duration_s)) if dag is not None else {}
    return dataclasses.replace(res, batch_latency=batch_latency, queries=queries)
