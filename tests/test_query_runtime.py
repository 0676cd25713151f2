"""Query frames as asynchronous DAGs at run time: parallel siblings, joins, batched fan-out, a stage that ends its
frame, end-to-end deadlines on every request, the controller's query API and the load generator driving queries.

Most tests run frames on a scripted frontend (its own event loop, replies after a fixed latency per session) so
timings are exact; one module-scoped cluster checks the same through the controller."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from nexus_lab.controller.stats import aggregate_queries
from nexus_lab.querytime import plan_stage_timings, stage_deadlines
from nexus_lab.runtime.loadgen import merge_reports, run_load
from nexus_lab.runtime.queries import FanoutCrop, aquery, start_queries, start_query

DIAMOND = {"name": "diamond", "slo_ms": 1000.0, "stages": [
    {"name": "detect", "session": "diamond/detect", "budget_ms": 200.0},
    {"name": "car", "session": "diamond/car", "budget_ms": 300.0},
    {"name": "face", "session": "diamond/face", "budget_ms": 200.0},
    {"name": "track", "session": "diamond/track", "budget_ms": 400.0}]}
PARENTS = {"detect": [], "car": ["detect"], "face": ["detect"], "track": ["car", "face"]}


class ScriptedFrontend:
    """A frontend whose sessions answer a whole ``send_many`` call at once after a fixed latency (a batch), or
    drop / fail every request of it; records every call."""

    def __init__(self, latency_s: dict[str, float], *, drop: dict[str, str] | None = None,
                 fail: dict[str, str] | None = None) -> None:
        self.latency_s, self.drop, self.fail = latency_s, drop or {}, fail or {}
        self.calls: list[dict] = []
        self.sessions = {s: {"model": "", "slo_ms": 1000.0} for s in latency_s}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run_on_loop(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def window_s(self, session: str) -> float:
        return 0.001

    def send_many(self, session, items, on_done, *, deadline=None, arrived=None, timeout_s=None):
        assert threading.get_ident() == self.thread.ident  # frames run on the loop thread only
        if session not in self.latency_s:
            raise ValueError(f"session: unknown session {session!r}")
        self.calls.append({"session": session, "items": list(items), "deadline": deadline, "t": time.time()})
        if session in self.drop:  # as a frontend with no route does: at once, inside the call
            for cb in on_done:
                cb("dropped", self.drop[session])
            return

        def reply() -> None:
            for cb, x in zip(on_done, items, strict=True):
                cb("error", self.fail[session]) if session in self.fail else cb("ok", (session, x))

        self.loop.call_later(self.latency_s[session], reply)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(2)

    def first(self, session: str) -> dict:
        return next(c for c in self.calls if c["session"] == session)


@pytest.fixture
def scripted():
    made = []

    def make(**kw):
        fe = ScriptedFrontend(**kw)
        made.append(fe)
        return fe

    yield make
    for fe in made:
        fe.close()


def _crop(counts):
    return lambda p_in, p_out, stage: [f"{stage}<-{p_in}:{k}" for k in range(counts[stage])]


LAT = {"diamond/detect": 0.05, "diamond/car": 0.1, "diamond/face": 0.1, "diamond/track": 0.05}


def test_siblings_run_together_and_a_join_waits_for_all_its_parents(scripted):
    fe = scripted(latency_s=dict(LAT, **{"diamond/car": 0.15, "diamond/face": 0.2}))
    out = start_query(fe, DIAMOND, PARENTS, "frame", crop=_crop({"car": 2, "face": 1, "track": 1})).result(5)
    assert out["ended_by"] is None and out["within_slo"]
    car, face, track = fe.first("diamond/car"), fe.first("diamond/face"), fe.first("diamond/track")
    assert abs(car["t"] - face["t"]) < 0.03  # siblings leave together, right after detect
    # the join starts only after its slowest parent (face, 200 ms) answered, not after car (150 ms)
    assert track["t"] - face["t"] >= 0.19
    # its input: one child per parent item, concatenated in its parents' order (2 from car, then 1 from face)
    assert track["items"] == ["track<-car<-frame:0:0", "track<-car<-frame:1:0", "track<-face<-frame:0:0"]
    assert [len(v) for v in out["outputs"].values()] == [1, 2, 1, 3]
    # parallel: detect + the slower sibling + track (300 ms), well below the 450 ms a stage-by-stage run would take
    assert 290 <= out["latency_ms"] < 420


def test_a_fan_out_of_sixteen_goes_out_in_one_call_and_costs_one_batch(scripted):
    q = {"name": "fan", "slo_ms": 500.0, "stages": [{"name": "detect", "session": "d", "budget_ms": 200.0},
                                                   {"name": "car", "session": "c", "budget_ms": 300.0}]}
    fe = scripted(latency_s={"d": 0.03, "c": 0.06})
    out = start_query(fe, q, {"detect": [], "car": ["detect"]}, None, crop=_crop({"car": 16})).result(5)
    calls = [c for c in fe.calls if c["session"] == "c"]
    assert len(calls) == 1 and len(calls[0]["items"]) == 16  # one hand-over: they coalesce and batch together
    assert len(out["outputs"]["car"]) == 16 and out["latency_ms"] < 300  # one after another: 30 + 16 * 60 ms


def test_every_request_carries_the_frames_end_to_end_stage_deadline(scripted):
    fe = scripted(latency_s=LAT)
    tight = dict(DIAMOND, slo_ms=800.0)  # the budgets stack to 900 ms on detect-car-track: the SLO caps it
    t_before = time.time()
    out = start_query(fe, tight, PARENTS, "frame", crop=_crop({"car": 1, "face": 1, "track": 1})).result(5)
    t_after = time.time()
    assert out["ended_by"] is None
    lo = stage_deadlines(plan_stage_timings(tight["stages"], PARENTS), t_before, 0.8)
    hi = stage_deadlines(plan_stage_timings(tight["stages"], PARENTS), t_after, 0.8)
    for stage in PARENTS:
        got = fe.first(f"diamond/{stage}")["deadline"]
        assert lo[stage] <= got <= hi[stage], stage
    t0 = fe.first("diamond/detect")["deadline"] - 0.2
    assert fe.first("diamond/car")["deadline"] == pytest.approx(t0 + 0.5, abs=1e-6)
    assert fe.first("diamond/track")["deadline"] == pytest.approx(t0 + 0.8, abs=1e-6)  # min(200 + 300 + 400, SLO)


def test_a_dropped_stage_ends_the_frame_and_says_why(scripted):
    fe = scripted(latency_s=LAT, drop={"diamond/face": "overload"})
    out = start_query(fe, DIAMOND, PARENTS, "frame", crop=_crop({"car": 1, "face": 2, "track": 1})).result(5)
    assert out["ended_by"] == {"stage": "face", "reason": "overload", "status": "dropped"}
    assert not out["within_slo"] and "face" not in out["outputs"] and out["outputs"]["detect"]
    time.sleep(0.2)  # car still answers, but the join never starts
    assert not [c for c in fe.calls if c["session"] == "diamond/track"]


def test_a_failed_stage_or_crop_ends_the_frame_naming_the_stage(scripted):
    fe = scripted(latency_s=LAT, fail={"diamond/car": "model raised"})
    out = start_query(fe, DIAMOND, PARENTS, "f", crop=_crop({"car": 1, "face": 1, "track": 1})).result(5)
    assert out["ended_by"] == {"stage": "car", "reason": "model raised", "status": "failed"}

    def bad_crop(p_in, p_out, stage):
        raise RuntimeError("no boxes here")

    out = start_query(scripted(latency_s=LAT), DIAMOND, PARENTS, "f", crop=bad_crop).result(5)
    assert out["ended_by"]["stage"] in ("car", "face") and out["ended_by"]["status"] == "failed"
    assert "no boxes here" in out["ended_by"]["reason"]


def test_a_stage_with_no_items_is_done_and_its_children_run_on_nothing(scripted):
    fe = scripted(latency_s=LAT)
    out = start_query(fe, DIAMOND, PARENTS, "f", crop=_crop({"car": 0, "face": 0, "track": 1})).result(5)
    assert out["ended_by"] is None and out["outputs"]["car"] == [] and out["outputs"]["track"] == []
    assert {c["session"] for c in fe.calls} == {"diamond/detect"}


def test_bad_queries_are_refused_naming_the_field(scripted):
    fe = scripted(latency_s=LAT)
    with pytest.raises(ValueError, match=r"query\.slo_ms"):
        start_query(fe, dict(DIAMOND, slo_ms=0), PARENTS, None)
    with pytest.raises(ValueError, match="has no parents entry"):
        start_query(fe, DIAMOND, {"detect": []}, None)
    with pytest.raises(ValueError, match="cycle"):
        start_query(fe, DIAMOND, dict(PARENTS, detect=["track"]), None)
    bad = dict(DIAMOND, stages=[dict(DIAMOND["stages"][0], session="nope")])
    with pytest.raises(ValueError, match="unknown session"):  # the root refuses it: the future raises
        start_query(fe, bad, {"detect": []}, None).result(5)


def test_many_frames_at_once_and_from_asyncio(scripted):
    fe = scripted(latency_s=LAT)
    crop = FanoutCrop({"car": 1.5, "face": 0.5, "track": 1.0}, seed=1)
    t0 = time.time()
    outs = [f.result(5) for f in start_queries(fe, DIAMOND, PARENTS, range(40), crop=crop)]
    assert all(o["ended_by"] is None for o in outs) and time.time() - t0 < 1.0  # together, not one after another
    cars = sum(len(o["outputs"]["car"]) for o in outs)
    assert 40 <= cars <= 85  # Poisson(1.5) per frame: 60 expected
    assert asyncio.run(aquery(fe, DIAMOND, PARENTS, "x", crop=crop))["ended_by"] is None
    with pytest.raises(ValueError, match="gammas"):
        FanoutCrop({"car": -1.0})


def test_the_load_generator_drives_a_query_and_publishes_its_windows(scripted):
    fe = scripted(latency_s=dict(LAT, **{"diamond/drop": 0.01}), drop={"diamond/drop": "deadline"})
    routes = {"diamond": {"query": DIAMOND, "parents": PARENTS}}
    windows: list[dict] = []
    rep = run_load(fe, {"diamond": 40.0}, 1.5, queries=routes, seed=2, settle_s=2.0, publish=windows.append,
                   crop=FanoutCrop({"car": 1.0, "face": 1.0, "track": 0.5}, seed=3))
    q = rep["queries"]["diamond"]
    assert 35 <= q["offered"] <= 90 and q["completed"] == q["offered"] == q["within_slo"]
    assert q["slo_attainment"] == 1.0 and 200 < q["p50_ms"] < 400 and q["unfinished"] == 0
    assert rep["sessions"] == {}  # a query is not a session
    pooled = aggregate_queries(windows)["diamond"]  # what a controller makes of the published windows
    assert pooled["frames"] == q["offered"] and pooled["within_slo"] == q["within_slo"]
    assert pooled["slo_attainment"] == 1.0 and pooled["latency_p99_ms"] >= pooled["latency_p50_ms"] > 200
    merged = merge_reports([rep, rep])["queries"]["diamond"]
    assert merged["offered"] == 2 * q["offered"] and merged["slo_attainment"] == 1.0
    # a stage that drops everything: every frame ends there, and the tallies say so
    one = {"name": "one", "slo_ms": 100.0, "stages": [{"name": "d", "session": "diamond/drop", "budget_ms": 100.0}]}
    rep = run_load(fe, {"one": 30.0}, 0.5, queries={"one": {"query": one, "parents": {"d": []}}}, settle_s=1.0)
    q = rep["queries"]["one"]
    assert q["offered"] > 0 and q["ended_by"] == {"d: deadline": q["offered"]} and q["within_slo"] == 0
    with pytest.raises(ValueError, match=r"rates\['nope'\]: unknown session or query"):
        run_load(fe, {"nope": 1.0}, 0.1, queries=routes)


def test_aggregate_queries_pools_sources_over_their_span():
    w1 = {"t0": 0.0, "t1": 1.0, "queries": {"q": {"slo_ms": 100.0, "offered": 10, "ended": 10, "completed": 9,
                                                   "within_slo": 8, "ended_by": {"a: overload": 1},
                                                   "latencies_ms": [10.0] * 8 + [200.0]}}}
    w2 = {"t0": 1.0, "t1": 2.0, "queries": {"q": {"slo_ms": 100.0, "offered": 10, "ended": 9, "completed": 9,
                                                   "within_slo": 9, "ended_by": {}, "latencies_ms": [20.0] * 9}}}
    row = aggregate_queries([w1, w2, {"t0": 5.0, "t1": 6.0, "queries": {}}])["q"]
    assert row["frames"] == 20 and row["offered_rate"] == pytest.approx(10.0) and row["goodput"] == 8.5
    assert row["slo_attainment"] == pytest.approx(17 / 19) and row["ended_by"] == {"a: overload": 1}
    assert row["latency_p50_ms"] == 20.0 and row["latency_p99_ms"] > 100  # pooled: 8 x 10, 9 x 20, 200
    assert aggregate_queries([]) == {}


# ------------------------------------------------------------------------------------------ on a cluster
@pytest.fixture(scope="module")
def ctl():
    pytest.importorskip("distributed")
    import nexus_lab

    c = nexus_lab.start(gpus=2, device="simulated:titan-x-pascal", epoch_s=3600.0, poll_s=0.5, register=False)
    c.add_query("traffic", 400, [{"name": "detect", "model": "yolo9000"},
                                 {"name": "car", "model": "vgg16", "parent": "detect", "gamma": 1.5},
                                 {"name": "face", "model": "vgg_face", "parent": "detect", "gamma": 1.5}], rate=40)
    c.apply()
    yield c
    c.close()


@pytest.mark.serial
def test_the_controller_runs_queries_and_reports_them_end_to_end(ctl):
    from nexus_lab.workload import WorkloadError

    routes = ctl.query_routes()
    assert routes["traffic"]["parents"] == {"detect": [], "car": ["detect"], "face": ["detect"]}
    assert [s["session"] for s in routes["traffic"]["query"]["stages"]] == ["traffic/detect", "traffic/car",
                                                                           "traffic/face"]
    one = ctl.query("traffic", None)
    assert set(one) >= {"outputs", "latency_ms", "within_slo", "ended_by"}
    fut = ctl.submit_query("traffic", np.zeros(3))
    outs = ctl.query_many("traffic", [None] * 4)  # all in flight together: a burst the plan's admission takes
    assert fut.result(10)["ended_by"] is None
    assert sum(o["within_slo"] for o in outs) >= 3
    # the simulated detector finds 0..3 boxes per frame; each becomes one car and one face request
    assert all(len(o["outputs"]["car"]) == len(o["outputs"]["detect"][0]) for o in outs if o["ended_by"] is None)
    with pytest.raises(WorkloadError, match=r"query\.name: unknown query 'nope'"):
        ctl.query("nope", None)
    with pytest.raises(WorkloadError, match=r"query_many\.frames: must be a list"):
        ctl.query_many("traffic", "frames")
    with pytest.raises(WorkloadError, match=r"query_many\.timeout_s"):
        ctl.query_many("traffic", [None], timeout_s=-1)
    rep = ctl.run_load({"traffic": 20.0}, 2.0, seed=4,
                       crop=FanoutCrop({"car": 1.5, "face": 1.5}, seed=4))
    q = rep["queries"]["traffic"]
    assert q["offered"] >= 20 and q["slo_attainment"] >= 0.95 and q["p99_ms"] <= 400
    row = next(r for r in ctl.state()["queries"] if r["name"] == "traffic")["end_to_end"]
    assert row["frames"] >= q["offered"] and row["slo_attainment"] >= 0.95 and row["slo_ms"] == 400
    assert row["latency_p50_ms"] <= row["latency_p99_ms"] <= 400 and row["goodput"] > 0
    from nexus_lab.widgets.dashboard import Dashboard

    ctl.query_many("traffic", [None] * 2)  # fresh frames of the controller's own, whatever the import took
    dash = Dashboard(ctl, start=False)  # the query's end-to-end row beside its stages' rows
    try:
        names = list(dash.goodput.data[1].x)
        assert names.index("traffic (end to end)") < names.index("traffic/detect")
        assert dash.latency.data[2].y[names.index("traffic (end to end)")] == 400
        assert "traffic: " in dash.header.value and "of frames within 400 ms" in dash.header.value
    finally:
        dash.close()


@pytest.mark.serial
def test_load_generators_on_workers_drive_queries_and_publish_them(ctl):
    from nexus_lab.runtime.loadgen import start_load

    handle = start_load(ctl.client, ctl.frontend, {"traffic": 16.0}, 2.0, queries=ctl.query_routes(),
                        crop=FanoutCrop({"car": 1.5, "face": 1.5}, seed=5), keep_latencies=True)
    time.sleep(1.5)
    live = ctl.query_stats(window_s=1.2)["traffic"]  # while it runs: what the generators published so far
    rep = handle.result()
    q = rep["queries"]["traffic"]
    assert rep["lost_generators"] == 0 and q["offered"] >= 16 and q["slo_attainment"] >= 0.95
    assert live["frames"] > 0 and live["offered_rate"] > 0
