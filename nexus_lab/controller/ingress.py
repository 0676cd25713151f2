"""The controller's service face: ``serve`` starts K Open Inference Protocol frontends in the cluster's worker
processes (``nexus_lab.ingress``), ``endpoints`` lists them, ``stop_serving`` stops them, and ``frontends_state``
gives each one's request rate and errors by status for ``state()`` and the dashboard. A watcher thread starts a
frontend again, on its port, when it dies with its worker (or alone).

A mixin of ``Controller`` (its ``client``, ``io``, ``on_plan``, ``editor``, ``_deploy`` and ``_event``). The
frontends follow re-plans through the routes the controller publishes after each apply; query routes are published
here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..workload import WorkloadError
from .checks import guarded

logger = logging.getLogger("nexus_lab.controller")

__all__ = ["MAX_FRONTENDS", "WATCH", "Ingress", "WatchTimes"]

#: At most this many frontend processes (each holds a frontend, an event loop and its connections).
MAX_FRONTENDS = 64


@dataclass
class WatchTimes:
    """The frontend watcher's timing (seconds), read at each tick."""

    #: how often the workers are looked at (one scheduler call)
    tick_s: float = 1.0
    #: how often each frontend's process is asked after (one ``client.run`` per worker that hosts frontends)
    process_s: float = 5.0
    #: how long a frontend whose worker died waits for that worker to come back (the nanny restarts it under its
    #: name) before it is started on another live worker
    rehome_s: float = 5.0
    #: the longest wait between two failed starts of one frontend
    backoff_s: float = 10.0


#: The watcher's timing (tests may shorten it).
WATCH = WatchTimes()


def _query_routes(plan: Any, workload: Any) -> dict[str, Any]:
    """Plain route data per query of the plan (``serving.query_routes``): what ``start_query`` takes."""
    from .serving import query_routes

    return dict(query_routes(plan, workload))


class Ingress:
    """``serve``/``endpoints``/``stop_serving`` of a controller."""

    client: Any
    io: Any
    editor: Any
    _deploy: Any

    @guarded
    def serve(self, port: int = 0, frontends: int = 1, *, host: str = "127.0.0.1", token: str | None = None,
              max_body_bytes: int | None = None, workers: Sequence[str] | None = None, dedicated: bool = True
              ) -> list[str]:
        """Serve every session (and query) as a model of the Open Inference Protocol (KServe v2 REST) from
        ``frontends`` processes of the cluster; returns their URLs (the k-th on ``port + k``; port 0: free ports).

        ``dedicated`` (default): each frontend is a child process of a worker (the workers in turn), living as
        long as it; else a thread of the worker's own process (at most one per worker). ``host`` is 127.0.0.1
        unless given; with ``token`` every route but ``/v2/health/*`` needs ``Authorization: Bearer <token>``;
        bodies over ``max_body_bytes`` (default 64 MiB) get 413. ``workers`` picks the workers (default: all, in
        turn). Serving again replaces the frontends.
        """
        from ..ingress.app import DEFAULT_MAX_BODY
        from ..ingress.launcher import start_frontends

        all_workers = self.io.workers()
        if workers is not None:
            pool = [str(w) for w in workers]
            unknown = [w for w in pool if w not in all_workers]
            if unknown or not pool or len(set(pool)) != len(pool):
                raise WorkloadError(f"serve.workers: must be distinct workers of the cluster, got {pool!r}; "
                                    f"workers: {all_workers}")
        else:
            pool = all_workers
        top = MAX_FRONTENDS if dedicated else len(pool)
        if isinstance(frontends, bool) or not isinstance(frontends, int) or not 1 <= frontends <= top:
            raise WorkloadError(f"serve.frontends: must be an integer in [1, {top}]"
                                f"{'' if dedicated else ' (one thread per worker process)'}, got {frontends!r}")
        chosen = [pool[k % len(pool)] for k in range(frontends)]
        if max_body_bytes is not None and (isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int)
                                           or max_body_bytes < 1):
            raise WorkloadError(f"serve.max_body_bytes: must be an integer >= 1, got {max_body_bytes!r}")
        if token is not None and (not isinstance(token, str) or not token):
            raise WorkloadError("serve.token: must be a non-empty string or None")
        self.stop_serving()
        if getattr(self, "_ingress_unsub", None) is None:
            self._ingress_unsub = self.on_plan(  # type: ignore[attr-defined]
                lambda plan, version: self._publish_ingress(plan, version))
        self._publish_ingress(self._deploy.plan, self._deploy.version)
        try:
            eps = start_frontends(self.client, chosen, host=host, port=port, token=token,
                                  max_body_bytes=max_body_bytes or DEFAULT_MAX_BODY, dedicated=bool(dedicated))
        except ValueError as exc:
            raise WorkloadError(f"serve.{exc}") from None
        except OSError as exc:  # e.g. the port is taken: nothing was left running
            raise WorkloadError(f"serve.port: cannot listen on {host}:{port} and up: {exc}") from None
        self._serve_opts = {"host": host, "token": token, "max_body_bytes": max_body_bytes or DEFAULT_MAX_BODY,
                            "dedicated": bool(dedicated)}
        try:
            names = self.io.worker_names()
        except Exception:
            names = {}
        self._frontend_homes = {e.name: names.get(e.worker, e.worker) for e in eps}
        self._frontend_pool = {names.get(w, w) for w in pool}  # where a frontend may move (by worker name)
        self._frontend_restarts = {e.name: 0 for e in eps}
        self._endpoints = eps
        self._start_watcher()
        return [e.url for e in eps]

    def endpoints(self) -> list[str]:
        """The URLs of the frontends serving now (those whose worker or process is gone, until the watcher has started
        them again, are left out)."""
        eps = list(getattr(self, "_endpoints", ()))
        if not eps:
            return []
        alive, dead = set(self.io.workers()), getattr(self, "_frontends_dead", set())
        return [e.url for e in eps if e.worker in alive and e.name not in dead]

    def stop_serving(self) -> None:
        """Stop every frontend ``serve`` started, and their watcher (a no-op when none runs)."""
        from ..ingress.launcher import stop_frontends

        self._stop_watcher()
        with self._ingress_lock():
            eps, self._endpoints = list(getattr(self, "_endpoints", ())), []
        if eps and self.io.lost() is None:
            alive = set(self.io.workers())  # a frontend whose worker is gone is gone with it
            stop_frontends(self.client, [e for e in eps if e.worker in alive])
            self._forget_stats([e.name for e in eps])

    def frontends_state(self) -> list[dict[str, Any]]:
        """Each frontend ``serve`` started: its URL, worker, process id, whether its worker is alive, its request rate
        (req/s over the last seconds), totals, requests in flight and errors by HTTP status."""
        from ..ingress.server import STATS_KEY

        eps = list(getattr(self, "_endpoints", ()))
        if not eps:
            return []
        try:
            stats = self.client.get_metadata(STATS_KEY, default={}) or {}
            alive = set(self.io.workers())
        except Exception:
            stats, alive = {}, set()
        dead = getattr(self, "_frontends_dead", set())
        restarts = getattr(self, "_frontend_restarts", {})
        return [{"name": e.name, "url": e.url, "worker": e.worker, "pid": e.pid,
                 "alive": e.worker in alive and e.name not in dead, "restarts": restarts.get(e.name, 0),
                 **{k: v for k, v in (stats.get(e.name) or {}).items() if k not in ("url", "worker")}}
                for e in eps]

    # ------------------------------------------------------------------------------------------ the watcher
    def _ingress_lock(self) -> threading.RLock:
        lock = self.__dict__.get("_ingress_rlock")
        if lock is None:
            lock = self.__dict__.setdefault("_ingress_rlock", threading.RLock())
        return lock

    def _start_watcher(self) -> None:
        self._stop_watcher()
        stop = threading.Event()
        thread = threading.Thread(target=self._watch, args=(stop,), name="nexus-frontend-watch", daemon=True)
        self._watcher = (thread, stop)
        self._frontends_dead: set[str] = set()
        thread.start()

    def _stop_watcher(self, timeout_s: float = 70.0) -> None:
        """Stop the watcher; a frontend it is starting finishes first (its start is bounded: ``process.spawn``)."""
        watcher, self._watcher = getattr(self, "_watcher", None), None
        if watcher is None:
            return
        thread, stop = watcher
        stop.set()
        if thread is not threading.current_thread():
            thread.join(timeout_s)

    def _watch(self, stop: threading.Event) -> None:
        """Every ``WATCH.tick_s``: find the frontends that died (their worker left the scheduler, or their process
        exited) and start each again, off the request path."""
        down: dict[str, float] = {}  # name -> when it was first seen dead
        retry: dict[str, tuple[float, float, str]] = {}  # name -> (not before, next backoff, last failure)
        last_process = time.monotonic()
        while not stop.wait(WATCH.tick_s):
            try:
                if self.io.lost() is not None:
                    continue
                now = time.monotonic()
                check = now - last_process >= WATCH.process_s
                if check:
                    last_process = now
                self._watch_once(stop, down, retry, check)
            except Exception as exc:  # a failed look (the scheduler busy, a worker leaving): the next tick retries
                logger.debug("frontend watcher: %s", exc, exc_info=True)

    def _watch_once(self, stop: threading.Event, down: dict[str, float],
                    retry: dict[str, tuple[float, float, str]], check_processes: bool) -> None:
        from ..ingress.launcher import restart_frontend, running_frontends

        workers = self.io.worker_names()
        eps = list(getattr(self, "_endpoints", ()))
        dead = {e.name for e in eps if e.worker not in workers}
        if check_processes:
            live = [e for e in eps if e.name not in dead]
            self._frontends_dead = {e.name for e in live} - running_frontends(self.client, live)
        dead |= self._frontends_dead & {e.name for e in eps}
        now = time.monotonic()
        for name in list(down):
            if name not in dead:
                down.pop(name)
                retry.pop(name, None)
        for e in eps:
            if e.name not in dead or stop.is_set():
                continue
            since = down.setdefault(e.name, now)
            if now < retry.get(e.name, (0.0, 0.0, ""))[0]:
                continue
            target = self._frontend_target(e, workers, eps, dead, now - since)
            if target is None:
                continue
            with self._ingress_lock():
                if stop.is_set() or e not in getattr(self, "_endpoints", ()):
                    return  # stop_serving or serve took over
                try:
                    new = restart_frontend(self.client, e, target, **self._serve_opts)
                except Exception as exc:  # the port still held, the worker leaving: try again later
                    _, wait, said = retry.get(e.name, (0.0, 0.5, ""))
                    why = f"{type(exc).__name__}: {exc}"
                    retry[e.name] = (now + wait, min(2 * wait, WATCH.backoff_s), why)
                    if why != said:  # one event per new reason, not one per try
                        self._event("frontend_restart_failed", name=e.name, url=e.url,  # type: ignore[attr-defined]
                                    worker=target, error=why, retry_in_s=wait)
                    logger.debug("frontend %s: restart on %s failed: %s", e.name, target, why)
                    continue
                self._endpoints = [new if x is e else x for x in self._endpoints]
                self._frontend_restarts[e.name] = self._frontend_restarts.get(e.name, 0) + 1
                self._frontend_homes[e.name] = workers.get(target, target)  # its home from now on
                self._frontends_dead.discard(e.name)
            down.pop(e.name, None)
            retry.pop(e.name, None)
            self._event("frontend_restarted", name=e.name, url=new.url, worker=target,  # type: ignore[attr-defined]
                        previous_worker=e.worker, down_s=round(time.monotonic() - since, 2))
            logger.info("frontend %s restarted on %s at %s", e.name, target, new.url)

    def _frontend_target(self, e: Any, workers: dict[str, str], eps: list[Any], dead: set[str],
                         down_s: float) -> str | None:
        """Where a dead frontend starts again: its own worker while it lives (its process died) or once the nanny
        has brought it back under its name; after ``WATCH.rehome_s``, the live worker hosting fewest frontends,
        among those ``serve`` was given when any is left (with frontends on threads, only one hosting none); None
        to wait."""
        if e.worker in workers:
            return e.worker
        home = self._frontend_homes.get(e.name)
        back = sorted(a for a, n in workers.items() if n == home)
        if back:
            return back[0]
        if down_s < WATCH.rehome_s:
            return None
        picked = [a for a, n in workers.items() if n in self._frontend_pool] or list(workers)
        load = {a: sum(x.worker == a and x.name not in dead for x in eps) for a in picked}
        if not self._serve_opts["dedicated"]:
            load = {a: n for a, n in load.items() if n == 0}
        return min(sorted(load), key=lambda a: load[a]) if load else None

    def _forget_stats(self, names: list[str]) -> None:
        from ..ingress.server import STATS_KEY

        try:
            stats = self.client.get_metadata(STATS_KEY, default={}) or {}
            self.client.set_metadata(STATS_KEY, {k: v for k, v in stats.items() if k not in names})
        except Exception as exc:
            logger.debug("cannot clear frontend stats: %s", exc)

    def _publish_ingress(self, plan: Any, version: int) -> None:
        """At ``serve`` and after each apply while serving: the query routes the frontends run queries with, and
        each routed model's output shape for their metadata, worked out here (``published_outputs``, torch on the
        first zoo net) so that no frontend process imports torch on its loop; a controller that never serves never
        works them out."""
        from ..ingress.models import published_outputs
        from ..ingress.server import QUERIES_KEY

        if plan is None:
            return
        try:
            with self._deploy.lock:
                wl = self.editor.workload()
            outputs = published_outputs(s.get("model") for s in self.frontend.sessions.values())
            self.client.set_metadata(QUERIES_KEY, {"version": int(version), "queries": _query_routes(plan, wl),
                                                   "outputs": outputs})
        except Exception as exc:  # best effort: a frontend keeps the query routes it has
            logger.warning("cannot publish query routes and output shapes: %s", exc)
