"""Tests of the frontend dispatcher and the load generator against backends on simulated GPUs: weighted routing,
coalescing, errors before sending, TLS, a killed worker, load from worker processes, query fan-out."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from collections import Counter

import dask
import numpy as np
import pytest

pytest.importorskip("nexus_lab.runtime.device")

from backend_calls import call_sync
from distributed import Client, LocalCluster

from nexus_lab.controller import worker_malloc_config
from nexus_lab.runtime import wire
from nexus_lab.runtime.backend import NexusBackend
from nexus_lab.runtime.frontend import Frontend
from nexus_lab.runtime.loadgen import arrival_times, start_load
from nexus_lab.runtime.queries import crop_boxes, start_query
from nexus_lab.runtime.results import Dropped, RequestFailed
from nexus_lab.runtime.routes import Route

SIM = "simulated:titan-x-pascal"
MALLOC = worker_malloc_config()
SESSIONS = {"cls": {"model": "vgg_s", "slo_ms": 200.0, "budget_ms": 190.0}}


def gpu_of(session: str = "cls", model: str = "vgg_s", slo: float = 200.0, batch: int = 32, duty_ms: float = 40.0):
    return {"id": 0, "duty_cycle_ms": duty_ms, "occupancy": 0.5, "memory_mb": 1000.0,
            "allocations": [{"session": session, "model": model, "slo_ms": slo, "batch": batch, "rate": 100.0}]}


def outcome(fut: concurrent.futures.Future) -> str:
    try:
        fut.result(10)
        return "ok"
    except Dropped as exc:
        return exc.reason
    except RequestFailed:
        return "failed"


def serve(client: Client, workers: list[str], sessions: dict = SESSIONS, gpu: dict | None = None) -> None:
    for w in workers:
        rep = call_sync(client, w, "nexus_apply", gpu=gpu or gpu_of(), sessions=sessions, version=1)
        assert rep["error"] is None, rep


@pytest.fixture(scope="module")
def cluster():
    with dask.config.set(MALLOC), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as lc, \
            Client(lc) as client:
        client.register_plugin(NexusBackend(device=SIM))
        workers = sorted(client.scheduler_info()["workers"])
        serve(client, workers)
        yield client, workers


def test_weighted_round_robin_follows_planned_rates():
    r = Route([("a", 300.0), ("b", 100.0)])
    picks = Counter(r.pick(set()) for _ in range(400))
    assert picks == {"a": 300, "b": 100}
    assert r.pick({"a"}) == "b" and r.pick({"a", "b"}) is None
    assert Route([("a", 0.0), ("b", 0.0)]).pick(set()) in {"a", "b"}  # no rates: equal shares


def test_requests_end_to_end_and_coalesced(cluster):
    client, workers = cluster
    with Frontend(client, coalesce_ms=2.0, max_coalesce=32) as fe:
        fe.set_routes({"cls": [(workers[0], 3.0), (workers[1], 1.0)]}, SESSIONS)
        futs = fe.submit_many("cls", [None] * 64)
        assert Counter(outcome(f) for f in futs) == {"ok": 64}
        assert fe.sent_requests == 64 and fe.sent_messages <= 4  # 48 + 16 requests, at most 32 a message
        # a batch's logits come back as one stacked array (one frame, not one per request): rows share a base
        out = [f.result() for f in futs]
        assert all(isinstance(o, np.ndarray) and o.shape == (1000,) for o in out)
        assert all(o.base is not None for o in out) and len({id(o.base) for o in out}) <= 8
        fe.submit("cls", None).result(5)  # a single request too (raises unless served)

        async def go():
            return await fe.asubmit("cls", None)

        client.sync(go)
    stats = [call_sync(client, w, "nexus_stats") for w in workers]
    served = [s["cumulative"]["sessions"]["cls"]["served"] for s in stats]
    assert served[0] >= 48 and served[1] >= 16


def test_requests_coalesce_for_the_frontends_window(cluster):
    client, workers = cluster
    with Frontend(client, coalesce_ms=150.0) as fe:  # the simulated backend holds nothing: the frontend's window
        fe.set_routes({"cls": [(workers[0], 1.0)]}, SESSIONS)
        t0 = time.time()
        futs = [fe.submit("cls", None) for _ in range(3)]  # three calls, one message
        time.sleep(0.05)
        futs.append(fe.submit("cls", None))
        assert Counter(outcome(f) for f in futs) == {"ok": 4}
        assert time.time() - t0 >= 0.15 and fe.sent_messages == 1
        assert fe.window_s("cls") == pytest.approx(0.15)


def test_requests_handed_over_late_count_from_their_arrival(cluster):
    client, workers = cluster
    with Frontend(client, coalesce_ms=100.0) as fe:
        fe.set_routes({"cls": [(workers[0], 1.0)]}, SESSIONS)
        got: list[tuple[str, object]] = []

        def wait_for(n: int) -> None:
            end = time.time() + 5
            while len(got) < n and time.time() < end:
                time.sleep(0.005)

        t0 = time.time()
        arrived = [t0 - 0.15, t0 - 0.14]  # their 100 ms window has passed: they go out at once
        fe.send_many("cls", [None, None], [lambda st, v: got.append((st, v))] * 2, arrived=arrived)
        wait_for(2)
        assert [g[0] for g in got] == ["ok", "ok"] and time.time() - t0 < 0.09
        # the SLO (200 ms) counts from the arrival too: one that arrived 300 ms ago is past its deadline
        fe.send_many("cls", [None], lambda st, v: got.append((st, v)), arrived=time.time() - 0.3)
        wait_for(3)
        assert got[2] == ("dropped", "deadline"), got
        with pytest.raises(ValueError, match="arrived: must give one time per payload"):
            fe.send_many("cls", [None, None], lambda st, v: None, arrived=[time.time()])
        with pytest.raises(ValueError, match="on_done: must give one callback per payload"):
            fe.send_many("cls", [None, None], [lambda st, v: None])


def test_load_generator_wakes_once_per_coalescing_window(cluster):
    from nexus_lab.runtime.loadgen import run_load

    client, workers = cluster
    with Frontend(client, coalesce_ms=40.0) as fe:
        fe.set_routes({"cls": [(workers[0], 1.0)]}, SESSIONS)
        rep = run_load(fe, {"cls": 300.0}, 1.0, seed=5, settle_s=2.0)
        s = rep["sessions"]["cls"]
        assert s["ok"] == s["offered"] > 200, s
        # ~12 arrivals per 40 ms window travel together; latency counts from each arrival, so the wait in the
        # window shows in it (the first of a window waits it all, the last hardly at all)
        assert fe.sent_requests / fe.sent_messages >= 5, (fe.sent_requests, fe.sent_messages)
        assert rep["wakeups"] <= 60, rep["wakeups"]  # ~25 windows in 1 s, where waking per arrival is ~300
        assert s["p50_ms"] >= 10.0 and s["p99_ms"] <= 200.0, s


def test_errors_before_anything_is_sent(cluster):
    client, workers = cluster
    with Frontend(client) as fe:
        fe.set_routes({"cls": [(workers[0], 1.0)]}, SESSIONS)
        with pytest.raises(ValueError, match="unknown session 'nope'"):
            fe.submit("nope", None)
        with pytest.raises(ValueError, match="slo_ms"):
            fe.set_routes({"x": [(workers[0], 1.0)]}, {"x": {"model": "vgg_s", "slo_ms": 0}})
        with pytest.raises(ValueError, match="rate"):
            fe.set_routes({"cls": [(workers[0], -1.0)]}, SESSIONS)
        assert fe.sent_messages == 0
        # a session routed nowhere ends as Dropped(no_route) without a message
        fe.set_routes({"cls": []}, SESSIONS)
        with pytest.raises(Dropped) as info:
            fe.submit("cls", None).result(1)
        assert info.value.reason == "no_route" and fe.sent_messages == 0


def test_zoo_input_spec_is_checked_before_sending(cluster):
    client, workers = cluster
    zoo_model = "convnet"
    spec = wire.input_spec(zoo_model)
    with Frontend(client) as fe:
        fe.set_routes({"z": [(workers[0], 1.0)]}, {"z": {"model": zoo_model, "slo_ms": 100.0}})
        with pytest.raises(ValueError, match="shape"):
            fe.submit("z", np.zeros((*spec.shape, 2), dtype=spec.dtype))
        with pytest.raises(ValueError, match="dtype"):
            fe.submit("z", np.zeros(spec.shape, dtype=np.int8))
        assert fe.sent_messages == 0


def test_tls_cluster():
    pytest.importorskip("cryptography")
    from distributed.security import Security

    sec = Security.temporary()
    with dask.config.set(MALLOC), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0", protocol="tls",
                         security=sec) as lc, Client(lc, security=sec) as client:
        client.register_plugin(NexusBackend(device=SIM))
        workers = sorted(client.scheduler_info()["workers"])
        assert all(w.startswith("tls://") for w in workers)
        serve(client, workers)
        with Frontend(client) as fe:  # security taken from the client
            fe.set_routes({"cls": [(w, 1.0) for w in workers]}, SESSIONS)
            assert Counter(outcome(f) for f in fe.submit_many("cls", [None] * 20)) == {"ok": 20}
        with Frontend(lc.scheduler_address) as fe:  # no security: the TLS backends refuse it
            fe.set_routes({"cls": [(workers[0], 1.0)]}, SESSIONS)
            with pytest.raises(RequestFailed, match=workers[0]):
                fe.submit("cls", None).result(10)


def test_killed_worker_resolves_every_future_within_5s():
    with dask.config.set(MALLOC), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as lc, \
            Client(lc) as client:
        client.register_plugin(NexusBackend(device=SIM))
        workers = sorted(client.scheduler_info()["workers"])
        serve(client, workers, {"cls": {"model": "vgg_s", "slo_ms": 200.0, "budget_ms": 198.0}},
              gpu_of(slo=200.0, batch=16))
        pids = client.run(os.getpid)
        with Frontend(client) as fe:
            fe.set_routes({"cls": [(w, 1.0) for w in workers]},
                          {"cls": {"model": "vgg_s", "slo_ms": 200.0, "budget_ms": 198.0}})
            futs = []
            for _ in range(20):
                futs += fe.submit_many("cls", [None] * 8)
                time.sleep(0.005)
            os.kill(pids[workers[0]], signal.SIGKILL)
            t0 = time.time()
            futs += fe.submit_many("cls", [None] * 40)
            _, pending = concurrent.futures.wait(futs, timeout=5.0)
            assert not pending and time.time() - t0 < 5.0
            outcomes = Counter(outcome(f) for f in futs)
            assert outcomes["ok"] > 0 and set(outcomes) <= {"ok", "failed", "deadline", "overload"}
            for f in futs:
                exc = f.exception()
                if isinstance(exc, RequestFailed):
                    assert workers[0] in str(exc)
            assert workers[0] in fe.lost_workers
            # new requests avoid the lost backend
            assert outcome(fe.submit("cls", None)) == "ok"


def test_load_generator_runs_on_workers(cluster):
    client, workers = cluster
    cfg = {"routes": {"cls": [(w, 1.0) for w in workers]}, "sessions": SESSIONS}
    handle = start_load(client, cfg, {"cls": 200.0}, 1.0, kind="poisson", seed=3)
    rep = handle.result(30)
    s = rep["sessions"]["cls"]
    assert rep["generators"] == 2 and 120 <= s["offered"] <= 300
    assert s["ok"] + s["failed"] + sum(s["dropped"].values()) + s["unfinished"] == s["offered"]
    assert s["unfinished"] == 0 and s["failed"] == 0 and s["slo_attainment"] >= 0.9, s


def test_arrival_processes():
    assert len(arrival_times("uniform", 100.0, 2.0)) == 200
    p = arrival_times("poisson", 1000.0, 5.0, seed=1)
    assert 4700 < len(p) < 5300 and np.all(np.diff(p) >= 0)
    b = arrival_times("bursty", 1000.0, 5.0, cv=3.0, seed=1)
    gaps = np.diff(b)
    assert 2.0 < gaps.std() / gaps.mean() < 4.0  # the coefficient of variation asked for
    assert list(arrival_times("trace", 0.0, 1.0, trace=[0.5, 0.1, 2.0])) == [0.1, 0.5]
    with pytest.raises(ValueError, match="kind"):
        arrival_times("zipf", 1.0, 1.0)


def test_crop_boxes_one_child_per_box():
    frame = np.arange(3 * 8 * 8, dtype=np.float32).reshape(3, 8, 8)
    crops = crop_boxes(frame, np.array([[0, 0, 0.5, 0.5, 0.9], [0.5, 0.5, 1, 1, 0.8]]), "car")
    assert len(crops) == 2 and all(c.shape == frame.shape for c in crops)
    assert crops[0][0, 0, 0] == frame[0, 0, 0] and crops[1][0, -1, -1] == frame[0, -1, -1]
    assert crop_boxes(frame, np.zeros((0, 5)), "car") == []


def test_query_fans_out_one_child_per_detected_box():
    pytest.importorskip("torch")
    with dask.config.set(MALLOC), \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as lc, \
            Client(lc) as client:
        client.register_plugin(NexusBackend(device="cpu"))
        (w,) = sorted(client.scheduler_info()["workers"])
        gpu = {"id": 0, "duty_cycle_ms": 50.0, "occupancy": 0.5, "memory_mb": 100.0, "allocations": [
            {"session": "traffic/detect", "model": "detector", "slo_ms": 200.0, "batch": 4, "rate": 10.0},
            {"session": "traffic/car", "model": "convnet", "slo_ms": 300.0, "batch": 16, "rate": 40.0}]}
        sessions = {"traffic/detect": {"model": "detector", "slo_ms": 200.0, "budget_ms": 190.0},
                    "traffic/car": {"model": "convnet", "slo_ms": 300.0, "budget_ms": 290.0}}
        assert call_sync(client, w, "nexus_apply", gpu=gpu, sessions=sessions, version=1)["error"] is None
        query = {"name": "traffic", "slo_ms": 500.0, "stages": [
            {"name": "detect", "session": "traffic/detect", "budget_ms": 200.0},
            {"name": "car", "session": "traffic/car", "budget_ms": 300.0}]}
        rng = np.random.default_rng(1)
        boxes_seen = 0
        with Frontend(client) as fe:
            fe.set_routes({s: [(w, 1.0)] for s in sessions}, sessions)
            for _ in range(8):
                frame = rng.random((3, 64, 64), dtype=np.float32) * rng.uniform(0.1, 4.0)
                out = start_query(fe, query, {"detect": [], "car": ["detect"]}, frame).result(10)
                assert out["ended_by"] is None, out
                (boxes,) = out["outputs"]["detect"]
                boxes = np.asarray(boxes)
                assert boxes.ndim == 2 and boxes.shape[1] == 6
                assert len(out["outputs"]["car"]) == len(boxes)  # one child request per detected box
                assert all(np.asarray(r).shape[-1] == 100 for r in out["outputs"]["car"])
                boxes_seen += len(boxes)
        assert boxes_seen >= 1
        assert out["latency_ms"] > 0


def test_dropped_requests_raise_with_their_reason(cluster):
    client, workers = cluster
    with Frontend(client, max_coalesce=256) as fe:
        fe.set_routes({"cls": [(workers[0], 1.0)]}, SESSIONS)
        # one backend admits batch 32 * (floor((190 - l(32)) / 40) + 1) queued requests; 400 at once overload it
        outcomes = Counter(outcome(f) for f in fe.submit_many("cls", [None] * 400))
        assert outcomes["overload"] >= 400 - 2 * 32 * 4, outcomes  # at most the admitted ones are not overload
        assert outcomes["ok"] >= 1 and set(outcomes) <= {"ok", "overload", "deadline"}, outcomes


def test_load_generator_from_a_frontend_bursty(cluster):
    client, workers = cluster
    with Frontend(client) as fe:
        fe.set_routes({"cls": [(w, 1.0) for w in workers]}, SESSIONS)
        rep = start_load(client, fe, {"cls": 100.0}, 1.0, kind="bursty", cv=2.0, workers=workers[:1],
                         keep_latencies=True).result(30)
    s = rep["sessions"]["cls"]
    assert rep["generators"] == 1 and s["offered"] > 30 and s["p99_ms"] is not None
    assert s["ok"] + s["failed"] + sum(s["dropped"].values()) == s["offered"]
    with pytest.raises(ValueError, match="unknown session"):
        start_load(client, fe, {"nope": 1.0}, 1.0)


def test_routes_adopted_from_the_running_backends(cluster):
    client, workers = cluster
    with Frontend(client.scheduler.address) as fe:
        routes = fe.routes_from_cluster()
        assert sorted(a for a, _ in routes["cls"]) == workers and fe.sessions["cls"]["slo_ms"] == 200.0
        assert outcome(fe.submit("cls", None)) == "ok"
