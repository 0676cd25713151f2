"""Squishy bin packing (Nexus, SOSP 2019, section 6.1): sessions to GPUs with a batch size and duty cycle each.

Pure and deterministic; the inner loops are vectorised with numpy over all open GPUs, so 1,000 sessions plan in
well under a second. No Dask, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..profiles import ModelProfile
from .plan import Allocation, GpuPlan, PlannedSession, Unserved

_EPS = 1e-9


@dataclass(frozen=True, eq=False)
class Demand:
    """One unit to pack: a session, the profile it runs with and its device budget ``L'`` in ms."""

    session: PlannedSession
    profile: ModelProfile
    budget_ms: float


@dataclass(frozen=True)
class Residual:
    """The part of a session's rate that does not fill a whole GPU, alone on a GPU of duty cycle ``duty_ms``."""

    index: int  # position in the demands
    rate: float  # r, requests per second
    batch: int  # b
    duty_ms: float  # d
    latency_ms: float  # l(b)

    @property
    def occupancy(self) -> float:
        return self.latency_ms / self.duty_ms


def ceil_batch(rate_per_s: float | np.ndarray, duty_ms: float | np.ndarray) -> np.ndarray:
    """Batch collected in one duty cycle: ``ceil(r * d)``, at least 1, robust to float noise."""
    return np.maximum(np.ceil(np.asarray(rate_per_s) * np.asarray(duty_ms) / 1000.0 - 1e-7), 1).astype(np.int64)


def saturated_batch(profile: ModelProfile, budget_ms: float, memory_mb: float) -> int:
    """Largest B with ``2*l(B) <= L`` (a request may wait one whole batch, then run in the next) that fits memory."""
    b = profile.max_batch_within(budget_ms / 2.0)
    return min(b, int(np.searchsorted(profile.mem_mb[1:], memory_mb * (1 + 1e-12), side="right")))


def residual_for(profile: ModelProfile, budget_ms: float, rate: float, max_b: int) -> tuple[int, float]:
    """Residual batch and duty cycle for rate ``r`` (requests/s).

    The batch is ``ceil(r*d)``, so a request waits at most ``(b-1)/r`` for its batch to fill, then ``l(b)`` to
    run: take the largest b with ``(b-1)/r + l(b) <= L``. Then ``d = min(L - l(b), b/r)``.
    """
    bs = np.arange(1, max_b + 1)
    with np.errstate(over="ignore"):  # a vanishing rate waits forever: inf is the right answer (0/r stays 0)
        wait = (bs - 1) / rate * 1000.0 + profile.lat_ms[1:max_b + 1]
    b = max(int(np.searchsorted(wait, budget_ms * (1 + 1e-12), side="right")), 1)
    lat = float(profile.lat_ms[b])
    duty = min(budget_ms - lat, b * 1000.0 / rate)
    if lat > duty:
        # r exceeds what batch b sustains (b/l(b) < r): run at the saturated duty cycle l(B) instead, where
        # ceil(r*l(B)) <= B because r < B/l(B), so l(b) <= d and d + l(b) <= 2*l(B) <= L.
        duty = float(profile.lat_ms[max_b])
        b = int(min(ceil_batch(rate, duty), max_b))
    return b, duty


def lower_bound(demands: Sequence[Demand], memory_mb: float = math.inf) -> float:
    """``sum_i R_i * l_i(b_i) / b_i`` with b_i the most efficient batch any valid plan may use.

    Every batch in a valid duty-cycle plan obeys ``l(b) <= d`` and ``d + l(b) <= L``, so ``2*l(b) <= L``: the
    bound is over b <= B_i. Unservable sessions add nothing.
    """
    total = 0.0
    for dm in demands:
        if dm.session.rate <= 0:
            continue
        big = saturated_batch(dm.profile, dm.budget_ms, memory_mb)
        if big < 1:
            continue
        per_req = dm.profile.lat_ms[1:big + 1] / np.arange(1, big + 1)
        total += dm.session.rate * float(per_req.min()) / 1000.0
    return total


def unservable_reason(dm: Demand, memory_mb: float) -> str | None:
    p, budget = dm.profile, dm.budget_ms
    if budget < 2 * float(p.lat_ms[1]):
        return (f"budget L' = {budget:.2f} ms (SLO {dm.session.slo_ms:g} ms less pre/post-processing and "
                f"network) is below 2*l(1) = {2 * float(p.lat_ms[1]):.2f} ms")
    if float(p.mem_mb[1]) > memory_mb:
        return f"model needs {float(p.mem_mb[1]):.0f} MB at batch 1, more than the device's {memory_mb:.0f} MB"
    return None


def split_saturated(demands: Sequence[Demand], memory_mb: float
                    ) -> tuple[list[GpuPlan], list[Residual], list[Unserved]]:
    """Steps 1-2: whole GPUs at the saturated batch, and each session's residual alone on a GPU."""
    full: list[GpuPlan] = []
    residuals: list[Residual] = []
    unserved: list[Unserved] = []
    for i, dm in enumerate(demands):
        s, p = dm.session, dm.profile
        reason = unservable_reason(dm, memory_mb)
        if reason is not None:
            unserved.append(Unserved(s.session, reason))
            continue
        if s.rate <= 0:
            continue
        big = saturated_batch(p, dm.budget_ms, memory_mb)
        lat = float(p.lat_ms[big])
        tput = big * 1000.0 / lat
        n = math.floor(s.rate / tput + _EPS)
        for _ in range(n):
            full.append(GpuPlan(id=-1, duty_cycle_ms=lat, occupancy=1.0, memory_mb=float(p.mem_mb[big]),
                                allocations=(Allocation(s.session, s.model, s.slo_ms, big, tput),)))
        r = s.rate - n * tput
        if r <= s.rate * _EPS:
            continue
        # saturated_batch already capped B by memory, so every residual batch <= B fits too.
        b, duty = residual_for(p, dm.budget_ms, r, big)
        residuals.append(Residual(i, r, b, duty, float(p.lat_ms[b])))
    return full, residuals, unserved


class _Bins:
    """Open residual GPUs as flat arrays, so one candidate is checked against every GPU in a few numpy ops."""

    def __init__(self, demands: Sequence[Demand], memory_mb: float):
        self.memory_mb = memory_mb
        models: dict[int, int] = {}
        profiles: list[ModelProfile] = []
        self.model_of = np.empty(len(demands), dtype=np.int64)
        for i, dm in enumerate(demands):
            key = id(dm.profile)
            if key not in models:
                models[key] = len(profiles)
                profiles.append(dm.profile)
            self.model_of[i] = models[key]
        width = max((p.max_batch for p in profiles), default=1) + 1
        self.lat = np.full((len(profiles), width), np.inf)
        self.mem = np.full((len(profiles), width), np.inf)
        self.max_b = np.array([p.max_batch for p in profiles], dtype=np.int64)
        for k, p in enumerate(profiles):
            self.lat[k, : p.max_batch + 1] = p.lat_ms
            self.mem[k, : p.max_batch + 1] = p.mem_mb
        n = len(demands)
        # Per placed residual: demand index, rate, GPU.
        self.item_demand = np.empty(n, dtype=np.int64)
        self.item_rate = np.empty(n)
        self.item_gpu = np.empty(n, dtype=np.int64)
        self.items = 0
        # Per GPU: duty cycle, summed batch latency, memory.
        self.duty = np.empty(n)
        self.load = np.empty(n)
        self.used_mem = np.empty(n)
        self.gpus = 0

    def _lat_mem(self, demand: np.ndarray | int, rate: np.ndarray | float, duty: np.ndarray | float
                 ) -> tuple[np.ndarray, np.ndarray]:
        m = self.model_of[demand]
        b = np.minimum(ceil_batch(rate, duty), self.max_b[m])
        return self.lat[m, b], self.mem[m, b]

    def best_fit(self, res: Residual) -> tuple[int, float, float, float]:
        """The GPU whose merge with ``res`` stays feasible and leaves the highest occupancy, or -1."""
        g = self.gpus
        if g == 0:
            return -1, 0.0, 0.0, 0.0
        duty = self.duty[:g]
        new_duty = np.minimum(duty, res.duty_ms)
        # Case d_g <= d_res: existing batches are unchanged, only the newcomer's shrinks to ceil(r*d_g).
        add_lat, add_mem = self._lat_mem(res.index, res.rate, new_duty)
        load = self.load[:g] + add_lat
        mem = self.used_mem[:g] + add_mem
        shrink = duty > res.duty_ms
        if shrink.any():
            # Case d_g > d_res: every batch on g shrinks to ceil(r_i * d_res); recompute the sums.
            k = self.items
            on = np.flatnonzero(shrink[self.item_gpu[:k]])  # only items on GPUs whose batches shrink
            lat_i, mem_i = self._lat_mem(self.item_demand[on], self.item_rate[on], res.duty_ms)
            sums = np.bincount(self.item_gpu[on], weights=lat_i, minlength=g)
            msum = np.bincount(self.item_gpu[on], weights=mem_i, minlength=g)
            load = np.where(shrink, sums + add_lat, load)
            mem = np.where(shrink, msum + add_mem, mem)
        # Deadlines need no check: shrinking d shrinks every batch, and d + l(b) only falls.
        ok = (load <= new_duty * (1 + 1e-9)) & (mem <= self.memory_mb * (1 + 1e-12))
        if not ok.any():
            return -1, 0.0, 0.0, 0.0
        occ = np.where(ok, load / new_duty, -1.0)
        best = int(np.argmax(occ))
        return best, float(new_duty[best]), float(load[best]), float(mem[best])

    def open(self, res: Residual, lat: float, mem: float) -> None:
        g = self.gpus
        self.duty[g], self.load[g], self.used_mem[g] = res.duty_ms, lat, mem
        self.gpus += 1
        self._place(res, g)

    def merge(self, gpu: int, res: Residual, duty: float, load: float, mem: float) -> None:
        self.duty[gpu], self.load[gpu], self.used_mem[gpu] = duty, load, mem
        self._place(res, gpu)

    def _place(self, res: Residual, gpu: int) -> None:
        k = self.items
        self.item_demand[k], self.item_rate[k], self.item_gpu[k] = res.index, res.rate, gpu
        self.items += 1

    def to_gpus(self, demands: Sequence[Demand]) -> list[GpuPlan]:
        out: list[GpuPlan] = []
        for g in range(self.gpus):
            (idx,) = np.nonzero(self.item_gpu[: self.items] == g)
            out.append(make_gpu([(demands[int(self.item_demand[i])], float(self.item_rate[i])) for i in idx],
                                float(self.duty[g])))
        return out


def make_gpu(members: Sequence[tuple[Demand, float]], duty_ms: float, gpu_id: int = -1) -> GpuPlan:
    """A GPU running each (demand, rate) at batch ``ceil(r*d)`` once per duty cycle ``d``."""
    allocs, load, mem = [], 0.0, 0.0
    for dm, rate in members:
        b = int(min(ceil_batch(rate, duty_ms), dm.profile.max_batch))
        load += float(dm.profile.lat_ms[b])
        mem += float(dm.profile.mem_mb[b])
        s = dm.session
        allocs.append(Allocation(s.session, s.model, s.slo_ms, b, rate))
    return GpuPlan(id=gpu_id, duty_cycle_ms=duty_ms, occupancy=load / duty_ms, memory_mb=mem,
                   allocations=tuple(allocs))


def pack_residuals(demands: Sequence[Demand], residuals: Sequence[Residual], memory_mb: float) -> list[GpuPlan]:
    """Step 3: largest occupancy first, merge into the best-fitting feasible GPU, else open a new one."""
    bins = _Bins(demands, memory_mb)
    order = sorted(residuals, key=lambda r: (-r.occupancy, r.index))
    for res in order:
        gpu, duty, load, mem = bins.best_fit(res)
        if gpu < 0:
            bins.open(res, res.latency_ms, float(demands[res.index].profile.mem_mb[res.batch]))
        else:
            bins.merge(gpu, res, duty, load, mem)
    return bins.to_gpus(demands)


def squishy_pack(demands: Sequence[Demand], memory_mb: float) -> tuple[list[GpuPlan], list[Unserved]]:
    """The paper's greedy: saturated GPUs, then residuals merged best-fit. GPU ids are assigned in order."""
    full, residuals, unserved = split_saturated(demands, memory_mb)
    gpus = full + pack_residuals(demands, residuals, memory_mb)
    return renumber(gpus), unserved


def renumber(gpus: Sequence[GpuPlan]) -> list[GpuPlan]:
    return [GpuPlan(i, g.duty_cycle_ms, g.occupancy, g.memory_mb, g.allocations, g.batching)
            for i, g in enumerate(gpus)]
