"""The editors: SLO/rate table, query DAG and manual placement, each with a live preview and an Apply button.

Widgets only: values are checked by the workload editor, plans made by the planner and judged by its
``validate`` (through ``logic``); the controller applies them. No constraint is re-derived here.
"""

from __future__ import annotations

import html
import weakref
from typing import Any

import ipywidgets as W
import plotly.graph_objects as go

from ..controller.preview import Preview, QueryPreview, preview_edits, preview_query
from ..planner import Plan
from ..planner.manual import edit_placement, placement_violations
from ..workload import WorkloadError
from . import figures
from .logic import dag_layout, placement_grid, placement_segments, session_gpus

__all__ = ["PlacementEditor", "QueryEditor", "SloEditor", "placement_editor", "query_editor", "slo_editor"]


def _profile_set(ctl: Any) -> str | None:
    return getattr(getattr(ctl, "editor", None), "profile_set", None)


def _cluster_gpus(ctl: Any) -> int | None:
    n = getattr(ctl, "gpus", None)
    if isinstance(n, int):
        return n
    try:
        return len(ctl._workers())
    except Exception:  # a controller without workers to count: plan without a cap
        return None


def _msg(text: str, ok: bool) -> str:
    color = "#2ca02c" if ok else "#d62728"
    return f"<span class='nexus-msg' style='color:{color}'>{html.escape(text)}</span>"


def _float_or_none(text: str) -> Any:
    """The text of a rate cell: '' or 'measured' -> None (measure it), else the number; bad text stays text so the
    workload editor names the field and the allowed range."""
    t = text.strip()
    if t in ("", "measured", "auto"):
        return None
    try:
        return float(t)
    except ValueError:
        return t


def _follow(ctl: Any, editor: Any) -> None:
    """Keep ``editor`` in step with the cluster: ``editor.on_plan(version)`` after every applied plan (the epoch
    loop's re-plans too), until its widget is closed. Holds the editor weakly."""
    subscribe = getattr(ctl, "on_plan", None)
    if not callable(subscribe):  # a controller-like object without plan notifications: the editor stays static
        return
    ref = weakref.ref(editor)

    def listener(_plan: Plan, version: int) -> None:
        ed = ref()
        if ed is not None:
            ed.on_plan(version)

    unsubscribe = subscribe(listener)
    editor.widget.observe(lambda ch: unsubscribe() if ch["new"] is None else None, names="comm")


# ------------------------------------------------------------------------------------------ SLO editor
class SloEditor:
    """One row per session (model, SLO, rate, current GPUs); edits preview the plan, Apply pushes it."""

    def __init__(self, ctl: Any) -> None:
        self.ctl = ctl
        self.edits: dict[str, dict[str, Any]] = {}
        self.last_preview: Preview | None = None
        self.status = W.HTML()
        self.preview_html = W.HTML()
        self.apply_button = W.Button(description="Apply", button_style="primary", icon="check")
        self.reset_button = W.Button(description="Reset")
        self.apply_button.add_class("nexus-apply")
        self.apply_button.on_click(lambda _: self.apply())
        self.reset_button.on_click(lambda _: self.reload())
        self.rows = W.VBox()
        self.slo_inputs: dict[str, W.FloatText] = {}
        self.rate_inputs: dict[str, W.Text] = {}
        self.widget = W.VBox([W.HTML("<b>Sessions</b> (SLO ms, rate req/s; empty rate = measured)"), self.rows,
                              self.preview_html, W.HBox([self.apply_button, self.reset_button]), self.status])
        self.widget.add_class("nexus-slo-editor")
        self.reload()
        _follow(ctl, self)

    def on_plan(self, version: int) -> None:
        """The cluster re-planned: without pending edits the rows show the new placement; with edits, the preview
        is recomputed against the plan that now runs (the edits stay)."""
        if self.edits:
            self.preview()
            self.status.value = _msg(f"the cluster re-planned (plan v{version}); the preview above is against it",
                                     True)
        else:
            self.reload()

    def reload(self) -> None:
        """Rebuild the rows from the controller (after Apply, or to drop unapplied edits)."""
        self.edits.clear()
        wl = self.ctl.workload
        where = session_gpus(self.ctl.current_plan)
        head = W.HBox([W.HTML(f"<b>{t}</b>", layout=W.Layout(width=w)) for t, w in
                       (("session", "180px"), ("model", "110px"), ("SLO ms", "110px"), ("rate", "110px"),
                        ("GPUs", "120px"))])
        rows = [head]
        self.slo_inputs, self.rate_inputs = {}, {}
        measured = getattr(getattr(self.ctl, "editor", None), "measured", set())
        for s in wl.sessions:
            slo = W.FloatText(value=s.slo_ms, layout=W.Layout(width="110px"))
            rate = W.Text(value="" if s.name in measured else f"{s.rate:g}", layout=W.Layout(width="110px"))
            slo.add_class(f"nexus-slo-{_css(s.name)}")
            rate.add_class(f"nexus-rate-{_css(s.name)}")
            slo.observe(lambda ch, n=s.name: self.set_value(n, "slo_ms", ch["new"]), names="value")
            rate.observe(lambda ch, n=s.name: self.set_value(n, "rate", _float_or_none(ch["new"])), names="value")
            self.slo_inputs[s.name], self.rate_inputs[s.name] = slo, rate
            gpus = ", ".join(str(g) for g in where.get(s.name, [])) or "-"
            rows.append(W.HBox([W.Label(s.name, layout=W.Layout(width="180px")),
                                W.Label(s.model, layout=W.Layout(width="110px")), slo, rate,
                                W.Label(gpus, layout=W.Layout(width="120px"))]))
        self.rows.children = rows
        self.preview_html.value = ""
        self.apply_button.disabled = True

    def set_value(self, session: str, field: str, value: Any) -> Preview:
        """Record one edit (``slo_ms`` or ``rate``) and re-preview."""
        if field not in ("slo_ms", "rate"):
            raise ValueError(f"field: must be 'slo_ms' or 'rate', got {field!r}")
        self.edits.setdefault(session, {})[field] = value
        return self.preview()

    def preview(self) -> Preview:
        """The plan the edits would give: GPUs before -> after and the sessions that move, or the refusal."""
        wl = self.ctl.workload
        before = self.ctl.current_plan
        pv = preview_edits(wl, self.edits, before=before if before is not None else None,
                           policy=getattr(self.ctl, "policy", "nexus"), gpus=_cluster_gpus(self.ctl),
                           profile_set=_profile_set(self.ctl), fill=getattr(self.ctl, "fill", 1.0))
        self.last_preview = pv
        if not pv.ok:
            self.preview_html.value = _msg(f"refused: {pv.error}", False)
            self.apply_button.disabled = True
        else:
            frac = pv.plan.rate_fraction if pv.plan is not None else 1.0
            tail = "" if frac >= 1.0 else f" (cluster too small: {frac:.0%} of every rate)"
            moved = ", ".join(pv.moved) or "none"
            self.preview_html.value = (f"<span class='nexus-preview'>GPUs {pv.before_gpus} &rarr; {pv.after_gpus}"
                                       f"{html.escape(tail)}; sessions that move: {html.escape(moved)}</span>")
            self.apply_button.disabled = not self.edits
        return pv

    def apply(self) -> Plan | None:
        """Push the edits to the controller and apply; refused edits leave the controller untouched."""
        pv = self.preview()
        if not pv.ok:
            self.status.value = _msg(f"not applied: {pv.error}", False)
            return None
        for name, change in self.edits.items():
            try:
                if "slo_ms" in change:
                    self.ctl.set_slo(name, change["slo_ms"])
                if "rate" in change:
                    self.ctl.set_rate(name, change["rate"])
            except WorkloadError as exc:
                self.status.value = _msg(f"not applied: {exc}", False)
                return None
        try:
            plan = self.ctl.apply()
        except Exception as exc:  # a backend refusing its part: shown, the rows show what runs
            self.status.value = _msg(f"apply failed: {exc}", False)
            self.reload()
            return None
        self.status.value = _msg(f"applied: plan v{getattr(self.ctl, 'version', '?')} on {plan.num_gpus} GPUs", True)
        self.reload()
        return plan


def _css(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name)


def slo_editor(ctl: Any) -> W.VBox:
    """The SLO/rate table of ``ctl`` as a widget; its ``SloEditor`` is ``.editor``."""
    ed = SloEditor(ctl)
    ed.widget.editor = ed
    return ed.widget


# ------------------------------------------------------------------------------------------ query editor
class QueryEditor:
    """Edit one query's DAG (stages: model, parent, gamma), its SLO and rate; shows each stage's budget under the
    planner's DP split (against the even split) and the GPUs it costs; Apply deploys it."""

    def __init__(self, ctl: Any, name: str | None = None) -> None:
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
                           profile_set=_profile_set(self.ctl))
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
            self.status.value = _msg(f"refused: {pv.error}", False)
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
            self.status.value = _msg(f"apply failed: {exc}", False)
            return None
        self.status.value = _msg(f"deployed {name}: plan v{getattr(self.ctl, 'version', '?')} on "
                                 f"{plan.num_gpus} GPUs", True)
        return plan


def query_editor(ctl: Any, name: str | None = None) -> W.VBox:
    ed = QueryEditor(ctl, name)
    ed.widget.editor = ed
    return ed.widget


# ------------------------------------------------------------------------------------------ placement editor
class PlacementEditor:
    """The plan as a GPU x session grid of batch sizes; move a session between GPUs or change a batch, see every
    violated constraint (``planner.validate``) as you edit; Apply pushes the manual placement, "Automatic" hands
    control back to the planner."""

    def __init__(self, ctl: Any) -> None:
        self.ctl = ctl
        self.moves: dict[str, tuple[int, int]] = {}
        self.batches: dict[tuple[int, str], int] = {}
        self.violations: list[str] = []
        self.edited: Plan | None = None
        self.grid = W.GridBox()
        self.view = figures.placement_figure()
        self.view.layout.width = 560
        self.session_dd = W.Dropdown(description="move")
        self.src_dd = W.Dropdown(description="from GPU", layout=W.Layout(width="160px"))
        self.dst_dd = W.Dropdown(description="to GPU", layout=W.Layout(width="160px"))
        self.move_button = W.Button(description="Move")
        self.apply_button = W.Button(description="Apply", button_style="primary", icon="check")
        self.auto_button = W.Button(description="Automatic", icon="refresh")
        self.feasible = W.HTML()
        self.status = W.HTML()
        self.move_button.on_click(lambda _: self.move(self.session_dd.value, self.src_dd.value, self.dst_dd.value))
        self.apply_button.on_click(lambda _: self.apply())
        self.auto_button.on_click(lambda _: self.automatic())
        self.session_dd.observe(lambda _ch: self._sources(), names="value")
        self.widget = W.VBox([W.HBox([self.grid, self.view]),
                              W.HBox([self.session_dd, self.src_dd, self.dst_dd, self.move_button]),
                              self.feasible, W.HBox([self.apply_button, self.auto_button]), self.status])
        self.widget.add_class("nexus-placement-editor")
        self.reload()
        _follow(ctl, self)

    def on_plan(self, version: int) -> None:
        """The cluster re-planned: the grid shows the new plan, pending edits re-checked against it (an edit that
        names a GPU or session the new plan lacks is dropped)."""
        _gpus, _sessions, cells = placement_grid(self._base())
        self.batches = {k: v for k, v in self.batches.items() if k in cells}
        self.moves = {n: (src, dst) for n, (src, dst) in self.moves.items() if (src, n) in cells}
        self._update()
        if self.moves or self.batches:
            self.status.value = _msg(f"the cluster re-planned (plan v{version}); your edits are checked against it",
                                     True)

    def _base(self) -> Plan:
        plan = self.ctl.current_plan
        return plan if plan is not None else self.ctl.plan()

    def reload(self) -> None:
        self.moves.clear()
        self.batches.clear()
        self._update()

    def move(self, session: str, src: int, dst: int) -> list[str]:
        """Move ``session``'s allocation on GPU ``src`` to GPU ``dst``; returns the violations."""
        return self._try(moves={**self.moves, session: (src, dst)}, batches=self.batches)

    def set_batch(self, gpu: int, session: str, batch: int) -> list[str]:
        """Change the batch of ``session`` on GPU ``gpu``; returns the violations."""
        return self._try(moves=self.moves, batches={**self.batches, (gpu, session): batch})

    def _try(self, moves: dict[str, tuple[int, int]], batches: dict[tuple[int, str], int]) -> list[str]:
        """Keep an edit only if it names a real session and GPU; a malformed one is refused with the reason."""
        try:
            edit_placement(self._base(), self.ctl.workload, moves=moves, batches=batches)
        except WorkloadError as exc:
            self.feasible.value = _msg(f"refused: {exc}", False)
            return [str(exc)]
        self.moves, self.batches = dict(moves), dict(batches)
        return self._update()

    def _update(self) -> list[str]:
        base = self._base()
        wl = self.ctl.workload
        try:
            self.edited = edit_placement(base, wl, moves=self._live_moves(base), batches=self.batches)
            self.violations = placement_violations(self.edited, wl)
        except WorkloadError as exc:
            self.edited, self.violations = None, [str(exc)]
        plan = self.edited or base
        gpus, sessions, cells = placement_grid(plan)
        cols = len(sessions) + 1
        items: list[W.Widget] = [W.HTML("<b>GPU</b>")] + [W.HTML(f"<b>{html.escape(s)}</b>") for s in sessions]
        for g in gpus:
            items.append(W.HTML(f"GPU {g}"))
            for s in sessions:
                if (g, s) in cells:
                    box = W.BoundedIntText(value=cells[(g, s)], min=1, max=4096, layout=W.Layout(width="80px"))
                    box.observe(lambda ch, g=g, s=s: self.set_batch(g, s, int(ch["new"])), names="value")
                    items.append(box)
                else:
                    items.append(W.HTML("&middot;"))
        self.grid.children = items
        self.grid.layout = W.Layout(grid_template_columns=f"70px repeat({cols - 1}, 100px)")
        with self.view.batch_update():
            figures.placement_update(self.view, placement_segments(plan, wl), [(g.id, g.occupancy)
                                                                               for g in plan.gpus])
        names = sorted({s for _, s in cells})
        if list(self.session_dd.options) != names:
            self.session_dd.options = names
        if self.session_dd.value is None and names:
            self.session_dd.value = names[0]
        if list(self.dst_dd.options) != gpus:
            self.dst_dd.options = gpus
        if self.dst_dd.value is None and gpus:
            self.dst_dd.value = gpus[0]
        self._sources()
        if self.violations:
            self.feasible.value = ("<div class='nexus-violations' style='color:#d62728'>infeasible:<ul>" + "".join(
                f"<li>{html.escape(v)}</li>" for v in self.violations) + "</ul></div>")
        else:
            self.feasible.value = _msg("feasible", True)
        self.apply_button.disabled = bool(self.violations) or not (self.moves or self.batches)
        return list(self.violations)

    def _live_moves(self, base: Plan) -> dict[str, tuple[int, int]]:
        ids = {g.id for g in base.gpus}
        return {s: m for s, m in self.moves.items() if m[0] in ids and m[1] in ids}

    def _sources(self) -> None:
        plan = self.edited or self._base()
        s = self.session_dd.value
        src = session_gpus(plan).get(s, []) if s else []
        if list(self.src_dd.options) != src:
            self.src_dd.options = src
        if self.src_dd.value is None and src:
            self.src_dd.value = src[0]

    def apply(self) -> Plan | None:
        """Run the edited placement: ``ctl.apply_plan`` when the controller has it; else pins for the moves."""
        viol = self._update()
        if viol or self.edited is None:
            self.status.value = _msg("not applied: the placement is infeasible", False)
            return None
        runner = getattr(self.ctl, "apply_plan", None)
        if not callable(runner) and self.batches:
            self.status.value = _msg("not applied: this controller has no apply_plan, so batch edits cannot run; "
                                     "moves alone are applied as pins", False)
            return None
        try:
            if callable(runner):
                self.ctl.pause()  # a manual placement holds until "Automatic": the epoch loop must not re-plan it
                plan = runner(self.edited)
            else:
                # Pins name workers: the worker that runs each move's destination GPU now.
                worker_of = {(g or {}).get("id"): w for w, g in getattr(self.ctl, "assignment", {}).items()}
                for s, (_src, dst) in self.moves.items():
                    self.ctl.pin(s, worker_of.get(dst, dst))
                plan = self.ctl.apply()
        except Exception as exc:  # a backend refusing its part
            self.status.value = _msg(f"apply failed: {exc}", False)
            return None
        self.status.value = _msg(f"manual placement applied (plan v{getattr(self.ctl, 'version', '?')})", True)
        self.reload()
        return plan

    def automatic(self) -> Plan:
        """Hand placement back to the planner: drop pins and manual edits, re-plan and apply."""
        for s in [x.name for x in self.ctl.workload.sessions]:
            self.ctl.unpin(s)
        self.ctl.resume()
        plan = self.ctl.apply()
        self.status.value = _msg(f"automatic placement (plan v{getattr(self.ctl, 'version', '?')})", True)
        self.reload()
        return plan


def placement_editor(ctl: Any) -> W.VBox:
    ed = PlacementEditor(ctl)
    ed.widget.editor = ed
    return ed.widget
