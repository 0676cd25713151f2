"""A backend's counters: one window since the last ``nexus_stats`` poll and the totals since it started, the
bounded batch trace, the overrun of batches against their plan, and the Prometheus export of the totals."""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

__all__ = ["LATENCY_BUCKETS_MS", "BackendStats", "register_metrics"]

# Upper edges (ms) of the per-session latency histogram; the last bucket is open.
LATENCY_BUCKETS_MS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, math.inf)
_LAT_SAMPLES = 20000  # latency samples kept per session per stats window (for p50/p99)
OVERRUN_WINDOW = 256  # recent batches whose lateness (finish - formed - planned l(b)) the stats report


class _Counts:
    """Counters of one window (or the cumulative totals)."""

    def __init__(self) -> None:
        self.t0 = time.time()
        self.busy_s = 0.0
        self.batches: Counter[str] = Counter()
        self.batch_sizes: dict[str, Counter[int]] = {}
        self.arrivals: Counter[str] = Counter()
        self.served: Counter[str] = Counter()
        self.within_slo: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.drops: dict[str, Counter[str]] = {}
        self.lat_hist: dict[str, list[int]] = {}

    def block(self, now: float, samples: dict[str, list[float]] | None) -> dict[str, Any]:
        """This window as the ``nexus_stats`` reply has it; percentiles from ``samples`` when given."""
        wall = max(now - self.t0, 1e-9)
        per: dict[str, Any] = {}
        for s in sorted(set(self.arrivals) | set(self.served) | set(self.drops) | set(self.errors), key=str):
            rec: dict[str, Any] = {
                "arrivals": self.arrivals.get(s, 0), "served": self.served.get(s, 0),
                "within_slo": self.within_slo.get(s, 0), "errors": self.errors.get(s, 0),
                "drops": dict(self.drops.get(s, {})), "batches": self.batches.get(s, 0),
                "batch_sizes": {int(k): v for k, v in sorted(self.batch_sizes.get(s, {}).items())},
                "latency_hist": list(self.lat_hist.get(s, [0] * len(LATENCY_BUCKETS_MS))),
                "rate": self.arrivals.get(s, 0) / wall,
            }
            if samples is not None:
                lats = samples.get(s)
                rec["p50_ms"] = float(np.percentile(lats, 50)) if lats else None
                rec["p99_ms"] = float(np.percentile(lats, 99)) if lats else None
            per[str(s)] = rec
        drops: Counter[str] = Counter()
        for c in self.drops.values():
            drops.update(c)
        sizes: Counter[int] = Counter()
        for c in self.batch_sizes.values():
            sizes.update(c)
        return {"t0": self.t0, "t1": now, "utilization": min(1.0, self.busy_s / wall), "busy_s": self.busy_s,
                "batches": sum(self.batches.values()), "batch_sizes": {int(k): v for k, v in sorted(sizes.items())},
                "served": sum(self.served.values()), "within_slo": sum(self.within_slo.values()),
                "drops": dict(drops), "errors": sum(self.errors.values()), "sessions": per}


def _bucket(lat_ms: float) -> int:
    for j, edge in enumerate(LATENCY_BUCKETS_MS):
        if lat_ms <= edge:
            return j
    return len(LATENCY_BUCKETS_MS) - 1


class BackendStats:
    """What a backend measured: every request that reaches it is counted once as arrived, then as served (within
    its SLO or not), dropped (with the reason) or failed."""

    def __init__(self, trace_len: int) -> None:
        self.win = _Counts()
        self.cum = _Counts()
        self._samples: dict[str, list[float]] = {}
        self.trace: deque[tuple[str, float, float, int]] = deque(maxlen=trace_len)
        # Lateness of recent batches against their plan: a loaded host (sleep overshoot, a busy event loop)
        # finishes batches later than planned, which no plan accounts for; its p99 shows a user when the host,
        # not the plan, costs SLO attainment.
        self.overrun: deque[float] = deque(maxlen=OVERRUN_WINDOW)

    def _both(self) -> tuple[_Counts, _Counts]:
        return self.cum, self.win

    def arrival(self, session: str) -> None:
        self.cum.arrivals[session] += 1
        self.win.arrivals[session] += 1

    def drop(self, session: str, reason: str) -> None:
        for st in self._both():
            st.drops.setdefault(session, Counter())[reason] += 1

    def failed(self, session: str, n: int) -> None:
        for st in self._both():
            st.errors[session] += n

    def busy(self, seconds: float, late_s: float) -> None:
        """A batch kept the device busy ``seconds`` and finished ``late_s`` after its plan."""
        self.cum.busy_s += seconds
        self.win.busy_s += seconds
        self.overrun.append(late_s)

    def served(self, session: str, t0: float, t1: float, done: float, starts: Sequence[float],
               e2e: Sequence[float]) -> None:
        """One session's part of a batch that ran ``t0..t1`` and was replied to at ``done``: its requests'
        latencies count from ``starts``, within SLO when ``done <= e2e``."""
        n = len(starts)
        self.trace.append((session, t0, t1, n))
        lats = self._samples.setdefault(session, [])
        hist_c = self.cum.lat_hist.setdefault(session, [0] * len(LATENCY_BUCKETS_MS))
        hist_w = self.win.lat_hist.setdefault(session, [0] * len(LATENCY_BUCKETS_MS))
        within = 0
        for start, deadline in zip(starts, e2e, strict=True):
            lat_ms = (done - start) * 1000.0
            within += done <= deadline
            if len(lats) < _LAT_SAMPLES:
                lats.append(lat_ms)
            j = _bucket(lat_ms)
            hist_c[j] += 1
            hist_w[j] += 1
        for st in self._both():
            st.batches[session] += 1
            st.batch_sizes.setdefault(session, Counter())[n] += 1
            st.served[session] += n
            st.within_slo[session] += within

    def report(self, reset: bool) -> dict[str, Any]:
        """The window (with p50/p99) and, under ``cumulative``, the totals; ``reset`` starts a new window."""
        now = time.time()
        out = self.win.block(now, self._samples)
        out["cumulative"] = self.cum.block(now, None)
        ov = self.overrun
        out["overrun_p99_ms"] = float(np.percentile(np.fromiter(ov, float, len(ov)), 99)) * 1000.0 if ov else None
        out["trace"] = list(self.trace)
        out["latency_buckets_ms"] = [*list(LATENCY_BUCKETS_MS[:-1]), None]
        if reset:
            self.win = _Counts()
            self._samples = {}
            self.trace.clear()
        return out


# ---------------------------------------------------------------------------------------------- prometheus
_EXPORTED: weakref.WeakKeyDictionary[Any, tuple[str, BackendStats, Any]] = weakref.WeakKeyDictionary()
_METRICS_LOCK = threading.Lock()
_COLLECTOR: Any = None


class _NexusCollector:
    """Exports every live backend of this process on the worker's ``/metrics`` (prometheus_client's global
    registry, which distributed's worker route renders), labelled by worker address."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        util = GaugeMetricFamily("nexus_utilization", "Device busy fraction since the backend started",
                                 labels=["worker"])
        queue = GaugeMetricFamily("nexus_queue_length", "Queued requests per session", labels=["worker", "session"])
        served = CounterMetricFamily("nexus_served", "Requests served per session", labels=["worker", "session"])
        within = CounterMetricFamily("nexus_within_slo", "Requests served within their SLO",
                                     labels=["worker", "session"])
        drops = CounterMetricFamily("nexus_dropped", "Requests dropped per session and reason",
                                    labels=["worker", "session", "reason"])
        batches = CounterMetricFamily("nexus_batches", "Batches run per session", labels=["worker", "session"])
        for addr, stats, queues in list(_EXPORTED.values()):
            cum = stats.cum
            util.add_metric([addr], min(1.0, cum.busy_s / max(time.time() - cum.t0, 1e-9)))
            for s, n in queues.lengths().items():
                queue.add_metric([addr, s], n)
            for s, v in list(cum.served.items()):
                served.add_metric([addr, str(s)], v)
                within.add_metric([addr, str(s)], cum.within_slo.get(s, 0))
            for s, c in list(cum.drops.items()):
                for reason, v in c.items():
                    drops.add_metric([addr, str(s), reason], v)
            for s, v in list(cum.batches.items()):
                batches.add_metric([addr, str(s)], v)
        yield from (util, queue, served, within, drops, batches)


def register_metrics(owner: Any, address: str, stats: BackendStats, queues: Any) -> None:
    """Export ``stats`` (and the lengths of ``queues``) on this process's Prometheus registry while ``owner``
    lives; ``unregister_metrics`` ends it sooner."""
    global _COLLECTOR
    _EXPORTED[owner] = (str(address), stats, queues)
    with _METRICS_LOCK:
        if _COLLECTOR is not None:
            return
        try:
            import prometheus_client
        except ModuleNotFoundError:  # metrics are optional, like distributed's own
            return
        _COLLECTOR = _NexusCollector()
        prometheus_client.REGISTRY.register(_COLLECTOR)


def unregister_metrics(owner: Any) -> None:
    _EXPORTED.pop(owner, None)
