"""The frontend-process side of the endpoint: one ``IngressServer`` is a ``nexus_lab.runtime.frontend.Frontend``
plus the HTTP app (``app.InferenceApp`` on uvicorn) on that frontend's own event loop (a request goes from the
socket to the backend's stream with no thread hand-off), following the controller's re-plans through the scheduler
metadata it publishes.

Runs in any process that can reach the scheduler: a Dask worker (``launcher``), or the notebook's kernel in tests.
Routes follow each apply live: ``Frontend.set_routes`` swaps the tables under its lock, requests in flight keep
their backend, and the backends keep serving a session they lose for their drain grace, longer than one poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..runtime.backend.model_plugin import MODELS_KEY, register_packed
from ..runtime.frontend import Frontend
from ..runtime.loadgen import FOLLOW_POLL_S
from ..runtime.results import Dropped, RequestFailed
from ..runtime.routes import ROUTES_KEY, routes_from_config
from .app import DEFAULT_MAX_BODY, DEFAULT_MAX_INFLIGHT, Stats, make_app
from .httpserver import GRACE_S, listen, make_server
from .models import INPUT, OUTPUT, ModelEntry, adopt_outputs, model_table
from .protocol import InferRequest, ProtocolError, stack_outputs

logger = logging.getLogger("nexus_lab.ingress")

__all__ = ["QUERIES_KEY", "STATS_KEY", "FrontendService", "IngressServer"]

#: Scheduler metadata: ``{"version", "queries": {name: plain route data}, "outputs": models.published_outputs}`` a
#: serving controller publishes after each apply.
QUERIES_KEY = "nexus_lab-ingress-queries"
#: Scheduler metadata: ``{frontend name: Stats.snapshot() + {"url", "worker"}}``, each frontend's own entry.
STATS_KEY = "nexus_lab-ingress-stats"


class FrontendService:
    """The models a frontend serves (from its routes) and how one infer request runs through it."""

    def __init__(self, fe: Frontend) -> None:
        self.fe = fe
        self._models: dict[str, ModelEntry] = {}
        self._queries: dict[str, dict[str, Any]] = {}

    def update(self, sessions: Mapping[str, Mapping[str, Any]] | None = None,
               queries: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """Rebuild the model table from the frontend's sessions and the given (or last) queries."""
        if queries is not None:
            self._queries = {k: dict(v) for k, v in queries.items()}
        self._models = model_table(self.fe.sessions if sessions is None else sessions, self._queries)

    def models(self) -> Mapping[str, ModelEntry]:
        return self._models

    def ready(self) -> bool:
        """Ready once routes are installed."""
        return bool(self._models)

    async def infer(self, entry: ModelEntry, req: InferRequest, batch: int) -> dict[str, np.ndarray]:
        arr = req.inputs[INPUT]
        try:
            if entry.kind == "query":
                return await self._query(entry, arr[0])
            results = await self._session(entry.name, [arr[k] for k in range(batch)])
        except ValueError as exc:  # an input the wire spec of a stage refuses (checked here first, so rare)
            raise ProtocolError(f"inputs['{INPUT}']: {exc}") from None
        return {OUTPUT: stack_outputs(results)}

    async def _session(self, session: str, rows: list[Any]) -> list[Any]:
        """Send the rows as requests of ``session`` (one message per backend); their outputs in order, or the
        first drop or failure raised once every row has ended. One future for all the rows, set on the loop
        thread: a future and a task per row cost more CPU than dispatching the row."""
        if not rows:
            return []
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        ends: list[tuple[str, Any] | None] = [None] * len(rows)
        left = [len(rows)]
        here = threading.get_ident()

        def end(k: int, status: str, value: Any) -> None:  # on the loop thread
            if ends[k] is None:
                ends[k] = (status, value)
                left[0] -= 1
                if left[0] == 0 and not fut.done():
                    fut.set_result(None)

        def done_of(k: int) -> Any:
            def done(status: str, value: Any) -> None:
                if threading.get_ident() == here:
                    end(k, status, value)
                else:
                    loop.call_soon_threadsafe(end, k, status, value)
            return done

        if session not in self.fe.sessions:  # the routes changed since the model table was read
            raise Dropped("no_route", f"no backend serves session {session!r} now")
        self.fe.send_many(session, rows, [done_of(k) for k in range(len(rows))])
        await fut
        outs = []
        for status, value in ends:  # type: ignore[misc]
            if status == "dropped":
                raise Dropped(value)
            if status != "ok":
                raise RequestFailed(str(value))
            outs.append(value)
        return outs

    async def _query(self, entry: ModelEntry, frame: np.ndarray) -> dict[str, np.ndarray]:
        """A query's whole DAG on one frame; each stage's outputs (one per item) as one tensor."""
        from ..runtime import queries

        q = entry.query
        fut = queries.start_query(self.fe, q["query"], q["parents"],
                                   frame if isinstance(frame, bytes) else np.array(frame))
        res = await asyncio.wrap_future(fut)
        ended = res.get("ended_by")
        if ended:
            why = f"query {entry.name!r} stage {ended.get('stage')!r}: {ended.get('reason')}"
            if ended.get("status") == "dropped" and ended.get("reason") in ("deadline", "overload", "no_route",
                                                                           "worker_lost"):
                raise Dropped(str(ended["reason"]), why)
            raise RequestFailed(why)
        return {st: stack_outputs(list(res["outputs"].get(st) or [])) for st in entry.stages}


class IngressServer:
    """One frontend serving HTTP: a ``Frontend`` and the app on its loop thread, bound to ``host:port``.

    ``scheduler_address`` given: it installs the routes (and query routes) the controller publishes, polls for
    newer ones every ``FOLLOW_POLL_S`` and publishes its request counts under ``STATS_KEY``; without it, routes are
    given with ``install``. ``url`` is where it listens (port 0 picks a free one).
    """

    def __init__(self, *, scheduler_address: str | None = None, security: Any = None, host: str = "127.0.0.1",
                 port: int = 0, token: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY,
                 max_inflight: int = DEFAULT_MAX_INFLIGHT, name: str = "frontend-0", worker: str | None = None,
                 coalesce_ms: float = 1.0) -> None:
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ValueError(f"port: must be an integer in [0, 65535], got {port!r}")
        self.name, self.worker, self.host = name, worker, host
        self.scheduler_address = scheduler_address
        self.fe = Frontend(scheduler_address, security=security, coalesce_ms=coalesce_ms)
        self.service = FrontendService(self.fe)
        self.stats = Stats()
        self._app = make_app(self.service, token=token, max_body_bytes=max_body_bytes, max_inflight=max_inflight,
                             stats=self.stats)
        self._server: Any = None
        self._serving: asyncio.Future | None = None
        self._follower: asyncio.Task | None = None
        self.versions = {"routes": -1, "queries": -1, "models": -1}
        try:
            self.port = self.fe.run_on_loop(self._start(host, port)).result(30)
        except BaseException:
            self.fe.close()
            raise
        self.url = f"http://{host}:{self.port}"

    async def _start(self, host: str, port: int) -> int:
        sock = listen(host, port)
        self._server = make_server(self._app)
        self._serving = asyncio.ensure_future(self._server.serve(sockets=[sock]))
        while not self._server.started:  # its listener is up within a loop turn or two
            if self._serving.done():
                sock.close()
                self._serving.result()  # raises what stopped it
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.005)
        bound = int(sock.getsockname()[1])
        if self.scheduler_address is not None:
            from distributed.core import rpc

            self._sched = rpc(self.scheduler_address, connection_args=self.fe._connection_args())
            await self._poll()  # serve the current routes from the first request on
            self._follower = asyncio.ensure_future(self._follow())
        return bound

    def install(self, config: Mapping[str, Any], queries: Mapping[str, Any] | None = None) -> None:
        """Install routes as ``Frontend.routes_config`` gives them (and query routes), e.g. a controller's."""
        self.fe.set_routes(routes_from_config(config), dict(config["sessions"]))
        self.service.update(None, queries)

    async def _poll(self) -> None:
        models = await self._sched.get_metadata(keys=[MODELS_KEY], default=None)
        changed = False
        if models and int(models.get("version", -1)) > self.versions["models"]:  # before the routes that use them
            # off the loop: a torchvision source imports torchvision once (seconds)
            await asyncio.get_running_loop().run_in_executor(None, register_packed, str(models["configs"]))
            self.versions["models"] = int(models["version"])
            changed = True
        meta = await self._sched.get_metadata(keys=[ROUTES_KEY], default=None)
        qmeta = await self._sched.get_metadata(keys=[QUERIES_KEY], default=None)
        if meta and int(meta.get("version", -1)) > self.versions["routes"]:
            self.fe.set_routes(routes_from_config(meta), meta["sessions"])
            self.versions["routes"] = int(meta["version"])
            changed = True
        queries = None
        if qmeta and int(qmeta.get("version", -1)) > self.versions["queries"]:
            adopt_outputs(qmeta.get("outputs"))  # the metadata's output shapes, worked out by the controller
            queries = qmeta.get("queries") or {}
            self.versions["queries"] = int(qmeta["version"])
            changed = True
        if changed:
            self.service.update(None, queries)
        snap = {**self.stats.snapshot(), "url": self.url if hasattr(self, "url") else None, "worker": self.worker,
                "routes_version": self.versions["routes"]}
        await self._sched.set_metadata(keys=[STATS_KEY, self.name], value=snap)

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(FOLLOW_POLL_S)
            try:
                await self._poll()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a scheduler hiccup: keep the routes we have and try again
                logger.debug("ingress %s: cannot read routes: %s", self.name, exc)

    def close(self) -> None:
        """Stop listening (requests in flight end first, up to a few seconds), then close the frontend."""
        async def stop() -> None:
            if self._follower is not None:
                self._follower.cancel()
                with contextlib.suppress(BaseException):
                    await self._follower
            if self._serving is not None:
                self._server.should_exit = True
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(self._serving, GRACE_S + 2.0)
            if self.scheduler_address is not None:
                with contextlib.suppress(Exception):
                    await self._sched.close_rpc()

        try:
            with contextlib.suppress(Exception):
                self.fe.run_on_loop(stop()).result(10)
        finally:
            self.fe.close()

    def __enter__(self) -> IngressServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
