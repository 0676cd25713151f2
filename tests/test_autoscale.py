"""Autoscaling through the cluster manager (controller/autoscale.py): the pure decision and trend, and a real
LocalCluster of simulated GPUs scaled up to what the plan needs, then drained and scaled down."""

from __future__ import annotations

import time

import pytest

from nexus_lab.controller.autoscale import AutoscalePolicy, RateTrend, scale_decision
from nexus_lab.planner import plan_workload


def test_policy_refuses_bad_values_naming_the_field():
    for kwargs, field in (({"minimum": -1}, "minimum"), ({"maximum": 0}, "maximum"), ({"minimum": 3, "maximum": 2},
                          "maximum"), ({"up_cooldown_s": -1}, "up_cooldown_s"), ({"interval_s": 0}, "interval_s"),
                          ({"minimum": 1.5}, "minimum"), ({"lookahead_s": True}, "lookahead_s")):
        with pytest.raises(ValueError, match=f"autoscale.{field}"):
            AutoscalePolicy(**kwargs)


def test_decision_bounds_cooldowns_and_a_fall_that_must_last():
    p = AutoscalePolicy(minimum=2, maximum=6, up_cooldown_s=5, down_cooldown_s=20, down_after_s=10)
    assert scale_decision(9, 3, p, now=100, last_change=0, enough_since=None) == (6, "needs 9 GPUs")  # bounded
    assert scale_decision(4, 3, p, now=100, last_change=98, enough_since=None)[0] == 3  # up cooling down
    assert scale_decision(4, 3, p, now=100, last_change=95, enough_since=None)[0] == 4
    assert scale_decision(0, 3, p, now=100, last_change=0, enough_since=95)[0] == 3  # the fall lasted 5 s only
    assert scale_decision(0, 3, p, now=100, last_change=0, enough_since=90) == (2, "needs 0 GPUs")  # minimum 2
    assert scale_decision(0, 3, p, now=100, last_change=90, enough_since=80)[0] == 3  # down cooling down
    assert scale_decision(3, 3, p, now=100, last_change=0, enough_since=None) == (3, "steady")


def test_trend_projects_a_rise_and_never_a_fall():
    up, down, flat = RateTrend(10.0), RateTrend(10.0), RateTrend(10.0)
    short = RateTrend(10.0)
    for t in range(-10, 11):  # two windows of history: the first one is never a trend
        up.add(float(t), 100.0 + 20.0 * max(t, 0))
        down.add(float(t), 300.0 - 20.0 * max(t, 0))
        flat.add(float(t), 100.0)
        if 0 <= t < 15:
            short.add(float(t), 100.0 + 20.0 * t)
    assert up.factor(10.0) == pytest.approx((300.0 + 200.0) / 300.0)
    assert down.factor(10.0) == 1.0 and flat.factor(10.0) == 1.0
    assert RateTrend().factor(10.0) == 1.0  # too few points
    assert short.factor(10.0) == 1.0  # under two windows of history: the monitor rising from nothing is no trend
    creep = RateTrend(10.0)
    for t in range(-10, 11):
        creep.add(float(t), 100.0 + 0.5 * max(t, 0))
    assert creep.factor(10.0) == 1.0  # a projected rise under 15%: noise, not a trend


def test_a_local_cluster_scales_up_and_drains_down():
    pytest.importorskip("nexus_lab.runtime.device")
    import nexus_lab

    high, low = 650.0, 60.0
    with nexus_lab.start(gpus=1, epoch_s=3600.0, poll_s=0.5, auto=False, fill=1.0) as c:
        c.add_session("vgg16", slo_ms=200, rate=low, name="v")
        assert plan_workload(c.editor.workload()).num_gpus == 1
        c._deploy.editor.set_rate("v", high)  # past what one worker holds: the controller's own set_rate refuses it
        need = plan_workload(c.editor.workload()).num_gpus
        assert need == 3
        assert c.autoscale_state() == {"enabled": False, "actual": 1, "target": None}
        c.autoscale(minimum=1, maximum=3, up_cooldown_s=0, down_cooldown_s=0, down_after_s=0, run=False)
        st = c.autoscale_step()
        assert st["needed"] == 3 and st["target"] == 3 and st["cluster_manager"]
        c.client.wait_for_workers(3, timeout=60)
        assert c.tick().startswith("workers changed")
        assert c.plan().num_gpus == 3 and len([g for g in c.assignment.values() if g]) == 3
        assert c.state()["autoscale"]["actual"] == 3
        c.set_rate("v", low)
        st = c.autoscale_step()  # drain two workers, retire them, scale the cluster manager down
        assert st["target"] == 1
        deadline = time.time() + 30
        while len(c.io.workers()) > 1 and time.time() < deadline:
            time.sleep(0.2)
        assert len(c.io.workers()) == 1
        assert [e for e in c.events() if e["event"] == "drained"]
        c.tick()
        assert c.plan().num_gpus == 1 and len(c._cluster.worker_spec) == 1  # the manager forgot them
        # Without a cluster manager it only says what it would ask for.
        cluster, c._cluster = c._cluster, None
        try:
            c._deploy.editor.set_rate("v", high)
            c.autoscale(minimum=1, maximum=3, up_cooldown_s=0, run=False)
            st = c.autoscale_step()
            assert st["target"] == 3 and not st["cluster_manager"] and "would ask for 3" in st["why"]
            assert len(c.io.workers()) == 1
        finally:
            c.stop_autoscale()
            c._cluster = cluster
