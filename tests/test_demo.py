"""``make demo``: the bundled workload parses and plans, and the quick demo runs end to end and shuts down cleanly."""

from __future__ import annotations

import pytest

from nexus_lab.demo import main, workload_path
from nexus_lab.planner import plan_workload, validate
from nexus_lab.workload import load_workload


def test_bundled_workload_plans_at_twice_the_load_on_the_demo_cluster():
    wl = load_workload(workload_path())
    assert {q.name for q in wl.queries} == {"traffic"} and len(wl.sessions) >= 3
    for factor in (1.0, 2.0):
        plan = plan_workload(wl.scaled(factor), gpus=8)
        validate(plan, wl.scaled(factor))
        assert plan.rate_fraction == 1.0 and not plan.unserved


@pytest.mark.slow
def test_quick_demo_runs_and_reports(capsys):
    pytest.importorskip("nexus_lab.runtime.device")
    assert main(quick=True) == 0
    out = capsys.readouterr().out
    for text in ("scheduler: tls://127.0.0.1:", "dashboard: http://127.0.0.1:", "phase 1: 1x load",
                 "phase 2: 2x load", "goodput/s", "within SLO", "GPU utilization", "shut down cleanly"):
        assert text in out
