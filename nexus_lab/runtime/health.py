"""Backend health as one frontend sees it: a backend whose stream has said nothing for longer than a bound while
requests were in flight on it is *suspect* (a stopped process, a blocked event loop), until it speaks again.

A backend beats on every stream it holds requests of (``backend.streams.BEAT_S``), so silence is meaningful; a
lost backend (closed stream) is the frontend's other case, handled where the stream fails. The frontend routes
around suspects, moves their in-flight requests to the session's other backends while deadlines allow, and fails
the rest at their deadline plus the bound. Only the frontend's loop thread calls into this unit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .pending import Pending
from .stream import BackendStream

logger = logging.getLogger("nexus_lab.frontend")

__all__ = ["SUSPECT_S", "SWEEP_S", "Health"]

#: How long a backend's stream may be silent with requests in flight before the backend is suspect (s): a few of
#: its beats, and about two duty cycles of the plans the runtime serves.
SUSPECT_S = 0.3
#: How often a frontend looks at its streams (expiries, silence): the failover time is at most the bound plus this.
SWEEP_S = 0.1


class Health:
    """Which backends are suspect, since when, and when a request on one is overdue."""

    def __init__(self, suspect_s: float = SUSPECT_S) -> None:
        self.suspect_s = float(suspect_s)
        self.cycles: dict[str, float] = {}  # address -> its longest planned duty cycle (s), from the routes
        self.suspects: dict[str, float] = {}  # address -> time.time() it became suspect
        self._marked: dict[str, float] = {}  # address -> time.monotonic() it became suspect
        self._last = time.monotonic()

    def own_stall(self, mono: float) -> bool:
        """Whether this sweep comes late by more than half the bound: then the frontend's own loop stalled (a GIL
        hog, a pause of the process), and the silence it would see is partly its own, not the backends'."""
        late = mono - self._last > SWEEP_S + self.suspect_s / 2
        self._last = mono
        return late

    def route(self, routes: Mapping[str, Sequence[tuple[str, float]]], sessions: Mapping[str, Mapping[str, Any]]
              ) -> None:
        """New routes: each backend's longest duty cycle of the sessions routed to it (``cycle_ms`` of the
        session table)."""
        cycles: dict[str, float] = {}
        for name, backends in routes.items():
            cycle = float(sessions[name].get("cycle_ms", 0.0)) / 1000.0
            for addr, _ in backends:
                cycles[addr] = max(cycles.get(addr, 0.0), cycle)
        self.cycles = cycles

    def bound(self, addr: str) -> float:
        """How long ``addr`` may be silent with requests in flight: the bound, or two of its duty cycles when
        longer (an inline batch on the host CPU keeps its event loop, and so its beats, busy for up to ``l(b) <=
        d``)."""
        return max(self.suspect_s, 2.0 * self.cycles.get(addr, 0.0))

    def review(self, conn: BackendStream, mono: float) -> str | None:
        """``"suspect"`` when ``conn``'s backend just became suspect, ``"cleared"`` when a suspect spoke again,
        else None."""
        addr = conn.addr
        marked = self._marked.get(addr)
        if marked is not None:
            if conn.heard > marked:
                self.forget(addr)
                logger.warning("nexus backend %s speaks again: no longer suspect", addr)
                return "cleared"
            return None
        if conn.silence(mono) > self.bound(addr):
            self._marked[addr] = mono
            self.suspects[addr] = time.time()
            logger.warning("nexus backend %s suspect: its stream silent for %.2f s with %d requests in flight", addr,
                           conn.silence(mono), len(conn.inflight))
            return "suspect"
        return None

    def is_suspect(self, addr: str) -> bool:
        return addr in self._marked

    def forget(self, addr: str) -> None:
        """No longer suspect: it spoke, or it is lost (then the frontend's lost-backend path owns it)."""
        self._marked.pop(addr, None)
        self.suspects.pop(addr, None)

    def take(self, conn: BackendStream, now: float, mono: float) -> tuple[list[tuple[Pending, str]], list[Pending]]:
        """Take off ``conn`` the requests that end now, each with its error, and (its backend suspect) those that
        may still go to another backend. On a suspect backend a request ends at its deadline plus the bound (or
        its own expiry, if sooner); elsewhere at its expiry (``timeout_s``, or its deadline plus the lost-worker
        grace)."""
        inflight = conn.inflight
        if not inflight:
            return [], []
        if conn.addr not in self._marked:
            late = [r for r in inflight.values() if r.expire < now]
            for r in late:
                del inflight[r.id]
            return [(r, f"no reply from worker {conn.addr} for request {r.id} of session {r.session!r} before its"
                        " expiry (timeout_s, or its deadline plus the lost-worker grace)") for r in late], []
        silent = conn.silence(mono)
        bound = self.bound(conn.addr)
        ended: list[tuple[Pending, str]] = []
        movable: list[Pending] = []
        for r in list(inflight.values()):
            if r.expire < now or r.deadline + bound < now:
                ended.append((r, f"worker {conn.addr} unresponsive (its stream silent for {silent:.2f} s) with request"
                                 f" {r.id} of session {r.session!r} in flight; failed at its deadline plus"
                                 f" {bound:g} s"))
            elif r.deadline > now:
                movable.append(r)
            else:
                continue
            del inflight[r.id]
        return ended, movable
