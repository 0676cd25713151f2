"""The epoch loop: poll the backends' stats windows, fold arrivals into the rate monitor, and re-plan when the epoch
is over, a measured rate rose past the threshold, workers joined, left, stopped or resumed answering, or a re-plan
was asked for. It also reconciles what the backends run with the plan (every epoch, and at once for a worker whose
reported plan version is not the one applied to it) and repairs drift.

Polls are bounded (``rpc.POLL_TIMEOUT_S``): a hung worker is reported unresponsive and planned around, never waited
for. Owns the loop thread, the bounded stats history and the latest batch traces; plans through the ``Deployment``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..planner import PlanInvalid
from ..planner.api import stage_session
from ..planner.epoch_plan import epoch_plan, served_rates
from ..planner.incremental import Band
from ..workload import WorkloadError
from .deploy import Deployment
from .edits import INITIAL_RATE, planned_rates
from .rates import RateMonitor, fanouts, moved
from .rpc import POLL_TIMEOUT_S, ClusterIO, ClusterLost
from .stats import arrivals_of, strip_window

logger = logging.getLogger("nexus_lab.controller")

__all__ = ["EpochLoop", "EpochSettings"]

TRACE_KEEP = 500  # batch-trace records kept per worker (the dashboard's Gantt view draws the last few cycles)


@dataclass
class EpochSettings:
    """When the loop polls (``poll_s``) and re-plans: every ``epoch_s``, or when a measured rate moved by more than
    ``rate_threshold`` (relative; only a rise when ``incremental`` is off); measured rates are planned ``headroom``
    higher. ``incremental`` re-plans start from the current plan: a session keeps its GPUs while its rate stays
    within ``[band_low, 1]`` of their capacity (``planner.incremental.Band``)."""

    epoch_s: float = 30.0
    poll_s: float = 1.0
    rate_threshold: float = 0.2
    headroom: float = 0.1
    incremental: bool = True  # re-plan from the current plan (``planner.epoch_plan``); False: always from scratch
    band_low: float = 0.8  # a session keeps its GPUs down to this share of their capacity

    def __post_init__(self) -> None:
        for name, val in (("epoch_s", self.epoch_s), ("poll_s", self.poll_s), ("rate_threshold", self.rate_threshold)):
            if not (isinstance(val, (int, float)) and val > 0):
                raise ValueError(f"{name}: must be a number > 0, got {val!r}")
        if not (isinstance(self.headroom, (int, float)) and 0 <= self.headroom <= 9):
            raise ValueError(f"headroom: must be a number in [0, 9], got {self.headroom!r}")
        if not isinstance(self.incremental, bool):
            raise ValueError(f"incremental: must be True or False, got {self.incremental!r}")
        if isinstance(self.band_low, bool) or not (isinstance(self.band_low, (int, float)) and 0 < self.band_low <= 1):
            raise ValueError(f"band_low: must be a number in (0, 1], got {self.band_low!r}")

    @property
    def band(self) -> Band:
        """The re-plan's hysteresis band: resized sessions get ``1 + headroom`` times their measured rate."""
        return Band(low=self.band_low, high=1.0 + self.headroom)


class EpochLoop:
    """Measure and re-plan, every ``poll_s`` on a daemon thread once ``start``ed, or one ``tick`` at a time."""

    def __init__(self, io: ClusterIO, deployment: Deployment, settings: EpochSettings, *, history: int,
                 workers: set[str], event: Callable[..., None]) -> None:
        self.io = io
        self.deployment = deployment
        self.settings = settings
        self.monitor = RateMonitor()
        self.history: deque[dict[str, Any]] = deque(maxlen=int(history))
        self._traces: dict[str, list] = {}
        self._event = event
        self._stop = threading.Event()
        self._replan = threading.Event()
        self.paused = False
        self.known_workers = set(workers)  # a change re-plans
        self.hung: set[str] = set()  # workers unresponsive at the last poll (planned around)
        self._missed: set[str] = set()  # workers that did not answer their latest poll
        self._versions: dict[str, Any] = {}  # worker -> plan version its last stats window reported
        self._reconciled = time.time()
        self._lost_logged = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------ the thread
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="nexus-epoch", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def threaded(self) -> bool:
        """Whether re-plans run on the loop thread (else ``request`` must apply at once)."""
        return self._thread is not None

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def request(self) -> None:
        """Re-plan at the next poll."""
        self._replan.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.poll_s):
            try:
                self.tick()
                self._lost_logged = False
            except ClusterLost as exc:  # said once; calls on the controller raise it too
                if not self._lost_logged and not self._stop.is_set():
                    self._lost_logged = True
                    self._event("cluster_lost", error=str(exc))
            except Exception as exc:  # the loop must outlive a failed poll (e.g. a worker dying mid-call)
                if not self._stop.is_set():
                    logger.warning("epoch loop: %s", exc, exc_info=True)
                    self._event("error", error=str(exc))

    # ------------------------------------------------------------------------------------------ one poll
    def tick(self) -> str | None:
        """One poll: collect stats, fold arrivals into the rate monitor, and re-plan when due. Returns why it
        re-planned, or None."""
        workers = self.io.workers()
        reason = None
        gone = self.known_workers - set(workers)
        if set(workers) != self.known_workers:
            reason = f"workers changed (+{len(set(workers) - self.known_workers)} -{len(gone)})"
            self.known_workers = set(workers)
        self.io.unresponsive = self.io.unresponsive & set(workers)
        if gone:
            self.deployment.drop_workers(gone)
            self.deployment.undrain(gone, "drain_done")  # a drained worker is out of the plan until it leaves
        self.collect(workers)
        newly, back = self.io.unresponsive - self.hung, self.hung - self.io.unresponsive
        self.hung = set(self.io.unresponsive)
        if newly:  # stop routing there at once; the re-plan below moves their sessions
            self.deployment.drop_workers(newly)
            self._event("unresponsive", workers=sorted(newly), timeout_s=POLL_TIMEOUT_S)
        if back:
            self._event("responsive", workers=sorted(back))
        if (newly or back) and reason is None:
            reason = f"workers unresponsive (+{len(newly)} -{len(back)})"
        self._reconcile(workers)
        if self._replan.is_set():
            reason = reason or "requested"
        if self.paused and not gone and not newly:
            return None
        dep = self.deployment
        if reason is None and dep.planned_at is not None and time.time() - dep.planned_at >= self.settings.epoch_s:
            reason = "epoch"
        if reason is None:
            # A rise past the threshold re-plans at once; with incremental re-plans a fall does too (the band
            # keeps a session's GPUs until it left it, so the plan does not flap).
            # A measured query's stages count too: a fan-out that moved loads its stages as a rate does.
            changed = moved(dep.planned_measured, self._measured_with_stages(),
                            self.settings.rate_threshold, up_only=not self.settings.incremental)
            if changed:
                reason = "rate moved: " + ", ".join(changed)
        if reason is None:
            return None
        self._replan.clear()
        with dep.lock:
            for name, r in self.measured_rates().items():
                dep.editor.set_measured(name, max(r, INITIAL_RATE) * (1 + self.settings.headroom))
            self._measure_fanout()
            if not dep.editor.names():
                dep.planned_at = time.time()
                return None
        applied, decision = self._incremental()
        if not applied:
            dep.apply(strict=False)  # measured overload is scaled down to the cluster, never refused
        with dep.lock:
            # What the move threshold compares against: the measured rates, without the headroom.
            dep.planned_measured.update({n: max(r, INITIAL_RATE) for n, r in self._measured_with_stages().items()})
        self._event("replan", reason=reason, mode=decision["mode"] if applied else "scratch", decision=decision)
        return reason

    def _incremental(self) -> tuple[bool, dict[str, Any] | None]:
        """Re-plan from the current plan (``planner.epoch_plan``, the rule the deployment simulator runs too) and
        apply it. Returns whether it did, and the decision (``mode``, ``reason``, ...; None when incremental
        re-plans are off or there is no current plan). When it did not (the decision was to plan from scratch,
        e.g. for a new or changed query), the caller applies a from-scratch plan as before. Query stages are
        sessions to the re-plan (their rates: the query's times the fan-outs on the way down, measured ones
        included), so the band keeps them as any other. Each measured session's planned rate becomes what the
        plan serves it (at least its measured rate; ``1 + headroom`` times it once resized), a measured query's
        the entry rate all of its stages' planned rates keep up with (``epoch_plan.served_rates``)."""
        dep = self.deployment
        if not self.settings.incremental:
            return False, None
        with dep.lock:
            previous, wl, measured = dep.plan, dep.editor.workload(), set(dep.editor.measured)
        if previous is None:
            return False, None
        band = self.settings.band
        need = wl.scaled(1.0 / band.high)  # the rates the sessions need: measured, and declared over the headroom
        try:
            decision = epoch_plan(previous, need, policy=dep.policy, gpus=len(self.io.usable()), fill=dep.fill,
                                  band=band)
        except (ValueError, WorkloadError) as exc:
            logger.info("incremental re-plan skipped: %s", exc)
            return False, {"mode": "scratch", "reason": f"incremental re-plan skipped: {exc}"}
        if decision.mode != "incremental":
            return False, decision.summary()
        plan = decision.plan
        planned = {n: r for n, r in planned_rates(wl).items() if n in measured}
        served = served_rates(plan, wl)
        with dep.lock:
            for name in planned:
                if name in served:
                    dep.editor.set_measured(name, served[name])
        try:
            dep.apply(plan, strict=False)
        except (ValueError, WorkloadError, PlanInvalid) as exc:  # the cluster or the workload changed meanwhile
            logger.info("incremental plan not applied (%s); planning from scratch", exc)
            with dep.lock:  # the caller plans the measured rates with their headroom, as before
                for name, rate in planned.items():
                    dep.editor.set_measured(name, rate)
            return False, {**decision.summary(), "mode": "scratch", "reason": f"incremental plan not applied: {exc}"}
        return True, decision.summary()

    def collect(self, workers: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Poll every backend's stats window once; keep it in the bounded history and feed the rate monitor."""
        workers = list(workers if workers is not None else self.io.workers())
        replies = self.io.poll("nexus_stats", workers)
        self._judge(replies)
        windows = []
        for w, r in replies.items():
            if isinstance(r, dict):
                self._versions[w] = r.get("version")
                windows.append(strip_window(w, r))
                if r.get("trace"):
                    self._traces[w] = list(r["trace"])[-TRACE_KEEP:]
        if not windows:
            return []
        arrivals, span = arrivals_of(windows)
        with self.deployment.lock:
            names = set(self.deployment.editor.measured)
            queries = dict(self.deployment.editor.queries)
        keyed: dict[str, float] = {}
        for n in names:
            if n in queries:
                roots = [st for st in queries[n].stages if not st.parents]
                counts = [arrivals.get(stage_session(n, st.name), 0) / st.gamma for st in roots]
                keyed[n] = max(counts) if counts else 0.0
                # Every stage's own arrivals too: their ratios are the measured fan-outs (gamma).
                for st in queries[n].stages:
                    keyed[stage_session(n, st.name)] = arrivals.get(stage_session(n, st.name), 0)
            else:
                keyed[n] = arrivals.get(n, 0)
        self.monitor.observe(keyed, span, sessions=set(keyed))
        self.history.extend(windows)
        return windows

    def _judge(self, replies: dict[str, Any]) -> None:
        """A worker that did not answer a poll is unresponsive when the frontend suspects it too (its stream fell
        silent with requests in flight) or it missed the previous poll as well: one slow reply on a busy host is
        not a hang. An answer makes it responsive again."""
        silent = self.io.silent(replies)
        suspects = set(self.deployment.frontend.suspect_workers)
        hung = {w for w in silent if w in suspects or w in self._missed}
        self._missed = (self._missed - set(replies)) | silent
        self.io.unresponsive = (self.io.unresponsive - set(replies)) | hung

    def _reconcile(self, workers: Sequence[str]) -> None:
        """Every ``epoch_s`` every responsive worker, and at once each whose stats reported another plan version
        than the one applied to it: compare what it runs with the plan and repair drift (``Deployment.reconcile``)."""
        dep = self.deployment
        due = time.time() - self._reconciled >= self.settings.epoch_s
        skip = set(self.io.unresponsive) | self.io.draining  # a draining worker finishes its queue, untouched
        targets = [w for w in (workers if due else dep.drifted(self._versions)) if w not in skip]
        if due:
            self._reconciled = time.time()
        if not targets:
            return
        as_of = dep.version
        fixed = dep.reconcile(self.io.states(targets, timeout=POLL_TIMEOUT_S), as_of)
        for w in fixed:
            self._versions.pop(w, None)  # its next window reports the re-applied version

    def _measure_fanout(self) -> None:
        """Set each measured query's stage fan-outs to the measured ratio of a stage's arrivals to its parents'
        (summed over the parents of a join: ``rates.fanouts``)."""
        editor = self.deployment.editor
        for qname in sorted(editor.measured & set(editor.queries)):
            stages = editor.queries[qname].stages
            rates = {st.name: r for st in stages if (r := self.monitor.rate(stage_session(qname, st.name))) is not None}
            for stage, gamma in fanouts(stages, rates, floor=INITIAL_RATE).items():
                editor.set_measured_gamma(qname, stage, gamma)

    def _measured_with_stages(self) -> dict[str, float]:
        """Measured rates of the measured sessions and queries and of every measured query's stages: what the move
        threshold compares against the plan."""
        return {**self.measured_rates(), **self._stage_rates()}

    def _stage_rates(self) -> dict[str, float]:
        """Measured arrival rate (req/s) of every stage of every measured query (``query/stage``)."""
        with self.deployment.lock:
            editor = self.deployment.editor
            names = [stage_session(q, st.name) for q in editor.measured & set(editor.queries)
                     for st in editor.queries[q].stages]
        return {n: r for n in names if (r := self.monitor.rate(n)) is not None}

    def measured_rates(self) -> dict[str, float]:
        """Moving-average arrival rate (req/s) of every session and query whose rate is measured."""
        with self.deployment.lock:
            names = set(self.deployment.editor.measured)
        return {n: r for n, r in self.monitor.rates().items() if n in names}

    def windows(self, window_s: float | None, since: float | None = None) -> list[dict[str, Any]]:
        """The kept stats windows of the last ``window_s`` seconds (None: all), or those from ``since`` on."""
        wins = list(self.history)
        if since is not None:
            # A window that began at most one poll before ``since`` counts (its reset preceded the caller's clock).
            return [w for w in wins if w["t0"] >= since - self.settings.poll_s and w["t1"] > since]
        if window_s is not None:
            now = time.time()
            return [w for w in wins if w["t1"] >= now - window_s]
        return wins

    def traces(self) -> dict[str, list]:
        """The latest batch trace of every worker (``(session, start_s, end_s, batch)`` records)."""
        return {w: list(t) for w, t in list(self._traces.items())}
