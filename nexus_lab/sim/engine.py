"""The discrete-event simulator: runs a Plan in virtual time with the shared early-drop batching policy.

Pure and deterministic under a seed: numpy and the planner's data types only; no Dask, no clocks, no I/O.

How it stays fast (>= 500k simulated requests per wall second): arrivals are generated per session with numpy
and routed up front (frontend routing depends only on arrival order, never on GPU state), so every GPU is an
independent event loop over its own queues. A queue is an index range over its sorted arrival array; forming a
batch is a bisection plus, when the head request would miss its deadline, ``early_drop_sorted`` (O(log n)); one
event per batch. Latencies and metrics are computed vectorised at the end from the per-batch records.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from bisect import bisect_right
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from ..batching import (
    ALL_REASONS,
    DropReason,
    burst_take,
    clipper_next_limit,
    clipper_take,
    early_drop_sorted,
    tf_serving_close,
    triton_dispatch,
)
from ..planner.plan import Allocation, GpuPlan, Plan
from ..planner.prefix import members_of, prefix_profile
from ..profiles import BATCH_LATENCIES, ModelProfile, clipped_normal, device_spread
from ..workload import Workload
from .arrivals import ARRIVAL_KINDS, ArrivalSpec, generate
from .metrics import BatchRecord, GpuMetrics, SessionMetrics, SimResult, Totals
from .routing import weighted_round_robin

BATCHING_POLICIES = ("duty-cycle", "tf-serving", "triton", "clipper")
_DEVICE_STREAM = zlib.crc32(b"device")  # seeds the batch-latency draws apart from every session's arrivals


@dataclass(frozen=True, eq=False)
class _Session:
    """A planned session as the simulator runs it."""

    name: str
    index: int
    slo_ms: float
    budget_s: float  # L' in seconds: deadline = arrival + L'
    overhead_ms: float  # pre + post + net, added to every finished request's latency
    profile: ModelProfile  # what its batches are planned with (the suffix for a prefix group member)
    run_ms: np.ndarray  # what a batch of b really takes on the device: the measured mean ...
    run_std_ms: np.ndarray  # ... give or take the measured std
    members: tuple[str, ...] = ()  # set for a prefix session: it runs for these sessions' requests


class _Queue:
    """One session's queue on one GPU: an index range ``[head, n)`` over its sorted arrivals."""

    __slots__ = (
        "alloc",
        "arr",
        "arr_np",
        "batch",
        "budget_s",
        "dl_np",
        "gpu",
        "head",
        "lat",
        "lat_np",
        "n",
        "qi",
        "run",
        "sd",
        "sess",
    )

    def __init__(self, qi: int, sess: _Session, gpu: int, alloc: Allocation, arrivals: np.ndarray,
                 measured: bool) -> None:
        self.qi, self.sess, self.gpu, self.alloc = qi, sess, gpu, alloc
        self.arr_np = arrivals
        self.arr = arrivals.tolist()
        self.n = len(self.arr)
        self.head = 0
        self.budget_s = sess.budget_s
        self.dl_np = arrivals + sess.budget_s
        self.lat_np = sess.profile.lat_ms / 1000.0
        self.lat = self.lat_np.tolist()
        self.batch = min(int(alloc.batch), sess.profile.max_batch)
        # Decisions (early drop, burst growth) use the planned l(b) in ``lat``; a batch lasts ``run[b]`` plus
        # ``sd[b]`` times a clipped normal draw (``sd`` is None when there is no spread to draw).
        if measured:
            self.run = (sess.run_ms / 1000.0).tolist()
            spread = device_spread(sess.run_ms, sess.run_std_ms) / 1000.0
            self.sd = spread.tolist() if np.any(spread > 0) else None
        else:
            self.run, self.sd = self.lat, None

    def lasts(self, batch: int, draws: Iterator[float]) -> float:
        """How long a batch of ``batch`` runs on the device, in seconds."""
        sd = self.sd
        if sd is None or not sd[batch]:
            return self.run[batch]
        return self.run[batch] + sd[batch] * next(draws)


def _normal_draws(rng: np.random.Generator) -> Iterator[float]:
    """``clipped_normal`` draws generated in blocks (one ``next`` per batch stays cheap)."""
    while True:
        yield from clipped_normal(rng, 4096).tolist()


def _resolve_sessions(plan: Plan, workload: Workload) -> list[_Session]:
    """Each planned session's profile, budget and latency overhead, prefix groups included."""
    heads: dict[str, tuple[str, tuple[str, ...]]] = {}
    for k, g in enumerate(plan.prefix_groups):
        head = g.get("prefix_session")
        if not isinstance(head, str):
            raise ValueError(f"plan.prefix_groups[{k}].prefix_session: must be a session name")
        heads[head] = (str(g.get("group", "")), tuple(members_of(g)))
    by_name = {s.session: s for s in plan.sessions}
    models = workload.models

    def base_model(i: int, model: str) -> str:
        if model in models:
            return model
        base = model[: -len(".suffix")] if model.endswith(".suffix") else None
        if base is not None and base in models and models[base].prefix is not None:
            return base
        raise ValueError(f"plan.sessions[{i}].model: {model!r} is not a model of the workload")

    out: list[_Session] = []
    for i, s in enumerate(plan.sessions):
        if s.session in heads:
            group, members = heads[s.session]
            bases = []
            for m in members:
                if m not in by_name:
                    raise ValueError(f"plan.prefix_groups: member {m!r} is not in plan.sessions")
                bases.append(base_model(i, by_name[m].model))
            if any(models[b].prefix is None for b in bases):
                raise ValueError(f"plan.prefix_groups: a member of {s.session!r} runs a model without a prefix")
            parts = [models[b].prefix.prefix for b in bases]
            prof = prefix_profile(group, parts)
            top = prof.max_batch + 1
            run = np.max([p.mean_ms[:top] for p in parts], axis=0)  # the slowest member's measured prefix
            spread = np.max([p.std_ms[:top] for p in parts], axis=0)
            budget = min(workload.budget_ms(b, by_name[m].slo_ms) for b, m in zip(bases, members, strict=True))
            out.append(_Session(s.session, i, s.slo_ms, budget / 1000.0, 0.0, prof, run, spread, members))
            continue
        base = base_model(i, s.model)
        whole = models[base].profile
        prof = whole if s.model == base else models[base].prefix.suffix
        budget = whole.budget_ms(s.slo_ms, workload.net_ms)
        overhead = whole.preprocess_ms + whole.postprocess_ms + workload.net_ms
        out.append(_Session(s.session, i, s.slo_ms, budget / 1000.0, overhead, prof, prof.mean_ms, prof.std_ms))
    return out


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


# ------------------------------------------------------------------------------------------ the GPU loops
def _duty_cycle(gpu: GpuPlan, queues: list[_Queue], prefix: dict[str, tuple[_Queue, list]], early_drop: bool,
                recs: list, draws: Iterator[float], fixed_slots: bool = False) -> None:
    """A Nexus backend: each allocation in turn forms a batch (early drop) and runs it, cycle after cycle.

    Work-conserving (the default, as the Dask backends run): a cycle starts as soon as the previous one ends and
    each turn as soon as the GPU frees. Between two turns of a session every other allocation runs at most once,
    each at most its planned batch, so a request waits at most ``sum_j l(b_j) <= d`` and the plan's
    ``d + l(b) <= L'`` still holds; when batches are smaller than planned the turns come sooner, which leaves room
    for Poisson bursts, and a burst may grow a full batch past b while its oldest request still makes its
    deadline (``burst_take``). With ``fixed_slots`` (the paper's description): a cycle starts every ``d``, each
    turn at its slot (the planned latencies before it), and batches never exceed b.

    Members of a prefix group run inside their prefix session's turn: the prefix once on all their batches, then
    each suffix on its slice.
    """
    duty = gpu.duty_cycle_ms / 1000.0
    by_session = {q.sess.name: q for q in queues}
    members_here = {m.sess.name for _, ms in prefix.values() for m in ms}
    # steps: (queue, None) for a plain session, (prefix queue, [member queues]) for a prefix unit
    # Each step has a fixed slot in the cycle, at the planned worst case of the steps before it: a session's turns
    # are then exactly d apart (a request waits at most d, then l(b): the plan's d + l(b) <= L'), however small
    # the batches ahead of it were. The GPU idles through the rest of a slot its batch did not use.
    steps = []
    slots = []
    offset = 0.0
    for a in gpu.allocations:
        if a.session in prefix:
            qp, unit = prefix[a.session]
            steps.append((qp, unit))
            slots.append(offset)
            offset += qp.lat[qp.batch] + sum(m.lat[m.batch] for m in unit)  # l_P(b) + sum_i l_Si(b_i), planned
        elif a.session not in members_here:
            q = by_session[a.session]
            steps.append((q, None))
            slots.append(offset)
            offset += q.lat[q.batch]
    steps = [(q, unit, slot) for (q, unit), slot in zip(steps, slots, strict=True)]
    real = [q for q in queues if q.sess.name not in prefix]
    remaining = sum(q.n for q in real)
    append = recs.append
    t_cycle = 0.0
    idle = True
    while remaining > 0:
        if idle:
            nxt = math.inf
            for q in real:
                if q.head < q.n and q.arr[q.head] < nxt:
                    nxt = q.arr[q.head]
            if not fixed_slots:
                t_cycle = max(t_cycle, nxt)
            elif nxt > t_cycle + duty:
                t_cycle += math.floor((nxt - t_cycle) / duty) * duty
        t = t_cycle
        idle = True
        for q, unit, slot in steps:
            slot += t_cycle
            if fixed_slots and slot > t:
                t = slot
            if unit is None:
                h = q.head
                if h >= q.n:
                    continue
                arr = q.arr
                if arr[h] > t:
                    continue
                b = q.batch
                lat = q.lat
                hi = h + b
                if hi > q.n:
                    hi = q.n
                m = bisect_right(arr, t, h, hi) - h  # min(queued, b)
                if not early_drop or arr[h] + q.budget_s >= t + lat[m]:
                    drop, take = 0, m
                    if early_drop and m == b and not fixed_slots:
                        take = burst_take(arr[h] + q.budget_s, t, bisect_right(arr, t, h) - h, b, lat)
                else:
                    w = early_drop_sorted(q.dl_np, h, bisect_right(arr, t, h), t, b, q.lat_np)
                    drop, take = w.drop, w.take
                if take:  # q.lasts(take, draws), inlined: this is the simulator's hottest line
                    sd = q.sd
                    e = t + (q.run[take] if sd is None else q.run[take] + sd[take] * next(draws))
                else:
                    e = t
                append((q.qi, drop, take, t, e))
                q.head = h + drop + take
                remaining -= drop + take
                t = e
                idle = False
                continue
            # A prefix unit: the prefix runs once on every member's batch, then each suffix on its slice. Batch
            # sizes first (as if nothing were dropped: an upper bound), so each member's early-drop decision
            # sees what really runs before its suffix: l_P(N) and the earlier suffixes' batches.
            sizes = []
            total = 0
            for mq in unit:
                h = mq.head
                m = bisect_right(mq.arr, t, h, min(mq.n, h + mq.batch)) - h if h < mq.n else 0
                sizes.append(m)
                total += m
            if not total:
                continue
            ahead = q.lat[min(total, len(q.lat) - 1)]
            formed = []
            total = 0
            for mq, m in zip(unit, sizes, strict=True):
                if not m:
                    continue
                h = mq.head
                arr = mq.arr
                if not early_drop or arr[h] + mq.budget_s >= t + ahead + mq.lat[m]:
                    drop, take = 0, m
                else:
                    w = early_drop_sorted(mq.dl_np, h, bisect_right(arr, t, h), t, mq.batch, ahead + mq.lat_np)
                    drop, take = w.drop, w.take
                formed.append((mq, drop, take))
                total += take
                ahead += mq.lat[take]
            idle = False
            cur = t
            if total:
                cur = t + q.lasts(min(total, len(q.lat) - 1), draws)
                append((q.qi, 0, total, t, cur))
            for mq, drop, take in formed:
                e = cur + mq.lasts(take, draws) if take else cur
                append((mq.qi, drop, take, cur, e))
                mq.head += drop + take
                remaining -= drop + take
                cur = e
            t = cur
        if fixed_slots:
            t_cycle = t if t > t_cycle + duty else t_cycle + duty
        else:
            t_cycle = t


def _baseline(gpu: GpuPlan, q: _Queue, recs: list, draws: Iterator[float]) -> None:
    """A dedicated-GPU baseline: one session, its own batching policy, no early drop."""
    arr, n, b, lasts = q.arr, q.n, q.batch, q.lasts
    timeout = q.alloc.batch_timeout_ms
    if gpu.batching in ("tf-serving", "triton") and (timeout is None or not timeout >= 0):
        raise ValueError(f"gpus[{gpu.id}].allocations[0].batch_timeout_ms: must be >= 0 for {gpu.batching}")
    timeout_s = (timeout or 0.0) / 1000.0
    append = recs.append
    free, h = 0.0, 0
    if gpu.batching == "tf-serving":
        while h < n:
            close, take = tf_serving_close(arr, h, b, timeout_s)
            s = close if close > free else free
            free = s + lasts(take, draws)
            append((q.qi, 0, take, s, free))
            h += take
    elif gpu.batching == "triton":
        while h < n:
            s, take = triton_dispatch(arr, h, free, b, timeout_s)
            free = s + lasts(take, draws)
            append((q.qi, 0, take, s, free))
            h += take
    else:  # clipper
        limit = 1.0
        while h < n:
            s, take = clipper_take(arr, h, free, limit)
            took = lasts(take, draws)  # Clipper adapts to the latency it observes
            free = s + took
            limit = clipper_next_limit(limit, took, s - arr[h], q.budget_s, b)
            append((q.qi, 0, take, s, free))
            h += take
    q.head = n


# ------------------------------------------------------------------------------------------ the entry point
def simulate(plan: Plan, workload: Workload, *, duration_s: float = 30.0, seed: int = 0,
             arrivals: str | Mapping[str, ArrivalSpec] = "poisson", cv: float = 2.0, early_drop: bool = True,
             trace: bool = False, warmup_s: float = 1.0, rates: Mapping[str, float] | None = None,
             fixed_slots: bool = False, batch_latency: str = "measured") -> SimResult:
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
    ``fixed_slots=True`` it runs the paper's fixed cycle instead (see ``_duty_cycle``). After
    ``duration_s`` no more requests arrive and the queues drain, so every request ends served or dropped; metrics
    count the requests arriving in ``[warmup_s, duration_s)``.

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
    if not (math.isfinite(cv) and cv > 0):
        raise ValueError(f"cv: must be a finite number > 0, got {cv!r}")
    if batch_latency not in BATCH_LATENCIES:
        raise ValueError(f"batch_latency: must be one of {list(BATCH_LATENCIES)}, got {batch_latency!r}")
    measured = batch_latency == "measured"
    sessions = _resolve_sessions(plan, workload)
    names = [s.name for s in sessions]
    if len(set(names)) != len(names):
        raise ValueError("plan.sessions: session names must be unique")
    index = {s.name: s for s in sessions}
    offered = {s.session: float(s.rate) for s in plan.sessions}
    for name, r in (rates or {}).items():
        if name not in offered:
            raise ValueError(f"rates: unknown session {name!r}; planned sessions: {names}")
        if not (isinstance(r, (int, float)) and math.isfinite(r) and r >= 0):
            raise ValueError(f"rates[{name!r}]: must be a finite number >= 0, got {r!r}")
        offered[name] = float(r)
    specs = _arrival_specs(arrivals, cv, names)
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
    queues: list[_Queue] = []
    unrouted: list[tuple[int, np.ndarray]] = []
    by_gpu: dict[int, list[_Queue]] = {g.id: [] for g in plan.gpus}
    for s in sessions:
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
            q = _Queue(len(queues), s, g.id, a, arr[target == k], measured)
            queues.append(q)
            by_gpu[g.id].append(q)

    recs: list[tuple[int, int, int, float, float]] = []
    for k, g in enumerate(plan.gpus):
        qs = by_gpu[g.id]
        draws = _normal_draws(np.random.default_rng([int(seed), _DEVICE_STREAM, k]))
        if g.batching != "duty-cycle":
            _baseline(g, qs[0], recs, draws)
            continue
        here = {q.sess.name: q for q in qs}
        prefix: dict[str, tuple[_Queue, list]] = {}
        for name, q in here.items():
            members = [here[m] for m in index[name].members if m in here]
            if not index[name].members:
                continue
            prefix[name] = (q, members)
        _duty_cycle(g, qs, prefix, early_drop, recs, draws, fixed_slots)

    res = _metrics(plan, sessions, queues, unrouted, recs, float(duration_s), float(warmup_s), trace)
    return dataclasses.replace(res, batch_latency=batch_latency)


def _metrics(plan: Plan, sessions: list[_Session], queues: list[_Queue], unrouted: list[tuple[int, np.ndarray]],
             recs: list, duration_s: float, warmup_s: float, want_trace: bool) -> SimResult:
    """Per-request outcomes from the batch records, then every metric, vectorised."""
    S = len(sessions)
    w0, w1 = warmup_s, duration_s
    window = w1 - w0
    rec = np.array(recs, dtype=np.float64).reshape(-1, 5)
    qi = rec[:, 0].astype(np.int64)
    drop = rec[:, 1].astype(np.int64)
    take = rec[:, 2].astype(np.int64)
    start, end = rec[:, 3], rec[:, 4]
    q_sess = np.array([q.sess.index for q in queues], dtype=np.int64)
    q_gpu = np.array([q.gpu for q in queues], dtype=np.int64)
    q_prefix = np.array([bool(q.sess.members) for q in queues], dtype=bool)

    # Each queue's records cover its requests in order: [drop_k dropped][take_k served at end_k], k = 1, 2, ...
    real = ~q_prefix[qi] if len(queues) else np.zeros(0, dtype=bool)
    order = np.argsort(qi[real], kind="stable")
    d_r, t_r, e_r = drop[real][order], take[real][order], end[real][order]
    lens = np.column_stack([d_r, t_r]).ravel()
    finish = np.repeat(np.column_stack([np.full(len(e_r), np.nan), e_r]).ravel(), lens)
    arrival = np.concatenate([q.arr_np for q in queues]) if queues else np.empty(0)
    sess = np.repeat(q_sess, [q.n for q in queues]) if queues else np.empty(0, dtype=np.int64)
    if len(finish) != len(arrival):  # pragma: no cover - an engine bug, never bad input
        raise AssertionError(f"simulator: {len(finish)} outcomes for {len(arrival)} requests")
    overhead = np.array([s.overhead_ms for s in sessions])
    slo = np.array([s.slo_ms for s in sessions])
    latency = (finish - arrival) * 1000.0 + overhead[sess]
    ok = latency <= slo[sess] + 1e-6  # NaN (dropped) compares False
    dropped = np.isnan(finish)
    win = (arrival >= w0) & (arrival < w1)
    requests = np.bincount(sess[win], minlength=S)
    served = np.bincount(sess[win & ~dropped], minlength=S)
    within = np.bincount(sess[win & ok], minlength=S)
    deadline = np.bincount(sess[win & dropped], minlength=S)
    no_route = np.zeros(S, dtype=np.int64)
    for i, arr in unrouted:
        no_route[i] = int(np.count_nonzero((arr >= w0) & (arr < w1)))
    requests = requests + no_route

    # Percentiles: served in-window latencies, grouped by session (sess is non-decreasing).
    sel = win & ~dropped
    lat_sel, sess_sel = latency[sel], sess[sel]
    bounds = np.searchsorted(sess_sel, np.arange(S + 1), side="left")

    # Batches that start in the window: histograms per session, counts per GPU; busy time clipped to it.
    ran = take > 0
    in_w = ran & (start >= w0) & (start < w1)
    rec_sess = q_sess[qi] if len(qi) else np.empty(0, dtype=np.int64)
    rec_gpu = q_gpu[qi] if len(qi) else np.empty(0, dtype=np.int64)
    hist_keys, hist_counts = np.unique(np.column_stack([rec_sess[in_w], take[in_w]]), axis=0, return_counts=True)
    hists: list[dict[int, int]] = [{} for _ in range(S)]
    for (si, b), c in zip(hist_keys.tolist(), hist_counts.tolist(), strict=True):
        hists[si][int(b)] = int(c)
    gpu_ids = [g.id for g in plan.gpus]
    pos = {g: k for k, g in enumerate(gpu_ids)}
    rec_gpos = np.array([pos[g] for g in rec_gpu.tolist()], dtype=np.int64) if len(rec_gpu) else rec_gpu
    busy = np.bincount(rec_gpos[ran], weights=(np.clip(end, w0, w1) - np.clip(start, w0, w1))[ran],
                       minlength=len(gpu_ids))
    nbatch = np.bincount(rec_gpos[in_w], minlength=len(gpu_ids))

    out_sessions: dict[str, SessionMetrics] = {}
    for s in sessions:
        i = s.index
        lat_i = lat_sel[bounds[i]:bounds[i + 1]]
        p50, p99 = (float(x) for x in np.percentile(lat_i, [50, 99])) if len(lat_i) else (None, None)
        drops = dict.fromkeys(ALL_REASONS, 0)
        drops[DropReason.DEADLINE] = int(deadline[i])
        drops[DropReason.NO_ROUTE] = int(no_route[i])
        n = int(requests[i])
        out_sessions[s.name] = SessionMetrics(
            offered_rate=n / window, goodput=int(within[i]) / window,
            slo_attainment=int(within[i]) / n if n else 1.0, requests=n, served=int(served[i]),
            within_slo=int(within[i]), drops=drops, latency_p50_ms=p50, latency_p99_ms=p99,
            batch_hist=dict(sorted(hists[i].items())))
    gpus = {g: GpuMetrics(utilization=min(1.0, float(busy[k]) / window), batches=int(nbatch[k]))
            for k, g in enumerate(gpu_ids)}
    total_req = int(requests.sum())
    total_drops = dict.fromkeys(ALL_REASONS, 0)
    total_drops[DropReason.DEADLINE] = int(deadline.sum())
    total_drops[DropReason.NO_ROUTE] = int(no_route.sum())
    totals = Totals(offered_rate=total_req / window, goodput=int(within.sum()) / window,
                    slo_attainment=int(within.sum()) / total_req if total_req else 1.0, drops=total_drops)
    batch_trace = None
    if want_trace:
        idx = np.flatnonzero(ran)
        idx = idx[np.lexsort((rec_gpu[idx], start[idx]))]
        names = [s.name for s in sessions]
        batch_trace = [BatchRecord(int(rec_gpu[k]), names[int(rec_sess[k])], float(start[k]), float(end[k]),
                                   int(take[k])) for k in idx.tolist()]
    simulated = len(arrival) + sum(len(a) for _, a in unrouted)
    return SimResult(duration_s=duration_s, sessions=out_sessions, gpus=gpus, totals=totals, trace=batch_trace,
                     simulated_requests=simulated)
