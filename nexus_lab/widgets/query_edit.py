"""The query editor: one query's DAG (stages: model, parent, gamma), SLO and rate, with each stage's budget under the
planner's DP split against the even split and the GPUs each costs; Apply deploys it.

Widgets only: ``controller.preview.preview_query`` checks and splits; the controller applies.
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as W

from ..controller.preview import QueryPreview, preview_query
from ..controller.protocol import ControllerView
from ..planner import Plan
from ..workload import WorkloadError
from . import figures
from .edit_common import css, msg, plain, widget_of
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
        self.name = W.Text(value=q.name if q else (name or "query"), description="name",
                           layout=W.Layout(width="220px"))
        self.slo = W.FloatText(value=q.slo_ms if q else 400.0, description="SLO (ms)", layout=W.Layout(width="200px"))
        self.rate = W.FloatText(value=q.rate if q else 10.0, description="rate (req/s)",
                                style={"description_width": "80px"}, layout=W.Layout(width="220px"))
        self.stages: list[dict[str, Any]] = [{"name": st.name, "model": st.model,
                                              "parent": st.parents[0] if st.parents else None, "gamma": st.gamma}
                                             for st in q.stages] if q else []
        if not self.stages:
            self.stages.append({"name": self._fresh(self.models[0] if self.models else "stage"),
                                "model": self.models[0] if self.models else "", "parent": None, "gamma": 1.0})
        self.last_preview: QueryPreview | None = None
        self.rows = W.VBox()
        self.graph = figures.dag_figure()
        self.graph.layout.width = 420
        self.summary = W.HTML()
        self.status = W.HTML()  # the one message line: a new message replaces the last
        self.add_button = W.Button(description="Add stage", icon="plus")
        self.apply_button = W.Button(description="Apply", button_style="primary", icon="check", disabled=True)
        self.add_button.on_click(lambda _: self.add_stage())
        self.apply_button.on_click(lambda _: self.apply())
        for w in (self.name, self.slo, self.rate):
            w.observe(lambda _ch: self.preview(), names="value")
        help_ = W.HTML("<small>Each stage runs a model on its parent's output; <i>fan-out</i> (gamma) is how many "
                       "requests one parent request makes for this stage (1.5: three cars per two frames).</small>")
        self.widget = W.VBox([W.HBox([self.name, self.slo, self.rate]), help_, self.rows,
                              W.HBox([self.add_button, self.apply_button]), self.status,
                              W.Box([self.graph, self.summary], layout=W.Layout(display="flex",
                                                                                flex_flow="row wrap"))])
        self.widget.add_class("nexus-query-editor")
        self._render_rows()
        self.preview()

    def _fresh(self, base: str) -> str:
        names = {s["name"] for s in getattr(self, "stages", ())}
        return next(n for n in (base, *(f"{base}-{i}" for i in range(2, len(names) + 3))) if n not in names)

    # edits (called by the row widgets and by tests)
    def add_stage(self, name: str | None = None, model: str | None = None, parent: str | None = None,
                  gamma: float = 1.0) -> QueryPreview:
        """A new stage (default: named after its model, under the last stage); rename it in its row."""
        model = model or (self.models[0] if self.models else "")
        parent = parent if parent is not None else (self.stages[-1]["name"] if self.stages else None)
        self.stages.append({"name": name or self._fresh(model), "model": model, "parent": parent, "gamma": gamma})
        self._render_rows()
        return self.preview()

    def remove_stage(self, name: str) -> QueryPreview:
        """Remove a stage; its children hang from its parent."""
        gone = self._stage(name, "remove_stage")
        self.stages = [s for s in self.stages if s is not gone]
        for s in self.stages:
            if s["parent"] == name:
                s["parent"] = gone["parent"]
        self._render_rows()
        return self.preview()

    def rename_stage(self, old: str, new: str) -> QueryPreview | None:
        """Rename a stage (its children follow); an empty or taken name is refused with a message."""
        st = self._stage(old, "rename_stage")
        new = new.strip()
        if new == old:
            return self.last_preview
        if not new or any(s["name"] == new for s in self.stages):
            self.status.value = msg(f"A stage needs a name of its own: {new!r} is empty or already taken." if new
                                    else "A stage needs a name: the name box is empty.", False)
            self._render_rows()
            return None
        st["name"] = new
        for s in self.stages:
            if s["parent"] == old:
                s["parent"] = new
        self._render_rows()
        return self.preview()

    def set_stage(self, name: str, **fields: Any) -> QueryPreview:
        st = self._stage(name, "set_stage")
        bad = set(fields) - {"model", "parent", "gamma"}
        if bad:
            raise ValueError(f"set_stage: fields must be model, parent or gamma, got {sorted(bad)}")
        st.update(fields)
        return self.preview()

    def _stage(self, name: str, where: str) -> dict[str, Any]:
        st = next((s for s in self.stages if s["name"] == name), None)
        if st is None:
            raise WorkloadError(f"{where}.name: unknown stage {name!r}")
        return st

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
            label = W.Text(value=s["name"], description="stage", continuous_update=False,
                           layout=W.Layout(width="200px"))
            label.add_class(f"nexus-stage-{css(s['name'])}")
            model = W.Dropdown(options=self.models, value=s["model"] if s["model"] in self.models else None,
                               description="model", layout=W.Layout(width="220px"))
            parent = W.Dropdown(options=[("(none: the root)", "")] + [(n, n) for n in names if n != s["name"]],
                                value=s["parent"] if s["parent"] in names else "", description="parent",
                                layout=W.Layout(width="240px"))
            gamma = W.FloatText(value=s["gamma"], description="fan-out", layout=W.Layout(width="160px"))
            rm = W.Button(description="remove", layout=W.Layout(width="80px"))
            label.observe(lambda ch, n=s["name"]: self.rename_stage(n, ch["new"]), names="value")
            model.observe(lambda ch, n=s["name"]: self.set_stage(n, model=ch["new"]), names="value")
            parent.observe(lambda ch, n=s["name"]: self.set_stage(n, parent=ch["new"] or None), names="value")
            gamma.observe(lambda ch, n=s["name"]: self.set_stage(n, gamma=ch["new"]), names="value")
            rm.on_click(lambda _b, n=s["name"]: self.remove_stage(n))
            rows.append(W.HBox([label, model, parent, gamma, rm], layout=W.Layout(flex_flow="row wrap")))
        self.rows.children = rows

    def changed(self) -> bool:
        """Whether the editor differs from the query as the controller runs it (Apply does nothing otherwise)."""
        q = next((x for x in self.ctl.workload.queries if x.name == self.name.value), None)
        if q is None:
            return True
        spec = [{"name": st.name, "model": st.model, "gamma": st.gamma,
                 **({"parent": st.parents[0]} if st.parents else {})} for st in q.stages]
        return (self.slo.value, self.rate.value, spec) != (q.slo_ms, q.rate, self._spec())

    def preview(self) -> QueryPreview:
        pv = preview_query(self.ctl.workload, self.name.value, self.slo.value, self._spec(), self.rate.value,
                           profile_set=self.ctl.editor.profile_set, max_gpus=self.ctl.gpus, what="cluster size")
        self.last_preview = pv
        self._draw(pv)
        self.apply_button.disabled = True
        if not pv.ok:
            self.summary.value = ""
            self.status.value = msg(plain(pv.error), False)
            return pv
        even = (f"{pv.even_gpu_cost:.2f} GPUs with an even split" if pv.even_gpu_cost is not None else
                "an even split cannot serve it at this SLO (some stage would get less time than it needs)")
        self.summary.value = (
            "<table><tr><th>stage</th><th>budget (DP split)</th><th>budget (even split)</th></tr>" + "".join(
                f"<tr><td>{html.escape(n)}</td><td>{pv.budgets[n]:.1f} ms</td><td>{pv.even_budgets[n]:.1f} ms"
                f"</td></tr>" for n in pv.budgets) +
            f"</table><p>Cost: <b>{pv.gpu_cost:.2f} GPUs</b> with the planner's split; {html.escape(even)}.</p>")
        if self.ctl.closed:
            self.status.value = msg("This controller is closed: start a new one to deploy queries.", False)
        elif not self.changed():
            self.status.value = msg("This is the query that runs now: change it to deploy.", None)
        else:
            self.status.value = ""
            self.apply_button.disabled = False
        return pv

    def _draw(self, pv: QueryPreview) -> None:
        pos = dag_layout(self._spec())
        model = {s["name"]: s["model"] for s in self.stages}
        labels = {n: f"<b>{n}</b><br>{model.get(n, '')}" + (f"<br>{pv.budgets[n]:.0f} ms" if n in pv.budgets else "")
                  for n in pos}
        edges = [(s["parent"], s["name"]) for s in self.stages if s["parent"]]
        with self.graph.batch_update():
            figures.dag_update(self.graph, pos, edges, labels)

    def apply(self) -> Plan | None:
        pv = self.preview()
        if self.apply_button.disabled:
            return None
        name = self.name.value
        try:
            if name in {q.name for q in self.ctl.workload.queries}:
                self.ctl.remove(name)
            self.ctl.add_query(name, self.slo.value, self._spec(), rate=self.rate.value)
            plan = self.ctl.apply()
        except Exception as exc:  # shown inline; the preview already passed the same checks
            self.status.value = msg(f"Apply failed: {plain(exc)}", False)
            return None
        self.apply_button.disabled = True
        self.status.value = msg(f"Deployed {name}: plan v{self.ctl.version} runs on {plan.num_gpus} GPUs, "
                                f"{pv.gpu_cost:.2f} of them for this query.", True)
        return plan


def query_editor(ctl: ControllerView, name: str | None = None) -> W.VBox:
    return widget_of(QueryEditor(ctl, name))
