"""The notebook-side controller: owns the workload, the current plan and the epoch loop (measure, re-plan, apply
the difference), and serves ``infer``/``query`` through a frontend.

Depends on the planner, the runtime's backend handlers and frontend, and distributed's client; never on widgets.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from ..planner import Plan, plan_workload, validate
from ..planner.api import check_fill, session_profiles, stage_session
from ..workload import Workload, WorkloadError
from . import html
from .edits import INITIAL_RATE, WorkloadEditor, base_workload, planned_rates
from .placement import assign_gpus, routes_of, transition, worker_gpus
from .rates import RateMonitor, moved
from .stats import aggregate, arrivals_of, strip_window

logger = logging.getLogger("nexus_lab.controller")

__all__ = ["ApplyError", "Controller"]

#: Default network allowance (ms) of the runtime: request and reply hops between Python processes. Under overload
#: early drop serves requests right at their budget deadline, so this is all the slack the reply path gets.
RUNTIME_NET_MS = 10.0

#: Share of a session's batch-floor hold its frontend may coalesce requests for (``coalesce_ms`` of the session
#: table). A host-CPU backend holds a partial batch until its oldest request is ``min(d, l(floor))`` old (the
#: backends report it: ``holds_ms`` of their apply, configure and state replies), counted from when the request
#: was sent, so a request the frontend held back for no longer than that meets the same
#: bound; fewer, larger messages leave more of the shared cores to the model. Alternating runs on the conv net
#: at 1500 req/s, CPU per request: 1.20/1.21 ms at the whole hold, 1.23/1.26 at half, 1.29/1.27 without.
COALESCE_SHARE = 1.0

_META_KEY = "nexus_lab-controller"  # scheduler metadata: the workload and plan the backends run (for adoption)


class ApplyError(RuntimeError):
    """Some backends refused their part of a plan (e.g. a device out of memory); they keep their old part."""


def _measured(m: Mapping[str, Any]) -> dict[str, Any]:
    """The measured part of a session's (or query stage's) row in ``Controller.state``."""
    return {"offered_rate": m.get("offered_rate"), "goodput": m.get("goodput"),
            "slo_attainment": m.get("slo_attainment"), "drops": m.get("drops", {}),
            "latency_p50_ms": m.get("latency_p50_ms"), "latency_p99_ms": m.get("latency_p99_ms")}


class Controller:
    """Serve a Nexus workload on a Dask cluster: one worker per GPU, one ``NexusBackend`` plugin per worker.

    Parameters
    ----------
    client : distributed.Client or str
        A connected client, or a scheduler address (``security`` is then used to connect).
    device : str, optional
        The backends' device (``cpu``, ``cuda``, ``simulated:titan-x-pascal``); read from running backends when
        omitted, else ``simulated:titan-x-pascal``. Backends are registered when the cluster has none.
    epoch_s : float
        Re-plan at least this often (seconds); sooner when a measured rate rises by more than ``rate_threshold``
        (relative) or workers join or leave (falls wait for the epoch: they cost GPUs, not requests).
    poll_s : float
        How often backends' stats windows are collected (seconds).
    headroom : float
        Measured rates are planned at ``(1 + headroom)`` times their moving average.
    fill : float
        When the load leaves workers idle, plan for up to ``fill`` times every rate (``plan_workload(fill=...)``):
        idle GPUs become headroom for bursts and a rising load. 1: plan the fewest GPUs, as Nexus does (freed
        workers serve nothing, so on a dedicated cluster that only costs latency).
    workload : Workload, path or mapping, optional
        Models (and sessions/queries) to start with; rates of its sessions are declared.
    policy : str
        The planner policy (``nexus``).
    net_ms : float or None
        The network allowance of every budget (``L' = L - pre - post - net``), for planning and for the
        backends' early drop alike; None keeps the workload's. The default leaves room for the reply path of
        Python processes sharing a few cores.
    auto : bool
        Run the epoch loop in a background thread (``pause``/``resume`` toggle its re-planning).

    Examples
    --------
    >>> ctl = nexus_lab.start(gpus=4)  # doctest: +SKIP
    >>> ctl.add_session("vgg16", slo_ms=100, rate=300)  # doctest: +SKIP
    >>> ctl.apply()  # doctest: +SKIP
    >>> ctl.infer("vgg16:100", frame)  # doctest: +SKIP
    """

    def __init__(self, client: Any, *, device: str | None = None, epoch_s: float = 30.0, poll_s: float = 1.0,
                 rate_threshold: float = 0.2, headroom: float = 0.1, fill: float = 2.0,
                 workload: Workload | str | Mapping | None = None,
                 policy: str = "nexus", security: Any = None, auto: bool = True, history: int = 3600,
                 rpc_timeout_s: float = 30.0, coalesce_ms: float = 1.0, max_coalesce: int = 64,
                 net_ms: float | None = RUNTIME_NET_MS) -> None:
        for name, val, lo in (("epoch_s", epoch_s, 0.0), ("poll_s", poll_s, 0.0), ("rate_threshold", rate_threshold,
                                                                                  0.0)):
            if not (isinstance(val, (int, float)) and val > lo):
                raise ValueError(f"{name}: must be a number > {lo:g}, got {val!r}")
        if not headroom >= 0:
            raise ValueError(f"headroom: must be >= 0, got {headroom!r}")
        fill = check_fill(fill)
        if isinstance(client, str):
            from distributed import Client

            client = Client(client, security=security, set_as_default=False)
            self._owns_client = True
        else:
            self._owns_client = False
        self.client = client
        self.epoch_s = float(epoch_s)
        self.poll_s = float(poll_s)
        self.rate_threshold = float(rate_threshold)
        self.headroom = float(headroom)
        self.fill = float(fill)
        self.policy = policy
        self.rpc_timeout_s = float(rpc_timeout_s)
        self._cluster: Any = None  # set by ``start``: closed with the controller
        self._lock = threading.RLock()  # guards the editor, plan and current assignment
        self._apply_lock = threading.Lock()
        self._stop = threading.Event()
        self._paused = False
        self._replan_requested = threading.Event()
        self._history: deque[dict[str, Any]] = deque(maxlen=int(history))
        self._traces: dict[str, list] = {}
        self._events: deque[dict[str, Any]] = deque(maxlen=200)
        self._plan_listeners: list[Callable[[Plan, int], None]] = []
        self.monitor = RateMonitor()
        self._pins: dict[str, str] = {}
        self._version = 0
        self._plan: Plan | None = None
        self._current: dict[str, dict | None] = {}
        self._sessions_table: dict[str, dict[str, Any]] = {}
        self._planned_at: float | None = None
        self._planned_measured: dict[str, float] = {}
        self._holds: dict[str, dict[str, float]] = {}  # worker -> {session: batch-floor hold (ms)}, as reported

        states = self._states(self._workers())
        if device is None:
            device = next((str(s["device"]) for s in states.values() if s and s.get("device")),
                          "simulated:titan-x-pascal")
        self.device = device
        if not states or any(s is None for s in states.values()):
            from ..runtime.backend import NexusBackend

            if not states or all(s is None for s in states.values()):
                self.client.register_plugin(NexusBackend(device=device, threads=1, stats_interval_s=poll_s))
                states = self._states(self._workers())
        wl, pset = base_workload(device, workload)
        if net_ms is not None:
            if not (isinstance(net_ms, (int, float)) and net_ms >= 0):
                raise ValueError(f"net_ms: must be a number >= 0, got {net_ms!r}")
            wl = replace(wl, net_ms=float(net_ms))
        self.editor = WorkloadEditor.from_workload(wl, pset)
        from ..runtime.frontend import Frontend

        self.frontend = Frontend(client, security=security, coalesce_ms=coalesce_ms, max_coalesce=max_coalesce)
        self._known_workers = set(states)
        self._adopt(states)
        self._thread: threading.Thread | None = None
        if auto:
            self._thread = threading.Thread(target=self._loop, name="nexus-epoch", daemon=True)
            self._thread.start()
        # The JupyterLab panel finds every live controller through this registration (127.0.0.1 only).
        from ..lab import register

        self._lab = register(self, name=f"nexus {self.client.scheduler.address}")

    # ------------------------------------------------------------------------------------------ cluster I/O
    def _workers(self) -> list[str]:
        return sorted(self.client.scheduler_info(n_workers=-1)["workers"])

    async def _call_each(self, calls: Mapping[str, tuple[str, dict[str, Any]]], timeout: float) -> dict[str, Any]:
        """Run ``op(**kw)`` on each worker's backend concurrently; an exception is returned in place of a reply."""
        async def one(addr: str, op: str, kw: dict[str, Any]) -> tuple[str, Any]:
            try:
                return addr, await asyncio.wait_for(getattr(self.client.rpc(addr), op)(**kw), timeout)
            except Exception as exc:  # a lost worker or one without the backend: reported, never raised here
                return addr, exc

        pairs = await asyncio.gather(*(one(a, op, kw) for a, (op, kw) in calls.items()))
        return dict(pairs)

    def _call(self, calls: Mapping[str, tuple[str, dict[str, Any]]], timeout: float | None = None) -> dict[str, Any]:
        if not calls:
            return {}
        return self.client.sync(self._call_each, calls, timeout or self.rpc_timeout_s)

    def _states(self, workers: Sequence[str]) -> dict[str, dict | None]:
        replies = self._call({w: ("nexus_state", {}) for w in workers}, timeout=10.0)
        return {w: (r if isinstance(r, dict) else None) for w, r in replies.items()}

    # ------------------------------------------------------------------------------------------ adoption
    def _adopt(self, states: Mapping[str, dict | None]) -> None:
        """Take over what the backends already run (a controller re-attaching): routes, plan and workload."""
        running = {w: s.get("gpu") for w, s in states.items() if s and s.get("gpu")}
        if not running:
            return
        meta = None
        try:
            meta = self.client.get_metadata(_META_KEY, default=None)
        except Exception:  # older schedulers or no metadata: fall back to the backends' session tables
            meta = None
        sessions: dict[str, dict[str, Any]] = {}
        for s in states.values():
            if s:
                sessions.update(s.get("sessions") or {})
        with self._lock:
            if meta:
                wl = Workload.from_dict(meta["workload"])
                self.editor = WorkloadEditor.from_workload(wl, self.editor.profile_set)
                self.editor.measured = set(meta.get("measured", ())) & self.editor.names()
                self._plan = Plan.from_dict(meta["plan"]) if meta.get("plan") else None
                self._pins = dict(meta.get("pins", {}))
            else:
                for name, s in sorted(sessions.items()):
                    if "/" in name or name in self.editor.names():
                        continue  # query stages cannot be rebuilt without their query
                    try:
                        self.editor.add_session(s["model"], float(s["slo_ms"]), None, name=name)
                    except WorkloadError as exc:
                        logger.warning("cannot adopt session %s: %s", name, exc)
            self._current = {w: running.get(w) for w in states}
            self._holds = {w: dict(s.get("holds_ms") or {}) for w, s in states.items() if s}
            self._version = max([int(s.get("version", 0)) for s in states.values() if s]
                                + [int((meta or {}).get("version", 0))])
            used = routes_of(self._current)
            self._sessions_table = {n: sessions.get(n) or {"model": "", "slo_ms": 1.0} for n in used}
            self._planned_at = time.time()
            self._planned_measured = planned_rates(self.editor.workload())
        self.frontend.set_routes(used, self._coalesced(self._sessions_table))
        self._event("adopted", version=self._version, workers=len(running))

    # ------------------------------------------------------------------------------------------ edits
    def add_session(self, model: str, slo_ms: float, rate: float | None = None, name: str | None = None) -> str:
        """Declare a session (``rate=None``: measure it); takes effect at ``apply()`` or the next epoch."""
        with self._lock:
            added = self.editor.add_session(model, slo_ms, rate, name)
        self._event("add_session", session=added)
        return added

    def add_query(self, name: str, slo_ms: float, stages: Sequence[Mapping[str, Any]], rate: float | None = None
                  ) -> str:
        """Declare a query DAG: ``stages`` as in a workload file (``{name, model, parent, gamma}``)."""
        with self._lock:
            self.editor.add_query(name, slo_ms, stages, rate)
        self._event("add_query", query=name)
        return name

    def set_slo(self, session: str, slo_ms: float) -> None:
        with self._lock:
            self.editor.set_slo(session, slo_ms)

    def set_rate(self, session: str, rate: float | None) -> None:
        """Declare a rate (req/s) or ``None`` to measure it."""
        with self._lock:
            self.editor.set_rate(session, rate)

    def remove(self, name: str) -> None:
        with self._lock:
            self.editor.remove(name)
            self._pins.pop(name, None)
            self.monitor.forget(name)

    def pin(self, session: str, gpu: int | str) -> None:
        """Place ``session``'s (first) GPU on worker ``gpu``: an index into the sorted workers or an address."""
        with self._lock:
            if session not in self.editor.names():
                raise WorkloadError(f"pin.session: unknown session {session!r}")
            workers = self._workers()
            if isinstance(gpu, int) and not isinstance(gpu, bool):
                if not 0 <= gpu < len(workers):
                    raise WorkloadError(f"pin.gpu: must be in [0, {len(workers) - 1}], got {gpu}")
                gpu = workers[gpu]
            if gpu not in workers:
                raise WorkloadError(f"pin.gpu: unknown worker {gpu!r}")
            self._pins[session] = gpu

    def unpin(self, session: str) -> None:
        with self._lock:
            self._pins.pop(session, None)

    @property
    def workload(self) -> Workload:
        """The workload as the planner gets it now (measured rates included)."""
        with self._lock:
            return self.editor.workload()

    # ------------------------------------------------------------------------------------------ planning
    def plan(self) -> Plan:
        """Preview: the plan ``apply()`` would run now, on as many GPUs as the cluster has workers."""
        workers = self._workers()
        if not workers:
            raise RuntimeError("cluster: no workers")
        return plan_workload(self.workload, self.policy, gpus=len(workers), fill=self.fill)

    def _session_table(self, plan: Plan, wl: Workload) -> dict[str, dict[str, Any]]:
        profiles = session_profiles(plan, wl)
        out = {}
        for s in plan.sessions:
            prof = profiles.get(s.session)
            budget = prof.budget_ms(s.slo_ms, wl.net_ms) if prof is not None else s.slo_ms
            out[s.session] = {"model": s.model, "slo_ms": float(s.slo_ms), "budget_ms": float(budget)}
            if prof is not None:  # what the backend keeps back after a batch (the rest of L - L' is spent before)
                out[s.session].update(post_ms=float(prof.postprocess_ms), net_ms=float(wl.net_ms))
        return out

    def _coalesced(self, table: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The session table for the frontend: ``coalesce_ms`` a share of the shortest batch-floor hold the
        session's backends reported (host-CPU devices, or ``set_batch_floor(True)``); the default window else."""
        out = {}
        for name, entry in table.items():
            holds = [h[name] for h in self._holds.values() if h.get(name)]
            out[name] = {**entry, "coalesce_ms": COALESCE_SHARE * min(holds)} if holds else dict(entry)
        return out

    def apply_plan(self, plan: Plan) -> Plan:
        """Apply a given plan (e.g. a manual placement from the placement editor) the way ``apply`` applies its
        own: it must validate against the current workload first. Pause the epoch loop to keep it in place."""
        return self.apply(plan)

    def on_plan(self, listener: Callable[[Plan, int], None]) -> Callable[[], None]:
        """Call ``listener(plan, version)`` after every applied plan (the epoch loop's re-plans included), so views
        such as the editors follow the cluster. Runs in the applying thread, after the apply lock is released;
        a listener that raises is logged and kept. Returns a function that unsubscribes it."""
        if not callable(listener):
            raise TypeError(f"listener: must be callable, got {type(listener).__name__}")
        with self._lock:
            self._plan_listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._plan_listeners:
                    self._plan_listeners.remove(listener)
        return unsubscribe

    def _notify_plan(self, version: int) -> None:
        with self._lock:
            plan, current, listeners = self._plan, self._version, list(self._plan_listeners)
        if plan is None or current != version:  # a newer apply notifies for itself
            return
        for fn in listeners:
            try:
                fn(plan, version)
            except Exception:
                logger.exception("plan listener %r failed", fn)

    def apply(self, given: Plan | None = None) -> Plan:
        """Plan now and apply only the difference: workers that gain sessions load first; routes switch to the
        ready ones; workers that lose sessions drain, then unload; finally the new routes. Returns the plan."""
        before = self._version
        try:
            return self._apply(given)
        finally:
            if self._version != before:
                self._notify_plan(self._version)

    def _apply(self, given: Plan | None) -> Plan:
        with self._apply_lock:
            started = time.time()
            workers = self._workers()
            if not workers:
                raise RuntimeError("cluster: no workers")
            with self._lock:
                wl = self.editor.workload()
                pins = dict(self._pins)
                old = {w: self._current.get(w) for w in workers}
            if given is None:
                plan = plan_workload(wl, self.policy, gpus=len(workers), fill=self.fill)
            else:
                if given.num_gpus > len(workers):
                    raise ValueError(f"plan.gpus: {given.num_gpus} GPUs, but the cluster has {len(workers)} workers")
                validate(given, wl)
                plan = given
            assignment = assign_gpus(plan, workers, old, pins)
            new = worker_gpus(plan, assignment, workers)
            tr = transition(old, new)
            sessions = self._session_table(plan, wl)
            version = self._version + 1
            groups = [dict(g) for g in plan.prefix_groups]

            def run(step: Sequence[str]) -> dict[str, str]:
                calls = {w: ("nexus_apply", {"gpu": new[w], "sessions": sessions, "version": version,
                                             "prefix_groups": groups}) for w in step}
                errors = {}
                for w, r in self._call(calls).items():
                    err = r if isinstance(r, Exception) else (r or {}).get("error")
                    if err:
                        errors[w] = str(err)
                    else:
                        self._holds[w] = dict(r.get("holds_ms") or {})
                return errors

            actual = dict(old)
            errors = run(tr.first)
            actual.update({w: new[w] for w in tr.first if w not in errors})
            mid = {s: r for s, r in tr.mid_routes.items() if s in sessions or s in self._sessions_table}
            table = {**self._sessions_table, **sessions}
            self.frontend.set_routes({s: [x for x in r if x[0] not in errors] for s, r in mid.items()},
                                     self._coalesced(table))
            err2 = run(tr.second)
            errors.update(err2)
            actual.update({w: new[w] for w in tr.second if w not in err2})
            final = routes_of(actual)
            with self._lock:
                self._current = actual
                self._plan = plan
                self._version = version
                self._sessions_table = {s: table[s] for s in final if s in table}
                self._planned_at = time.time()
                self._planned_measured = planned_rates(wl)
            self.frontend.set_routes({s: r for s, r in final.items() if s in table},
                                     self._coalesced(self._sessions_table))
            self._publish(wl, plan, version)
            self._event("applied", version=version, gpus=plan.num_gpus, moved=list(tr.changed),
                        errors=errors, started=started)
            if errors:
                raise ApplyError("; ".join(f"{w}: {e}" for w, e in sorted(errors.items())))
            return plan

    def _publish(self, wl: Workload, plan: Plan, version: int) -> None:
        """Scheduler metadata: the workload and plan (a later controller adopts them) and the routes (load
        generators on workers follow re-plans through them)."""
        from ..runtime.frontend import ROUTES_KEY

        try:
            self.client.set_metadata(ROUTES_KEY, {"version": version, **self.frontend.routes_config()})
            self.client.set_metadata(_META_KEY, {"workload": wl.to_dict(), "plan": plan.to_dict(), "version": version,
                                                 "measured": sorted(self.editor.measured),
                                                 "pins": dict(self._pins)})
        except Exception as exc:  # adoption falls back to the backends' own tables
            logger.debug("cannot publish controller metadata: %s", exc)

    # ------------------------------------------------------------------------------------------ serving
    def infer(self, session: str, payload: Any = None, timeout_s: float | None = None) -> Any:
        """One request, synchronously: the output, or ``Dropped`` / ``RequestFailed`` raised."""
        return self.submit(session, payload).result(timeout_s)

    def submit(self, session: str, payload: Any = None) -> concurrent.futures.Future:
        """One request; a ``concurrent.futures.Future`` of its output. Unknown sessions and bad inputs raise
        before anything is sent."""
        if session not in self._sessions_table:
            known = sorted(n for n in self._sessions_table if "/" not in n)
            raise WorkloadError(f"infer.session: unknown or unplanned session {session!r}; serving: {known}")
        try:
            return self.frontend.submit(session, payload)
        except ValueError as exc:
            raise WorkloadError(f"infer.{exc}") from None

    async def ainfer(self, session: str, payload: Any = None) -> Any:
        return await asyncio.wrap_future(self.submit(session, payload))

    def query(self, name: str, frame: Any, timeout_s: float | None = None) -> dict[str, Any]:
        """Run query ``name`` on one frame through its DAG with the plan's stage budgets."""
        with self._lock:
            q = self.editor.queries.get(name)
            plan = self._plan
        if q is None:
            raise WorkloadError(f"query.name: unknown query {name!r}; known: {sorted(self.editor.queries)}")
        qp = next((x for x in (plan.queries if plan else ()) if x.name == name), None)
        if qp is None:
            raise WorkloadError(f"query.name: {name!r} is not in the applied plan (call apply())")
        parents = {st.name: (st.parents[0] if st.parents else None) for st in q.stages}
        return self.frontend.query(qp.to_dict(), frame, parents=parents, timeout_s=timeout_s)

    # ------------------------------------------------------------------------------------------ epoch loop
    def pause(self) -> None:
        """Stop re-planning (stats are still collected)."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    def replan_now(self) -> None:
        """Ask the epoch loop to re-plan at its next poll (or apply at once when it does not run)."""
        if self._thread is None:
            self.apply()
        else:
            self._replan_requested.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.tick()
            except Exception as exc:  # the loop must outlive a failed poll (e.g. a worker dying mid-call)
                if not self._stop.is_set():
                    logger.warning("epoch loop: %s", exc, exc_info=True)
                    self._event("error", error=str(exc))

    def tick(self) -> str | None:
        """One poll of the epoch loop: collect stats, fold arrivals into the rate monitor, and re-plan when the
        epoch is over, a measured rate moved, workers changed or ``replan_now`` asked. Returns why it
        re-planned, or None."""
        workers = self._workers()
        reason = None
        gone = self._known_workers - set(workers)
        if set(workers) != self._known_workers:
            reason = f"workers changed (+{len(set(workers) - self._known_workers)} -{len(gone)})"
            self._known_workers = set(workers)
        if gone:
            with self._lock:
                for w in gone:
                    self._current.pop(w, None)
                    self._holds.pop(w, None)
                routes = routes_of(self._current)
            # Stop routing to lost workers at once; the re-plan below moves their sessions.
            self.frontend.set_routes({s: r for s, r in routes.items() if s in self._sessions_table},
                                     self._coalesced(self._sessions_table))
        self.collect(workers)
        if self._replan_requested.is_set():
            reason = reason or "requested"
        if self._paused and not gone:
            return None
        if reason is None and self._planned_at is not None and time.time() - self._planned_at >= self.epoch_s:
            reason = "epoch"
        if reason is None:
            changed = moved(self._planned_measured, self.measured_rates(), self.rate_threshold, up_only=True)
            if changed:
                reason = "rate moved: " + ", ".join(changed)
        if reason is None:
            return None
        self._replan_requested.clear()
        with self._lock:
            for name, r in self.measured_rates().items():
                self.editor.set_measured(name, max(r, INITIAL_RATE) * (1 + self.headroom))
            self._measure_fanout()
            if not self.editor.names():
                self._planned_at = time.time()
                return None
        self.apply()
        with self._lock:
            # What the move threshold compares against: the measured rates, without the headroom.
            self._planned_measured.update({n: max(r, INITIAL_RATE) for n, r in self.measured_rates().items()})
        self._event("replan", reason=reason)
        return reason

    def set_batch_floor(self, on: bool | None) -> dict[str, dict[str, int]]:
        """Switch every backend's batch floor live (``NexusBackend(batch_floor=...)``; None: on for host-CPU
        devices only). Returns each worker's ``{session: floor}``; a worker that failed raises ``ApplyError``."""
        replies = self._call({w: ("nexus_configure", {"batch_floor": on}) for w in self._workers()})
        bad = {w: r for w, r in replies.items() if not isinstance(r, dict)}
        if bad:
            raise ApplyError(f"set_batch_floor failed on {sorted(bad)}: {next(iter(bad.values()))!r}")
        with self._apply_lock:  # the frontend coalesces for as long as the backends now hold
            with self._lock:
                self._holds.update({w: dict(r.get("holds_ms") or {}) for w, r in replies.items()})
                table = self._coalesced(self._sessions_table)
            self.frontend.update_sessions(table)
        return {w: dict(r["floors"]) for w, r in replies.items()}

    def collect(self, workers: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Poll every backend's stats window once; keep it in the bounded history and feed the rate monitor."""
        workers = list(workers if workers is not None else self._workers())
        replies = self._call({w: ("nexus_stats", {}) for w in workers}, timeout=10.0)
        windows = []
        for w, r in replies.items():
            if isinstance(r, dict):
                windows.append(strip_window(w, r))
                if r.get("trace"):
                    self._traces[w] = list(r["trace"])[-500:]
        if not windows:
            return []
        arrivals, span = arrivals_of(windows)
        with self._lock:
            names = set(self.editor.measured)
            queries = dict(self.editor.queries)
        keyed: dict[str, float] = {}
        for n in names:
            if n in queries:
                q = queries[n]
                roots = [st for st in q.stages if not st.parents]
                counts = [arrivals.get(stage_session(n, st.name), 0) / st.gamma for st in roots]
                keyed[n] = max(counts) if counts else 0.0
                # Every stage's own arrivals too: their ratios are the measured fan-outs (gamma).
                for st in q.stages:
                    keyed[stage_session(n, st.name)] = arrivals.get(stage_session(n, st.name), 0)
            else:
                keyed[n] = arrivals.get(n, 0)
        self.monitor.observe(keyed, span, sessions=set(keyed))
        self._history.extend(windows)
        return windows

    def _measure_fanout(self) -> None:
        """Set each measured query's stage fan-outs to the measured ratio of stage to parent arrivals."""
        for qname in sorted(self.editor.measured & set(self.editor.queries)):
            q = self.editor.queries[qname]
            for st in q.stages:
                if len(st.parents) != 1:
                    continue
                child = self.monitor.rate(stage_session(qname, st.name))
                parent = self.monitor.rate(stage_session(qname, st.parents[0]))
                if child is not None and parent is not None and parent >= INITIAL_RATE and child > 0:
                    self.editor.set_measured_gamma(qname, st.name, child / parent)

    def measured_rates(self) -> dict[str, float]:
        """Moving-average arrival rate (req/s) of every session and query whose rate is measured."""
        with self._lock:
            names = set(self.editor.measured)
        return {n: r for n, r in self.monitor.rates().items() if n in names}

    # ------------------------------------------------------------------------------------------ views
    def stats(self, window_s: float | None = 10.0, since: float | None = None) -> dict[str, Any]:
        """Per session offered rate, goodput, SLO attainment, drops by reason, p50/p99; per GPU utilization.

        Over the stats windows of the last ``window_s`` seconds (``None``: the whole bounded history), or those
        starting at or after ``since`` (a ``time.time()`` value).
        """
        if self._thread is None or not self._thread.is_alive():
            self.collect()
        now = time.time()
        wins = list(self._history)
        if since is not None:
            # A window that began at most one poll before ``since`` counts (its reset preceded the caller's clock).
            wins = [w for w in wins if w["t0"] >= since - self.poll_s and w["t1"] > since]
        elif window_s is not None:
            wins = [w for w in wins if w["t1"] >= now - window_s]
        with self._lock:
            plan = self._plan
            gpu_of = {w: (g or {}).get("id") for w, g in self._current.items()}
        out = aggregate(wins, gpu_of)
        out["version"] = self._version
        out["plan_gpus"] = plan.num_gpus if plan else len([g for g in gpu_of.values() if g is not None])
        return out

    def history(self) -> list[dict[str, Any]]:
        """The bounded history of stripped stats windows (one per worker per poll)."""
        return list(self._history)

    def events(self) -> list[dict[str, Any]]:
        return list(self._events)

    def _event(self, kind: str, **data: Any) -> None:
        self._events.append({"t": time.time(), "event": kind, **data})

    @property
    def version(self) -> int:
        return self._version

    @property
    def current_plan(self) -> Plan | None:
        return self._plan

    @property
    def assignment(self) -> dict[str, dict | None]:
        """Worker address -> the GPU plan (dict) it runs now."""
        with self._lock:
            return dict(self._current)

    def state(self) -> dict[str, Any]:
        """A JSON-able snapshot for widgets and the JupyterLab panel."""
        st = self.stats(window_s=max(3 * self.poll_s, 5.0)) if self._history else {"sessions": {}, "gpus": {}}
        with self._lock:
            wl = self.editor.workload()
            plan = self._plan
            current = dict(self._current)
            measured = set(self.editor.measured)
            pins = dict(self._pins)
        try:
            link = self.client.dashboard_link
        except Exception:
            link = None
        gpus = []
        where: dict[str, list[int]] = {}
        for w in sorted(current):
            g = current[w]
            sess = [a["session"] for a in (g or {}).get("allocations", ())]
            for s in sess:
                where.setdefault(s, []).append(int(g["id"]))
            gpus.append({"worker": w, "gpu": None if g is None else int(g["id"]),
                         "duty_cycle_ms": None if g is None else g["duty_cycle_ms"],
                         "occupancy": None if g is None else g["occupancy"],
                         "utilization": st["gpus"].get(w, {}).get("utilization"), "sessions": sess,
                         "allocations": list((g or {}).get("allocations", ()))})
        sessions = []
        for s in wl.sessions:
            sessions.append({"name": s.name, "model": s.model, "slo_ms": s.slo_ms, "rate": s.rate,
                             "measured": s.name in measured, "pinned": pins.get(s.name),
                             **_measured(st["sessions"].get(s.name, {})), "gpus": where.get(s.name, [])})
        queries = []
        for q in wl.queries:
            qp = next((x for x in (plan.queries if plan else ()) if x.name == q.name), None)
            budgets = {b.name: b.budget_ms for b in qp.stages} if qp else {}
            queries.append({"name": q.name, "slo_ms": q.slo_ms, "rate": q.rate, "measured": q.name in measured,
                            "stages": [{"name": stage.name, "model": stage.model, "parents": list(stage.parents),
                                        "gamma": stage.gamma, "budget_ms": budgets.get(stage.name, 0.0),
                                        "session": stage_session(q.name, stage.name),
                                        "gpus": where.get(stage_session(q.name, stage.name), []),
                                        **_measured(st["sessions"].get(stage_session(q.name, stage.name), {}))}
                                       for stage in q.stages]})
        return {
            "cluster": {"scheduler": self.client.scheduler.address, "workers": len(current),
                        "gpus_used": plan.num_gpus if plan else sum(g is not None for g in current.values()),
                        "device": self.device, "epoch_s": self.epoch_s, "version": self._version,
                        "plan_age_s": None if self._planned_at is None else time.time() - self._planned_at,
                        "paused": self._paused, "dashboard_link": link,
                        "lower_bound_gpus": plan.lower_bound_gpus if plan else None,
                        "rate_fraction": plan.rate_fraction if plan else None},
            "gpus": gpus, "sessions": sessions, "queries": queries,
            "unserved": [u.to_dict() for u in plan.unserved] if plan else [],
        }

    def _repr_html_(self) -> str:
        return html.render(self.state())

    def __repr__(self) -> str:
        return (f"<nexus_lab.Controller: {len(self._known_workers)} workers, device {self.device!r}, "
                f"{len(self.editor.names())} sessions/queries, plan v{self._version}>")

    # ------------------------------------------------------------------------------------------ lifecycle
    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the epoch loop and the frontend; close the client and cluster this controller started."""
        if getattr(self, "_lab", None) is not None:
            self._lab.close()
            self._lab = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.frontend.close()
        if self._owns_client or self._cluster is not None:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()

    # ------------------------------------------------------------------------------------------ widgets
    def dashboard(self, **kw: Any) -> Any:
        """Live plotly dashboards of this controller (see ``nexus_lab.widgets.dashboard``)."""
        from ..widgets import dashboard

        return dashboard(self, **kw)

    def slo_editor(self) -> Any:
        from ..widgets import slo_editor

        return slo_editor(self)

    def query_editor(self, name: str | None = None) -> Any:
        from ..widgets import query_editor

        return query_editor(self, name)

    def placement_editor(self) -> Any:
        from ..widgets import placement_editor

        return placement_editor(self)

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
