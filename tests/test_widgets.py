"""Widget logic without a browser: previews, refusals, apply, placement feasibility, the dashboard's refresh loop."""

import threading
import time

import pytest

from nexus_lab.planner import plan_workload
from nexus_lab.widgets import Dashboard, SimController, dashboard, placement_editor, query_editor, slo_editor
from nexus_lab.widgets.logic import (
    PALETTE,
    dag_layout,
    edit_placement,
    gantt_bars,
    moved_sessions,
    placement_segments,
    placement_violations,
    preview_edits,
    preview_query,
)


@pytest.fixture
def ctl():
    c = SimController(gpus=4, seed=1)
    c.add_session("vgg16", 100, 300, name="classify")
    c.add_session("vgg_face", 150, 200, name="faces")
    c.add_session("vgg_s", 60, 300, name="scenes")
    c.add_query("traffic", 400, [{"name": "detect", "model": "yolo9000"},
                                 {"name": "car", "model": "vgg16", "parent": "detect", "gamma": 1.5}], rate=20)
    c.apply()
    yield c
    c.close()


def test_both_controllers_satisfy_the_view_protocol(ctl):
    """Widgets and the lab use ``ControllerView`` only: the simulator and the cluster controller declare every
    member of it (the cluster one is checked live in test_controller)."""
    from nexus_lab.controller import Controller
    from nexus_lab.controller.protocol import ControllerView, PanelControl, missing_members, protocol_members

    assert isinstance(ctl, ControllerView) and isinstance(ctl, PanelControl)
    assert missing_members(ctl, ControllerView) == []
    assert [m for m in protocol_members(ControllerView) if not hasattr(Controller, m)] == []
    assert {"state", "replan_now", "pause", "resume", "traces", "closed", "gpus"} <= set(
        protocol_members(ControllerView))
    assert ctl.gpus == 4 and not ctl.closed
    ctl.close()
    assert ctl.closed


def test_simulated_state_has_the_controllers_shape(ctl):
    """One ``build_state`` for both controllers: the simulator's snapshot carries what the cluster's does."""
    st = ctl.state()
    plan = ctl.current_plan
    assert st["cluster"]["rate_fraction"] == plan.rate_fraction and st["cluster"]["scheduler"] == "simulator"
    assert st["cluster"]["lower_bound_gpus"] == plan.lower_bound_gpus and st["cluster"]["workers"] == 4
    assert [g["worker"] for g in st["gpus"]] == ["gpu-0", "gpu-1", "gpu-2", "gpu-3"]
    (q,) = st["queries"]
    assert {"offered_rate", "goodput", "slo_attainment", "drops"} <= set(q["stages"][0])
    assert all(g["utilization"] is not None for g in st["gpus"] if g["gpu"] is not None)


def test_simulator_plans_pinned_sessions_onto_their_gpu(ctl):
    for gpu in (3, 0):
        ctl.pin("faces", gpu)
        assert gpu in [g.id for g in ctl.plan().gpus_of("faces")]
        ctl.apply()
        row = next(s for s in ctl.state()["sessions"] if s["name"] == "faces")
        assert row["pinned"] == gpu and gpu in row["gpus"]
    with pytest.raises(Exception, match=r"pin\.gpu"):
        ctl.pin("faces", 4)
    ctl.unpin("faces")
    before = {g.id: g for g in ctl.current_plan.gpus}
    again = ctl.apply()
    assert {g.id: g for g in again.gpus} == before  # a re-plan of the same workload keeps every GPU in place


def test_preview_refuses_with_the_workload_editors_reason(ctl):
    pv = preview_edits(ctl.workload, {"classify": {"slo_ms": -5}}, profile_set="titan-x-pascal")
    assert not pv.ok and "slo_ms" in pv.error and "> 0" in pv.error
    pv = preview_edits(ctl.workload, {"classify": {"slo_ms": 5}}, profile_set="titan-x-pascal")
    assert not pv.ok and "2*l(1)" in pv.error  # the planner's unservable reason, not the widget's
    pv = preview_edits(ctl.workload, {"nope": {"slo_ms": 50}}, profile_set="titan-x-pascal")
    assert not pv.ok and "unknown session" in pv.error


def test_preview_counts_gpus_and_moves():
    c = SimController(gpus=16)
    c.add_session("vgg16", 200, 100, name="a")
    c.add_session("vgg_s", 200, 100, name="b")
    before = c.apply()
    pv = preview_edits(c.workload, {"a": {"rate": 2000}}, before=before, gpus=16, profile_set="titan-x-pascal")
    assert pv.ok and pv.after_gpus > pv.before_gpus
    assert "a" in pv.moved
    same = preview_edits(c.workload, {}, before=before, gpus=16)
    assert same.moved == () and same.after_gpus == before.num_gpus


def test_moved_sessions_ignores_gpu_numbering(ctl):
    plan = ctl.current_plan
    from dataclasses import replace
    renumbered = replace(plan, gpus=tuple(replace(g, id=len(plan.gpus) - 1 - g.id) for g in reversed(plan.gpus)))
    assert moved_sessions(plan, renumbered) == []
    assert moved_sessions(plan, None) == sorted({a.session for g in plan.gpus for a in g.allocations})


def test_slo_editor_refuses_inline_then_applies(ctl):
    ed = slo_editor(ctl).editor
    ed.set_value("classify", "slo_ms", -1)
    assert ed.apply_button.disabled and "The SLO must be more than 0 ms (you entered -1)." in ed.status.value
    assert ed.apply() is None and ctl.workload.sessions[0].slo_ms == 100  # nothing pushed
    v0 = ctl.version
    ed.set_value("classify", "slo_ms", 60)
    assert not ed.apply_button.disabled and "GPUs" in ed.preview_html.value
    plan = ed.apply()
    assert plan is not None and ctl.version == v0 + 1
    assert next(s for s in ctl.workload.sessions if s.name == "classify").slo_ms == 60
    assert ed.edits == {} and "Applied" in ed.status.value


def test_editors_follow_plans_applied_elsewhere(ctl):
    """The epoch loop (here: an apply outside the editors) re-plans: editors without pending edits show the new
    placement; pending edits stay and are previewed / re-checked against the plan that now runs."""
    slo = slo_editor(ctl).editor
    place = placement_editor(ctl).editor

    def gpus_label(name: str) -> str:
        row = next(r for r in slo.rows.children[1:] if r.children[0].value == name)
        return row.children[5].value

    before = gpus_label("classify")
    ctl.set_rate("classify", 3000)
    ctl.apply()
    assert gpus_label("classify") != before and len(gpus_label("classify").split(",")) > len(before.split(","))
    assert slo.slo_inputs["classify"].value == 100  # rows rebuilt from the controller

    slo.set_value("faces", "slo_ms", 400)
    gpu, session = next((g.id, a.session) for g in ctl.current_plan.gpus for a in g.allocations)
    place.set_batch(gpu, session, 1)
    v = ctl.version
    ctl.set_rate("classify", 300)
    ctl.apply()
    assert slo.edits == {"faces": {"slo_ms": 400}} and f"v{v + 1}" in slo.status.value
    assert slo.last_preview.ok and slo.last_preview.before_gpus == ctl.current_plan.num_gpus
    still = any(g.id == gpu and any(a.session == session for a in g.allocations) for g in ctl.current_plan.gpus)
    assert ((gpu, session) in place.batches) == still
    listening = len(ctl._plan_listeners)
    w = slo_editor(ctl)
    assert len(ctl._plan_listeners) == listening + 1
    w.close()  # a closed editor stops following
    assert len(ctl._plan_listeners) == listening


def test_slo_editor_rate_box_and_measured(ctl):
    """Rates go in a number box; "measured" is a tick box that says what it does, and Apply makes it so."""
    ed = slo_editor(ctl).editor
    assert isinstance(ed.rate_inputs["faces"], type(ed.slo_inputs["faces"]))  # both number boxes
    ed.rate_inputs["faces"].value = -5
    assert not ed.last_preview.ok and ed.apply_button.disabled
    assert "The rate must be 0 requests/s or more (you entered -5.0)." in ed.status.value
    ed.rate_inputs["faces"].value = 250
    assert ed.last_preview.ok and not ed.apply_button.disabled and ed.status.value == ""
    ed.apply()
    assert next(s for s in ctl.workload.sessions if s.name == "faces").rate == 250
    ed.measured_inputs["scenes"].value = True
    assert ed.rate_inputs["scenes"].disabled and ed.edits == {"scenes": {"rate": None}}
    assert not ed.apply_button.disabled
    assert ed.apply() is not None and "scenes" in ctl.editor.measured
    assert ed.measured_inputs["scenes"].value and ed.rate_inputs["scenes"].disabled


def test_query_preview_dp_not_worse_than_even(ctl):
    stages = [{"name": "detect", "model": "yolo9000"}, {"name": "car", "model": "vgg16", "parent": "detect"},
              {"name": "face", "model": "vgg_face", "parent": "detect", "gamma": 0.5}]
    pv = preview_query(ctl.workload, "q2", 400, stages, rate=30, profile_set="titan-x-pascal")
    assert pv.ok and set(pv.budgets) == {"detect", "car", "face"}
    assert pv.gpu_cost <= pv.even_gpu_cost + 1e-9
    assert pv.budgets["detect"] + max(pv.budgets["car"], pv.budgets["face"]) <= 400 + 1e-6
    bad = preview_query(ctl.workload, "q2", 400, [{"name": "x", "model": "nope"}], profile_set="titan-x-pascal")
    assert not bad.ok and "unknown model" in bad.error


def test_query_editor_edit_and_deploy(ctl):
    ed = query_editor(ctl, "traffic").editor
    assert ed.last_preview.ok
    ed.add_stage("face", "vgg_face", "detect", 0.5)
    assert set(ed.last_preview.budgets) == {"detect", "car", "face"}
    ed.remove_stage("car")
    assert set(ed.last_preview.budgets) == {"detect", "face"}
    plan = ed.apply()
    assert plan is not None
    q = next(q for q in ctl.workload.queries if q.name == "traffic")
    assert [s.name for s in q.stages] == ["detect", "face"]
    assert {s.name for s in plan.queries[0].stages} == {"detect", "face"}
    ed.slo.value = 1.0  # far too tight: refused with the reason, Apply disabled
    assert not ed.last_preview.ok and ed.apply_button.disabled


def test_dag_layout_depths():
    pos = dag_layout([{"name": "a"}, {"name": "b", "parent": "a"}, {"name": "c", "parent": "a"},
                      {"name": "d", "parent": "b"}])
    assert pos["a"][0] == 0 and pos["b"][0] == pos["c"][0] == 1 and pos["d"][0] == 2
    assert pos["b"][1] != pos["c"][1]


def test_edit_placement_named_violations(ctl):
    plan, wl = ctl.current_plan, ctl.workload
    assert placement_violations(plan, wl) == []
    g0 = plan.gpus[0]
    a = g0.allocations[0]
    small = edit_placement(plan, wl, batches={(g0.id, a.session): 1})
    viol = placement_violations(small, wl)
    if a.rate * g0.duty_cycle_ms / 1000 > 1:
        assert any("needs batch" in v for v in viol)
    dst = plan.gpus[1].id
    moved = edit_placement(plan, wl, moves={a.session: (g0.id, dst)})
    assert any(x.session == a.session for x in moved.gpus[1].allocations)
    assert not any(x.session == a.session for x in moved.gpus[0].allocations)
    assert moved.gpus[0].occupancy < g0.occupancy
    with pytest.raises(Exception, match="gpu must be one of"):
        edit_placement(plan, wl, moves={"faces": (99, 0)})


def test_placement_editor_feasibility_and_apply(ctl):
    ed = placement_editor(ctl).editor
    assert ed.violations == [] and ed.apply_button.disabled  # nothing edited yet
    g = ctl.current_plan.gpus[0]
    a = g.allocations[0]
    viol = ed.set_batch(g.id, a.session, 1)
    assert viol and ed.apply_button.disabled and "infeasible" in ed.feasible.value
    assert ed.apply() is None
    ed.reload()
    # Growing a batch within the duty cycle stays feasible iff validate says so; apply it when it does.
    ok = None
    for b in range(a.batch + 1, a.batch + 4):
        if not ed.set_batch(g.id, a.session, b):
            ok = b
            break
        ed.reload()
    if ok is not None:
        v0 = ctl.version
        plan = ed.apply()
        assert plan is not None and ctl.version == v0 + 1
        assert next(x for x in ctl.current_plan.gpus[0].allocations if x.session == a.session).batch == ok
    bad = ed.move("faces", 99, 0)
    assert bad and "gpu must be one of" in bad[0]
    auto = ed.automatic()
    assert auto.num_gpus == plan_workload(ctl.workload, gpus=4).num_gpus


def test_placement_segments_shares_sum_to_occupancy(ctl):
    plan = ctl.current_plan
    segs = placement_segments(plan, ctl.workload)
    for g in plan.gpus:
        total = sum(s.share for s in segs if s.gpu == g.id)
        assert total == pytest.approx(g.occupancy, rel=1e-6)


def test_gantt_bars_window_and_formats():
    traces = {"w0": [("a", 0.0, 0.01, 4), ("b", 0.5, 0.52, 2)], "w1": [{"session": "a", "start_s": 0.9,
                                                                         "end_s": 0.95, "batch": 8}]}
    bars = gantt_bars(traces, {"w0": "GPU 0", "w1": "GPU 1"}, window_s=0.5)
    assert [b.session for b in bars] == ["b", "a"] and bars[1].lane == "GPU 1" and bars[1].batch == 8
    assert len(gantt_bars(traces, max_bars=1)) == 1


def test_dashboard_refreshes_and_stops(ctl):
    w = dashboard(ctl, interval_s=0.2, history_s=1.0)
    d = w.dashboard
    try:
        deadline = time.time() + 10
        while d.refreshes < 4 and time.time() < deadline:
            time.sleep(0.05)
        assert d.refreshes >= 4 and d.errors == 0, d.last_error
        assert len(d.history) <= 5  # bounded
        z = d.util.data[0].z
        assert len(z) == 4 and all(len(r) == len(d.history) for r in z)
        assert sum(len(t.x) for t in d.placement.data[1:]) == sum(len(g.allocations) for g in ctl.current_plan.gpus)
        assert len(d.gantt.data[1].x) > 0
        assert "classify" in d.goodput.data[1].x
        # A cell can run while it updates: the main thread is never held.
        t = time.time()
        sum(range(10000))
        assert time.time() - t < 0.5
    finally:
        w.close()
    assert not d.running


def test_closing_the_dashboard_by_model_id_stops_it(ctl):
    """The panel's dashboard view closes its widget by model id when its tab closes (``nexus_lab.lab.close_widget``)."""
    from ipywidgets.widgets.widget import _instances

    from nexus_lab.lab import close_widget

    w = dashboard(ctl, interval_s=0.2)
    d = w.dashboard
    _instances["nexus-test-model"] = w  # outside a kernel widgets have no comm: register it as a kernel would
    try:
        assert d.running
        assert close_widget("nexus-test-model") is True
        assert not d.running
        assert close_widget("no-such-model") is False
        with pytest.raises(ValueError, match="model_id"):
            close_widget("")
    finally:
        _instances.pop("nexus-test-model", None)
        w.close()


def test_dashboard_stops_with_the_controller(ctl):
    d = Dashboard(ctl, interval_s=0.1)
    assert d.running
    ctl.close()
    d._thread.join(5)
    assert not d.running
    assert not any(t.name == "nexus-dashboard" and t.is_alive() for t in threading.enumerate() if t is d._thread)


def test_nvml_devices_reads_every_cuda_device(monkeypatch):
    """On CUDA hosts the dashboard adds NVML's utilization and memory (``nvidia-ml-py``); here a stand-in module
    with NVML's API shape, since this machine has no GPU."""
    import sys
    import types

    from nexus_lab.widgets.dashboard import nvml_devices

    fake = types.ModuleType("pynvml")
    fake.nvmlInit = lambda: None
    fake.nvmlDeviceGetCount = lambda: 2
    fake.nvmlDeviceGetHandleByIndex = lambda i: i
    fake.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=(40, 75)[h])
    fake.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=(h + 1) * 2**30, total=16 * 2**30)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    devs = nvml_devices()
    assert devs == [{"index": 0, "utilization": 0.4, "memory_used_mb": 1024.0, "memory_total_mb": 16384.0},
                    {"index": 1, "utilization": 0.75, "memory_used_mb": 2048.0, "memory_total_mb": 16384.0}]

    def no_driver() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    fake.nvmlInit = no_driver
    assert nvml_devices() is None  # no driver: the dashboard shows the controller's figures only
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    assert nvml_devices() is None


# ---------------------------------------------------------------------------------------------- issue 13: legibility
def _figures(d):
    return [d.util, d.placement, d.goodput, d.latency, d.drops, d.gantt]


def test_dashboard_sends_plain_lists_of_finite_numbers(ctl):
    """What goes over the wire: plotly's widget serializer sends 1-D numeric numpy arrays as binary buffers, which
    plotly.js reads as ``{"0": ..}`` objects (console warnings, black bars), and JSON has no NaN. Every array a
    dashboard sends is a JSON list of finite numbers, None or strings."""
    import json

    from plotly.serializers import _py_to_js

    def no_buffers(v, where):
        if isinstance(v, dict):
            assert "buffer" not in v, where
            for k, x in v.items():
                no_buffers(x, f"{where}.{k}")
        elif isinstance(v, list):
            for x in v:
                no_buffers(x, where)

    d = Dashboard(ctl, start=False)
    try:
        d.refresh()
        d.refresh()
        for fig in _figures(d):
            for tr in fig.data:
                sent = _py_to_js(tr.to_plotly_json(), None)
                no_buffers(sent, f"{fig.layout.title.text}/{tr.name}")
                json.dumps(sent, allow_nan=False)  # raises on NaN/inf and on anything not JSON
                color = sent.get("marker", {}).get("color")
                assert color is None or isinstance(color, (str, list)), (tr.name, color)
    finally:
        d.close()


def test_dashboard_colours_names_and_lanes_are_stable(ctl):
    """One colour per session across charts (none shared), the same "GPU i" names in every chart, every GPU in
    its lane in a fixed order, busy or idle, refresh after refresh."""
    ctl.remove("faces")
    ctl.apply()  # fewer GPUs than workers: one GPU is idle
    assert ctl.current_plan.num_gpus < ctl.gpus
    d = Dashboard(ctl, start=False)
    try:
        lanes = [f"GPU {i}" for i in range(ctl.gpus)]
        for _ in range(3):
            d.refresh()
            assert list(d.util.data[0].y) == lanes
            assert list(d.gantt.data[0].y) == lanes  # the lanes trace: idle GPUs keep their row
            assert list(d.placement.data[0].x) == lanes
            assert "idle" in d.placement.data[0].text
        gantt = {t.name: t.marker.color for t in d.gantt.data[2:]}  # the legend's entries
        place = {t.name: t.marker.color for t in d.placement.data[1:]}
        assert {"classify", "traffic/car"} <= set(place)
        assert all(gantt[s] == c for s, c in place.items())
        bars = d.gantt.data[1]  # each bar's palette position is its session's colour
        assert all(PALETTE[int(v)] == gantt[cd[0]] for v, cd in zip(bars.marker.color, bars.customdata, strict=True))
        assert len(set(place.values())) == len(place)  # classify and traffic/car no longer share a colour
        assert all(t.showlegend is not False for t in d.placement.data[1:])  # a legend names them
        editor = placement_editor(ctl).editor  # the editor's placement chart uses the same colours
        assert {t.name: t.marker.color for t in editor.view.data[1:]} == place
        for fig in _figures(d):
            assert fig.layout.title.text and fig.layout.title.x == 0  # left, clear of the (hidden) toolbar
            assert fig._config.get("displayModeBar") is False
            assert fig.layout.paper_bgcolor == "rgba(0,0,0,0)"  # the theme's background shows through
        for fig in (d.util, d.placement, d.goodput, d.latency, d.drops, d.gantt):
            assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
        assert all(f.layout.width <= 450 for f in _figures(d))  # two per row fit 1000 px, and they wrap
    finally:
        d.close()


def test_session_colors_keep_and_extend():
    from nexus_lab.widgets.figures import session_colors

    first = session_colors(["a", "b"])
    more = session_colors(["c", "a"], first)
    assert more["a"] == first["a"] and more["b"] == first["b"] and len(set(more.values())) == 3
    many = session_colors(f"s{i}" for i in range(25))
    assert len(set(list(many.values())[:20])) == 20


def test_lab_theme_is_read_from_the_settings(tmp_path):
    from nexus_lab.widgets.figures import lab_theme_dark, theme_layout

    assert lab_theme_dark(str(tmp_path)) is False  # nothing set: JupyterLab Light
    f = tmp_path / "@jupyterlab" / "apputils-extension" / "themes.jupyterlab-settings"
    f.parent.mkdir(parents=True)
    f.write_text('{\n  // "theme": "JupyterLab Light"\n  "theme": "JupyterLab Dark"\n}')
    assert lab_theme_dark(str(tmp_path)) is True
    f.write_text('{"theme": "JupyterLab Light", "adaptive-theme": true}')
    assert lab_theme_dark(str(tmp_path)) is None
    assert theme_layout(True)["font"]["color"] != theme_layout(False)["font"]["color"]


def test_static_figures_order_lanes_and_share_colours():
    from nexus_lab.widgets.figures import session_colors, static_gantt, static_placement
    from nexus_lab.widgets.logic import Bar

    bars = [Bar(f"GPU {g}", s, t, t + 0.01, 4) for g, s, t in ((3, "a", 0.0), (0, "b", 0.01), (2, "a", 0.02))]
    colors = session_colors(["a", "b"])
    fig = static_gantt(bars, lanes=[f"GPU {i}" for i in range(4)], colors=colors)
    assert list(fig.data[0].y) == ["GPU 0", "GPU 1", "GPU 2", "GPU 3"]
    assert {t.name: t.marker.color for t in fig.data[2:]} == colors
    assert static_placement([], [(0, 0.5)], colors=colors).data[0].text == ("50%",)


# ---------------------------------------------------------------------------------------------- issue 13: editors
def test_plain_messages():
    from nexus_lab.widgets.edit_common import plain

    assert plain("set_slo.slo_ms: must be > 0, got -1") == "The SLO must be more than 0 ms (you entered -1)."
    said = plain("classify: budget L' = -10.57 ms (SLO 5 ms less pre/post-processing and network) is below "
                 "2*l(1) = 14.49 ms")
    assert said.startswith("For classify, an SLO of 5 ms is too tight") and "L'" not in said and "no time" in said
    assert plain("batches[(0, 'faces')]: must be an integer >= 1, got 0") == (
        "The batch size of faces on GPU 0 must be a whole number, at least 1 (you entered 0).")
    assert "duty cycle" in plain("gpu 1/faces: rate 200.000/s needs batch 12.34 > 1 per duty cycle 61.700 ms")


def test_slo_editor_apply_only_with_a_change_and_stale_messages_go(ctl):
    ed = slo_editor(ctl).editor
    assert ed.apply_button.disabled  # nothing changed yet
    ed.slo_inputs["classify"].value = 80
    assert not ed.apply_button.disabled
    ed.slo_inputs["classify"].value = 100  # back to what runs: no change
    assert ed.apply_button.disabled and ed.edits == {}
    assert ed.apply() is None and "Nothing to apply" in ed.status.value
    ed.slo_inputs["classify"].value = 80
    assert ed.apply() is not None and "Applied" in ed.status.value
    ed.slo_inputs["classify"].value = -10
    assert "Applied" not in ed.status.value and "more than 0 ms" in ed.status.value  # replaced, not stacked
    assert ed.widget.children[-1] is ed.status and ed.status.value.count("<span") == 1


def test_query_editor_renames_refuses_closed_and_says_no_inf(ctl):
    ed = query_editor(ctl, "traffic").editor
    assert ed.apply_button.disabled and "runs now" in ed.status.value  # nothing changed yet
    ed.add_stage(model="vgg_face", parent="detect", gamma=0.5)
    new = ed.stages[-1]["name"]
    assert new == "vgg_face" and not ed.apply_button.disabled  # named after its model, not "stage1"
    ed.rename_stage("detect", "find")
    assert [s["parent"] for s in ed.stages] == [None, "find", "find"] and ed.last_preview.ok
    assert ed.rename_stage("car", "find") is None and "name of its own" in ed.status.value
    assert len(ed.graph.layout.annotations) == 2  # an arrow per edge
    ed.slo.value = 250.0
    assert "inf" not in ed.summary.value
    if ed.last_preview.ok and ed.last_preview.even_gpu_cost is None:
        assert "even split cannot serve" in ed.summary.value
    ctl.close()
    ed.slo.value = 400.0
    assert ed.apply_button.disabled and "closed" in ed.status.value and ed.apply() is None


def test_placement_editor_refuses_bad_batches_and_automatic_is_idempotent(ctl):
    ed = placement_editor(ctl).editor
    g = ctl.current_plan.gpus[0]
    a = g.allocations[0]
    for bad in (0, -3):
        viol = ed.set_batch(g.id, a.session, bad)
        assert viol and "at least 1" in ed.status.value and (g.id, a.session) not in ed.batches
    v = ctl.version
    ed.automatic()
    ed.automatic()
    assert ctl.version == v and "Already automatic" in ed.status.value  # nothing changed: no re-plan


def test_closed_simulator_runs_nothing(ctl):
    ctl.close()
    with pytest.raises(RuntimeError, match="closed"):
        ctl.apply()


def test_placement_editor_uses_headroom_duty_and_refuses_bad_batches():
    """A plan with headroom (fill=2) fills every GPU at 2x the rates; moves are judged at the real rates, so some
    fit; the duty cycle is editable; bars over 100% show as such; absurd batches are refused in words."""
    c = SimController(gpus=4, fill=2.0)
    try:
        c.add_session("vgg16", 60, 120, name="classify")
        c.add_session("vgg_face", 150, 80, name="faces")
        c.add_session("vgg_s", 60, 100, name="scenes")
        c.add_query("traffic", 400, [{"name": "detect", "model": "yolo9000"},
                                     {"name": "car", "model": "vgg16", "parent": "detect", "gamma": 1.5}], rate=10)
        plan = c.apply()
        assert plan.rate_fraction > 1.0
        ed = placement_editor(c).editor
        assert "real rates" in ed.headroom.value and any("at real rates" in t for t in ed.view.data[0].text)
        fits = []
        for g in plan.gpus:
            for a in g.allocations:
                for h in plan.gpus:
                    if h.id != g.id and not ed.move(a.session, g.id, h.id):
                        fits.append((a.session, g.id, h.id))
                    ed.reload()
        assert fits, "no move fits although the plan keeps headroom"
        s, src, dst = fits[0]
        v0 = c.version
        assert ed.move(s, src, dst) == [] and not ed.apply_button.disabled
        assert ed.apply() is not None and c.version == v0 + 1 and "runs" in ed.status.value
        g = c.current_plan.gpus[0]
        assert ed.set_duty(g.id, 0.0) and "duty cycle" in ed.status.value and not ed.duty
        viol = ed.set_duty(g.id, g.duty_cycle_ms * 0.2)
        assert viol and "infeasible" in ed.feasible.value
        assert max(ed.view.data[0].y) > 1.0 and ed.view.layout.yaxis.range[1] > max(ed.view.data[0].y)
        ed.reload()
        a = g.allocations[0]
        assert ed.set_batch(g.id, a.session, 10_000) and "at most" in ed.status.value
    finally:
        c.close()


def test_editors_refuse_values_beyond_sane_bounds(ctl):
    """An SLO over a minute, or a rate the cluster cannot hold, is refused before planning, in plain words."""
    ed = slo_editor(ctl).editor
    v = ctl.version
    pv = ed.set_value("classify", "slo_ms", 1e12)
    assert not pv.ok and ed.apply_button.disabled
    assert "The SLO must be at most 60000 ms (you entered 1e+12)" in ed.status.value
    ed.reset()
    pv = ed.set_value("classify", "rate", 1e9)
    assert not pv.ok and "GPUs of this cluster" in ed.status.value and "lower rate" in ed.status.value
    assert ed.apply() is None and ctl.version == v
    q = query_editor(ctl, "traffic").editor
    q.slo.value = 1e12
    assert "at most 60000 ms" in q.status.value and q.apply_button.disabled
    q.slo.value = 400.0
    q.rate.value = 1e9
    assert "GPUs of this cluster" in q.status.value and q.apply_button.disabled


def test_deployed_gpu_ids_are_worker_indices():
    """GPU i of a deployed plan is the i-th worker, as the dashboard names GPUs (Controller and SimController)."""
    from nexus_lab.controller.placement import by_worker_index

    c = SimController(gpus=3)
    try:
        c.add_session("vgg16", 100, 300, name="classify")
        c.add_session("vgg_s", 60, 300, name="scenes")
        plan = c.plan()
        workers = ["tcp://a", "tcp://b", "tcp://c"]
        where = {g.id: workers[-1 - k] for k, g in enumerate(plan.gpus)}  # the last worker runs plan GPU 0, ...
        out, assign = by_worker_index(plan, where, workers)
        assert [g.id for g in out.gpus] == sorted(assign) and all(workers[i] == w for i, w in assign.items())
        for g in plan.gpus:
            mine = next(x for x in out.gpus if workers[x.id] == where[g.id])
            assert mine.allocations == g.allocations
        same, _ = by_worker_index(plan, {g.id: workers[g.id] for g in plan.gpus}, workers)
        assert same is plan
    finally:
        c.close()
