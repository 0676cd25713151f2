"""The placement editor: the plan as a GPU x session grid of batch sizes; moves and batch edits are checked against
every constraint (``planner.validate``) as you edit; Apply runs the manual placement, "Automatic" re-plans.

Widgets only: ``planner.manual`` edits and judges placements; the controller applies them.
"""

from __future__ import annotations

import html

import ipywidgets as W

from ..controller.protocol import ControllerView
from ..planner import Plan
from ..planner.manual import edit_placement, placement_signature, placement_violations, real_occupancy
from ..workload import WorkloadError
from . import figures
from .edit_common import follow, msg, plain, widget_of
from .logic import placement_grid, placement_segments, session_gpus, stage_sessions

__all__ = ["PlacementEditor", "placement_editor"]


class PlacementEditor:
    """The plan as a GPU x session grid of batch sizes; move a session between GPUs or change a batch, see every
    violated constraint (``planner.validate``) as you edit; Apply pushes the manual placement, "Automatic" hands
    control back to the planner."""

    def __init__(self, ctl: ControllerView) -> None:
        self.ctl = ctl
        self.moves: dict[str, tuple[int, int]] = {}
        self._manual = False  # a manual placement of this editor runs: "Automatic" must re-plan
        self.batches: dict[tuple[int, str], int] = {}
        self.duty: dict[int, float] = {}  # GPU id -> duty cycle (ms) set by hand
        self.violations: list[str] = []
        self.edited: Plan | None = None
        self.grid = W.GridBox()
        self.view = figures.placement_figure()
        self.colors: dict[str, str] = {}
        self.session_dd = W.Dropdown(description="move")
        self.src_dd = W.Dropdown(description="from GPU", layout=W.Layout(width="160px"))
        self.dst_dd = W.Dropdown(description="to GPU", layout=W.Layout(width="160px"))
        self.move_button = W.Button(description="Move")
        self.apply_button = W.Button(description="Apply", button_style="primary", icon="check", disabled=True)
        self.auto_button = W.Button(description="Automatic", icon="refresh")
        self.headroom = W.HTML()  # planned share against the share at the real rates
        self.feasible = W.HTML()  # the edited placement's check, kept current
        self.status = W.HTML()  # the last action's message: a new one replaces it
        self.move_button.on_click(lambda _: self.move(self.session_dd.value, self.src_dd.value, self.dst_dd.value))
        self.apply_button.on_click(lambda _: self.apply())
        self.auto_button.on_click(lambda _: self.automatic())
        self.session_dd.observe(lambda _ch: self._sources(), names="value")
        self.widget = W.VBox([W.HTML("<b>Placement</b>: the batch each session runs on each GPU. Change a batch "
                                     "or a duty cycle, or move a session; every constraint is checked as you "
                                     "edit."),
                              W.Box([self.grid, self.view], layout=W.Layout(display="flex", flex_flow="row wrap")),
                              W.HBox([self.session_dd, self.src_dd, self.dst_dd, self.move_button]),
                              self.headroom, self.feasible, W.HBox([self.apply_button, self.auto_button]), self.status])
        self.widget.add_class("nexus-placement-editor")
        self.reload()
        follow(ctl, self)

    def on_plan(self, version: int) -> None:
        """The cluster re-planned: the grid shows the new plan, pending edits re-checked against it (an edit that
        names a GPU or session the new plan lacks is dropped)."""
        _gpus, _sessions, cells = placement_grid(self._base())
        self.batches = {k: v for k, v in self.batches.items() if k in cells}
        self.moves = {n: (src, dst) for n, (src, dst) in self.moves.items() if (src, n) in cells}
        self.duty = {g: d for g, d in self.duty.items() if g in _gpus}
        self._update()
        if self.moves or self.batches or self.duty:
            self.status.value = msg(f"The cluster re-planned (plan v{version}); your edits are checked against it.",
                                    None)

    def _base(self) -> Plan:
        plan = self.ctl.current_plan
        return plan if plan is not None else self.ctl.plan()

    def reload(self) -> None:
        self.moves.clear()
        self.batches.clear()
        self.duty.clear()
        self._update()

    def move(self, session: str, src: int, dst: int) -> list[str]:
        """Move ``session``'s allocation on GPU ``src`` to GPU ``dst``; returns the violations."""
        return self._try(moves={**self.moves, session: (src, dst)}, batches=self.batches, duty=self.duty)

    def set_batch(self, gpu: int, session: str, batch: int) -> list[str]:
        """Change the batch of ``session`` on GPU ``gpu``; returns the violations. A batch below 1 is refused (and
        the box shows the batch again), never silently clamped."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            why = f"A batch is a number of requests, at least 1: {batch!r} is refused for {session} on GPU {gpu}."
            self.status.value = msg(why, False)
            self._update()
            return [why]
        return self._try(moves=self.moves, batches={**self.batches, (gpu, session): batch}, duty=self.duty)

    def set_duty(self, gpu: int, duty_ms: float) -> list[str]:
        """Change GPU ``gpu``'s duty cycle (ms): its batches become the smallest that serve their rates in it;
        returns the violations. A duty cycle that is not a time above 0 is refused with the reason."""
        return self._try(moves=self.moves, batches=self.batches, duty={**self.duty, gpu: duty_ms})

    def _try(self, moves: dict[str, tuple[int, int]], batches: dict[tuple[int, str], int],
             duty: dict[int, float]) -> list[str]:
        """Keep an edit only if it names a real session and GPU; a malformed one is refused with the reason."""
        try:
            edit_placement(self._base(), self.ctl.workload, moves=moves, batches=batches, duty=duty,
                           real_rates=True)
        except WorkloadError as exc:
            self.status.value = msg(plain(exc), False)
            self._update()  # the boxes show the values in force again
            return [str(exc)]
        self.moves, self.batches, self.duty = dict(moves), dict(batches), dict(duty)
        self.status.value = ""  # the last message is stale once the placement changed
        return self._update()

    def _update(self) -> list[str]:
        base = self._base()
        wl = self.ctl.workload
        try:
            self.edited = edit_placement(base, wl, moves=self._live_moves(base), batches=self.batches,
                                         duty=self.duty, real_rates=True)
            self.violations = placement_violations(self.edited, wl)
        except WorkloadError as exc:
            self.edited, self.violations = None, [str(exc)]
        plan = self.edited or base
        gpus, sessions, cells = placement_grid(plan)
        duty = {g.id: g.duty_cycle_ms for g in plan.gpus}
        cols = len(sessions) + 2
        items: list[W.Widget] = [W.HTML("<b>GPU</b>"), W.HTML("<b>duty cycle (ms)</b>")] + [
            W.HTML(f"<b>{html.escape(s)}</b>") for s in sessions]
        for g in gpus:
            items.append(W.HTML(f"GPU {g}"))
            dbox = W.BoundedFloatText(value=round(duty[g], 1), min=0.0, max=1e9, step=1.0,
                                      layout=W.Layout(width="90px"))
            dbox.observe(lambda ch, g=g: self.set_duty(g, float(ch["new"])), names="value")
            dbox.add_class("nexus-duty")
            items.append(dbox)
            for s in sessions:
                if (g, s) in cells:
                    box = W.IntText(value=cells[(g, s)], layout=W.Layout(width="80px"))
                    box.observe(lambda ch, g=g, s=s: self.set_batch(g, s, int(ch["new"])), names="value")
                    items.append(box)
                else:
                    items.append(W.HTML("&middot;"))
        self.grid.children = items
        self.grid.layout = W.Layout(grid_template_columns=f"70px 110px repeat({cols - 2}, 100px)")
        # colours in the workload's order, as the dashboard gives them: a session looks the same in both
        order = [x.name for x in wl.sessions] + [n for q in wl.queries for n in stage_sessions(
            q.name, [{"name": st.name} for st in q.stages])]
        self.colors = figures.session_colors([*order, *sessions], self.colors)
        real = real_occupancy(base, wl) if base.rate_fraction > 1.0 else {}
        edited = bool(self.moves or self.batches or self.duty)
        shown = {} if edited else {g.id: real.get(g.id) for g in plan.gpus}
        with self.view.batch_update():
            figures.placement_update(self.view, placement_segments(plan, wl), [(f"GPU {g.id}", g.occupancy)
                                                                               for g in plan.gpus], self.colors,
                                     real=[shown.get(g.id) for g in plan.gpus])
        self.headroom.value = headroom_note(base, real)
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
            self.feasible.value = ("<div class='nexus-violations' style='color:#d62728'>This placement is infeasible:"
                                   "<ul>" + "".join(f"<li>{html.escape(plain(v))}</li>" for v in self.violations)
                                   + "</ul></div>")
        elif self.moves or self.batches or self.duty:
            self.feasible.value = msg("This placement is feasible: every constraint holds.", True)
        else:
            self.feasible.value = msg("This is the placement that runs now.", None)
        self.apply_button.disabled = (bool(self.violations) or not (self.moves or self.batches or self.duty)
                                      or self.ctl.closed)
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
        """Run the edited placement (``ctl.apply_plan``) and pause re-planning: it holds until "Automatic"."""
        viol = self._update()
        if self.ctl.closed:
            self.status.value = msg("This controller is closed: start a new one to apply placements.", False)
            return None
        if viol or self.edited is None:
            self.status.value = msg("Not applied: the placement is infeasible (see the reasons above).", False)
            return None
        if not (self.moves or self.batches or self.duty):
            self.status.value = msg("Nothing to apply: change a batch or a duty cycle, or move a session first.",
                                    None)
            return None
        try:
            self.ctl.pause()  # the epoch loop must not re-plan a manual placement away
            plan = self.ctl.apply_plan(self.edited)
        except Exception as exc:  # a backend refusing its part
            self.status.value = msg(f"Apply failed: {plain(exc)}", False)
            return None
        self.reload()
        self._manual = True
        self.status.value = msg(f"Applied: your placement runs (plan v{self.ctl.version}); re-planning is paused "
                                "until you press Automatic.", True)
        return plan

    def automatic(self) -> Plan | None:
        """Hand placement back to the planner: drop pins and manual edits, resume re-planning, and re-plan only
        when the planner's placement differs from the one that runs (a second click changes nothing)."""
        if self.ctl.closed:
            self.status.value = msg("This controller is closed: start a new one to re-plan.", False)
            return None
        for s in [x.name for x in self.ctl.workload.sessions]:
            self.ctl.unpin(s)
        self.ctl.resume()
        cur, new = self.ctl.current_plan, self.ctl.plan()
        if (not self._manual and cur is not None and cur.num_gpus == new.num_gpus
                and placement_signature(cur) == placement_signature(new)):
            self.reload()
            self.status.value = msg(f"Already automatic: the planner's placement runs (plan v{self.ctl.version}).",
                                    None)
            return cur
        plan = self.ctl.apply()
        self._manual = False
        self.reload()
        self.status.value = msg(f"Automatic placement: plan v{self.ctl.version} on {plan.num_gpus} GPUs.", True)
        return plan


def headroom_note(plan: Plan, real: dict[int, float]) -> str:
    """The headroom line: how much of each GPU the real rates use when the plan is sized for more."""
    if plan.rate_fraction <= 1.0 or not real:
        return ""
    busy = ", ".join(f"GPU {g.id} {real[g.id]:.0%} (planned {g.occupancy:.0%})" for g in plan.gpus)
    return msg(f"This plan is sized for {plan.rate_fraction:.2g}x every rate (headroom for bursts). At the real "
               f"rates the GPUs are busy: {busy}. A move or a duty-cycle change is judged at the real rates, so "
               "it can use that headroom (the batches it touches shrink to what the real rates need).", None)


def placement_editor(ctl: ControllerView) -> W.VBox:
    return widget_of(PlacementEditor(ctl))
