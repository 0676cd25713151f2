"""Local improvement after the greedy squishy packing: fewer GPUs for the same sessions, every constraint kept.

Pure and deterministic like the packer it follows; numpy only. No Dask, no I/O, no simulator.

Three ideas, combined in ``improve`` (candidates compared by GPU count; the greedy plan is always one of them):

* ``efficient_split``: whole GPUs at each session's highest-throughput batch ``b* <= B`` rather than the largest
  feasible ``B`` (measured tables are not linear, so ``b*/l(b*)`` can beat ``B/l(B)``).
* ``pack_least_increase``: residuals packed tightest duty cycle first, each into the GPU whose occupancy grows
  the least; a loose session next to a tight one runs at the tight one's d and loses its batch, which the
  paper's highest-occupancy rule does not price.
* ``empty_gpus`` (``emptying.py``): GPUs taken in increasing occupancy have all their allocations moved into
  the slack the other GPUs have at their current duty cycles, or are left exactly as they were.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .emptying import empty_gpus
from .plan import GpuPlan
from .squishy import (
    Demand,
    ProfileTables,
    Residual,
    ceil_batch,
    make_gpu,
    residual_for,
    saturated_batch,
    unservable_reason,
)

__all__ = ["efficient_batch", "efficient_split", "empty_gpus", "improve", "pack_least_increase"]

_SMALL = 400  # residual sets up to this size are also packed loosest-first


def improve(gpus: list[GpuPlan], demands: Sequence[Demand], memory_mb: float) -> list[GpuPlan]:
    """Fewer (or as many) GPUs serving the same rates, every constraint kept.

    ``gpus`` is a valid duty-cycle plan of ``demands`` (e.g. ``squishy_pack``'s). Candidates: ``gpus``
    emptied by ``empty_gpus``, and the re-split of ``efficient_split`` packed by ``pack_least_increase`` then
    emptied; the fewest GPUs wins (ties: the earlier), and a candidate that is not re-checked feasible GPU by
    GPU, or serves different rates, is dropped. Never more GPUs than ``gpus``. Deterministic.

    Examples
    --------
    >>> from nexus_lab.planner import demands, squishy_pack
    >>> from nexus_lab.workload import load_workload
    >>> wl = load_workload({"sessions": [{"model": "vgg_s", "slo_ms": 150, "rate": 2000},
    ...                                  {"model": "vgg16", "slo_ms": 300, "rate": 90}]})
    >>> dms = demands(wl)
    >>> greedy, _ = squishy_pack(dms, 12288)
    >>> len(improve(greedy, dms, 12288)) <= len(greedy)
    True
    """
    if not gpus or any(g.batching != "duty-cycle" for g in gpus):
        return list(gpus)
    best = empty_gpus(list(gpus), demands, memory_mb)
    by_name = {dm.session.session: dm for dm in demands}
    split = efficient_split(demands, memory_mb)
    if split is not None and len(by_name) == len(demands):
        full, residuals = split
        # Tightest duty cycle first packs sessions of similar budgets together, so a loose session's batch is
        # not cut short by a tight neighbour's d. Loosest first (the mirror image) sometimes wins, but every
        # merge then shrinks d and re-batches all placed residuals (quadratic): only for small residual sets.
        orders = [lambda r: (r.duty_ms, r.index)]
        if len(residuals) <= _SMALL:
            orders.append(lambda r: (-r.duty_ms, r.index))
        for order in orders:
            alt = full + pack_least_increase(demands, sorted(residuals, key=order), memory_mb)
            if not _same_rates(alt, gpus):
                continue
            alt = empty_gpus(alt, demands, memory_mb)
            if len(alt) < len(best) and all(_gpu_ok(g, by_name, memory_mb) for g in alt):
                best = alt
        from .resplit import resplit_candidates  # imports this module: a re-split packs as above

        best = resplit_candidates(best, gpus, demands, memory_mb, _SMALL)
    return best if len(best) <= len(gpus) else list(gpus)


def _gpu_ok(gpu: GpuPlan, by_name: dict[str, Demand], memory_mb: float) -> bool:
    """One GPU against docs/architecture.md section 2: ``b_i = ceil(r_i*d) <= B_max``, ``sum_i l_i(b_i) <= d``,
    ``d + l_i(b_i) <= L'_i``, memory."""
    d = gpu.duty_cycle_ms
    load = mem = 0.0
    for a in gpu.allocations:
        dm = by_name[a.session]
        p = dm.profile
        b = int(ceil_batch(a.rate, d))
        if b > p.max_batch or a.batch != b or d + float(p.lat_ms[b]) > dm.budget_ms * (1 + 1e-9):
            return False
        load += float(p.lat_ms[b])
        mem += float(p.mem_mb[b])
    return load <= d * (1 + 1e-9) and mem <= memory_mb * (1 + 1e-9)


def _same_rates(a: Sequence[GpuPlan], b: Sequence[GpuPlan]) -> bool:
    """Both plans give every session the same total rate (to float noise)."""
    def totals(gpus: Sequence[GpuPlan]) -> dict[str, float]:
        out: dict[str, float] = {}
        for g in gpus:
            for al in g.allocations:
                out[al.session] = out.get(al.session, 0.0) + al.rate
        return out

    ta, tb = totals(a), totals(b)
    return ta.keys() == tb.keys() and all(abs(ta[k] - tb[k]) <= 1e-9 * max(1.0, tb[k]) for k in ta)


def whole_gpus(dm: Demand, memory_mb: float) -> tuple[int, float, float, int, float]:
    """How a session's rate splits at its efficient batch ``b*``: ``(B, l(b*), T*, n, r)``, its saturated batch
    ``B``, the latency and throughput at ``b*``, the ``n = floor(R/T*)`` whole GPUs it fills and the residual
    rate ``r = R - n*T*`` left for shared GPUs."""
    p, rate = dm.profile, dm.session.rate
    best = efficient_batch(dm, memory_mb)
    lat = float(p.lat_ms[best])
    tput = best * 1000.0 / lat
    n = int(np.floor(rate / tput + 1e-9))
    return saturated_batch(p, dm.budget_ms, memory_mb), lat, tput, n, rate - n * tput


def residual_piece(dm: Demand, rate: float, big: int, best_lat: float) -> tuple[int, float] | None:
    """Batch and duty cycle of ``rate`` of a session alone on a shared GPU, as ``efficient_split`` runs a residual
    (``residual_for``, else back to back at ``b*``'s latency ``best_lat``); None if neither is feasible (the
    derivation rules it out; checked anyway)."""
    p = dm.profile
    b, duty = residual_for(p, dm.budget_ms, rate, big)
    if int(ceil_batch(rate, duty)) > b or float(p.lat_ms[b]) > duty * (1 + 1e-12):
        duty = best_lat
        b = int(ceil_batch(rate, duty))
    if b > big or float(p.lat_ms[b]) > duty * (1 + 1e-9) or duty + float(p.lat_ms[b]) > dm.budget_ms * (1 + 1e-9):
        return None
    return b, duty


def efficient_batch(dm: Demand, memory_mb: float) -> int:
    """The batch ``b* <= B`` of highest throughput ``b / l(b)``; ties go to the larger batch.

    Any ``b <= B`` may run back to back on a whole GPU (``d = l(b)``, so ``d + l(b) = 2*l(b) <= 2*l(B) <= L``).
    Measured tables are not linear: on the TITAN X, vgg_s takes 32.7 ms for 32 images but 67.8 ms for 64, so
    the paper's largest batch B is not always the cheapest per request. Returns 0 when no batch fits.
    """
    big = saturated_batch(dm.profile, dm.budget_ms, memory_mb)
    if big < 1:
        return 0
    tput = np.arange(1, big + 1) / dm.profile.lat_ms[1:big + 1]
    return int(big - np.argmax(tput[::-1]))


def efficient_split(demands: Sequence[Demand], memory_mb: float) -> tuple[list[GpuPlan], list[Residual]] | None:
    """Squishy packing with whole GPUs at each session's most efficient batch ``b*`` instead of ``B``.

    Whole GPUs: ``n = floor(R / T*)`` with ``T* = b*/l(b*)``; the residual ``r = R - n*T*`` gets the paper's
    residual batch and duty cycle (any batch up to B). When ``r`` exceeds what batch B sustains
    (``T_B < r < T*``) it runs at ``d = l(b*)`` with ``b = ceil(r*d) <= b*``, so ``l(b) <= d`` and
    ``d + l(b) <= 2*l(b*) <= L``. Returns the whole GPUs and the residuals (None if a residual came out
    infeasible, which the derivation rules out).
    """
    full: list[GpuPlan] = []
    residuals: list[Residual] = []
    for i, dm in enumerate(demands):
        s, p = dm.session, dm.profile
        if unservable_reason(dm, memory_mb) is not None or s.rate <= 0:
            continue
        big, lat, tput, n, r = whole_gpus(dm, memory_mb)
        full += [make_gpu([(dm, tput)], lat)] * n
        if r <= s.rate * 1e-9:
            continue
        piece = residual_piece(dm, r, big, lat)
        if piece is None:
            return None
        b, duty = piece
        residuals.append(Residual(i, r, b, duty, float(p.lat_ms[b])))
    return full, residuals


def pack_least_increase(demands: Sequence[Demand], residuals: Sequence[Residual], memory_mb: float
                        ) -> list[GpuPlan]:
    """Step 3 of squishy packing with another fit rule: merge each residual (in the given order) into the
    feasible GPU whose occupancy grows the least, else open a new GPU.

    Merging residual j into GPU g gives ``d' = min(d_g, d_j)`` and batches ``b_i = ceil(r_i*d')``; the GPU
    time it costs is ``sum_i l_i(b_i)/d' - sum_i l_i(b_i^old)/d_g``: shrinking a loose GPU's duty cycle costs
    every member efficiency, which the paper's highest-occupancy rule does not see. Feasible when
    ``sum_i l_i(b_i) <= d'`` and memory fits (deadlines only get easier as d shrinks).
    """
    n = len(residuals)
    duty, load, mem = np.empty(n), np.empty(n), np.empty(n)
    gpu_of = np.empty(n, dtype=np.int64)
    tables = _Tables(demands)
    idx = np.array([r.index for r in residuals], dtype=np.int64)
    rate = np.array([r.rate for r in residuals])
    # A GPU with less than min l(1) of time or min mem(1) of memory left can take no residual: drop it from
    # the candidates, so each step costs the GPUs still open rather than all of them.
    min_lat = min((float(demands[r.index].profile.lat_ms[1]) for r in residuals), default=0.0)
    min_mem = min((float(demands[r.index].profile.mem_mb[1]) for r in residuals), default=0.0)
    is_open = np.zeros(n, dtype=bool)
    cand = np.empty(0, dtype=np.int64)
    gpus = 0
    for k, res in enumerate(residuals):
        dm = demands[res.index]
        best = -1
        if len(cand):
            d_old = duty[cand]
            d_new = np.minimum(d_old, res.duty_ms)
            add_lat, add_mem = tables.lat_mem(res.index, res.rate, d_new)
            new_load, new_mem = load[cand] + add_lat, mem[cand] + add_mem
            shrink = d_old > res.duty_ms
            if shrink.any():
                # Every member of a GPU whose d shrinks re-batches at ceil(r_i * d_j).
                lat_i, mem_i = tables.lat_mem(idx[:k], rate[:k], res.duty_ms)
                sums = np.bincount(gpu_of[:k], weights=lat_i, minlength=gpus)[cand]
                msums = np.bincount(gpu_of[:k], weights=mem_i, minlength=gpus)[cand]
                new_load = np.where(shrink, sums + add_lat, new_load)
                new_mem = np.where(shrink, msums + add_mem, new_mem)
            ok = (new_load <= d_new * (1 + 1e-9)) & (new_mem <= memory_mb * (1 + 1e-12))
            if ok.any():
                growth = np.where(ok, new_load / d_new - load[cand] / d_old, np.inf)
                j = int(np.argmin(growth))
                best = int(cand[j])
                duty[best], load[best], mem[best] = d_new[j], new_load[j], new_mem[j]
        if best < 0:
            best = gpus
            gpus += 1
            duty[best], load[best] = res.duty_ms, res.latency_ms
            mem[best] = float(dm.profile.mem_mb[res.batch])
            is_open[best] = True
            cand = np.nonzero(is_open[:gpus])[0]
        if duty[best] - load[best] < min_lat or memory_mb - mem[best] < min_mem:
            is_open[best] = False
            cand = np.nonzero(is_open[:gpus])[0]
        gpu_of[k] = best
    out: list[GpuPlan] = []
    for g in range(gpus):
        (members,) = np.nonzero(gpu_of[:n] == g)
        out.append(make_gpu([(demands[int(idx[k])], float(rate[k])) for k in members], float(duty[g])))
    return out


class _Tables(ProfileTables):
    """``l_i(b)`` and ``mem_i(b)`` of every demand's profile as one padded 2-D table (rows per profile)."""

    def __init__(self, demands: Sequence[Demand]):
        super().__init__(demands, pad=1)  # column B_max + 1 is always inf
        self.row = self.model_of

    def lat_mem(self, demand: np.ndarray | int, rate: np.ndarray | float, duty: np.ndarray | float
                ) -> tuple[np.ndarray, np.ndarray]:
        """``l_i(b)`` and ``mem_i(b)`` at ``b = ceil(r*d)``; a batch beyond B_max reads as infinite."""
        m = self.row[demand]
        b = np.minimum(ceil_batch(rate, duty), self.max_b[m] + 1)
        return self.lat[m, b], self.mem[m, b]
