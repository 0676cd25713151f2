"""Benchmark: CPU the live dashboard costs the kernel at 1 Hz with 64 GPUs and 100 sessions (target <= 5% of a core).

Runs the dashboard inside a real ipykernel (so widget messages are serialized and sent as in a notebook) against
a controller stand-in whose snapshot has that size; measures the refresh thread's own CPU clock. No Dask.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from ..controller.edits import WorkloadEditor, base_workload
from ..planner import Plan, plan_workload
from ..workload import Workload

MODELS = ("vgg16", "vgg_face", "vgg_s", "yolo9000")


def big_workload(sessions: int = 100, seed: int = 0) -> Workload:
    """``sessions`` sessions over the shipped models with SLOs and rates spread deterministically."""
    import numpy as np

    rng = np.random.default_rng(seed)
    wl, pset = base_workload("simulated:titan-x-pascal")
    ed = WorkloadEditor.from_workload(wl, pset)
    for i in range(sessions):
        model = MODELS[i % len(MODELS)]
        slo = float(rng.choice([200, 300, 400])) if model == "yolo9000" else float(rng.choice([60, 100, 150, 200]))
        ed.add_session(model, slo, float(rng.uniform(10, 60)), name=f"s{i:03d}")
    return ed.workload()


class SnapshotController:
    """A controller stand-in: a real plan of the workload, and per poll a snapshot of ``Controller.state()``'s
    shape with moving numbers and a batch trace of the last duty cycles. Cheap by design: the benchmark measures
    the dashboard, not a controller."""

    def __init__(self, workload: Workload, plan: Plan, workers: int) -> None:
        self.workload = workload
        self.current_plan = plan
        self.workers = workers
        self.polls = 0
        self.closed = False  # the dashboard stops when it turns True

    def traces(self) -> dict[str, list]:
        out: dict[str, list] = {}
        t = self.polls * 1.0
        for g in self.current_plan.gpus:
            recs = []
            start = t
            for _cycle in range(3):
                for a in g.allocations:
                    dur = g.duty_cycle_ms * g.occupancy / max(len(g.allocations), 1) / 1000.0
                    recs.append((a.session, start, start + dur, a.batch))
                    start += dur
                start = max(start, t + (_cycle + 1) * g.duty_cycle_ms / 1000.0)
            out[f"w{g.id}"] = recs
        return out

    def state(self) -> dict[str, Any]:
        self.polls += 1
        k = self.polls
        gpus = []
        for i in range(self.workers):
            g = self.current_plan.gpus[i] if i < self.current_plan.num_gpus else None
            gpus.append({"worker": f"w{i}", "gpu": None if g is None else g.id,
                         "utilization": None if g is None else 0.5 + 0.4 * math.sin(k / 7 + i),
                         "occupancy": None if g is None else g.occupancy,
                         "duty_cycle_ms": None if g is None else g.duty_cycle_ms})
        sessions = []
        for j, s in enumerate(self.workload.sessions):
            wob = 1 + 0.1 * math.sin(k / 5 + j)
            sessions.append({"name": s.name, "model": s.model, "slo_ms": s.slo_ms, "rate": s.rate,
                             "offered_rate": s.rate * wob, "goodput": s.rate * min(wob, 1.0),
                             "slo_attainment": min(1.0, 1 / wob), "drops": {"deadline": int(10 * (wob - 0.9))},
                             "latency_p50_ms": s.slo_ms * 0.4 * wob, "latency_p99_ms": s.slo_ms * 0.8 * wob})
        return {"cluster": {"device": "simulated:titan-x-pascal", "workers": self.workers,
                            "gpus_used": self.current_plan.num_gpus, "version": 1, "plan_age_s": float(k)},
                "gpus": gpus, "sessions": sessions, "queries": [], "unserved": []}


_KERNEL_CODE = """
import json, time
from nexus_lab.bench.dashboard import setup
from nexus_lab.widgets.dashboard import Dashboard
ctl = setup({gpus}, {sessions})
d = Dashboard(ctl, interval_s={interval}, start=False)
for _ in range(d.history.maxlen):  # measure at the full history (the heatmap's widest), not a filling one
    d.refresh()
d.start()
clock = time.pthread_getcpuclockid(d._thread.ident)
c0, w0, r0 = time.clock_gettime(clock), time.monotonic(), d.refreshes
time.sleep({duration})
c1, w1, r1 = time.clock_gettime(clock), time.monotonic(), d.refreshes
d.close()
print("RESULT" + json.dumps({{"cpu_s": c1 - c0, "wall_s": w1 - w0, "refreshes": r1 - r0, "errors": d.errors,
                             "plan_gpus": ctl.current_plan.num_gpus, "history": len(d.history),
                             "last_error": d.last_error}}))
"""


def setup(gpus: int, sessions: int) -> SnapshotController:
    wl = big_workload(sessions)
    plan = plan_workload(wl, gpus=gpus)
    return SnapshotController(wl, plan, gpus)


def run(quick: bool = False) -> dict[str, Any]:
    """Measure the dashboard refresh thread's CPU inside an ipykernel for 20 s (5 s with ``quick``)."""
    from jupyter_client.manager import start_new_kernel

    gpus, sessions, interval = 64, 100, 1.0
    duration = 5.0 if quick else 20.0
    km, kc = start_new_kernel(kernel_name="python3")
    out: list[str] = []
    try:
        code = _KERNEL_CODE.format(gpus=gpus, sessions=sessions, interval=interval, duration=duration)
        kc.execute_interactive(code, timeout=duration + 120,
                               output_hook=lambda m: out.append(m["content"].get("text", ""))
                               if m["msg_type"] == "stream" else None)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    line = next((x for x in "".join(out).splitlines() if x.startswith("RESULT")), None)
    if line is None:
        raise RuntimeError(f"dashboard benchmark: the kernel printed no result: {''.join(out)[-2000:]}")
    r = json.loads(line[len("RESULT"):])
    return {"benchmark": "dashboard", "gpus": gpus, "sessions": sessions, "plan_gpus": r["plan_gpus"],
            "interval_s": interval, "duration_s": round(r["wall_s"], 2), "refreshes": r["refreshes"],
            "refresh_errors": r["errors"], "thread_cpu_s": round(r["cpu_s"], 4),
            "cpu_ms_per_refresh": round(1000 * r["cpu_s"] / max(r["refreshes"], 1), 2),
            "kernel_cpu_fraction": round(r["cpu_s"] / r["wall_s"], 4), "target_fraction": 0.05,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "history_columns": r["history"],
            "note": "thread CPU clock of the refresh thread in a real ipykernel (messages serialized and sent); "
                    "shared 2-core machine"}
