"""Query analysis: the DP split against brute force, sound DAG splits, and the planner's handling of queries."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus_lab.planner import PlanInvalid, plan_workload, validate
from nexus_lab.planner.query import (
    _cost_grid,
    _grid_step,
    _stages,
    _tree_dp,
    budget_shortfall,
    even_split,
    optimal_split,
    split_cost,
    split_infeasibility,
    stage_cost,
)
from nexus_lab.profiles import profile_set
from nexus_lab.workload import load_workload

TINY = {
    "a": {"latency_ms": {1: 1.0, 16: 6.0, 64: 20.0}, "memory_mb": {1: 100, 64: 400}},
    "b": {"latency_ms": {1: 2.0, 8: 5.0, 32: 12.0}, "memory_mb": {1: 200, 32: 800}, "preprocess_ms": 1.0},
    "c": {"latency_ms": {1: 0.5, 32: 4.0, 128: 14.0}, "memory_mb": {1: 50, 128: 500}},
}


def _workload(stages, slo, rate, models=TINY):
    return load_workload({"models": [{"name": n, "profile": p} for n, p in models.items()],
                          "queries": [{"name": "q", "slo_ms": slo, "rate": rate, "stages": stages}]})


def _paths_ok(query, budgets):
    finish = {}
    for s in _topo(query):
        finish[s.name] = budgets[s.name] + max((finish[p] for p in s.parents), default=0.0)
    return max(finish.values()) <= query.slo_ms * (1 + 1e-9)


def _topo(query):
    from nexus_lab.workload import topological

    return topological(query.stages)


TRAFFIC = [{"name": "detect", "model": "yolo9000"},
           {"name": "face", "model": "vgg_face", "parent": "detect", "gamma": 1.2},
           {"name": "car", "model": "vgg16", "parent": "detect", "gamma": 2.5}]


def test_cost_grid_matches_the_packers_functions():
    mem = 12288.0
    for name, p in profile_set("titan-x-pascal").items():
        for rate in (0.0, 3.0, 57.0, 400.0, 2500.0):
            budgets = np.linspace(0.0, 300.0, 97)
            grid = _cost_grid(p, rate, budgets, mem)
            ref = np.array([stage_cost(p, rate, float(b), mem) for b in budgets])
            assert np.array_equal(np.isinf(grid), np.isinf(ref)), name
            fin = np.isfinite(ref)
            assert np.allclose(grid[fin], ref[fin], rtol=1e-12, atol=1e-12), (name, rate)
    # Memory caps the saturated batch the same way in both.
    p = profile_set("titan-x-pascal")["vgg16"]
    b = np.array([150.0, 400.0])
    assert np.allclose(_cost_grid(p, 900.0, b, 3000.0), [stage_cost(p, 900.0, x, 3000.0) for x in b])
    assert np.isinf(_cost_grid(p, 1.0, b, 500.0)).all()


def _brute_force(query, wl):
    """Least summed grid cost over every grid assignment whose root-to-leaf paths fit the SLO."""
    step = _grid_step(query.slo_ms)
    k_max = math.floor(query.slo_ms / step + 1e-9)
    grid = np.arange(k_max + 1) * step
    stages = _stages(query, wl)
    costs = [_cost_grid(s.profile, s.rate, grid - s.overhead_ms, wl.device.memory_mb) for s in stages]
    names = [s.name for s in stages]
    best = math.inf
    for ks in itertools.product(range(k_max + 1), repeat=len(names)):
        steps = dict(zip(names, ks, strict=True))
        if not _paths_ok(query, {n: k * step for n, k in steps.items()}):
            continue
        best = min(best, sum(float(c[k]) for c, k in zip(costs, ks, strict=True)))
    return best, costs, k_max, names


@pytest.mark.parametrize("stages,slo,rate", [
    ([{"name": "x", "model": "a"}, {"name": "y", "model": "b", "parent": "x", "gamma": 2.0}], 30, 400),
    ([{"name": "x", "model": "b"}, {"name": "y", "model": "a", "parent": "x", "gamma": 1.5},
      {"name": "z", "model": "c", "parent": "x", "gamma": 3.0}], 24, 250),
    ([{"name": "x", "model": "c"}, {"name": "y", "model": "a", "parent": "x"},
      {"name": "z", "model": "b", "parent": "y", "gamma": 0.5}], 28, 900),
])
def test_tree_dp_is_optimal_on_the_grid(stages, slo, rate):
    wl = _workload(stages, slo, rate)
    q = wl.queries[0]
    best, costs, k_max, names = _brute_force(q, wl)
    assert math.isfinite(best)
    steps = _tree_dp(q, dict(zip(names, costs, strict=True)), k_max)
    got = sum(float(costs[i][steps[n]]) for i, n in enumerate(names))
    assert got == pytest.approx(best, rel=1e-12, abs=1e-12)
    # The full split (slack handed out afterwards) is sound and never costs more than the grid optimum.
    split = optimal_split(q, wl)
    assert _paths_ok(q, split)
    assert split_cost(q, wl, split) <= best + 1e-9
    assert split_cost(q, wl, split) <= split_cost(q, wl, even_split(q, wl)) + 1e-9


@st.composite
def _dags(draw):
    n = draw(st.integers(1, 6))
    stages = []
    for i in range(n):
        parents = draw(st.lists(st.integers(0, i - 1), max_size=min(i, 3), unique=True)) if i else []
        stages.append({"name": f"s{i}", "model": draw(st.sampled_from(sorted(TINY))),
                       "parents": [f"s{p}" for p in parents], "gamma": draw(st.floats(0.2, 4.0))})
    return stages, draw(st.floats(3.0, 120.0)), draw(st.floats(0.0, 3000.0, allow_subnormal=False))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_dags())
def test_dag_split_is_sound_and_no_worse_than_even(case):
    stages, slo, rate = case
    wl = _workload(stages, slo, rate)
    q = wl.queries[0]
    split = optimal_split(q, wl)
    assert set(split) == {s.name for s in q.stages}
    assert all(b > 0 for b in split.values())
    assert _paths_ok(q, split)
    assert split == optimal_split(q, wl)  # deterministic
    if split_infeasibility(q, wl) is None:
        # Every stage servable, and no more GPUs (squishy cost) than the even split.
        assert budget_shortfall(q, wl, split) is None
        assert split_cost(q, wl, split) <= split_cost(q, wl, even_split(q, wl)) + 1e-9
        plan = plan_workload(wl)
        validate(plan, wl)
        assert not plan.unserved


def test_dag_beats_even_where_stages_differ():
    # A diamond where one branch is cheap and one is expensive: even halves the SLO, the split should not.
    stages = [{"name": "src", "model": "c"}, {"name": "big", "model": "b", "parent": "src", "gamma": 4.0},
              {"name": "small", "model": "c", "parent": "src"},
              {"name": "join", "model": "c", "parents": ["big", "small"]}]
    wl = _workload(stages, 30, 800)
    q = wl.queries[0]
    assert not q.is_tree
    split = optimal_split(q, wl)
    assert _paths_ok(q, split)
    assert split_cost(q, wl, split) < split_cost(q, wl, even_split(q, wl)) - 1e-6


def test_traffic_query_dp_uses_no_more_gpus_than_even():
    wl = load_workload({"queries": [{"name": "traffic", "slo_ms": 400, "rate": 60, "stages": TRAFFIC}]})
    dp, even = plan_workload(wl, split="dp"), plan_workload(wl, split="even")
    validate(dp, wl)
    validate(even, wl)
    assert not dp.unserved
    assert dp.num_gpus <= even.num_gpus
    budgets = {s.name: s.budget_ms for s in dp.queries[0].stages}
    assert budgets["detect"] >= 130.0  # yolo9000's pre/post-processing alone is ~77 ms
    assert budgets["detect"] + max(budgets["face"], budgets["car"]) <= 400 * (1 + 1e-9)


def test_ten_stage_split_is_fast():
    models = ["vgg_s", "vgg16", "vgg_face"]
    stages = [{"name": "s0", "model": "vgg_s"}] + [
        {"name": f"s{i}", "model": models[i % 3], "parent": f"s{(i - 1) // 2}", "gamma": 1.1} for i in range(1, 10)]
    wl = load_workload({"queries": [{"name": "q", "slo_ms": 600, "rate": 120, "stages": stages}]})
    q = wl.queries[0]
    optimal_split(q, wl)  # warm caches
    t0 = time.perf_counter()
    split = optimal_split(q, wl)
    assert time.perf_counter() - t0 < 0.25  # ~20 ms unloaded; generous for a shared 2-core machine
    assert _paths_ok(q, split)


def test_infeasible_query_is_reported_unserved_by_field():
    wl = load_workload({"sessions": [{"model": "vgg16", "slo_ms": 100, "rate": 50}],
                        "queries": [{"name": "traffic", "slo_ms": 120, "rate": 10, "stages": TRAFFIC[:2]}]})
    reason = split_infeasibility(wl.queries[0], wl, "queries[0]")
    assert reason is not None and reason.startswith("queries[0].slo_ms: 120 ms is too small for path detect -> face")
    plan = plan_workload(wl)
    validate(plan, wl)
    unserved = {u.session: u.reason for u in plan.unserved}
    assert set(unserved) == {"traffic/detect", "traffic/face"}
    assert all(r == reason for r in unserved.values())
    assert plan.gpus_of("vgg16:100")  # the plain session is still served
    assert not plan.gpus_of("traffic/face")


def test_even_split_shortfall_blocks_the_whole_query():
    # Feasible with the DP (detect needs ~130 ms) but not with SLO/2 = 100 ms each.
    wl = load_workload({"queries": [{"name": "t", "slo_ms": 200, "rate": 10, "stages": TRAFFIC[:2]}]})
    assert not plan_workload(wl, split="dp").unserved
    even = plan_workload(wl, split="even")
    validate(even, wl)
    assert {u.session for u in even.unserved} == {"t/detect", "t/face"}
    assert all(u.reason.startswith("queries[0].stages[0]: budget 100.0 ms of stage detect") for u in even.unserved)


def test_validate_rejects_a_split_over_the_slo():
    wl = load_workload({"queries": [{"name": "t", "slo_ms": 400, "rate": 10, "stages": TRAFFIC[:2]}]})
    plan = plan_workload(wl)
    from dataclasses import replace

    stages = tuple(replace(s, budget_ms=s.budget_ms * 1.2) for s in plan.queries[0].stages)
    bad = replace(plan, queries=(replace(plan.queries[0], stages=stages),))
    with pytest.raises(PlanInvalid, match="a path needs"):
        validate(bad, wl)


def test_split_feasible_only_off_the_grid():
    # Each stage needs 2*l(1) + net = 2*1.15 + 2 = 4.3 ms; on the 1 ms grid that is 5 + 5 > 9, exactly 8.6 <= 9.
    wl = _workload([{"name": "x", "model": "a"}, {"name": "y", "model": "a", "parent": "x"}], 9.0, 50)
    q = wl.queries[0]
    split = optimal_split(q, wl)
    assert _paths_ok(q, split)
    assert budget_shortfall(q, wl, split) is None
    plan = plan_workload(wl)
    validate(plan, wl)
    assert not plan.unserved
