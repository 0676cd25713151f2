"""The service in the dashboard, without a browser: ``state()``'s frontends, autoscale and random-weight warnings
turned into rows and one HTML block (pure), and a dashboard built on a state that has them and on one that has
none (the simulator's)."""

from __future__ import annotations

import pytest

from nexus_lab.widgets import Dashboard, SimController
from nexus_lab.widgets.service_view import (
    AutoscaleLine,
    autoscale_line,
    frontend_rows,
    model_warnings,
    service_html,
)

FRONTENDS = [
    {"name": "frontend-0", "url": "http://127.0.0.1:8000", "worker": "tls://127.0.0.1:4001", "pid": 11,
     "alive": True, "restarts": 1, "requests": 1200, "rate": 95.25, "inflight": 3,
     "errors": {"503": 4, "400": 2}, "uptime_s": 30.0, "routes_version": 2},
    {"name": "frontend-1", "url": "http://127.0.0.1:8001", "worker": "tls://127.0.0.1:4002", "pid": 12,
     "alive": False, "requests": 50, "rate": 12.0, "inflight": 1, "errors": {}},
    {"name": "frontend-2", "url": "http://127.0.0.1:8002", "worker": "tls://127.0.0.1:4003", "pid": 13,
     "alive": True},  # started, no stats published yet
]
AUTOSCALE = {"enabled": True, "minimum": 1, "maximum": 4, "needed": 3, "target": 3, "actual": 2,
             "why": "load rising: 3 GPUs needed", "trend_factor": 1.2, "cluster_manager": True, "actions": []}
WARNINGS = {"resnet": "pretrained weights ResNet18_Weights.IMAGENET1K_V1 unavailable (URLError: offline); "
                      "random weights", "b<ad>": "not registered: boom"}


def full_state() -> dict:
    return {"cluster": {"frontends": FRONTENDS, "model_warnings": WARNINGS}, "autoscale": AUTOSCALE}


def test_frontend_rows_keep_order_and_hide_a_dead_frontends_stale_figures():
    rows = frontend_rows(full_state())
    assert [r.name for r in rows] == ["frontend-0", "frontend-1", "frontend-2"]
    a, dead, fresh = rows
    assert a.alive and a.rate == 95.25 and a.requests == 1200 and a.inflight == 3 and a.restarts == 1
    assert a.errors == (("400", 2), ("503", 4)) and a.error_total == 6
    assert not dead.alive and dead.rate is None and dead.inflight is None and dead.requests == 50
    assert fresh.alive and fresh.rate is None and fresh.requests == 0 and fresh.errors == ()
    assert frontend_rows({"cluster": {"frontends": []}}) == [] and frontend_rows({}) == []


def test_autoscale_line_says_target_actual_needed_and_why():
    line = autoscale_line(full_state())
    assert line == AutoscaleLine(True, 2, 3, 3, 1, 4, "load rising: 3 GPUs needed", True)
    text = line.text()
    assert "target 3 workers" in text and "2 running" in text and "3 GPUs needed" in text
    assert "load rising" in text and "bounds [1, 4]" in text and "reported only" not in text
    off = autoscale_line({"autoscale": {"enabled": False, "actual": 3, "target": None}})
    assert off == AutoscaleLine(False, 3) and off.text() == "autoscaling off (3 workers)"
    only = autoscale_line({"autoscale": {**AUTOSCALE, "cluster_manager": False, "needed": None}})
    assert "no cluster manager: reported only" in only.text() and "? GPUs needed" in only.text()
    assert autoscale_line({}) is None  # the simulator has no autoscaling
    draining = {**full_state(), "gpus": [{"worker": "tls://w1", "draining": True}, {"worker": "tls://w2"}]}
    assert autoscale_line(draining).draining == ("tls://w1",)
    assert "draining tls://w1" in autoscale_line(draining).text()


def test_model_warnings_one_per_model():
    assert [m for m, _ in model_warnings(full_state())] == ["b<ad>", "resnet"]
    assert model_warnings({"cluster": {"model_warnings": {}}}) == [] and model_warnings({}) == []


def test_service_html_shows_everything_escaped_and_theme_neutral():
    out = service_html(full_state())
    for text in ("http://127.0.0.1:8000", "tls://127.0.0.1:4002", "95.2", "1200", "400: 2, 503: 4",
                 "restarted 1x", "target 3 workers", "random weights", "not registered: boom"):
        assert text in out, text
    assert "b&lt;ad&gt;" in out and "<ad>" not in out  # names are escaped
    assert out.count("<tr>") == 4 and out.count("nexus-model-warning") == 2
    # inherited text colour and theme variables with fallbacks: no fixed black or white text, no backgrounds
    assert "background" not in out and "#000" not in out and "#fff" not in out
    assert "var(--jp-error-color1" in out and "color:inherit" in out


def test_service_html_when_not_serving_and_when_there_is_no_service():
    idle = service_html({"cluster": {"frontends": [], "model_warnings": {}},
                         "autoscale": {"enabled": False, "actual": 2}})
    assert "endpoint: not serving" in idle and "autoscaling off (2 workers)" in idle and "<table" not in idle
    assert service_html({"cluster": {"workers": 4}}) == ""  # the simulator: nothing to show, no block at all


@pytest.fixture
def sim():
    c = SimController(gpus=2, seed=1)
    c.add_session("vgg16", 100, 300, name="classify")
    c.apply()
    yield c
    c.close()


def test_dashboard_builds_with_and_without_a_service(sim, monkeypatch):
    plain = Dashboard(sim, start=False)
    try:
        assert plain.service.value == "" and plain.service.layout.display == "none"
        assert plain.service in plain.widget.children
    finally:
        plain.close()
    base = sim.state

    def with_service():
        st = base()
        st["cluster"].update(full_state()["cluster"])
        st["autoscale"] = dict(AUTOSCALE)
        return st

    monkeypatch.setattr(sim, "state", with_service)
    d = Dashboard(sim, start=False)
    try:
        assert "frontend-0" in d.service.value and "autoscale: target 3" in d.service.value
        assert d.service.layout.display is None and d.errors == 0
        before = d.service.value
        d.refresh()
        assert d.service.value == before and d.refreshes == 2
        monkeypatch.setattr(sim, "state", base)  # serving stopped, no autoscaling: the block goes away
        d.refresh()
        assert d.service.value == "" and d.service.layout.display == "none"
    finally:
        d.close()


def test_the_controllers_html_card_names_the_endpoint_autoscale_and_warnings():
    from nexus_lab.controller.html import render

    st = {"cluster": {"workers": 2, "gpus_used": 1, "device": "cpu", "epoch_s": 30.0, "version": 1,
                      **full_state()["cluster"]}, "autoscale": AUTOSCALE, "gpus": [], "sessions": [], "queries": []}
    out = render(st)
    assert "http://127.0.0.1:8000, http://127.0.0.1:8002 (1 down)" in out and "target 3, 2 running" in out
    assert "model resnet: pretrained weights" in out and "b&lt;ad&gt;" in out
    st["cluster"]["frontends"], st["autoscale"] = [], {"enabled": False}
    out = render(st)
    assert "not serving" in out and ">off<" in out
