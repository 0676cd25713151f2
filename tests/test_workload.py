"""The workload contract: parsing, built-in model resolution, and errors that name the field."""

import json

import pytest

from nexus_lab.workload import WorkloadError, load_workload

DESIGN_EXAMPLE = """
device: {name: titan-x-pascal, memory_mb: 12288}
models:
  - name: vgg16
    profile: titan-x-pascal/vgg16
  - name: tiny
    profile: {latency_ms: {1: 2.0, 8: 5.0, 32: 14.0}, memory_mb: {1: 300, 32: 900}}
sessions:
  - {model: vgg16, slo_ms: 100, rate: 350}
queries:
  - name: traffic
    slo_ms: 400
    rate: 30
    stages:
      - {name: detect, model: yolo9000}
      - {name: face, model: vgg_face, parent: detect, gamma: 1.2}
"""


def test_design_example_parses(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text(DESIGN_EXAMPLE)
    wl = load_workload(path)
    assert set(wl.models) == {"vgg16", "tiny", "yolo9000", "vgg_face"}
    assert wl.sessions[0].name == "vgg16:100"
    q = wl.queries[0]
    assert q.stage_rates() == pytest.approx({"detect": 30.0, "face": 36.0})
    assert q.is_tree


def test_json_workload_and_round_trip(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"sessions": [{"model": "vgg_s", "slo_ms": 50, "rate": 10}]}))
    wl = load_workload(path)
    again = load_workload(wl.to_dict())
    assert again.sessions == wl.sessions
    assert again.profile("vgg_s").lat_ms[5] == pytest.approx(wl.profile("vgg_s").lat_ms[5])


def test_dag_rates_sum_over_parents():
    wl = load_workload({"queries": [{"name": "q", "slo_ms": 500, "rate": 10, "stages": [
        {"name": "a", "model": "yolo9000"}, {"name": "b", "model": "vgg16", "parent": "a", "gamma": 2},
        {"name": "c", "model": "vgg_s", "parents": ["a", "b"], "gamma": 0.5}]}]})
    q = wl.queries[0]
    assert not q.is_tree
    assert q.stage_rates() == pytest.approx({"a": 10, "b": 20, "c": 15})


@pytest.mark.parametrize("raw, message", [
    ({"sessions": [{"model": "vgg16", "slo_ms": 0, "rate": 1}]}, r"sessions\[0\]\.slo_ms: must be > 0"),
    ({"sessions": [{"model": "vgg16", "slo_ms": 50, "rate": -1}]}, r"sessions\[0\]\.rate: must be >= 0"),
    ({"sessions": [{"model": "vgg16", "slo_ms": "fast", "rate": 1}]}, r"sessions\[0\]\.slo_ms: must be a number"),
    ({"sessions": [{"model": "resnet", "slo_ms": 50, "rate": 1}]}, r"sessions\[0\]\.model: unknown model"),
    ({"sessions": [{"model": "vgg16", "slo_ms": 50}]}, r"sessions\[0\]\.rate: required"),
    ({"sessions": [{"model": "vgg16", "slo_ms": 50, "rate": 1}, {"model": "vgg16", "slo_ms": 50, "rate": 2}]},
     r"sessions\[1\]\.name: duplicate"),
    ({"device": {"memory_mb": -5}}, r"device\.memory_mb: must be > 0"),
    ({"queries": [{"name": "q", "slo_ms": 100, "rate": 1, "stages": [
        {"name": "a", "model": "vgg16", "parent": "b"}, {"name": "b", "model": "vgg16", "parent": "a"}]}]},
     r"cycle"),
    ({"queries": [{"name": "q", "slo_ms": 100, "rate": 1, "stages": [
        {"name": "a", "model": "vgg16", "parent": "zz"}]}]}, r"queries\[0\]\.stages\[0\]\.parent: unknown stage"),
    ({"models": [{"name": "m", "profile": {"latency_ms": {1: -1}}}]}, r"models\[0\]\.profile\.latency_ms"),
    ({"sesions": []}, r"workload: unknown field"),
])
def test_errors_name_the_field(raw, message):
    with pytest.raises(WorkloadError, match=message):
        load_workload(raw)
