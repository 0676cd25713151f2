"""What a load generator reports: per-session outcome tallies, the per-session report of one generator, and the
merge of many generators' reports (sessions and queries). Plain counting; no frontend, no cluster.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["Tally", "merge_reports", "session_report"]


class Tally:
    """Outcome counts of one session, updated by the frontend's ``on_done`` callbacks on its loop thread (where
    the open loop runs too, so no lock is needed)."""

    def __init__(self, slo_s: float) -> None:
        self.slo_s = slo_s
        self.offered = 0
        self.ended = 0
        self.ok = 0
        self.within_slo = 0
        self.failed = 0
        self.dropped: dict[str, int] = {}
        self.latencies_ms: list[float] = []
        self.errors: list[str] = []

    def on_done(self, sent: float) -> Callable[[str, Any], None]:
        """The ``on_done`` of a request that arrived at ``sent`` (time.time()): its latency counts from then."""

        def done(status: str, value: Any) -> None:
            self.ended += 1
            if status == "ok":
                lat = time.time() - sent
                self.ok += 1
                self.within_slo += lat <= self.slo_s
                if len(self.latencies_ms) < 200000:
                    self.latencies_ms.append(lat * 1000.0)
            elif status == "dropped":
                self.dropped[value] = self.dropped.get(value, 0) + 1
            else:
                self.failed += 1
                if len(self.errors) < 5:
                    self.errors.append(str(value))

        return done


def session_report(names: list[str], tallies: list[Tally], kind: str, duration_s: float, wall: float
                   ) -> dict[str, Any]:
    out: dict[str, Any] = {"duration_s": wall, "kind": kind, "sessions": {}}
    for s, t in zip(names, tallies, strict=True):
        lats = np.asarray(t.latencies_ms)
        out["sessions"][s] = {
            "offered": t.offered, "offered_rate": t.offered / max(duration_s, 1e-9), "ok": t.ok,
            "within_slo": t.within_slo, "dropped": dict(t.dropped), "failed": t.failed,
            "unfinished": t.offered - t.ok - t.failed - sum(t.dropped.values()),
            "p50_ms": float(np.percentile(lats, 50)) if lats.size else None,
            "p99_ms": float(np.percentile(lats, 99)) if lats.size else None,
            "errors": list(t.errors), "latencies_ms": list(t.latencies_ms),
        }
    return out


def merge_reports(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Sum the per-generator reports: counts add up; p50/p99 over the pooled latencies when they were kept."""
    out: dict[str, Any] = {"generators": len(reports), "duration_s": max((r["duration_s"] for r in reports),
                                                                         default=0.0),
                           "wakeups": sum(r.get("wakeups", 0) for r in reports), "sessions": {}}
    pooled: dict[str, list[float]] = {}
    for r in reports:
        for s, rec in r["sessions"].items():
            agg = out["sessions"].setdefault(s, {"offered": 0, "offered_rate": 0.0, "ok": 0, "within_slo": 0,
                                                 "dropped": {}, "failed": 0, "unfinished": 0, "errors": []})
            for key in ("offered", "offered_rate", "ok", "within_slo", "failed", "unfinished"):
                agg[key] += rec[key]
            for reason, v in rec["dropped"].items():
                agg["dropped"][reason] = agg["dropped"].get(reason, 0) + v
            agg["errors"] = (agg["errors"] + rec.get("errors", []))[:5]
            pooled.setdefault(s, []).extend(rec.get("latencies_ms", ()))
    for s, agg in out["sessions"].items():
        lats = np.asarray(pooled.get(s, ()))
        agg["p50_ms"] = float(np.percentile(lats, 50)) if lats.size else None
        agg["p99_ms"] = float(np.percentile(lats, 99)) if lats.size else None
        agg["slo_attainment"] = agg["within_slo"] / agg["offered"] if agg["offered"] else None
        agg["goodput"] = agg["within_slo"] / out["duration_s"] if out["duration_s"] else 0.0
    out["queries"] = _merge_queries(reports, out["duration_s"])
    return out


def _merge_queries(reports: Sequence[dict[str, Any]], duration_s: float) -> dict[str, Any]:
    """The generators' query totals summed; p50/p99 over the pooled latencies when they were kept."""
    out: dict[str, Any] = {}
    pooled: dict[str, list[float]] = {}
    for r in reports:
        for q, rec in r.get("queries", {}).items():
            agg = out.setdefault(q, {"slo_ms": rec["slo_ms"], "offered": 0, "offered_rate": 0.0, "ended": 0,
                                     "completed": 0, "within_slo": 0, "unfinished": 0, "ended_by": {}, "errors": []})
            for key in ("offered", "offered_rate", "ended", "completed", "within_slo", "unfinished"):
                agg[key] += rec[key]
            for why, v in rec["ended_by"].items():
                agg["ended_by"][why] = agg["ended_by"].get(why, 0) + v
            agg["errors"] = (agg["errors"] + rec.get("errors", []))[:5]
            pooled.setdefault(q, []).extend(rec.get("latencies_ms", ()))
    for q, agg in out.items():
        lats = np.asarray(pooled.get(q, ()))
        agg["p50_ms"] = float(np.percentile(lats, 50)) if lats.size else None
        agg["p99_ms"] = float(np.percentile(lats, 99)) if lats.size else None
        agg["slo_attainment"] = agg["within_slo"] / agg["offered"] if agg["offered"] else None
        agg["goodput"] = agg["within_slo"] / duration_s if duration_s else 0.0
    return out
