"""Controller tests: the pure parts (edits, GPU-to-worker assignment, transitions, rates, stats) without a cluster,
then the controller against a small local cluster of simulated GPUs."""

from __future__ import annotations

import json
import time

import pytest

from nexus_lab.batching import batch_floor
from nexus_lab.controller.edits import WorkloadEditor, base_workload
from nexus_lab.controller.html import render
from nexus_lab.controller.placement import assign_gpus, gpu_key, routes_of, transition, worker_gpus
from nexus_lab.controller.rates import RateMonitor, moved
from nexus_lab.controller.stats import aggregate, arrivals_of, strip_window
from nexus_lab.planner import plan_workload
from nexus_lab.workload import WorkloadError


def editor() -> WorkloadEditor:
    wl, pset = base_workload("simulated:titan-x-pascal")
    return WorkloadEditor.from_workload(wl, pset)


# ---------------------------------------------------------------------------------------------- edits
def test_edits_validate_before_anything_is_stored():
    ed = editor()
    with pytest.raises(WorkloadError, match="slo_ms"):
        ed.add_session("vgg16", 0)
    with pytest.raises(WorkloadError, match="slo_ms"):
        ed.add_session("vgg16", float("nan"))
    with pytest.raises(WorkloadError, match="rate"):
        ed.add_session("vgg16", 100, rate=-1)
    with pytest.raises(WorkloadError, match="model"):
        ed.add_session("no-such-model", 100)
    assert ed.names() == set()
    name = ed.add_session("vgg16", 100, rate=50)
    assert name == "vgg16:100"
    with pytest.raises(WorkloadError, match="already exists"):
        ed.add_session("vgg16", 100)
    with pytest.raises(WorkloadError, match="unknown session"):
        ed.set_slo("nope", 10)
    with pytest.raises(WorkloadError, match=r"set_slo\.slo_ms"):
        ed.set_slo(name, -5)
    with pytest.raises(WorkloadError, match=r"set_rate\.rate"):
        ed.set_rate(name, -0.1)
    ed.set_slo(name, 120)
    ed.set_rate(name, 70)
    s = ed.workload().sessions[0]
    assert (s.slo_ms, s.rate) == (120, 70)
    ed.remove(name)
    assert ed.workload().sessions == ()


def test_measured_sessions_take_measured_rates_only():
    ed = editor()
    a = ed.add_session("vgg16", 100, name="a")  # measured
    b = ed.add_session("vgg_s", 50, rate=30, name="b")  # declared
    ed.set_measured(a, 123.0)
    ed.set_measured(b, 999.0)
    rates = {s.name: s.rate for s in ed.workload().sessions}
    assert rates == {"a": 123.0, "b": 30.0}
    ed.set_rate(b, None)
    ed.set_measured(b, 40.0)
    assert {s.name: s.rate for s in ed.workload().sessions}["b"] == 40.0


def test_add_query_checks_stages_and_names_the_field():
    ed = editor()
    stages = [{"name": "detect", "model": "yolo9000"}, {"name": "car", "model": "vgg16", "parent": "detect",
                                                        "gamma": 1.5}]
    ed.add_query("traffic", 400, stages, rate=20)
    q = ed.workload().queries[0]
    assert q.stage_rates() == {"detect": 20.0, "car": 30.0}
    with pytest.raises(WorkloadError, match="already exists"):
        ed.add_query("traffic", 400, stages)
    with pytest.raises(WorkloadError, match=r"add_query\('t2'\).stages\[1\].parent"):
        ed.add_query("t2", 400, [{"name": "d", "model": "yolo9000"}, {"name": "c", "model": "vgg16", "parent": "x"}])
    with pytest.raises(WorkloadError, match="gamma"):
        ed.add_query("t3", 400, [{"name": "d", "model": "yolo9000", "gamma": -1}])
    with pytest.raises(WorkloadError, match="model"):
        ed.add_query("t4", 400, [{"name": "d", "model": "nope"}])
    with pytest.raises(WorkloadError, match="slo_ms"):
        ed.add_query("t5", 0, stages)
    assert ed.names() == {"traffic"}


# ---------------------------------------------------------------------------------------------- placement
def _plan(rates: dict[str, float], gpus: int | None = None):
    ed = editor()
    for model, r in rates.items():
        ed.add_session(model, 100, rate=r)
    return plan_workload(ed.workload(), gpus=gpus)


WORKERS = [f"tcp://127.0.0.1:{9000 + i}" for i in range(6)]


def test_assignment_is_deterministic_and_complete():
    plan = _plan({"vgg16": 600, "vgg_s": 200, "vgg_face": 100})
    a1 = assign_gpus(plan, WORKERS, {})
    a2 = assign_gpus(plan, list(reversed(WORKERS)), {})
    assert a1 == a2
    assert sorted(a1) == [g.id for g in plan.gpus]
    assert len(set(a1.values())) == plan.num_gpus
    with pytest.raises(ValueError, match="workers"):
        assign_gpus(plan, WORKERS[:1], {})


def test_replanning_keeps_unchanged_gpus_where_they_are():
    plan = _plan({"vgg16": 600, "vgg_s": 200, "vgg_face": 100})
    first = worker_gpus(plan, assign_gpus(plan, WORKERS, {}), WORKERS)
    # Shuffle which worker holds what: the assignment must follow the workers, not the GPU ids.
    shuffled = dict(zip(WORKERS, [first[w] for w in reversed(WORKERS)], strict=True))
    again = worker_gpus(plan, assign_gpus(plan, WORKERS, shuffled), WORKERS)
    assert all(gpu_key(again[w]) == gpu_key(shuffled[w]) for w in WORKERS)
    tr = transition(shuffled, again)
    assert tr.changed == ()
    # More load for one session: GPUs of the others stay on their workers.
    bigger = _plan({"vgg16": 900, "vgg_s": 200, "vgg_face": 100})
    moved_to = worker_gpus(bigger, assign_gpus(bigger, WORKERS, first), WORKERS)
    for w in WORKERS:
        old = {a["session"] for a in (first[w] or {}).get("allocations", ())}
        if old and "vgg16:100" not in old:
            new = {a["session"] for a in (moved_to[w] or {}).get("allocations", ())}
            assert old <= new


def test_pins_place_a_session_on_its_worker():
    plan = _plan({"vgg16": 600, "vgg_s": 200})
    target = WORKERS[5]
    a = assign_gpus(plan, WORKERS, {}, pins={"vgg_s:100": target})
    gid = next(g.id for g in plan.gpus if any(x.session == "vgg_s:100" for x in g.allocations))
    assert a[gid] == target


def test_transition_loads_before_routing_and_drains_after():
    plan_a = _plan({"vgg16": 100})
    plan_b = _plan({"vgg_s": 100})
    w = WORKERS[:2]
    old = worker_gpus(plan_a, assign_gpus(plan_a, w, {}), w)
    new = worker_gpus(plan_b, assign_gpus(plan_b, w, old), w)
    tr = transition(old, new)
    # vgg16 moves off its worker, vgg_s lands on the idle one: the idle one is applied first.
    idle = next(x for x in w if old[x] is None)
    assert idle in tr.first
    busy = next(x for x in w if old[x] is not None)
    if gpu_key(new[busy]) != gpu_key(old[busy]):
        assert busy in tr.second
    # Mid-transition, every session with a ready new home routes there; vgg16 stays routed until drained.
    assert all(addr in tr.first or addr in tr.unchanged for s, r in tr.mid_routes.items() if s == "vgg_s:100"
               for addr, _ in r)
    assert tr.mid_routes.get("vgg16:100") == routes_of(old)["vgg16:100"]
    assert tr.final_routes == routes_of(new)
    assert "vgg16:100" not in tr.final_routes


# ---------------------------------------------------------------------------------------------- rates
def test_rate_monitor_moving_average_and_threshold():
    m = RateMonitor(alpha=0.5, min_windows=2)
    m.observe({"a": 100}, 1.0)
    assert m.rate("a") is None  # not trusted after one window
    m.observe({"a": 200}, 1.0)
    assert m.average("a") == pytest.approx(150.0)
    assert m.rate("a") == pytest.approx(150.0)  # one high window is noise
    m.observe({"a": 200}, 1.0)
    assert m.average("a") == pytest.approx(175.0)
    assert m.rate("a") == pytest.approx(200.0)  # two are a surge: planned for at once
    m.observe({"a": 0}, 1.0)
    assert m.rate("a") == pytest.approx(87.5)
    m.observe({}, 2.0, sessions={"a"})  # silent window: the average decays
    assert m.rate("a") == m.average("a") == pytest.approx(43.75)
    assert moved({"a": 100.0}, {"a": 75.0}, 0.2) == ["a"]
    assert moved({"a": 100.0}, {"a": 125.0}, 0.2) == ["a"]
    assert moved({"a": 100.0}, {"a": 75.0}, 0.2, up_only=True) == []
    assert moved({"a": 100.0}, {"a": 85.0}, 0.2) == []
    assert moved({"a": 0.0}, {"a": 0.5}, 0.2) == []
    assert moved({"a": 0.0}, {"a": 0.5}, 0.2, floor=1.0) == ["a"]
    with pytest.raises(ValueError, match="alpha"):
        RateMonitor(alpha=0)


# ---------------------------------------------------------------------------------------------- stats
def _window(worker, t0, t1, arrivals, within, drops=None, util=0.5):
    return strip_window(worker, {"t0": t0, "t1": t1, "utilization": util, "batches": 3, "trace": [1, 2],
                                 "sessions": {"s": {"arrivals": arrivals, "served": within, "within_slo": within,
                                                    "errors": 0, "drops": drops or {}, "p50_ms": 10.0,
                                                    "p99_ms": 20.0}}})


def test_stats_aggregate_over_workers_and_windows():
    wins = [_window("w1", 0, 1, 100, 99, {"deadline": 1}), _window("w2", 0, 1, 50, 50, util=1.0),
            _window("w1", 1, 2, 100, 100)]
    out = aggregate(wins, {"w1": 0, "w2": 1})
    s = out["sessions"]["s"]
    assert s["offered_rate"] == pytest.approx(125.0)
    assert s["goodput"] == pytest.approx(124.5)
    assert s["slo_attainment"] == pytest.approx(249 / 250)
    assert s["drops"] == {"deadline": 1}
    assert out["gpus"]["w1"]["utilization"] == pytest.approx(0.5)
    assert out["gpus"]["w2"] == {"utilization": 1.0, "gpu": 1}
    assert "trace" not in wins[0]
    arrivals, span = arrivals_of(wins[:2])
    assert arrivals == {"s": 150} and span == 1.0
    assert aggregate([])["sessions"] == {}


def test_html_summary_renders_state():
    state = {"cluster": {"scheduler": "tcp://x", "workers": 2, "gpus_used": 1, "device": "simulated:titan-x-pascal",
                         "epoch_s": 30.0, "version": 3, "plan_age_s": 4.0, "paused": False,
                         "dashboard_link": "http://127.0.0.1:8787/status"},
             "gpus": [{"worker": "tcp://w1", "gpu": 0, "duty_cycle_ms": 50.0, "utilization": 0.5,
                       "sessions": ["a<b>"]}],
             "sessions": [{"name": "a<b>", "model": "vgg16", "slo_ms": 100, "rate": 10.0, "measured": True,
                           "goodput": 9.0, "slo_attainment": 0.99, "gpus": [0]}],
             "queries": [{"name": "q", "slo_ms": 400, "stages": [{"name": "d", "budget_ms": 100.0}]}]}
    out = render(state)
    assert "http://127.0.0.1:8787/status" in out and "a&lt;b&gt;" in out and "plan v3" in out
    json.dumps(state)


# ---------------------------------------------------------------------------------------------- on a cluster
def test_controllers_register_for_the_panel_only_inside_a_kernel(monkeypatch):
    """``register=None`` registers inside a Jupyter kernel only: an IPython shell that has a kernel."""
    import sys
    import types

    from nexus_lab.lab.registry import in_kernel

    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert not in_kernel()  # IPython never loaded: not a kernel (and not imported to find out)
    assert "IPython" not in sys.modules
    fake = types.ModuleType("IPython")
    monkeypatch.setitem(sys.modules, "IPython", fake)
    for shell, inside in ((None, False), (types.SimpleNamespace(), False),
                          (types.SimpleNamespace(kernel=object()), True)):
        fake.get_ipython = lambda shell=shell: shell
        assert in_kernel() is inside


@pytest.fixture(scope="module")
def ctl(tmp_path_factory):
    pytest.importorskip("nexus_lab.runtime.device")
    import nexus_lab

    with pytest.MonkeyPatch.context() as mp:  # the registration file goes to a temporary Jupyter runtime dir
        mp.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path_factory.mktemp("jupyter-runtime")))
        c = nexus_lab.start(gpus=2, epoch_s=3600.0, poll_s=0.5, register=True)
        yield c
        c.close()


def test_controller_is_a_controller_view(ctl):
    """Views are written against ``ControllerView``: the controller has every member it declares."""
    from nexus_lab.controller.protocol import ControllerView, PanelControl, missing_members

    assert isinstance(ctl, ControllerView) and isinstance(ctl, PanelControl)
    assert missing_members(ctl, ControllerView) == []
    assert ctl.gpus == 2 and not ctl.closed and isinstance(ctl.traces(), dict)


def _window_once_said(ctl, session: str, want: float, within_s: float = 2.0) -> float:
    """The frontend's coalescing window of ``session`` (s) once it is ``want``, or after ``within_s``; one request
    per poll, so every backend of the session has a stream to say its hold on."""
    deadline = time.time() + within_s
    while True:
        ctl.infer(session, None, timeout_s=5)
        got = ctl.frontend.window_s(session)
        if got == pytest.approx(want) or time.time() > deadline:
            return got
        time.sleep(0.05)


def test_started_workers_keep_freed_activations_in_the_heap(ctl):
    """Both glibc thresholds reach every worker: a trim threshold alone freezes the mmap threshold at 128 KiB,
    and each forward pass then page-faults its activations in again."""
    import os

    from nexus_lab.controller import WORKER_MALLOC_ENV

    seen = ctl.client.run(lambda: {k: os.environ.get(k) for k in WORKER_MALLOC_ENV})
    assert len(seen) == 2
    assert all(env == {k: str(v) for k, v in WORKER_MALLOC_ENV.items()} for env in seen.values())


def test_started_servers_skip_housekeeping_serving_does_not_need(ctl):
    """No statistical profiler on the workers; every server's loop ticks once a second, not every 20 ms."""

    def housekeeping(dask_worker):
        import dask

        return (dask_worker.periodic_callbacks["tick"].callback_time,
                dask.config.get("distributed.worker.profile.enabled"))

    seen = ctl.client.run(housekeeping)
    assert len(seen) == 2 and all(v == (1000, False) for v in seen.values()), seen
    assert ctl.client.cluster.scheduler.periodic_callbacks["tick"].callback_time == 1000


def test_controller_applies_serves_and_reports(ctl):
    name = ctl.add_session("vgg_s", slo_ms=50, rate=40, name="scenes")
    preview = ctl.plan()
    assert preview.num_gpus >= 1 and ctl.version == 0
    with pytest.raises(WorkloadError, match=r"infer\.session"):
        ctl.infer("nope", None)
    plan = ctl.apply()
    assert ctl.version == 1 and plan.num_gpus == preview.num_gpus
    assert ctl.frontend.window_s(name) == pytest.approx(0.001)  # simulated GPUs hold nothing: the frontend's 1 ms
    floors = ctl.set_batch_floor(True)  # live, on every backend; simulated GPUs have it off by default
    assert sorted(floors) == ctl.workers()
    assert max(f.get(name, 1) for f in floors.values()) > 1  # vgg_s batches pay off from 2 on
    # each backend says its hold min(d, l(floor)) on its stream; the frontend coalesces for the shortest one
    prof = ctl.editor.workload().profile("vgg_s")
    holds = [min(g.duty_cycle_ms, float(prof.lat_ms[batch_floor(prof.lat_ms, a.batch)]))
             for g in plan.gpus for a in g.allocations if a.session == name and batch_floor(prof.lat_ms, a.batch) > 1]
    assert _window_once_said(ctl, name, min(holds) / 1000.0) == pytest.approx(min(holds) / 1000.0)
    assert all(f.get(name, 1) == 1 for f in ctl.set_batch_floor(None).values())
    assert _window_once_said(ctl, name, 0.001) == pytest.approx(0.001)
    futs = []
    for _ in range(20):  # at the planned rate (40/s): a burst beyond the plan would be early-dropped
        futs.append(ctl.submit(name, None))
        time.sleep(0.025)
    for f in futs:
        f.result(5)
    time.sleep(0.6)
    ctl.collect()
    st = ctl.stats(window_s=None)
    assert st["sessions"][name]["served"] >= 20
    state = ctl.state()
    json.dumps(state)
    assert state["cluster"]["workers"] == 2 and state["sessions"][0]["name"] == name
    assert "nexus_lab Controller" in ctl._repr_html_()
    # Applying the same workload again touches no worker.
    v = ctl.version
    ctl.apply()
    assert ctl.events()[-1]["moved"] == [] and ctl.version == v + 1


def test_query_runs_its_dag_and_reports_each_stage(ctl):
    ctl.add_query("traffic", 400, [{"name": "detect", "model": "yolo9000"},
                                   {"name": "car", "model": "vgg16", "parent": "detect", "gamma": 1.0}], rate=5)
    ctl.apply()
    outs = [ctl.query("traffic", None, timeout_s=10) for _ in range(6)]
    for out in outs:
        assert set(out["outputs"]) == {"detect", "car"} and out["latency_ms"] > 0
    assert sum(o["within_slo"] for o in outs) >= 5
    time.sleep(0.6)
    ctl.collect()
    (q,) = ctl.state()["queries"]
    stages = {s["name"]: s for s in q["stages"]}
    assert stages["detect"]["budget_ms"] > 0 and stages["car"]["budget_ms"] > 0
    assert stages["detect"]["budget_ms"] + stages["car"]["budget_ms"] <= 400
    # each stage reports what its backends measured, as a session does
    assert stages["detect"]["offered_rate"] > 0 and stages["detect"]["goodput"] > 0
    assert stages["detect"]["latency_p99_ms"] <= stages["detect"]["budget_ms"] + 50
    assert isinstance(stages["car"]["drops"], dict)


def test_apply_plan_runs_a_valid_manual_placement_and_refuses_an_invalid_one(ctl):
    import dataclasses

    from nexus_lab.planner import PlanInvalid

    if "scenes" not in ctl.editor.names():  # whichever tests of the module ran before on this controller
        ctl.add_session("vgg_s", slo_ms=50, rate=40, name="scenes")
    plan = ctl.apply()
    g = plan.gpus[0]
    small = dataclasses.replace(g, allocations=(dataclasses.replace(g.allocations[0], batch=1), *g.allocations[1:]))
    with pytest.raises(PlanInvalid, match="needs batch"):
        ctl.apply_plan(dataclasses.replace(plan, gpus=(small, *plan.gpus[1:])))
    v = ctl.version
    assert ctl.apply_plan(plan) is plan and ctl.version == v + 1
    # Asked to (register=True), the controller is registered for the panel while it lives.
    assert ctl.registration is not None and not ctl.registration.closed


def test_a_new_controller_adopts_the_running_plan(ctl):
    from nexus_lab.controller import Controller

    if "scenes" not in ctl.editor.names():  # whichever tests of the module ran before on this controller
        ctl.add_session("vgg_s", slo_ms=50, rate=40, name="scenes")
        ctl.apply()
    other = Controller(ctl.client, auto=False)
    try:
        assert other.registration is None  # outside a Jupyter kernel a controller registers only when asked
        assert other.version == ctl.version
        assert {w: gpu_key(g) for w, g in other.assignment.items()} == \
            {w: gpu_key(g) for w, g in ctl.assignment.items()}
        assert other.editor.names() == ctl.editor.names()
        other.infer("scenes", None, timeout_s=5)  # served through the adopted routes (raises otherwise)
    finally:
        other.frontend.close()


def test_epoch_loop_replans_on_rate_moves_and_joining_workers():
    pytest.importorskip("nexus_lab.runtime.device")
    import nexus_lab
    from nexus_lab.runtime.loadgen import run_load

    with nexus_lab.start(gpus=1, epoch_s=3600.0, poll_s=0.5, auto=False) as c:
        name = c.add_session("vgg_s", slo_ms=100, name="measured")  # rate=None: measured
        seen: list[int] = []
        c.on_plan(lambda _p, v: 1 / 0)  # a failing listener is logged and does not stop the others
        unsubscribe = c.on_plan(lambda plan, v: seen.append((v, plan.num_gpus)))
        c.apply()
        assert seen == [(c.version, 1)]
        assert c.tick() is None  # nothing measured yet, epoch not over
        import threading

        load = threading.Thread(target=run_load, args=(c.frontend, {name: 60.0}, 3.0), kwargs={"settle_s": 1.0})
        load.start()
        reasons = []
        while load.is_alive():  # the loop's polls, by hand
            time.sleep(0.5)
            reasons.append(c.tick())
        load.join()
        moves = [r for r in reasons if r and r.startswith("rate moved")]
        assert moves, reasons
        assert c.workload.sessions[0].rate > 30.0  # planned at the measured rate (with headroom)
        c._cluster.scale(2)
        c.client.wait_for_workers(2, timeout=60)
        assert c.tick().startswith("workers changed (+1")
        assert seen[-1][0] == c.version and len(seen) >= 3  # the loop's re-plans notify the listeners too
        unsubscribe()
        c.pause()
        v = c.version
        c.replan_now()  # without a loop thread: applied at once
        assert c.version == v + 1
        assert c.tick() is None  # paused: the loop measures but never re-plans
        assert c.version == v + 1
        c.resume()


def test_load_on_workers_follows_a_live_replan():
    """Load generators on the workers install the routes the controller publishes after each apply: moving a
    session to another worker mid-run turns nothing away (``no_route``) once the old backend stops accepting."""
    pytest.importorskip("nexus_lab.runtime.device")
    import nexus_lab
    from nexus_lab.runtime.loadgen import start_load

    with nexus_lab.start(gpus=2, epoch_s=3600.0, poll_s=0.5, fill=1.0) as c:
        name = c.add_session("vgg_s", slo_ms=100, rate=60, name="moving")
        c.pin(name, 0)
        c.apply()
        c.pause()
        first = next(w for w, g in c.assignment.items() if g)
        handle = start_load(c.client, c.frontend, {name: 60.0}, 6.0, workers=[first], seed=2)
        time.sleep(1.5)
        c.pin(name, next(w for w in c.workers() if w != first))
        c.apply()  # the old backend drains for 2 s, then turns requests away: the generator must have moved
        rep = handle.result()
    s = rep["sessions"][name]
    assert s["unfinished"] == 0 and s["failed"] == 0
    assert s["dropped"].get("no_route", 0) == 0, s["dropped"]
    assert s["ok"] >= 0.95 * s["offered"]
