"""The frontend (Nexus section 6): routes each session's requests to its backends in proportion to the plan's rates,
coalesces them into one message per backend, and hands back futures (or calls back).

Transport only: it executes routes it is given and never plans; depends on distributed's comms and the result
types, never on the controller or on Dask's task machinery (no ``client.submit``, no actors). Messages are
``nexus_lab.runtime.wire``'s; query DAGs run over ``submit_many`` in ``nexus_lab.runtime.queries``.

Threads: the frontend owns one event loop on a daemon thread. ``submit`` may be called from any thread (it only
appends to a per-backend buffer under a lock); connections, flushes and replies run on that loop. Each backend gets
one persistent duplex stream (the backend's ``nexus_stream`` handler): request batches go out as they are flushed,
result batches come back as each device batch finishes. A backend whose stream falls silent with requests in flight
is suspect (``health``): routed around, its requests moved or failed by their deadline plus the bound.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from ..batching import DropReason
from . import wire
from .health import SUSPECT_S, SWEEP_S, Health
from .pending import LOST_GRACE_S, OnDone, Pending
from .routes import ROUTES_KEY, Route, backend_states, routes_from_states
from .stream import BackendStream

logger = logging.getLogger("nexus_lab.frontend")

__all__ = ["ROUTES_KEY", "Frontend"]


class Frontend:
    """Dispatch requests to Nexus backends over distributed's comms.

    Parameters
    ----------
    address_or_client : distributed.Client, str or None
        A client (its security is used when ``security`` is None) or the scheduler address (used by
        ``routes_from_cluster``); None when routes are always given with ``set_routes``.
    security : distributed.security.Security, optional
        For TLS clusters (e.g. ``Security.temporary()``).
    coalesce_ms : float
        How long the first request of a buffer waits for company before the buffer is flushed, until the
        backend's stream says how long it holds the session's small batches (host-CPU backends hold partial
        batches anyway): then that long.
    max_coalesce : int
        Flush at once when a backend's buffer holds this many requests.
    suspect_ms : float
        A backend whose stream says nothing this long while requests are in flight on it is suspect
        (``suspect_workers``) until it speaks again: its sessions route to their other backends.

    Examples
    --------
    >>> fe = Frontend(client)  # doctest: +SKIP
    >>> fe.set_routes({"cls": [(w1, 100.0), (w2, 50.0)]}, {"cls": {"model": "noop", "slo_ms": 50}})  # doctest: +SKIP
    >>> fe.submit("cls", None).result()  # doctest: +SKIP
    """

    def __init__(self, address_or_client: Any = None, *, security: Any = None, coalesce_ms: float = 1.0,
                 max_coalesce: int = 64, suspect_ms: float = SUSPECT_S * 1000.0) -> None:
        if coalesce_ms < 0:
            raise ValueError(f"coalesce_ms: must be >= 0, got {coalesce_ms}")
        if int(max_coalesce) < 1:
            raise ValueError(f"max_coalesce: must be >= 1, got {max_coalesce}")
        if not (isinstance(suspect_ms, (int, float)) and 0 < suspect_ms < float("inf")):
            raise ValueError(f"suspect_ms: must be a number > 0, got {suspect_ms!r}")
        self.scheduler_address: str | None = None
        if isinstance(address_or_client, str):
            self.scheduler_address = address_or_client
        elif address_or_client is not None:
            self.scheduler_address = address_or_client.scheduler.address
            if security is None:
                security = getattr(address_or_client, "security", None)
        self.security = security
        self.coalesce_s = float(coalesce_ms) / 1000.0
        self.max_coalesce = int(max_coalesce)
        self._lock = threading.Lock()
        self._routes: dict[str, Route] = {}
        self._sessions: dict[str, dict[str, Any]] = {}
        self._specs: dict[str, Any] = {}
        self._conns: dict[str, BackendStream] = {}
        self._dead: set[str] = set()
        self._lost: dict[str, str] = {}  # address -> why it was declared lost
        self._health = Health(float(suspect_ms) / 1000.0)
        self._ids = itertools.count()
        self._closed = False
        self._bg: set[asyncio.Task] = set()
        self.sent_messages = 0
        self.sent_requests = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="nexus-frontend", daemon=True)
        self._thread.start()
        self._sweeper = asyncio.run_coroutine_threadsafe(self._sweep(), self._loop)

    def _spawn(self, coro: Any) -> asyncio.Task:
        """Loop thread: start a task and hold a reference until it ends (the loop keeps only weak ones)."""
        task = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)
        return task

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    # ------------------------------------------------------------------------------------------ routes
    def set_routes(self, routes: dict[str, list[tuple[str, float]]], sessions: dict[str, dict[str, Any]]) -> None:
        """Install the plan's routes: session -> [(worker address, planned rate)], and each session's
        ``{"model", "slo_ms", "budget_ms"}`` (``"cycle_ms"``, the longest duty cycle it runs in, lengthens its
        backends' suspect bound to two cycles). Requests already in flight are not moved."""
        for name, backends in routes.items():
            if name not in sessions:
                raise ValueError(f"routes[{name!r}]: session missing from sessions")
            for k, item in enumerate(backends):
                if len(item) != 2 or not isinstance(item[0], str) or float(item[1]) < 0:
                    raise ValueError(f"routes[{name!r}][{k}]: must be (worker address, rate >= 0), got {item!r}")
        for name, s in sessions.items():
            if float(s.get("slo_ms", 0)) <= 0:
                raise ValueError(f"sessions[{name!r}].slo_ms: must be > 0, got {s.get('slo_ms')}")
        specs = {name: wire.input_spec(str(s.get("model", ""))) for name, s in sessions.items()}
        with self._lock:
            self._routes = {name: Route(b) for name, b in routes.items()}
            self._sessions = {name: dict(s) for name, s in sessions.items()}
            self._specs = specs
            self._health.route(routes, sessions)
            listed = {a for b in routes.values() for a, _ in b}
            self._dead -= listed

    def routes_config(self) -> dict[str, Any]:
        """The installed routes and sessions in the form ``set_routes`` takes (JSON-able): what a controller
        publishes under ``ROUTES_KEY`` so frontends elsewhere (load generators on workers) follow its re-plans."""
        with self._lock:
            return {"routes": {s: [[a, float(w)] for a, w in zip(r.addrs, r.weights, strict=True)]
                               for s, r in self._routes.items()},
                    "sessions": {s: dict(v) for s, v in self._sessions.items()}}

    def routes_from_cluster(self, timeout_s: float = 10.0) -> dict[str, list[tuple[str, float]]]:
        """Adopt the routes the backends hold (``nexus_state`` of every worker); needs a scheduler address."""
        if self.scheduler_address is None:
            raise ValueError("address_or_client: routes_from_cluster needs a scheduler address or client")
        fut = asyncio.run_coroutine_threadsafe(backend_states(self.scheduler_address, self._connection_args()),
                                               self._loop)
        routes, sessions = routes_from_states(fut.result(timeout_s))
        self.set_routes(routes, sessions)
        return routes

    def _connection_args(self) -> dict[str, Any]:
        return self.security.get_connection_args("client") if self.security is not None else {}

    # ------------------------------------------------------------------------------------------ submit
    def submit(self, session: str, payload: Any = None, *, timeout_s: float | None = None
               ) -> concurrent.futures.Future:
        """One request; the future resolves to the output or raises ``Dropped`` / ``RequestFailed``.

        Unknown sessions and payloads that do not match the model's input spec raise ``ValueError`` here, before
        anything is sent.
        """
        return self.submit_many(session, [payload], timeout_s=timeout_s)[0]

    async def asubmit(self, session: str, payload: Any = None, *, timeout_s: float | None = None) -> Any:
        """``submit`` for asyncio code: awaits the output (on any event loop)."""
        return await asyncio.wrap_future(self.submit(session, payload, timeout_s=timeout_s))

    def submit_many(self, session: str, payloads: Iterable[Any], *, timeout_s: float | None = None,
                    deadline: float | None = None) -> list[concurrent.futures.Future]:
        """Many requests of one session (one lock, one wake-up); ``deadline`` (absolute ``time.time()``)
        overrides the session's SLO, as query stages do."""
        return [r.future for r in self._submit(session, payloads, timeout_s, deadline, None)]

    def send_many(self, session: str, payloads: Iterable[Any], on_done: OnDone | Sequence[OnDone], *,
                  timeout_s: float | None = None, deadline: float | None = None,
                  arrived: float | Sequence[float] | None = None) -> None:
        """``submit_many`` without futures, for load generators that only count outcomes: ``on_done(status,
        value)`` runs once per request on the frontend's loop thread (``"ok"`` and the output, ``"dropped"`` and
        the reason, ``"error"`` and the text). A future per request costs about as much CPU as dispatching it;
        called from the loop thread itself (``run_on_loop``), sending takes no thread hand-off either.

        ``on_done`` may also be one callback per payload. ``arrived`` (``time.time()``, one for all or one per
        payload): when the requests arrived, for a caller that hands them over late (a load generator that wakes
        once per coalescing window); their SLO deadline and coalescing window count from then, so a message whose
        window has passed goes out at once."""
        self._submit(session, payloads, timeout_s, deadline, on_done, arrived)

    def window_s(self, session: str) -> float:
        """How long a request of ``session`` may wait here for company (s): the shortest hold its backends have
        said (``holds`` on their streams), else the frontend's window."""
        with self._lock:
            route = self._routes.get(session)
            conns = [self._conns.get(a) for a in (route.addrs if route is not None else ())]
        base = self.coalesce_s
        return min((c.holds.get(session, base) if c is not None else base for c in conns), default=base)

    def run_on_loop(self, coro: Any) -> concurrent.futures.Future:
        """Run a coroutine on the frontend's loop thread (where ``send_many`` is cheapest); its future."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _submit(self, session: str, payloads: Iterable[Any], timeout_s: float | None, deadline: float | None,
                on_done: OnDone | Sequence[OnDone] | None, arrived: float | Sequence[float] | None = None
                ) -> list[Pending]:
        if self._closed:
            raise RuntimeError("frontend is closed")
        payloads = list(payloads)
        with self._lock:
            s = self._sessions.get(session)
            if s is None:
                raise ValueError(f"session: unknown session {session!r}; routed sessions: {sorted(self._sessions)}")
            spec = self._specs.get(session)
            route = self._routes.get(session)
        if spec is not None:  # checked against the spec both sides share; the backend decodes with it
            payloads = wire.encode_payloads(spec, payloads, session)
        now = time.time()
        mono = time.monotonic()
        slo_s = float(s["slo_ms"]) / 1000.0
        window_s = self.coalesce_s
        if arrived is None or isinstance(arrived, (int, float)):
            lates = [0.0 if arrived is None else max(0.0, now - float(arrived))] * len(payloads)
        else:
            lates = [max(0.0, now - float(a)) for a in arrived]
            if len(lates) != len(payloads):
                raise ValueError(f"arrived: must give one time per payload ({len(payloads)}), got {len(lates)}")
        if on_done is not None and not callable(on_done):
            dones = list(on_done)
            if len(dones) != len(payloads):
                raise ValueError(f"on_done: must give one callback per payload ({len(payloads)}), got {len(dones)}")
        else:
            dones = [on_done] * len(payloads)
        out: list[Pending] = []
        wake: list[BackendStream] = []
        now_flush: list[BackendStream] = []
        with self._lock:
            avoid = self._avoid()
            for p, late, cb in zip(payloads, lates, dones):  # noqa: B905 (lengths checked above)
                dl = now - late + slo_s if deadline is None else float(deadline)
                expire = (now + float(timeout_s)) if timeout_s is not None else dl + LOST_GRACE_S
                req = Pending(next(self._ids), session, dl, p,
                               concurrent.futures.Future() if cb is None else None, cb, expire)
                out.append(req)
                addr = route.pick(avoid) if route is not None else None
                if addr is None and route is not None and avoid is not self._dead:  # only suspects left: try one
                    addr = route.pick(self._dead)
                if addr is None:
                    req.end("dropped", DropReason.NO_ROUTE, self._no_route_detail(session))
                    continue
                req.addr = addr
                conn = self._conns.get(addr)
                if conn is None:
                    conn = self._conns[addr] = BackendStream(addr)
                conn.buffer.append(req)
                # the backend's own hold for the session when it has said one, else the session's window
                due = mono - late + conn.holds.get(session, window_s)
                if len(conn.buffer) >= self.max_coalesce or due <= mono:  # full, or its window has passed
                    if conn not in now_flush:
                        now_flush.append(conn)
                elif not conn.flush_scheduled or due < conn.flush_at:  # a session with a shorter window
                    conn.flush_scheduled = True
                    conn.flush_at = due
                    if conn not in wake:
                        wake.append(conn)
        if wake or now_flush:
            if threading.get_ident() == self._thread.ident:
                self._schedule(wake, now_flush)
            else:
                self._loop.call_soon_threadsafe(self._schedule, wake, now_flush)
        return out

    def _no_route_detail(self, session: str) -> str:
        route = self._routes.get(session)
        lost = [a for a in (route.addrs if route else []) if a in self._dead]
        if lost:
            return f"every backend of {session!r} was lost: " + ", ".join(f"{a} ({self._lost.get(a, '')})"
                                                                           for a in lost)
        return f"no backend serves session {session!r}"

    def _schedule(self, wake: list[BackendStream], now_flush: list[BackendStream]) -> None:
        """Loop thread: a full buffer flushes at once; the first request of a buffer arms the coalescing timer
        (the backend's hold for its session, else the frontend's window); a shorter window re-arms it."""
        for conn in now_flush:
            self._spawn(self._flush(conn))
        for conn in wake:
            if conn not in now_flush:
                self._loop.call_at(conn.flush_at, lambda c=conn: self._spawn(self._flush(c)))

    async def _flush(self, conn: BackendStream) -> None:
        with self._lock:
            batch, conn.buffer = conn.buffer, []
            conn.flush_scheduled = False
        if not batch:
            return
        conn.track(batch)  # in flight from now: a backend that hangs while connecting is suspect as well
        try:
            if conn.comm is None:
                await conn.open(self._connection_args(), lambda comm: self._spawn(self._read(conn, comm)))
            self.sent_messages += await conn.send(batch, self.max_coalesce)
            self.sent_requests += len(batch)
        except (OSError, asyncio.TimeoutError) as exc:  # CommClosedError is an OSError: the backend is gone
            self._lose(conn, f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # e.g. a payload that cannot be serialized: fail these requests, keep the backend
            for r in batch:
                conn.inflight.pop(r.id, None)
                r.end("error", f"could not send request {r.id} to {conn.addr}: {type(exc).__name__}: {exc}")

    async def _read(self, conn: BackendStream, comm: Any) -> None:
        try:
            await conn.read(comm)
        except Exception as exc:
            if not self._closed:
                self._lose(conn, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)

    def _avoid(self) -> set[str]:
        """Under the lock: the backends new requests avoid, lost and suspect (the lost set itself when none is
        suspect)."""
        suspects = self._health.suspects
        return self._dead | set(suspects) if suspects else self._dead

    def _move(self, addr: str, reqs: Iterable[Pending], now: float) -> list[Pending]:
        """Loop thread: send each of ``reqs``, taken off backend ``addr``, to another backend of its session (neither
        lost nor suspect) while its deadline allows; returns the requests that found none."""
        again: dict[str, list[Pending]] = {}
        stuck: list[Pending] = []
        with self._lock:
            avoid = self._avoid()
            for r in reqs:
                if r.done():
                    continue
                route = self._routes.get(r.session)
                alt = route.pick(avoid, (*r.tried, addr)) if route is not None and r.deadline > now else None
                if alt is None:
                    stuck.append(r)
                    continue
                r.tried, r.addr = (*r.tried, addr), alt
                again.setdefault(alt, []).append(r)
            conns = []
            for alt, moved in again.items():
                c = self._conns.get(alt)
                if c is None:
                    c = self._conns[alt] = BackendStream(alt)
                c.buffer.extend(moved)
                conns.append(c)
        for c in conns:
            self._spawn(self._flush(c))
        return stuck

    def _lose(self, conn: BackendStream, why: str) -> None:
        """Loop thread: the backend at ``conn.addr`` is gone. Re-route each of its in-flight requests to another
        backend of the same session while its deadline still allows, else fail it naming the lost worker."""
        addr = conn.addr
        with self._lock:
            if self._conns.get(addr) is conn:
                del self._conns[addr]
            self._dead.add(addr)
            self._lost[addr] = why
            self._health.forget(addr)
            pending = list(conn.inflight.values()) + conn.buffer
            conn.inflight = {}
            conn.buffer = []
        if conn.comm is not None:
            conn.comm.abort()
        logger.warning("nexus backend %s lost (%s); %d requests in flight", addr, why, len(pending))
        for r in self._move(addr, pending, time.time()):
            r.end("error", f"worker {addr} lost with request {r.id} of session {r.session!r} in flight ({why})")

    async def _sweep(self) -> None:
        """Nothing hangs: a request past its expiry (``timeout_s``, or its deadline plus ``LOST_GRACE_S``) fails.
        A backend silent with requests in flight for longer than the suspect bound is suspect: its requests go to
        other backends of their sessions while deadlines allow, the rest fail at their deadline plus the bound,
        and it is pinged until it speaks again."""
        health = self._health
        while not self._closed:
            await asyncio.sleep(SWEEP_S)
            mono, now = time.monotonic(), time.time()
            stalled = health.own_stall(mono)
            for conn in list(self._conns.values()):
                if stalled:  # the silence since the last sweep is this loop's own
                    conn.busy_since = max(conn.busy_since, mono)
                with self._lock:  # other threads read the suspects (``_avoid``, ``suspect_workers``)
                    health.review(conn, mono)
                ended, movable = health.take(conn, now, mono)
                for r in self._move(conn.addr, movable, now):
                    conn.inflight[r.id] = r  # no other backend: it may still answer in time
                for r, why in ended:
                    r.end("error", why)
                if health.is_suspect(conn.addr):
                    self._spawn(conn.ping())

    # ------------------------------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Fail whatever is still in flight (``frontend closed``), close the streams, stop the loop thread."""
        if self._closed:
            return
        self._closed = True

        async def shut() -> None:
            for conn in list(self._conns.values()):
                for r in list(conn.inflight.values()) + conn.buffer:
                    r.end("error", "frontend closed")
                if conn.comm is not None:
                    conn.comm.abort()
            self._conns.clear()

        async def cancel_tasks() -> None:  # the sweeper and any flush: none is left pending when the loop stops
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(5)
        finally:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(cancel_tasks(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def __enter__(self) -> Frontend:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def sessions(self) -> dict[str, dict[str, Any]]:
        return dict(self._sessions)

    @property
    def lost_workers(self) -> dict[str, str]:
        """Backends declared lost, with why."""
        return dict(self._lost)

    @property
    def suspect_workers(self) -> dict[str, float]:
        """Backends suspect now (silent with requests in flight; routed around), with when (``time.time()``)."""
        with self._lock:
            return dict(self._health.suspects)

    def silence_bound_s(self, addr: str = "") -> float:
        """How long ``addr``'s stream may be silent with requests in flight before its backend is suspect (s):
        the frontend's bound, or two of its planned duty cycles when longer; the bound alone for no address."""
        with self._lock:
            return self._health.bound(addr)
