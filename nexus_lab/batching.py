"""The early-drop batching policy (Nexus section 6.3), shared verbatim by the simulator and the Dask backends.

Pure functions over deadlines: no transport, no clocks, no simulator or Dask types. Times are in seconds.
"""

from __future__ import annotations

from bisect import bisect_right
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


# ------------------------------------------------------------------------------------------ baseline policies
# The dedicated-GPU baselines' batching decisions, as pure functions over one FIFO queue of arrival times
# (non-decreasing, seconds). The simulator and any runtime that imitates a baseline call these; none drops early.

BASELINE_BATCHING = ("tf-serving", "triton", "clipper")


def tf_serving_close(arrivals: Sequence[float], start: int, max_batch: int, timeout_s: float) -> tuple[float, int]:
    """TF-Serving's batch closing: when the batch opened by ``arrivals[start]`` closes, and how many it holds.

    A batch closes when it reaches ``max_batch`` or when its oldest request has waited ``timeout_s``, whether
    or not the GPU is free (closed batches then queue for the GPU in order).

    Examples
    --------
    >>> tf_serving_close([0.0, 0.001, 0.002, 0.5], 0, max_batch=2, timeout_s=0.01)
    (0.001, 2)
    >>> tf_serving_close([0.0, 0.001, 0.002, 0.5], 2, max_batch=2, timeout_s=0.01)
    (0.012, 1)
    """
    n = len(arrivals)
    if not 0 <= start < n:
        raise ValueError(f"start: must be in 0..{n - 1}, got {start}")
    full = start + max_batch - 1
    expire = arrivals[start] + timeout_s
    if full < n and arrivals[full] <= expire:
        return float(arrivals[full]), max_batch
    return float(expire), bisect_right(arrivals, expire, start, min(n, start + max_batch)) - start


def triton_dispatch(arrivals: Sequence[float], start: int, free_at: float, max_batch: int,
                    max_queue_delay_s: float) -> tuple[float, int]:
    """Triton's dynamic batcher: when the queue headed by ``arrivals[start]`` is dispatched, and how many go.

    Once the GPU is free (``free_at``) and a request is queued, dispatch at once when ``max_batch`` are queued;
    otherwise wait until ``max_batch`` are queued or the oldest has waited ``max_queue_delay_s``, whichever
    comes first, and dispatch what is queued then.

    Examples
    --------
    >>> triton_dispatch([0.0, 0.001, 0.002], 0, free_at=0.0, max_batch=4, max_queue_delay_s=0.005)
    (0.005, 3)
    >>> triton_dispatch([0.0, 0.001, 0.002], 0, free_at=0.01, max_batch=2, max_queue_delay_s=0.005)
    (0.01, 2)
    """
    n = len(arrivals)
    if not 0 <= start < n:
        raise ValueError(f"start: must be in 0..{n - 1}, got {start}")
    now = max(free_at, arrivals[start])
    full = start + max_batch - 1
    if full < n and arrivals[full] <= now:
        return float(now), max_batch
    expire = arrivals[start] + max_queue_delay_s
    if now < expire:
        now = min(expire, arrivals[full]) if full < n else expire
    return float(now), bisect_right(arrivals, now, start, min(n, start + max_batch)) - start


def clipper_take(arrivals: Sequence[float], start: int, free_at: float, limit: float) -> tuple[float, int]:
    """Clipper's batch: as soon as the GPU is free and a request is queued, take up to ``floor(limit)`` queued
    requests, with no waiting."""
    n = len(arrivals)
    if not 0 <= start < n:
        raise ValueError(f"start: must be in 0..{n - 1}, got {start}")
    now = max(free_at, arrivals[start])
    cap = max(1, int(limit))
    return float(now), bisect_right(arrivals, now, start, min(n, start + cap)) - start


def clipper_next_limit(limit: float, latency_s: float, waited_s: float, budget_s: float, max_batch: int,
                       step: float = 1.0, backoff: float = 0.9) -> float:
    """Clipper's AIMD batch-size limit after one batch.

    When the batch's latency plus its oldest request's queueing stayed within the budget ``L'``, grow the limit
    additively (``+step``, capped at ``max_batch``); otherwise shrink it multiplicatively (``*backoff``, at
    least 1).

    Examples
    --------
    >>> clipper_next_limit(4.0, 0.010, 0.002, 0.050, max_batch=8)
    5.0
    >>> clipper_next_limit(10.0, 0.040, 0.020, 0.050, max_batch=16)
    9.0
    """
    if latency_s + waited_s <= budget_s:
        return float(min(limit + step, max_batch))
    return float(max(1.0, limit * backoff))


def burst_take(head_deadline: float, now: float, queued: int, planned_batch: int,
               latency_s: Sequence[float] | np.ndarray) -> int:
    """Grow a full batch past its planned size while the oldest request still meets its deadline.

    Called when the head request makes its deadline with the planned batch ``b`` and more than ``b`` are queued
    (a Poisson burst): take the largest ``n`` in ``[b, queued]`` with ``now + l(n) <= head_deadline``, capped by
    the profile's largest batch. Later requests of one session have later deadlines, so all ``n`` make it; the
    excess would otherwise wait a whole turn more. Only work-conserving backends use it: other sessions on the
    GPU then wait one longer batch, which their own early drop accounts for.

    Examples
    --------
    >>> burst_take(1.35, now=1.0, queued=10, planned_batch=2, latency_s=[0.0, 0.1, 0.15, 0.2, 0.3, 0.4])
    4
    """
    n = planned_batch
    top = min(queued, len(latency_s) - 1)
    limit = head_deadline - now
    while n < top and latency_s[n + 1] <= limit:
        n += 1
    return n


#: A host-CPU backend holds a batch back until it costs at most this much more per request than the planned batch.
FLOOR_SLACK = 0.15


#: Host CPU busy fractions between which a backend whose device is the host's CPU batches as the plan allows
#: (``cpu_pressure``): on at ``PRESSURE_ON``, off again below ``PRESSURE_OFF`` (the gap keeps the switch from
#: flapping, since batching more frees CPU).
PRESSURE_ON = 0.8
PRESSURE_OFF = 0.6
#: Under CPU pressure the floor is the smallest batch within this much of the planned batch's cost per request
#: (instead of ``FLOOR_SLACK``): past it a bigger batch saves little and costs latency.
PRESSURE_SLACK = 0.05


def cpu_pressure(was: bool, busy: float, on: float = PRESSURE_ON, off: float = PRESSURE_OFF) -> bool:
    """Whether the host's cores are short (hysteresis on ``busy``, their busy fraction over the last interval).
    While they are, a host-CPU backend holds for batches nearer the planned one (``PRESSURE_SLACK``): in larger
    batches a request costs less forward pass, event loop and message, and that CPU is what the device itself runs
    on."""
    return busy >= on or (was and busy >= off)


def batch_floor(latency: Sequence[float] | np.ndarray, planned_batch: int, slack: float = FLOOR_SLACK) -> int:
    """The smallest batch ``n <= b`` whose latency per request ``l(n)/n`` is within ``slack`` of the planned batch
    ``b``'s (``latency[n]`` is ``l(n)``, any unit; 1 when the table cannot tell). A backend whose device is the
    host's CPU holds a smaller batch back for at most ``l(floor)``, and its frontends coalesce for that hold."""
    b = int(planned_batch)
    if b <= 1 or len(latency) <= b or not latency[b] > 0:
        return 1
    target = (1.0 + slack) * float(latency[b]) / b
    return next((n for n in range(1, b + 1) if float(latency[n]) / n <= target), b)


def floor_hold_s(latency: Sequence[float] | np.ndarray, floor: int, duty_s: float) -> float:
    """How long a batch below its ``floor`` waits for company (``latency[n]`` is ``l(n)`` in seconds): no longer
    than the floor batch itself takes (holding costs at most one short batch of latency), nor than a duty cycle
    (the wait the plan allows); 0 without a floor (``floor <= 1``)."""
    return min(float(duty_s), float(latency[floor])) if floor > 1 else 0.0


def held_until(take: int, floor: int, oldest_s: float, hold_s: float) -> float | None:
    """When a batch of ``take`` below its ``floor`` must run anyway: its oldest request (arrived at ``oldest_s``)
    has then waited ``hold_s``; None when the batch runs now (empty, or at its floor)."""
    return oldest_s + hold_s if 0 < take < floor else None


def burst_limit(planned_batch: int, max_batch: int) -> int:
    """The largest batch a burst may grow a planned batch ``b`` to (``burst_take``): the largest batch the model's
    profile covers (``max_batch``; a device without a profile passes ``2b``), never less than ``b``. Growing
    further than the plan delays the other sessions of the GPU by one longer batch, which their own early drop
    accounts for (docs/architecture.md, section 7, has the measurement that chose this bound).

    Examples
    --------
    >>> burst_limit(8, 64), burst_limit(8, 4)
    (64, 8)
    """
    return max(int(planned_batch), int(max_batch))


def form_prefix_unit(queued: Sequence[int], batches: Sequence[int], prefix_latency: Sequence[float] | np.ndarray,
                     suffix_latency: Sequence[Sequence[float] | np.ndarray],
                     member_window: Callable[[int, float, Sequence[float] | np.ndarray], Window]
                     ) -> tuple[list[Window], float]:
    """Form a prefix unit (prefix once on every member's batch, then each suffix on its slice).

    Batch sizes first as if nothing were dropped (``min(queued_i, b_i)``: an upper bound ``N`` on the prefix
    batch), so each member's early drop sees what really runs before its suffix ends: ``l_P(N)``, the earlier
    suffixes' batches, then its own ``l_Si(n)``. ``member_window(i, ahead, l_Si)`` runs member ``i``'s early drop
    against the latency ``ahead + l_Si(n)``. Returns each member's window and the unit's planned duration (0 and
    no windows when nothing is queued).
    """
    sizes = [min(int(q), int(b)) for q, b in zip(queued, batches, strict=True)]
    total = sum(sizes)
    if not total:
        return [], 0.0
    ahead = float(prefix_latency[min(total, len(prefix_latency) - 1)])
    windows = []
    for i, m in enumerate(sizes):
        if not m:
            windows.append(Window(0, 0))
            continue
        w = member_window(i, ahead, suffix_latency[i])
        windows.append(w)
        ahead += float(suffix_latency[i][w.take])
    return windows, ahead
