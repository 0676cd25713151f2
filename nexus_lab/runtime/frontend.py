"""The frontend (Nexus section 6): routes each session's requests to its backends in proportion to the plan's rates,
coalesces them into one message per backend, and hands back futures; also runs query DAGs stage by stage.

Transport only: it executes routes it is given and never plans; depends on distributed's comms and the result
types, never on the controller or on Dask's task machinery (no ``client.submit``, no actors).

Threads: the frontend owns one event loop on a daemon thread. ``submit`` may be called from any thread (it only
appends to a per-backend buffer under a lock); connections, flushes and replies run on that loop. Each backend gets
one persistent duplex stream (the backend's ``nexus_stream`` handler): request batches go out as they are flushed,
result batches come back as each device batch finishes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from ..batching import DropReason
from .results import Dropped, RequestFailed

logger = logging.getLogger("nexus_lab.frontend")

#: Scheduler metadata key under which a controller publishes ``{"version", "routes", "sessions"}`` after every apply.
ROUTES_KEY = "nexus_lab-routes"

__all__ = ["Frontend", "run_query"]

LOST_GRACE_S = 5.0  # a request with no reply this long after its deadline fails (its backend hung)
_SWEEP_S = 0.25


#: ``on_done(status, value)`` of ``Frontend.send_many``: status ``"ok"`` (value: the output), ``"dropped"`` (value:
#: the ``DropReason``) or ``"error"`` (value: the text).
OnDone = Callable[[str, Any], None]


class _Pending:
    """One request in flight; it ends exactly once, through its future or its ``on_done`` callback."""

    __slots__ = ("addr", "deadline", "expire", "future", "id", "on_done", "payload", "session", "tried")

    def __init__(self, rid: int, session: str, deadline: float, payload: Any,
                 future: concurrent.futures.Future | None, on_done: OnDone | None, expire: float) -> None:
        self.id = rid
        self.session = session
        self.deadline = deadline
        self.payload = payload
        self.future = future
        self.on_done = on_done
        self.expire = expire
        self.addr = ""
        self.tried: tuple[str, ...] = ()

    def done(self) -> bool:
        return self.future.done() if self.future is not None else self.on_done is None

    def end(self, status: str, value: Any, detail: str = "") -> None:
        """End the request (a second end is ignored): ``"ok"`` with the output, ``"dropped"`` with the reason
        (and ``detail``), anything else an error with its text."""
        fut = self.future
        if fut is None:
            cb, self.on_done = self.on_done, None
            if cb is not None:
                try:
                    cb(status if status in ("ok", "dropped") else "error", value)
                except Exception:  # the caller's bug must not take the stream that delivered the reply down
                    logger.exception("on_done callback of request %s failed", self.id)
            return
        if fut.done():
            return
        if status == "ok":
            fut.set_result(value)
        elif status == "dropped":
            fut.set_exception(Dropped(value, detail))
        else:
            fut.set_exception(RequestFailed(str(value)))


class _Route:
    """Smooth weighted round robin over one session's backends: over any window each backend gets its share of
    requests within one request of ``rate_i / sum(rate)`` (deficit counters, no randomness)."""

    __slots__ = ("addrs", "current", "total", "weights")

    def __init__(self, backends: Sequence[tuple[str, float]]) -> None:
        self.addrs = [str(a) for a, _ in backends]
        w = [float(r) for _, r in backends]
        if not any(x > 0 for x in w):
            w = [1.0] * len(w)
        self.weights = w
        self.total = sum(w)
        self.current = [0.0] * len(w)

    def pick(self, dead: set[str] | frozenset[str], avoid: tuple[str, ...] = ()) -> str | None:
        best, best_v = -1, -float("inf")
        total = 0.0
        cur, weights = self.current, self.weights
        for i, a in enumerate(self.addrs):
            if a in dead or a in avoid or weights[i] <= 0:
                continue
            cur[i] += weights[i]
            total += weights[i]
            if cur[i] > best_v:
                best, best_v = i, cur[i]
        if best < 0:
            return None
        cur[best] -= total
        return self.addrs[best]


class _Conn:
    """One backend's stream: the comm, its write lock and the buffer of requests waiting to be flushed."""

    def __init__(self, addr: str) -> None:
        self.addr = addr
        self.comm: Any = None
        self.ready: asyncio.Future | None = None
        self.buffer: list[_Pending] = []
        self.flush_scheduled = False
        self.flush_at = 0.0  # loop time (time.monotonic) the armed coalescing timer fires
        self.inflight: dict[int, _Pending] = {}
        self.lock: asyncio.Lock | None = None
        self.holds: dict[str, float] = {}  # session -> how long the backend holds its small batches (s), as it says


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
        How long the first request of a buffer waits for company before the buffer is flushed; a session whose
        info (``set_routes``) carries its own ``coalesce_ms`` uses that (a controller sets it on host-CPU
        backends, which hold partial batches anyway).
    max_coalesce : int
        Flush at once when a backend's buffer holds this many requests.

    Examples
    --------
    >>> fe = Frontend(client)  # doctest: +SKIP
    >>> fe.set_routes({"cls": [(w1, 100.0), (w2, 50.0)]}, {"cls": {"model": "noop", "slo_ms": 50}})  # doctest: +SKIP
    >>> fe.submit("cls", None).result()  # doctest: +SKIP
    """

    def __init__(self, address_or_client: Any = None, *, security: Any = None, coalesce_ms: float = 1.0,
                 max_coalesce: int = 64) -> None:
        if coalesce_ms < 0:
            raise ValueError(f"coalesce_ms: must be >= 0, got {coalesce_ms}")
        if int(max_coalesce) < 1:
            raise ValueError(f"max_coalesce: must be >= 1, got {max_coalesce}")
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
        self._routes: dict[str, _Route] = {}
        self._sessions: dict[str, dict[str, Any]] = {}
        self._specs: dict[str, Any] = {}
        self._conns: dict[str, _Conn] = {}
        self._dead: set[str] = set()
        self._lost: dict[str, str] = {}  # address -> why it was declared lost
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
        ``{"model", "slo_ms", "budget_ms"}`` (optionally ``"coalesce_ms"``). Requests already in flight are not
        moved."""
        for name, backends in routes.items():
            if name not in sessions:
                raise ValueError(f"routes[{name!r}]: session missing from sessions")
            for k, item in enumerate(backends):
                if len(item) != 2 or not isinstance(item[0], str) or float(item[1]) < 0:
                    raise ValueError(f"routes[{name!r}][{k}]: must be (worker address, rate >= 0), got {item!r}")
        for name, s in sessions.items():
            if float(s.get("slo_ms", 0)) <= 0:
                raise ValueError(f"sessions[{name!r}].slo_ms: must be > 0, got {s.get('slo_ms')}")
            if s.get("coalesce_ms") is not None and not 0 <= float(s["coalesce_ms"]) <= float(s["slo_ms"]):
                raise ValueError(f"sessions[{name!r}].coalesce_ms: must be in [0, slo_ms = {s['slo_ms']}], got "
                                 f"{s['coalesce_ms']}")
        specs = {name: _input_spec(str(s.get("model", ""))) for name, s in sessions.items()}
        with self._lock:
            self._routes = {name: _Route(b) for name, b in routes.items()}
            self._sessions = {name: dict(s) for name, s in sessions.items()}
            self._specs = specs
            listed = {a for b in routes.values() for a, _ in b}
            self._dead -= listed

    def update_sessions(self, sessions: dict[str, dict[str, Any]]) -> None:
        """Replace the info of routed sessions (e.g. a new ``coalesce_ms``) without touching their routes;
        sessions not routed here are ignored."""
        with self._lock:
            for name, s in sessions.items():
                if name in self._sessions:
                    self._sessions[name] = dict(s)

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
        fut = asyncio.run_coroutine_threadsafe(self._cluster_state(), self._loop)
        states = fut.result(timeout_s)
        routes: dict[str, list[tuple[str, float]]] = {}
        sessions: dict[str, dict[str, Any]] = {}
        for addr, st in states.items():
            gpu = st.get("gpu") or {}
            for a in gpu.get("allocations", ()):
                routes.setdefault(a["session"], []).append((addr, float(a.get("rate", 0.0))))
                sessions[a["session"]] = st["sessions"].get(a["session"]) or {"model": a["model"],
                                                                              "slo_ms": a["slo_ms"]}
        self.set_routes(routes, sessions)
        return routes

    async def _cluster_state(self) -> dict[str, dict[str, Any]]:
        from distributed.core import rpc

        args = self._connection_args()
        async with rpc(self.scheduler_address, connection_args=args) as sched:
            info = await sched.identity()
        out: dict[str, dict[str, Any]] = {}
        for addr in info.get("workers", {}):
            async with rpc(addr, connection_args=args) as w:
                try:
                    out[addr] = await w.nexus_state()
                except Exception:  # a worker without the backend plugin serves nothing
                    continue
        return out

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
        said (``holds`` on their streams), else the session's ``coalesce_ms``, else the frontend's window."""
        with self._lock:
            base = self._session_window_s(self._sessions.get(session, {}))
            route = self._routes.get(session)
            conns = [self._conns.get(a) for a in (route.addrs if route is not None else ())]
        return min((c.holds.get(session, base) if c is not None else base for c in conns), default=base)

    def _session_window_s(self, session_info: dict[str, Any]) -> float:
        """A session's own coalescing window (s): its ``coalesce_ms``, else the frontend's."""
        w = session_info.get("coalesce_ms")
        return self.coalesce_s if w is None else float(w) / 1000.0

    def run_on_loop(self, coro: Any) -> concurrent.futures.Future:
        """Run a coroutine on the frontend's loop thread (where ``send_many`` is cheapest); its future."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _submit(self, session: str, payloads: Iterable[Any], timeout_s: float | None, deadline: float | None,
                on_done: OnDone | Sequence[OnDone] | None, arrived: float | Sequence[float] | None = None
                ) -> list[_Pending]:
        if self._closed:
            raise RuntimeError("frontend is closed")
        payloads = list(payloads)
        with self._lock:
            s = self._sessions.get(session)
            if s is None:
                raise ValueError(f"session: unknown session {session!r}; routed sessions: {sorted(self._sessions)}")
            spec = self._specs.get(session)
            route = self._routes.get(session)
        if spec is not None:
            # Checked against the spec both sides share: raw bytes travel as one msgpack field each, where an
            # array would be a serialized header plus a frame per request (~10x the frontend's CPU per request);
            # the backend decodes them with the same spec. One object sent many times is checked and encoded once.
            encoded: dict[int, bytes] = {}
            for k, p in enumerate(payloads):
                raw = encoded.get(id(p))
                if raw is None:
                    _check_payload(spec, p, f"payloads[{k}]" if len(payloads) > 1 else "payload", session)
                    raw = encoded[id(p)] = np.ascontiguousarray(p).tobytes()
                payloads[k] = raw
        now = time.time()
        mono = time.monotonic()
        slo_s = float(s["slo_ms"]) / 1000.0
        window_s = self._session_window_s(s)
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
        out: list[_Pending] = []
        wake: list[_Conn] = []
        now_flush: list[_Conn] = []
        with self._lock:
            for p, late, cb in zip(payloads, lates, dones):  # noqa: B905 (lengths checked above)
                dl = now - late + slo_s if deadline is None else float(deadline)
                expire = (now + float(timeout_s)) if timeout_s is not None else dl + LOST_GRACE_S
                req = _Pending(next(self._ids), session, dl, p,
                               concurrent.futures.Future() if cb is None else None, cb, expire)
                out.append(req)
                addr = route.pick(self._dead) if route is not None else None
                if addr is None:
                    req.end("dropped", DropReason.NO_ROUTE, self._no_route_detail(session))
                    continue
                req.addr = addr
                conn = self._conns.get(addr)
                if conn is None:
                    conn = self._conns[addr] = _Conn(addr)
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

    def _schedule(self, wake: list[_Conn], now_flush: list[_Conn]) -> None:
        """Loop thread: a full buffer flushes at once; the first request of a buffer arms the coalescing timer
        (its session's ``coalesce_ms``, else the frontend's), and a later one with a shorter window re-arms it."""
        for conn in now_flush:
            self._spawn(self._flush(conn))
        for conn in wake:
            if conn not in now_flush:
                self._loop.call_at(conn.flush_at, lambda c=conn: self._spawn(self._flush(c)))

    async def _flush(self, conn: _Conn) -> None:
        with self._lock:
            batch, conn.buffer = conn.buffer, []
            conn.flush_scheduled = False
        if not batch:
            return
        try:
            comm = await self._connect(conn)
            for r in batch:
                conn.inflight[r.id] = r
            step = self.max_coalesce
            async with conn.lock:
                for k in range(0, len(batch), step):  # a message holds at most max_coalesce requests
                    part = batch[k:k + step]
                    await comm.write({"r": [[r.id, r.session, r.deadline, _wire(r.payload)] for r in part]})
                    self.sent_messages += 1
                    self.sent_requests += len(part)
        except (OSError, asyncio.TimeoutError) as exc:  # CommClosedError is an OSError: the backend is gone
            for r in batch:
                conn.inflight.setdefault(r.id, r)
            self._lose(conn, f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # e.g. a payload that cannot be serialized: fail these requests, keep the backend
            for r in batch:
                conn.inflight.pop(r.id, None)
                r.end("error", f"could not send request {r.id} to {conn.addr}: {type(exc).__name__}: {exc}")

    async def _connect(self, conn: _Conn) -> Any:
        if conn.comm is not None:
            return conn.comm
        if conn.ready is None:
            conn.ready = self._loop.create_future()
            conn.lock = asyncio.Lock()
            try:
                from distributed.comm import connect

                comm = await connect(conn.addr, timeout=5, **self._connection_args())
                # Messages are bounded (max_coalesce requests, or one batch's results): distributed's offload
                # check would walk every request of every message with sizeof before serializing it.
                comm.allow_offload = False
                await comm.write({"op": "nexus_stream", "reply": False})
                conn.comm = comm
                conn.ready.set_result(comm)
                self._spawn(self._read(conn, comm))
            except Exception as exc:
                conn.ready.set_exception(exc)
                conn.ready.exception()  # mark retrieved: waiters re-raise it themselves
                raise
        return await asyncio.shield(conn.ready)

    async def _read(self, conn: _Conn, comm: Any) -> None:
        try:
            while True:
                msg = await comm.read()
                inflight = conn.inflight
                for rid, status, value in msg["d"]:
                    if status == "holds":  # how long the backend now holds each session: coalesce that long
                        conn.holds = {k: float(v) / 1000.0 for k, v in value.items()}
                        continue
                    if status == "oks":  # one batch's results, stacked: row k is request rid[k]'s
                        dtype, shape, raw = value
                        value = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()  # writable, like any result
                        for k, one in enumerate(rid):
                            r = inflight.pop(one, None)
                            if r is not None:
                                r.end("ok", value[k])
                        continue
                    r = inflight.pop(rid, None)
                    if r is not None:
                        r.end(status, value)
        except Exception as exc:
            if not self._closed:
                self._lose(conn, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)

    def _lose(self, conn: _Conn, why: str) -> None:
        """Loop thread: the backend at ``conn.addr`` is gone. Re-route each of its in-flight requests to another
        backend of the same session while its deadline still allows, else fail it naming the lost worker."""
        addr = conn.addr
        with self._lock:
            if self._conns.get(addr) is conn:
                del self._conns[addr]
            self._dead.add(addr)
            self._lost[addr] = why
            pending = list(conn.inflight.values()) + conn.buffer
            conn.inflight = {}
            conn.buffer = []
        if conn.comm is not None:
            conn.comm.abort()
        logger.warning("nexus backend %s lost (%s); %d requests in flight", addr, why, len(pending))
        now = time.time()
        again: dict[str, list[_Pending]] = {}
        with self._lock:
            for r in pending:
                if r.done():
                    continue
                r.tried = (*r.tried, addr)
                route = self._routes.get(r.session)
                alt = route.pick(self._dead, r.tried) if route is not None and r.deadline > now else None
                if alt is None:
                    r.end("error", f"worker {addr} lost with request {r.id} of session {r.session!r} in flight ({why})")
                    continue
                r.addr = alt
                again.setdefault(alt, []).append(r)
            conns = []
            for alt, reqs in again.items():
                c = self._conns.get(alt)
                if c is None:
                    c = self._conns[alt] = _Conn(alt)
                c.buffer.extend(reqs)
                conns.append(c)
        for c in conns:
            self._spawn(self._flush(c))

    async def _sweep(self) -> None:
        """Nothing hangs: a request past its expiry (``timeout_s``, or its deadline plus ``LOST_GRACE_S``) fails."""
        while not self._closed:
            await asyncio.sleep(_SWEEP_S)
            now = time.time()
            for conn in list(self._conns.values()):
                late = [r for r in conn.inflight.values() if r.expire < now]
                for r in late:
                    conn.inflight.pop(r.id, None)
                    r.end("error", f"no reply from worker {conn.addr} for request {r.id} of session {r.session!r}"
                                   " before its expiry (timeout_s, or its deadline plus the lost-worker grace)")

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

    # ------------------------------------------------------------------------------------------ queries
    def query(self, query: dict[str, Any], payload: Any, *, parents: dict[str, str | None],
              crop: Callable[[Any, Any, str], list[Any]] | None = None, timeout_s: float | None = None) -> dict:
        """Run one query DAG synchronously; see ``run_query``."""
        return run_query(self, query, payload, parents=parents, crop=crop, timeout_s=timeout_s)


# ---------------------------------------------------------------------------------------------- queries
def run_query(frontend: Frontend, query: dict[str, Any], payload: Any, *, parents: dict[str, str | None],
              crop: Callable[[Any, Any, str], list[Any]] | None = None, timeout_s: float | None = None
              ) -> dict[str, Any]:
    """Run a query DAG for one input: each root stage on ``payload``, then each child stage once per item its
    parent detected (the fan-out), each stage with the deadline its plan budget gives it.

    Parameters
    ----------
    query : dict
        The plan's query (``QueryPlan.to_dict()``): ``{"name", "slo_ms", "stages": [{"name", "session",
        "budget_ms"}]}``, stages in topological order.
    payload
        The root stages' input (e.g. one video frame).
    parents : dict
        Stage name -> parent stage name (None for roots), from the workload's ``QuerySpec``.
    crop : callable, optional
        ``crop(parent_input, parent_output, child_stage) -> list of child inputs``, one per detected item.
        The default ``crop_boxes`` cuts the boxes a detector returns out of the frame.
    timeout_s : float, optional
        Give up waiting after this long (default: the query SLO plus the frontend's grace).

    Returns
    -------
    dict
        ``{"outputs": {stage: output (roots) or list of outputs, one per item}, "latency_ms", "within_slo",
        "dropped": {stage: count}, "failed": {stage: [error text]}}``. A stage's dropped or failed items are
        counted; a dropped root leaves its children empty.
    """
    stages = list(query["stages"])
    names = [s["name"] for s in stages]
    for st in names:
        if st not in parents:
            raise ValueError(f"parents: missing stage {st!r} of query {query.get('name')!r}")
    t0 = time.time()
    slo_s = float(query["slo_ms"]) / 1000.0
    crop = crop or crop_boxes
    deadline_of: dict[str, float] = {}
    inputs_of: dict[str, list[Any]] = {}
    outputs: dict[str, Any] = {}
    dropped: dict[str, int] = {}
    failed: dict[str, list[str]] = {}
    wait = timeout_s if timeout_s is not None else slo_s + LOST_GRACE_S
    for st in stages:
        name, parent = st["name"], parents[st["name"]]
        base = t0 if parent is None else deadline_of[parent]
        deadline_of[name] = min(base + float(st["budget_ms"]) / 1000.0, t0 + slo_s)
        if parent is None:
            items = [payload]
        else:
            items = []
            for p_in, p_out in zip(inputs_of.get(parent, []), _as_list(outputs.get(parent), parents[parent]),
                                   strict=False):
                if p_out is not None:
                    items.extend(crop(p_in, p_out, name))
        futs = frontend.submit_many(st["session"], items, deadline=deadline_of[name]) if items else []
        results: list[Any] = []
        for f in futs:
            try:
                results.append(f.result(max(0.0, t0 + wait - time.time())))
            except Dropped:
                dropped[name] = dropped.get(name, 0) + 1
                results.append(None)
            except (RequestFailed, concurrent.futures.TimeoutError) as exc:
                failed.setdefault(name, []).append(str(exc) or type(exc).__name__)
                results.append(None)
        inputs_of[name] = items
        outputs[name] = results[0] if parent is None and results else results
    latency = time.time() - t0
    return {"outputs": outputs, "latency_ms": latency * 1000.0, "within_slo": latency <= slo_s and not failed
            and not dropped, "dropped": dropped, "failed": failed}


def _as_list(out: Any, grandparent: str | None) -> list[Any]:
    return [out] if grandparent is None else list(out or [])


def crop_boxes(frame: Any, boxes: Any, stage: str) -> list[Any]:
    """One child input per detected box: rows of ``boxes`` are ``(x0, y0, x1, y1, ...)`` in [0, 1] of the frame
    (the zoo detector's output); each crop is resized (nearest neighbour) back to the frame's own shape so a
    classifier with the frame's input spec accepts it. Without a frame array, the box rows themselves go on."""
    arr = np.asarray(boxes)
    if arr.ndim != 2 or arr.shape[1] < 4:
        return [] if arr.size == 0 else [arr]
    if not isinstance(frame, np.ndarray) or frame.ndim < 2:
        return [row for row in arr]
    h, w = frame.shape[-2], frame.shape[-1]
    out = []
    for x0, y0, x1, y1 in arr[:, :4]:
        c0, c1 = sorted((int(np.clip(x0, 0, 1) * (w - 1)), int(np.clip(x1, 0, 1) * (w - 1))))
        r0, r1 = sorted((int(np.clip(y0, 0, 1) * (h - 1)), int(np.clip(y1, 0, 1) * (h - 1))))
        rows = np.linspace(r0, r1, h).astype(np.int64)
        cols = np.linspace(c0, c1, w).astype(np.int64)
        out.append(np.ascontiguousarray(frame[..., rows[:, None], cols[None, :]]))
    return out


# ---------------------------------------------------------------------------------------------- input checks
def _input_spec(model: str) -> Any:
    """The zoo's input spec of ``model`` (``InputSpec``: shape without the batch axis, dtype), or None for models
    outside the zoo (profile-only models on simulated GPUs) and zoo models that take any payload."""
    if not model:
        return None
    try:
        from ..models.zoo import input_spec
    except ImportError:
        return None
    try:
        return input_spec(model)
    except (KeyError, ValueError):
        return None


def _check_payload(spec: Any, payload: Any, field: str, session: str) -> None:
    shape, dtype = tuple(spec.shape), np.dtype(spec.dtype)
    if not isinstance(payload, np.ndarray):
        raise ValueError(f"{field}: session {session!r} takes a numpy array of shape {shape} and dtype {dtype},"
                         f" got {type(payload).__name__}")
    if tuple(payload.shape) != shape:
        raise ValueError(f"{field}: session {session!r} takes shape {shape}, got {tuple(payload.shape)}")
    if payload.dtype != dtype:
        raise ValueError(f"{field}: session {session!r} takes dtype {dtype}, got {payload.dtype}")


def _wire(payload: Any) -> Any:
    if isinstance(payload, np.ndarray):
        from distributed.protocol import to_serialize

        return to_serialize(payload)
    return payload
