"""Routes: which backends serve a session, at what planned rates, and how a frontend picks one per request.

Also the form routes travel in between processes: a controller publishes ``{"version", "routes", "sessions"}`` under
the scheduler metadata key ``ROUTES_KEY`` after every apply, and frontends elsewhere (load generators on workers)
install what it publishes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["ROUTES_KEY", "Route", "backend_states", "routes_from_config", "routes_from_states"]

#: Scheduler metadata key under which a controller publishes ``{"version", "routes", "sessions"}`` after every apply.
ROUTES_KEY = "nexus_lab-routes"


def routes_from_config(config: Mapping[str, Any]) -> dict[str, list[tuple[str, float]]]:
    """``{"routes": {session: [[address, rate], ...]}}`` (``Frontend.routes_config``, JSON) as ``set_routes``
    takes them."""
    return {s: [(str(a), float(w)) for a, w in b] for s, b in config["routes"].items()}


async def backend_states(scheduler_address: str, connection_args: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every worker's ``nexus_state`` (workers without the backend plugin serve nothing and are left out)."""
    from distributed.core import rpc

    async with rpc(scheduler_address, connection_args=dict(connection_args)) as sched:
        info = await sched.identity()
    out: dict[str, dict[str, Any]] = {}
    for addr in info.get("workers", {}):
        async with rpc(addr, connection_args=dict(connection_args)) as w:
            try:
                out[addr] = await w.nexus_state()
            except Exception:  # a worker without the backend plugin serves nothing
                continue
    return out


def routes_from_states(states: Mapping[str, Mapping[str, Any]]
                       ) -> tuple[dict[str, list[tuple[str, float]]], dict[str, dict[str, Any]]]:
    """The routes and session table the backends' states (``nexus_state``) describe, as ``set_routes`` takes them."""
    routes: dict[str, list[tuple[str, float]]] = {}
    sessions: dict[str, dict[str, Any]] = {}
    for addr, st in states.items():
        gpu = st.get("gpu") or {}
        for a in gpu.get("allocations", ()):
            routes.setdefault(a["session"], []).append((addr, float(a.get("rate", 0.0))))
            sessions[a["session"]] = st["sessions"].get(a["session"]) or {"model": a["model"],
                                                                          "slo_ms": a["slo_ms"]}
    return routes, sessions


class Route:
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
