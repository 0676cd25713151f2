"""The live dashboard: utilization heatmap, goodput, latency vs SLO, drops, duty-cycle Gantt and placement views,
and the service below the header (frontends, autoscaling, models with random weights: ``service_view``).

Reads only the controller's ``ControllerView`` (``state()``, ``current_plan``, ``workload``, ``traces()``,
``closed``) from a background thread; holds no scheduling logic and never blocks the kernel.
"""

from __future__ import annotations

import html
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import ipywidgets as W

from ..controller.protocol import ControllerView
from . import figures
from .logic import gantt_bars, last_cycles_window, placement_segments
from .service_view import service_html

logger = logging.getLogger("nexus_lab.widgets")

__all__ = ["Dashboard", "dashboard", "nvml_devices"]


def nvml_devices() -> list[dict[str, float]] | None:
    """Utilization and memory of every CUDA device from NVML (``nvidia-ml-py``), or None when unavailable."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            u = pynvml.nvmlDeviceGetUtilizationRates(h)
            m = pynvml.nvmlDeviceGetMemoryInfo(h)
            out.append({"index": i, "utilization": u.gpu / 100.0, "memory_used_mb": m.used / 2**20,
                        "memory_total_mb": m.total / 2**20})
        return out
    except Exception:  # no driver, no device: the dashboard shows the controller's figures only
        return None


class _Box(W.VBox):
    """The dashboard's top widget: closing it stops the refresh thread."""

    def __init__(self, owner: Dashboard, **kw: Any) -> None:
        super().__init__(**kw)
        self._owner = owner

    def close(self) -> None:
        self._owner.stop()
        super().close()


class Dashboard:
    """A live view of one controller, refreshed every ``interval_s`` by a daemon thread (a lifecycle, hence a class).

    ``history_s`` bounds the utilization history; ``gantt_cycles`` duty cycles are drawn in the Gantt view.
    ``refresh()`` runs one update in the caller's thread (tests and benchmarks use it).
    """

    def __init__(self, ctl: ControllerView, *, interval_s: float = 1.0, history_s: float = 180.0, gantt_cycles: int = 3,
                 start: bool = True) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s: must be > 0, got {interval_s!r}")
        if not history_s >= interval_s:
            raise ValueError(f"history_s: must be >= interval_s ({interval_s}), got {history_s!r}")
        self.ctl = ctl
        self.interval_s = float(interval_s)
        self.gantt_cycles = int(gantt_cycles)
        self.history: deque[tuple[float, dict[str, float]]] = deque(maxlen=max(2, int(history_s / interval_s)))
        self.refreshes = 0
        self.errors = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._plan_key: Any = None
        self.colors: dict[str, str] = {}  # session -> colour, kept for the dashboard's life
        self.util = figures.utilization_figure()
        self.goodput = figures.goodput_figure()
        self.latency = figures.latency_figure()
        self.drops = figures.drops_figure()
        self.gantt = figures.gantt_figure()
        self.placement = figures.placement_figure()
        self.header = W.HTML()
        self.service = W.HTML(layout=W.Layout(display="none"))  # shown once there is a service to show
        # One wrapping row: two figures side by side from about 900 px of output, one per row below it, so no
        # width needs a horizontal scrollbar.
        grid = W.Box([self.util, self.placement, self.goodput, self.latency, self.drops, self.gantt],
                     layout=W.Layout(display="flex", flex_flow="row wrap", width="100%"))
        self.widget = _Box(self, children=[self.header, self.service, grid])
        self.widget.add_class("nexus-dashboard")
        self.widget.dashboard = self
        self.refresh()
        if start:
            self.start()

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="nexus-dashboard", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout_s)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        self.widget.close()

    def _loop(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            next_t += self.interval_s
            if self.ctl.closed or self.widget.comm is None:
                break
            try:
                self.refresh()
            except Exception as exc:  # one failed poll (e.g. a worker restarting) must not end the view
                self.errors += 1
                self.last_error = str(exc)
                logger.debug("dashboard refresh failed: %s", exc, exc_info=True)
            self._stop.wait(max(0.0, next_t - time.monotonic()))
            next_t = max(next_t, time.monotonic() - self.interval_s)
        self._stop.set()

    # ------------------------------------------------------------------------------------------ one update
    def refresh(self) -> None:
        """Poll the controller once and update every figure (each in one ``batch_update`` message)."""
        st = self.ctl.state()
        now = time.time()
        gpus = st.get("gpus", [])
        nvml = nvml_devices() if str(st.get("cluster", {}).get("device", "")).startswith("cuda") else None
        # Each worker is one GPU, named by its place in the worker list: the same name and row in every chart,
        # busy or idle, whichever plan GPU it runs now.
        lanes = [f"GPU {i}" for i in range(len(gpus))]
        by_worker = {g.get("worker", str(i)): lanes[i] for i, g in enumerate(gpus)}
        by_plan_id = {int(g["gpu"]): lanes[i] for i, g in enumerate(gpus) if g.get("gpu") is not None}
        sample = {}
        for i, g in enumerate(gpus):
            u = g.get("utilization")
            if nvml and i < len(nvml):
                u = nvml[i]["utilization"]
            sample[lanes[i]] = float(u) if u is not None else None
        self.history.append((now, sample))
        names = sorted({k for _, s in self.history for k in s}, key=figures.lane_order)
        ages = [round(t - now, 1) for t, _ in self.history]
        rows = [[s.get(n) for _, s in self.history] for n in names]
        with self.util.batch_update():
            figures.utilization_update(self.util, names, ages, rows)
        sessions = list(st.get("sessions", []))
        for q in st.get("queries", []):
            if "end_to_end" in q:  # the query end to end (where the controller measures it), then its stages
                sessions.append(figures.query_row(q))
            for stage in q.get("stages", []):
                sessions.append({**stage, "name": stage["session"], "slo_ms": stage.get("budget_ms")})
        self.colors = figures.session_colors([s["name"] for s in sessions], self.colors)
        with self.goodput.batch_update(), self.latency.batch_update(), self.drops.batch_update():
            figures.session_bars_update(self.goodput, self.latency, self.drops, sessions)
        plan = self.ctl.current_plan
        window = last_cycles_window(plan, self.gantt_cycles)
        bars = gantt_bars(self.ctl.traces(), by_worker, window_s=window)
        with self.gantt.batch_update():
            figures.gantt_update(self.gantt, bars, lanes, self.colors)
        key = (st.get("cluster", {}).get("version"), id(plan), tuple(lanes))
        if key != self._plan_key:
            self._plan_key = key
            segs = placement_segments(plan, self.ctl.workload) if plan is not None else []
            occ = [(lanes[i], g.get("occupancy")) for i, g in enumerate(gpus)]
            with self.placement.batch_update():
                figures.placement_update(self.placement, segs, occ, self.colors, by_plan_id)
        self.header.value = _header_html(st, nvml)
        service = service_html(st)
        if service != self.service.value:  # a message only when it changed
            self.service.value = service
            self.service.layout.display = None if service else "none"
        self.refreshes += 1


def _header_html(st: Mapping[str, Any], nvml: list[dict[str, float]] | None) -> str:
    c = st.get("cluster", {})
    sess = st.get("sessions", [])
    served = [s for s in sess if s.get("slo_attainment") is not None]
    att = sum(s["slo_attainment"] for s in served) / len(served) if served else None
    parts = [f"<b>{html.escape(str(c.get('device', '')))}</b>",
             f"{c.get('gpus_used', '?')} of {c.get('workers', '?')} GPUs in use", f"plan v{c.get('version', '?')}",
             f"sessions {len(sess)}", f"queries {len(st.get('queries', []))}"]
    if c.get("plan_age_s") is not None:
        parts.append(f"plan age {c['plan_age_s']:.0f} s")
    if att is not None:
        parts.append(f"mean SLO attainment {att:.1%}")
    for q in st.get("queries", []):
        e2e = q.get("end_to_end") or {}
        if e2e.get("slo_attainment") is not None:
            parts.append(f"{html.escape(str(q['name']))}: {e2e['slo_attainment']:.1%} of frames within "
                         f"{q.get('slo_ms', 0):.0f} ms (p99 {e2e.get('latency_p99_ms') or 0:.0f} ms)")
    if c.get("paused"):
        parts.append("<span style='color:#d62728'>re-planning paused</span>")
    if st.get("unserved"):
        parts.append("<span style='color:#d62728'>unserved: " + html.escape(
            ", ".join(u["session"] for u in st["unserved"])) + "</span>")
    if nvml:
        parts.append("NVML: " + ", ".join(f"cuda:{d['index']} {d['utilization']:.0%} "
                                          f"{d['memory_used_mb']:.0f}/{d['memory_total_mb']:.0f} MB" for d in nvml))
    return "<div class='nexus-dashboard-header'>" + " &middot; ".join(parts) + "</div>"


def dashboard(ctl: ControllerView, *, interval_s: float = 1.0, history_s: float = 180.0, start: bool = True) -> W.VBox:
    """The live dashboard of ``ctl`` as a widget (display it); closing it stops its refresh thread.

    The ``Dashboard`` object is the widget's ``.dashboard`` attribute.
    """
    d = Dashboard(ctl, interval_s=interval_s, history_s=history_s, start=start)
    d.widget.dashboard = d
    return d.widget
