"""Squishy bin packing (Nexus, SOSP 2019, section 6.1): sessions to GPUs with a batch size and duty cycle each.

Pure and deterministic; the inner loops are vectorised with numpy over all open GPUs (and, past ``CHUNK_ABOVE``
residuals, over chunks packed side by side), so 1,000 sessions plan in well under a second and 100,000 in a few
seconds (``nexus-lab bench plan-scale``). No Dask, no I/O.
"""

from __future__ import annotations

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


def by_profile(demands: Sequence[Demand]) -> list[tuple[ModelProfile, np.ndarray]]:
    """Demand indices grouped by profile (first appearance order), for work vectorised per profile."""
    row: dict[int, int] = {}
    profiles: list[ModelProfile] = []
    codes = np.empty(len(demands), dtype=np.int64)
    for i, dm in enumerate(demands):
        k = row.get(id(dm.profile))
        if k is None:
            k = row[id(dm.profile)] = len(profiles)
            profiles.append(dm.profile)
        codes[i] = k
    order = np.argsort(codes, kind="stable")
    ends = np.searchsorted(codes[order], np.arange(len(profiles) + 1)).tolist()
    return [(p, order[ends[k]:ends[k + 1]]) for k, p in enumerate(profiles)]


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
    """Steps 1-2: whole GPUs at the saturated batch, and each session's residual alone on a GPU.

    The arithmetic of ``saturated_batch`` and ``residual_for``, vectorised over the demands of each profile.
    """
    n = len(demands)
    rates = np.array([dm.session.rate for dm in demands], dtype=np.float64)
    budgets = np.array([dm.budget_ms for dm in demands], dtype=np.float64)
    big, whole, res_b = (np.zeros(n, dtype=np.int64) for _ in range(3))
    tput, lat_big, mem_big, res_d, res_lat = (np.zeros(n) for _ in range(5))
    servable = np.zeros(n, dtype=bool)
    for prof, idx in by_profile(demands):
        lat = prof.lat_ms
        ok = (budgets[idx] >= 2 * float(lat[1])) & (float(prof.mem_mb[1]) <= memory_mb)
        servable[idx] = ok
        idx = idx[ok]
        mem_cap = int(np.searchsorted(prof.mem_mb[1:], memory_mb * (1 + 1e-12), side="right"))
        b = np.minimum(np.searchsorted(lat[1:], budgets[idx] / 2.0 * (1 + 1e-12), side="right"), mem_cap)
        t = b * 1000.0 / lat[b]
        k = np.floor(rates[idx] / t + _EPS)
        big[idx], tput[idx], whole[idx], lat_big[idx], mem_big[idx] = b, t, k.astype(np.int64), lat[b], prof.mem_mb[b]
        r = rates[idx] - k * t
        keep = r > rates[idx] * _EPS
        has = idx[keep]
        res_b[has], res_d[has] = _residuals(prof, budgets[has], r[keep], b[keep])
        res_lat[has] = lat[res_b[has]]
    full: list[GpuPlan] = []
    residuals: list[Residual] = []
    unserved: list[Unserved] = []
    # Python scalars from here on (numpy scalars cost a conversion per read).
    rows = zip(servable.tolist(), big.tolist(), whole.tolist(), tput.tolist(), lat_big.tolist(), mem_big.tolist(),
               res_b.tolist(), res_d.tolist(), res_lat.tolist(), strict=True)
    for i, (dm, (ok, bi, k, t, lat, mem, b, d, lat_b)) in enumerate(zip(demands, rows, strict=True)):
        s = dm.session
        if not ok:
            unserved.append(Unserved(s.session, str(unservable_reason(dm, memory_mb))))
            continue
        if s.rate <= 0:
            continue
        if k:
            gpu = GpuPlan(-1, lat, 1.0, mem, (Allocation(s.session, s.model, s.slo_ms, bi, t),))
            full += [gpu] * k
        r = s.rate - k * t
        if r <= s.rate * _EPS:
            continue
        # saturated_batch already capped B by memory, so every residual batch <= B fits too.
        residuals.append(Residual(i, r, b, d, lat_b))
    return full, residuals, unserved


def _residuals(profile: ModelProfile, budgets: np.ndarray, rates: np.ndarray, big: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """``residual_for`` of many (budget, rate, B) at once: the largest b <= B with ``(b-1)/r + l(b) <= L`` by
    bisection (the wait grows with b), then ``d = min(L - l(b), b/r)``, or the saturated cycle ``l(B)``."""
    lat = profile.lat_ms
    thr = budgets * (1 + 1e-12)
    lo, hi = np.zeros(len(rates), dtype=np.int64), big.astype(np.int64)
    with np.errstate(over="ignore", divide="ignore"):  # a vanishing rate waits forever
        while np.any(lo < hi):
            mid = np.maximum((lo + hi + 1) // 2, 1)
            fits = (mid - 1) / rates * 1000.0 + lat[mid] <= thr
            active = lo < hi
            lo = np.where(active & fits, mid, lo)
            hi = np.where(active & ~fits, mid - 1, hi)
        b = np.maximum(lo, 1)
        lat_b = lat[b]
        duty = np.minimum(budgets - lat_b, b * 1000.0 / rates)
    slow = lat_b > duty
    duty = np.where(slow, lat[big], duty)
    b = np.where(slow, np.minimum(ceil_batch(rates, duty), big), b)
    return b, duty


class ProfileTables:
    """Every demand's profile as one padded table (rows per profile): ``l(b)`` and ``mem(b)`` by batch, inf past
    a profile's largest batch (``pad`` extra columns of inf at the end of every row)."""

    def __init__(self, demands: Sequence[Demand], pad: int = 0):
        groups = by_profile(demands)
        self.model_of = np.empty(len(demands), dtype=np.int64)
        for k, (_, idx) in enumerate(groups):
            self.model_of[idx] = k
        width = max((p.max_batch for p, _ in groups), default=1) + 1 + pad
        self.lat = np.full((len(groups), width), np.inf)
        self.mem = np.full((len(groups), width), np.inf)
        self.max_b = np.array([p.max_batch for p, _ in groups], dtype=np.int64)
        for k, (p, _) in enumerate(groups):
            self.lat[k, : p.max_batch + 1] = p.lat_ms
            self.mem[k, : p.max_batch + 1] = p.mem_mb


class _Bins:
    """Open residual GPUs as flat arrays, so one candidate is checked against every GPU in a few numpy ops."""

    def __init__(self, models: ProfileTables, capacity: int, memory_mb: float):
        self.memory_mb = memory_mb
        self.model_of, self.lat, self.mem, self.max_b = models.model_of, models.lat, models.mem, models.max_b
        n = capacity
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
        """The GPUs as ``make_gpu`` builds them (same batches, sums in the same order), vectorised."""
        k = self.items
        gpu, dem, rate = self.item_gpu[:k], self.item_demand[:k], self.item_rate[:k]
        duty = self.duty[: self.gpus]
        m = self.model_of[dem]
        batch = np.minimum(ceil_batch(rate, duty[gpu]), self.max_b[m])
        lat, mem = self.lat[m, batch].tolist(), self.mem[m, batch].tolist()
        order = np.argsort(gpu, kind="stable")
        starts = np.searchsorted(gpu[order], np.arange(self.gpus + 1)).tolist()
        order, batch, rate = order.tolist(), batch.tolist(), rate.tolist()
        sessions = [demands[i].session for i in dem.tolist()]
        out: list[GpuPlan] = []
        for g, d in enumerate(duty.tolist()):
            allocs, load, used = [], 0.0, 0.0
            for j in order[starts[g]:starts[g + 1]]:
                load += lat[j]
                used += mem[j]
                s = sessions[j]
                allocs.append(Allocation(s.session, s.model, s.slo_ms, batch[j], rate[j]))
            out.append(GpuPlan(-1, d, load / d, used, tuple(allocs)))
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


#: Residual sets up to this size are packed as one; larger ones are dealt round robin (in packing order) into
#: chunks of about ``CHUNK`` that are packed side by side (``_pack_lockstep``), so each step scans a bounded set
#: of open GPUs and numpy's per-call cost is shared by all chunks.
CHUNK_ABOVE, CHUNK = 4096, 1024


def pack_residuals(demands: Sequence[Demand], residuals: Sequence[Residual], memory_mb: float) -> list[GpuPlan]:
    """Step 3: largest occupancy first, merge into the best-fitting feasible GPU, else open a new one.

    Past ``CHUNK_ABOVE`` residuals, each of ``k`` chunks takes every k-th residual of the order (a sample of
    every size) and is packed on its own: about linear time for 100,000 sessions, a few residual GPUs more."""
    models = ProfileTables(demands)
    order = sorted(residuals, key=lambda r: (-r.occupancy, r.index))
    if len(order) > CHUNK_ABOVE:
        parts = -(-len(order) // CHUNK)
        return _pack_lockstep(demands, [order[k::parts] for k in range(parts)], models, memory_mb)
    bins = _Bins(models, len(order), memory_mb)
    for res in order:
        gpu, duty, load, mem = bins.best_fit(res)
        if gpu < 0:
            bins.open(res, res.latency_ms, float(demands[res.index].profile.mem_mb[res.batch]))
        else:
            bins.merge(gpu, res, duty, load, mem)
    return bins.to_gpus(demands)


def _batches(models: ProfileTables, m: np.ndarray, rate: np.ndarray, duty: np.ndarray) -> np.ndarray:
    """``min(ceil(r*d), B_max)`` element-wise, as ``_Bins`` computes it."""
    return np.minimum(ceil_batch(rate, duty), models.max_b[m])


def _pack_lockstep(demands: Sequence[Demand], chunks: Sequence[Sequence[Residual]], models: ProfileTables,
                   memory_mb: float) -> list[GpuPlan]:
    """``_Bins.best_fit`` for every chunk at once: step t places the t-th residual of each chunk, on 2-D arrays
    (chunk x GPU). The same arithmetic in the same order as packing each chunk alone, so the same GPUs."""
    c_n, steps = len(chunks), max(len(ch) for ch in chunks)
    act = np.zeros((steps, c_n), dtype=bool)
    r_idx = np.zeros((steps, c_n), dtype=np.int64)
    r_rate, r_duty, r_lat, r_mem = (np.ones((steps, c_n)) for _ in range(4))
    for c, chunk in enumerate(chunks):
        for t, res in enumerate(chunk):
            act[t, c], r_idx[t, c], r_rate[t, c], r_duty[t, c] = True, res.index, res.rate, res.duty_ms
            r_lat[t, c], r_mem[t, c] = res.latency_ms, float(demands[res.index].profile.mem_mb[res.batch])
    duty_g, load_g, mem_g = np.ones((c_n, steps)), np.zeros((c_n, steps)), np.zeros((c_n, steps))
    gpus = np.zeros(c_n, dtype=np.int64)
    item_gpu, item_m = np.zeros((c_n, steps), dtype=np.int64), np.zeros((c_n, steps), dtype=np.int64)
    item_rate = np.ones((c_n, steps))
    rows = np.arange(c_n)
    for t in range(steps):
        on_now, m, rate, rd = act[t], models.model_of[r_idx[t]], r_rate[t], r_duty[t]
        g_n = int(gpus.max())
        fits = np.zeros(c_n, dtype=bool)
        if g_n:
            duty = duty_g[:, :g_n]
            new_duty = np.minimum(duty, rd[:, None])
            b = _batches(models, m[:, None], rate[:, None], new_duty)
            add_lat, add_mem = models.lat[m[:, None], b], models.mem[m[:, None], b]
            load, mem = load_g[:, :g_n] + add_lat, mem_g[:, :g_n] + add_mem
            valid = np.arange(g_n)[None, :] < gpus[:, None]
            shrink = (duty > rd[:, None]) & valid
            if shrink.any():
                # Every batch on a GPU whose d shrinks re-batches at ceil(r_i * d_res), summed in item order.
                flat = (rows[:, None] * g_n + item_gpu[:, :t]).ravel()
                on = np.flatnonzero(shrink.ravel()[flat])  # only items on GPUs whose batches shrink
                im = item_m[:, :t].ravel()[on]
                bi = _batches(models, im, item_rate[:, :t].ravel()[on], np.repeat(rd, t)[on])
                sums = np.bincount(flat[on], models.lat[im, bi], c_n * g_n).reshape(c_n, g_n)
                msum = np.bincount(flat[on], models.mem[im, bi], c_n * g_n).reshape(c_n, g_n)
                load = np.where(shrink, sums + add_lat, load)
                mem = np.where(shrink, msum + add_mem, mem)
            ok = (load <= new_duty * (1 + 1e-9)) & (mem <= memory_mb * (1 + 1e-12)) & valid & on_now[:, None]
            best = np.argmax(np.where(ok, load / new_duty, -1.0), axis=1)
            fits = ok.any(axis=1)
            c_m = np.flatnonzero(fits)
            g_m = best[c_m]
            duty_g[c_m, g_m], load_g[c_m, g_m], mem_g[c_m, g_m] = new_duty[c_m, g_m], load[c_m, g_m], mem[c_m, g_m]
            item_gpu[c_m, t] = g_m
        c_o = np.flatnonzero(on_now & ~fits)
        g_o = gpus[c_o]
        duty_g[c_o, g_o], load_g[c_o, g_o], mem_g[c_o, g_o] = rd[c_o], r_lat[t, c_o], r_mem[t, c_o]
        item_gpu[c_o, t] = g_o
        gpus[c_o] += 1
        item_m[on_now, t], item_rate[on_now, t] = m[on_now], rate[on_now]
    out: list[GpuPlan] = []
    for c, chunk in enumerate(chunks):
        bins, k, g = _Bins(models, 0, memory_mb), len(chunk), int(gpus[c])
        bins.item_demand, bins.item_rate, bins.item_gpu, bins.items = r_idx[:k, c], r_rate[:k, c], item_gpu[c, :k], k
        bins.duty, bins.load, bins.used_mem, bins.gpus = duty_g[c, :g], load_g[c, :g], mem_g[c, :g], g
        out += bins.to_gpus(demands)
    return out


def squishy_pack(demands: Sequence[Demand], memory_mb: float) -> tuple[list[GpuPlan], list[Unserved]]:
    """The paper's greedy: saturated GPUs, then residuals merged best-fit. GPU ids are assigned in order."""
    full, residuals, unserved = split_saturated(demands, memory_mb)
    gpus = full + pack_residuals(demands, residuals, memory_mb)
    return renumber(gpus), unserved


def renumber(gpus: Sequence[GpuPlan]) -> list[GpuPlan]:
    """GPU ids 0, 1, ... in order; a GPU that already has its id is kept as it is (plans are immutable)."""
    return [g if g.id == i else GpuPlan(i, g.duty_cycle_ms, g.occupancy, g.memory_mb, g.allocations, g.batching)
            for i, g in enumerate(gpus)]
