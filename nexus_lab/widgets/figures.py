"""Plotly figures for the dashboard and the teaching notebooks: built once, then updated in place from plain data.

Every array goes to plotly as a plain list of finite numbers or None: a ``FigureWidget`` hands numpy arrays to
plotly.js as ``{"0": ..}`` objects (console warnings, wrong colours) and NaN/inf break the widget's JSON.
Depends on plotly and the widgets' pure logic only; never on the controller or Dask.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go

from ..batching import ALL_REASONS
from .logic import PALETTE, Bar, Segment

#: Figure size in the dashboard: two fit side by side in 1000 px of notebook, and wrap below that.
WIDTH, HEIGHT = 440, 320
_MARGIN = {"l": 64, "r": 16, "t": 84, "b": 52}
_GRID = "rgba(128,128,128,0.3)"
#: Above the plot, below the title, left-aligned: clear of the title and of plotly's toolbar (top right).
_LEGEND = {"orientation": "h", "x": 0, "xanchor": "left", "y": 1.02, "yanchor": "bottom", "font": {"size": 11}}
#: Live views hide plotly's toolbar: it would cover titles and legends, and a refresh undoes its zooms anyway.
WIDGET_CONFIG = {"displayModeBar": False, "displaylogo": False}
_LANES = "lanes"
#: The session palette as a discrete colourscale: value ``i + 0.5`` is ``PALETTE[i]``.
PALETTE_SCALE = [pair for i, c in enumerate(PALETTE) for pair in ([i / len(PALETTE), c], [(i + 1) / len(PALETTE), c])]


# ------------------------------------------------------------------------------------------ theme, colours
def lab_theme_dark(settings_dir: str | None = None) -> bool | None:
    """Whether the user's JupyterLab theme is dark, from its settings file (a kernel cannot ask the browser):
    None when unknown (the theme follows the system)."""
    if settings_dir is None:
        settings_dir = os.environ.get("JUPYTERLAB_SETTINGS_DIR")
    if settings_dir is None:
        try:
            from jupyter_core.paths import jupyter_config_dir
        except ImportError:
            return None
        settings_dir = os.path.join(jupyter_config_dir(), "lab", "user-settings")
    path = Path(settings_dir) / "@jupyterlab" / "apputils-extension" / "themes.jupyterlab-settings"
    try:
        text = "\n".join(ln for ln in path.read_text().splitlines() if not ln.strip().startswith("//"))
    except OSError:
        return False  # never changed: JupyterLab Light
    if re.search(r'"adaptive-theme"\s*:\s*true', text):
        return None
    m = re.search(r'"theme"\s*:\s*"([^"]*)"', text)
    return bool(m and "dark" in m.group(1).lower())


def theme_layout(dark: bool | None = None) -> dict[str, Any]:
    """Transparent backgrounds and grey grids read on a light and a dark theme alike; the font colour follows the
    JupyterLab theme when it is known (mid grey, legible on both, when it is not)."""
    if dark is None:
        dark = lab_theme_dark()
    font = {True: "#d8d8d8", False: "#2a3f5f", None: "#8a8a8a"}[dark]
    axis = {"gridcolor": _GRID, "zerolinecolor": _GRID, "linecolor": _GRID, "automargin": True}
    return {"template": "plotly_white", "paper_bgcolor": "rgba(0,0,0,0)", "plot_bgcolor": "rgba(0,0,0,0)",
            "font": {"color": font}, "xaxis": dict(axis), "yaxis": dict(axis)}


def session_colors(names: Iterable[str], known: Mapping[str, str] | None = None) -> dict[str, str]:
    """Session -> colour: each new name takes the first palette colour not yet taken, so one view (a dashboard, a
    notebook's figures) gives every session its own colour for its whole life (20 before any repeats)."""
    out = dict(known or {})
    used = set(out.values())
    for n in names:
        if n not in out:
            free = [c for c in PALETTE if c not in used]
            out[n] = free[0] if free else PALETTE[len(out) % len(PALETTE)]
            used.add(out[n])
    return out


def finite(values: Iterable[Any]) -> list[float | None]:
    """Plain floats, None for missing, NaN or infinite values (JSON has no NaN; plotly leaves a gap)."""
    out: list[float | None] = []
    for v in values:
        f = None if v is None else float(v)
        out.append(f if f is not None and math.isfinite(f) else None)
    return out


def wire(values: Iterable[Any]) -> np.ndarray:
    """``finite(values)`` as an object array: plotly validates it in one step (not number by number, most of a
    large refresh's CPU) and sends it as a JSON list, never as the binary buffer plotly.js misreads."""
    out = np.empty(len(vals := finite(values)), dtype=object)
    out[:] = vals
    return out


def _layout(title: str, height: int = HEIGHT, *, x: str | None = None, y: str | None = None, dark: bool | None = None,
            **kw: Any) -> dict[str, Any]:
    base = theme_layout(dark)
    for name, label in (("xaxis", x), ("yaxis", y)):
        base[name].update(kw.pop(name, {}))
        if label:
            base[name]["title"] = {"text": label}
    return {**base, "title": {"text": title, "font": {"size": 14}, "x": 0, "xanchor": "left", "xref": "paper",
                              "y": 0.98, "yanchor": "top"},
            "height": height, "margin": dict(_MARGIN), "legend": dict(_LEGEND), **kw}


def _fig(widget: bool, data: Sequence[Any], layout: Mapping[str, Any]) -> go.Figure:
    if not widget:
        return go.Figure(data=list(data), layout=dict(layout))
    fig = go.FigureWidget(data=list(data), layout=dict(layout))
    fig._config = dict(WIDGET_CONFIG)  # plotly's FigureWidget takes its plotly.js config only this way
    fig.layout.width = WIDTH
    return fig


def _lanes_trace() -> go.Scatter:
    """An invisible point per lane, so an idle GPU keeps its row (plotly drops categories without data)."""
    return go.Scatter(name=_LANES, x=[], y=[], mode="markers", marker={"opacity": 0}, showlegend=False,
                      hoverinfo="skip")


def _sync_traces(fig: go.Figure, keep: int, names: Sequence[str], make: Any) -> None:
    """Traces ``keep:`` are one per name, in order: rebuilt only when the names change (a new plan's sessions)."""
    if tuple(t.name for t in fig.data[keep:]) != tuple(names):
        fig.data = fig.data[:keep]
        for n in names:
            fig.add_trace(make(n))


# ------------------------------------------------------------------------------------------ builders
def utilization_figure(widget: bool = True, dark: bool | None = None) -> go.Figure:
    """Per-GPU utilization over time: one heatmap row per GPU (GPU 0 on top), columns are seconds before now."""
    hm = go.Heatmap(z=[[None]], x=[0.0], y=["GPU 0"], zmin=0.0, zmax=1.0, colorscale="Viridis",
                    colorbar={"title": {"text": "busy", "side": "right"}, "len": 0.8, "thickness": 10,
                              "tickformat": ".0%"},
                    hovertemplate="%{y}<br>%{x:.0f} s<br>utilization %{z:.0%}<extra></extra>")
    return _fig(widget, [hm], _layout("GPU utilization over time", x="time relative to now (s)", y="GPU",
                                      dark=dark, yaxis={"type": "category", "autorange": "reversed"}))


def goodput_figure(widget: bool = True, dark: bool | None = None) -> go.Figure:
    """Per session: offered rate against goodput (req/s)."""
    return _fig(widget, [go.Bar(name="offered", x=[], y=[], marker_color="#9e9e9e"),
                         go.Bar(name="goodput (within SLO)", x=[], y=[], marker_color="#2ca02c")],
                _layout("Goodput vs offered load", x="session", y="requests/s", dark=dark, barmode="group"))


def latency_figure(widget: bool = True, dark: bool | None = None) -> go.Figure:
    """Per session: p50 and p99 latency against the SLO (a tick per session)."""
    return _fig(widget, [
        go.Bar(name="p50", x=[], y=[], marker_color="#1f77b4"),
        go.Bar(name="p99", x=[], y=[], marker_color="#ff7f0e"),
        go.Scatter(name="SLO", x=[], y=[], mode="markers",
                   marker={"symbol": "line-ew-open", "size": 30, "color": "#d62728",
                           "line": {"width": 3, "color": "#d62728"}}),
    ], _layout("Latency vs SLO", x="session", y="latency (ms)", dark=dark, barmode="group"))


DROP_REASONS = ALL_REASONS


def drops_figure(widget: bool = True, reasons: Sequence[str] = DROP_REASONS, dark: bool | None = None) -> go.Figure:
    """Per session: dropped requests in the last stats window, stacked by reason."""
    return _fig(widget, [go.Bar(name=r, x=[], y=[]) for r in reasons],
                _layout("Drops by reason", x="session", y="requests dropped (last window)", dark=dark,
                        barmode="stack"))


def gantt_figure(widget: bool = True, dark: bool | None = None) -> go.Figure:
    """The last few duty cycles: one lane per GPU (every GPU, busy or idle, in a fixed order), one bar per batch
    in its session's colour. All bars are one trace (thousands of bars stay cheap to send); a legend-only entry
    per session names the colours."""
    bars = go.Bar(name="batches", orientation="h", x=[], y=[], base=[], customdata=[], showlegend=False,
                  marker={"color": [], "colorscale": PALETTE_SCALE, "cmin": 0, "cmax": len(PALETTE),
                          "line": {"width": 0.5, "color": "rgba(255,255,255,0.6)"}},
                  hovertemplate="%{y}<br>%{customdata[0]}<br>batch %{customdata[1]}<br>%{x:.1f} ms<extra></extra>")
    return _fig(widget, [_lanes_trace(), bars],
                _layout("Duty cycles (last few)", x="time (ms)", y="GPU", dark=dark, barmode="overlay",
                        yaxis={"type": "category", "autorange": "reversed"}))


def placement_figure(widget: bool = True, dark: bool | None = None) -> go.Figure:
    """One stacked bar per GPU: each session's share of the duty cycle (a trace per session, its legend entry);
    the frame behind is the GPU, labelled with its occupancy."""
    occ = go.Bar(name="occupancy", x=[], y=[], width=0.9, text=[], textposition="outside", customdata=[],
                 marker={"color": "rgba(128,128,128,0.15)", "line": {"width": 1, "color": "rgba(128,128,128,0.6)"}},
                 showlegend=False, cliponaxis=False, hovertemplate="%{x}<br>occupancy %{customdata:.0%}<extra></extra>")
    return _fig(widget, [occ], _layout("Placement: share of each GPU's duty cycle", x="GPU",
                                       y="share of the duty cycle", dark=dark, barmode="overlay",
                                       yaxis={"range": [0, 1.12], "tickformat": ".0%"}, xaxis={"type": "category"}))


# ------------------------------------------------------------------------------------------ data -> traces
def utilization_update(fig: go.Figure, lanes: Sequence[str], ages_s: Sequence[float],
                       rows: Sequence[Sequence[float | None]]) -> None:
    t = fig.data[0]
    z = np.empty((len(rows), len(ages_s)), dtype=object)  # one object array: validated at once, sent as lists
    for i, r in enumerate(rows):
        z[i, :] = finite(r)
    t.z, t.x, t.y = z, wire(ages_s), list(lanes)


def session_bars_update(goodput: go.Figure, latency: go.Figure, drops: go.Figure,
                        sessions: Sequence[Mapping[str, Any]]) -> None:
    """The per-session panels from ``Controller.state()['sessions']``-like rows (drops: counts in the window)."""
    names = tuple(s["name"] for s in sessions)

    def col(key: str, missing: float | None = None) -> list[float | None]:
        return [missing if v is None else v for v in finite(s.get(key) for s in sessions)]

    def put(tr: Any, y: list[float | None]) -> None:
        # the session names rarely change: re-sending (and re-validating) 100 strings per trace per second would
        # be most of the refresh's CPU
        if tuple(tr.x or ()) != names:
            tr.x = names
        tr.y = y

    put(goodput.data[0], col("offered_rate", 0.0))
    put(goodput.data[1], col("goodput", 0.0))
    put(latency.data[0], col("latency_p50_ms"))
    put(latency.data[1], col("latency_p99_ms"))
    put(latency.data[2], col("slo_ms"))
    drops_of = [s.get("drops") or {} for s in sessions]
    for tr in drops.data:
        put(tr, finite(d.get(tr.name, 0) for d in drops_of))


def query_row(query: Mapping[str, Any]) -> dict[str, Any]:
    """A query's end-to-end figures (``state()['queries'][i]['end_to_end']``) as a row of the per-session panels,
    named ``"<query> (end to end)"``: frames/s offered and within the SLO, p50/p99 against the query's SLO, and the
    frames its stages ended by drop reason (``ended_by`` keys are ``"stage: reason"``; failed stages draw none)."""
    e2e = query.get("end_to_end") or {}
    drops: dict[str, int] = {}
    for why, n in (e2e.get("ended_by") or {}).items():
        reason = why.rpartition(": ")[2]
        if reason in DROP_REASONS:
            drops[reason] = drops.get(reason, 0) + int(n)
    return {"name": f"{query['name']} (end to end)", "offered_rate": e2e.get("offered_rate"),
            "goodput": e2e.get("goodput"), "slo_attainment": e2e.get("slo_attainment"),
            "latency_p50_ms": e2e.get("latency_p50_ms"), "latency_p99_ms": e2e.get("latency_p99_ms"),
            "slo_ms": query.get("slo_ms"), "drops": drops}


def gantt_update(fig: go.Figure, bars: Sequence[Bar], lanes: Sequence[str] | None = None,
                 colors: Mapping[str, str] | None = None) -> None:
    """``lanes``: every GPU's lane, top to bottom (default: those with bars, sorted); ``colors``: session -> colour
    (default: a new ``session_colors`` of the sessions drawn)."""
    lanes = list(lanes) if lanes is not None else sorted({b.lane for b in bars}, key=lane_order)
    colors = session_colors(sorted({b.session for b in bars}), colors)
    _sync_traces(fig, 2, list(colors), lambda n: go.Bar(
        name=n, x=[None], y=[None], orientation="h", marker_color=colors[n], hoverinfo="skip"))
    t0 = min((b.start_s for b in bars), default=0.0)
    if tuple(fig.data[0].y or ()) != tuple(lanes):
        fig.data[0].x, fig.data[0].y = [0.0] * len(lanes), lanes
    t = fig.data[1]
    # Numbers as object arrays: plotly validates each array at once and sends it as a JSON list (a numeric numpy
    # array would go as a binary buffer, which plotly.js reads as an object: wrong colours, console warnings).
    # Colours as palette positions on a discrete colourscale: no colour string to check per bar.
    t.y = np.array([b.lane for b in bars], dtype=object)
    t.base = wire((b.start_s - t0) * 1000.0 for b in bars)
    t.x = wire(max((b.end_s - b.start_s) * 1000.0, 0.05) for b in bars)
    t.marker.color = wire(PALETTE.index(colors[b.session]) + 0.5 for b in bars)
    cd = np.empty((len(bars), 2), dtype=object)
    for i, b in enumerate(bars):
        cd[i] = (b.session, int(b.batch))
    t.customdata = cd


def placement_update(fig: go.Figure, segments: Sequence[Segment], gpus: Sequence[tuple[str, float | None]],
                     colors: Mapping[str, str] | None = None, names: Mapping[int, str] | None = None,
                     real: Sequence[float | None] | None = None) -> None:
    """``gpus``: (label, occupancy or None when idle) of every GPU, left to right, so idle GPUs keep their frame;
    ``names``: a segment's plan GPU id -> its label (default ``GPU <id>``); ``real``: each GPU's occupancy at the
    real rates when the plan keeps headroom (shown next to the planned share). A GPU over 100% shows as such:
    its frame and the axis grow to fit it."""
    label = (lambda g: names.get(g, f"GPU {g}")) if names is not None else (lambda g: f"GPU {g}")
    occ = fig.data[0]
    occs = [o or 0.0 for o in finite(o for _, o in gpus)]
    occ.x, occ.y = [g for g, _ in gpus], [max(1.0, o) for o in occs]
    occ.customdata = occs
    reals = list(real) if real is not None else [None] * len(gpus)

    def text(o: float | None, r: float | None) -> str:
        if o is None:
            return "idle"
        return f"{o:.0%}" if r is None or abs(r - o) < 0.005 else f"{o:.0%} ({r:.0%} at real rates)"

    occ.text = [text(o, r) for (_, o), r in zip(gpus, reals, strict=True)]
    top = max(occs, default=1.0)
    want = [0, max(1.12, top * 1.08 + 0.04)]
    if list(fig.layout.yaxis.range or ()) != want:
        fig.layout.yaxis.range = want
    by: dict[str, list[Segment]] = {}
    for s in segments:
        by.setdefault(s.session, []).append(s)
    colors = session_colors(by, colors)
    order = [n for n in colors if n in by]
    _sync_traces(fig, 1, order, lambda n: go.Bar(
        name=n, x=[], y=[], base=[], width=0.7, customdata=[], marker={"color": colors[n], "line": {
            "width": 1, "color": "rgba(255,255,255,0.6)"}},
        hovertemplate="%{x}<br>" + n + "<br>batch %{customdata[0]} per duty cycle "
                      "%{customdata[1]:.1f} ms<br>rate %{customdata[2]:.1f} req/s<br>share %{y:.0%}<extra></extra>"))
    base: dict[int, float] = {}
    for tr in fig.data[1:]:
        xs, ys, bs, cd = [], [], [], []
        for s in by[tr.name]:
            xs.append(label(s.gpu))
            ys.append(s.share)
            bs.append(base.get(s.gpu, 0.0))
            base[s.gpu] = bs[-1] + s.share
            cd.append([int(s.batch), *finite((s.duty_cycle_ms, s.rate))])
        tr.x, tr.y, tr.base, tr.customdata = xs, finite(ys), finite(bs), cd
        tr.marker.color = colors[tr.name]


def lane_order(name: str) -> tuple[int, str]:
    """'GPU 2' before 'GPU 10': numeric tails sort as numbers."""
    tail = name.rsplit(" ", 1)[-1]
    return (0, f"{int(tail):06d}") if tail.isdigit() else (1, name)


def static_placement(segments: Sequence[Segment], gpus: Sequence[tuple[int, float]], title: str | None = None,
                     colors: Mapping[str, str] | None = None) -> go.Figure:
    """A placement figure for a notebook cell (not a widget); ``gpus`` as (plan GPU id, occupancy)."""
    fig = placement_figure(widget=False)
    placement_update(fig, segments, [(f"GPU {g}", o) for g, o in gpus], colors)
    if title:
        fig.update_layout(title_text=title)
    return fig


def static_gantt(bars: Sequence[Bar], title: str | None = None, lanes: Sequence[str] | None = None,
                 colors: Mapping[str, str] | None = None) -> go.Figure:
    fig = gantt_figure(widget=False)
    gantt_update(fig, bars, lanes, colors)
    if title:
        fig.update_layout(title_text=title)
    return fig


def dag_figure(widget: bool = True, dark: bool | None = None) -> go.Figure:
    """A query's DAG: a marker per stage (name, model, budget below it), an arrow per parent -> child edge."""
    node = go.Scatter(x=[], y=[], mode="markers+text", text=[], textposition="bottom center", cliponaxis=False,
                      marker={"size": 24, "color": "#1f77b4"}, hoverinfo="text", showlegend=False)
    return _fig(widget, [node], _layout("Query DAG: stage budgets (DP split)", 300, dark=dark, showlegend=False,
                                        margin={"l": 16, "r": 16, "t": 48, "b": 16},
                                        xaxis={"visible": False}, yaxis={"visible": False}))


def dag_update(fig: go.Figure, pos: Mapping[str, tuple[float, float]], edges: Sequence[tuple[str, str]],
               labels: Mapping[str, str]) -> None:
    """Axis ranges leave room around every node, so no label is clipped however deep or wide the DAG."""
    names = list(pos)
    xs, ys = [pos[n][0] for n in names], [pos[n][1] for n in names]
    t = fig.data[0]
    t.x, t.y, t.text = xs, ys, [labels.get(n, n) for n in names]
    fig.layout.annotations = [
        {"x": pos[c][0], "y": pos[c][1], "ax": pos[p][0], "ay": pos[p][1], "xref": "x", "yref": "y", "axref": "x",
         "ayref": "y", "showarrow": True, "arrowhead": 3, "arrowsize": 1.2, "arrowwidth": 1.5,
         "arrowcolor": "#888", "standoff": 14, "startstandoff": 14, "text": ""}
        for p, c in edges if p in pos and c in pos]
    fig.layout.xaxis.range = [min(xs, default=0) - 0.6, max(xs, default=0) + 0.6]
    fig.layout.yaxis.range = [min(ys, default=0) - 0.9, max(ys, default=0) + 0.4]


def style(fig: go.Figure, title: str, x: str | None = None, y: str | None = None, height: int = 340,
          dark: bool | None = None, **kw: Any) -> go.Figure:
    """A notebook's own figure in the views' style: theme, a title nothing covers, axis titles, the legend."""
    fig.update_layout(**_layout(title, height, x=x, y=y, dark=dark, **kw))
    return fig
