"""Request arrival processes: Poisson, uniform, bursty (gamma) and traces, vectorised with numpy.

One definition for the simulator and the runtime's load generator. Pure functions of a rate, a duration and a
seeded generator; no planner, simulator or Dask types.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ARRIVAL_KINDS = ("poisson", "uniform", "bursty", "trace")


@dataclass(frozen=True, eq=False)
class ArrivalSpec:
    """How one session's requests arrive: ``kind`` in ``ARRIVAL_KINDS``; ``cv`` is the coefficient of variation
    of bursty inter-arrival times; ``trace`` holds absolute timestamps in seconds (kind ``trace``)."""

    kind: str = "poisson"
    cv: float = 2.0
    trace: Sequence[float] | np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.kind not in ARRIVAL_KINDS:
            raise ValueError(f"arrivals.kind: must be one of {list(ARRIVAL_KINDS)}, got {self.kind!r}")
        if not (math.isfinite(self.cv) and self.cv > 0):
            raise ValueError(f"arrivals.cv: must be a finite number > 0, got {self.cv}")
        if self.kind == "trace":
            if self.trace is None:
                raise ValueError("arrivals.trace: required when kind is 'trace'")
            t = np.asarray(self.trace, dtype=np.float64).ravel()
            if np.any(~np.isfinite(t)) or np.any(t < 0):
                raise ValueError("arrivals.trace: timestamps must be finite and >= 0 (seconds)")
            t = np.sort(t)
            t.setflags(write=False)
            object.__setattr__(self, "trace", t)


def _renewal(rng: np.random.Generator, rate: float, duration_s: float, draw) -> np.ndarray:
    """Cumulative sums of i.i.d. gaps (mean ``1/rate``) up to ``duration_s``, drawn in a few large chunks."""
    mean = rate * duration_s
    parts: list[np.ndarray] = []
    last = 0.0
    while True:
        size = int(mean + 6.0 * math.sqrt(mean) + 16) if not parts else int(mean / 4 + 16)
        t = last + np.cumsum(draw(size))
        parts.append(t)
        last = float(t[-1])
        if last >= duration_s:
            break
    out = np.concatenate(parts)
    return out[: int(np.searchsorted(out, duration_s, side="left"))]


def generate(kind: str, rate: float, duration_s: float, rng: np.random.Generator, *, cv: float = 2.0,
             trace: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """Sorted arrival times in ``[0, duration_s)`` of a process with mean ``rate`` requests per second.

    ``poisson``: exponential gaps. ``uniform``: evenly spaced ``1/rate`` apart from a random phase.
    ``bursty``: gamma gaps with coefficient of variation ``cv`` (shape ``1/cv^2``, scale ``cv^2/rate``; cv = 1 is
    Poisson). ``trace``: the given timestamps (``rate`` is ignored).

    Examples
    --------
    >>> t = generate("poisson", 100.0, 10.0, np.random.default_rng(0))
    >>> 900 < len(t) < 1100, bool(np.all(np.diff(t) >= 0))
    (True, True)
    """
    spec = ArrivalSpec(kind, cv, trace)
    if kind == "trace":
        t = np.asarray(spec.trace)
        return t[: int(np.searchsorted(t, duration_s, side="left"))].copy()
    if not (math.isfinite(rate) and rate >= 0):
        raise ValueError(f"rate: must be a finite number >= 0, got {rate}")
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"duration_s: must be a finite number > 0, got {duration_s}")
    if rate == 0:
        return np.empty(0)
    if kind == "uniform":
        phase = float(rng.random()) / rate
        n = max(0, math.ceil((duration_s - phase) * rate))
        t = phase + np.arange(n) / rate
        return t[t < duration_s]
    if kind == "poisson":
        return _renewal(rng, rate, duration_s, lambda n: rng.exponential(1.0 / rate, n))
    shape = 1.0 / (cv * cv)
    return _renewal(rng, rate, duration_s, lambda n: rng.gamma(shape, cv * cv / rate, n))
