"""The controller's serving calls: ``infer``, ``submit`` and ``query`` through its frontend, with every argument
checked before anything is sent and every request ending as a result, a ``Dropped`` or a ``RequestFailed``.

A mixin of ``Controller`` (its ``_deploy``, ``editor``, ``frontend`` and ``io``); depends on the runtime's frontend
and query runner only through them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

from ..runtime.results import RequestFailed
from ..workload import WorkloadError
from .checks import check_name, check_timeout, guarded

__all__ = ["Serving"]

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

    @guarded
    def query(self, name: str, frame: Any, timeout_s: float | None = None) -> dict[str, Any]:
        """Run query ``name`` on one frame through its DAG with the plan's stage budgets."""
        from ..runtime.queries import run_query

        check_name(name, "query.name")
        timeout_s = check_timeout(timeout_s, "query.timeout_s")
        with self._deploy.lock:
            q = self.editor.queries.get(name)
            plan = self._deploy.plan
        if q is None:
            raise WorkloadError(f"query.name: unknown query {name!r}; known: {sorted(self.editor.queries)}")
        qp = next((x for x in (plan.queries if plan else ()) if x.name == name), None)
        if qp is None:
            raise WorkloadError(f"query.name: {name!r} is not in the applied plan (call apply())")
        parents = {st.name: (st.parents[0] if st.parents else None) for st in q.stages}
        try:
            return run_query(self.frontend.submit_many, qp.to_dict(), frame, parents=parents, timeout_s=timeout_s)
        except ValueError as exc:  # the frame (or a crop of it) does not fit a stage's input spec
            raise WorkloadError(f"query.frame: {exc}") from None
