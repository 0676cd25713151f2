"""Re-tuning the duty cycle of a shared GPU: the same sessions and rates at the ``d`` of least occupancy.

Packing fixes a GPU's duty cycle at the tightest member's own cycle, ``d = min_i d_i``, and its members' batches
follow as ``b_i = ceil(r_i*d)``. Any other ``d`` is as valid when every batch still fits the cycle and its
deadline (``sum_i l_i(b_i) <= d``, ``d + l_i(b_i) <= L'_i``, memory), and a longer one usually runs larger, cheaper
batches: the room it frees is what ``empty_gpus`` then fills. Between two batch steps occupancy falls as d grows,
so the best ``d`` is one where some member's batch is exactly full (``d = b*1000/r_i``) or a deadline binds
(``d = L'_i - l_i(b)``): those candidates are all checked at once. Pure and deterministic; numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .plan import GpuPlan
from .squishy import Demand, ceil_batch, make_gpu

__all__ = ["best_duty", "duty_candidates", "retune", "retune_gpu"]

_TOL = 1e-9


def duty_candidates(dm: Demand, rate: float) -> np.ndarray:
    """The cycles where ``rate``'s batch is exactly full (``b*1000/r``) or its deadline binds (``L' - l(b)``),
    within its budget."""
    big = np.arange(1, dm.profile.max_batch + 1)
    with np.errstate(over="ignore"):  # a vanishing rate fills a batch never: inf, dropped below
        d = np.concatenate([big * 1000.0 / rate, dm.budget_ms - dm.profile.lat_ms[1:]])
    return d[(d > 0) & (d < dm.budget_ms)]


def best_duty(members: Sequence[tuple[Demand, float]], memory_mb: float,
              cands: Sequence[np.ndarray] | None = None) -> tuple[float, float] | None:
    """(occupancy, d) of the feasible duty cycle of least occupancy for ``members`` (demand, rate) on one GPU, or
    None when no duty cycle fits them all. ``cands``: each member's ``duty_candidates``, when already known."""
    if cands is None:
        cands = [duty_candidates(dm, r) for dm, r in members]
    d = np.concatenate(cands)
    d = d[d <= min(dm.budget_ms for dm, _ in members)]
    load, mem = np.zeros(len(d)), np.zeros(len(d))
    ok = np.ones(len(d), dtype=bool)
    for dm, r in members:
        p = dm.profile
        b = ceil_batch(r, d)
        inside = b <= p.max_batch
        b = np.minimum(b, p.max_batch)
        lat = p.lat_ms[b]
        ok &= inside & (d + lat <= dm.budget_ms * (1 + _TOL))
        load += lat
        mem += p.mem_mb[b]
    ok &= (load <= d * (1 + _TOL)) & (mem <= memory_mb * (1 + 1e-12))
    if not len(d) or not ok.any():
        return None
    occ = np.where(ok, load / d, np.inf)
    k = int(np.argmin(occ))
    return float(occ[k]), float(d[k])


def retune_gpu(gpu: GpuPlan, by_name: Mapping[str, Demand], memory_mb: float) -> GpuPlan:
    """``gpu`` at the feasible duty cycle of least occupancy (``gpu`` itself when none is lower)."""
    members = [(by_name[a.session], a.rate) for a in gpu.allocations]
    if len(members) < 2 or any(r <= 0 for _, r in members):
        return gpu
    got = best_duty(members, memory_mb, [duty_candidates(dm, r) for dm, r in members] + [np.array([gpu.duty_cycle_ms])])
    if got is None or got[0] >= gpu.occupancy * (1 - 1e-9):
        return gpu
    return make_gpu(members, got[1], gpu.id)


def retune(gpus: Sequence[GpuPlan], demands: Sequence[Demand], memory_mb: float) -> list[GpuPlan]:
    """Every shared GPU of ``gpus`` at its duty cycle of least occupancy; GPUs of one session pass through."""
    by_name = {dm.session.session: dm for dm in demands}
    return [retune_gpu(g, by_name, memory_mb) if len(g.allocations) > 1 else g for g in gpus]
