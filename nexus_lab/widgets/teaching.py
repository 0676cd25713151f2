"""Teaching mode: a ``ControllerView`` backed by the pure simulator instead of a Dask cluster, so every widget runs
in a notebook without one.

Depends on the workload editor, the planner, the controller's placement and snapshot code and ``nexus_lab.sim``
only; no Dask, no threads, deterministic (seeded).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..controller.edits import WorkloadEditor, base_workload
from ..controller.placement import assign_gpus, by_worker_index
from ..controller.state import build_state
from ..planner import Plan, plan_workload
from ..planner.api import check_fill
from ..workload import Workload, WorkloadError

__all__ = ["SimController"]


def _key(gpu: int) -> str:
    """A sortable worker key for GPU ``gpu`` (``assign_gpus`` orders workers by their names)."""
    return f"{gpu:06d}"


class SimController:
    """Plans like the controller and, on every ``state()``/``stats()`` poll, simulates the next ``window_s`` of the
    applied plan (a fresh seed per poll): utilization, goodput, latency, drops and the batch trace.

    ``gpus`` is the simulated cluster's size; GPU ``i`` of a plan runs on simulated worker ``gpu-i``. Pins
    (``pin(session, gpu)``) place a session's first GPU on that worker, and re-plans keep the other GPUs where they
    run. ``apply_plan`` runs a manual placement (the placement editor's) as given.
    """

    def __init__(self, gpus: int = 4, device: str = "simulated:titan-x-pascal", *,
                 workload: Workload | str | Mapping | None = None, policy: str = "nexus", fill: float = 1.0,
                 seed: int = 0, window_s: float = 1.0, history: int = 600) -> None:
        if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
            raise ValueError(f"gpus: must be an integer >= 1, got {gpus!r}")
        if not window_s > 0:
            raise ValueError(f"window_s: must be > 0, got {window_s!r}")
        wl, pset = base_workload(device, workload)
        self.editor = WorkloadEditor.from_workload(wl, pset)
        self.device, self.policy, self._gpus = device, policy, gpus
        self.fill = check_fill(fill)
        self.seed, self.window_s = int(seed), float(window_s)  # each poll simulates window_s with a fresh seed
        self._closed = False
        self._paused = False
        self._pins: dict[str, int] = {}
        self._plan: Plan | None = None
        self._version = 0
        self._planned_at: float | None = None
        self._polls = 0
        self._traces: dict[str, list] = {}
        self._history: deque[dict[str, Any]] = deque(maxlen=int(history))
        self._plan_listeners: list[Callable[[Plan, int], None]] = []

    @property
    def gpus(self) -> int:
        return self._gpus

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------------------------------ edits
    def add_session(self, model: str, slo_ms: float, rate: float | None = None, name: str | None = None) -> str:
        return self.editor.add_session(model, slo_ms, rate, name)

    def add_query(self, name: str, slo_ms: float, stages: Sequence[Mapping[str, Any]], rate: float | None = None
                  ) -> str:
        self.editor.add_query(name, slo_ms, stages, rate)
        return name

    def set_slo(self, session: str, slo_ms: float) -> None:
        self.editor.set_slo(session, slo_ms)

    def set_rate(self, session: str, rate: float | None) -> None:
        self.editor.set_rate(session, rate)

    def remove(self, name: str) -> None:
        self.editor.remove(name)
        self._pins.pop(name, None)

    def pin(self, session: str, gpu: int) -> None:
        if session not in self.editor.names():
            raise WorkloadError(f"pin.session: unknown session {session!r}")
        if isinstance(gpu, bool) or not isinstance(gpu, int) or not 0 <= gpu < self.gpus:
            raise WorkloadError(f"pin.gpu: must be in [0, {self.gpus - 1}], got {gpu!r}")
        self._pins[session] = gpu

    def unpin(self, session: str) -> None:
        self._pins.pop(session, None)

    @property
    def workload(self) -> Workload:
        return self.editor.workload()

    # ------------------------------------------------------------------------------------------ planning
    def plan(self) -> Plan:
        """The plan ``apply()`` would run: GPU ids are the simulated workers, pinned sessions on their GPU."""
        plan = plan_workload(self.workload, self.policy, gpus=self.gpus, fill=self.fill)
        old = {_key(g.id): g.to_dict() for g in (self._plan.gpus if self._plan else ())}
        workers = [_key(i) for i in range(self.gpus)]
        where = assign_gpus(plan, workers, old, {s: _key(g) for s, g in self._pins.items()})
        return by_worker_index(plan, where, workers)[0]

    def apply(self) -> Plan:
        return self.apply_plan(self.plan())

    def apply_plan(self, plan: Plan) -> Plan:
        """Run ``plan`` as given (a manual placement); the caller has validated it. A closed simulator runs
        nothing (editors must not report a deployment that did not happen)."""
        if self._closed:
            raise RuntimeError("SimController: closed; create a new one to run plans")
        self._plan = plan
        self._version += 1
        self._planned_at = time.time()
        for fn in list(self._plan_listeners):
            fn(plan, self._version)
        return plan

    def on_plan(self, listener: Callable[[Plan, int], None]) -> Callable[[], None]:
        """Call ``listener(plan, version)`` after every applied plan (as ``Controller.on_plan``)."""
        if not callable(listener):
            raise TypeError(f"listener: must be callable, got {type(listener).__name__}")
        self._plan_listeners.append(listener)
        return lambda: self._plan_listeners.remove(listener) if listener in self._plan_listeners else None

    def replan_now(self) -> None:
        self.apply()

    def pause(self) -> None:
        """Marks re-planning paused (the simulator re-plans only when asked anyway)."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    @property
    def current_plan(self) -> Plan | None:
        return self._plan

    @property
    def version(self) -> int:
        return self._version

    # ------------------------------------------------------------------------------------------ measuring
    def _poll(self) -> dict[str, Any]:
        from ..sim import simulate

        plan, wl = self._plan, self.workload
        self._polls += 1
        if plan is None or not plan.gpus:
            res: dict[str, Any] = {"sessions": {}, "gpus": {}, "trace": []}
        else:
            r = simulate(plan, wl, duration_s=self.window_s + 0.2, warmup_s=0.2, seed=self.seed + self._polls,
                         trace=True)
            res = r.to_dict()
        res["span_s"] = self.window_s
        self._traces = {f"gpu-{g.id}": [] for g in (plan.gpus if plan else ())}
        for rec in res.get("trace", []):
            self._traces.setdefault(f"gpu-{rec['gpu']}", []).append(
                (rec["session"], rec["start_s"], rec["end_s"], rec["batch"]))
        self._history.append({"t": time.time(), "sessions": res["sessions"], "gpus": res["gpus"]})
        return res

    def stats(self, window_s: float | None = None) -> dict[str, Any]:
        """One simulated window of the applied plan (``window_s`` is the constructor's; the argument is the
        ``Controller.stats`` signature's). A planned GPU the window did not report is idle."""
        res = self._poll()
        gpus = {f"gpu-{g}": {"utilization": m["utilization"], "gpu": int(g)} for g, m in res["gpus"].items()}
        for g in (self._plan.gpus if self._plan else ()):
            gpus.setdefault(f"gpu-{g.id}", {"utilization": 0.0, "gpu": g.id})
        return {"span_s": res["span_s"], "sessions": res["sessions"], "gpus": gpus, "version": self._version,
                "plan_gpus": self._plan.num_gpus if self._plan else 0}

    def traces(self) -> dict[str, list]:
        return dict(self._traces)

    def history(self) -> list[dict[str, Any]]:
        return list(self._history)

    def state(self) -> dict[str, Any]:
        """The snapshot ``Controller.state()`` gives (``build_state``), of one freshly simulated window."""
        st = self.stats()
        plan = self._plan
        assignment: dict[str, dict | None] = {f"gpu-{i}": None for i in range(self.gpus)}
        assignment.update({f"gpu-{g.id}": g.to_dict() for g in (plan.gpus if plan else ())})
        return build_state(self.workload, plan, assignment, st, measured=set(self.editor.measured),
                           pins=dict(self._pins), version=self._version, planned_at=self._planned_at,
                           cluster={"scheduler": "simulator", "device": self.device, "epoch_s": None,
                                    "paused": self._paused, "dashboard_link": None})

    # ------------------------------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> SimController:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<nexus_lab.SimController: {self.gpus} simulated GPUs, {len(self.editor.names())} sessions/queries, "
                f"plan v{self._version}>")
