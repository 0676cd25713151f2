"""Load generator: open-loop request streams (Poisson, uniform, bursty gamma, trace replay) driven from worker
processes through their own ``Frontend``, so the notebook is never the bottleneck; reports offered load and outcomes.

Arrival processes are the simulator's (``nexus_lab.arrivals``); only ``run_load``/``start_load`` touch the frontend
and the cluster. Queries are driven the same way, one frame per arrival, each an asynchronous DAG
(``query_frames``); their end-to-end outcomes are tallied where the frames run (``query_stats``) and published
live to the controller. Generators survive worker loss: no task is pinned to one address (a restarted worker comes back
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
from .load_report import Tally, merge_reports, session_report
from .queries import Crop, QueryShape, crop_boxes
from .query_frames import check_query, launch_frame
from .query_stats import QueryBoard, metadata_publisher, run_publisher
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
    queries: dict[str, dict[str, Any]] | None = None  # query -> {"query", "parents"} (``query_routes``)
    crop: Any = None  # a crop, or query -> crop


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


def run_load(frontend: Any, rates: Mapping[str, float], duration_s: float, *, kind: str = "poisson",
             cv: float = 2.0, traces: Mapping[str, Sequence[float]] | None = None,
             payloads: Mapping[str, Any] | None = None, seed: int = 0, settle_s: float | None = None,
             queries: Mapping[str, Mapping[str, Any]] | None = None, crop: Crop | Mapping[str, Crop] | None = None,
             publish: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Drive ``frontend`` open loop for ``duration_s`` and report, per session, the offered load and outcomes.

    ``rates`` may also name queries of ``queries`` (query -> ``{"query": plan dict, "parents": {stage:
    [parents]}}``, as ``controller.query_routes`` gives them): each arrival is then one frame run as a DAG
    (``launch_frame``, with ``crop``: one for all queries or one per query, default ``crop_boxes``), and the report's
    ``"queries"`` gives each end to end (``QueryBoard.total``). ``publish(window)``, when given, gets a window of
    the queries' outcomes every ``query_stats.PUBLISH_S`` from a thread of its own (a controller's
    ``record_query_window``, or the scheduler's metadata for a generator on a worker).

    Requests of a session whose model has a zoo input spec get a zero array of that spec unless ``payloads``
    gives one (a query's frames: that of its first root stage, unless ``payloads`` names the query). Returns
    ``{"duration_s", "kind", "wakeups", "sessions": {session: {"offered", "offered_rate", "ok", "within_slo",
    "dropped": {reason: n}, "failed", "p50_ms", "p99_ms", "latencies_ms"}}, "queries": {...}}``; ``wakeups`` counts
    the open loop's wake-ups (one per coalescing window of the frontend: each arrival is handed over stamped with
    its arrival time, from which its latency and deadline count).
    """
    sessions = frontend.sessions
    queries = dict(queries or {})
    shapes: dict[str, QueryShape] = {}
    for s, r in rates.items():
        if s in queries:
            q = queries[s]
            shapes[s] = check_query(q.get("query", {}), q.get("parents", {}))
        elif s not in sessions:
            raise ValueError(f"rates[{s!r}]: unknown session or query; routed sessions: {sorted(sessions)},"
                             f" queries: {sorted(queries)}")
        if r < 0:
            raise ValueError(f"rates[{s!r}]: must be >= 0, got {r}")
    payloads = dict(payloads or {})
    names = sorted(rates)
    for s in names:
        if s not in payloads:
            root = shapes[s].sessions[shapes[s].order[0]] if s in shapes else s
            spec = wire.input_spec(str(sessions.get(root, {}).get("model", "")))
            payloads[s] = None if spec is None else np.zeros(tuple(spec.shape), dtype=spec.dtype)
    crops = {q: (crop.get(q) if isinstance(crop, Mapping) else crop) or crop_boxes for q in shapes}
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
    tallies = [Tally(shapes[s].slo_s if s in shapes else float(sessions[s]["slo_ms"]) / 1000.0) for s in names]
    board = QueryBoard({q: sh.slo_s * 1000.0 for q, sh in shapes.items()})
    drive = _Drive(names, [shapes.get(s) for s in names], crops, board,
                   sorted({sh.sessions[sh.order[0]] for sh in shapes.values()} | (set(names) - set(shapes))))
    stop = threading.Event()
    publisher = None
    if publish is not None and shapes:
        publisher = threading.Thread(target=run_publisher, args=(board, publish, stop), name="nexus-load-publish",
                                     daemon=True)
        publisher.start()
    # A full (generation 2) garbage collection of a big process heap (a notebook or pytest with torch and Jupyter
    # loaded: ~500k objects) stops every thread for 100-300 ms, which lands on the requests in flight as latency.
    # Freezing the heap as it is now makes collections during the run scan only the objects the run creates.
    gc.freeze()
    try:
        wait = settle_s if settle_s is not None else max((t.slo_s for t in tallies), default=0.0) + 6.0
        report = frontend.run_on_loop(_open_loop(frontend, drive, payloads, all_t, who, tallies, wait, kind,
                                                 duration_s)).result()
    finally:
        gc.unfreeze()
        stop.set()
        if publisher is not None:
            publisher.join(5)
    report["queries"] = board.total(report["duration_s"])
    for rec in report["queries"].values():
        rec["offered_rate"] = rec["offered"] / max(duration_s, 1e-9)
    return report


@dataclass
class _Drive:
    """What the open loop drives: per owner its name and query shape (None: a session), the crops, the queries'
    tally, and the sessions whose coalescing windows pace the loop (sessions and queries' first roots)."""

    names: list[str]
    shapes: list[QueryShape | None]
    crops: dict[str, Crop]
    board: QueryBoard
    paced: list[str]


def _launch(frontend: Any, drive: _Drive, k: int, payload: Any, times: list[float]) -> None:
    """Start one frame of query ``k`` per arrival in ``times``; a frame its roots refuse counts as failed."""
    name, shape = drive.names[k], drive.shapes[k]
    assert shape is not None
    drive.board.offer(name, len(times))
    done = drive.board.on_result(name)
    for t in times:
        try:
            launch_frame(frontend, shape, payload, done, crop=drive.crops[name], arrived=t)
        except Exception as exc:
            done({"ended_by": {"stage": shape.order[0], "status": "failed", "reason": str(exc)}, "latency_ms": 0.0})


async def _open_loop(frontend: Any, drive: _Drive, payloads: Mapping[str, Any], all_t: np.ndarray,
                     who: np.ndarray, tallies: list[Tally], settle_s: float, kind: str, duration_s: float
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
    names = drive.names
    t0 = time.time()
    i, n = 0, len(at)
    wakeups = 0
    while i < n:
        now = time.time() - t0
        window = min(frontend.window_s(s) for s in drive.paced)  # the backends may change their holds as load moves
        if at[i] + window > now:
            await asyncio.sleep(at[i] + window - now)
            wakeups += 1
            continue
        j = bisect_right(at, now, i)
        due: dict[int, list[float]] = {}
        for k in range(i, j):
            due.setdefault(owner[k], []).append(t0 + at[k])
        for k, times in due.items():
            if drive.shapes[k] is not None:
                _launch(frontend, drive, k, payloads[names[k]], times)
                continue
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
    while (any(t.ended < t.offered for t in tallies) or drive.board.unfinished()) and time.time() < end:
        await asyncio.sleep(0.01)
    rep = session_report([s for s, sh in zip(names, drive.shapes, strict=True) if sh is None],
                  [t for t, sh in zip(tallies, drive.shapes, strict=True) if sh is None], kind, duration_s, wall)
    return {**rep, "wakeups": wakeups}


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
        publish = None
        if plan.queries and any(q in plan.queries for q in rates):
            from distributed import get_client

            publish = metadata_publisher(get_client(), f"{worker.address}-{uuid.uuid4().hex[:8]}")
        try:
            report = run_load(fe, rates, duration_s, kind=kind, cv=cv, traces=traces, seed=seed,
                              queries=plan.queries, crop=plan.crop, publish=publish)
        finally:
            stop.set()
            if follower is not None:
                follower.join(5)
    report["worker"] = worker.address
    if not keep_latencies:
        for s in (*report["sessions"].values(), *report["queries"].values()):
            s.pop("latencies_ms", None)
    return report


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
               follow: bool | None = None, queries: Mapping[str, Mapping[str, Any]] | None = None,
               crop: Crop | Mapping[str, Crop] | None = None) -> LoadHandle:
    """Start open-loop load on worker processes: each of ``workers`` (default: all) runs a generator task with
    its own frontend and an equal share of every session's rate (traces are split round robin). A generator
    prefers its worker but is pinned to no address: if the worker dies before it starts, another runs it.

    ``follow`` (default: when given a ``Frontend``, e.g. ``ctl.frontend``) makes the generators install the routes
    a controller publishes after every apply, so the load follows live re-plans instead of the routes at start.

    ``routes_or_frontend_config`` is a ``Frontend`` (its routes are reused), or a dict ``{"routes", "sessions",
    "coalesce_ms"?, "max_coalesce"?}`` in the form ``Frontend.set_routes`` takes.

    ``rates`` may name queries of ``queries`` (``controller.query_routes``), driven with ``crop`` as in
    ``run_load`` (a crop must pickle); each generator publishes its queries' windows to the scheduler's metadata
    (``query_stats.QUERY_STATS_KEY``) every second, where a controller's ``state()`` reads them. The stage
    budgets are those of ``queries`` at start; the routes follow re-plans.
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
        qs = {q: {"query": dict(v["query"]), "parents": {k: list(p) for k, p in v["parents"].items()}}
              for q, v in (queries or {}).items()}
        for v in qs.values():
            check_query(v["query"], v["parents"])
        plan = _Plan(routes_from_config(cfg), {s: dict(v) for s, v in cfg["sessions"].items()},
                     float(cfg.get("coalesce_ms", 1.0)), int(cfg.get("max_coalesce", 64)), bool(follow), qs, crop)
    else:
        raise ValueError("routes_or_frontend_config: must be a Frontend or a dict with 'routes' and 'sessions'")
    for s, r in rates.items():
        if s not in plan.sessions and s not in (plan.queries or {}):
            raise ValueError(f"rates[{s!r}]: unknown session or query; routed sessions: {sorted(plan.sessions)},"
                             f" queries: {sorted(plan.queries or {})}")
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
