"""Autoscaling through the Dask cluster manager: as many workers (GPUs) as the plan needs, asked for ahead of a
rising load, given back gracefully when it falls.

``Autoscale`` is a mixin of the ``Controller``: ``ctl.autoscale(minimum=, maximum=)`` starts a thread that, every
``interval_s``, works out the GPUs the workload needs (the fewest-GPUs plan of the measured rates, at the rate the
trend projects ``lookahead_s`` ahead), and decides with ``scale_decision`` (pure: bounds, cool-downs, a fall must
last ``down_after_s``). Up: ``cluster.scale(n)`` (``LocalCluster``, ``LocalCUDACluster``, any ``SpecCluster``);
the epoch loop plans onto the workers as they join. Down: the workers that run least are drained first: marked
draining (``Deployment.drain``), so that no plan or apply puts anything on them again (a user's ``apply`` or an
edit during the drain included), their sessions move and their queues drain; then ``retire_workers`` closes them
and ``cluster.scale(n)`` forgets them: no request is lost. A retirement that fails clears the mark (they serve
again). ``state()["gpus"][i]["draining"]`` shows the mark. Without a cluster
manager (an external scheduler) it only reports what it would ask for. ``ctl.state()["autoscale"]`` and
``ctl.autoscale_state()`` show the target and the actual worker count.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..planner import plan_workload

logger = logging.getLogger("nexus_lab.controller")

__all__ = ["Autoscale", "AutoscalePolicy", "RateTrend", "mark_draining", "scale_decision"]


@dataclass(frozen=True)
class AutoscalePolicy:
    """Bounds and pacing: between ``minimum`` and ``maximum`` workers; a scale-up waits ``up_cooldown_s`` after
    the last change, a scale-down ``down_cooldown_s``, and only once fewer workers have sufficed for
    ``down_after_s``; capacity is planned for the rate projected ``lookahead_s`` ahead."""

    minimum: int = 1
    maximum: int = 16
    up_cooldown_s: float = 2.0
    down_cooldown_s: float = 10.0
    down_after_s: float = 10.0
    lookahead_s: float = 10.0
    interval_s: float = 1.0

    def __post_init__(self) -> None:
        for name in ("minimum", "maximum"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, int) or not 0 <= val <= 100_000:
                raise ValueError(f"autoscale.{name}: must be an integer in [0, 100000], got {val!r}")
        if self.maximum < max(self.minimum, 1):
            raise ValueError(f"autoscale.maximum: must be >= max(minimum, 1) = {max(self.minimum, 1)}, "
                             f"got {self.maximum!r}")
        for name in ("up_cooldown_s", "down_cooldown_s", "down_after_s", "lookahead_s", "interval_s"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, (int, float)) or not 0 <= val <= 86_400:
                raise ValueError(f"autoscale.{name}: must be a number of seconds in [0, 86400], got {val!r}")
        if self.interval_s < 0.05:
            raise ValueError(f"autoscale.interval_s: must be >= 0.05, got {self.interval_s!r}")


class RateTrend:
    """The summed measured rate over the last ``window_s`` seconds, and its least-squares slope (req/s per s); a
    projected rise under ``min_rise`` is taken for noise (it would scale up and down again)."""

    def __init__(self, window_s: float = 10.0, min_rise: float = 1.15) -> None:
        self.window_s = window_s
        self.min_rise = min_rise
        self._points: deque[tuple[float, float]] = deque()
        self._first: float | None = None

    def add(self, t: float, rate: float) -> None:
        self._first = t if self._first is None else self._first
        self._points.append((t, rate))
        while self._points and self._points[0][0] < t - self.window_s:
            self._points.popleft()

    def factor(self, lookahead_s: float) -> float:
        """How much higher than now the rate will be ``lookahead_s`` ahead on its trend (>= 1: a fall waits)."""
        # Only once two windows have passed: the first measurements (the monitor rising from nothing to the
        # rate) are no trend.
        if len(self._points) < 3 or self._first is None or self._points[-1][0] - self._first < 2 * self.window_s:
            return 1.0
        ts = [p[0] for p in self._points]
        rs = [p[1] for p in self._points]
        tm, rm = sum(ts) / len(ts), sum(rs) / len(rs)
        var = sum((t - tm) ** 2 for t in ts)
        if var <= 0 or rs[-1] <= 0:
            return 1.0
        slope = sum((t - tm) * (r - rm) for t, r in zip(ts, rs, strict=True)) / var
        factor = min(4.0, (rs[-1] + slope * lookahead_s) / rs[-1])
        return factor if factor >= self.min_rise else 1.0  # below it, measurement noise, not a trend


def scale_decision(needed: int, actual: int, policy: AutoscalePolicy, now: float, last_change: float,
                   enough_since: float | None) -> tuple[int, str]:
    """The worker count to ask for (``actual`` to hold) and why. ``enough_since``: since when fewer workers than
    ``actual`` have sufficed (None: they do not)."""
    want = max(policy.minimum, min(policy.maximum, needed))
    if want > actual:
        if now - last_change >= policy.up_cooldown_s:
            return want, f"needs {needed} GPUs"
        return actual, "scale-up cooling down"
    if want < actual:
        if enough_since is None or now - enough_since < policy.down_after_s:
            return actual, "waiting for the fall to last"
        if now - last_change < policy.down_cooldown_s:
            return actual, "scale-down cooling down"
        return want, f"needs {needed} GPUs"
    return actual, "steady"


def mark_draining(state: dict[str, Any], draining: set[str] | frozenset[str]) -> None:
    """Give every worker row of a ``state()`` snapshot ``"draining"`` (True while the worker is drained before
    it is retired; such a worker runs no part of the plan, so a row is added for it when it has none), and list
    them in ``state["cluster"]["draining"]``."""
    rows = state.setdefault("gpus", [])
    have = {r.get("worker") for r in rows}
    for w in sorted(set(draining) - have):
        rows.append({"worker": w, "gpu": None, "duty_cycle_ms": None, "occupancy": None, "utilization": None,
                     "sessions": [], "allocations": []})
    rows.sort(key=lambda r: str(r.get("worker")))
    for r in rows:
        r["draining"] = r.get("worker") in draining
    state.setdefault("cluster", {})["draining"] = sorted(draining)


class Autoscale:
    """The controller's autoscaling (a mixin: it uses the controller's cluster, client, deployment and epoch loop)."""

    _autoscaler: dict[str, Any] | None = None

    def autoscale(self, minimum: int = 1, maximum: int = 16, *, cluster: Any = None, up_cooldown_s: float = 2.0,
                  down_cooldown_s: float = 10.0, down_after_s: float = 10.0, lookahead_s: float = 10.0,
                  interval_s: float = 1.0, run: bool = True) -> dict[str, Any]:
        """Keep the cluster at the workers the plan needs, within ``[minimum, maximum]``. ``cluster``: the cluster
        manager (default: the one ``nexus_lab.start`` made; None there: report only). ``run=False``: no thread,
        call ``autoscale_step()`` yourself. Returns ``autoscale_state()``."""
        policy = AutoscalePolicy(minimum, maximum, up_cooldown_s, down_cooldown_s, down_after_s, lookahead_s,
                                 interval_s)
        self.stop_autoscale()
        manager = cluster if cluster is not None else getattr(self, "_cluster", None)
        if manager is not None and not callable(getattr(manager, "scale", None)):
            raise ValueError(f"autoscale.cluster: must have a scale(n) method (a Dask cluster manager), got "
                             f"{type(manager).__name__}")
        stop = threading.Event()
        trend = RateTrend(max(3.0, lookahead_s / 2))  # a short window follows a ramp; the lookahead extends it
        self._autoscaler = {"policy": policy, "cluster": manager, "stop": stop, "trend": trend, "target": None,
                            "needed": None, "why": "starting", "last_change": 0.0, "enough_since": None,
                            "thread": None, "lock": threading.Lock(), "actions": 0}
        if run:
            thread = threading.Thread(target=self._autoscale_loop, args=(stop, policy.interval_s),
                                      name="nexus-autoscale", daemon=True)
            self._autoscaler["thread"] = thread
            thread.start()
        return self.autoscale_state()

    def stop_autoscale(self) -> None:
        """Stop autoscaling (the cluster keeps the workers it has)."""
        scaler = self._autoscaler
        if scaler is None:
            return
        scaler["stop"].set()
        if scaler["thread"] is not None and scaler["thread"] is not threading.current_thread():
            scaler["thread"].join(10.0)
        self._autoscaler = None

    def _autoscale_loop(self, stop: threading.Event, interval_s: float) -> None:
        while not stop.wait(interval_s):
            if self._epoch.stopped:  # type: ignore[attr-defined]
                return
            try:
                self.autoscale_step()
            except Exception as exc:  # the loop outlives one failed step (a worker dying mid-drain)
                logger.warning("autoscale: %s", exc, exc_info=True)
                self._event("autoscale_error", error=str(exc))  # type: ignore[attr-defined]

    def _needed(self, factor: float) -> int:
        """GPUs the fewest-GPUs plan of the workload (measured rates with their headroom) needs at ``factor``."""
        with self._deploy.lock:  # type: ignore[attr-defined]
            wl = self.editor.workload()  # type: ignore[attr-defined]
            policy = self._deploy.policy  # type: ignore[attr-defined]
        if not wl.sessions and not wl.queries:
            return 0
        return plan_workload(wl if factor == 1.0 else wl.scaled(factor), policy).num_gpus

    def autoscale_step(self) -> dict[str, Any]:
        """One decision: measure the trend, work out the GPUs needed, and scale (or report) when due."""
        scaler = self._autoscaler
        if scaler is None:
            raise RuntimeError("autoscale: not enabled; call autoscale(minimum=, maximum=) first")
        with scaler["lock"]:
            policy: AutoscalePolicy = scaler["policy"]
            now = time.time()
            scaler["trend"].add(now, sum(self._epoch.measured_rates().values()))  # type: ignore[attr-defined]
            factor = scaler["trend"].factor(policy.lookahead_s)
            needed = max(self._needed(factor), self._needed(1.0))
            actual = len(self.io.workers())  # type: ignore[attr-defined]
            want = max(policy.minimum, min(policy.maximum, needed))
            scaler["enough_since"] = (scaler["enough_since"] or now) if want < actual else None
            asked = scaler.get("asked")
            if asked is not None and actual < asked and want <= asked and now - scaler["last_change"] < 60.0:
                scaler.update(needed=needed, target=asked, factor=factor,
                              why=f"waiting for {asked - actual} worker(s) to join")
                return self.autoscale_state()
            scaler["asked"] = None
            target, why = scale_decision(needed, actual, policy, now, scaler["last_change"], scaler["enough_since"])
            scaler.update(needed=needed, target=target, why=why, factor=factor)
            if target != actual:
                if scaler["cluster"] is None:
                    scaler["why"] = f"would ask for {target} workers (no cluster manager): {why}"
                else:
                    self._scale_to(scaler, target, actual)
                    if target < actual:  # the windows around a retirement are no trend (the retired workers'
                        old = scaler["trend"]  # last arrivals go unmeasured, a dip then a "rise"): learn it afresh
                        scaler["trend"] = RateTrend(old.window_s, old.min_rise)
                    scaler["asked"] = target
                    scaler["last_change"] = time.time()
                    scaler["actions"] += 1
                    scaler["enough_since"] = None
                self._event("autoscale", target=target, actual=actual, needed=needed,  # type: ignore[attr-defined]
                            factor=factor, why=why, acted=scaler["cluster"] is not None)
        return self.autoscale_state()

    def _scale_to(self, scaler: dict[str, Any], target: int, actual: int) -> None:
        cluster = scaler["cluster"]
        if target > actual:
            cluster.scale(target)
            return
        victims = self._drain(actual - target)
        if not victims:
            cluster.scale(target)
            return
        dep, io = self._deploy, self.io  # type: ignore[attr-defined]
        try:
            retired = self.client.retire_workers(workers=victims, close_workers=True, remove=True)  # type: ignore
        except Exception as exc:  # they keep running: plan on them again
            dep.undrain(victims, "drain_failed", error=f"retire_workers: {exc}")
            self._epoch.request()  # type: ignore[attr-defined]
            raise
        left = set(victims) - set(io.workers())
        failed = set(victims) - left - set(retired or {})
        if failed:  # the scheduler kept them (e.g. it could not move their data): they serve again
            dep.undrain(failed, "drain_failed", error="retire_workers did not retire them")
            self._epoch.request()  # type: ignore[attr-defined]
        dep.undrain(left, "drain_done")
        # The manager closes the retired workers' specs; never one still serving in place of one that failed.
        cluster.scale(actual - (len(victims) - len(failed)))

    def _drain(self, count: int) -> list[str]:
        """Move every session off the ``count`` workers that run least (idle ones first), and return them. They
        are marked draining (``Deployment.drain``): every plan and apply, the user's included, leaves them out
        until they are gone, or until their retirement failed."""
        dep, io = self._deploy, self.io  # type: ignore[attr-defined]
        current = dep.assignment()
        draining = io.draining
        workers = [w for w in io.workers() if w not in draining]

        def load(w: str) -> tuple:
            g = current.get(w)
            allocs = (g or {}).get("allocations", ())
            return (sum(float(a["rate"]) for a in allocs), len(allocs), [-ord(c) for c in w])

        victims = sorted(workers, key=load)[:count]
        if not victims:
            return []
        try:
            busy = dep.drain(victims)  # their sessions move; their queues drain before they go
        except Exception as exc:
            dep.undrain(victims, "drain_failed", error=str(exc))
            self._epoch.request()  # type: ignore[attr-defined]
            raise
        if busy:
            # A request sent there just before the routes switched ends within its SLO: let it.
            with dep.lock:
                wl = self.editor.workload()  # type: ignore[attr-defined]
            slo_s = max([s.slo_ms for s in wl.sessions] + [q.slo_ms for q in wl.queries], default=0.0) / 1000.0
            time.sleep(min(5.0, slo_s + 0.5))
        self._event("drained", workers=victims)  # type: ignore[attr-defined]
        return victims

    def autoscale_state(self) -> dict[str, Any]:
        """What autoscaling asks for and has: ``enabled``, bounds, ``needed`` GPUs, ``target`` and ``actual``
        worker counts, ``why``, whether a ``cluster_manager`` acts on it."""
        scaler = self._autoscaler
        try:
            actual = len(self.io.workers())  # type: ignore[attr-defined]
        except Exception:
            actual = None
        if scaler is None:
            return {"enabled": False, "actual": actual, "target": None}
        p: AutoscalePolicy = scaler["policy"]
        return {"enabled": True, "minimum": p.minimum, "maximum": p.maximum, "needed": scaler["needed"],
                "target": scaler["target"], "actual": actual, "why": scaler["why"],
                "trend_factor": scaler.get("factor"), "cluster_manager": scaler["cluster"] is not None,
                "actions": scaler["actions"]}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """The controller's ``state()`` gains an ``autoscale`` entry (target and actual workers) for the views."""
        super().__init_subclass__(**kwargs)
        base = cls.__dict__.get("state")
        if base is None or getattr(base, "_autoscale", False):
            return

        def state(self: Any) -> dict[str, Any]:
            out = base(self)
            out["autoscale"] = self.autoscale_state()
            mark_draining(out, self.io.draining & self._epoch.known_workers)
            return out

        state.__doc__, state.__name__, state._autoscale = base.__doc__, "state", True  # type: ignore[attr-defined]
        cls.state = state  # type: ignore[attr-defined]
