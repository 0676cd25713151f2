"""Prefix batching: detection on torch modules, composite planning, and validate's composite checks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus_lab.models import shared_prefix_length
from nexus_lab.planner import Plan, PlanInvalid, plan_workload, validate
from nexus_lab.planner import prefix as prefix_mod
from nexus_lab.planner.prefix import composite_profile, prefix_profile, slice_batch
from nexus_lab.profiles import ModelProfile
from nexus_lab.workload import load_workload

PREFIX = {"latency_ms": {1: 5.0, 64: 100.0}, "memory_mb": {1: 1400, 64: 2800}}
SUFFIX = {"latency_ms": {1: 0.3, 64: 3.0}, "memory_mb": {1: 100, 64: 200}}
WHOLE = {"latency_ms": {1: 5.3, 64: 103.0}, "memory_mb": {1: 1500, 64: 3000}}


def _family(rates, slo=50, group="base", extra_sessions=()):
    models = [{"name": f"m{i}", "profile": WHOLE,
               "prefix": {"group": group, "profile": PREFIX, "suffix_profile": SUFFIX}} for i in range(len(rates))]
    sessions = [{"model": f"m{i}", "slo_ms": slo, "rate": r} for i, r in enumerate(rates)]
    return load_workload({"models": models, "sessions": sessions + list(extra_sessions)})


# ---------------------------------------------------------------------------------------------- detection
def test_shared_prefix_length_detects_identical_leading_layers():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    base = [torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3), torch.nn.ReLU()]

    def variant(out):  # the same layer objects (frozen base), a new head
        return torch.nn.Sequential(*base, torch.nn.Flatten(), torch.nn.Linear(8, out))

    a, b = variant(2), variant(5)
    assert shared_prefix_length([a, b]) == 5  # four shared layers + the parameter-free Flatten
    # Deep copies with the same weights are still the same prefix.
    import copy

    c = copy.deepcopy(a)
    assert shared_prefix_length([a, c]) == len(list(a.children()))
    # Fine-tuning the second conv breaks the prefix there.
    with torch.no_grad():
        c[2].weight[0, 0, 0, 0] += 1e-3
    assert shared_prefix_length([a, c]) == 2
    # A buffer counts as weights too.
    d1 = torch.nn.Sequential(torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    d2 = copy.deepcopy(d1)
    d2[0].running_mean += 1.0
    assert shared_prefix_length([d1, d2]) == 0
    # Same weights, different structure (kernel hyper-parameters) is not a shared layer.
    e1 = torch.nn.Sequential(torch.nn.MaxPool2d(2))
    e2 = torch.nn.Sequential(torch.nn.MaxPool2d(3))
    assert shared_prefix_length([e1, e2]) == 0
    assert shared_prefix_length([a]) == len(list(a.children()))
    with pytest.raises(ValueError, match="modules"):
        shared_prefix_length([])
    with pytest.raises(ValueError, match=r"modules\[1\]"):
        shared_prefix_length([a, "not a module"])
    assert prefix_mod.shared_prefix_length is shared_prefix_length  # the planner's name for it still works


# ---------------------------------------------------------------------------------------------- profiles
def test_composite_profile_sums_prefix_and_suffix_slices():
    pre = ModelProfile.from_inline("p", PREFIX)
    s1 = ModelProfile.from_inline("s1", SUFFIX)
    s2 = ModelProfile.from_inline("s2", {"latency_ms": {1: 1.0, 16: 4.0}, "memory_mb": {1: 10, 16: 40}})
    merged = prefix_profile("g", [pre, pre])
    assert np.allclose(merged.lat_ms, pre.lat_ms) and np.allclose(merged.mem_mb, pre.mem_mb)
    comp = composite_profile("c", merged, [s1, s2], [0.75, 0.25])
    # The second suffix's table ends at 16, so the composite stops at b with ceil(b/4) <= 16.
    assert comp.max_batch == 64
    comp = composite_profile("c", merged, [s1, s2], [0.5, 0.5])
    assert comp.max_batch == 32
    for b in (1, 7, 32):
        want = pre.lat_ms[b] + s1.lat_ms[slice_batch(b, 0.5)] + s2.lat_ms[slice_batch(b, 0.5)]
        assert comp.lat_ms[b] == pytest.approx(want, rel=1e-12)
        assert comp.mem_mb[b] == pytest.approx(pre.mem_mb[b] + s1.mem_mb[slice_batch(b, 0.5)]
                                               + s2.mem_mb[slice_batch(b, 0.5)], rel=1e-12)
    assert comp.safety == 1.0 and comp.preprocess_ms == 0.0  # tables are already inflated
    assert slice_batch(10, 0.3) == 3 and slice_batch(1, 0.01) == 1 and slice_batch(10, 0.1 + 0.2) == 3


# ---------------------------------------------------------------------------------------------- planning
@pytest.mark.parametrize("rates,slo", [([20] * 8, 50), ([30 * (i + 1) for i in range(10)], 100),
                                       ([100 * (i + 1) for i in range(6)], 200), ([5.0] * 16, 50)])
def test_prefix_planning_saves_gpus_and_memory(rates, slo):
    wl = _family(rates, slo)
    with_prefix, without = plan_workload(wl), plan_workload(wl, prefix=False)
    validate(with_prefix, wl)
    validate(without, wl)
    assert with_prefix.num_gpus <= without.num_gpus
    assert sum(g.memory_mb for g in with_prefix.gpus) < sum(g.memory_mb for g in without.gpus)
    (group,) = with_prefix.prefix_groups
    assert group["group"] == "base" and group["prefix_session"] == f"base.prefix:{slo:g}"
    assert group["sessions"] == [f"m{i}:{slo:g}" for i in range(len(rates))]
    assert group["memory_saved_mb"] > 0
    assert not without.prefix_groups
    # Every GPU that runs the prefix runs suffixes after it, on their slices of its batch.
    for g in with_prefix.gpus:
        allocs = {a.session: a for a in g.allocations}
        head = allocs[group["prefix_session"]]
        members = [allocs[s] for s in group["sessions"] if s in allocs]
        assert members and all(m.model.endswith(".suffix") for m in members)
        assert sum(m.rate for m in members) == pytest.approx(head.rate)
    # The JSON round trip keeps the groups and stays valid.
    validate(Plan.from_json(with_prefix.to_json()), wl)


def test_groups_split_by_slo_and_singletons_stay_whole():
    wl = _family([20] * 4, 50, extra_sessions=[{"model": "m0", "slo_ms": 80, "rate": 20, "name": "m0-slow"}])
    plan = plan_workload(wl)
    validate(plan, wl)
    (group,) = plan.prefix_groups
    assert "m0-slow" not in group["sessions"]
    assert any(a.session == "m0-slow" and a.model == "m0" for g in plan.gpus for a in g.allocations)


def test_baselines_and_ablation_plan_models_whole():
    wl = _family([20] * 8)
    for plan in (plan_workload(wl, prefix=False), plan_workload(wl, split="even", prefix=False)):
        assert not plan.prefix_groups
        assert all(not a.model.endswith((".prefix", ".suffix")) for g in plan.gpus for a in g.allocations)


def test_fixed_cluster_with_prefix_groups_validates():
    wl = _family([200.0] * 6, 100)
    plan = plan_workload(wl, gpus=1)
    assert plan.num_gpus <= 1 and plan.rate_fraction < 1.0
    validate(plan, wl)


def test_validate_checks_the_composite_unit():
    wl = _family([20] * 8)
    plan = plan_workload(wl)
    validate(plan, wl)
    head = plan.prefix_groups[0]["prefix_session"]
    g0 = plan.gpus[0]
    # A suffix without its prefix on the GPU.
    no_head = replace(g0, allocations=tuple(a for a in g0.allocations if a.session != head))
    with pytest.raises(PlanInvalid, match="suffix without its prefix"):
        validate(replace(plan, gpus=(no_head, *plan.gpus[1:])), wl)
    # The prefix taking fewer requests than its suffixes serve.
    starved = tuple(replace(a, rate=a.rate / 2) if a.session == head else a for a in g0.allocations)
    with pytest.raises(PlanInvalid, match="prefix takes"):
        validate(replace(plan, gpus=(replace(g0, allocations=starved), *plan.gpus[1:])), wl)
    # A group the workload does not declare.
    bogus = ({**plan.prefix_groups[0], "group": "other"},)
    with pytest.raises(PlanInvalid, match="prefix group other"):
        validate(replace(plan, prefix_groups=bogus), wl)
    # Without the declaration the suffix allocations do not match the whole models' profiles.
    with pytest.raises(PlanInvalid):
        validate(replace(plan, prefix_groups=()), wl)


def test_composite_deadline_is_checked_across_the_unit():
    wl = _family([20] * 8, 50)
    plan = plan_workload(wl)
    g0 = plan.gpus[0]
    # Stretch the duty cycle to the suffix's own limit: each suffix alone fits, the whole unit does not.
    longer = replace(g0, duty_cycle_ms=40.0, occupancy=g0.occupancy * g0.duty_cycle_ms / 40.0)
    with pytest.raises(PlanInvalid, match="l_prefix"):
        validate(replace(plan, gpus=(longer, *plan.gpus[1:])), wl)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.floats(0.0, 600.0, allow_subnormal=False), min_size=1, max_size=12),
       st.sampled_from([30, 50, 100, 250]), st.booleans())
def test_prefix_plans_validate_and_never_use_more_gpus(rates, slo, two_groups):
    half = len(rates) // 2
    models = [{"name": f"m{i}", "profile": WHOLE,
               "prefix": {"group": "a" if (not two_groups or i < half) else "b", "profile": PREFIX,
                          "suffix_profile": SUFFIX}} for i in range(len(rates))]
    wl = load_workload({"models": models,
                        "sessions": [{"model": f"m{i}", "slo_ms": slo, "rate": r} for i, r in enumerate(rates)]})
    with_prefix, without = plan_workload(wl), plan_workload(wl, prefix=False)
    validate(with_prefix, wl)
    validate(without, wl)
    assert with_prefix.num_gpus <= without.num_gpus
    assert {u.session for u in with_prefix.unserved} == {u.session for u in without.unserved}


def test_session_profiles_name_the_prefix_and_suffix_tables():
    from nexus_lab.planner.api import session_profiles

    wl = _family([20] * 3, extra_sessions=[{"model": "vgg16", "slo_ms": 100, "rate": 30}])
    plan = plan_workload(wl)
    profiles = session_profiles(plan, wl)
    head = plan.prefix_groups[0]["prefix_session"]
    assert set(profiles) == {s.session for s in plan.sessions}
    assert profiles[head].name == "base.prefix"
    assert profiles["m0:50"] is wl.models["m0"].prefix.suffix
    assert profiles["vgg16:100"] is wl.profile("vgg16")
    assert session_profiles(plan_workload(wl, prefix=False), wl)["m0:50"] is wl.profile("m0")


def test_query_stages_of_one_prefix_group_share_the_prefix():
    models = [{"name": f"m{i}", "profile": WHOLE,
               "prefix": {"group": "base", "profile": PREFIX, "suffix_profile": SUFFIX}} for i in range(3)]
    queries = [{"name": f"q{i}", "slo_ms": 120, "rate": 10,
                "stages": [{"name": "find", "model": "c"}, {"name": "id", "model": f"m{i}", "parent": "find"}]}
               for i in range(3)]
    wl = load_workload({"models": [*models, {"name": "c", "profile": {"latency_ms": {1: 2.0, 32: 12.0}}}],
                        "queries": queries})
    plan = plan_workload(wl, gpus=4)
    validate(plan, wl)
    (group,) = plan.prefix_groups
    assert group["sessions"] == ["q0/id", "q1/id", "q2/id"]
    assert plan.num_gpus <= plan_workload(wl, prefix=False).num_gpus
