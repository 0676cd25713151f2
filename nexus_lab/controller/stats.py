"""Aggregating the backends' stats windows into per-session and per-GPU figures for ``Controller.stats()``.

Pure: reads the dicts ``NexusBackend.nexus_stats`` returns; no Dask, no clock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np


def strip_window(worker: str, window: Mapping[str, Any]) -> dict[str, Any]:
    """The part of one backend window worth keeping in the bounded history (no batch trace, no histograms)."""
    sessions = {}
    for s, rec in (window.get("sessions") or {}).items():
        sessions[s] = {k: rec.get(k) for k in ("arrivals", "served", "within_slo", "errors", "drops", "batches",
                                               "p50_ms", "p99_ms")}
        sessions[s]["drops"] = dict(rec.get("drops") or {})
    return {"worker": worker, "t0": float(window.get("t0", 0.0)), "t1": float(window.get("t1", 0.0)),
            "utilization": float(window.get("utilization", 0.0)), "batches": int(window.get("batches", 0)),
            "queues": dict(window.get("queues") or {}), "sessions": sessions}


def aggregate(windows: Iterable[Mapping[str, Any]], gpu_of: Mapping[str, int | None] | None = None
              ) -> dict[str, Any]:
    """Sum stripped windows (any workers, any times) into rates over their common span.

    Per session: ``offered_rate`` (arrivals/s), ``goodput`` (finished within SLO per second), ``slo_attainment``
    (within-SLO share of arrivals), ``drops`` by reason, ``errors``, ``latency_p50_ms`` (served-weighted mean of
    the windows' p50) and ``latency_p99_ms`` (the worst window's p99, an upper bound). Per worker: mean
    utilization and its plan GPU id.
    """
    windows = list(windows)
    if not windows:
        return {"span_s": 0.0, "sessions": {}, "gpus": {}, "totals": _totals({}, 0.0)}
    t0 = min(w["t0"] for w in windows)
    t1 = max(w["t1"] for w in windows)
    span = max(t1 - t0, 1e-9)
    per: dict[str, dict[str, Any]] = {}
    for w in windows:
        for s, rec in w["sessions"].items():
            acc = per.setdefault(s, {"arrivals": 0, "served": 0, "within_slo": 0, "errors": 0, "drops": Counter(),
                                     "_p50w": 0.0, "_p50n": 0, "latency_p99_ms": None})
            for k in ("arrivals", "served", "within_slo", "errors"):
                acc[k] += int(rec.get(k) or 0)
            acc["drops"].update(rec.get("drops") or {})
            n = int(rec.get("served") or 0)
            if rec.get("p50_ms") is not None and n:
                acc["_p50w"] += rec["p50_ms"] * n
                acc["_p50n"] += n
            if rec.get("p99_ms") is not None:
                acc["latency_p99_ms"] = max(acc["latency_p99_ms"] or 0.0, float(rec["p99_ms"]))
    sessions = {}
    for s, acc in sorted(per.items()):
        # Outcomes, counted when each request ended (as ``within_slo`` is), not arrivals: a window boundary between
        # a request's arrival and its reply would otherwise push attainment past 1.
        ended = acc["served"] + sum(acc["drops"].values()) + acc["errors"]
        sessions[s] = {
            "offered_rate": acc["arrivals"] / span,
            "goodput": acc["within_slo"] / span,
            "slo_attainment": acc["within_slo"] / ended if ended else 1.0, "ended": ended,
            "requests": acc["arrivals"], "served": acc["served"], "within_slo": acc["within_slo"],
            "errors": acc["errors"], "drops": dict(acc["drops"]),
            "latency_p50_ms": acc["_p50w"] / acc["_p50n"] if acc["_p50n"] else None,
            "latency_p99_ms": acc["latency_p99_ms"],
        }
    busy: dict[str, list[float]] = {}
    for w in windows:
        busy.setdefault(w["worker"], []).append(w["utilization"] * max(w["t1"] - w["t0"], 0.0))
    gpus = {}
    for worker, parts in sorted(busy.items()):
        spans = [max(w["t1"] - w["t0"], 0.0) for w in windows if w["worker"] == worker]
        gpus[worker] = {"utilization": sum(parts) / max(sum(spans), 1e-9),
                        "gpu": (gpu_of or {}).get(worker)}
    return {"span_s": span, "sessions": sessions, "gpus": gpus, "totals": _totals(sessions, span)}


def _totals(sessions: Mapping[str, Mapping[str, Any]], span: float) -> dict[str, Any]:
    arrivals = sum(m["requests"] for m in sessions.values())
    ended = sum(m["ended"] for m in sessions.values())
    within = sum(m["within_slo"] for m in sessions.values())
    drops: Counter[str] = Counter()
    for m in sessions.values():
        drops.update(m["drops"])
    return {"offered_rate": arrivals / span if span else 0.0, "goodput": within / span if span else 0.0,
            "slo_attainment": within / ended if ended else 1.0, "requests": arrivals, "drops": dict(drops),
            "errors": sum(m["errors"] for m in sessions.values())}


def arrivals_of(windows: Iterable[Mapping[str, Any]]) -> tuple[dict[str, float], float]:
    """Total arrivals per session over a set of windows taken in one poll, and the poll's window length (s)."""
    out: Counter[str] = Counter()
    spans = []
    for w in windows:
        spans.append(max(w["t1"] - w["t0"], 0.0))
        for s, rec in w["sessions"].items():
            out[s] += int(rec.get("arrivals") or 0)
    return dict(out), (max(spans) if spans else 0.0)


def empty_query_row(slo_ms: float | None) -> dict[str, Any]:
    """A query's end-to-end row before any of its frames was measured."""
    return {"slo_ms": slo_ms, "frames": 0, "ended": 0, "completed": 0, "within_slo": 0, "offered_rate": None,
            "goodput": None, "slo_attainment": None, "latency_p50_ms": None, "latency_p99_ms": None,
            "ended_by": {}}


def aggregate_queries(windows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Pool windows of query outcomes (``runtime.query_stats.QueryBoard.take_window``, from any sources and
    times) into one end-to-end row per query, over their common span.

    ``frames``: frames offered; ``offered_rate`` and ``goodput`` (frames within the SLO) per second;
    ``slo_attainment``: frames within the SLO over frames that ended (outcomes counted when they end, as the stage
    rows count them); ``latency_p50_ms``/``latency_p99_ms``: of the completed frames' end-to-end latencies;
    ``ended_by``: frames a stage ended, by ``"stage: reason"``.
    """
    windows = [w for w in windows if w.get("queries")]
    if not windows:
        return {}
    span = max(max(float(w["t1"]) for w in windows) - min(float(w["t0"]) for w in windows), 1e-9)
    acc: dict[str, dict[str, Any]] = {}
    for w in windows:
        for q, rec in w["queries"].items():
            a = acc.setdefault(q, {**empty_query_row(rec.get("slo_ms")), "_lat": [], "ended_by": Counter()})
            for k, src in (("frames", "offered"), ("ended", "ended"), ("completed", "completed"),
                           ("within_slo", "within_slo")):
                a[k] += int(rec.get(src) or 0)
            a["ended_by"].update(rec.get("ended_by") or {})
            a["_lat"].extend(rec.get("latencies_ms") or ())
    out = {}
    for q, a in sorted(acc.items()):
        lats = np.asarray(a.pop("_lat"), dtype=float)
        out[q] = {**a, "ended_by": dict(a["ended_by"]), "offered_rate": a["frames"] / span,
                  "goodput": a["within_slo"] / span,
                  "slo_attainment": a["within_slo"] / a["ended"] if a["ended"] else None,
                  "latency_p50_ms": float(np.percentile(lats, 50)) if lats.size else None,
                  "latency_p99_ms": float(np.percentile(lats, 99)) if lats.size else None}
    return out
