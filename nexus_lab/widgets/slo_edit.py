"""The SLO/rate editor: one row per session (model, SLO, rate, current GPUs); edits preview the plan (GPUs before ->
after, the sessions that move) and Apply pushes them to the controller.

Widgets only: values are checked by the workload editor and previews made by ``controller.preview``.
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as W

from ..controller.preview import Preview, preview_edits
from ..controller.protocol import ControllerView
from ..planner import Plan
from ..workload import WorkloadError
from .edit_common import css, float_or_none, follow, msg, widget_of
from .logic import session_gpus

__all__ = ["SloEditor", "slo_editor"]


class SloEditor:
    """One row per session (model, SLO, rate, current GPUs); edits preview the plan, Apply pushes it."""

    def __init__(self, ctl: ControllerView) -> None:
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
        follow(ctl, self)

    def on_plan(self, version: int) -> None:
        """The cluster re-planned: without pending edits the rows show the new placement; with edits, the preview
        is recomputed against the plan that now runs (the edits stay)."""
        if self.edits:
            self.preview()
            self.status.value = msg(f"the cluster re-planned (plan v{version}); the preview above is against it",
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
        measured = self.ctl.editor.measured
        for s in wl.sessions:
            slo = W.FloatText(value=s.slo_ms, layout=W.Layout(width="110px"))
            rate = W.Text(value="" if s.name in measured else f"{s.rate:g}", layout=W.Layout(width="110px"))
            slo.add_class(f"nexus-slo-{css(s.name)}")
            rate.add_class(f"nexus-rate-{css(s.name)}")
            slo.observe(lambda ch, n=s.name: self.set_value(n, "slo_ms", ch["new"]), names="value")
            rate.observe(lambda ch, n=s.name: self.set_value(n, "rate", float_or_none(ch["new"])), names="value")
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
        pv = preview_edits(wl, self.edits, before=before,
                           policy=self.ctl.policy, gpus=self.ctl.gpus, profile_set=self.ctl.editor.profile_set,
                           fill=self.ctl.fill)
        self.last_preview = pv
        if not pv.ok:
            self.preview_html.value = msg(f"refused: {pv.error}", False)
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
            self.status.value = msg(f"not applied: {pv.error}", False)
            return None
        for name, change in self.edits.items():
            try:
                if "slo_ms" in change:
                    self.ctl.set_slo(name, change["slo_ms"])
                if "rate" in change:
                    self.ctl.set_rate(name, change["rate"])
            except WorkloadError as exc:
                self.status.value = msg(f"not applied: {exc}", False)
                return None
        try:
            plan = self.ctl.apply()
        except Exception as exc:  # a backend refusing its part: shown, the rows show what runs
            self.status.value = msg(f"apply failed: {exc}", False)
            self.reload()
            return None
        self.status.value = msg(f"applied: plan v{self.ctl.version} on {plan.num_gpus} GPUs", True)
        self.reload()
        return plan


def slo_editor(ctl: ControllerView) -> W.VBox:
    """The SLO/rate table of ``ctl`` as a widget; its ``SloEditor`` is ``.editor``."""
    return widget_of(SloEditor(ctl))
