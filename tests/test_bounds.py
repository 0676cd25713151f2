"""Planning is bounded (issue 12, item 1): a workload that needs more than ``max_gpus`` GPUs is refused before
packing, naming the field; with a fixed cluster an overload is scaled down without packing absurd rates."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from nexus_lab.cli import main
from nexus_lab.controller.preview import preview_edits, preview_query
from nexus_lab.planner import GpuLimitError, check_bound, demands, gpus_needed, lower_bound, plan_workload, validate
from nexus_lab.planner.bounds import format_gpus, per_request_ms
from nexus_lab.workload import load_workload

HUGE = {"sessions": [{"model": "vgg16", "slo_ms": 100, "rate": 1e9}]}


def test_huge_rate_is_refused_naming_the_field():
    wl = load_workload(HUGE)
    with pytest.raises(GpuLimitError, match=r"^sessions\[0\]\.rate: needs ~4\.0e6 GPUs, more than max_gpus=100000$"):
        plan_workload(wl)
    with pytest.raises(GpuLimitError, match=r"more than max_gpus=1000\b"):
        plan_workload(load_workload({"sessions": [{"model": "vgg16", "slo_ms": 100, "rate": 1e7}]}), max_gpus=1000)


def test_the_field_is_the_largest_contributor():
    wl = load_workload({"sessions": [{"model": "vgg_s", "slo_ms": 100, "rate": 10},
                                     {"model": "vgg16", "slo_ms": 100, "rate": 5e4}],
                        "queries": [{"name": "q", "slo_ms": 400, "rate": 10, "stages": [
                            {"name": "a", "model": "vgg16"}, {"name": "b", "model": "vgg16", "parent": "a",
                                                              "gamma": 1e4}]}]})
    need, field = gpus_needed(wl)
    assert field == "queries[0].rate"  # 1e5 req/s of vgg16 below the query, through its fan-out
    with pytest.raises(GpuLimitError, match=r"^queries\[0\]\.rate: needs ~\d+ GPUs, more than max_gpus=100$"):
        check_bound(wl, 100)
    assert check_bound(wl, 10**6) == pytest.approx(need)
    assert gpus_needed(wl, by_name=True)[1] == "queries['q'].rate"


def test_the_estimate_is_the_plans_lower_bound():
    rng = np.random.default_rng(3)
    wl = load_workload({"sessions": [{"model": ("vgg16", "vgg_s", "yolo9000")[i % 3],
                                      "slo_ms": float(rng.uniform(40, 500)), "rate": float(rng.uniform(1, 900)),
                                      "name": f"s{i}"} for i in range(60)]})
    plan = plan_workload(wl)
    assert gpus_needed(wl)[0] == plan.lower_bound_gpus  # the same sum, bit for bit
    assert plan.num_gpus >= plan.lower_bound_gpus
    dm = demands(wl)[0]
    assert per_request_ms(dm.profile, np.array([dm.budget_ms]), 12288.0)[0] * dm.session.rate / 1000 == \
        lower_bound([dm], 12288.0)


def test_refusal_is_fast_and_small():
    code = ("import json, time; from nexus_lab.planner import plan_workload, GpuLimitError; "
            "from nexus_lab.workload import load_workload; from nexus_lab.bench.plan_scale import peak_rss_mb; "
            f"t = time.perf_counter(); wl = load_workload({HUGE!r})\n"
            "try:\n    plan_workload(wl)\nexcept GpuLimitError as e:\n    msg = str(e)\n"
            "print(json.dumps([time.perf_counter() - t, peak_rss_mb(), msg]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    took, rss_mb, msg = json.loads(out.stdout)
    assert took < 1.0 and rss_mb < 400
    assert msg.startswith("sessions[0].rate: needs ~")


def test_fixed_cluster_scales_an_absurd_rate_down_quickly():
    wl = load_workload(HUGE)
    t0 = time.perf_counter()
    plan = plan_workload(wl, gpus=4)
    assert time.perf_counter() - t0 < 2.0
    assert plan.num_gpus <= 4 and 0 < plan.rate_fraction < 1e-5
    validate(plan, wl)
    # As many GPUs as the scaled rate allows: 4 GPUs hold about 4 / 4.0e6 of the rate.
    assert plan.rate_fraction * gpus_needed(wl)[0] == pytest.approx(4, rel=0.1)
    with pytest.raises(ValueError, match=r"gpus: must be <= max_gpus=10"):
        plan_workload(wl, gpus=11, max_gpus=10)
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(ValueError, match=r"max_gpus: must be an integer >= 1"):
            plan_workload(wl, max_gpus=bad)


def test_fill_headroom_is_bounded_by_the_cluster():
    wl = load_workload({"sessions": [{"model": "vgg16", "slo_ms": 100, "rate": 350}]})
    plan = plan_workload(wl, gpus=3, fill=100.0)
    assert plan.num_gpus <= 3 and 1.0 < plan.rate_fraction < 3.0


def test_format():
    assert format_gpus(39959.2) == "39959"
    assert format_gpus(4.06e6) == "4.1e6"
    assert format_gpus(2.5e12) == "2.5e12"


def test_cli_refuses_with_exit_2(tmp_path, capsys):
    path = tmp_path / "w.json"
    path.write_text(json.dumps(HUGE))
    for cmd in ("plan", "simulate"):
        assert main([cmd, str(path)]) == 2
        err = capsys.readouterr().err
        assert "sessions[0].rate: needs ~4.0e6 GPUs, more than max_gpus=100000" in err
    ok = tmp_path / "ok.yaml"
    ok.write_text("sessions:\n  - {model: vgg16, slo_ms: 100, rate: 1e4}\n")  # YAML 1.2 numbers: 1e4 is 10000
    assert main(["plan", str(ok), "--max-gpus", "20"]) == 2
    assert "sessions[0].rate: needs ~40 GPUs, more than max_gpus=20" in capsys.readouterr().err
    assert main(["plan", str(ok), "--max-gpus", "100", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_gpus"] >= 40
    proc = subprocess.run([sys.executable, "-m", "nexus_lab.cli", "plan", str(ok), "--max-gpus", "0"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--max-gpus" in proc.stderr


def test_editor_previews_refuse_with_the_same_message():
    wl = load_workload({"sessions": [{"name": "cam", "model": "vgg16", "slo_ms": 100, "rate": 350}]})
    pv = preview_edits(wl, {"cam": {"rate": 1e9}})
    assert not pv.ok and pv.after_gpus is None
    edited = load_workload({"sessions": [{"name": "cam", "model": "vgg16", "slo_ms": 100, "rate": 1e9}]})
    with pytest.raises(GpuLimitError) as exc:
        check_bound(edited, by_name=True)
    assert pv.error == str(exc.value) == "sessions['cam'].rate: needs ~4.0e6 GPUs, more than max_gpus=100000"
    small = preview_edits(wl, {"cam": {"rate": 3000}}, max_gpus=8, what="cluster size")
    assert small.error.startswith("sessions['cam'].rate: needs ~") and "more than cluster size=8" in small.error
    assert preview_edits(wl, {"cam": {"rate": 400}}).ok
    q = preview_query(wl, "q", 400, [{"name": "d", "model": "vgg16"}], rate=1e12, profile_set="titan-x-pascal")
    assert q.error.startswith("queries['q'].rate: needs ~")


def test_baseline_policies_refuse_workloads_too_large_for_their_quadratic_packing():
    import time

    from nexus_lab.bench.sim import mixed_workload
    from nexus_lab.planner import plan_workload
    from nexus_lab.planner.bounds import BASELINE_MAX

    wl = mixed_workload(BASELINE_MAX * 2, seed=1)  # some SLOs no plan serves are left out
    assert len(wl.sessions) > BASELINE_MAX
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"policy: 'batch-oblivious' plans at most 20000 sessions"):
        plan_workload(wl, "batch-oblivious")
    assert time.perf_counter() - t0 < 1.0  # refused before any packing


def _brute_per_request(profile, budget: float, rate: float) -> float:
    """``min over feasible b of l(b) / min(b, R*(L' - l(b)))``, batch by batch."""
    best = float("inf")
    for b in range(1, profile.max_batch + 1):
        lat = float(profile.lat_ms[b])
        if 2 * lat > budget:
            break
        best = min(best, lat / min(b, rate * (budget - lat) / 1000.0))
    return best


def test_the_rate_aware_bound_is_the_batch_by_batch_minimum():
    from nexus_lab.bench.planner import random_workload

    wl = random_workload(5, 60)
    dms = [d for d in demands(wl) if d.budget_ms >= 2 * float(d.profile.lat_ms[1])]
    assert len(dms) > 40
    for d in dms:
        got = per_request_ms(d.profile, np.array([d.budget_ms]), np.inf, np.array([d.session.rate]))[0]
        assert got == pytest.approx(_brute_per_request(d.profile, d.budget_ms, d.session.rate), rel=1e-9)
        # never below the rate-blind bound; equal to it for a rate that fills the most efficient batch
        assert got >= per_request_ms(d.profile, np.array([d.budget_ms]), np.inf)[0] * (1 - 1e-12)
        fast = per_request_ms(d.profile, np.array([d.budget_ms]), np.inf, np.array([1e9]))[0]
        assert fast == pytest.approx(per_request_ms(d.profile, np.array([d.budget_ms]), np.inf)[0])


@pytest.mark.parametrize("policy", ["nexus", "nexus-greedy"])
def test_every_piece_of_every_plan_costs_at_least_the_bound(policy):
    """The validity argument, checked on real plans: each allocation's occupancy ``l(b)/d`` is at least its rate
    times the per-request bound of its session, so no plan of these sessions can beat the sum."""
    from nexus_lab.bench.planner import random_workload

    for seed in range(6):
        wl = random_workload(100 + seed, 40)
        plan = plan_workload(wl, policy)
        validate(plan, wl)
        by_name = {d.session.session: d for d in demands(wl)}
        for g in plan.gpus:
            for a in g.allocations:
                d = by_name[a.session]
                floor = a.rate * per_request_ms(d.profile, np.array([d.budget_ms]), wl.device.memory_mb,
                                                np.array([d.session.rate]))[0] / 1000.0
                assert float(d.profile.lat_ms[a.batch]) / g.duty_cycle_ms >= floor * (1 - 1e-9), (seed, a)
        assert plan.num_gpus >= plan.lower_bound_gpus


def test_a_slow_session_is_bounded_by_its_own_plan():
    """yolo9000 at 5 req/s and 300 ms cannot fill its most efficient batch: the bound is its plan's occupancy,
    where the rate-blind ``l(B)/B`` gives 10% less."""
    wl = load_workload({"sessions": [{"model": "yolo9000", "slo_ms": 300, "rate": 5}]})
    plan = plan_workload(wl)
    d = demands(wl)[0]
    blind = 5 * per_request_ms(d.profile, np.array([d.budget_ms]), np.inf)[0] / 1000.0
    assert plan.lower_bound_gpus == pytest.approx(plan.gpus[0].occupancy, rel=1e-9)
    assert blind < 0.92 * plan.lower_bound_gpus
