"""Plotly figures for the dashboard and the teaching notebooks: built once, then updated in place from plain data.

Depends on plotly and the widgets' pure logic only; never on the controller or Dask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from ..batching import ALL_REASONS
from .logic import PALETTE, Bar, Segment, session_color, session_color_index

#: The session palette as a discrete colorscale: value ``i + 0.5`` is ``PALETTE[i]``.
PALETTE_SCALE = [pair for i, c in enumerate(PALETTE) for pair in ([i / len(PALETTE), c], [(i + 1) / len(PALETTE), c])]

_MARGIN = {"l": 60, "r": 20, "t": 40, "b": 40}


def _layout(title: str, height: int, **kw: Any) -> dict[str, Any]:
    return {"title": {"text": title, "font": {"size": 14}}, "height": height, "margin": _MARGIN,
            "template": "plotly_white", **kw}


def _fig(widget: bool, data: Sequence[Any], layout: Mapping[str, Any]) -> go.Figure:
    return (go.FigureWidget if widget else go.Figure)(data=list(data), layout=dict(layout))


# ------------------------------------------------------------------------------------------ builders
def utilization_figure(widget: bool = True) -> go.Figure:
    """Per-GPU utilization over time: one heatmap row per GPU, columns are seconds before now."""
    hm = go.Heatmap(z=[[0.0]], x=[0.0], y=["-"], zmin=0.0, zmax=1.0, colorscale="Viridis",
                    colorbar={"title": {"text": "util"}, "len": 0.9},
                    hovertemplate="%{y}<br>%{x:.0f} s<br>utilization %{z:.0%}<extra></extra>")
    return _fig(widget, [hm], _layout("GPU utilization (last minutes)", 300,
                                      xaxis={"title": {"text": "seconds ago"}}, yaxis={"type": "category"}))


def goodput_figure(widget: bool = True) -> go.Figure:
    """Per session: offered rate against goodput (req/s)."""
    return _fig(widget, [go.Bar(name="offered", x=[], y=[], marker_color="#c7c7c7"),
                         go.Bar(name="goodput", x=[], y=[], marker_color="#2ca02c")],
                _layout("Goodput vs offered rate (req/s)", 300, barmode="group",
                        legend={"orientation": "h", "y": 1.12, "x": 1, "xanchor": "right"}))


def latency_figure(widget: bool = True) -> go.Figure:
    """Per session: p50 and p99 latency against the SLO (a tick per session)."""
    return _fig(widget, [
        go.Bar(name="p50", x=[], y=[], marker_color="#1f77b4"),
        go.Bar(name="p99", x=[], y=[], marker_color="#ff7f0e"),
        go.Scatter(name="SLO", x=[], y=[], mode="markers",
                   marker={"symbol": "line-ew-open", "size": 36, "line": {"width": 3, "color": "#d62728"}}),
    ], _layout("Latency p50 / p99 vs SLO (ms)", 300, barmode="group",
               legend={"orientation": "h", "y": 1.12, "x": 1, "xanchor": "right"}))


DROP_REASONS = ALL_REASONS


def drops_figure(widget: bool = True, reasons: Sequence[str] = DROP_REASONS) -> go.Figure:
    """Per session: dropped requests per second, stacked by reason."""
    return _fig(widget, [go.Bar(name=r, x=[], y=[]) for r in reasons],
                _layout("Drops by reason (requests, last window)", 300, barmode="stack",
                        legend={"orientation": "h", "y": 1.12, "x": 1, "xanchor": "right"}))


def gantt_figure(widget: bool = True) -> go.Figure:
    """The last few duty cycles: one lane per GPU, one bar per batch coloured by session (batch size on hover)."""
    bar = go.Bar(orientation="h", x=[], y=[], base=[], marker={"color": [], "colorscale": PALETTE_SCALE, "cmin": 0,
                                                                "cmax": len(PALETTE), "line": {"width": 0.5,
                                                                                               "color": "#fff"}},
                 customdata=[], hovertemplate="%{y}<br>%{customdata[0]}<br>batch %{customdata[1]}"
                                              "<br>%{customdata[2]:.1f} ms<extra></extra>")
    return _fig(widget, [bar], _layout("Duty cycles (last few)", 300, barmode="overlay", showlegend=False,
                                       xaxis={"title": {"text": "ms"}}, yaxis={"type": "category"}))


def placement_figure(widget: bool = True) -> go.Figure:
    """One stacked bar per GPU: each session's share of the duty cycle; the frame behind is the GPU's occupancy."""
    occ = go.Bar(x=[], y=[], width=0.9, marker={"color": [], "colorscale": "RdYlGn_r", "cmin": 0.0, "cmax": 1.0,
                                                  "opacity": 0.25, "colorbar": {"title": {"text": "occupancy"},
                                                                                "len": 0.9}},
                 hovertemplate="%{x}<br>occupancy %{customdata:.0%}<extra></extra>", customdata=[], name="occupancy")
    seg = go.Bar(x=[], y=[], base=[], width=0.7, marker={"color": [], "line": {"width": 1, "color": "#fff"}},
                 customdata=[], name="sessions",
                 hovertemplate="%{x}<br>%{customdata[0]}<br>batch %{customdata[1]} per duty cycle "
                               "%{customdata[2]:.1f} ms<br>rate %{customdata[3]:.1f} req/s<br>share %{y:.0%}"
                               "<extra></extra>")
    return _fig(widget, [occ, seg], _layout("Placement: share of each GPU's duty cycle", 320, barmode="overlay",
                                            showlegend=False, yaxis={"range": [0, 1.05], "tickformat": ".0%"},
                                            xaxis={"type": "category"}))


# ------------------------------------------------------------------------------------------ data -> traces
def utilization_update(fig: go.Figure, lanes: Sequence[str], ages_s: Sequence[float],
                       rows: Sequence[Sequence[float | None]]) -> None:
    t = fig.data[0]
    # numpy arrays travel as binary buffers (no per-number validation or JSON): the heatmap is the biggest payload.
    z = np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=float).reshape(len(lanes), -1)
    t.z, t.x, t.y = z, np.asarray(ages_s, dtype=float), list(lanes)


def session_bars_update(goodput: go.Figure, latency: go.Figure, drops: go.Figure,
                        sessions: Sequence[Mapping[str, Any]]) -> None:
    """The per-session panels from ``Controller.state()['sessions']``-like rows (drops: counts in the window)."""
    names = tuple(s["name"] for s in sessions)

    def col(key: str) -> np.ndarray:
        return np.array([np.nan if s.get(key) is None else float(s[key]) for s in sessions], dtype=float)

    def put(tr: Any, y: np.ndarray) -> None:
        # the session names rarely change: re-sending (and re-validating) 100 strings per trace per second would
        # be most of the refresh's CPU
        if tuple(tr.x or ()) != names:
            tr.x = names
        tr.y = y

    put(goodput.data[0], np.nan_to_num(col("offered_rate")))
    put(goodput.data[1], np.nan_to_num(col("goodput")))
    put(latency.data[0], col("latency_p50_ms"))
    put(latency.data[1], col("latency_p99_ms"))
    put(latency.data[2], col("slo_ms"))
    drops_of = [s.get("drops") or {} for s in sessions]
    for tr in drops.data:
        reason = tr.name
        put(tr, np.array([float(d.get(reason, 0)) for d in drops_of], dtype=float))


def gantt_update(fig: go.Figure, bars: Sequence[Bar]) -> None:
    """Numbers go as numpy arrays and colours as palette indices: per-element validation of thousands of bars
    would otherwise dominate the refresh's CPU."""
    t0 = min((b.start_s for b in bars), default=0.0)
    start = np.fromiter((b.start_s for b in bars), float, len(bars))
    end = np.fromiter((b.end_s for b in bars), float, len(bars))
    t = fig.data[0]
    t.y = np.array([b.lane for b in bars], dtype=str)
    t.base = (start - t0) * 1000.0
    t.x = np.maximum((end - start) * 1000.0, 0.05)
    t.marker.color = np.fromiter((session_color_index(b.session) + 0.5 for b in bars), float, len(bars))
    cd = np.empty((len(bars), 3), dtype=object)
    for i, b in enumerate(bars):
        cd[i] = (b.session, b.batch, round((b.end_s - b.start_s) * 1000.0, 2))
    t.customdata = cd


def placement_update(fig: go.Figure, segments: Sequence[Segment], gpus: Sequence[tuple[int, float]]) -> None:
    """``gpus``: (id, occupancy) for every GPU, so empty GPUs still show their frame."""
    occ, seg = fig.data
    labels = [f"GPU {g}" for g, _ in gpus]
    occ.x, occ.y, occ.customdata = labels, [1.0] * len(gpus), [o for _, o in gpus]
    occ.marker.color = [min(max(o, 0.0), 1.0) for _, o in gpus]
    base: dict[int, float] = {}
    xs, ys, bs, cs, cd = [], [], [], [], []
    for s in segments:
        xs.append(f"GPU {s.gpu}")
        ys.append(s.share)
        bs.append(base.get(s.gpu, 0.0))
        base[s.gpu] = bs[-1] + s.share
        cs.append(session_color(s.session))
        cd.append([s.session, s.batch, s.duty_cycle_ms, s.rate])
    seg.x, seg.y, seg.base, seg.customdata = xs, ys, bs, cd
    seg.marker.color = cs


def static_placement(segments: Sequence[Segment], gpus: Sequence[tuple[int, float]], title: str | None = None
                     ) -> go.Figure:
    """A placement figure for a notebook cell (not a widget)."""
    fig = placement_figure(widget=False)
    placement_update(fig, segments, gpus)
    if title:
        fig.update_layout(title_text=title)
    return fig


def static_gantt(bars: Sequence[Bar], title: str | None = None) -> go.Figure:
    fig = gantt_figure(widget=False)
    gantt_update(fig, bars)
    if title:
        fig.update_layout(title_text=title)
    return fig
