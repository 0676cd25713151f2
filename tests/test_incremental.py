"""Incremental epoch re-plans (planner/incremental.py, planner/epoch_plan.py) and the controller's epoch loop using
them: kept sessions keep GPUs and batches, resized ones are valid, falling load gives GPUs back without flapping,
and a plan drifting too far from a from-scratch one is re-packed."""

from __future__ import annotations

import pytest

from nexus_lab.bench.epochs import drifted, model_loads
from nexus_lab.bench.planner import random_workload
from nexus_lab.controller.placement import gpu_key
from nexus_lab.planner import Plan, plan_workload, validate
from nexus_lab.planner.epoch_plan import epoch_plan
from nexus_lab.planner.incremental import Band
from nexus_lab.workload import load_workload

WL = {"sessions": [
    {"name": "a", "model": "vgg16", "slo_ms": 200, "rate": 400},
    {"name": "b", "model": "vgg_s", "slo_ms": 100, "rate": 60},
    {"name": "c", "model": "vgg_face", "slo_ms": 300, "rate": 45},
    {"name": "d", "model": "yolo9000", "slo_ms": 400, "rate": 30},
]}


def rated(**rates: float):
    raw = {"sessions": [dict(s, rate=rates.get(s["name"], s["rate"])) for s in WL["sessions"]]}
    return load_workload(raw)


def batches(plan: Plan) -> dict[str, list[tuple[int, float]]]:
    """Session -> sorted (batch, duty cycle) of its allocations: what a kept session must keep."""
    out: dict[str, list] = {}
    for g in plan.gpus:
        for a in g.allocations:
            out.setdefault(a.session, []).append((a.batch, round(g.duty_cycle_ms, 9)))
    return {s: sorted(v) for s, v in out.items()}


def test_band_refuses_bad_values_naming_the_field():
    cases = (({"low": 0}, "band.low"), ({"high": 0.5}, "band.high"), ({"repack_share": 2}, "band.repack_share"),
             ({"low": True}, "band.low"))
    for kwargs, field in cases:
        with pytest.raises(ValueError, match=field):
            Band(**kwargs)
    with pytest.raises(ValueError, match="band"):
        epoch_plan(None, rated(), band="wide")


def test_first_plan_is_from_scratch_with_headroom():
    wl = rated()
    decision = epoch_plan(None, wl)
    assert decision.mode == "scratch"
    assert decision.plan.num_gpus == plan_workload(wl.scaled(1.1)).num_gpus
    validate(decision.plan, wl)


def test_small_drift_keeps_every_gpu_and_batch():
    before = epoch_plan(None, rated()).plan
    capacity: dict[str, float] = {}
    for g in before.gpus:
        for a in g.allocations:
            capacity[a.session] = capacity.get(a.session, 0.0) + a.batch * 1000.0 / g.duty_cycle_ms
    after = rated(**{s: 0.9 * c for s, c in capacity.items()})  # inside [0.8, 1.0] of each one's capacity
    decision = epoch_plan(before, after)
    assert decision.mode == "incremental"
    assert set(decision.kept) == {"a", "b", "c", "d"} and not decision.resized
    assert batches(decision.plan) == batches(before)
    assert decision.loads == 0 and model_loads(before, decision.plan) == 0
    validate(decision.plan, after)
    served = {s.session: s.rate for s in decision.plan.sessions}
    assert all(served[s.name] >= s.rate for s in after.sessions)


def test_a_rise_past_capacity_resizes_only_that_session():
    before = epoch_plan(None, rated()).plan
    after = rated(a=700)
    decision = epoch_plan(before, after)
    assert decision.mode == "incremental"
    assert decision.resized == ("a",)
    validate(decision.plan, after)
    served = {s.session: s.rate for s in decision.plan.sessions}
    assert served["a"] == pytest.approx(700 * 1.1)  # resized: sized with the headroom
    old, new = batches(before), batches(decision.plan)
    assert all(new[s] == old[s] for s in "bcd")
    assert decision.plan.num_gpus >= before.num_gpus


def test_falling_load_gives_gpus_back_and_does_not_flap():
    before = epoch_plan(None, rated(a=1200)).plan
    low = rated(a=300)
    down = epoch_plan(before, low)
    assert down.mode in ("incremental", "repack")
    assert down.plan.num_gpus < before.num_gpus
    validate(down.plan, low)
    # The same rates again, and a wobble inside the band: nothing moves.
    for wobble in (300, 320, 290):
        again = epoch_plan(down.plan, rated(a=wobble))
        assert again.mode == "incremental" and not again.resized
        assert [[(x[0], x[3]) for x in gpu_key(g)[2]] for g in again.plan.gpus] == \
            [[(x[0], x[3]) for x in gpu_key(g)[2]] for g in down.plan.gpus]


def test_sessions_arrive_and_leave():
    before = epoch_plan(None, rated()).plan
    raw = {"sessions": [s for s in WL["sessions"] if s["name"] != "d"]
           + [{"name": "e", "model": "vgg_s", "slo_ms": 150, "rate": 80}]}
    wl = load_workload(raw)
    decision = epoch_plan(before, wl)
    validate(decision.plan, wl)
    placed = {a.session for g in decision.plan.gpus for a in g.allocations}
    assert "d" not in placed and "e" in placed


def test_a_plan_far_from_scratch_is_repacked():
    wl = random_workload(3, 30)
    # Every session alone on its GPUs: valid, but far more GPUs than a packing needs.
    alone = [plan_workload(load_workload({"models": wl.to_dict()["models"], "sessions": [s]}).scaled(1.1))
             for s in wl.to_dict()["sessions"]]
    gpus = tuple(g for p in alone for g in p.gpus)
    previous = Plan(gpus=gpus, sessions=tuple(s for p in alone for s in p.sessions), lower_bound_gpus=0.0)
    scratch = plan_workload(wl.scaled(1.1)).num_gpus
    decision = epoch_plan(previous, wl, band=Band(consolidate=False))
    assert decision.mode == "repack", decision.reason
    assert decision.plan.num_gpus == scratch
    # Consolidation empties the lightly loaded GPUs instead, and whichever way, within the share of scratch.
    merged = epoch_plan(previous, wl)
    assert merged.plan.num_gpus <= scratch * 1.05
    assert merged.mode == "repack" or merged.consolidated > 0


@pytest.mark.parametrize("amp", [0.1, 0.3])
def test_random_drifts_stay_valid_and_near_scratch(amp):
    for seed in range(3):
        wl = random_workload(500 + seed, 60)
        before = plan_workload(wl.scaled(1.1))
        after = drifted(wl, amp, seed)
        decision = epoch_plan(before, after)
        validate(decision.plan, after)
        scratch = plan_workload(after.scaled(1.1))
        assert decision.plan.num_gpus <= scratch.num_gpus * 1.05 + 1e-9
        if amp == 0.1:
            assert model_loads(before, decision.plan) <= model_loads(before, scratch)


def test_baselines_and_prefix_groups_plan_from_scratch():
    wl = rated()
    before = plan_workload(wl, "clipper")
    assert epoch_plan(before, wl, policy="clipper").mode == "scratch"


def test_the_controller_epoch_loop_replans_incrementally():
    pytest.importorskip("nexus_lab.runtime.device")
    import nexus_lab

    with nexus_lab.start(gpus=4, epoch_s=3600.0, poll_s=0.5, auto=False, fill=1.0) as c:
        for s in WL["sessions"][1:]:
            c.add_session(s["model"], slo_ms=s["slo_ms"], rate=s["rate"], name=s["name"])
        c.apply()
        before = c.plan()
        c._epoch.request()
        assert c.tick() == "requested"
        replan = [e for e in c.events() if e["event"] == "replan"][-1]
        assert replan["mode"] == "incremental", replan
        assert [(g.duty_cycle_ms, [(a.session, a.batch) for a in g.allocations]) for g in c.plan().gpus] == \
            [(g.duty_cycle_ms, [(a.session, a.batch) for a in g.allocations]) for g in before.gpus]


def test_idle_workers_become_headroom_on_a_fixed_cluster():
    wl = rated()
    before = plan_workload(wl.scaled(1.1), gpus=plan_workload(wl.scaled(1.1)).num_gpus, fill=2.0)
    grown = epoch_plan(before, wl, gpus=before.num_gpus + 3, fill=2.0)
    assert grown.mode == "scratch" and "idle" in grown.reason
    assert grown.plan.num_gpus > before.num_gpus
    same = epoch_plan(grown.plan, wl, gpus=before.num_gpus + 3, fill=2.0)
    assert same.mode == "incremental" or grown.plan.rate_fraction >= 2.0
    validate(same.plan, wl)
