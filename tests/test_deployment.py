"""The long-running deployment in virtual time (sim/deployment.py): it runs the controller's own epoch rule, its
load follows the day and the sessions' lives, and its totals add up. Small and fast: minutes of virtual time."""

from __future__ import annotations

import numpy as np
import pytest

from nexus_lab.planner import epoch_plan as epoch_plan_module
from nexus_lab.planner.incremental import Band
from nexus_lab.sim import DeploymentSpec, run_deployment
from nexus_lab.sim import deployment as dep

SMALL = dict(hours=0.75, epoch_s=300.0, sample_s=0.5, sessions=10, peak_gpus=10.0, bursts_per_hour=2.0)


def test_spec_refuses_bad_values_naming_the_field():
    for field, val in (("hours", 0), ("epoch_s", -1), ("sessions", 0), ("trough", 1.5), ("burst_gain", 0.5),
                       ("sample_s", "2"), ("hours", True)):
        with pytest.raises(ValueError, match=field):
            DeploymentSpec(**{field: val})
    with pytest.raises(ValueError, match="band"):
        DeploymentSpec(band=1.1)
    with pytest.raises(ValueError, match="epoch_s"):
        DeploymentSpec(hours=0.01, epoch_s=3600)


def test_the_load_follows_the_day_and_session_lives():
    spec = DeploymentSpec(hours=8.0, epoch_s=600.0, sessions=30, churn=0.5, bursts_per_hour=0.0)
    wl, life, rates = dep.deployment_load(spec)
    peak_t = spec.day_h * 3600 * 0.375  # the cosine's peak (phase offset a quarter pi)
    trough_t = spec.day_h * 3600 * 0.875
    always = np.isinf(life[:, 1])
    assert always.any() and (~always).any()
    assert rates(peak_t)[always].sum() > 2 * rates(trough_t)[always].sum()
    gone = ~always
    for i in np.flatnonzero(gone):
        before, after = life[i, 0] - 1.0, life[i, 1] + 1.0
        if before >= 0:
            assert rates(before)[i] == 0
        assert rates(after)[i] == 0 and rates(life[i, 0] + 1.0)[i] > 0
    assert len(wl.sessions) == spec.sessions


def test_a_short_deployment_adds_up_and_is_deterministic():
    spec = DeploymentSpec(**SMALL)
    a = run_deployment(spec)
    b = run_deployment(spec)
    assert a.totals == b.totals
    n = spec.epochs
    assert len(a.gpus) == len(a.lower_bound) == len(a.requests) == len(a.modes) == n
    t = a.totals
    assert t["virtual_hours"] == pytest.approx(0.75)
    assert t["gpu_hours"] == pytest.approx(a.gpus.sum() * spec.epoch_s / 3600)
    assert t["peak_gpus"] == a.gpus.max()
    assert t["gpu_hours_over_lower_bound"] >= 1.0  # never under the bound
    assert 0 < t["gpu_hours_over_fixed_peak"] <= 1.0
    assert t["requests_simulated"] > 1000 and 0 <= t["slo_violation_rate"] < 0.05
    assert a.modes[0] == "scratch" and "incremental" in a.modes[1:]


def test_it_drives_the_controllers_decision_rule(monkeypatch):
    """The simulator calls ``planner.epoch_plan.epoch_plan`` (the function the epoch loop calls): counting the
    calls through the module the controller imports it from."""
    calls = []
    real = epoch_plan_module.epoch_plan

    def spy(*args, **kwargs):
        calls.append(kwargs.get("band"))
        return real(*args, **kwargs)

    monkeypatch.setattr(dep, "epoch_plan", spy)
    from nexus_lab.controller import epoch as controller_epoch

    assert controller_epoch.epoch_plan is real  # the same function object on both sides
    spec = DeploymentSpec(**{**SMALL, "hours": 0.25, "band": Band(high=1.2)})
    run_deployment(spec)
    assert len(calls) == spec.epochs and all(b.high == 1.2 for b in calls)


def test_more_headroom_costs_gpu_hours():
    lean = run_deployment(DeploymentSpec(**SMALL, band=Band(high=1.0)))
    rich = run_deployment(DeploymentSpec(**SMALL, band=Band(high=1.5)))
    assert rich.totals["gpu_hours"] > lean.totals["gpu_hours"]
