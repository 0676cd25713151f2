"""The controller's compact HTML summary for notebooks (``Controller._repr_html_``), as a Dask ``Client`` shows itself.

Formatting only: reads the JSON-able ``Controller.state()`` snapshot; computes nothing.
"""

from __future__ import annotations

from html import escape
from typing import Any


def _pct(x: Any) -> str:
    return "–" if x is None else f"{float(x):.0%}"


def _num(x: Any, fmt: str = ".1f") -> str:
    return "–" if x is None else format(float(x), fmt)


def _endpoint(frontends: Any) -> str:
    """The live frontends' URLs (and how many are down), or "not serving"."""
    if not frontends:
        return "not serving"
    live = [escape(str(f.get("url"))) for f in frontends if f.get("alive")]
    down = len(frontends) - len(live)
    return ", ".join(live) + (f" ({down} down)" if down else "") if live else f"all {down} frontends down"


def render(state: dict[str, Any]) -> str:
    """A small two-column card: cluster facts on the left, GPUs and sessions as tables below."""
    c = state["cluster"]
    link = c.get("dashboard_link")
    dash = f'<a href="{escape(link)}" target="_blank">{escape(link)}</a>' if link else "–"
    facts = [
        ("Scheduler", escape(str(c.get("scheduler", "")))),
        ("Workers (GPUs)", f"{c['workers']} ({c['gpus_used']} in plan)"),
        ("Device", escape(str(c.get("device")))),
        ("Epoch", f"{c['epoch_s']:g} s, plan v{c['version']}, age {_num(c.get('plan_age_s'), '.0f')} s"
                  + (" (paused)" if c.get("paused") else "")),
        ("Dashboard", dash),
        ("Endpoint", _endpoint(c.get("frontends"))),
    ]
    auto = state.get("autoscale")
    if isinstance(auto, dict):
        facts.append(("Autoscale", "off" if not auto.get("enabled") else
                      f"target {auto.get('target')}, {auto.get('actual')} running, {auto.get('needed')} GPUs needed"))
    for model, why in sorted((c.get("model_warnings") or {}).items()):
        facts.append(("Warning", f"<span style='color:var(--jp-error-color1, #d62728)'>model {escape(str(model))}: "
                                 f"{escape(str(why))}</span>"))
    rows = "".join(f"<tr><th style='text-align:left'>{k}</th><td style='text-align:left'>{v}</td></tr>"
                   for k, v in facts)
    gpu_rows = "".join(
        f"<tr><td>{escape(str(g['gpu']))}</td><td>{escape(g['worker'])}</td><td>{_pct(g.get('utilization'))}</td>"
        f"<td>{_num(g.get('duty_cycle_ms'))}</td><td>{escape(', '.join(g.get('sessions', [])))}</td></tr>"
        for g in state["gpus"])
    sess_rows = "".join(
        f"<tr><td>{escape(s['name'])}</td><td>{escape(s['model'])}</td><td>{_num(s['slo_ms'], 'g')}</td>"
        f"<td>{_num(s.get('rate'))}{' (measured)' if s.get('measured') else ''}</td>"
        f"<td>{_num(s.get('goodput'))}</td><td>{_pct(s.get('slo_attainment'))}</td>"
        f"<td>{escape(', '.join(str(g) for g in s.get('gpus', [])))}</td></tr>"
        for s in state["sessions"])
    q_rows = "".join(
        f"<tr><td>{escape(q['name'])}</td><td>{_num(q['slo_ms'], 'g')}</td><td>"
        + escape(", ".join(f"{st['name']} {st['budget_ms']:.0f} ms" for st in q.get("stages", []))) + "</td></tr>"
        for q in state["queries"])
    th = "style='text-align:left'"
    parts = [
        "<div class='nexus-lab-controller'>",
        "<h3 style='margin:0'>nexus_lab Controller</h3>",
        f"<table>{rows}</table>",
        f"<details open><summary>GPUs ({len(state['gpus'])})</summary><table><tr><th {th}>GPU</th>"
        f"<th {th}>worker</th><th>util</th><th>duty ms</th><th {th}>sessions</th></tr>{gpu_rows}</table></details>",
        f"<details open><summary>Sessions ({len(state['sessions'])})</summary><table><tr><th {th}>session</th>"
        f"<th {th}>model</th><th>SLO ms</th><th>rate/s</th><th>goodput/s</th><th>within SLO</th><th>GPUs</th></tr>"
        f"{sess_rows}</table></details>",
    ]
    if state["queries"]:
        parts.append(f"<details><summary>Queries ({len(state['queries'])})</summary><table><tr><th {th}>query</th>"
                     f"<th>SLO ms</th><th {th}>stage budgets</th></tr>{q_rows}</table></details>")
    parts.append("</div>")
    return "".join(parts)
