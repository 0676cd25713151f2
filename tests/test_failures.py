"""Failure semantics (DESIGN.md section 4) on local clusters of simulated GPUs: a worker killed under load, 2x
overload, a model that raises, bad input rejected before sending, and the whole path over TLS."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading
import time

import pytest

pytest.importorskip("nexus_lab.runtime.device")

import nexus_lab
from nexus_lab.controller.stats import aggregate
from nexus_lab.runtime.loadgen import run_load
from nexus_lab.runtime.results import Dropped, RequestFailed
from nexus_lab.workload import WorkloadError

# Latency assertions under load: run alone (`make test` runs the serial tests after the parallel ones).
pytestmark = pytest.mark.serial
# The two SLO-attainment assertions measure wall-clock latency on a shared 2-core CI host, where a neighbour's
# burst can stall a worker process for tens of ms; they get two fresh tries (a real regression fails all three).
timing = pytest.mark.flaky(reruns=2, reruns_delay=2)

SIM = "simulated:titan-x-pascal"


def _served_within(report: dict) -> tuple[int, int, int]:
    ok = sum(s["ok"] for s in report["sessions"].values())
    within = sum(s["within_slo"] for s in report["sessions"].values())
    unfinished = sum(s["unfinished"] for s in report["sessions"].values())
    return ok, within, unfinished


def test_bad_edits_and_inputs_are_rejected_before_sending():
    with nexus_lab.start(gpus=1, device=SIM, epoch_s=3600, poll_s=0.5) as ctl:
        for kwargs, field in (({"slo_ms": 0}, "slo_ms"), ({"slo_ms": -1}, "slo_ms"),
                              ({"slo_ms": 50, "rate": -1}, "rate")):
            with pytest.raises(WorkloadError, match=field):
                ctl.add_session("vgg_s", **kwargs)
        with pytest.raises(WorkloadError, match="model"):
            ctl.add_session("not-a-model", 50)
        assert ctl.editor.names() == set()
        name = ctl.add_session("vgg_s", 400, rate=10)  # roomy: a busy CI core must not drop the one request
        with pytest.raises(WorkloadError, match=r"set_slo\.slo_ms"):
            ctl.set_slo(name, 0)
        with pytest.raises(WorkloadError, match="unknown session"):
            ctl.set_rate("nope", 1)
        ctl.apply()
        with pytest.raises(WorkloadError, match=r"infer\.session"):
            ctl.infer("nope", None)
        sent = ctl.frontend.sent_requests
        with pytest.raises(WorkloadError, match=r"infer\.session"):
            ctl.submit("vgg16:50", None)
        assert ctl.frontend.sent_requests == sent  # nothing left the notebook
        ctl.infer(name, None, timeout_s=5)


@timing
def test_overload_drops_early_without_congestion_collapse():
    # fill=1: the plan takes the fewest GPUs, so 2x the planned rate is a real overload (no spare GPU absorbs it)
    with nexus_lab.start(gpus=2, device=SIM, epoch_s=3600, poll_s=0.5, fill=1.0) as ctl:
        name = ctl.add_session("vgg16", 100, rate=150, name="cls")
        plan = ctl.apply()
        ctl.pause()  # the plan stays fixed: 2x is an overload, not a re-plan
        cap = sum(a.rate for g in plan.gpus for a in g.allocations if a.session == name)
        one = run_load(ctl.frontend, {name: 150.0}, 6.0, seed=1, settle_s=3.0)
        two = run_load(ctl.frontend, {name: 300.0}, 6.0, seed=2, settle_s=3.0)
    ok1, within1, un1 = _served_within(one)
    ok2, within2, un2 = _served_within(two)
    assert un1 == un2 == 0
    assert within1 / ok1 >= 0.99
    drops = two["sessions"][name]["dropped"]
    assert sum(drops.values()) > 0 or cap >= 300.0
    assert set(drops) <= {"overload", "deadline"}
    assert within2 / ok2 >= 0.99, f"served within SLO at 2x: {within2}/{ok2}"
    goodput1, goodput2 = within1 / one["duration_s"], within2 / two["duration_s"]
    assert goodput2 >= 0.9 * goodput1, (goodput1, goodput2)


@pytest.mark.slow
@timing
def test_killed_worker_resolves_futures_and_replans():
    with nexus_lab.start(gpus=3, device=SIM, epoch_s=8.0, poll_s=0.5) as ctl:
        # Uniform arrivals below the planned rate: with Poisson bursts a duty cycle's batch overflows now and then
        # and its tail is early-dropped, which is the policy working, not a failure to recover.
        name = ctl.add_session("vgg16", 100, rate=250, name="cls")
        ctl.apply()
        victim = next(w for w, g in sorted(ctl.assignment.items()) if g)
        pid = ctl.client.run(os.getpid, workers=[victim])[victim]
        reports: list[dict] = []
        loader = threading.Thread(target=lambda: reports.append(
            run_load(ctl.frontend, {name: 200.0}, 12.0, kind="uniform", seed=5, settle_s=6.0)))
        loader.start()
        time.sleep(3.0)
        burst = [ctl.submit(name, None) for _ in range(50)]
        t_kill = time.time()
        os.kill(pid, signal.SIGKILL)
        done, pending = concurrent.futures.wait(burst, timeout=5.0)
        assert not pending, f"{len(pending)} futures still pending 5 s after the kill"
        for f in done:
            exc = f.exception()
            assert exc is None or isinstance(exc, (Dropped, RequestFailed)), exc
        loader.join()
        replans = [e for e in ctl.events() if e["event"] == "replan" and e["t"] >= t_kill]
        assert replans and replans[0]["reason"].startswith("workers changed"), ctl.events()[-5:]
        t_replan = replans[0]["t"]
        assert t_replan - t_kill <= ctl.epoch_s
        assert victim not in ctl.assignment or ctl.assignment[victim] is None
        # Within one epoch after the re-plan, the survivors serve >= 99% within SLO.
        wins = [w for w in ctl.history() if w["t0"] >= t_replan + 1.0 and w["t1"] <= t_kill + 12.0]
        after = aggregate(wins)["sessions"].get(name)
        assert after is not None and after["requests"] > 100
        assert after["slo_attainment"] >= 0.99, after
    assert reports and _served_within(reports[0])[2] == 0  # no request left hanging


def test_the_whole_path_over_tls():
    from distributed.security import Security

    sec = Security.temporary()
    with nexus_lab.start(gpus=1, device=SIM, security=sec, epoch_s=3600, poll_s=0.5) as ctl:
        assert ctl.client.scheduler.address.startswith("tls://")
        name = ctl.add_session("vgg_s", 400, rate=20)  # roomy: every one of the ten must be served, not dropped
        ctl.apply()
        outs = []
        for _ in range(10):
            outs.append(ctl.submit(name, None))
            time.sleep(0.05)
        for f in outs:
            f.result(5)
        time.sleep(0.6)
        ctl.collect()
        assert ctl.stats(window_s=None)["sessions"][name]["served"] >= 10


def _register_embedding() -> None:
    """A zoo model that fails on some inputs only: an embedding of 10 rows indexed by the request's value."""
    import functools

    import torch

    from nexus_lab.models import register_model

    register_model("embed10", functools.partial(torch.nn.Embedding, 10, 2), (1,), dtype="int64", replace=True)


def test_a_model_that_raises_fails_only_its_batch_and_bad_inputs_never_leave():
    import numpy as np

    _register_embedding()
    with nexus_lab.start(gpus=1, device="cpu", epoch_s=3600, poll_s=0.5) as ctl:
        ctl.client.run(_register_embedding)
        ctl.editor.add_model("embed10", {"latency_ms": {1: 1.0, 8: 2.0}, "memory_mb": {1: 10.0, 8: 10.0}})
        name = ctl.add_session("embed10", 200, rate=20)
        ctl.apply()
        good = np.zeros((1,), dtype=np.int64)
        assert ctl.infer(name, good, timeout_s=10) is not None
        sent = ctl.frontend.sent_requests
        for bad_input, what in ((np.zeros((2,), dtype=np.int64), "shape"), (np.zeros((1,), dtype=np.float32),
                                                                            "dtype"), ([0], "array")):
            with pytest.raises(WorkloadError, match=what):
                ctl.submit(name, bad_input)
        assert ctl.frontend.sent_requests == sent
        with pytest.raises(RequestFailed, match="index out of range"):
            ctl.infer(name, np.full((1,), 99, dtype=np.int64), timeout_s=10)
        # The backend keeps serving: the next batches succeed.
        for _ in range(3):
            assert ctl.infer(name, good, timeout_s=10) is not None
