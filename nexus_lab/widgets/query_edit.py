"""The query editor: one query's DAG (stages: model, parent, gamma), SLO and rate, with each stage's budget under the
planner's DP split against the even split and the GPUs each costs; Apply deploys it.

Widgets only: ``controller.preview.preview_query`` checks and splits; the controller applies.
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as W
import plotly.graph_objects as go

from ..controller.preview import QueryPreview, preview_query
from ..controller.protocol import ControllerView
from ..planner import Plan
from ..workload import WorkloadError
from . import figures
from .edit_common import msg, widget_of
from .logic import dag_layout

__all__ = ["QueryEditor", "query_editor"]


class QueryEditor:
    """Edit one query's DAG (stages: model, parent, gamma), its SLO and rate; shows each stage's budget under the
    planner's DP split (against the even split) and the GPUs it costs; Apply deploys it."""

    def __init__(self, ctl: ControllerView, name: str | None = None) -> None:
        self.ctl = ctl
        wl = ctl.workload
        q = next((x for x in wl.queries if x.name == name), wl.queries[0] if wl.queries and name is None else None)
        self.models = sorted(wl.models)
        self.name = W.Text(value=q.name if q else (name or "query"), description="name")
        self.slo = W.FloatText(value=q.slo_ms if q else 400.0, description="SLO ms")
        self.rate = W.FloatText(value=q.rate if q else 10.0, description="rate /s")
        self.stages: list[dict[str, Any]] = ([{"name": st.name, "model": st.model,
                                               "parent": st.parents[0] if st.parents else None, "gamma": st.gamma}
                                              for st in q.stages] if q else
                                             [{"name": "stage1", "model": self.models[0] if self.models else "",
                                               "parent": None, "gamma": 1.0}])
        self.last_preview: QueryPreview | None = None
        self.rows = W.VBox()
        self.graph = go.FigureWidget(layout=figures._layout("Query DAG: stage budgets (DP split)", 300,
                                                            showlegend=False, xaxis={"visible": False},
                                                            yaxis={"visible": False}))
        self.graph.layout.width = 520
        self.summary = W.HTML()
        self.status = W.HTML()
        self.add_button = W.Button(description="Add stage", icon="plus")
        self.apply_button = W.Button(description="Apply", button_style="primary", icon="check")
        self.add_button.on_click(lambda _: self.add_stage())
        self.apply_button.on_click(lambda _: self.apply())
        for w in (self.name, self.slo, self.rate):
            w.observe(lambda _ch: self.preview(), names="value")
        self.widget = W.VBox([W.HBox([self.name, self.slo, self.rate]), self.rows,
                              W.HBox([self.add_button, self.apply_button]), W.HBox([self.graph, self.summary]),
                              self.status])
        self.widget.add_class("nexus-query-editor")
        self._render_rows()
        self.preview()

    # edits (called by the row widgets and by tests)
    def add_stage(self, name: str | None = None, model: str | None = None, parent: str | None = None,
                  gamma: float = 1.0) -> QueryPreview:
        names = {s["name"] for s in self.stages}
        name = name or next(f"stage{i}" for i in range(1, len(names) + 2) if f"stage{i}" not in names)
        parent = parent if parent is not None else (self.stages[-1]["name"] if self.stages else None)
        self.stages.append({"name": name, "model": model or (self.models[0] if self.models else ""),
                            "parent": parent, "gamma": gamma})
        self._render_rows()
        return self.preview()

    def remove_stage(self, name: str) -> QueryPreview:
        """Remove a stage; its children hang from its parent."""
        gone = next((s for s in self.stages if s["name"] == name), None)
        if gone is None:
            raise WorkloadError(f"remove_stage.name: unknown stage {name!r}")
        self.stages = [s for s in self.stages if s is not gone]
        for s in self.stages:
            if s["parent"] == name:
                s["parent"] = gone["parent"]
        self._render_rows()
        return self.preview()

    def set_stage(self, name: str, **fields: Any) -> QueryPreview:
        st = next((s for s in self.stages if s["name"] == name), None)
        if st is None:
            raise WorkloadError(f"set_stage.name: unknown stage {name!r}")
        bad = set(fields) - {"model", "parent", "gamma"}
        if bad:
            raise ValueError(f"set_stage: fields must be model, parent or gamma, got {sorted(bad)}")
        st.update(fields)
        return self.preview()

    def _spec(self) -> list[dict[str, Any]]:
        out = []
        for s in self.stages:
            d = {"name": s["name"], "model": s["model"], "gamma": s["gamma"]}
            if s["parent"]:
                d["parent"] = s["parent"]
            out.append(d)
        return out

    def _render_rows(self) -> None:
        rows = []
        names = [s["name"] for s in self.stages]
        for s in self.stages:
            model = W.Dropdown(options=self.models, value=s["model"] if s["model"] in self.models else None,
                               description=s["name"], layout=W.Layout(width="260px"))
            parent = W.Dropdown(options=[("(root)", "")] + [(n, n) for n in names if n != s["name"]],
                                value=s["parent"] if s["parent"] in names else "", description="parent",
                                layout=W.Layout(width="220px"))
            gamma = W.FloatText(value=s["gamma"], description="gamma", layout=W.Layout(width="160px"))
            rm = W.Button(description="remove", layout=W.Layout(width="80px"))
            model.observe(lambda ch, n=s["name"]: self.set_stage(n, model=ch["new"]), names="value")
            parent.observe(lambda ch, n=s["name"]: self.set_stage(n, parent=ch["new"] or None), names="value")
            gamma.observe(lambda ch, n=s["name"]: self.set_stage(n, gamma=ch["new"]), names="value")
            rm.on_click(lambda _b, n=s["name"]: self.remove_stage(n))
            rows.append(W.HBox([model, parent, gamma, rm]))
        self.rows.children = rows

    def preview(self) -> QueryPreview:
        pv = preview_query(self.ctl.workload, self.name.value, self.slo.value, self._spec(), self.rate.value,
                           profile_set=self.ctl.editor.profile_set)
        self.last_preview = pv
        self._draw(pv)
        if pv.ok:
            self.summary.value = (
                "<table><tr><th>stage</th><th>DP budget</th><th>even</th></tr>" + "".join(
                    f"<tr><td>{html.escape(n)}</td><td>{pv.budgets[n]:.1f} ms</td><td>{pv.even_budgets[n]:.1f} ms"
                    f"</td></tr>" for n in pv.budgets) +
                f"</table><p>GPU cost: <b>{pv.gpu_cost:.2f}</b> (DP split) vs "
                f"{pv.even_gpu_cost if pv.even_gpu_cost is not None else float('inf'):.2f} (even split)</p>")
            self.status.value = ""
            self.apply_button.disabled = False
        else:
            self.summary.value = ""
            self.status.value = msg(f"refused: {pv.error}", False)
            self.apply_button.disabled = True
        return pv

    def _draw(self, pv: QueryPreview) -> None:
        pos = dag_layout(self._spec())
        ex, ey = [], []
        for s in self.stages:
            if s["parent"] in pos and s["name"] in pos:
                (x0, y0), (x1, y1) = pos[s["parent"]], pos[s["name"]]
                ex += [x0, x1, None]
                ey += [y0, y1, None]
        names = [n for n in pos]
        labels = [f"{n}<br>{next(s['model'] for s in self.stages if s['name'] == n)}"
                  + (f"<br>{pv.budgets[n]:.0f} ms" if n in pv.budgets else "") for n in names]
        with self.graph.batch_update():
            self.graph.data = []
            self.graph.add_scatter(x=ex, y=ey, mode="lines", line={"color": "#999", "width": 2}, hoverinfo="skip")
            self.graph.add_scatter(x=[pos[n][0] for n in names], y=[pos[n][1] for n in names], mode="markers+text",
                                   text=labels, textposition="bottom center",
                                   marker={"size": 26, "color": "#1f77b4"}, hoverinfo="text")

    def apply(self) -> Plan | None:
        pv = self.preview()
        if not pv.ok:
            return None
        name = self.name.value
        try:
            if name in {q.name for q in self.ctl.workload.queries}:
                self.ctl.remove(name)
            self.ctl.add_query(name, self.slo.value, self._spec(), rate=self.rate.value)
            plan = self.ctl.apply()
        except Exception as exc:  # shown inline; the preview already passed the same checks
            self.status.value = msg(f"apply failed: {exc}", False)
            return None
        self.status.value = msg(f"deployed {name}: plan v{self.ctl.version} on "
                                 f"{plan.num_gpus} GPUs", True)
        return plan


def query_editor(ctl: ControllerView, name: str | None = None) -> W.VBox:
    return widget_of(QueryEditor(ctl, name))
