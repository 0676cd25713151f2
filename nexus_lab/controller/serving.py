"""The controller's serving calls: ``infer``, ``submit``, and queries (``query``, ``submit_query``, ``query_many``,
``run_load``) through its frontend, with every argument checked before anything is sent and every request ending
as a result, a ``Dropped`` or a ``RequestFailed`` (a query frame: as a result naming the stage that ended it).

Queries' end-to-end numbers come from where their frames run: the controller's own frames, windows a load in this
process hands to ``record_query_window``, and windows load generators on workers publish to the scheduler's
metadata (``runtime.query_stats``); ``query_stats`` pools them (``stats.aggregate_queries``).

A mixin of ``Controller`` (its ``_deploy``, ``editor``, ``frontend``, ``client`` and ``io``); depends on the
runtime's frontend and query runner only through them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from ..planner import Plan
from ..runtime.pending import LOST_GRACE_S
from ..runtime.results import RequestFailed
from ..workload import Workload, WorkloadError
from .checks import check_name, check_number, check_timeout, guarded
from .stats import aggregate_queries, empty_query_row

__all__ = ["Serving", "query_routes"]

#: Windows of query outcomes kept in the controller (one a second per source).
QUERY_WINDOWS = 1200
#: A load generator's published windows are removed from the scheduler this long after its last one (s).
STALE_S = 600.0


def query_routes(plan: Plan | None, workload: Workload) -> dict[str, dict[str, Any]]:
    """What a frontend anywhere needs to run the plan's queries, as plain data: ``{query: {"query":
    QueryPlan.to_dict() (stage sessions and budgets), "parents": {stage: [parent stages]}}}`` for each query of
    ``workload`` the plan splits (``runtime.queries.start_query`` and ``run_load(queries=...)`` take it)."""
    specs = {q.name: q for q in workload.queries}
    return {qp.name: {"query": qp.to_dict(), "parents": {st.name: list(st.parents) for st in specs[qp.name].stages}}
            for qp in (plan.queries if plan else ()) if qp.name in specs}

#: How long past its ``timeout_s`` a caller waits for a request the frontend already fails at that expiry.
_EXPIRY_MARGIN_S = 2.0


class Serving:
    """``infer``/``submit``/``query`` of a controller."""

    _deploy: Any
    editor: Any
    frontend: Any
    io: Any

    @guarded
    def infer(self, session: str, payload: Any = None, timeout_s: float | None = None) -> Any:
        """One request, synchronously: the output, or ``Dropped`` / ``RequestFailed`` raised (also when no reply
        came within ``timeout_s`` seconds; default: the session's SLO plus the frontend's bounds)."""
        timeout_s = check_timeout(timeout_s, "infer.timeout_s")
        fut = self.submit(session, payload, timeout_s=timeout_s)
        try:
            return fut.result(None if timeout_s is None else timeout_s + _EXPIRY_MARGIN_S)
        except concurrent.futures.TimeoutError:
            raise RequestFailed(f"infer: no reply for session {session!r} within timeout_s={timeout_s:g} s") from None

    @guarded
    def submit(self, session: str, payload: Any = None, *, timeout_s: float | None = None
               ) -> concurrent.futures.Future:
        """One request; a ``concurrent.futures.Future`` of its output, which ends by its deadline plus the
        frontend's bounds (or ``timeout_s``). Unknown sessions and bad inputs raise before anything is sent."""
        check_name(session, "infer.session")
        timeout_s = check_timeout(timeout_s, "infer.timeout_s")
        served = self._deploy.sessions_served()
        if session not in served:
            known = sorted(n for n in served if "/" not in n)
            raise WorkloadError(f"infer.session: unknown or unplanned session {session!r}; serving: {known}")
        try:
            return self.frontend.submit(session, payload, timeout_s=timeout_s)
        except ValueError as exc:
            raise WorkloadError(f"infer.{exc}") from None

    async def ainfer(self, session: str, payload: Any = None) -> Any:
        return await asyncio.wrap_future(self.submit(session, payload))

    # ------------------------------------------------------------------------------------------ queries
    def query_routes(self) -> dict[str, dict[str, Any]]:
        """``query_routes`` of the applied plan and the current workload."""
        with self._deploy.lock:
            plan, wl = self._deploy.plan, self.editor.workload()
        return query_routes(plan, wl)

    def _route_of(self, name: str, where: str) -> dict[str, Any]:
        check_name(name, f"{where}.name")
        with self._deploy.lock:
            known = sorted(self.editor.queries)
        if name not in known:
            raise WorkloadError(f"{where}.name: unknown query {name!r}; known: {known}")
        route = self.query_routes().get(name)
        if route is None:
            raise WorkloadError(f"{where}.name: {name!r} is not in the applied plan (call apply())")
        return route

    def _query_book(self) -> tuple[Any, deque]:
        """The board of this controller's own frames and the kept windows (created on first use)."""
        from ..runtime.query_stats import QueryBoard

        book = self.__dict__.get("_qbook")
        if book is None:
            book = self.__dict__.setdefault("_qbook", (QueryBoard({}), deque(maxlen=QUERY_WINDOWS)))
        return book[0], book[1]

    def _start(self, name: str, frames: list[Any], crop: Any, where: str) -> list[concurrent.futures.Future]:
        from ..runtime.queries import start_queries

        route = self._route_of(name, where)
        board, _ = self._query_book()
        board.add_query(name, float(route["query"]["slo_ms"]))
        try:
            futs = start_queries(self.frontend, route["query"], route["parents"], frames, crop=crop)
        except ValueError as exc:
            raise WorkloadError(f"{where}.{exc}") from None
        board.offer(name, len(futs))
        for f in futs:
            f.add_done_callback(lambda f: board.record(name, f.result()) if f.exception() is None else None)
        return futs

    @guarded
    def submit_query(self, name: str, frame: Any = None, *, crop: Any = None) -> concurrent.futures.Future:
        """Start one frame of query ``name`` as a DAG (``runtime.queries.start_query``); a future of its result
        ``{"outputs", "latency_ms", "within_slo", "ended_by"}``, which resolves by the query's deadline plus the
        frontend's bounds, never raising for a dropped or failed stage (``ended_by`` names it)."""
        return self._start(name, [frame], crop, "submit_query")[0]

    @guarded
    def query(self, name: str, frame: Any = None, timeout_s: float | None = None, *, crop: Any = None
              ) -> dict[str, Any]:
        """Run query ``name`` on one frame and return its result (``submit_query``), blocking; a frame a root
        stage's input spec refuses raises ``WorkloadError`` (``query.frame``)."""
        return self._run_frames(name, [frame], timeout_s, crop, "query")[0]

    @guarded
    def query_many(self, name: str, frames: Iterable[Any], timeout_s: float | None = None, *, crop: Any = None
                   ) -> list[dict[str, Any]]:
        """Run many frames of query ``name`` at once (all in flight together, batching with each other) and return
        their results in order. ``timeout_s`` bounds the wait (default: the SLO plus the frontend's bounds)."""
        return self._run_frames(name, frames, timeout_s, crop, "query_many")

    def _run_frames(self, name: str, frames: Iterable[Any], timeout_s: float | None, crop: Any, where: str
                    ) -> list[dict[str, Any]]:
        timeout_s = check_timeout(timeout_s, f"{where}.timeout_s")
        if isinstance(frames, (str, bytes)) or not isinstance(frames, Iterable):
            raise WorkloadError(f"{where}.frames: must be a list of frames, got {type(frames).__name__}")
        futs = self._start(name, list(frames), crop, where)
        slo_s = float(self._route_of(name, where)["query"]["slo_ms"]) / 1000.0
        end = time.time() + (timeout_s if timeout_s is not None else slo_s + LOST_GRACE_S + 2.0)
        out = []
        for f in futs:
            try:
                out.append(f.result(max(end - time.time(), 0.0)))
            except concurrent.futures.TimeoutError:
                raise RequestFailed(f"{where}: no result for query {name!r} within {end - time.time():.1f} s"
                                    ) from None
            except ValueError as exc:  # the frame does not fit a root stage's input spec
                raise WorkloadError(f"{where}.frame: {exc}") from None
        return out

    async def aquery(self, name: str, frame: Any = None) -> dict[str, Any]:
        """``submit_query`` for asyncio code."""
        return await asyncio.wrap_future(self.submit_query(name, frame))

    def record_query_window(self, window: Mapping[str, Any]) -> None:
        """Keep a window of query outcomes measured elsewhere in this process (``run_load``'s ``publish``)."""
        self._query_book()[1].append(dict(window))

    @guarded
    def run_load(self, rates: Mapping[str, float], duration_s: float, **kw: Any) -> dict[str, Any]:
        """Drive sessions and queries open loop from this process (``runtime.loadgen.run_load`` on the controller's
        frontend, with the applied plan's ``query_routes``), blocking for ``duration_s``; the queries' live
        windows reach ``state()`` as they are measured."""
        from ..runtime.loadgen import run_load

        check_number(duration_s, "run_load.duration_s", gt=0.0, le=86400.0)
        if not isinstance(rates, Mapping):
            raise WorkloadError(f"run_load.rates: must map sessions and queries to rates, got {rates!r}")
        routes = self.query_routes()
        try:
            return run_load(self.frontend, rates, float(duration_s), queries=routes,
                            publish=self.record_query_window, **kw)
        except ValueError as exc:
            raise WorkloadError(f"run_load.{exc}") from None

    def query_stats(self, window_s: float = 10.0) -> dict[str, dict[str, Any]]:
        """Each query end to end over the last ``window_s`` seconds, from every source (this controller's frames,
        loads in this process, load generators on workers): ``stats.aggregate_queries``."""
        from ..runtime.query_stats import QUERY_STATS_KEY

        check_number(window_s, "query_stats.window_s", gt=0.0)
        board, kept = self._query_book()
        kept.append(board.take_window())
        since = time.time() - float(window_s)
        windows = [w for w in list(kept) if w["t1"] >= since]
        try:
            published = self.client.get_metadata([QUERY_STATS_KEY], default=None) or {}
        except Exception:  # a slow scheduler: the local sources still count
            published = {}
        rings = {src: [w for w in ring.values() if isinstance(w, Mapping)]
                 for src, ring in published.items() if isinstance(ring, Mapping)}
        for ring in rings.values():
            windows += [w for w in ring if w.get("t1", 0) >= since]
        stale = {src for src, ring in rings.items() if max((w.get("t1", 0) for w in ring), default=0) < since - STALE_S}
        if stale:  # generators long finished: drop their rings (a window written meanwhile may be lost, no more)
            with contextlib.suppress(Exception):
                self.client.set_metadata([QUERY_STATS_KEY], {k: v for k, v in published.items() if k not in stale})
        return aggregate_queries(windows)

    def _with_query_stats(self, state: dict[str, Any]) -> dict[str, Any]:
        """``state`` with each query row's ``end_to_end`` figures (``query_stats``) added."""
        rows = self.query_stats(max(3 * float(getattr(self, "poll_s", 1.0)), 5.0)) if state.get("queries") else {}
        for q in state.get("queries", ()):
            q["end_to_end"] = rows.get(q["name"]) or empty_query_row(q.get("slo_ms"))
        return state
