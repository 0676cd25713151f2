"""The rate monitor of the epoch loop: a moving average of each session's measured arrival rate, when one moved
enough to re-plan, and a query's fan-outs measured from its stages' arrivals.

Pure: fed arrival counts and window lengths by the controller; no clock, no Dask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..workload import StageSpec


@dataclass
class RateMonitor:
    """Exponentially weighted moving average of arrivals per second, per session, quick to rise.

    ``alpha`` weighs the newest window (0 < alpha <= 1); a session's rate is trusted once it has been seen in
    ``min_windows`` windows. ``rate`` is the larger of the average and the lesser of the two newest windows: a
    surge that lasts two windows is planned for at once (under-provisioning drops requests; one noisy window
    is not a surge), a lull only as the average decays (over-provisioning costs GPUs, not requests). A
    lifecycle object (it accumulates), hence a class.
    """

    alpha: float = 0.3
    min_windows: int = 2
    _rate: dict[str, float] = field(default_factory=dict)
    _windows: dict[str, int] = field(default_factory=dict)
    _last: dict[str, tuple[float, float]] = field(default_factory=dict)  # the two newest windows' rates

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha: must be in (0, 1], got {self.alpha}")
        if self.min_windows < 1:
            raise ValueError(f"min_windows: must be >= 1, got {self.min_windows}")

    def observe(self, arrivals: Mapping[str, float], window_s: float, sessions: set[str] | None = None) -> None:
        """Fold in one window: ``arrivals[session]`` requests in ``window_s`` seconds (absent sessions: 0 when
        listed in ``sessions``)."""
        if not window_s > 0:
            return
        names = set(arrivals) | set(sessions or ())
        for s in names:
            r = float(arrivals.get(s, 0.0)) / window_s
            prev = self._rate.get(s)
            self._rate[s] = r if prev is None else (1 - self.alpha) * prev + self.alpha * r
            self._last[s] = (self._last.get(s, (r, r))[1], r)
            self._windows[s] = self._windows.get(s, 0) + 1

    def rate(self, session: str) -> float | None:
        """``max(moving average, min(two newest windows))``, or ``None`` until ``min_windows`` windows."""
        if self._windows.get(session, 0) < self.min_windows:
            return None
        return max(self._rate[session], min(self._last[session]))

    def average(self, session: str) -> float | None:
        """The plain moving average (``None`` until ``min_windows`` windows were seen)."""
        if self._windows.get(session, 0) < self.min_windows:
            return None
        return self._rate.get(session)

    def rates(self) -> dict[str, float]:
        return {s: r for s in self._rate if (r := self.rate(s)) is not None}

    def forget(self, session: str) -> None:
        self._rate.pop(session, None)
        self._windows.pop(session, None)
        self._last.pop(session, None)


def moved(planned: Mapping[str, float], measured: Mapping[str, float], threshold: float, floor: float = 5.0,
          up_only: bool = False) -> list[str]:
    """Sessions whose measured rate differs from the planned one by more than ``threshold`` (relative); with
    ``up_only`` only those that rose (a fall can wait for the epoch: it costs GPUs, not requests).

    ``floor`` keeps near-zero rates from triggering on noise: the relative change is taken against
    ``max(planned, floor)``.
    """
    out = []
    for s, m in measured.items():
        if s not in planned:
            continue
        p = planned[s]
        if (m - p if up_only else abs(m - p)) > threshold * max(p, floor):
            out.append(s)
    return sorted(out)


def fanouts(stages: Sequence[StageSpec], rates: Mapping[str, float], floor: float = 1.0) -> dict[str, float]:
    """The measured fan-out (gamma) of each non-root stage of a query: its arrival rate over the sum of its
    parents' (the planner's convention, ``StageSpec``: a stage's rate is gamma times the sum of its parents'
    rates, so a join's arrivals are measured against all of its parents together). ``rates``: stage name ->
    measured arrival rate (req/s); a stage is left out until it and every parent are measured, it saw
    arrivals, and its parents together reach ``floor`` req/s (below it the ratio is noise)."""
    out: dict[str, float] = {}
    for st in stages:
        if not st.parents or st.name not in rates or any(p not in rates for p in st.parents):
            continue
        child, parents = float(rates[st.name]), sum(float(rates[p]) for p in st.parents)
        if child > 0 and parents >= floor:
            out[st.name] = child / parents
    return out
