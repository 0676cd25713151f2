"""The squishy planner and its improvement pass: hand-computed examples, and properties over random workloads.

Every plan is checked by ``validate`` (independent of the packers); improved plans never use more GPUs.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus_lab.planner import PlanInvalid, plan_workload, validate
from nexus_lab.planner.api import demands
from nexus_lab.planner.improve import efficient_batch, improve
from nexus_lab.planner.squishy import make_gpu, residual_for, saturated_batch
from nexus_lab.workload import load_workload

TITAN_X = ("vgg16", "vgg_face", "vgg_s", "yolo9000")
HAS_BASELINES = importlib.util.find_spec("nexus_lab.planner.baselines") is not None

# l(b) = 8 + 2b ms for b = 1..32 (safety 1, no std, no pre/post, no network): L' = SLO.
LINEAR = {"latency_ms": {1: 10.0, 32: 72.0}, "memory_mb": {1: 1000.0, 32: 4100.0}}


def _wl(sessions, memory_mb: float = 12288.0, profile=LINEAR):
    return load_workload({"device": {"memory_mb": memory_mb}, "safety": 1.0, "net_ms": 0.0,
                          "models": [{"name": "lin", "profile": profile}],
                          "sessions": [{"name": n, "model": "lin", "slo_ms": s, "rate": r} for n, s, r in sessions]})


def _alloc(plan, session):
    return [(g, a) for g in plan.gpus for a in g.allocations if a.session == session]


# ---------------------------------------------------------------------------------------------- squishy
def test_saturated_count_and_residual_formula():
    # L' = 100: B = 21 (2*l(21) = 100), T = 21 / 50 ms = 420/s; R = 1000 gives n = 2 whole GPUs, r = 160/s.
    # Residual: largest b with (b-1)/r + l(b) <= L: 6.25(b-1) + 8 + 2b <= 100 -> b = 11, l(11) = 30;
    # d = min(L - l(b), b/r) = min(70, 68.75) = 68.75 ms, occupancy 30/68.75.
    wl = _wl([("a", 100.0, 1000.0)])
    dm = demands(wl)[0]
    assert saturated_batch(dm.profile, dm.budget_ms, 12288.0) == 21
    b, d = residual_for(dm.profile, dm.budget_ms, 160.0, 21)
    assert (b, d) == (11, pytest.approx(68.75))
    plan = plan_workload(wl, "nexus-greedy")
    validate(plan, wl)
    full = [g for g in plan.gpus if g.allocations[0].batch == 21]
    assert len(full) == 2 and all(g.duty_cycle_ms == pytest.approx(50.0) for g in full)
    assert all(g.allocations[0].rate == pytest.approx(420.0) for g in full)
    (res,) = [g for g in plan.gpus if g not in full]
    assert res.allocations[0].batch == 11 and res.duty_cycle_ms == pytest.approx(68.75)
    assert res.occupancy == pytest.approx(30.0 / 68.75)
    # Lower bound: R * min over b <= B of l(b)/b = 1000/s * 50 ms / 21.
    assert plan.lower_bound_gpus == pytest.approx(1000 * 0.050 / 21)


def test_merge_when_feasible():
    # a: residual 160/s at b = 11, d = 68.75 (occupancy 0.436); b: L' = 60, 100/s: B = 11 (T = 366/s, n = 0),
    # (b-1)*10 + 8 + 2b <= 60 -> b = 5, d = min(60 - 18, 50) = 42 (occupancy 0.429). Merged: d = 42,
    # a's batch ceil(160 * 0.042) = 7 (l = 22), b's ceil(4.2) = 5 (l = 18): 40 <= 42 and 42 + 18 <= 60.
    wl = _wl([("a", 100.0, 1000.0), ("b", 60.0, 100.0)])
    plan = plan_workload(wl, "nexus-greedy")
    validate(plan, wl)
    assert plan.num_gpus == 3
    (shared,) = [g for g in plan.gpus if len(g.allocations) == 2]
    assert shared.duty_cycle_ms == pytest.approx(42.0)
    assert sorted(a.batch for a in shared.allocations) == [5, 7]
    assert shared.occupancy == pytest.approx(40.0 / 42.0)


def test_no_merge_when_duty_cycle_overflows():
    # b at 150/s: b = 6 (l = 20), d = min(40, 40) = 40, occupancy 0.5, placed first. Merging a shrinks d to 40:
    # a's batch ceil(6.4) = 7 (l = 22) + 20 = 42 > 40, so a opens its own GPU.
    wl = _wl([("a", 100.0, 1000.0), ("b", 60.0, 150.0)])
    plan = plan_workload(wl, "nexus-greedy")
    validate(plan, wl)
    assert plan.num_gpus == 4
    assert all(len(g.allocations) == 1 for g in plan.gpus)


def test_memory_limit_caps_batch_and_blocks_merges():
    # mem(b) = 1000 + 100(b-1) MB: on a 2,000 MB device B <= 11, and the two residuals (>= 1,400 MB each)
    # cannot share a GPU although their latencies would merge.
    wl = _wl([("a", 100.0, 1000.0), ("b", 60.0, 100.0)], memory_mb=2000.0)
    dm = demands(wl)[0]
    assert saturated_batch(dm.profile, dm.budget_ms, 2000.0) == 11
    plan = plan_workload(wl, "nexus-greedy")
    validate(plan, wl)
    assert all(g.memory_mb <= 2000.0 for g in plan.gpus)
    assert all(len(g.allocations) == 1 for g in plan.gpus)
    assert max(a.batch for g in plan.gpus for a in g.allocations) <= 11


def test_unservable_session_reported_by_name():
    # l(1) = 10 ms: an SLO of 15 ms leaves L' = 15 < 2*l(1) = 20.
    wl = _wl([("ok", 100.0, 50.0), ("tight", 15.0, 50.0)])
    for policy in ("nexus", "nexus-greedy"):
        plan = plan_workload(wl, policy)
        validate(plan, wl)
        (u,) = plan.unserved
        assert u.session == "tight" and "2*l(1)" in u.reason
        assert not _alloc(plan, "tight")


def test_gpus_rate_fraction():
    wl = _wl([("a", 100.0, 1000.0), ("b", 60.0, 150.0)])
    assert plan_workload(wl).num_gpus > 2
    plan = plan_workload(wl, gpus=2)
    validate(plan, wl)
    assert plan.num_gpus <= 2 and 0 < plan.rate_fraction < 1
    # The same fraction for every session, and (to the bisection's resolution) the largest that fits.
    for name, rate in (("a", 1000.0), ("b", 150.0)):
        assert sum(a.rate for _, a in _alloc(plan, name)) == pytest.approx(rate * plan.rate_fraction, rel=1e-6)
    assert plan_workload(wl.scaled(plan.rate_fraction + 2e-3)).num_gpus > 2


# ---------------------------------------------------------------------------------------------- improve
def test_efficient_batch_beats_largest_when_latency_is_superlinear():
    # l(b) = 8 + 2b up to 16, then 4 ms per extra request: b/l(b) peaks at 16 (16/40 ms = 400/s)
    # although B = 18 (l(18) = 48 <= 50, 375/s).
    prof = {"latency_ms": {1: 10.0, 16: 40.0, 32: 104.0}, "memory_mb": {1: 100.0}}
    wl = _wl([("a", 100.0, 1000.0)], profile=prof)
    dm = demands(wl)[0]
    assert saturated_batch(dm.profile, dm.budget_ms, 12288.0) == 18
    assert efficient_batch(dm, 12288.0) == 16
    final, greedy = plan_workload(wl, "nexus"), plan_workload(wl, "nexus-greedy")
    validate(final, wl)
    assert final.num_gpus <= greedy.num_gpus


def test_improve_empties_fragmented_gpus():
    # Three GPUs each running one light residual at the same duty cycle: all fit on one.
    wl = _wl([("a", 200.0, 20.0), ("b", 200.0, 20.0), ("c", 200.0, 20.0)])
    dms = demands(wl)
    gpus = [make_gpu([(dm, dm.session.rate)], 100.0, k) for k, dm in enumerate(dms)]
    out = improve(gpus, dms, 12288.0)
    assert len(out) == 1
    (g,) = out
    assert sorted(a.session for a in g.allocations) == ["a", "b", "c"]
    assert g.occupancy == pytest.approx(3 * 12.0 / 100.0)


def test_improve_splits_a_rate_over_several_gpus():
    # Three GPUs at d = 100 ms, none two of which merge whole: a, b at 240/s run batch 24 (l = 56, slack 44),
    # c at 250/s batch 25 (l = 58, slack 42). a (least occupied) splits: no GPU has room for 240/s, so the
    # largest room first, b's GPU: l(b) <= 44 gives b = 18 (180/s); the other 60/s (b = 6, l = 20) go to c's.
    wl = _wl([("a", 200.0, 240.0), ("b", 200.0, 240.0), ("c", 200.0, 250.0)])
    dms = demands(wl)
    gpus = [make_gpu([(dm, dm.session.rate)], 100.0, k) for k, dm in enumerate(dms)]
    out = improve(gpus, dms, 12288.0)
    assert len(out) == 2
    assert sorted(a.batch for g in out for a in g.allocations if a.session == "a") == [6, 18]
    plan_rates = {}
    for g in out:
        assert g.occupancy <= 1 + 1e-9
        for a in g.allocations:
            plan_rates[a.session] = plan_rates.get(a.session, 0.0) + a.rate
    assert plan_rates == pytest.approx({"a": 240.0, "b": 240.0, "c": 250.0})


def test_improve_leaves_unknown_batching_alone():
    wl = _wl([("a", 200.0, 20.0)])
    dms = demands(wl)
    g = make_gpu([(dms[0], 20.0)], 100.0)
    other = type(g)(g.id, g.duty_cycle_ms, g.occupancy, g.memory_mb, g.allocations, "clipper")
    assert improve([other], dms, 12288.0) == [other]


# ---------------------------------------------------------------------------------------------- properties
@st.composite
def workloads(draw):
    n_inline = draw(st.integers(0, 2))
    models = [{"name": m, "profile": f"titan-x-pascal/{m}"} for m in TITAN_X]
    for k in range(n_inline):
        bmax = draw(st.sampled_from([1, 8, 32, 128]))
        l1 = draw(st.floats(0.5, 30.0))
        slope = draw(st.floats(0.05, 5.0))
        lat = {1: l1, bmax: l1 + slope * (bmax - 1)} if bmax > 1 else {1: l1}
        m1 = draw(st.floats(50.0, 4000.0))
        models.append({"name": f"inline{k}", "profile": {
            "latency_ms": lat, "std_ms": {1: draw(st.floats(0.0, 2.0))},
            "memory_mb": {1: m1, bmax: m1 + draw(st.floats(0.0, 6000.0))}}})
    names = [m["name"] for m in models]
    n = draw(st.integers(1, 200))
    sessions = [{"name": f"s{i}", "model": draw(st.sampled_from(names)),
                 # From below feasibility (a few ms) to generous (1 s).
                 "slo_ms": draw(st.floats(5.0, 1000.0)),
                 "rate": 10 ** draw(st.floats(-1.0, 4.0))} for i in range(n)]
    return load_workload({"models": models, "sessions": sessions})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(workloads())
def test_plans_are_valid_and_improve_never_costs_gpus(wl):
    greedy = plan_workload(wl, "nexus-greedy")
    final = plan_workload(wl, "nexus")
    for plan in (greedy, final):
        try:
            validate(plan, wl)
        except PlanInvalid as exc:  # pragma: no cover - the message is the point
            pytest.fail(f"{plan.policy}: {exc}")
    assert final.num_gpus <= greedy.num_gpus
    # Sessions no plan can serve (L' < 2*l(1)) are reported by name with a reason and get nothing.
    dms = {d.session.session: d for d in demands(wl)}
    unserved = {u.session: u.reason for u in final.unserved}
    for name, dm in dms.items():
        if dm.budget_ms < 2 * float(dm.profile.lat_ms[1]):
            assert "2*l(1)" in unserved.get(name, "")
            assert not _alloc(final, name)
        elif name not in unserved:
            assert sum(a.rate for _, a in _alloc(final, name)) == pytest.approx(dm.session.rate, rel=1e-6)
    assert all(unserved.values())
    assert final.lower_bound_gpus <= final.num_gpus + 1e-9
    if HAS_BASELINES:
        oblivious = plan_workload(wl, "batch-oblivious")
        assert final.num_gpus <= oblivious.num_gpus


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 40))
def test_improve_output_is_valid_on_titan_x_mixes(seed, n):
    import numpy as np

    rng = np.random.default_rng(seed)
    wl = load_workload({"sessions": [
        {"name": f"s{i}", "model": TITAN_X[int(rng.integers(4))], "slo_ms": float(rng.uniform(50, 500)),
         "rate": float(10 ** rng.uniform(0, 3.5))} for i in range(n)]})
    final, greedy = plan_workload(wl, "nexus"), plan_workload(wl, "nexus-greedy")
    validate(final, wl)
    assert final.num_gpus <= greedy.num_gpus
    assert final.num_gpus >= math.ceil(final.lower_bound_gpus - 1e-9)


def test_fill_turns_idle_gpus_into_headroom():
    wl = load_workload({"sessions": [{"model": "vgg16", "slo_ms": 100, "rate": 150},
                                     {"model": "vgg_s", "slo_ms": 50, "rate": 100}]})
    least = plan_workload(wl, gpus=6)
    assert least.rate_fraction == 1.0 and least.num_gpus < 6
    for gpus in (least.num_gpus, least.num_gpus + 1, 6):
        plan = plan_workload(wl, gpus=gpus, fill=2.0)
        validate(plan, wl)  # checked against the workload scaled by plan.rate_fraction
        assert plan.num_gpus <= gpus and 1.0 <= plan.rate_fraction <= 2.0
        assert {u.session for u in plan.unserved} <= {u.session for u in least.unserved}
    assert plan_workload(wl, gpus=6, fill=2.0).rate_fraction == 2.0  # plenty of room: the whole factor
    assert plan_workload(wl, gpus=least.num_gpus + 1, fill=2.0).rate_fraction > 1.0
    assert plan_workload(wl, fill=2.0).rate_fraction == 1.0  # no cluster size: nothing is idle
    for bad in (0.5, float("nan"), "2"):
        with pytest.raises(ValueError, match="fill"):
            plan_workload(wl, gpus=6, fill=bad)


# ---------------------------------------------------------------------------------------------- large workloads
def test_vectorised_split_follows_the_scalar_rules():
    from nexus_lab.bench.planner import random_workload
    from nexus_lab.planner.squishy import split_saturated

    dms = demands(random_workload(4, 200))
    full, residuals, unserved = split_saturated(dms, 12288.0)
    by_index = {r.index: r for r in residuals}
    whole: dict[str, int] = {}
    for g in full:
        whole[g.allocations[0].session] = whole.get(g.allocations[0].session, 0) + 1
    skipped = {u.session for u in unserved}
    for i, dm in enumerate(dms):
        if dm.session.session in skipped:
            continue
        big = saturated_batch(dm.profile, dm.budget_ms, 12288.0)
        tput = big * 1000.0 / float(dm.profile.lat_ms[big])
        n = math.floor(dm.session.rate / tput + 1e-9)
        assert whole.get(dm.session.session, 0) == n
        r = dm.session.rate - n * tput
        if i in by_index:
            assert (by_index[i].batch, by_index[i].duty_ms) == residual_for(dm.profile, dm.budget_ms, r, big)
            assert by_index[i].rate == r


def test_chunks_packed_side_by_side_equal_each_chunk_packed_alone():
    from nexus_lab.bench.planner import random_workload
    from nexus_lab.planner import squishy

    dms = demands(random_workload(7, 1500))
    _, residuals, _ = squishy.split_saturated(dms, 12288.0)
    order = sorted(residuals, key=lambda r: (-r.occupancy, r.index))
    chunks = [order[k::5] for k in range(5)]
    tables = squishy.ProfileTables(dms)
    alone = [g for ch in chunks for g in squishy.pack_residuals(dms, ch, 12288.0)]
    together = squishy._pack_lockstep(dms, chunks, tables, 12288.0)
    assert together == alone


def test_a_large_workload_plans_validly_and_fast():
    import time

    from nexus_lab.bench.plan_scale import raw_workload
    from nexus_lab.planner.squishy import CHUNK_ABOVE

    wl = load_workload(raw_workload(2 * CHUNK_ABOVE))
    t0 = time.process_time()
    plan = plan_workload(wl)
    assert time.process_time() - t0 < 10.0
    validate(plan, wl)
    assert plan.lower_bound_gpus <= plan.num_gpus <= 1.15 * plan.lower_bound_gpus
