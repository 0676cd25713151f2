"""Frontend routing for the simulator: each session's requests go to its GPUs in proportion to the plan's rates.

Pure numpy over request counts and weights; no planner, simulator or Dask types.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def weighted_round_robin(n: int, weights: Sequence[float] | np.ndarray) -> np.ndarray:
    """The backend index of each of ``n`` consecutive requests under deterministic weighted round robin.

    Stride scheduling: backend i's j-th request has the virtual time ``(j + 1/2) / p_i`` with ``p_i`` its share of
    the weights, and requests go out in virtual-time order (ties to the lower index). After any prefix of k
    requests each of the n backends holds ``k * p_i`` of them to within ``(n + 1) / 2``, like a deficit round robin
    frontend: no backend ever runs ahead of its share by a burst.
    Zero weights get nothing unless all are zero, then all share equally.

    Examples
    --------
    >>> weighted_round_robin(6, [2.0, 1.0]).tolist()
    [0, 1, 0, 0, 1, 0]
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0:
        raise ValueError("weights: must be a non-empty 1-D sequence")
    if np.any(~np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights: must be finite and >= 0")
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    if len(w) == 1:
        return np.zeros(n, dtype=np.int64)
    if w.sum() <= 0:
        w = np.ones_like(w)
    p = w / w.sum()
    if np.all(p == p[0]):
        return np.arange(n, dtype=np.int64) % len(p)
    counts = np.where(p > 0, np.ceil(n * p).astype(np.int64) + 1, 0)
    ids = np.repeat(np.arange(len(p), dtype=np.int64), counts)
    tags = np.concatenate([(np.arange(c) + 0.5) / pi for c, pi in zip(counts, p, strict=True) if c > 0])
    order = np.argsort(tags, kind="stable")[:n]
    return ids[order]


class StrideRouter:
    """``weighted_round_robin`` one request at a time, for requests that appear while the simulation runs (a query
    stage's children): the k-th call returns the backend of the k-th request, as the batch version would."""

    __slots__ = ("count", "p", "tag")

    def __init__(self, weights: Sequence[float] | np.ndarray) -> None:
        weighted_round_robin(1, weights)  # the same checks
        w = np.asarray(weights, dtype=np.float64)
        if w.sum() <= 0:
            w = np.ones_like(w)
        self.p = (w / w.sum()).tolist()
        self.count = [0] * len(self.p)
        # backend i's j-th request has the virtual time (j + 1/2) / p_i; a zero weight never gets one
        self.tag = [0.5 / x if x > 0 else math.inf for x in self.p]

    def __call__(self) -> int:
        tag = self.tag
        i = tag.index(min(tag))  # ties to the lower index
        self.count[i] += 1
        tag[i] = (self.count[i] + 0.5) / self.p[i]
        return i
