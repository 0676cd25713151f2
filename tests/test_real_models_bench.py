"""The ``real-models`` benchmark's own logic, without a cluster: the sweep finds the edge by bisection, the plan
ceiling is the planner's rule on the measured profile, and the overlap measurement reports each part it times."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from nexus_lab.bench import real_models as rm
from nexus_lab.bench.judging import majority_point, meets_slo

PROFILE = {"latency_ms": {1: 50.0, 2: 100.0, 4: 200.0, 8: 400.0}, "std_ms": {1: 0.0, 2: 0.0, 4: 0.0, 8: 0.0},
           "memory_mb": {1: 45.0, 8: 45.0}, "preprocess_ms": {"mean": 2.0, "std": 0.0},
           "postprocess_ms": {"mean": 0.1, "std": 0.0}}


class FakeCtl:
    def __init__(self) -> None:
        self.sessions: set[str] = set()
        self.client = None

    class _Editor:
        def __init__(self, ctl: FakeCtl) -> None:
            self.ctl = ctl

        def names(self) -> set[str]:
            return self.ctl.sessions

    @property
    def editor(self) -> FakeCtl._Editor:
        return FakeCtl._Editor(self)

    def add_session(self, model, slo_ms, rate, name):
        self.sessions.add(name)

    def remove(self, name):
        self.sessions.discard(name)

    def apply(self):
        return None


def test_the_sweep_steps_until_two_misses_then_bisects_below_the_first_miss(monkeypatch):
    edge = 0.63
    seen: list[float] = []

    def point(ctl, sessions, raw, f, duration_s, payload, procs, run=0):
        seen.append(f)
        if f >= 0.9:
            return {"fraction_of_raw": f, "error": "needs more GPUs"}
        return {"fraction_of_raw": f, "goodput": f * raw, "slo_attainment": 1.0 if f <= edge else 0.95}

    monkeypatch.setattr(rm, "_point", point)
    monkeypatch.setattr(rm, "cluster_processes", lambda client: [])
    ctl = FakeCtl()
    best, points = rm.sweep(ctl, {"s": "m"}, 10.0, (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), 1.0, b"", bisect=3)
    assert seen == [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.65, 0.625, 0.6375]
    assert best["fraction_of_raw"] == 0.625 and len(points) == len(seen)
    assert ctl.sessions == set()  # the sweep's sessions are removed again
    seen.clear()  # a plan that no longer fits ends the steps too, and bounds the bisection
    raws = iter([10.0, 12.0, 8.0, 10.0])  # raw probed before each point and after the last
    best, points = rm.sweep(ctl, {"s": "m"}, 10.0, (0.5, 0.9), 1.0, b"", bisect=1, raw_probe=lambda: next(raws))
    assert seen == [0.5, 0.9, 0.7] and best["fraction_of_raw"] == 0.5
    assert [p["raw_around"] for p in points] == [11.0, 10.0, 9.0]
    assert best["goodput_over_raw_around"] == pytest.approx(5.0 / 11.0)


def test_a_point_is_judged_by_the_majority_of_its_runs():
    def runs_of(*attainments):
        it = iter(attainments)
        calls = []

        def once():
            a = next(it)
            calls.append(a)
            return {"slo_attainment": a, "goodput": 100.0 * a, "p99_ms": 1.0, "dropped": {}}

        return once, calls

    once, calls = runs_of(1.0, 0.995)  # two passes settle it: the third run is not made
    p = majority_point(once, 3)
    assert calls == [1.0, 0.995] and len(p["runs"]) == 2
    assert p["slo_attainment"] == pytest.approx(0.9975) and p["goodput"] == pytest.approx(99.75)  # medians
    once, calls = runs_of(0.97, 1.0, 0.98)  # one stall and one pass: the third run decides, against
    p = majority_point(once, 3)
    assert calls == [0.97, 1.0, 0.98] and p["slo_attainment"] == 0.98 and not meets_slo(p)
    assert p["goodput"] == pytest.approx(98.0)
    once, calls = runs_of(1.0, 0.5, 0.999)  # a lucky or unlucky run alone sets nothing
    assert meets_slo(majority_point(once, 3))
    once, calls = runs_of(0.9)
    assert majority_point(once, 1) == {"slo_attainment": 0.9, "goodput": 90.0, "p99_ms": 1.0, "dropped": {}}
    with pytest.raises(ValueError, match="runs: must be an odd number"):
        majority_point(once, 2)
    assert majority_point(lambda: {"fraction_of_raw": 0.9, "error": "needs more GPUs"}, 3)["error"]


def test_plan_ceiling_is_the_planners_rule_on_the_profile():
    # budget L' = 1000 - (2 + 0.1) * 1.15 - net; l(b) = 1.15 * 50 b: 2 l(B) <= L' gives B = 8, all batches alike
    one = rm.plan_ceiling(PROFILE, 1)
    assert one == pytest.approx(1000.0 / (50.0 * 1.15), rel=1e-6)
    assert rm.plan_ceiling(PROFILE, 2) == pytest.approx(2 * one)
    noisy = {**PROFILE, "std_ms": {b: 0.2 * v for b, v in PROFILE["latency_ms"].items()}}
    assert rm.plan_ceiling(noisy, 1) == pytest.approx(one / 1.2, rel=1e-6)  # the std is part of the margin


def test_overlap_reports_each_part_and_the_speedup_they_predict():
    out = rm.overlap(2, 4, threads=2, reps=2)
    assert len(out["inline_samples"]) == len(out["overlapped_samples"]) == 2
    assert out["pre_ms_per_batch"] > 0 and out["device_ms_per_batch"] > 0 and out["post_ms_per_batch"] > 0
    cpu = out["pre_ms_per_batch"] + out["post_ms_per_batch"]
    total = cpu + out["device_ms_per_batch"]
    assert out["expected_speedup_one_core"] == pytest.approx(total / max(cpu, out["device_ms_per_batch"]))
    assert out["expected_speedup"] >= out["expected_speedup_one_core"] >= 1.0
    assert out["speedup"] > 0
