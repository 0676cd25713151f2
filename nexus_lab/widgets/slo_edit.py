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
from .edit_common import css, follow, msg, plain, widget_of
from .logic import session_gpus

__all__ = ["SloEditor", "slo_editor"]


class SloEditor:
    """One row per session (model, SLO, rate, current GPUs); edits preview the plan, Apply pushes it."""

    def __init__(self, ctl: ControllerView) -> None:
        self.ctl = ctl
        self.edits: dict[str, dict[str, Any]] = {}
        self.last_preview: Preview | None = None
        self.status = W.HTML()  # the one message line: a new message replaces the last
        self.preview_html = W.HTML()
        self.apply_button = W.Button(description="Apply", button_style="primary", icon="check", disabled=True)
        self.reset_button = W.Button(description="Reset")
        self.apply_button.add_class("nexus-apply")
        self.apply_button.on_click(lambda _: self.apply())
        self.reset_button.on_click(lambda _: self.reset())
        self.rows = W.VBox()
        self.slo_inputs: dict[str, W.FloatText] = {}
        self.rate_inputs: dict[str, W.FloatText] = {}
        self.measured_inputs: dict[str, W.Checkbox] = {}
        self.widget = W.VBox([W.HTML("<b>Sessions</b>: SLO in ms, rate in requests/s. Tick <i>measured</i> to plan "
                                     "with the rate measured from the session's traffic instead."), self.rows,
                              self.preview_html, W.HBox([self.apply_button, self.reset_button]), self.status])
        self.widget.add_class("nexus-slo-editor")
        self.reload()
        follow(ctl, self)

    def on_plan(self, version: int) -> None:
        """The cluster re-planned: without pending edits the rows show the new placement; with edits, the preview
        is recomputed against the plan that now runs (the edits stay)."""
        if self.edits:
            self.preview()
            self.status.value = msg(f"The cluster re-planned (plan v{version}); the preview above is against the "
                                    "plan that runs now.", None)
        else:
            self.reload()

    def reset(self) -> None:
        self.reload()
        self.status.value = ""

    def reload(self) -> None:
        """Rebuild the rows from the controller (after Apply, or to drop unapplied edits)."""
        self.edits.clear()
        wl = self.ctl.workload
        where = session_gpus(self.ctl.current_plan)
        head = W.HBox([W.HTML(f"<b>{t}</b>", layout=W.Layout(width=w)) for t, w in
                       (("session", "160px"), ("model", "100px"), ("SLO (ms)", "100px"), ("rate (req/s)", "100px"),
                        ("measured", "90px"), ("on GPUs", "100px"))])
        rows = [head]
        self.slo_inputs, self.rate_inputs, self.measured_inputs = {}, {}, {}
        measured = self.ctl.editor.measured
        for s in wl.sessions:
            slo = W.FloatText(value=s.slo_ms, layout=W.Layout(width="100px"))
            rate = W.FloatText(value=round(s.rate, 2), disabled=s.name in measured, layout=W.Layout(width="100px"))
            auto = W.Checkbox(value=s.name in measured, indent=False, layout=W.Layout(width="90px"))
            slo.add_class(f"nexus-slo-{css(s.name)}")
            rate.add_class(f"nexus-rate-{css(s.name)}")
            auto.add_class(f"nexus-measured-{css(s.name)}")
            slo.observe(lambda ch, n=s.name: self.set_value(n, "slo_ms", ch["new"]), names="value")
            rate.observe(lambda ch, n=s.name: self.set_value(n, "rate", ch["new"]), names="value")
            auto.observe(lambda ch, n=s.name: self._measured(n, ch["new"]), names="value")
            self.slo_inputs[s.name], self.rate_inputs[s.name], self.measured_inputs[s.name] = slo, rate, auto
            gpus = ", ".join(str(g) for g in where.get(s.name, [])) or "-"
            rows.append(W.HBox([W.Label(s.name, layout=W.Layout(width="160px")),
                                W.Label(s.model, layout=W.Layout(width="100px")), slo, rate, auto,
                                W.Label(gpus, layout=W.Layout(width="100px"))]))
        self.rows.children = rows
        self.preview_html.value = ""
        self.apply_button.disabled = True

    def _measured(self, session: str, on: bool) -> None:
        box = self.rate_inputs[session]
        box.disabled = on
        self.set_value(session, "rate", None if on else box.value)

    def set_value(self, session: str, field: str, value: Any) -> Preview:
        """Record one edit (``slo_ms``, or ``rate`` with None for "measured") and re-preview; an edit back to what
        runs is no edit."""
        if field not in ("slo_ms", "rate"):
            raise ValueError(f"field: must be 'slo_ms' or 'rate', got {field!r}")
        change = self.edits.setdefault(session, {})
        change[field] = value
        cur = next((s for s in self.ctl.workload.sessions if s.name == session), None)
        if cur is not None:
            measured = session in self.ctl.editor.measured
            same = (value == cur.slo_ms if field == "slo_ms" else
                    (value is None and measured) or (value is not None and not measured and value == cur.rate))
            if same:
                change.pop(field)
        if not change:
            self.edits.pop(session)
        return self.preview()

    def preview(self) -> Preview:
        """The plan the edits would give: GPUs before -> after and the sessions that move, or the refusal."""
        wl = self.ctl.workload
        before = self.ctl.current_plan
        pv = preview_edits(wl, self.edits, before=before,
                           policy=self.ctl.policy, gpus=self.ctl.gpus, profile_set=self.ctl.editor.profile_set,
                           fill=self.ctl.fill, max_gpus=self.ctl.gpus, what="cluster size")
        self.last_preview = pv
        self.apply_button.disabled = True
        if self.ctl.closed:
            self.preview_html.value = ""
            self.status.value = msg("This controller is closed: start a new one to apply edits.", False)
        elif not pv.ok:
            self.preview_html.value = ""
            self.status.value = msg(plain(pv.error), False)
        elif not self.edits:
            self.preview_html.value = ""
            self.status.value = ""
        else:
            frac = pv.plan.rate_fraction if pv.plan is not None else 1.0
            tail = "" if frac >= 1.0 else f" (the cluster is too small: every rate is cut to {frac:.0%})"
            moved = ", ".join(pv.moved) or "none"
            measured = [n for n, c in self.edits.items() if "rate" in c and c["rate"] is None]
            note = (f" Measured from their traffic from now on: {', '.join(measured)} (planned at the current rate "
                    "until the first measurement)." if measured else "")
            self.preview_html.value = (f"<span class='nexus-preview'>GPUs: {pv.before_gpus} now &rarr; "
                                       f"{pv.after_gpus} after Apply{html.escape(tail)}. Sessions that move: "
                                       f"{html.escape(moved)}.{html.escape(note)}</span>")
            self.status.value = ""
            self.apply_button.disabled = False
        return pv

    def apply(self) -> Plan | None:
        """Push the edits to the controller and apply; refused edits leave the controller untouched."""
        if not self.edits:
            self.status.value = msg("Nothing to apply: change an SLO or a rate first.", None)
            return None
        pv = self.preview()
        if self.apply_button.disabled:
            return None
        for name, change in self.edits.items():
            try:
                if "slo_ms" in change:
                    self.ctl.set_slo(name, change["slo_ms"])
                if "rate" in change:
                    self.ctl.set_rate(name, change["rate"])
            except WorkloadError as exc:
                self.status.value = msg(f"Not applied. {plain(exc)}", False)
                return None
        try:
            plan = self.ctl.apply()
        except Exception as exc:  # a backend refusing its part: shown, the rows show what runs
            self.reload()
            self.status.value = msg(f"Apply failed: {plain(exc)}", False)
            return None
        self.reload()
        self.status.value = msg(f"Applied: plan v{self.ctl.version} runs on {plan.num_gpus} GPUs "
                                f"({pv.before_gpus} before).", True)
        return plan


def slo_editor(ctl: ControllerView) -> W.VBox:
    """The SLO/rate table of ``ctl`` as a widget; its ``SloEditor`` is ``.editor``."""
    return widget_of(SloEditor(ctl))
