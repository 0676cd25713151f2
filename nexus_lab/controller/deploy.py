"""The deployed plan: the workload editor, pins, the plan the backends run and on which workers, and applying a new
plan as the difference (load first, switch routes, drain, unload) with notifications to the views that follow it.
Planning happens outside the apply lock (a big workload never blocks another apply or the epoch loop); what the
backends run is reconciled against the plan, and drift is repaired.

Depends on the planner, the placement maths, the cluster I/O and a frontend's ``set_routes``; no threads of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..planner import Plan, plan_workload, validate
from ..planner.api import session_profiles
from ..workload import Workload, WorkloadError
from .checks import check_declared
from .edits import WorkloadEditor, planned_rates
from .placement import assign_gpus, by_worker_index, gpu_key, routes_of, transition, worker_gpus
from .rpc import Adopted, ClusterIO

logger = logging.getLogger("nexus_lab.controller")

__all__ = ["ApplyError", "Deployment"]

_REPLANS = 3  # plans made for one apply while the workers keep changing under it


class ApplyError(RuntimeError):
    """Some backends refused their part of a plan (e.g. a device out of memory); they keep their old part."""


def session_table(plan: Plan, wl: Workload) -> dict[str, dict[str, Any]]:
    """The frontend's and backends' info of every planned session: model, SLO, budget, what follows a batch, and the
    longest duty cycle it runs in (its backends' suspect bound is two of them)."""
    profiles = session_profiles(plan, wl)
    cycles: dict[str, float] = {}
    for g in plan.gpus:
        for a in g.allocations:
            cycles[a.session] = max(cycles.get(a.session, 0.0), float(g.duty_cycle_ms))
    out = {}
    for s in plan.sessions:
        prof = profiles.get(s.session)
        budget = prof.budget_ms(s.slo_ms, wl.net_ms) if prof is not None else s.slo_ms
        out[s.session] = {"model": s.model, "slo_ms": float(s.slo_ms), "budget_ms": float(budget),
                          "cycle_ms": cycles.get(s.session, 0.0)}
        if prof is not None:  # what the backend keeps back after a batch (the rest of L - L' is spent before)
            out[s.session].update(post_ms=float(prof.postprocess_ms), net_ms=float(wl.net_ms))
    return out


def _apply_call(gpu: dict | None, sessions: dict[str, dict[str, Any]], version: int, groups: list[dict[str, Any]]
                ) -> tuple[str, dict[str, Any]]:
    """A backend's part of plan ``version``, as the ``nexus_apply`` call that puts it in force."""
    return "nexus_apply", {"gpu": gpu, "sessions": sessions, "version": version, "prefix_groups": groups}


class Deployment:
    """The plan state one controller owns, guarded by ``lock``; ``apply`` is serialized by its own lock.

    ``event(kind, **data)`` records what happened (the controller's event log).
    """

    def __init__(self, io: ClusterIO, frontend: Any, editor: WorkloadEditor, *, policy: str, fill: float,
                 event: Callable[..., None]) -> None:
        self.io = io
        self.frontend = frontend
        self.editor = editor
        self.policy = policy
        self.fill = fill
        self.lock = threading.RLock()  # guards the editor, pins, plan and current assignment
        self._apply_lock = threading.Lock()
        self._event = event
        self.pins: dict[str, str] = {}
        self.plan: Plan | None = None
        self.version = 0
        self.current: dict[str, dict | None] = {}  # worker -> the GPU plan (dict) it runs
        self.sessions: dict[str, dict[str, Any]] = {}  # the routed sessions' table
        self.planned_at: float | None = None
        self.planned_measured: dict[str, float] = {}  # measured rates at the last plan (the move threshold's base)
        self.worker_version: dict[str, int] = {}  # the plan version each worker was last applied
        self.repairs = 0  # workers re-applied because what they ran drifted from the plan
        self._listeners: list[Callable[[Plan, int], None]] = []

    # ------------------------------------------------------------------------------------------ adoption
    def adopt(self, adopted: Adopted | None, versions: Mapping[str, int] | None = None) -> None:
        """Take over what the backends already run (a controller re-attaching): routes, plan and workload;
        ``versions`` is the plan version each backend reports."""
        if adopted is None:
            return
        with self.lock:
            self.editor = adopted.editor
            self.plan, self.pins = adopted.plan, dict(adopted.pins)
            self.current, self.version = dict(adopted.current), adopted.version
            self.worker_version = {w: int(v) for w, v in (versions or {}).items() if w in adopted.current}
            self.sessions = dict(adopted.sessions)
            self.planned_at = time.time()
            self.planned_measured = planned_rates(self.editor.workload())
            routes = routes_of(self.current)
        self.frontend.set_routes(routes, dict(self.sessions))
        self._event("adopted", version=self.version, workers=sum(g is not None for g in adopted.current.values()))

    def drop_workers(self, gone: set[str]) -> None:
        """Stop routing to lost workers at once (the next re-plan moves their sessions)."""
        with self.lock:
            for w in gone:
                self.current.pop(w, None)
                self.worker_version.pop(w, None)
            routes = {s: r for s, r in routes_of(self.current).items() if s in self.sessions}
            table = dict(self.sessions)
        self.frontend.set_routes(routes, table)

    # ------------------------------------------------------------------------------------------ draining
    def drain(self, workers: Sequence[str]) -> bool:
        """Take ``workers`` out of every plan from now on (``ClusterIO.drain``: a user's ``apply``, an edit or the
        epoch loop alike) and move what they run elsewhere. An apply already under way with them finishes first
        (one still planning re-plans without them); then the plan is applied without them if they run anything.
        Returns whether they did (their queues then need time to empty before they go)."""
        self.io.drain(workers)
        self._event("draining", workers=sorted(workers))
        with self._apply_lock:  # wait for an apply that checked its workers before the mark
            pass
        with self.lock:
            busy = any(self.current.get(w) for w in workers)
        if busy:
            self.apply(strict=False)
        else:
            self.drop_workers(set(workers))
        return busy

    def undrain(self, workers: Sequence[str] | set[str], event: str, **data: Any) -> set[str]:
        """Clear ``workers``' draining mark (``event``: ``drain_done`` when they left, ``drain_failed`` when their
        retirement failed and they serve again); returns those that had it."""
        had = self.io.undrain(workers)
        if had:
            self._event(event, workers=sorted(had), **data)
        return had

    # ------------------------------------------------------------------------------------------ listeners
    def on_plan(self, listener: Callable[[Plan, int], None]) -> Callable[[], None]:
        """Call ``listener(plan, version)`` after every applied plan; returns a function that unsubscribes it."""
        if not callable(listener):
            raise WorkloadError(f"on_plan.listener: must be callable, got {type(listener).__name__}")
        with self.lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self.lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)
        return unsubscribe

    @property
    def listeners(self) -> int:
        with self.lock:
            return len(self._listeners)

    def _notify(self, version: int) -> None:
        with self.lock:
            plan, current, listeners = self.plan, self.version, list(self._listeners)
        if plan is None or current != version:  # a newer apply notifies for itself
            return
        for fn in listeners:
            try:
                fn(plan, version)
            except Exception:
                logger.exception("plan listener %r failed", fn)

    # ------------------------------------------------------------------------------------------ applying
    def preview(self) -> Plan:
        """The plan ``apply()`` would run now, on as many GPUs as the cluster has responsive workers."""
        return self._plan(None, True, "plan")[2]

    def apply(self, given: Plan | None = None, *, strict: bool = True) -> Plan:
        """Plan now (or validate ``given``) and apply only the difference; listeners hear of a new version after
        the apply lock is released. Raises ``ApplyError`` when backends refused their part.

        Planning runs outside the apply lock, which is held only while the plan is applied: a workload that takes
        long to plan blocks no other apply and no epoch. A workload edited meanwhile is the next epoch's. When the
        workers changed during planning, it plans again. ``strict`` refuses declared rates beyond the cluster
        (``checks.check_declared``); the epoch loop's re-plans pass False and leave overload to the planner,
        which scales it down to the cluster.
        """
        before = self.version
        try:
            for _ in range(_REPLANS):
                workers, wl, plan = self._plan(given, strict, "apply")
                with self._apply_lock:
                    if self.io.usable() == workers:
                        return self._apply(plan, wl, workers)
            raise ApplyError(f"the cluster's workers changed during each of {_REPLANS} plans; apply again")
        finally:
            if self.version != before:
                self._notify(self.version)

    def _plan(self, given: Plan | None, strict: bool, call: str) -> tuple[list[str], Workload, Plan]:
        """The workers planned for, the workload planned and its plan (or ``given``, validated); no lock held
        while the planner runs. ``call`` names the public call in a refusal."""
        workers = self.io.usable()
        if not workers:
            raise RuntimeError("cluster: no workers")
        with self.lock:
            wl, measured = self.editor.workload(), set(self.editor.measured)
        if given is None:
            if strict:
                check_declared(wl, measured, len(workers), call)
            return workers, wl, plan_workload(wl, self.policy, gpus=len(workers), fill=self.fill)
        if not isinstance(given, Plan):
            raise WorkloadError(f"apply_plan.plan: must be a nexus_lab.planner.Plan, got {type(given).__name__}")
        if given.num_gpus > len(workers):
            raise ValueError(f"plan.gpus: {given.num_gpus} GPUs, but the cluster has {len(workers)} workers")
        validate(given, wl)
        return workers, wl, given

    def _apply(self, plan: Plan, wl: Workload, workers: list[str]) -> Plan:
        """Under the apply lock: move the workers from what they run to ``plan``."""
        started = time.time()
        with self.lock:
            pins = dict(self.pins)
            old = {w: self.current.get(w) for w in workers}
        # GPU i of the deployed plan is the i-th worker, as the dashboard names them (and SimController numbers)
        plan, where = by_worker_index(plan, assign_gpus(plan, workers, old, pins), workers)
        new = worker_gpus(plan, where, workers)
        tr = transition(old, new)
        sessions = session_table(plan, wl)
        version = self.version + 1
        groups = [dict(g) for g in plan.prefix_groups]

        def run(step: Sequence[str]) -> dict[str, str]:
            calls = {w: _apply_call(new[w], sessions, version, groups) for w in step}
            errors = {}
            for w, r in self.io.call(calls).items():
                err = r if isinstance(r, Exception) else (r or {}).get("error")
                if err:
                    errors[w] = str(err)
            return errors

        actual = dict(old)
        errors = run(tr.first)
        actual.update({w: new[w] for w in tr.first if w not in errors})
        table = {**self.sessions, **sessions}
        mid = {s: [x for x in r if x[0] not in errors] for s, r in tr.mid_routes.items() if s in table}
        self.frontend.set_routes(mid, table)
        err2 = run(tr.second)
        errors.update(err2)
        actual.update({w: new[w] for w in tr.second if w not in err2})
        final = routes_of(actual)
        with self.lock:
            self.current = actual
            self.plan = plan
            self.version = version
            self.worker_version = {w: v for w, v in self.worker_version.items() if w in actual}
            self.worker_version.update({w: version for w in tr.changed if w not in errors})
            self.sessions = {s: table[s] for s in final if s in table}
            self.planned_at = time.time()
            self.planned_measured = planned_rates(wl)
            routed = dict(self.sessions)
        self.frontend.set_routes({s: r for s, r in final.items() if s in table}, routed)
        self._publish(wl, plan, version)
        self._event("applied", version=version, gpus=plan.num_gpus, moved=list(tr.changed), errors=errors,
                    started=started)
        if errors:
            raise ApplyError("; ".join(f"{w}: {e}" for w, e in sorted(errors.items())))
        return plan

    def drifted(self, versions: Mapping[str, Any]) -> list[str]:
        """Workers whose reported plan version (``nexus_stats``' ``version``) is not the one applied to them: a
        cheap sign of drift, checked on every poll."""
        with self.lock:
            known = dict(self.worker_version)
        return sorted(w for w, v in versions.items() if w in known and v is not None and v != known[w])

    def reconcile(self, states: Mapping[str, dict | None], as_of: int) -> list[str]:
        """Compare what each backend runs (``nexus_state``, read at plan version ``as_of``) with its part of the
        plan and re-apply that part where they differ (a rogue ``nexus_apply``, a backend that was planned around
        while it hung). Returns the workers repaired; skipped while an apply is under way or when one finished
        after the states were read (it set every worker it touched)."""
        if not self._apply_lock.acquire(blocking=False):
            return []
        try:
            with self.lock:
                if self.version != as_of:
                    return []
                believed, table, version = dict(self.current), dict(self.sessions), self.version
                groups = [dict(g) for g in (self.plan.prefix_groups if self.plan else ())]
            drift = {w: st for w, st in states.items()
                     if isinstance(st, dict) and gpu_key(st.get("gpu")) != gpu_key(believed.get(w))}
            if not drift:
                return []
            calls = {w: _apply_call(believed.get(w), table, version, groups) for w in drift}
            replies = self.io.call(calls)
            fixed = sorted(w for w, r in replies.items() if isinstance(r, dict) and not r.get("error"))
            with self.lock:
                self.repairs += len(fixed)
                self.worker_version.update({w: version for w in fixed if w in self.current})
            for w in sorted(drift):
                ran = drift[w].get("gpu")
                self._event("repaired" if w in fixed else "repair_failed", worker=w,
                            ran=sorted(a["session"] for a in (ran or {}).get("allocations", ())),
                            planned=sorted(a["session"] for a in (believed.get(w) or {}).get("allocations", ())),
                            ran_version=drift[w].get("version"), error=None if w in fixed else repr(replies.get(w)))
            return fixed
        finally:
            self._apply_lock.release()

    def _publish(self, wl: Workload, plan: Plan, version: int) -> None:
        from ..runtime.frontend import ROUTES_KEY

        with self.lock:
            meta = {"workload": wl.to_dict(), "plan": plan.to_dict(), "version": version,
                    "measured": sorted(self.editor.measured), "pins": dict(self.pins)}
        self.io.publish(ROUTES_KEY, {"version": version, **self.frontend.routes_config()}, meta)

    def set_batch_floor(self, on: bool | None) -> dict[str, dict[str, int]]:
        """Switch every backend's batch floor live; each backend tells its frontends its new holds on its stream.
        Returns each worker's ``{session: floor}``; a worker that failed raises ``ApplyError``."""
        replies = self.io.call({w: ("nexus_configure", {"batch_floor": on}) for w in self.io.usable()})
        bad = {w: r for w, r in replies.items() if not isinstance(r, dict)}
        if bad:
            raise ApplyError(f"set_batch_floor failed on {sorted(bad)}: {next(iter(bad.values()))!r}")
        return {w: dict(r["floors"]) for w, r in replies.items()}

    def assignment(self) -> dict[str, dict | None]:
        with self.lock:
            return dict(self.current)

    def sessions_served(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            return dict(self.sessions)
