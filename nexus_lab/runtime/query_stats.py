"""End-to-end tallies of query frames where they run (a load generator, a controller), cut into windows that reach
the controller: a query's end-to-end numbers exist only where its frames start and end, never at a backend.

A ``QueryBoard`` counts each query's frames (offered, ended, completed, within SLO, which stage ended them and why,
the latencies of completed frames) and closes a window every ``PUBLISH_S``. A load generator on a worker writes
each window to the scheduler's metadata under ``[QUERY_STATS_KEY, generator, slot]`` (a ring of ``KEEP_WINDOWS``
slots: one small write per second, nothing rewritten); a controller reads them all with one ``get_metadata`` and
pools them with its own (``controller.stats.aggregate_queries``). Plain counters; no planning, no Dask here.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["KEEP_WINDOWS", "LATENCY_CAP", "PUBLISH_S", "QUERY_STATS_KEY", "QueryBoard", "metadata_publisher"]

QUERY_STATS_KEY = "nexus_lab-query-stats"
PUBLISH_S = 1.0  # how often a board closes a window (and a generator publishes it)
KEEP_WINDOWS = 120  # windows a board (and a generator's metadata ring) keeps: two minutes
LATENCY_CAP = 2000  # latencies a window keeps per query (the first ones; counts stay exact)


class _Counts:
    __slots__ = ("completed", "ended", "ended_by", "errors", "latencies_ms", "offered", "within_slo")

    def __init__(self) -> None:
        self.offered = self.ended = self.completed = self.within_slo = 0
        self.ended_by: dict[str, int] = {}
        self.latencies_ms: list[float] = []
        self.errors: list[str] = []

    def add(self, result: Mapping[str, Any], keep: int) -> None:
        self.ended += 1
        end = result.get("ended_by")
        if end is None:
            self.completed += 1
            self.within_slo += bool(result.get("within_slo"))
            if len(self.latencies_ms) < keep:
                self.latencies_ms.append(float(result["latency_ms"]))
            return
        key = f"{end['stage']}: {end['reason']}" if end.get("status") == "dropped" else f"{end['stage']}: failed"
        self.ended_by[key] = self.ended_by.get(key, 0) + 1
        if end.get("status") != "dropped" and len(self.errors) < 5:
            self.errors.append(f"{end['stage']}: {end.get('reason')}")

    def as_dict(self) -> dict[str, Any]:
        return {"offered": self.offered, "ended": self.ended, "completed": self.completed,
                "within_slo": self.within_slo, "ended_by": dict(self.ended_by), "latencies_ms": list(self.latencies_ms)}


class QueryBoard:
    """Frame outcomes of several queries: ``offer`` when a frame starts, ``record`` its result; ``total`` for a
    final report, ``take_window`` for live stats. ``record`` and ``offer`` may run on one thread and
    ``take_window`` on another."""

    def __init__(self, slo_ms: Mapping[str, float], *, keep_latencies: int = 200000) -> None:
        self.slo_ms = {q: float(v) for q, v in slo_ms.items()}
        self._lock = threading.Lock()
        self._keep = keep_latencies
        self._total = {q: _Counts() for q in self.slo_ms}
        self._win = {q: _Counts() for q in self.slo_ms}
        self._t0 = time.time()
        self.windows: deque[dict[str, Any]] = deque(maxlen=KEEP_WINDOWS)

    def add_query(self, name: str, slo_ms: float) -> None:
        with self._lock:
            if name not in self.slo_ms:
                self.slo_ms[name] = float(slo_ms)
                self._total[name], self._win[name] = _Counts(), _Counts()

    def offer(self, query: str, n: int = 1) -> None:
        with self._lock:
            self._total[query].offered += n
            self._win[query].offered += n

    def record(self, query: str, result: Mapping[str, Any]) -> None:
        """Count one frame's result (as ``start_query`` gives it)."""
        with self._lock:
            self._total[query].add(result, self._keep)
            self._win[query].add(result, LATENCY_CAP)

    def unfinished(self) -> int:
        """Frames offered that have not ended yet, over all queries."""
        with self._lock:
            return sum(c.offered - c.ended for c in self._total.values())

    def on_result(self, query: str) -> Callable[[Mapping[str, Any]], None]:
        return lambda result: self.record(query, result)

    def take_window(self) -> dict[str, Any]:
        """Close the current window (what happened since the last one) and keep it: ``{"t0", "t1", "queries":
        {query: {"slo_ms", "offered", "ended", "completed", "within_slo", "ended_by", "latencies_ms"}}}``."""
        with self._lock:
            now = time.time()
            win = {"t0": self._t0, "t1": now, "queries": {q: {"slo_ms": self.slo_ms[q], **c.as_dict()}
                                                          for q, c in self._win.items()}}
            self._win = {q: _Counts() for q in self.slo_ms}
            self._t0 = now
            self.windows.append(win)
        return win

    def total(self, duration_s: float) -> dict[str, dict[str, Any]]:
        """Per query over the whole run: counts, ``slo_attainment`` (within SLO over offered), ``goodput`` (frames
        within SLO per second of ``duration_s``), p50/p99 (ms) of completed frames, ``unfinished``."""
        with self._lock:
            counts = {q: (self.slo_ms[q], c.as_dict(), list(c.errors)) for q, c in self._total.items()}
        out = {}
        for q, (slo, c, errors) in counts.items():
            lats = np.asarray(c.pop("latencies_ms"))
            out[q] = {**c, "slo_ms": slo, "unfinished": c["offered"] - c["ended"],
                      "slo_attainment": c["within_slo"] / c["offered"] if c["offered"] else None,
                      "goodput": c["within_slo"] / duration_s if duration_s > 0 else 0.0,
                      "p50_ms": float(np.percentile(lats, 50)) if lats.size else None,
                      "p99_ms": float(np.percentile(lats, 99)) if lats.size else None,
                      "errors": errors, "latencies_ms": lats.tolist()}
        return out


def metadata_publisher(client: Any, source: str) -> Callable[[dict[str, Any]], None]:
    """``publish(window)`` writing each window to ``[QUERY_STATS_KEY, source, slot]`` of the scheduler's metadata
    (slots ``0..KEEP_WINDOWS-1`` in turn): what a load generator on a worker does. Blocking: call it off the
    frontend's loop."""
    slot = iter(range(1 << 62))

    def publish(window: dict[str, Any]) -> None:
        client.set_metadata([QUERY_STATS_KEY, source, str(next(slot) % KEEP_WINDOWS)], window)

    return publish


def run_publisher(board: QueryBoard, publish: Callable[[dict[str, Any]], None], stop: threading.Event) -> None:
    """A thread's loop: close a window every ``PUBLISH_S`` and hand it to ``publish`` (a failing publish is
    skipped: the next window still goes out), and once more when ``stop`` is set."""
    while True:
        stopped = stop.wait(PUBLISH_S)
        with contextlib.suppress(Exception):  # a scheduler hiccup: this window is lost, the run and its report are not
            publish(board.take_window())
        if stopped:
            return
