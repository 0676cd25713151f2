"""The simulator's GPUs: a Nexus duty cycle (work-conserving or the paper's fixed cycle) and the dedicated-GPU
baselines, each an event loop over its own queues that appends one record per batch.

The batching decisions are ``nexus_lab.batching``'s, the ones the runtime's backends call: early drop, burst
growth within ``burst_limit``, prefix-unit forming and the batch floor.

Each GPU is a generator. When all its queues' arrivals are known up front (sessions, query roots: ``dag=False``)
it never yields: it runs them to the end at once. A GPU that holds a query's inner stage (``dag=True``) gets
requests as batches end on other GPUs, so it yields the virtual time of its next decision and is resumed
(``send(now)``) by ``dag.QueryRun.run`` once every GPU has caught up to that time, or earlier when a request is
delivered to one of its queues; it decides only on what has arrived by then.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Generator, Iterator

from ..batching import (
    Window,
    burst_take,
    clipper_next_limit,
    clipper_take,
    form_prefix_unit,
    held_until,
    tf_serving_close,
    triton_dispatch,
)
from ..planner.plan import GpuPlan
from .queues import Queue, drop_window

__all__ = ["baseline", "duty_cycle"]


#: What a GPU generator yields (the time it next decides at) and is sent (the simulation's time when resumed).
GpuLoop = Generator[float, float, None]


def duty_cycle(gpu: GpuPlan, queues: list[Queue], prefix: dict[str, tuple[Queue, list]], early_drop: bool,
               recs: list, draws: Iterator[float], fixed_slots: bool = False, dag: bool = False) -> GpuLoop:
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
    # with DAGs a step waits for the other GPUs only when its queues grow as they run (a query's inner stage)
    steps = [(q, unit, slot, dag and (q.dynamic if unit is None else any(m.dynamic for m in unit)))
             for (q, unit), slot in zip(steps, slots, strict=True)]
    real = [q for q in queues if q.sess.name not in prefix]
    remaining = sum(q.n for q in real) if not dag else math.inf  # with DAGs more requests keep coming
    now = 0.0  # the simulation's time (DAGs only): everything that arrives by ``now`` is in the queues
    append = recs.append
    t_cycle = 0.0
    idle = True
    hold_next = math.inf  # the earliest time a batch held below its floor must run (``Queue.set_floor``)
    while remaining > 0:
        if idle:
            nxt = hold_next
            for q in real:
                if q.head < q.n:
                    a = q.arr[q.head]
                    if a <= t_cycle and hold_next < math.inf:  # held: its next arrival may bring company
                        k = bisect_right(q.arr, t_cycle, q.head)
                        a = q.arr[k] if k < q.n else math.inf
                    if a < nxt:
                        nxt = a
            if dag and nxt > now:
                now = yield nxt  # until then, or until a request is delivered here
                continue
            hold_next = math.inf
            if not fixed_slots:
                t_cycle = max(t_cycle, nxt)
            elif nxt > t_cycle + duty:
                t_cycle += math.floor((nxt - t_cycle) / duty) * duty
        t = t_cycle
        idle = True
        for q, unit, slot, sync in steps:
            slot += t_cycle
            if fixed_slots and slot > t:
                t = slot
            while sync and now < t:  # let the other GPUs catch up: their batches may deliver requests by t
                now = yield t
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
                if not early_drop or (q.dl[h] if q.dynamic else arr[h] + q.budget_s) >= t + lat[m]:
                    drop, take = 0, m
                else:
                    w = drop_window(q, h, t, b, q.lat_np)
                    drop, take = w.drop, w.take
                if q.floor > 1:
                    until = held_until(take, q.floor, arr[h + drop], q.hold)
                    if until is not None and t < until:  # wait for company, as a host-CPU backend does
                        if until < hold_next:
                            hold_next = until
                        if not drop:
                            continue
                        take = 0
                if early_drop and take == b and not fixed_slots:  # a burst: grow while the head makes it
                    hd = h + drop
                    head = q.dl[hd] if q.dynamic else arr[hd] + q.budget_s
                    take = burst_take(head, t, bisect_right(arr, t, hd) - hd, b, q.burst_lat)
                if take:  # q.lasts(take, draws), inlined: this is the simulator's hottest line
                    sd = q.sd
                    e = t + (q.run[take] if sd is None else q.run[take] + sd[take] * next(draws))
                else:
                    e = t
                append((q.qi, drop, take, t, e))
                q.head = h + drop + take
                if q.dag is not None:
                    q.dag.batch(q, h, drop, take, t, e)
                remaining -= drop + take
                t = e
                idle = False
                continue
            formed = _form_prefix(q, unit, t, early_drop)
            if formed is None:
                continue
            idle = False
            cur = t
            total = sum(take for _, _, take in formed)
            if total:
                cur = t + q.lasts(min(total, len(q.lat) - 1), draws)
                append((q.qi, 0, total, t, cur))
            for mq, drop, take in formed:
                e = cur + mq.lasts(take, draws) if take else cur
                append((mq.qi, drop, take, cur, e))
                mq.head += drop + take
                if mq.dag is not None:
                    mq.dag.batch(mq, mq.head - drop - take, drop, take, cur, e)
                remaining -= drop + take
                cur = e
            t = cur
        if fixed_slots:
            t_cycle = t if t > t_cycle + duty else t_cycle + duty
        else:
            t_cycle = t


def _form_prefix(q: Queue, unit: list[Queue], t: float, early_drop: bool) -> list[tuple[Queue, int, int]] | None:
    """A prefix unit's batches at ``t`` (``batching.form_prefix_unit``, as the backends form them): each
    arrived member's ``(queue, dropped, taken)``; None when no member has arrived."""
    heads = [mq.head for mq in unit]
    queued = [bisect_right(mq.arr, t, h, min(mq.n, h + mq.batch)) - h if h < mq.n else 0
              for mq, h in zip(unit, heads, strict=True)]

    def member(i: int, ahead: float, suffix: list[float]) -> Window:
        mq, h, m = unit[i], heads[i], queued[i]
        if not early_drop or (mq.dl[h] if mq.dynamic else mq.arr[h] + mq.budget_s) >= t + ahead + suffix[m]:
            return Window(0, m)
        return drop_window(mq, h, t, mq.batch, ahead + mq.lat_np)

    windows, _ = form_prefix_unit(queued, [mq.batch for mq in unit], q.lat, [mq.lat for mq in unit], member)
    if not windows:
        return None
    return [(mq, w.drop, w.take) for mq, w, m in zip(unit, windows, queued, strict=True) if m]


def baseline(gpu: GpuPlan, q: Queue, recs: list, draws: Iterator[float], dag: bool = False) -> GpuLoop:
    """A dedicated-GPU baseline: one session, its own batching policy, no early drop.

    A policy's decision at time ``s`` depends only on the arrivals by ``s``, so with DAGs a decision past the
    simulation's time on a growing queue waits (yields) until then, and is taken again with what has arrived."""
    arr, b, lasts = q.arr, q.batch, q.lasts
    timeout = q.alloc.batch_timeout_ms
    if gpu.batching in ("tf-serving", "triton") and (timeout is None or not timeout >= 0):
        raise ValueError(f"gpus[{gpu.id}].allocations[0].batch_timeout_ms: must be >= 0 for {gpu.batching}")
    timeout_s = (timeout or 0.0) / 1000.0
    append = recs.append
    policy = gpu.batching
    wait = dag and q.dynamic  # a static queue's arrivals are all known: its decisions never wait
    free, h, now, limit = 0.0, 0, 0.0, 1.0
    while True:
        if h >= q.n:
            if not dag:
                break
            now = yield math.inf  # until a request is delivered here
            continue
        if policy == "tf-serving":
            decided, take = tf_serving_close(arr, h, b, timeout_s)
            s = decided if decided > free else free
        elif policy == "triton":
            s, take = triton_dispatch(arr, h, free, b, timeout_s)
            decided = s
        else:  # clipper
            s, take = clipper_take(arr, h, free, limit)
            decided = s
        if wait and decided > now:
            now = yield decided
            continue
        took = lasts(take, draws)
        free = s + took
        if policy == "clipper":  # Clipper adapts to the latency it observes
            budget = q.budget_s if not q.dynamic else q.dl[h] - arr[h]
            limit = clipper_next_limit(limit, took, s - arr[h], budget, b)
        append((q.qi, 0, take, s, free))
        if q.dag is not None:
            q.dag.batch(q, h, 0, take, s, free)
        h += take
        q.head = h
