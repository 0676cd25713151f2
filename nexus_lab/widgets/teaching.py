"""Teaching mode: the controller API the widgets use, backed by the pure simulator instead of a Dask cluster.

Depends on the workload editor, the planner and ``nexus_lab.sim`` only; no Dask, no threads, deterministic (seeded).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..controller.edits import WorkloadEditor, base_workload
from ..planner import Plan, plan_workload
from ..planner.api import stage_session
from ..workload import Workload, WorkloadError

__all__ = ["SimController"]


class SimController:
    """Plans like the controller and, on every ``state()``/``stats()`` poll, simulates the next ``window_s`` of the
    applied plan (a fresh seed per poll): utilization, goodput, latency, drops and the batch trace.

    ``gpus`` is the simulated cluster's size; ``apply_plan`` runs a manual placement (the placement editor's).
    """

    def __init__(self, gpus: int = 4, device: str = "simulated:titan-x-pascal", *,
                 workload: Workload | str | Mapping | None = None, policy: str = "nexus", seed: int = 0,
                 window_s: float = 1.0, history: int = 600) -> None:
        if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
            raise ValueError(f"gpus: must be an integer >= 1, got {gpus!r}")
        if not window_s > 0:
            raise ValueError(f"window_s: must be > 0, got {window_s!r}")
        wl, pset = base_workload(device, workload)
        self.editor = WorkloadEditor.from_workload(wl, pset)
        self.device = device
        self.gpus = gpus
        self.policy = policy
        self.seed = int(seed)
        self.window_s = float(window_s)
        self.closed = False
        self._pins: dict[str, int] = {}
        self._plan: Plan | None = None
        self._version = 0
        self._planned_at: float | None = None
        self._polls = 0
        self._traces: dict[str, list] = {}
        self._history: deque[dict[str, Any]] = deque(maxlen=int(history))
        self._last: dict[str, Any] | None = None
        self._plan_listeners: list[Callable[[Plan, int], None]] = []

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
        return plan_workload(self.workload, self.policy, gpus=self.gpus)

    def apply(self) -> Plan:
        return self.apply_plan(self.plan())

    def apply_plan(self, plan: Plan) -> Plan:
        """Run ``plan`` as given (a manual placement); the caller has validated it."""
        self._plan = plan
        self._version += 1
        self._planned_at = time.time()
        self._last = None
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
        pass

    def resume(self) -> None:
        pass

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
        self._last = res
        return res

    def stats(self, window_s: float | None = None) -> dict[str, Any]:
        res = self._poll()
        return {"span_s": res["span_s"], "sessions": res["sessions"],
                "gpus": {f"gpu-{g}": {"utilization": m["utilization"], "gpu": int(g)} for g, m in res["gpus"].items()},
                "version": self._version, "plan_gpus": self._plan.num_gpus if self._plan else 0}

    def traces(self) -> dict[str, list]:
        return dict(self._traces)

    def history(self) -> list[dict[str, Any]]:
        return list(self._history)

    def state(self) -> dict[str, Any]:
        st = self.stats()
        plan, wl = self._plan, self.workload
        where: dict[str, list[int]] = {}
        gpus = []
        for gid in range(self.gpus):
            g = plan.gpus[gid] if plan is not None and gid < plan.num_gpus else None
            for a in (g.allocations if g else ()):
                where.setdefault(a.session, []).append(gid)
            gpus.append({"worker": f"gpu-{gid}", "gpu": None if g is None else gid,
                         "duty_cycle_ms": None if g is None else g.duty_cycle_ms,
                         "occupancy": None if g is None else g.occupancy,
                         "utilization": st["gpus"].get(f"gpu-{gid}", {}).get("utilization", 0.0 if g else None),
                         "sessions": [a.session for a in (g.allocations if g else ())],
                         "allocations": [a.to_dict() for a in (g.allocations if g else ())]})
        sessions = []
        for s in wl.sessions:
            m = st["sessions"].get(s.name, {})
            sessions.append({"name": s.name, "model": s.model, "slo_ms": s.slo_ms, "rate": s.rate,
                             "measured": s.name in self.editor.measured, "pinned": self._pins.get(s.name),
                             "offered_rate": m.get("offered_rate"), "goodput": m.get("goodput"),
                             "slo_attainment": m.get("slo_attainment"), "drops": m.get("drops", {}),
                             "latency_p50_ms": m.get("latency_p50_ms"), "latency_p99_ms": m.get("latency_p99_ms"),
                             "gpus": where.get(s.name, [])})
        queries = []
        for q in wl.queries:
            qp = next((x for x in (plan.queries if plan else ()) if x.name == q.name), None)
            budgets = {b.name: b.budget_ms for b in qp.stages} if qp else {}
            queries.append({"name": q.name, "slo_ms": q.slo_ms, "rate": q.rate, "measured": False,
                            "stages": [{"name": x.name, "model": x.model, "parents": list(x.parents), "gamma": x.gamma,
                                        "budget_ms": budgets.get(x.name, 0.0),
                                        "session": stage_session(q.name, x.name),
                                        "gpus": where.get(stage_session(q.name, x.name), [])} for x in q.stages]})
        return {"cluster": {"scheduler": "simulator", "workers": self.gpus,
                            "gpus_used": plan.num_gpus if plan else 0, "device": self.device, "epoch_s": None,
                            "version": self._version,
                            "plan_age_s": None if self._planned_at is None else time.time() - self._planned_at,
                            "paused": False, "dashboard_link": None,
                            "lower_bound_gpus": plan.lower_bound_gpus if plan else None},
                "gpus": gpus, "sessions": sessions, "queries": queries,
                "unserved": [u.to_dict() for u in plan.unserved] if plan else []}

    # ------------------------------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> SimController:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<nexus_lab.SimController: {self.gpus} simulated GPUs, {len(self.editor.names())} sessions/queries, "
                f"plan v{self._version}>")
