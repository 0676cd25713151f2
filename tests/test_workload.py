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


# ---------------------------------------------------------------------------------------------- one namespace
TRAFFIC = {"name": "traffic", "slo_ms": 400, "rate": 30, "stages": [{"name": "detect", "model": "yolo9000"}]}


@pytest.mark.parametrize("raw, message", [
    ({"sessions": [{"name": "traffic/detect", "model": "vgg16", "slo_ms": 100, "rate": 1}], "queries": [TRAFFIC]},
     r"^queries\[0\]\.stages\[0\]\.name: 'traffic/detect' collides with sessions\[0\]\.name"),
    ({"sessions": [{"name": "q/x/y", "model": "vgg16", "slo_ms": 100, "rate": 1}],
      "queries": [{"name": "q/x", "slo_ms": 400, "rate": 1, "stages": [{"name": "y", "model": "vgg16"}]}]},
     r"^queries\[0\]\.stages\[0\]\.name: 'q/x/y' collides with sessions\[0\]\.name"),
    ({"sessions": [{"name": "traffic", "model": "vgg16", "slo_ms": 100, "rate": 1}], "queries": [TRAFFIC]},
     r"^queries\[0\]\.name: 'traffic' collides with sessions\[0\]\.name"),
    ({"queries": [TRAFFIC, TRAFFIC]}, r"^queries\[1\]\.name: 'traffic' collides with queries\[0\]\.name"),
    ({"queries": [{"name": "q", "slo_ms": 400, "rate": 1, "stages": [{"name": "x/y", "model": "vgg16"}]},
                  {"name": "q/x", "slo_ms": 400, "rate": 1, "stages": [{"name": "y", "model": "vgg16"}]}]},
     r"^queries\[1\]\.stages\[0\]\.name: 'q/x/y' collides with queries\[0\]\.stages\[0\]\.name"),
])
def test_sessions_queries_and_stages_share_one_namespace(raw, message):
    with pytest.raises(WorkloadError, match=message):
        load_workload(raw)


def test_prefix_session_names_are_reserved():
    tiny = {"latency_ms": {1: 2.0, 8: 5.0}}
    prefix = {"group": "g", "profile": tiny, "suffix_profile": tiny}
    raw = {"models": [{"name": "m", "profile": tiny, "prefix": prefix}],
           "sessions": [{"name": "g.prefix:100", "model": "m", "slo_ms": 100, "rate": 1}]}
    with pytest.raises(WorkloadError, match=r"sessions\[0\]\.name: 'g\.prefix:100' starts with 'g\.prefix:'"):
        load_workload(raw)


def test_editor_refuses_colliding_names():
    from nexus_lab.controller.edits import WorkloadEditor

    ed = WorkloadEditor.from_workload(load_workload({"queries": [TRAFFIC]}), "titan-x-pascal")
    with pytest.raises(WorkloadError, match=r"^add_session\.name: 'traffic/detect' collides with "
                                            r"queries\['traffic'\]\.stages\['detect'\]"):
        ed.add_session("vgg16", 100, 1.0, name="traffic/detect")
    ed.add_session("vgg16", 100, 1.0, name="q/x/y")
    with pytest.raises(WorkloadError, match=r"add_query\('q/x'\)\.stages\['y'\]\.name: 'q/x/y' collides with "
                                            r"sessions\['q/x/y'\]"):
        ed.add_query("q/x", 400, [{"name": "y", "model": "vgg16"}])
    with pytest.raises(WorkloadError, match=r"^add_query\.name: 'traffic/detect' collides"):
        ed.add_query("traffic/detect", 400, [{"name": "y", "model": "vgg16"}])
    assert set(ed.names()) == {"traffic", "q/x/y"}


# ---------------------------------------------------------------------------------------------- strict types
@pytest.mark.parametrize("raw, message", [
    ({"sessions": 0}, r"^sessions: must be a list, got 0"),
    ({"sessions": {"a": 1}}, r"^sessions: must be a list"),
    ({"device": {"name": {"a": 1}}}, r"^device\.name: must be a non-empty string, got \{'a': 1\}"),
    ({"device": 0}, r"^device: must be a mapping"),
    ({"sessions": [{"name": 1e308, "model": "vgg16", "slo_ms": 100, "rate": 1}]},
     r"^sessions\[0\]\.name: must be a non-empty string, got 1e\+308"),
    ({"sessions": [{"model": "vgg16", "slo_ms": 10**400, "rate": 1}]},
     r"^sessions\[0\]\.slo_ms: must be a finite number, got an integer beyond float range"),
    ({"safety": 1e-320}, r"^workload\.safety: must be >= 0\.1"),
    ({"safety": 1e6}, r"^workload\.safety: must be <= 100"),
    ({1: 2, "a": 3}, r"^workload: unknown field\(s\)"),
    ({"sessions": [{"model": "vgg16", "slo_ms": 100, "rate": True}]}, r"^sessions\[0\]\.rate: must be a number"),
    ({"queries": [{"name": "q", "slo_ms": 100, "rate": 1, "stages": [
        {"name": "a", "model": "vgg16"}, {"name": "b", "model": "vgg16", "parent": 3}]}]},
     r"^queries\[0\]\.stages\[1\]\.parent: must be a stage name"),
    ({"queries": [{"name": "q", "slo_ms": 100, "rate": 1e300, "stages": [
        {"name": "a", "model": "vgg16"}, {"name": "b", "model": "vgg16", "parent": "a", "gamma": 1e300}]}]},
     r"^queries\[0\]\.stages\[1\]\.gamma: the stage's rate .* beyond float range"),
    ({"models": [{"name": "m", "profile": {"latency_ms": {10**400: 1.0}}}]},
     r"^models\[0\]\.profile\.latency_ms\[<huge integer>\]: batch must be an integer in 1\.\.4096"),
    ({"models": [{"name": "m", "profile": {"latency_ms": {1: 10**400}}}]}, r"^models\[0\]\.profile\.latency_ms\[1\]"),
    ({"models": [{"name": "m", "profile": {"latency_ms": {1: 1.0}, "preprocess_ms": 10**400}}]},
     r"^models\[0\]\.profile\.preprocess_ms: must be finite"),
    ({"models": [{"name": "m", "profile": "/dev/zero"}]}, r"^models\[0\]\.profile: '/dev/zero' is neither"),
])
def test_wrong_types_are_refused_not_coerced(raw, message):
    with pytest.raises(WorkloadError, match=message):
        load_workload(raw)


def test_files_that_are_not_utf8_or_not_parsable(tmp_path):
    bad = tmp_path / "w.yaml"
    bad.write_bytes(b"sessions:\n  - {model: vgg16, slo_ms: 100, rate: \xff}\n")
    with pytest.raises(WorkloadError, match=r"^workload: w\.yaml is not UTF-8 text \(byte 48\)"):
        load_workload(bad)
    deep = tmp_path / "d.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(WorkloadError, match=r"^workload: cannot parse d\.json"):
        load_workload(deep)


def test_yaml_exponent_numbers_are_numbers(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text("sessions:\n  - {model: vgg16, slo_ms: 1e2, rate: 3.5e2}\n")
    s = load_workload(path).sessions[0]
    assert (s.slo_ms, s.rate) == (100.0, 350.0)


def test_too_many_sessions_is_refused():
    from nexus_lab.workload import MAX_UNITS

    raw = {"sessions": [{"model": "vgg16", "slo_ms": 100, "rate": 1}] * (MAX_UNITS + 1)}
    with pytest.raises(WorkloadError, match=r"^sessions: 100001 sessions and 0 queries, more than the 100000"):
        load_workload(raw)
