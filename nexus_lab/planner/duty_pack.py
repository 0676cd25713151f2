"""Packing residual pieces with each GPU's duty cycle chosen anew at every merge.

``pack_least_increase`` merges a piece into a GPU at ``d = min(d_gpu, d_piece)``; here every (GPU, piece) pair is
priced at its own best duty cycle (``retune.best_duty``: the feasible ``d`` of least occupancy), and the piece
goes where occupancy grows least, else onto a new GPU. Quadratic in pieces times candidate cycles: for small
residual sets only. Pure and deterministic; numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .plan import GpuPlan
from .retune import best_duty, duty_candidates
from .squishy import Demand, Residual, make_gpu

__all__ = ["pack_retuned"]


def pack_retuned(demands: Sequence[Demand], residuals: Sequence[Residual], memory_mb: float) -> list[GpuPlan] | None:
    """Residuals in the given order, each into the GPU whose best occupancy grows least; None if a residual
    cannot run alone (ruled out by how residuals are made; checked anyway)."""
    bins: list[list[tuple[Demand, float]]] = []
    cands: list[list[np.ndarray]] = []
    occ: list[float] = []
    duty: list[float] = []
    for res in residuals:
        item = (demands[res.index], res.rate)
        mine = duty_candidates(*item)
        alone = best_duty([item], memory_mb, [mine])
        if alone is None:
            return None
        best, best_growth, best_got = -1, float("inf"), None
        for g, members in enumerate(bins):
            # The piece costs at least its occupancy alone, and the GPU's members at least theirs now.
            if occ[g] + alone[0] > 1.0 + 1e-9:
                continue
            got = best_duty([*members, item], memory_mb, [*cands[g], mine])
            if got is not None and got[0] - occ[g] < best_growth:
                best, best_growth, best_got = g, got[0] - occ[g], got
        if best_got is None:
            bins.append([item])
            cands.append([mine])
            occ.append(alone[0])
            duty.append(alone[1])
            continue
        bins[best].append(item)
        cands[best].append(mine)
        occ[best], duty[best] = best_got
    return [make_gpu(members, d) for members, d in zip(bins, duty, strict=True)]
