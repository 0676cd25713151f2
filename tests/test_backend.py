"""Tests of the GPU backend plugin on an in-process LocalCluster of simulated TITAN X GPUs: plans applied, batches
formed with early drop, drops with reasons, admission control, stats and Prometheus metrics, live re-plans."""

from __future__ import annotations

import asyncio
import contextlib
import time

import dask
import numpy as np
import pytest

pytest.importorskip("nexus_lab.runtime.device")

from backend_calls import call, call_sync, stream_submit, submit
from distributed import Client, LocalCluster

from nexus_lab.batching import batch_floor, cpu_pressure
from nexus_lab.controller import worker_malloc_config
from nexus_lab.profiles import profile_set
from nexus_lab.runtime.backend import NexusBackend, parse_gpu

SIM = "simulated:titan-x-pascal"
MALLOC = worker_malloc_config()


def gpu_of(*allocs: tuple[str, str, float, int, float], duty_ms: float = 40.0) -> dict:
    return {"id": 0, "duty_cycle_ms": duty_ms, "occupancy": 0.5, "memory_mb": 1000.0,
            "allocations": [{"session": s, "model": m, "slo_ms": slo, "batch": b, "rate": r}
                            for s, m, slo, b, r in allocs]}


def table(**sessions: tuple[str, float]) -> dict:
    return {name: {"model": m, "slo_ms": slo, "budget_ms": slo - 2.0} for name, (m, slo) in sessions.items()}


@pytest.fixture(scope="module")
def cluster():
    with dask.config.set(MALLOC), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as lc, \
            Client(lc) as client:
        client.register_plugin(NexusBackend(device=SIM))
        workers = sorted(client.scheduler_info()["workers"])
        yield client, workers


@contextlib.contextmanager
def one_backend(backend: NexusBackend, gpu: dict, sessions: dict):
    """A one-worker cluster running ``backend`` with ``gpu`` applied: (client, worker address)."""
    with dask.config.set(MALLOC), \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as lc, \
            Client(lc) as client:
        client.register_plugin(backend)
        (w,) = client.scheduler_info()["workers"]
        apply_ok(client, w, gpu, sessions, 1)
        yield client, w


def apply_ok(client, addr, gpu: dict, sessions: dict, version: int, **kw) -> dict:
    """``nexus_apply`` on one backend, which must succeed; its reply."""
    rep = call_sync(client, addr, "nexus_apply", gpu=gpu, sessions=sessions, version=version, **kw)
    assert rep["error"] is None, rep
    return rep


def test_parse_gpu_rejects_bad_plans():
    assert parse_gpu(None) == (0.0, [])
    with pytest.raises(ValueError, match=r"gpu\.batching"):
        parse_gpu({**gpu_of(("a", "vgg_s", 50, 4, 10)), "batching": "triton"})
    with pytest.raises(ValueError, match=r"allocations\[0\]\.batch"):
        parse_gpu(gpu_of(("a", "vgg_s", 50, 0, 10)))
    with pytest.raises(ValueError, match="device"):
        NexusBackend(device="")


def test_apply_serve_and_stats(cluster):
    client, (w, _) = cluster
    rep = call_sync(client, w, "nexus_apply", gpu=gpu_of(("cls", "vgg_s", 100.0, 8, 100.0)),
                    sessions=table(cls=("vgg_s", 100.0)), version=1)
    assert rep["error"] is None and "vgg_s" in rep["loaded"] and rep["version"] == 1
    call_sync(client, w, "nexus_stats")  # reset the window
    now = time.time()
    replies = submit(client, w, [{"id": i, "session": "cls", "deadline": now + 0.1, "payload": None}
                                 for i in range(12)])
    assert sorted(r["id"] for r in replies) == list(range(12))
    assert all(r["status"] == "ok" for r in replies), replies
    st = call_sync(client, w, "nexus_stats")
    s = st["sessions"]["cls"]
    assert s["arrivals"] == 12 and s["served"] == 12 and s["within_slo"] == 12
    # 12 requests at once with batch 8: a burst, so the work-conserving cycle grows the batch to 12 (its oldest
    # request still makes its deadline) instead of leaving 4 for the next turn.
    assert st["batches"] == 1 and st["batch_sizes"] == {12: 1}
    assert 0 < st["utilization"] <= 1 and s["p50_ms"] is not None and sum(s["latency_hist"]) == 12
    assert len(st["trace"]) == 1 and st["trace"][0][0] == "cls" and st["trace"][0][2] > st["trace"][0][1]
    assert st["cumulative"]["served"] >= 12 and st["queues"]["cls"] == 0
    # the batch's lateness against its planning latency is reported: the simulated device takes what vgg_s measured
    # (mean +- 3 std, below the inflated l(12)) plus the runtime's own overhead: small, never a whole batch latency
    prof = profile_set("titan-x-pascal")["vgg_s"]
    early = float(prof.mean_ms[12] - 3 * prof.std_ms[12] - prof.lat_ms[12])
    assert st["overrun_p99_ms"] is not None and early - 0.5 < st["overrun_p99_ms"] < 40.0
    state = call_sync(client, w, "nexus_state")
    assert state["version"] == 1 and state["gpu"]["allocations"][0]["session"] == "cls"
    assert "vgg_s" in state["loaded"] and state["sessions"]["cls"]["slo_ms"] == 100.0


def test_fixed_duty_cycle_keeps_planned_batches():
    with one_backend(NexusBackend(device=SIM, work_conserving=False),
                     gpu_of(("cls", "vgg_s", 100.0, 8, 100.0), duty_ms=30.0),
                     table(cls=("vgg_s", 100.0))) as (client, w):
        replies = submit(client, w, [{"id": i, "session": "cls", "deadline": time.time() + 0.1, "payload": None}
                                     for i in range(12)])
        assert all(r["status"] == "ok" for r in replies)
        st = call_sync(client, w, "nexus_stats")
        assert st["batch_sizes"] == {8: 1, 4: 1}
        (_, s0, e0, _), (_, s1, _, _) = st["trace"]
        # The next cycle starts one duty cycle (30 ms) after the first; a work-conserving one would start the
        # second batch as soon as the first ends (about l(8) = 9 ms later). The trace holds when the device thread
        # began each batch, which lags its cycle's start by the executor hand-off (a few ms on a loaded 2-core
        # machine, more for the first batch of a fresh thread), so the gap is bounded with that slack.
        assert s1 - e0 > 0.005 and s1 - s0 >= 0.030 - 0.008


def test_batch_floor_is_the_smallest_batch_nearly_as_cheap_per_request():
    lat = np.array([0.0] + [0.5 + 0.6 * n for n in range(1, 17)])  # l(n) = beta + alpha n: per request falls with n
    assert batch_floor(lat, 8) == 4  # l(4)/4 = 0.725 <= 1.15 * l(8)/8 = 0.762 < l(3)/3
    assert batch_floor(lat, 1) == 1
    assert batch_floor(np.arange(17, dtype=float), 8) == 1  # no batching benefit: never wait
    assert batch_floor(np.zeros(17), 8) == 1  # a device that cannot tell its latency


def test_cpu_pressure_switches_with_hysteresis():
    assert not cpu_pressure(False, 0.5) and not cpu_pressure(False, 0.79)
    assert cpu_pressure(False, 0.8) and cpu_pressure(True, 0.65)  # stays on until the cores are clearly free
    assert not cpu_pressure(True, 0.59)


def test_batch_floor_waits_for_company_at_most_one_short_batch():
    prof = profile_set("titan-x-pascal")["vgg_s"]
    lat = np.array([0.0] + [float(prof.lat_ms[n]) for n in range(1, 17)]) / 1000.0
    floor = batch_floor(lat, 16)
    assert 1 < floor < 16
    hold = min(0.060, float(lat[floor]))  # at most the floor batch's own time, at most one duty cycle
    with one_backend(NexusBackend(device=SIM, batch_floor=True),
                     gpu_of(("cls", "vgg_s", 300.0, 16, 100.0), duty_ms=60.0),
                     table(cls=("vgg_s", 300.0))) as (client, w):
        sent = time.time()
        alone = submit(client, w, [{"id": 0, "session": "cls", "deadline": sent + 0.3, "payload": None}])
        waited = time.time() - sent
        assert alone[0]["status"] == "ok"
        assert hold <= waited < hold + 0.1  # held for company, then run anyway
        assert call_sync(client, w, "nexus_state")["holds_ms"] == {"cls": pytest.approx(1000.0 * hold)}
        sent = time.time()
        full = submit(client, w, [{"id": k, "session": "cls", "deadline": sent + 0.3, "payload": None}
                                  for k in range(1, floor + 1)])
        assert all(r["status"] == "ok" for r in full)
        assert time.time() - sent < 0.060  # a batch at its floor runs at once
        assert call_sync(client, w, "nexus_stats")["batch_sizes"] == {1: 1, floor: 1}


def test_drops_have_reasons(cluster):
    client, (w, _) = cluster
    call_sync(client, w, "nexus_apply", gpu=gpu_of(("cls", "vgg_s", 100.0, 4, 100.0), duty_ms=60.0),
              sessions=table(cls=("vgg_s", 100.0)), version=2)
    now = time.time()
    replies = submit(client, w, [{"id": "late", "session": "cls", "deadline": now - 1.0, "payload": None},
                                 {"id": "nobody", "session": "nope", "deadline": now + 1.0, "payload": None},
                                 {"id": "fine", "session": "cls", "deadline": now + 0.1, "payload": None}])
    by = {r["id"]: r for r in replies}
    assert by["late"] == {"id": "late", "status": "dropped", "reason": "deadline"}
    assert by["nobody"]["reason"] == "no_route"
    assert by["fine"]["status"] == "ok"
    # Admission control: batch 4 per 60 ms duty cycle and a 98 ms budget admit 4 * (floor((98-l(4))/60)+1)
    # requests; a burst beyond that is dropped at once with reason overload, the rest are served or early-dropped.
    replies = submit(client, w, [{"id": i, "session": "cls", "deadline": time.time() + 0.1, "payload": None}
                                 for i in range(40)])
    reasons = [r.get("reason") for r in replies if r["status"] == "dropped"]
    assert reasons.count("overload") >= 30
    assert sum(r["status"] == "ok" for r in replies) >= 4
    assert {r["status"] for r in replies} <= {"ok", "dropped"}


def test_out_of_memory_is_reported_and_the_old_plan_stays(cluster):
    client, (_, w) = cluster
    ok = call_sync(client, w, "nexus_apply", gpu=gpu_of(("a", "vgg_s", 100.0, 4, 10.0)),
                   sessions=table(a=("vgg_s", 100.0)), version=5)
    assert ok["error"] is None
    huge = gpu_of(*[(f"s{i}", m, 400.0, 64, 10.0) for i, m in enumerate(["vgg16", "vgg_face", "yolo9000"] * 4)])
    rep = call_sync(client, w, "nexus_apply", gpu=huge,
                    sessions={f"s{i}": {"model": a["model"], "slo_ms": 400.0, "budget_ms": 398.0}
                              for i, a in enumerate(huge["allocations"])}, version=6)
    if rep["error"] is None:
        pytest.skip("the simulated device fits every model; no out-of-memory to provoke")
    assert "memory" in rep["error"].lower() or "OutOfMemory" in rep["error"]
    state = call_sync(client, w, "nexus_state")
    assert state["version"] == 5
    r = submit(client, w, [{"id": 1, "session": "a", "deadline": time.time() + 0.1, "payload": None}])
    assert r[0]["status"] == "ok"
    # models the failed apply loaded for nothing are unloaded again
    deadline = time.time() + 3
    while set(call_sync(client, w, "nexus_state")["loaded"]) != {"vgg_s"} and time.time() < deadline:
        time.sleep(0.1)
    assert set(call_sync(client, w, "nexus_state")["loaded"]) == {"vgg_s"}


def test_replan_under_load_loses_nothing(cluster):
    """Switch a worker from session a to sessions a+b and then to b only while requests keep arriving: every
    request ends with a reply, and none of them as an error."""
    client, (w, _) = cluster
    call_sync(client, w, "nexus_apply", gpu=gpu_of(("a", "vgg_s", 100.0, 8, 100.0)),
              sessions=table(a=("vgg_s", 100.0)), version=10)

    async def load() -> list[dict]:
        async def one(k: int) -> list[dict]:
            await asyncio.sleep(0.02 * k)  # 100 requests/s, within every plan's capacity
            return await stream_submit(client, w, [
                {"id": (k, i), "session": "a" if k < 30 else "b", "deadline": time.time() + 0.1, "payload": None}
                for i in range(2)])

        async def replan() -> None:
            await asyncio.sleep(0.2)
            both = gpu_of(("a", "vgg_s", 100.0, 4, 100.0), ("b", "vgg16", 100.0, 8, 50.0), duty_ms=45.0)
            await call(client, w, "nexus_apply", gpu=both,
                       sessions=table(a=("vgg_s", 100.0), b=("vgg16", 100.0)), version=11)
            await asyncio.sleep(0.4)
            await call(client, w, "nexus_apply", gpu=gpu_of(("b", "vgg16", 100.0, 8, 50.0), duty_ms=45.0),
                       sessions=table(b=("vgg16", 100.0)), version=12)

        out = await asyncio.gather(replan(), *(one(k) for k in range(60)))
        return [r for msg in out[1:] for r in msg]

    replies = client.sync(load)
    assert len(replies) == 120
    # nothing lost: no errors, no request of a removed session turned away; early drops only if this 2-core
    # machine stalls the event loop past a deadline
    lost = [r for r in replies if r["status"] == "error" or r.get("reason") == "no_route"]
    assert not lost, lost[:5]
    assert sum(r["status"] == "ok" for r in replies) >= 114, [r for r in replies if r["status"] != "ok"][:5]
    # the drained session's model is unloaded after the grace period
    deadline = time.time() + 5
    while time.time() < deadline:
        if "vgg_s" not in call_sync(client, w, "nexus_state")["loaded"]:
            break
        time.sleep(0.2)
    assert "vgg_s" not in call_sync(client, w, "nexus_state")["loaded"]


def test_prometheus_metrics_exported(cluster):
    prometheus_client = pytest.importorskip("prometheus_client")
    client, (w, _) = cluster
    call_sync(client, w, "nexus_apply", gpu=gpu_of(("m", "vgg_s", 100.0, 4, 10.0)),
              sessions=table(m=("vgg_s", 100.0)), version=20)
    submit(client, w, [{"id": 0, "session": "m", "deadline": time.time() + 0.1, "payload": None}])
    text = prometheus_client.generate_latest().decode()
    assert "nexus_served_total" in text and f'worker="{w}"' in text and "nexus_utilization" in text
    # and on the worker's own /metrics route (distributed's HTTP server renders the same registry)
    import urllib.request

    port = client.run(lambda dask_worker: dask_worker.http_server.port, workers=[w])[w]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        page = resp.read().decode()
    assert "nexus_served_total" in page and 'session="m"' in page


# ---------------------------------------------------------------------------------------------- real models (cpu)
@pytest.fixture(scope="module")
def cpu_cluster():
    pytest.importorskip("torch")
    with dask.config.set(MALLOC), \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as lc, \
            Client(lc) as client:
        client.register_plugin(NexusBackend(device="cpu"))
        yield client, sorted(client.scheduler_info()["workers"])[0]


def test_model_exception_fails_only_its_batch(cpu_cluster):
    import numpy as np
    import torch

    from nexus_lab.models import register_model, unregister_model

    class Fragile(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if bool((x < 0).any()):
                raise RuntimeError("negative input reached the model")
            return x * 2

    register_model("fragile-test", Fragile, (4,), replace=True)
    client, w = cpu_cluster
    try:
        apply_ok(client, w, gpu_of(("f", "fragile-test", 500.0, 4, 10.0), duty_ms=20.0),
                 table(f=("fragile-test", 500.0)), 1)
        bad = submit(client, w, [{"id": i, "session": "f", "deadline": time.time() + 0.5,
                                  "payload": np.full(4, -1.0, dtype=np.float32)} for i in range(3)])
        assert [r["status"] for r in bad] == ["error"] * 3
        assert "negative input reached the model" in bad[0]["error"] and w in bad[0]["error"]
        good = submit(client, w, [{"id": 9, "session": "f", "deadline": time.time() + 0.5,
                                   "payload": np.arange(4, dtype=np.float32)}])
        assert good[0]["status"] == "ok"
        np.testing.assert_allclose(np.asarray(good[0]["result"]).reshape(-1), np.arange(4) * 2)
        # raw bytes payloads are decoded with the model's input spec on the worker
        raw = submit(client, w, [{"id": 10, "session": "f", "deadline": time.time() + 0.5,
                                  "payload": np.ones(4, dtype=np.float32).tobytes()}])
        np.testing.assert_allclose(np.asarray(raw[0]["result"]).reshape(-1), [2, 2, 2, 2])
        st = call_sync(client, w, "nexus_stats")
        assert st["sessions"]["f"]["errors"] == 3 and st["sessions"]["f"]["served"] == 2
    finally:
        unregister_model("fragile-test")


def test_host_cpu_batches_run_on_the_event_loop_thread(cpu_cluster):
    """On a host-CPU device the forward pass runs inline on the worker's loop thread (no device thread to wake and
    to preempt it); ``inline=False`` keeps the device thread."""
    import threading

    import numpy as np
    import torch

    from nexus_lab.models import register_model, unregister_model

    seen: list[str] = []

    class Where(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(threading.current_thread().name)
            return x + 1

    def run_on(dask_worker: object, inline: bool | None) -> bool:
        cycle = dask_worker.plugins["nexus-backend"].cycle
        cycle.inline = inline if inline is not None else cycle.inline
        return cycle.inline

    register_model("where-test", Where, (2,), replace=True)
    client, w = cpu_cluster
    try:
        apply_ok(client, w, gpu_of(("wh", "where-test", 500.0, 2, 5.0), duty_ms=10.0),
                 table(wh=("where-test", 500.0)), 7)
        for inline, expect_device_thread in ((None, False), (False, True), (True, False)):
            assert client.run(run_on, inline=inline)[w] is (not expect_device_thread)
            seen.clear()
            out = submit(client, w, [{"id": 1, "session": "wh", "deadline": time.time() + 0.5,
                                      "payload": np.zeros(2, dtype=np.float32)}])
            assert out[0]["status"] == "ok", out
            assert len(seen) == 1 and seen[0].startswith("nexus-device") is expect_device_thread, seen
    finally:
        unregister_model("where-test")


def test_host_cpu_backend_holds_for_bigger_batches_under_cpu_pressure(cpu_cluster, monkeypatch):
    """While the cores are busy a host-CPU backend holds for a floor nearer the planned batch (a longer hold), and
    tells its frontends on their streams, which then coalesce that long."""
    import psutil

    from nexus_lab.runtime.backend import plugin as backend_mod
    from nexus_lab.runtime.frontend import Frontend

    client, w = cpu_cluster
    sessions = table(c=("convnet", 200.0))
    gpu = gpu_of(("c", "convnet", 200.0, 12, 30.0), duty_ms=40.0)
    apply_ok(client, w, gpu, sessions, 8)
    # A known curve, l(b) = 0.6 b + 0.5 ms, instead of the one calibrated at load: on a busy host that one may show
    # no batching benefit at all, and then there is no floor to switch.
    client.run(lambda dask_worker: dask_worker.plugins["nexus-backend"].device.set_latency("convnet", 0.6, 0.5),
               workers=[w])
    apply_ok(client, w, gpu, sessions, 9)
    monkeypatch.setattr(backend_mod, "PRESSURE_INTERVAL_S", 0.05)
    with Frontend(client, coalesce_ms=0.0) as fe:
        fe.set_routes({"c": [(w, 1.0)]}, sessions)

        def settle(pred) -> float:
            end = time.time() + 5
            while True:
                fe.submit("c", np.zeros((3, 64, 64), dtype=np.float32)).result(5)  # opens the stream, keeps it busy
                hold = call_sync(client, w, "nexus_state")["holds_ms"]["c"]
                if (pred(hold) and fe.window_s("c") == pytest.approx(hold / 1000.0)) or time.time() > end:
                    return hold
                time.sleep(0.05)

        calm_floor = call_sync(client, w, "nexus_configure", batch_floor=None)["floors"]["c"]
        monkeypatch.setattr(psutil, "cpu_percent", lambda *a, **k: 10.0)  # the in-process worker reads this psutil
        calm = settle(lambda h: h < 40.0)
        assert 0 < calm < 40.0  # l(floor), the floor below the planned batch
        assert fe.window_s("c") == pytest.approx(calm / 1000.0)
        monkeypatch.setattr(psutil, "cpu_percent", lambda *a, **k: 95.0)
        pressed = settle(lambda h: h > calm)  # a floor nearer the planned batch, so a longer hold
        assert calm < pressed <= 40.0
        assert fe.window_s("c") == pytest.approx(pressed / 1000.0)  # the frontend heard it on the stream
        floor = call_sync(client, w, "nexus_configure", batch_floor=None)["floors"]["c"]
        assert calm_floor < floor <= 12
        monkeypatch.setattr(psutil, "cpu_percent", lambda *a, **k: 10.0)
        assert settle(lambda h: h < pressed) == pytest.approx(calm)


def test_prefix_group_runs_prefix_once(cpu_cluster):
    import numpy as np

    client, w = cpu_cluster
    gpu = gpu_of(("convnet.prefix:200", "convnet.prefix", 200.0, 4, 20.0),
                 ("cars", "convnet-cars.suffix", 200.0, 2, 10.0), ("faces", "convnet-faces.suffix", 200.0, 2, 10.0),
                 duty_ms=100.0)
    sessions = table(cars=("convnet-cars", 200.0), faces=("convnet-faces", 200.0))
    apply_ok(client, w, gpu, sessions, 2, prefix_groups=[{"group": "convnet", "sessions": ["cars", "faces"],
                                                         "prefix_session": "convnet.prefix:200"}])
    x = np.random.default_rng(0).standard_normal((3, 64, 64)).astype(np.float32)
    replies = submit(client, w, [{"id": s, "session": s, "deadline": time.time() + 0.2, "payload": x}
                                 for s in ("cars", "faces")])
    by = {r["id"]: r for r in replies}
    assert by["cars"]["status"] == "ok" and by["faces"]["status"] == "ok", replies
    assert np.asarray(by["cars"]["result"]).shape[-1] == 10 and np.asarray(by["faces"]["result"]).shape[-1] == 20
    st = call_sync(client, w, "nexus_stats")
    assert st["sessions"]["cars"]["batches"] == 1 and st["sessions"]["faces"]["batches"] == 1


def test_device_deadline_keeps_back_only_post_processing_and_the_way_back():
    from nexus_lab.runtime.backend.queues import device_allowance_s as _allowance_s

    # the controller's table: L' = 100 - 19 (pre) - 58.5 (post) - 10 (net); pre is spent before a request is queued
    s = {"slo_ms": 100.0, "budget_ms": 12.5, "post_ms": 58.5, "net_ms": 10.0}
    assert _allowance_s(s) == pytest.approx(0.0685)
    # a table without them (older controllers, hand-written tests) keeps the plan's whole allowance SLO - L'
    assert _allowance_s({"slo_ms": 100.0, "budget_ms": 12.5}) == pytest.approx(0.0875)
    assert _allowance_s({"slo_ms": 100.0}) == 0.0
