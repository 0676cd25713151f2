"""Widget logic without a browser: previews, refusals, apply, placement feasibility, the dashboard's refresh loop."""

import threading
import time

import pytest

from nexus_lab.planner import plan_workload
from nexus_lab.widgets import Dashboard, SimController, dashboard, placement_editor, query_editor, slo_editor
from nexus_lab.widgets.logic import (
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
    assert ed.apply_button.disabled and "refused" in ed.preview_html.value and "must be &gt; 0" in ed.preview_html.value
    assert ed.apply() is None and ctl.workload.sessions[0].slo_ms == 100  # nothing pushed
    v0 = ctl.version
    ed.set_value("classify", "slo_ms", 60)
    assert not ed.apply_button.disabled and "GPUs" in ed.preview_html.value
    plan = ed.apply()
    assert plan is not None and ctl.version == v0 + 1
    assert next(s for s in ctl.workload.sessions if s.name == "classify").slo_ms == 60
    assert ed.edits == {} and "applied" in ed.status.value


def test_editors_follow_plans_applied_elsewhere(ctl):
    """The epoch loop (here: an apply outside the editors) re-plans: editors without pending edits show the new
    placement; pending edits stay and are previewed / re-checked against the plan that now runs."""
    slo = slo_editor(ctl).editor
    place = placement_editor(ctl).editor

    def gpus_label(name: str) -> str:
        row = next(r for r in slo.rows.children[1:] if r.children[0].value == name)
        return row.children[4].value

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


def test_slo_editor_rate_text(ctl):
    ed = slo_editor(ctl).editor
    ed.rate_inputs["faces"].value = "abc"
    assert not ed.last_preview.ok and "rate" in ed.last_preview.error
    ed.rate_inputs["faces"].value = "250"
    assert ed.last_preview.ok
    ed.apply()
    assert next(s for s in ctl.workload.sessions if s.name == "faces").rate == 250


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
        assert len(d.placement.data[1].x) == sum(len(g.allocations) for g in ctl.current_plan.gpus)
        assert len(d.gantt.data[0].x) > 0
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
