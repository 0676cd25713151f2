"""The service in the dashboard: the frontends serving the endpoint (URL, worker, alive, request rate, errors by
status), what autoscaling asks for and has, and a warning per model running with random weights.

Pure: ``state()``'s ``cluster.frontends``, ``autoscale`` and ``cluster.model_warnings`` in, rows and one HTML block
out (``service_html``); no ipywidgets, no controller. Colours are the notebook's own (inherited text, translucent
grey rules) or JupyterLab's theme variables with a fallback that reads on light and dark alike.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["AutoscaleLine", "FrontendRow", "autoscale_line", "frontend_rows", "model_warnings", "service_html"]

#: Warnings and dead frontends: JupyterLab's error colour where the theme defines it, else a red that reads on both.
_WARN = "var(--jp-error-color1, #d62728)"
_OK = "var(--jp-success-color1, #2ca02c)"
_RULE = "1px solid rgba(128,128,128,0.3)"


@dataclass(frozen=True)
class FrontendRow:
    """One frontend as the table shows it; ``rate`` and ``inflight`` are None for a dead one (its last published
    figures are stale)."""

    name: str
    url: str
    worker: str
    alive: bool
    rate: float | None
    requests: int
    inflight: int | None
    errors: tuple[tuple[str, int], ...]  # (HTTP status, count), by status
    restarts: int

    @property
    def error_total(self) -> int:
        return sum(n for _, n in self.errors)


def _int(x: Any) -> int:
    try:
        return int(x)
    except (TypeError, ValueError):
        return 0


def frontend_rows(state: Mapping[str, Any]) -> list[FrontendRow]:
    """The rows of the frontends table, in the order ``serve`` started them; [] when nothing is served."""
    rows = []
    for f in (state.get("cluster") or {}).get("frontends") or ():
        alive = bool(f.get("alive"))
        rate = f.get("rate")
        errors = tuple(sorted(((str(k), _int(v)) for k, v in (f.get("errors") or {}).items()), key=lambda kv: kv[0]))
        rows.append(FrontendRow(str(f.get("name", "")), str(f.get("url", "")), str(f.get("worker", "")), alive,
                                float(rate) if alive and isinstance(rate, int | float) else None,
                                _int(f.get("requests")), _int(f.get("inflight")) if alive else None, errors,
                                _int(f.get("restarts"))))
    return rows


@dataclass(frozen=True)
class AutoscaleLine:
    """What autoscaling asks for: ``enabled``; ``target`` and ``actual`` worker counts, ``needed`` GPUs (None when
    not yet known), ``why`` its last decision, ``acts`` whether a cluster manager carries it out."""

    enabled: bool
    actual: int | None
    target: int | None = None
    needed: int | None = None
    minimum: int | None = None
    maximum: int | None = None
    why: str = ""
    acts: bool = True
    draining: tuple[str, ...] = ()  # workers being drained before retirement (``state()["gpus"][i]["draining"]``)

    def text(self) -> str:
        if not self.enabled:
            return f"autoscaling off ({_count(self.actual)} workers)"
        parts = [f"autoscale: target {_count(self.target)} workers, {_count(self.actual)} running",
                 f"{_count(self.needed)} GPUs needed", f"bounds [{_count(self.minimum)}, {_count(self.maximum)}]"]
        if not self.acts:
            parts.append("no cluster manager: reported only")
        if self.why:
            parts.append(self.why)
        if self.draining:
            parts.append(f"draining {', '.join(self.draining)}")
        return ", ".join(parts)


def _count(x: Any) -> str:
    return "?" if x is None else str(x)


def _opt_int(x: Any) -> int | None:
    return None if x is None or isinstance(x, bool) else _int(x)


def autoscale_line(state: Mapping[str, Any]) -> AutoscaleLine | None:
    """``state()["autoscale"]`` as a line; None when the controller has no autoscaling at all (the simulator)."""
    a = state.get("autoscale")
    if not isinstance(a, Mapping):
        return None
    if not a.get("enabled"):
        return AutoscaleLine(False, _opt_int(a.get("actual")))
    draining = tuple(str(g.get("worker")) for g in state.get("gpus") or () if g.get("draining"))
    return AutoscaleLine(True, _opt_int(a.get("actual")), _opt_int(a.get("target")), _opt_int(a.get("needed")),
                         _opt_int(a.get("minimum")), _opt_int(a.get("maximum")), str(a.get("why") or ""),
                         bool(a.get("cluster_manager", True)), draining)


def model_warnings(state: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(model, why) for each model running with random weights (or not registered on a worker), by model name."""
    warns = (state.get("cluster") or {}).get("model_warnings") or {}
    return sorted((str(m), str(w)) for m, w in warns.items())


def _errors_cell(row: FrontendRow) -> str:
    if not row.errors:
        return "–"
    return ", ".join(f"{html.escape(k)}: {n}" for k, n in row.errors)


def _frontends_table(rows: list[FrontendRow]) -> str:
    th = f"style='text-align:left;padding:1px 8px;border-bottom:{_RULE}'"
    td = "style='text-align:left;padding:1px 8px'"
    tdr = "style='text-align:right;padding:1px 8px'"
    head = "".join(f"<th {th}>{h}</th>" for h in ("frontend", "URL", "worker", "alive", "req/s", "requests",
                                                   "in flight", "errors by status"))
    body = []
    for r in rows:
        alive = (f"<span style='color:{_OK}'>yes</span>" if r.alive else f"<span style='color:{_WARN}'>no</span>")
        if r.restarts:
            alive += f" (restarted {r.restarts}x)"
        err = _errors_cell(r)
        if r.error_total:
            err = f"<span style='color:{_WARN}'>{err}</span>"
        body.append(f"<tr><td {td}>{html.escape(r.name)}</td><td {td}>{html.escape(r.url)}</td>"
                    f"<td {td}>{html.escape(r.worker)}</td><td {td}>{alive}</td>"
                    f"<td {tdr}>{'–' if r.rate is None else f'{r.rate:.1f}'}</td><td {tdr}>{r.requests}</td>"
                    f"<td {tdr}>{'–' if r.inflight is None else r.inflight}</td><td {td}>{err}</td></tr>")
    return (f"<table class='nexus-frontends' style='border-collapse:collapse;font-size:12px;color:inherit'>"
            f"<tr>{head}</tr>{''.join(body)}</table>")


def service_html(state: Mapping[str, Any]) -> str:
    """The dashboard's service block: the frontends table ("not serving" when the endpoint is off), the autoscale
    line (left out when the controller has no autoscaling), one warning per model with random weights. Empty
    when there is none of the three (the simulator)."""
    parts = []
    for model, why in model_warnings(state):
        parts.append(f"<div class='nexus-model-warning' style='color:{_WARN}'>&#9888; model "
                     f"<b>{html.escape(model)}</b>: {html.escape(why)}</div>")
    line = autoscale_line(state)
    if line is not None:
        parts.append(f"<div class='nexus-autoscale'>{html.escape(line.text())}</div>")
    cluster = state.get("cluster") or {}
    rows = frontend_rows(state)
    if rows:
        parts.append(_frontends_table(rows))
    elif "frontends" in cluster:
        parts.append("<div class='nexus-frontends-none' style='opacity:0.7'>endpoint: not serving</div>")
    if not parts:
        return ""
    return "<div class='nexus-service' style='font-size:12px;margin:2px 0 6px 0'>" + "".join(parts) + "</div>"
