"""The early-drop batching policy (Nexus section 6.3), shared verbatim by the simulator and the Dask backends.

Pure functions over deadlines: no transport, no clocks, no simulator or Dask types. Times are in seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


class DropReason:
    """Why a request ended without a result; the strings are part of the public contract."""

    DEADLINE = "deadline"  # early drop: it could not finish within its SLO even if its batch started now
    OVERLOAD = "overload"  # the queue was past what the plan provisions (admission control)
    NO_ROUTE = "no_route"  # no backend holds the session
    WORKER_LOST = "worker_lost"  # its backend died and no re-route could still meet the deadline


ALL_REASONS = (DropReason.DEADLINE, DropReason.OVERLOAD, DropReason.NO_ROUTE, DropReason.WORKER_LOST)


@dataclass(frozen=True)
class Window:
    """The outcome of forming one batch: drop the first ``drop`` queued requests, then run the next ``take``."""

    drop: int
    take: int


def early_drop_window(deadlines: Sequence[float] | np.ndarray, now: float, max_batch: int,
                      latency_s: Callable[[int], float] | np.ndarray, start: int = 0) -> Window:
    """Form a batch at time ``now`` from a FIFO queue given by its requests' absolute deadlines.

    Scan oldest first: the head request is dropped when ``deadline < now + l(n)`` for the batch ``n`` it would
    run in (``n = min(queued, max_batch)``); the first request that can make it opens the window, and the next
    ``n`` requests (itself included) form the batch. ``latency_s`` maps a batch size to its latency in seconds
    (a callable or an array indexed by batch size). ``start`` lets callers keep a consumed prefix in place.

    Examples
    --------
    >>> early_drop_window([0.9, 1.5, 1.6], now=1.0, max_batch=2, latency_s=lambda b: 0.1 * b)
    Window(drop=1, take=2)
    """
    lat = latency_s.__getitem__ if isinstance(latency_s, np.ndarray) else latency_s
    queued = len(deadlines) - start
    dropped = 0
    while queued > 0:
        n = min(queued, max_batch)
        if deadlines[start + dropped] >= now + lat(n):
            return Window(dropped, n)
        dropped += 1
        queued -= 1
    return Window(dropped, 0)


def early_drop_sorted(deadlines: np.ndarray, start: int, end: int, now: float, max_batch: int,
                      lat_s: np.ndarray) -> Window:
    """``early_drop_window`` for a queue whose deadlines are non-decreasing (one SLO, FIFO), in O(log n).

    With sorted deadlines the dropped requests form a prefix, so it is found by binary search instead of a scan:
    the result is identical to ``early_drop_window`` on ``deadlines[start:end]``.
    """
    queued = end - start
    if queued <= 0:
        return Window(0, 0)
    # Requests that survive against a full batch: deadline >= now + l(max_batch).
    n_full = min(queued, max_batch)
    keep_from = int(np.searchsorted(deadlines[start:end], now + lat_s[n_full], side="left"))
    if queued - keep_from >= max_batch:
        return Window(keep_from, max_batch)
    # Fewer than a full batch remain past that point: the batch shrinks, so l(n) shrinks and earlier requests
    # may survive. Fall back to the exact scan over this short tail (at most max_batch steps).
    w = early_drop_window(deadlines[:end], now, max_batch, lat_s, start=start + max(0, keep_from - max_batch))
    return Window(max(0, keep_from - max_batch) + w.drop, w.take)
