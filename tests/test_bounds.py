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
