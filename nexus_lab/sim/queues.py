"""The simulator's view of a plan's sessions and of one session's queue on one GPU.

A queue is an index range over the session's sorted arrival times on that GPU; its numbers come from the profile
(planned ``l(b)`` for decisions, measured mean and std for how long a batch really lasts). A query stage's queue
also knows each request's frame, and a non-root stage's queue grows as its parents' batches end (``dynamic``).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..batching import FLOOR_SLACK, Window, batch_floor, burst_limit, early_drop_sorted, early_drop_window, floor_hold_s
from ..planner.plan import Allocation, Plan
from ..planner.prefix import members_of, prefix_profile
from ..profiles import ModelProfile, clipped_normal, device_spread
from ..workload import Workload

__all__ = ["Queue", "Session", "drop_window", "normal_draws", "resolve_sessions"]


@dataclass(frozen=True, eq=False)
class Session:
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


class Queue:
    """One session's queue on one GPU: an index range ``[head, n)`` over its sorted arrivals."""

    __slots__ = (
        "alloc",
        "arr",
        "arr_np",
        "batch",
        "budget_s",
        "burst_lat",
        "dag",
        "dl",
        "dl_np",
        "dynamic",
        "floor",
        "frames",
        "gpu",
        "head",
        "hold",
        "lat",
        "lat_np",
        "n",
        "qi",
        "run",
        "sd",
        "sess",
    )

    def __init__(self, qi: int, sess: Session, gpu: int, alloc: Allocation, arrivals: np.ndarray,
                 measured: bool, budget_s: float | None = None, frames: list[int] | None = None,
                 dynamic: bool = False) -> None:
        self.qi, self.sess, self.gpu, self.alloc = qi, sess, gpu, alloc
        self.arr_np = arrivals
        self.arr = arrivals.tolist()
        self.n = len(self.arr)
        self.head = 0
        # Device deadlines: arrival + L' for a session (a query's root stage: what its frames' deadline leaves it);
        # a dynamic queue (a query's inner stage: requests appended as the simulation runs) keeps each one in
        # ``dl``, from its frame's birth (``querytime``), so they need not be sorted.
        self.budget_s = sess.budget_s if budget_s is None else budget_s
        self.dl_np = arrivals + self.budget_s
        self.dl: list[float] = []
        self.frames = frames  # a query stage's: the frame of each request
        self.dynamic = dynamic
        self.dag: Any = None  # the query run told of each batch (``dag.QueryRun.batch``), None for a session
        self.lat_np = sess.profile.lat_ms / 1000.0
        self.lat = self.lat_np.tolist()
        self.batch = min(int(alloc.batch), sess.profile.max_batch)
        # a burst grows a full batch within the limit the backends use (``burst_take`` reads the table's length)
        self.burst_lat = self.lat[: burst_limit(self.batch, sess.profile.max_batch) + 1]
        self.floor, self.hold = 1, 0.0  # no batch floor unless ``set_floor``
        # Decisions (early drop, burst growth) use the planned l(b) in ``lat``; a batch lasts ``run[b]`` plus
        # ``sd[b]`` times a clipped normal draw (``sd`` is None when there is no spread to draw).
        if measured:
            self.run = (sess.run_ms / 1000.0).tolist()
            spread = device_spread(sess.run_ms, sess.run_std_ms) / 1000.0
            self.sd = spread.tolist() if np.any(spread > 0) else None
        else:
            self.run, self.sd = self.lat, None

    def set_floor(self, duty_s: float) -> None:
        """Hold batches below their floor as a host-CPU backend does (``batching.batch_floor``)."""
        self.floor = batch_floor(self.lat_np, self.batch, FLOOR_SLACK)
        self.hold = floor_hold_s(self.lat_np, self.floor, duty_s)

    def lasts(self, batch: int, draws: Iterator[float]) -> float:
        """How long a batch of ``batch`` runs on the device, in seconds."""
        sd = self.sd
        if sd is None or not sd[batch]:
            return self.run[batch]
        return self.run[batch] + sd[batch] * next(draws)


def drop_window(q: Queue, h: int, t: float, batch: int, lat_s: np.ndarray) -> Window:
    """Early drop at the head ``h`` of ``q`` at time ``t`` over the requests arrived by then: binary search when
    deadlines are sorted (one session's), the shared scan when not (a query stage's, from frames of several ages)."""
    end = bisect_right(q.arr, t, h)
    if not q.dynamic:
        return early_drop_sorted(q.dl_np, h, end, t, batch, lat_s)
    return early_drop_window(_Upto(q.dl, end), t, batch, lat_s, start=h)


class _Upto:
    """The first ``n`` items of a list, without a copy (what ``early_drop_window`` reads)."""

    __slots__ = ("items", "n")

    def __init__(self, items: list[float], n: int) -> None:
        self.items, self.n = items, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> float:
        return self.items[i]


def normal_draws(rng: np.random.Generator) -> Iterator[float]:
    """``clipped_normal`` draws generated in blocks (one ``next`` per batch stays cheap)."""
    while True:
        yield from clipped_normal(rng, 4096).tolist()


def resolve_sessions(plan: Plan, workload: Workload) -> list[Session]:
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

    out: list[Session] = []
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
            out.append(Session(s.session, i, s.slo_ms, budget / 1000.0, 0.0, prof, run, spread, members))
            continue
        base = base_model(i, s.model)
        whole = models[base].profile
        prof = whole if s.model == base else models[base].prefix.suffix
        budget = whole.budget_ms(s.slo_ms, workload.net_ms)
        overhead = whole.preprocess_ms + whole.postprocess_ms + workload.net_ms
        out.append(Session(s.session, i, s.slo_ms, budget / 1000.0, overhead, prof, prof.mean_ms, prof.std_ms))
    return out
