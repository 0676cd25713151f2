"""A backend's session queues: admission on arrival, early drop when a batch is formed, and the device deadline.

Every queued request ends through its sink (``complete``/``complete_ok``); a drop is reported to ``on_drop`` so the
stats count it. No device, no duty cycle: the slots (``slots.py``) decide what a batch is, these queues hold it.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...batching import DropReason, Window, early_drop_window
from .. import wire

__all__ = ["Req", "SessionQueues", "device_allowance_s"]


@dataclass(slots=True, eq=False)
class Req:
    """One queued request. ``deadline`` is the device deadline: the end-to-end deadline ``e2e`` less what must
    still happen after the batch (``device_allowance_s``); ``start`` is when its latency counts from."""

    id: Any
    session: str
    deadline: float
    e2e: float
    start: float
    payload: Any
    sink: Any


class _Deadlines:
    """A read-only view of a queue's device deadlines, as ``early_drop_window`` wants them (no copy)."""

    __slots__ = ("q",)

    def __init__(self, q: deque) -> None:
        self.q = q

    def __len__(self) -> int:
        return len(self.q)

    def __getitem__(self, i: int) -> float:
        return self.q[i].deadline


def device_allowance_s(session: Mapping[str, Any]) -> float:
    """Seconds a request's end-to-end deadline must keep after its batch ends: post-processing and the way back.

    Pre-processing and the way here are already spent when a request is queued (its deadline is absolute), so
    with ``post_ms`` and ``net_ms`` in the session table only those are kept back. Tables without them keep the
    plan's whole allowance ``SLO - L'``."""
    slo = float(session["slo_ms"])
    if "post_ms" in session and "net_ms" in session:
        return max(0.0, float(session["post_ms"]) + float(session["net_ms"])) / 1000.0
    return max(0.0, slo - float(session.get("budget_ms", slo))) / 1000.0


class SessionQueues:
    """FIFO queues of the sessions a backend serves, with their admission caps and payload specs.

    ``on_arrival(session)`` and ``on_drop(session, reason)`` report to the stats.
    """

    def __init__(self, on_arrival: Callable[[str], None], on_drop: Callable[[str, str], None]) -> None:
        self.queues: dict[str, deque[Req]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}  # session table: model, slo_ms, budget_ms, post_ms, net_ms
        self._accept: dict[str, float] = {}  # session -> accept arrivals until (inf while planned)
        self._specs: dict[str, Any] = {}  # session -> the input spec raw-bytes payloads decode to
        self._caps: dict[str, tuple[int, float, float]] = {}  # session -> (batch per cycle, l(b) s, duty cycle s)
        self._on_arrival = on_arrival
        self._on_drop = on_drop

    # ------------------------------------------------------------------------------------------ plans
    def plan(self, sessions: Mapping[str, dict[str, Any]], planned: Sequence[str],
             caps: Mapping[str, tuple[int, float, float]], removed: Sequence[str], grace_s: float) -> None:
        """Serve ``planned`` sessions (``sessions`` is their table) with admission ``caps``; ``removed`` ones
        keep accepting for ``grace_s`` while routes switch, then drain."""
        now = time.time()
        for s in removed:
            self._accept[s] = now + grace_s
        self.sessions = {**{k: v for k, v in self.sessions.items() if k not in planned}, **sessions}
        for s in planned:
            self._accept[s] = math.inf
            self.queues.setdefault(s, deque())
            spec = wire.input_spec(str(self.sessions[s].get("model", "")))
            if spec is not None:
                self._specs[s] = spec
        self._caps.update(caps)

    def accepting(self, session: str, now: float) -> bool:
        return self._accept.get(session, 0.0) >= now

    def forget(self, session: str) -> None:
        """A removed session's queue drained after its grace: it is gone."""
        for table in (self.queues, self._accept, self._caps):
            table.pop(session, None)

    def any_queued(self) -> bool:
        return any(self.queues.values())

    def lengths(self) -> dict[str, int]:
        return {str(s): len(q) for s, q in self.queues.items()}

    # ------------------------------------------------------------------------------------------ arrivals
    def enqueue(self, rid: Any, session: Any, deadline: Any, payload: Any, sink: Any) -> bool:
        """Admit one request or end it at once (``no_route``, ``overload`` or a bad request); True when queued."""
        now = time.time()
        self._on_arrival(session)
        q = self.queues.get(session)
        if q is None or self._accept.get(session, 0.0) < now:
            self.drop(session, rid, sink, DropReason.NO_ROUTE)
            return False
        try:
            e2e = float(deadline)
        except (TypeError, ValueError):
            sink.complete(rid, "error", f"request {rid!r}: deadline must be a number (time.time() seconds)")
            return False
        s = self.sessions[session]
        allowance = device_allowance_s(s)
        if not self.admits(session, len(q), e2e - allowance - now):
            self.drop(session, rid, sink, DropReason.OVERLOAD)
            return False
        if type(payload) is bytes and session in self._specs:  # decode here, overlapping the device thread
            spec = self._specs[session]
            try:
                payload = wire.decode_payload(spec, payload)
            except ValueError as exc:
                sink.complete(rid, "error", f"request {rid!r}: payload bytes are not one {tuple(spec.shape)} "
                                            f"{spec.dtype} input: {exc}")
                return False
        # Submit time is deadline - SLO for a session's own requests; a query stage's deadline chains from its
        # parent's, which may still lie ahead: then the latency counts from receipt here.
        slo = float(s["slo_ms"]) / 1000.0
        q.append(Req(rid, session, e2e - allowance, e2e, min(e2e - slo, time.time()), payload, sink))
        return True

    def admits(self, session: str, queued: int, left_s: float) -> bool:
        """Admission control: a session gets ``b`` requests per duty cycle ``d``, so a request that finds
        ``queued`` ahead of it and has ``left_s`` until its device deadline can be served only if
        ``queued < b * (floor((left_s - l(b)) / d) + 1)``; else it is dropped on arrival (``overload``) instead of
        queueing behind work it cannot outlast. At least one full batch is always admitted. The request's own
        deadline counts, not the stage budget: a query stage whose parent finished early has more time."""
        cap = self._caps.get(session)
        if cap is None:
            return True
        b, lat_s, duty_s = cap
        cycles = max(1, math.floor(max(0.0, left_s - lat_s) / duty_s) + 1) if duty_s > 0 else 1
        return queued < b * cycles

    # ------------------------------------------------------------------------------------------ forming
    def window(self, session: str, now: float, batch: int, latency_s: Callable[[int], float] | np.ndarray
               ) -> tuple[deque[Req] | None, Window]:
        """Early drop (the shared policy) at the head of ``session``'s queue: the requests that cannot make their
        deadline are dropped (``deadline``); the queue and the window of what may run now."""
        q = self.queues.get(session)
        if not q:
            return q, Window(0, 0)
        w = early_drop_window(_Deadlines(q), now, batch, latency_s)
        for _ in range(w.drop):
            r = q.popleft()
            self.drop(session, r.id, r.sink, DropReason.DEADLINE)
        return q, w

    def drop(self, session: str, rid: Any, sink: Any, reason: str) -> None:
        self._on_drop(session, reason)
        sink.complete(rid, "dropped", reason)

    def fail_all(self, text: str) -> None:
        """The backend is closing: every queued request ends with ``text`` as its error."""
        for q in self.queues.values():
            while q:
                r = q.popleft()
                r.sink.complete(r.id, "error", text)
