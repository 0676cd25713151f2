"""Queries as DAGs in virtual time: frames, fan-out, joins, end-to-end deadlines, and the GPUs advanced together.

A query's frames arrive at its rate (``arrivals.generate``, seeded by the query's name). Each root stage gets one
request per frame. When a request's batch ends its result is back ``overhead`` later (the stage's pre- and
post-processing and network, as the simulator counts them for sessions), and then every child stage with one
parent gets Poisson(gamma) requests of that frame (mean gamma; numpy's generator seeded by ``seed`` and the
stage's session name). A join (several parents) waits until every request of its parents for that frame has
ended, then gets Poisson(gamma * the parents' items) requests. Every request of stage ``s`` of a frame born at
``t0`` has the end-to-end deadline of ``querytime.stage_offsets`` (the runtime's rule), and the device deadline
that less the stage's overhead: early drop uses it. A dropped request ends its frame (nothing more is spawned for
it; requests already queued still run). Children go to their stage's GPUs by ``routing.StrideRouter``.

Conservative discrete-event simulation: each GPU is a generator of decision times (``gpu.py``); one heap orders
the GPUs' wake-ups and the deliveries of results (deliveries first at equal times), so a GPU decides at ``t``
only once every batch that ends by ``t`` has delivered its children.
"""

from __future__ import annotations

import heapq
import itertools
import math
import zlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import numpy as np

from ..arrivals import ArrivalSpec, generate
from ..batching import ALL_REASONS, DropReason
from ..querytime import stage_offsets
from .metrics import QueryMetrics
from .queues import Queue, Session
from .routing import StrideRouter, weighted_round_robin

if TYPE_CHECKING:
    from ..planner.plan import Allocation, GpuPlan, Plan, QueryPlan
    from ..workload import QuerySpec, Workload
    from .gpu import GpuLoop

__all__ = ["QueryRun"]

_FANOUT = zlib.crc32(b"fanout")  # seeds the fan-out draws apart from the arrivals and the device


class _Query:
    """One planned query, compiled: stages in topological order with their parents, children and timings."""

    def __init__(self, spec: QuerySpec, qplan: QueryPlan, workload: Workload, seed: int) -> None:
        from ..workload import stage_session, topological

        budgets = {st.name: st.budget_ms for st in qplan.stages}
        order = topological(spec.stages)
        for st in order:
            if st.name not in budgets:
                raise ValueError(f"plan.queries[{spec.name!r}].stages: no budget for stage {st.name!r}")
        self.name, self.slo_s = spec.name, float(qplan.slo_ms) / 1000.0
        self.names = [st.name for st in order]
        pos = {n: i for i, n in enumerate(self.names)}
        self.sessions = [stage_session(spec.name, n) for n in self.names]
        self.parents = [tuple(pos[p] for p in st.parents) for st in order]
        self.gamma = [float(st.gamma) for st in order]
        self.kids = [[c for c in range(len(order)) if self.parents[c] == (i,)] for i in range(len(order))]
        self.joins = any(len(ps) > 1 for ps in self.parents)
        self.roots = [i for i, ps in enumerate(self.parents) if not ps]
        off = stage_offsets([(st.name, st.parents, budgets[st.name] / 1000.0) for st in order], self.slo_s)
        prof = [workload.profile(st.model) for st in order]
        self.overhead_s = [(p.preprocess_ms + p.postprocess_ms + workload.net_ms) / 1000.0 for p in prof]
        self.device_off = [off[n] - o for n, o in zip(self.names, self.overhead_s, strict=True)]
        rngs = [np.random.default_rng([int(seed), _FANOUT, zlib.crc32(s.encode())]) for s in self.sessions]
        self.rng = rngs
        self.fanout = [_poisson_draws(r, g) for r, g in zip(rngs, self.gamma, strict=True)]
        self.queues: list[list[Queue]] = [[] for _ in order]
        self.routers: list[StrideRouter | None] = [None] * len(order)
        self.unrouted: list[list[float]] = [[] for _ in order]
        self.built = [False] * len(order)  # the plan has the stage's session (and ``QueryRun.queues`` ran for it)
        self.born: tuple[int, np.ndarray] = (0, np.empty(0))  # the first frame's id and every frame's birth time


class _Frame:
    __slots__ = ("dead", "dead_at", "items", "last", "out", "pend", "q", "reason", "spawned", "t0")

    def __init__(self, q: _Query, t0: float) -> None:
        self.q, self.t0, self.last, self.dead, self.dead_at, self.reason = q, t0, t0, -1, math.inf, ""
        self.pend = [1 if not ps else 0 for ps in q.parents]  # requests of each stage not yet ended
        self.items = list(self.pend)  # requests of each stage so far
        self.spawned = [not ps for ps in q.parents] if q.joins else None
        self.out = len(q.roots)


def _poisson_draws(rng: np.random.Generator, lam: float) -> Iterator[int]:
    while True:
        yield from rng.poisson(lam, 4096).tolist()


class QueryRun:
    """The planned queries of one ``simulate`` call: builds their stages' queues, is told of each of their
    batches (``batch``), runs the GPUs together (``run``) and sums the frames up (``metrics``)."""

    def __init__(self, plan: Plan, workload: Workload, offered: Mapping[str, float], rates: Mapping[str, float],
                 specs: Mapping[str, ArrivalSpec], seed: int, duration_s: float) -> None:
        by_name = {q.name: q for q in workload.queries}
        self.queries: list[_Query] = []
        self.stage_of: dict[str, tuple[_Query, int]] = {}
        self.frames: list[_Frame] = []
        for k, qp in enumerate(plan.queries):
            if qp.name not in by_name:
                raise ValueError(f"plan.queries[{k}].name: {qp.name!r} is not a query of the workload")
            q = _Query(by_name[qp.name], qp, workload, seed)
            self.queries.append(q)
            for i, s in enumerate(q.sessions):
                self.stage_of[s] = (q, i)
            root = q.sessions[q.roots[0]]
            rate = rates.get(q.name, offered.get(root, by_name[qp.name].rate * q.gamma[q.roots[0]]) /
                             q.gamma[q.roots[0]])
            sp = specs.get(q.name, specs.get(root, ArrivalSpec()))
            rng = np.random.default_rng([int(seed), zlib.crc32(q.name.encode())])
            t0 = generate(sp.kind, float(rate), float(duration_s), rng, cv=sp.cv, trace=sp.trace)
            first = len(self.frames)
            self.frames.extend(_Frame(q, t) for t in t0.tolist())
            q.born = (first, t0)
        self.heap: list[tuple] = []
        self.seq = itertools.count()
        self.wake: list[float] = []
        self.ver: list[int] = []
        self.gpu_pos: dict[int, int] = {}

    # ------------------------------------------------------------------------------------------ queues
    def queues(self, s: Session, routes: list[tuple[GpuPlan, Allocation]], first_qi: int,
               measured: bool) -> list[Queue]:
        """The queues of one stage's session: a root's hold its frames' requests from the start, another's fill
        as its parents' batches end. A stage without a GPU drops its requests (``no_route``)."""
        q, i = self.stage_of[s.name]
        q.built[i] = True
        first, t0 = q.born
        ids = np.arange(first, first + len(t0))
        out: list[Queue] = []
        if q.parents[i]:
            for k, (g, a) in enumerate(routes):
                out.append(Queue(first_qi + k, s, g.id, a, np.empty(0), measured, frames=[], dynamic=True))
            if routes:
                q.routers[i] = StrideRouter([a.rate for _, a in routes])
        elif routes:
            target = weighted_round_robin(len(t0), [a.rate for _, a in routes])
            for k, (g, a) in enumerate(routes):
                sel = target == k
                out.append(Queue(first_qi + k, s, g.id, a, t0[sel], measured, budget_s=q.device_off[i],
                                 frames=ids[sel].tolist()))
        else:
            q.unrouted[i].extend(t0.tolist())
            for fid, t in zip(ids.tolist(), t0.tolist(), strict=True):
                self._dropped(fid, i, DropReason.NO_ROUTE, t)
        for qu in out:
            qu.dag = self
        q.queues[i] = out
        return out

    def unrouted(self, index: Mapping[str, Session]) -> list[tuple[int, np.ndarray]]:
        """Per planned stage session without a GPU, the arrival times of its requests (for its drop counts)."""
        return [(index[s].index, np.asarray(q.unrouted[i])) for q in self.queries
                for i, s in enumerate(q.sessions) if q.unrouted[i] and s in index]

    # ------------------------------------------------------------------------------------------ events
    def batch(self, qu: Queue, h: int, drop: int, take: int, t: float, e: float) -> None:
        """A GPU ran a batch of ``qu`` from ``t`` to ``e`` after dropping ``drop`` requests at ``t``."""
        q, i = self.stage_of[qu.sess.name]
        frames = qu.frames
        for k in range(h, h + drop):
            self._dropped(frames[k], i, DropReason.DEADLINE, t)
        if take:
            heapq.heappush(self.heap, (e + q.overhead_s[i], 0, next(self.seq), q, i, frames[h + drop:h + drop + take]))

    def _dropped(self, fid: int, i: int, reason: str, at: float) -> None:
        """A request of stage ``i`` of frame ``fid`` was dropped at ``at``: the frame ends then. (A GPU that needs
        no deliveries runs ahead of the others, so an earlier drop may be told later: the earliest counts.)"""
        f = self.frames[fid]
        f.out -= 1
        f.pend[i] -= 1
        if at < f.dead_at:
            f.dead, f.dead_at, f.reason = i, at, reason

    def _ended(self, q: _Query, i: int, fid: int, c: float) -> None:
        """A request of stage ``i`` of frame ``fid`` is back at ``c``: spawn what it feeds."""
        f = self.frames[fid]
        f.out -= 1
        f.pend[i] -= 1
        if c > f.last:
            f.last = c
        if f.dead_at <= c:  # ended by a drop before this result came back: nothing more is spawned
            return
        for k in q.kids[i]:
            n = next(q.fanout[k])
            if n:
                self._send(q, k, fid, f, c, n)
        if q.joins:
            self._joins(q, fid, f, c)

    def _joins(self, q: _Query, fid: int, f: _Frame, c: float) -> None:
        """Start every join whose parents have all ended for this frame (parents first, so joins of joins too)."""
        done = [False] * len(q.names)
        for i, ps in enumerate(q.parents):
            if len(ps) > 1:
                if not f.spawned[i] and all(done[p] for p in ps):
                    f.spawned[i] = True
                    n = int(q.rng[i].poisson(q.gamma[i] * sum(f.items[p] for p in ps)))
                    if n:
                        self._send(q, i, fid, f, c, n)
                    if f.dead_at <= c:
                        return
                done[i] = f.spawned[i] and f.pend[i] == 0
            else:
                done[i] = f.pend[i] == 0 and (not ps or done[ps[0]])

    def _send(self, q: _Query, i: int, fid: int, f: _Frame, c: float, n: int) -> None:
        f.pend[i] += n
        f.items[i] += n
        f.out += n
        router = q.routers[i]
        if router is None:
            q.unrouted[i].extend([c] * n)
            for _ in range(n):
                self._dropped(fid, i, DropReason.NO_ROUTE, c)
            return
        dl = f.t0 + q.device_off[i]
        qs = q.queues[i]
        for _ in range(n):
            qu = qs[router()]
            qu.arr.append(c)
            qu.dl.append(dl)
            qu.frames.append(fid)
            qu.n += 1
            g = self.gpu_pos[qu.gpu]
            if c < self.wake[g]:
                self._schedule(g, c)

    def _schedule(self, g: int, t: float) -> None:
        self.wake[g] = t
        self.ver[g] += 1
        heapq.heappush(self.heap, (t, 1, next(self.seq), g, self.ver[g]))

    # ------------------------------------------------------------------------------------------ the run
    def run(self, gpu_loops: list[tuple[int, GpuLoop]]) -> None:
        """Advance the GPUs that wait for deliveries (``(gpu id, loop)``) in time order until none has work and
        no result is on its way. The other GPUs have run already: their batches' results are in the heap."""
        for q in self.queries:  # a root stage the plan lacks (an unserved query): its frames end at once
            first, t0 = q.born
            for i in q.roots:
                if not q.built[i]:
                    for fid, t in zip(range(first, first + len(t0)), t0.tolist(), strict=True):
                        self._dropped(fid, i, DropReason.NO_ROUTE, t)
        self.gpu_pos = {gid: k for k, (gid, _) in enumerate(gpu_loops)}
        loops = [loop for _, loop in gpu_loops]
        self.wake = [math.inf] * len(loops)
        self.ver = [0] * len(loops)
        for k, loop in enumerate(loops):
            self._resume(k, loop, None)
        heap = self.heap
        while heap:
            item = heapq.heappop(heap)
            if item[1] == 0:
                c, _, _, q, i, fids = item
                for fid in fids:
                    self._ended(q, i, fid, c)
            elif item[4] == self.ver[item[3]]:
                self._resume(item[3], loops[item[3]], item[0])
        for loop in loops:
            loop.close()
        for q in self.queries:
            for qs in q.queues:
                for qu in qs:
                    if qu.head != qu.n:  # pragma: no cover - an engine bug, never bad input
                        raise AssertionError(f"simulator: {qu.n - qu.head} requests of {qu.sess.name} never ran")
                    qu.arr_np = np.asarray(qu.arr, dtype=np.float64)

    def _resume(self, k: int, loop: GpuLoop, now: float | None) -> None:
        try:
            w = next(loop) if now is None else loop.send(now)
        except StopIteration:
            w = math.inf
        self.wake[k] = w
        self.ver[k] += 1
        if w < math.inf:
            heapq.heappush(self.heap, (w, 1, next(self.seq), k, self.ver[k]))

    # ------------------------------------------------------------------------------------------ results
    def metrics(self, warmup_s: float, duration_s: float) -> dict[str, QueryMetrics]:
        """Each query's frames born in ``[warmup_s, duration_s)``, end to end."""
        window = duration_s - warmup_s
        out: dict[str, QueryMetrics] = {}
        for q in self.queries:
            first, t0 = q.born
            frames = [f for f in self.frames[first:first + len(t0)] if warmup_s <= f.t0 < duration_s]
            whole = [f for f in frames if f.dead < 0]
            lat = np.array([(f.last - f.t0) * 1000.0 for f in whole])
            good = sum(1 for f in whole if f.last <= f.t0 + q.slo_s + 1e-9)
            p50, p99 = (float(x) for x in np.percentile(lat, [50, 99])) if len(lat) else (None, None)
            drops = dict.fromkeys(q.names, 0)
            reasons = dict.fromkeys(ALL_REASONS, 0)
            for f in frames:
                if f.dead >= 0:
                    drops[q.names[f.dead]] += 1
                    reasons[f.reason] += 1
            n = len(frames)
            out[q.name] = QueryMetrics(offered_rate=n / window, frames=n, good=good, goodput=good / window,
                                       attainment=good / n if n else 1.0, latency_p50_ms=p50, latency_p99_ms=p99,
                                       drops=drops, drop_reasons=reasons)
        return out
