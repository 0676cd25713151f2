"""The baseline policies: dedicated-GPU plans are sane and fill a fixed cluster; batch-oblivious mis-packs."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus_lab.planner import plan_workload, validate
from nexus_lab.planner.api import demands, policies
from nexus_lab.planner.baselines import (
    BASELINES,
    choose_config,
    config_grid,
    dedicated_gpu_counts,
    slo_batch,
)
from nexus_lab.planner.squishy import saturated_batch
from nexus_lab.workload import load_workload

DEDICATED = ("clipper", "tf-serving", "triton")
MEM = 12288.0


def _mixed(scale: float = 1.0):
    sessions = [("vgg16", 50, 40), ("vgg16", 200, 300), ("vgg_face", 100, 60), ("vgg_face", 300, 30),
                ("vgg_s", 50, 900), ("vgg_s", 150, 100), ("vgg_s", 500, 50), ("yolo9000", 400, 10)]
    return load_workload({
        "models": [{"name": m, "profile": f"titan-x-pascal/{m}"} for m in ("vgg16", "vgg_face", "vgg_s", "yolo9000")],
        "sessions": [{"model": m, "slo_ms": s, "rate": r * scale} for m, s, r in sessions],
        "queries": [{"name": "traffic", "slo_ms": 400, "rate": 10 * scale, "stages": [
            {"name": "detect", "model": "yolo9000"},
            {"name": "car", "model": "vgg16", "parent": "detect", "gamma": 2.0}]}],
    })


def _check_dedicated(plan, wl, system):
    """Every GPU holds one session under ``system``'s batching; batches and timeouts fit the budget; every
    session's GPUs together take exactly its rate, spread evenly."""
    by_name = {d.session.session: d for d in demands(wl)}
    served: dict[str, list[float]] = {}
    for g in plan.gpus:
        assert g.batching == system
        (a,) = g.allocations
        dm = by_name[a.session]
        p, budget = dm.profile, dm.budget_ms
        assert 1 <= a.batch <= slo_batch(p, budget, MEM)
        lat = float(p.lat_ms[a.batch])
        assert lat <= budget + 1e-9
        assert g.memory_mb == pytest.approx(float(p.mem_mb[a.batch])) and g.memory_mb <= MEM
        if system == "clipper":
            assert a.batch_timeout_ms is None and a.batch == slo_batch(p, budget, MEM)
        else:
            assert a.batch_timeout_ms is not None and a.batch_timeout_ms + lat <= budget + 1e-9
        assert g.duty_cycle_ms == pytest.approx(max(a.batch_timeout_ms or 0.0, lat))
        served.setdefault(a.session, []).append(a.rate)
    for name, rates in served.items():
        # On a fixed cluster the plan takes the common fraction of every rate its GPUs sustain.
        assert sum(rates) == pytest.approx(by_name[name].session.rate * plan.rate_fraction)
        assert max(rates) == pytest.approx(min(rates))
    return served


@pytest.mark.parametrize("system", DEDICATED)
def test_dedicated_plans_are_sane_and_have_enough_gpus(system):
    wl = _mixed()
    plan = plan_workload(wl, system)
    served = _check_dedicated(plan, wl, system)
    for dm in demands(wl):
        big = saturated_batch(dm.profile, dm.budget_ms, MEM)
        need = dm.session.rate * float(dm.profile.lat_ms[big]) / big / 1000.0
        n = len(served[dm.session.session])
        # Enough GPUs for the rate at the best throughput within the SLO, and not one more.
        assert n == max(1, math.ceil(need - 1e-9))
        # The per-GPU rate is within what B / l(B) sustains.
        assert dm.session.rate / n <= big * 1000.0 / float(dm.profile.lat_ms[big]) + 1e-6


@pytest.mark.parametrize("system", DEDICATED)
def test_fixed_cluster_is_divided_in_proportion_to_load(system):
    wl = _mixed(3.0)
    plan = plan_workload(wl, system, gpus=16)
    assert plan.num_gpus == 16 and plan.rate_fraction == 1.0  # all of it, at the full offered rate
    served = _check_dedicated(plan, wl, system)
    assert set(served) == {d.session.session for d in demands(wl)}
    counts = {k: len(v) for k, v in served.items()}
    assert counts["vgg_s:50"] == max(counts.values()) > 1
    assert counts["yolo9000:400"] == 1


def test_dhondt_division():
    assert dedicated_gpu_counts([3.0, 1.0], 4) == [3, 1]
    assert dedicated_gpu_counts([0.1, 0.1, 5.0], 3) == [1, 1, 1]  # at least one each
    assert dedicated_gpu_counts([1.0, 2.0, 0.5], 2) == [1, 1, 0]  # fewer GPUs than sessions: largest first
    assert sum(dedicated_gpu_counts([0.3, 7.1, 2.2, 0.0], 40)) == 40
    with pytest.raises(ValueError, match="gpus"):
        dedicated_gpu_counts([1.0], -1)


def test_fewer_gpus_than_sessions_reports_the_rest_unserved():
    wl = _mixed()
    plan = plan_workload(wl, "triton", gpus=3)
    assert plan.num_gpus == 3
    assert len(plan.unserved) == len(demands(wl)) - 3
    assert all("cluster of 3 GPUs" in u.reason for u in plan.unserved)


def test_grid_choice_prefers_large_batches_under_load():
    dm = next(d for d in demands(_mixed()) if d.session.session == "vgg_s:50")
    grid = config_grid(dm, MEM)
    assert (1, 0.0) in grid and all(t + float(dm.profile.lat_ms[b]) <= dm.budget_ms for b, t in grid)
    for system in ("tf-serving", "triton"):
        light, heavy = choose_config(dm, system, 50.0, MEM), choose_config(dm, system, 800.0, MEM)
        assert heavy.utilization <= 0.95 and heavy.batch >= 16
        assert light.latency_ms <= heavy.latency_ms
    with pytest.raises(ValueError, match="budget"):
        bad = demands(load_workload({"sessions": [{"model": "vgg16", "slo_ms": 9, "rate": 1}]}))[0]
        choose_config(bad, "triton", 1.0, MEM)


def test_unservable_sessions_are_reported_by_every_baseline():
    wl = load_workload({"sessions": [{"model": "vgg16", "slo_ms": 15, "rate": 10},
                                     {"model": "vgg_s", "slo_ms": 100, "rate": 100}]})
    for name in BASELINES:
        plan = plan_workload(wl, name)
        assert [u.session for u in plan.unserved] == ["vgg16:15"]
        assert plan.num_gpus == 1


def test_batch_oblivious_packs_by_saturated_cost_then_pays_to_deploy():
    # Many small residuals: costed at l(B)/B per request they fit few bins, but at their shrunken batches the
    # summed latency overruns the duty cycle, so deploying the bins takes extra GPUs. The plan is valid, larger
    # than Nexus's, and every GPU keeps the deadlines.
    wl = load_workload({"sessions": [{"model": "vgg16", "slo_ms": 200, "rate": 20 + i, "name": f"s{i}"}
                                     for i in range(12)]})
    obl, nexus = plan_workload(wl, "batch-oblivious"), plan_workload(wl)
    validate(nexus, wl)
    validate(obl, wl)
    assert obl.num_gpus > nexus.num_gpus
    by_name = {d.session.session: d for d in demands(wl)}
    oblivious_bins = 0.0
    for g in obl.gpus:
        assert g.occupancy <= 1.0 + 1e-9
        for a in g.allocations:
            dm = by_name[a.session]
            big = saturated_batch(dm.profile, dm.budget_ms, MEM)
            oblivious_bins += a.rate * float(dm.profile.lat_ms[big]) / big / 1000.0
            assert g.duty_cycle_ms + float(dm.profile.lat_ms[a.batch]) <= dm.budget_ms + 1e-6  # deadlines hold
    # Its own estimate promised far fewer GPUs than deploying took.
    assert math.ceil(oblivious_bins) < obl.num_gpus


def test_batch_oblivious_is_exact_when_saturated():
    # Rates that fill whole GPUs leave no residual to mis-pack: the plan is Nexus's and valid.
    wl = load_workload({"sessions": [{"model": "vgg_s", "slo_ms": 100, "rate": 1002.0 * 3}]})
    plan = plan_workload(wl, "batch-oblivious")
    validate(plan, wl)


def test_nexus_needs_no_more_gpus_than_any_dedicated_baseline():
    for scale in (0.5, 1.0, 3.0):
        wl = _mixed(scale)
        nexus = plan_workload(wl)
        validate(nexus, wl)
        for name in DEDICATED:
            assert nexus.num_gpus <= plan_workload(wl, name).num_gpus
    assert set(BASELINES) <= set(policies())


def test_paper_benchmark_quick():
    from nexus_lab.bench import paper

    out = paper.run(quick=True)
    rates = out["max_rate"]
    assert set(rates) == set(paper.POLICIES) and all(r > 0 for r in rates.values())
    assert out["best_baseline"] in DEDICATED
    assert out["nexus_over_best_baseline"] == pytest.approx(rates["nexus"] / rates[out["best_baseline"]], rel=1e-3)
    assert all(rates["nexus"] > rates[p] for p in DEDICATED)
    assert {"full", "no_early_drop", "even_split", "no_prefix"} <= set(out["ablations"])
    with pytest.raises(ValueError, match="popularity"):
        paper.paper_workload("uniform")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["vgg16", "vgg_face", "vgg_s", "yolo9000"]),
                          st.floats(20, 1000), st.floats(0.1, 3000)), min_size=1, max_size=12),
       st.one_of(st.none(), st.integers(1, 40)))
def test_dedicated_baselines_on_random_workloads(spec, gpus):
    wl = load_workload({"sessions": [{"model": m, "slo_ms": slo, "rate": r, "name": f"s{i}"}
                                     for i, (m, slo, r) in enumerate(spec)]})
    for system in DEDICATED:
        plan = plan_workload(wl, system, gpus)
        if gpus is not None:
            assert plan.num_gpus <= gpus and 0 < plan.rate_fraction <= 1.0
            validate(plan, wl)
        served = _check_dedicated(plan, wl, system)
        unserved = {u.session for u in plan.unserved}
        # Every session is served or reported with a reason, never both, never silently dropped.
        assert set(served) | unserved == {s.name for s in wl.sessions} and not set(served) & unserved
    obl = plan_workload(wl, "batch-oblivious", gpus)
    assert {u.session for u in obl.unserved} >= {u.session for u in plan_workload(wl, gpus=gpus).unserved
                                                 if "below 2*l(1)" in u.reason}
