"""The controller's service face: ``serve`` starts K Open Inference Protocol frontends in the cluster's worker
processes (``nexus_lab.ingress``), ``endpoints`` lists them, ``stop_serving`` stops them, and ``frontends_state``
gives each one's request rate and errors by status for ``state()`` and the dashboard.

A mixin of ``Controller`` (its ``client``, ``io``, ``on_plan``, ``editor`` and ``_deploy``). The frontends follow
re-plans through the routes the controller publishes after each apply; query routes are published here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ..workload import WorkloadError
from .checks import guarded

logger = logging.getLogger("nexus_lab.controller")

__all__ = ["MAX_FRONTENDS", "Ingress"]

#: At most this many frontend processes (each holds a frontend, an event loop and its connections).
MAX_FRONTENDS = 64


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
                lambda plan, version: self._publish_queries(plan, version))
        self._publish_queries(self._deploy.plan, self._deploy.version)
        try:
            eps = start_frontends(self.client, chosen, host=host, port=port, token=token,
                                  max_body_bytes=max_body_bytes or DEFAULT_MAX_BODY, dedicated=bool(dedicated))
        except ValueError as exc:
            raise WorkloadError(f"serve.{exc}") from None
        except OSError as exc:  # e.g. the port is taken: nothing was left running
            raise WorkloadError(f"serve.port: cannot listen on {host}:{port} and up: {exc}") from None
        self._endpoints = eps
        return [e.url for e in eps]

    def endpoints(self) -> list[str]:
        """The URLs of the frontends serving now (those whose worker process is gone are left out)."""
        eps = list(getattr(self, "_endpoints", ()))
        if not eps:
            return []
        alive = set(self.io.workers())
        return [e.url for e in eps if e.worker in alive]

    def stop_serving(self) -> None:
        """Stop every frontend ``serve`` started (a no-op when none runs)."""
        from ..ingress.launcher import stop_frontends

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
        return [{"name": e.name, "url": e.url, "worker": e.worker, "pid": e.pid, "alive": e.worker in alive,
                 **{k: v for k, v in (stats.get(e.name) or {}).items() if k not in ("url", "worker")}}
                for e in eps]

    def _forget_stats(self, names: list[str]) -> None:
        from ..ingress.server import STATS_KEY

        try:
            stats = self.client.get_metadata(STATS_KEY, default={}) or {}
            self.client.set_metadata(STATS_KEY, {k: v for k, v in stats.items() if k not in names})
        except Exception as exc:
            logger.debug("cannot clear frontend stats: %s", exc)

    def _publish_queries(self, plan: Any, version: int) -> None:
        """After each apply: the query routes the frontends run queries with."""
        from ..ingress.server import QUERIES_KEY

        if plan is None:
            return
        try:
            with self._deploy.lock:
                wl = self.editor.workload()
            self.client.set_metadata(QUERIES_KEY, {"version": int(version), "queries": _query_routes(plan, wl)})
        except Exception as exc:  # best effort: a frontend keeps the query routes it has
            logger.warning("cannot publish query routes: %s", exc)
