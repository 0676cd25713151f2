"""Load generator: open-loop request streams (Poisson, uniform, bursty gamma, trace replay) driven from worker
processes through their own ``Frontend``, so the notebook is never the bottleneck; reports offered load and outcomes.

Arrival processes are the simulator's (``nexus_lab.arrivals``); only ``run_load``/``start_load`` touch the frontend
and the cluster. Generators survive worker loss: no task is pinned to one address (a restarted worker comes back
under a new one), and ``LoadHandle.result`` returns what finished plus an account of what was lost.
Nothing here plans or batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
import uuid
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..arrivals import ARRIVAL_KINDS, generate
from . import wire
from .routes import ROUTES_KEY, routes_from_config

__all__ = ["KINDS", "LoadHandle", "arrival_times", "merge_reports", "run_load", "start_load"]

KINDS = ARRIVAL_KINDS


def arrival_times(kind: str, rate: float, duration_s: float, *, cv: float = 2.0, trace: Sequence[float] | None = None,
                  seed: int = 0) -> np.ndarray:
    """Arrival offsets (s, non-decreasing, in ``[0, duration_s)``) of one session's open-loop stream: the
    simulator's arrival processes (``nexus_lab.arrivals.generate``) seeded with ``seed``; ``trace`` offsets are
    replayed as recorded (``rate`` ignored).

    Examples
    --------
    >>> len(arrival_times("uniform", 10.0, 1.0))
    10
    """
    return generate(kind, float(rate), float(duration_s), np.random.default_rng(seed), cv=cv, trace=trace)


@dataclass(frozen=True)
class _Plan:
    """Routes and sessions a generator's own frontend uses."""

    routes: dict[str, list[tuple[str, float]]]
    sessions: dict[str, dict[str, Any]]
    coalesce_ms: float = 1.0
    max_coalesce: int = 64
    follow: bool = False  # follow a controller's re-plans (scheduler metadata ``ROUTES_KEY``)


FOLLOW_POLL_S = 0.5  # how often a following generator checks for new routes (within a backend's drain grace)
#: A generator task that starts this long after ``start_load`` (its worker died and the scheduler ran it again
#: elsewhere) offers nothing and reports itself lost: its load belonged to a window that has passed.
START_GRACE_S = 5.0
#: ``LoadHandle.result`` waits at most this long past the load's end for the generators' reports.
RESULT_GRACE_S = 60.0


def _follow_routes(fe: Any, client: Any, stop: threading.Event) -> None:
    """A generator's thread: install the routes a controller publishes after each apply (newer versions only)."""
    seen = -1
    while not stop.wait(FOLLOW_POLL_S):
        try:
            meta = client.get_metadata(ROUTES_KEY, default=None)
        except Exception:  # a scheduler hiccup: keep the routes we have and try again
            continue
        if meta and int(meta.get("version", -1)) > seen:
            fe.set_routes(routes_from_config(meta), meta["sessions"])
            seen = int(meta["version"])


class _Tally:
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


def run_load(frontend: Any, rates: Mapping[str, float], duration_s: float, *, kind: str = "poisson",
             cv: float = 2.0, traces: Mapping[str, Sequence[float]] | None = None,
             payloads: Mapping[str, Any] | None = None, seed: int = 0, settle_s: float | None = None
             ) -> dict[str, Any]:
    """Drive ``frontend`` open loop for ``duration_s`` and report, per session, the offered load and outcomes.

    Requests of a session whose model has a zoo input spec get a zero array of that spec unless ``payloads``
    gives one. Returns ``{"duration_s", "kind", "wakeups", "sessions": {session: {"offered", "offered_rate", "ok",
    "within_slo", "dropped": {reason: n}, "failed", "p50_ms", "p99_ms", "latencies_ms"}}}``; ``wakeups`` counts
    the open loop's wake-ups (one per coalescing window of the frontend: each arrival is handed over stamped with
    its arrival time, from which its latency and deadline count).
    """
    sessions = frontend.sessions
    for s, r in rates.items():
        if s not in sessions:
            raise ValueError(f"rates[{s!r}]: unknown session; routed sessions: {sorted(sessions)}")
        if r < 0:
            raise ValueError(f"rates[{s!r}]: must be >= 0, got {r}")
    payloads = dict(payloads or {})
    names = sorted(rates)
    for s in names:
        if s not in payloads:
            spec = wire.input_spec(str(sessions[s].get("model", "")))
            payloads[s] = None if spec is None else np.zeros(tuple(spec.shape), dtype=spec.dtype)
    times, owners = [], []
    for k, s in enumerate(names):
        t = arrival_times(kind, float(rates[s]), duration_s, cv=cv,
                          trace=(traces or {}).get(s), seed=seed * 1000 + k)
        times.append(t)
        owners.append(np.full(t.size, k))
    all_t = np.concatenate(times) if times else np.zeros(0)
    who = np.concatenate(owners) if owners else np.zeros(0, dtype=int)
    order = np.argsort(all_t, kind="stable")
    all_t, who = all_t[order], who[order]
    tallies = [_Tally(float(sessions[s]["slo_ms"]) / 1000.0) for s in names]
    # A full (generation 2) garbage collection of a big process heap (a notebook or pytest with torch and Jupyter
    # loaded: ~500k objects) stops every thread for 100-300 ms, which lands on the requests in flight as latency.
    # Freezing the heap as it is now makes collections during the run scan only the objects the run creates.
    gc.freeze()
    try:
        wait = settle_s if settle_s is not None else max((t.slo_s for t in tallies), default=0.0) + 6.0
        return frontend.run_on_loop(_open_loop(frontend, names, payloads, all_t, who, tallies, wait, kind,
                                               duration_s)).result()
    finally:
        gc.unfreeze()


async def _open_loop(frontend: Any, names: list[str], payloads: Mapping[str, Any], all_t: np.ndarray,
                     who: np.ndarray, tallies: list[_Tally], settle_s: float, kind: str, duration_s: float
                     ) -> dict[str, Any]:
    """The open loop of ``run_load``, on the frontend's own loop thread: send each request at its arrival time,
    wait up to ``settle_s`` for the stragglers, report (on the loop, where late replies land). On the loop that
    sends the messages a request costs no thread hand-off, lock wait or future: this loop shares the cores with
    the backends it drives."""
    # Python lists and a plain scan: a wake-up usually finds a few requests due, where numpy calls cost more than
    # the work.
    at, owner = all_t.tolist(), who.tolist()
    # The frontend holds a request until the coalescing window of the first one buffered with it has passed, so
    # the loop wakes once per window, not once per arrival (a wake-up costs more than dispatching a request):
    # each request is handed over stamped with its arrival time, and its latency, deadline and window count from
    # then. A window of 0 (no coalescing) wakes at each arrival.
    t0 = time.time()
    i, n = 0, len(at)
    wakeups = 0
    while i < n:
        now = time.time() - t0
        window = min(frontend.window_s(s) for s in names)  # the backends may change their holds as load moves
        if at[i] + window > now:
            await asyncio.sleep(at[i] + window - now)
            wakeups += 1
            continue
        j = bisect_right(at, now, i)
        due: dict[int, list[float]] = {}
        for k in range(i, j):
            due.setdefault(owner[k], []).append(t0 + at[k])
        for k, times in due.items():
            tally = tallies[k]
            tally.offered += len(times)
            name = names[k]
            try:
                frontend.send_many(name, [payloads[name]] * len(times), [tally.on_done(t) for t in times],
                                   arrived=times)
            except Exception as exc:  # e.g. a closed frontend: count as failed, keep the run's accounting whole
                tally.ended += len(times)
                tally.failed += len(times)
                tally.errors.append(str(exc))
        i = j
    wall = time.time() - t0
    end = time.time() + settle_s
    while any(t.ended < t.offered for t in tallies) and time.time() < end:
        await asyncio.sleep(0.01)
    return {**_report(names, tallies, kind, duration_s, wall), "wakeups": wakeups}


def _report(names: list[str], tallies: list[_Tally], kind: str, duration_s: float, wall: float) -> dict[str, Any]:
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


def _generator(plan: _Plan, rates: dict[str, float], duration_s: float, kind: str, cv: float,
               traces: dict[str, list[float]] | None, seed: int, keep_latencies: bool,
               start_by: float = float("inf")) -> dict[str, Any]:
    """Runs in a worker process (a task): its own frontend, the load, the report; only a note that it was lost
    when it starts after ``start_by`` (``time.time()``: the scheduler re-ran it after its first worker died)."""
    from distributed import get_worker

    from .frontend import Frontend

    worker = get_worker()
    if time.time() > start_by:
        return {"lost": f"started {time.time() - start_by + START_GRACE_S:.1f} s after start_load on"
                        f" {worker.address} (its first worker was lost)", "worker": worker.address}
    with Frontend(None, security=worker.security, coalesce_ms=plan.coalesce_ms,
                  max_coalesce=plan.max_coalesce) as fe:
        fe.set_routes(plan.routes, plan.sessions)
        stop = threading.Event()
        follower = None
        if plan.follow:
            from distributed import get_client

            follower = threading.Thread(target=_follow_routes, args=(fe, get_client(), stop),
                                        name="nexus-load-follow", daemon=True)
            follower.start()
        try:
            report = run_load(fe, rates, duration_s, kind=kind, cv=cv, traces=traces, seed=seed)
        finally:
            stop.set()
            if follower is not None:
                follower.join(5)
    report["worker"] = worker.address
    if not keep_latencies:
        for s in report["sessions"].values():
            s.pop("latencies_ms", None)
    return report


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
    return out


class LoadHandle:
    """The running load: ``result()`` waits (bounded) for the generators and merges the reports that came back.

    ``expected[k]`` is what generator ``k`` is to offer per session (requests), the measure of a lost one.
    """

    def __init__(self, futures: list[Any], duration_s: float, expected: list[dict[str, float]] | None = None,
                 started: float | None = None) -> None:
        self.futures = futures
        self.duration_s = duration_s
        self.expected = expected if expected is not None else [{} for _ in futures]
        self.started = time.time() if started is None else started

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """The merged reports of the generators that finished within ``timeout`` (default: until
        ``RESULT_GRACE_S`` after the load's end), plus ``lost_generators`` (how many did not: their worker died,
        they failed or came too late; those still running are cancelled), ``lost`` (why, per generator) and
        ``lost_offered`` (the requests per session they were to offer). Never raises for a lost generator."""
        left = (self.started + self.duration_s + RESULT_GRACE_S - time.time()) if timeout is None else timeout
        end = time.time() + max(left, 0.0)
        for f in self.futures:  # each generator's own client: no default client needed
            with contextlib.suppress(Exception):  # failed, lost, or the bound passed: sorted out below
                f.result(timeout=max(end - time.time(), 0.001))
        reports, lost = [], []
        for f, expected in zip(self.futures, self.expected, strict=True):
            why = None
            try:
                if f.status == "finished":
                    rep = f.result(timeout=5)
                    why = rep.get("lost")
                    if why is None:
                        reports.append(rep)
                else:
                    why = f"generator {f.status}" + (f": {f.exception(timeout=1)!r}" if f.status == "error" else "")
            except Exception as exc:  # e.g. KilledWorker, a cancelled future, a lost scheduler
                why = f"{type(exc).__name__}: {exc}"
            if why is not None:
                lost.append({"key": str(f.key), "reason": why, "offered": dict(expected)})
                if not f.done():
                    f.cancel()
        out = merge_reports(reports)
        out["lost_generators"] = len(lost)
        out["lost"] = lost
        lost_offered: dict[str, float] = {}
        for item in lost:
            for s, n in item["offered"].items():
                lost_offered[s] = lost_offered.get(s, 0.0) + n
        out["lost_offered"] = lost_offered
        return out

    def done(self) -> bool:
        return all(f.done() for f in self.futures)


def start_load(client: Any, routes_or_frontend_config: Any, rates: Mapping[str, float], duration_s: float, *,
               kind: str = "poisson", cv: float = 2.0, traces: Mapping[str, Sequence[float]] | None = None,
               workers: Sequence[str] | None = None, seed: int = 0, keep_latencies: bool = False,
               follow: bool | None = None) -> LoadHandle:
    """Start open-loop load on worker processes: each of ``workers`` (default: all) runs a generator task with
    its own frontend and an equal share of every session's rate (traces are split round robin). A generator
    prefers its worker but is pinned to no address: if the worker dies before it starts, another runs it.

    ``follow`` (default: when given a ``Frontend``, e.g. ``ctl.frontend``) makes the generators install the routes
    a controller publishes after every apply, so the load follows live re-plans instead of the routes at start.

    ``routes_or_frontend_config`` is a ``Frontend`` (its routes are reused), or a dict ``{"routes", "sessions",
    "coalesce_ms"?, "max_coalesce"?}`` in the form ``Frontend.set_routes`` takes.
    """
    if kind not in KINDS:
        raise ValueError(f"kind: must be one of {KINDS}, got {kind!r}")
    if duration_s <= 0:
        raise ValueError(f"duration_s: must be > 0, got {duration_s}")
    cfg = routes_or_frontend_config
    if callable(getattr(cfg, "routes_config", None)):  # a Frontend: its routes, and it follows by default
        cfg = {**cfg.routes_config(), "coalesce_ms": cfg.coalesce_s * 1000.0, "max_coalesce": cfg.max_coalesce}
        follow = True if follow is None else follow
    if isinstance(cfg, Mapping) and "routes" in cfg and "sessions" in cfg:
        plan = _Plan(routes_from_config(cfg), {s: dict(v) for s, v in cfg["sessions"].items()},
                     float(cfg.get("coalesce_ms", 1.0)), int(cfg.get("max_coalesce", 64)), bool(follow))
    else:
        raise ValueError("routes_or_frontend_config: must be a Frontend or a dict with 'routes' and 'sessions'")
    for s, r in rates.items():
        if s not in plan.sessions:
            raise ValueError(f"rates[{s!r}]: unknown session; routed sessions: {sorted(plan.sessions)}")
        if r < 0:
            raise ValueError(f"rates[{s!r}]: must be >= 0, got {r}")
    gens = list(workers) if workers is not None else sorted(client.scheduler_info()["workers"])
    if not gens:
        raise ValueError("workers: the cluster has no workers to run load generators")
    share = {s: float(r) / len(gens) for s, r in rates.items()}
    futures, expected = [], []
    started = time.time()
    for k, w in enumerate(gens):
        tr = {s: list(t)[k::len(gens)] for s, t in traces.items()} if traces else None
        futures.append(client.submit(_generator, plan, share, float(duration_s), kind, cv, tr, seed + k,
                                     keep_latencies, started + START_GRACE_S, workers=[w], allow_other_workers=True,
                                     pure=False, key=f"nexus-load-{uuid.uuid4().hex}-{k}"))
        expected.append({s: float(len(tr[s])) if tr and s in tr else r * float(duration_s) for s, r in share.items()})
    return LoadHandle(futures, float(duration_s), expected, started)
