"""The notebook-side controller: a façade over the cluster I/O (``rpc``), the deployed plan (``deploy``), the epoch
loop (``epoch``), the snapshot (``state``) and the serving calls (``serving``: ``infer``/``query`` through a
frontend). Every public call checks its arguments (``checks``) and raises ``ClusterLost`` once the scheduler is gone.

Depends on the planner, the runtime's backend handlers and frontend, and distributed's client; imports widgets and
the lab only inside the methods that open them.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from operator import attrgetter
from typing import Any, Generic, TypeVar

from ..planner import Plan
from ..planner.api import check_fill
from ..workload import Workload, WorkloadError
from . import html
from .autoscale import Autoscale
from .checks import check_declared, check_flag, check_name, check_number, check_settings, guarded
from .deploy import ApplyError, Deployment
from .edits import WorkloadEditor, base_workload
from .epoch import EpochLoop, EpochSettings
from .ingress import Ingress
from .models import ModelCatalogue
from .rates import RateMonitor
from .rpc import ClusterIO, ClusterLost, close_cluster, connected
from .serving import Serving
from .state import build_state
from .stats import aggregate

__all__ = ["ApplyError", "ClusterLost", "Controller"]

#: Default network allowance (ms) of the runtime: request and reply hops between Python processes. Under overload
#: early drop serves requests right at their budget deadline, so this is all the slack the reply path gets.
RUNTIME_NET_MS = 10.0

T = TypeVar("T")


def _editor(device: str, workload: Workload | str | Mapping | None, net_ms: float | None) -> WorkloadEditor:
    """The workload editor to start with: the device's models, ``workload``'s sessions, ``net_ms`` if given."""
    wl, pset = base_workload(device, workload)
    return WorkloadEditor.from_workload(wl if net_ms is None else replace(wl, net_ms=float(net_ms)), pset)


class _Unit(Generic[T]):
    """An attribute of the controller that one of its units owns: kept there once, read and set through here."""

    def __init__(self, unit: str) -> None:
        self.unit = unit  # its attribute path on the controller
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> T:
        return self if obj is None else getattr(attrgetter(self.unit)(obj), self.name)  # type: ignore[return-value]

    def __set__(self, obj: Any, value: T) -> None:
        setattr(attrgetter(self.unit)(obj), self.name, value)


class Controller(Serving, Ingress, ModelCatalogue, Autoscale):
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
        idle GPUs become headroom for bursts and a rising load. 1: plan the fewest GPUs, as Nexus does.
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
    register : bool or None
        Make the controller visible to the JupyterLab panel (``nexus_lab.lab.register``); None: only inside a
        Jupyter kernel, never in scripts, benchmarks or tests.

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
                 net_ms: float | None = RUNTIME_NET_MS, register: bool | None = None, models: Any = None) -> None:
        settings = EpochSettings(epoch_s, poll_s, rate_threshold, headroom)
        fill = check_fill(fill)
        check_settings(net_ms=net_ms, rpc_timeout_s=rpc_timeout_s, history=history, policy=policy)
        self._owns_client = isinstance(client, str)
        self.client = connected(client, security)
        self._cluster: Any = None  # set by ``start``: closed with the controller
        self._events: deque[dict[str, Any]] = deque(maxlen=200)
        self.io = ClusterIO(self.client, rpc_timeout_s)
        self.device, states = self.io.connect(device)  # registers the backends on a bare cluster
        from ..runtime.frontend import Frontend

        self.frontend = Frontend(self.client, security=security, coalesce_ms=coalesce_ms, max_coalesce=max_coalesce)
        self._deploy = Deployment(self.io, self.frontend, _editor(self.device, workload, net_ms), policy=policy,
                                  fill=fill, event=self._event)
        self._epoch = EpochLoop(self.io, self._deploy, settings, history=history, workers=set(states),
                                event=self._event)
        self._deploy.adopt(self.io.adoption(states, self.editor),  # what the backends already run, if anything
                           {w: int(st.get("version", -1)) for w, st in states.items() if st})
        if models is not None:  # a model repository (``ModelCatalogue``), known before the first epoch
            self.add_models(models)
        if auto:
            self._epoch.start()
        self._lab = self._register(register)

    def _register(self, register: bool | None) -> Any:
        """Register with the JupyterLab panel when asked, or (None) inside a Jupyter kernel; else None."""
        from ..lab import registry  # light: no widgets, no Jupyter server

        if register or (register is None and registry.in_kernel()):
            return registry.register(self, name=f"nexus {self.client.scheduler.address}")
        return None

    # ------------------------------------------------------------------------------------------ settings
    editor: _Unit[WorkloadEditor] = _Unit("_deploy")
    policy: _Unit[str] = _Unit("_deploy")
    fill: _Unit[float] = _Unit("_deploy")
    monitor: _Unit[RateMonitor] = _Unit("_epoch")  # measured arrival rates
    epoch_s: _Unit[float] = _Unit("_epoch.settings")
    poll_s: _Unit[float] = _Unit("_epoch.settings")
    rate_threshold: _Unit[float] = _Unit("_epoch.settings")
    headroom: _Unit[float] = _Unit("_epoch.settings")

    @property
    def registration(self) -> Any:
        """The JupyterLab panel's ``Registration`` of this controller, or None when not registered."""
        return self._lab

    # ------------------------------------------------------------------------------------------ edits
    def _edit(self, where: str, change: Callable[[WorkloadEditor], Any]) -> Any:
        """Make one edit; undo it when the declared rates then need more GPUs than the cluster has workers
        (refused before anything is packed, naming the field)."""
        workers = len(self.io.usable())
        with self._deploy.lock:
            ed = self.editor
            before = (dict(ed.sessions), dict(ed.queries), set(ed.measured))
            out = change(ed)
            try:
                check_declared(ed.workload(), ed.measured, workers, where)
            except WorkloadError:
                ed.sessions, ed.queries, ed.measured = before
                raise
        return out

    @guarded
    def add_session(self, model: str, slo_ms: float, rate: float | None = None, name: str | None = None) -> str:
        """Declare a session (``rate=None``: measure it); takes effect at ``apply()`` or the next epoch. A declared
        rate that needs more GPUs than the cluster has is refused (``WorkloadError`` naming the field)."""
        added = self._edit("add_session.rate", lambda ed: ed.add_session(model, slo_ms, rate, name))
        self._event("add_session", session=added)
        return added

    @guarded
    def add_query(self, name: str, slo_ms: float, stages: Sequence[Mapping[str, Any]], rate: float | None = None
                  ) -> str:
        """Declare a query DAG: ``stages`` as in a workload file (``{name, model, parent, gamma}``)."""
        self._edit("add_query.rate", lambda ed: ed.add_query(name, slo_ms, stages, rate))
        self._event("add_query", query=name)
        return name

    @guarded
    def set_slo(self, session: str, slo_ms: float) -> None:
        check_name(session, "set_slo.session")
        self._edit("set_slo.slo_ms", lambda ed: ed.set_slo(session, slo_ms))

    @guarded
    def set_rate(self, session: str, rate: float | None) -> None:
        """Declare a rate (req/s) or ``None`` to measure it; one the cluster cannot hold is refused."""
        check_name(session, "set_rate.session")
        self._edit("set_rate.rate", lambda ed: ed.set_rate(session, rate))

    @guarded
    def remove(self, name: str) -> None:
        check_name(name, "remove.name")
        with self._deploy.lock:
            self.editor.remove(name)
            self._deploy.pins.pop(name, None)
            self.monitor.forget(name)

    @guarded
    def pin(self, session: str, gpu: int | str) -> None:
        """Place ``session``'s (first) GPU on worker ``gpu``: an index into the sorted workers or an address."""
        check_name(session, "pin.session")
        if isinstance(gpu, bool) or not isinstance(gpu, (int, str)):
            raise WorkloadError(f"pin.gpu: must be a worker index or address, got {gpu!r}")
        workers = self.workers()
        with self._deploy.lock:
            if session not in self.editor.names():
                raise WorkloadError(f"pin.session: unknown session {session!r}")
            if isinstance(gpu, int):
                if not 0 <= gpu < len(workers):
                    raise WorkloadError(f"pin.gpu: must be in [0, {len(workers) - 1}], got {gpu}")
                gpu = workers[gpu]
            if gpu not in workers:
                raise WorkloadError(f"pin.gpu: unknown worker {gpu!r}")
            self._deploy.pins[session] = gpu

    def unpin(self, session: str) -> None:
        check_name(session, "unpin.session")
        with self._deploy.lock:
            self._deploy.pins.pop(session, None)

    @property
    def workload(self) -> Workload:
        """The workload as the planner gets it now (measured rates included)."""
        with self._deploy.lock:
            return self.editor.workload()

    # ------------------------------------------------------------------------------------------ planning
    @guarded
    def workers(self) -> list[str]:
        """The cluster's worker addresses, sorted (one GPU each)."""
        return self.io.workers()

    @property
    def gpus(self) -> int:
        """How many GPUs (workers) the cluster has now."""
        return len(self.workers())

    @guarded
    def plan(self) -> Plan:
        """Preview: the plan ``apply()`` would run now, on as many GPUs as the cluster has responsive workers."""
        return self._deploy.preview()

    @guarded
    def apply(self, given: Plan | None = None) -> Plan:
        """Plan now and apply only the difference: workers that gain sessions load first; routes switch to the
        ready ones; workers that lose sessions drain, then unload; finally the new routes. Returns the plan.
        Plans without holding any lock; declared rates the cluster cannot hold are refused before planning."""
        if given is not None and not isinstance(given, Plan):
            raise WorkloadError(f"apply.given: must be a nexus_lab.planner.Plan or None, got {type(given).__name__}")
        return self._deploy.apply(given)

    @guarded
    def apply_plan(self, plan: Plan) -> Plan:
        """Apply a given plan (e.g. a manual placement from the placement editor) the way ``apply`` applies its
        own: it must validate against the current workload first. Pause the epoch loop to keep it in place."""
        if not isinstance(plan, Plan):
            raise WorkloadError(f"apply_plan.plan: must be a nexus_lab.planner.Plan, got {type(plan).__name__}")
        return self._deploy.apply(plan)

    def on_plan(self, listener: Callable[[Plan, int], None]) -> Callable[[], None]:
        """Call ``listener(plan, version)`` after every applied plan (the epoch loop's re-plans included), so views
        such as the editors follow the cluster. Runs in the applying thread, after the apply lock is released;
        a listener that raises is logged and kept. Returns a function that unsubscribes it."""
        return self._deploy.on_plan(listener)

    @guarded
    def set_batch_floor(self, on: bool | None) -> dict[str, dict[str, int]]:
        """Switch every backend's batch floor live (``NexusBackend(batch_floor=...)``; None: on for host-CPU
        devices only). Returns each worker's ``{session: floor}``; a worker that failed raises ``ApplyError``.
        Each backend tells its frontends how long it now holds small batches on its stream."""
        return self._deploy.set_batch_floor(check_flag(on, "set_batch_floor.on"))

    # ------------------------------------------------------------------------------------------ epoch loop
    def pause(self) -> None:
        """Stop re-planning (stats are still collected)."""
        self._epoch.paused = True

    def resume(self) -> None:
        self._epoch.paused = False

    @guarded
    def replan_now(self) -> None:
        """Ask the epoch loop to re-plan at its next poll (or apply at once when it does not run)."""
        if self._epoch.threaded:
            self._epoch.request()
        else:
            self.apply()

    @guarded
    def tick(self) -> str | None:
        """One poll of the epoch loop: collect stats, fold arrivals into the rate monitor, and re-plan when the
        epoch is over, a measured rate moved, workers changed or ``replan_now`` asked. Returns why it
        re-planned, or None."""
        return self._epoch.tick()

    @guarded
    def collect(self, workers: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Poll every backend's stats window once; keep it in the bounded history and feed the rate monitor."""
        if workers is not None:
            if isinstance(workers, str) or not isinstance(workers, Sequence):
                raise WorkloadError(f"collect.workers: must be a list of worker addresses or None, got {workers!r}")
            known = set(self.io.workers())
            for k, w in enumerate(workers):
                if check_name(w, f"collect.workers[{k}]") not in known:
                    raise WorkloadError(f"collect.workers[{k}]: unknown worker {w!r}; workers: {sorted(known)}")
        return self._epoch.collect(workers)

    def measured_rates(self) -> dict[str, float]:
        """Moving-average arrival rate (req/s) of every session and query whose rate is measured."""
        return self._epoch.measured_rates()

    # ------------------------------------------------------------------------------------------ views
    @guarded
    def stats(self, window_s: float | None = 10.0, since: float | None = None) -> dict[str, Any]:
        """Per session offered rate, goodput, SLO attainment, drops by reason, p50/p99; per GPU utilization.

        Over the stats windows of the last ``window_s`` seconds (``None``: the whole bounded history), or those
        starting at or after ``since`` (a ``time.time()`` value).
        """
        check_number(window_s, "stats.window_s", ge=0.0, none=True)
        check_number(since, "stats.since", none=True)
        if not self._epoch.running:
            self.collect()
        with self._deploy.lock:
            plan = self._deploy.plan
            gpu_of = {w: (g or {}).get("id") for w, g in self._deploy.current.items()}
        out = aggregate(self._epoch.windows(window_s, since), gpu_of)
        out["version"] = self.version
        out["plan_gpus"] = plan.num_gpus if plan else len([g for g in gpu_of.values() if g is not None])
        return out

    def history(self) -> list[dict[str, Any]]:
        """The bounded history of stripped stats windows (one per worker per poll)."""
        return list(self._epoch.history)

    def traces(self) -> dict[str, list]:
        """Each worker's latest batch trace (``(session, start_s, end_s, batch)``), for the Gantt view."""
        return self._epoch.traces()

    def events(self) -> list[dict[str, Any]]:
        return list(self._events)

    def _event(self, kind: str, **data: Any) -> None:
        self._events.append({"t": time.time(), "event": kind, **data})

    @property
    def version(self) -> int:
        return self._deploy.version

    @property
    def current_plan(self) -> Plan | None:
        return self._deploy.plan

    @property
    def assignment(self) -> dict[str, dict | None]:
        """Worker address -> the GPU plan (dict) it runs now."""
        return self._deploy.assignment()

    @guarded
    def state(self) -> dict[str, Any]:
        """A JSON-able snapshot for widgets and the JupyterLab panel; ``cluster`` also lists the workers that are
        ``suspect`` (their streams fell silent) or ``unresponsive`` (their last poll timed out) and counts the
        ``repairs`` of drifted backends."""
        st = self.stats(window_s=max(3 * self.poll_s, 5.0)) if self._epoch.history else {"sessions": {}, "gpus": {}}
        dep = self._deploy
        with dep.lock:
            wl, plan, current = self.editor.workload(), dep.plan, dict(sorted(dep.current.items()))
            measured, pins, version, planned_at = set(self.editor.measured), dict(dep.pins), dep.version, \
                dep.planned_at
        try:
            link = self.client.dashboard_link
        except Exception:
            link = None
        return self._with_query_stats(build_state(  # each query row also gets its ``end_to_end`` figures
            wl, plan, current, st, measured=measured, pins=pins, version=version, planned_at=planned_at,
            cluster={"scheduler": self.client.scheduler.address, "device": self.device, "epoch_s": self.epoch_s,
                     "paused": self._epoch.paused, "dashboard_link": link, "model_warnings": self.model_warnings(),
                     "suspect": sorted(self.frontend.suspect_workers), "unresponsive": sorted(self.io.unresponsive),
                     "repairs": dep.repairs, "frontends": self.frontends_state()}))

    def _repr_html_(self) -> str:
        return html.render(self.state())

    def __repr__(self) -> str:
        return (f"<nexus_lab.Controller: {len(self._epoch.known_workers)} workers, device {self.device!r}, "
                f"{len(self.editor.names())} sessions/queries, plan v{self.version}>")

    # ------------------------------------------------------------------------------------------ lifecycle
    @property
    def closed(self) -> bool:
        return self._epoch.stopped

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the epoch loop and the frontend; close the client and cluster this controller started. Works after
        the cluster is lost."""
        check_number(timeout_s, "close.timeout_s", gt=0.0)
        if self._lab is not None:
            self._lab.close()
            self._lab = None
        self.stop_serving()
        self._epoch.stop(timeout_s)
        self.frontend.close()
        if self._cluster is not None:  # workers first, then the client and the scheduler
            close_cluster(self.client, self._cluster, timeout_s)
        elif self._owns_client:
            self.client.close()

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

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
