"""One SLO bound for the editors and the API (issue 13): an SLO above a minute is refused, naming the field and the
allowed range, by ``fields.slo_ms`` wherever an SLO is set (``WorkloadEditor``, and so ``Controller``)."""

from __future__ import annotations

import pytest

import nexus_lab
from nexus_lab.controller.edits import WorkloadEditor, base_workload
from nexus_lab.fields import MAX_SLO_MS, WorkloadError, slo_ms

RANGE = r"allowed: more than 0 and at most 60000 ms"
SIM = "simulated:titan-x-pascal"


@pytest.mark.parametrize(("value", "said"), [
    (1e12, r"must be <= 60000, got 1e\+12"), (60_000.5, r"must be <= 60000, got 60000\.5"),
    (0, r"must be > 0, got 0"), (-3, r"must be > 0, got -3"), (float("inf"), r"must be a finite number, got inf"),
    (float("nan"), r"must be a finite number, got nan"), ("50", r"must be a finite number, got '50'"),
    (True, r"must be a finite number, got True"), (10**400, r"must be <= 60000, got an integer beyond float range")])
def test_slo_outside_the_range_is_refused_naming_field_and_range(value, said):
    with pytest.raises(WorkloadError, match=rf"^set_slo\.slo_ms: {said}; {RANGE}"):
        slo_ms(value, "set_slo.slo_ms")


def test_slo_inside_the_range_is_kept():
    assert MAX_SLO_MS == 60_000
    assert slo_ms(60_000, "x") == 60_000.0 and slo_ms(0.5, "x") == 0.5 and isinstance(slo_ms(100, "x"), float)


def test_workload_editor_refuses_an_slo_above_a_minute_everywhere():
    wl, pset = base_workload(SIM)
    ed = WorkloadEditor.from_workload(wl, pset)
    with pytest.raises(WorkloadError, match=rf"^add_session\.slo_ms: must be <= 60000.*{RANGE}"):
        ed.add_session("vgg16", 1e12)
    name = ed.add_session("vgg16", 100, rate=10)
    with pytest.raises(WorkloadError, match=rf"^set_slo\.slo_ms: must be <= 60000, got 1e\+12; {RANGE}"):
        ed.set_slo(name, 1e12)
    stages = [{"name": "a", "model": "vgg16"}]
    with pytest.raises(WorkloadError, match=rf"^add_query\('q'\)\.slo_ms: must be <= 60000.*{RANGE}"):
        ed.add_query("q", 61_000, stages, rate=1)
    assert ed.names() == {name} and ed.sessions[name].slo_ms == 100  # nothing refused was stored
    ed.set_slo(name, MAX_SLO_MS)
    ed.add_query("q", MAX_SLO_MS, stages, rate=1)
    assert ed.sessions[name].slo_ms == MAX_SLO_MS and ed.queries["q"].slo_ms == MAX_SLO_MS


def test_controller_api_refuses_an_slo_above_a_minute():
    """``ctl.set_slo(name, 1e12)`` was accepted while the editors refused it."""
    with nexus_lab.start(gpus=1, device=SIM, epoch_s=3600) as ctl:
        name = ctl.add_session("vgg_s", 100, rate=10)
        with pytest.raises(WorkloadError, match=rf"^set_slo\.slo_ms: must be <= 60000, got 1e\+12; {RANGE}"):
            ctl.set_slo(name, 1e12)
        with pytest.raises(WorkloadError, match=r"^add_session\.slo_ms: must be <= 60000"):
            ctl.add_session("vgg_s", 1e12, rate=1)
        assert ctl.editor.sessions[name].slo_ms == 100
        ctl.set_slo(name, 200)
        assert ctl.editor.sessions[name].slo_ms == 200
