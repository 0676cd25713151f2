"""The ``ingress`` benchmark's paired sweep, without a cluster: both paths get the same arrivals run for run, each
load is judged by the majority of its runs, and a path stops after two misses."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("torch")

from nexus_lab.bench import ingress as ib
from nexus_lab.ingress import loadclient


class FakeCtl:
    def __init__(self) -> None:
        self.rates: list[float] = []
        self.client = None

    def set_rate(self, name: str, rate: float) -> None:
        self.rates.append(rate)

    def apply(self) -> SimpleNamespace:
        return SimpleNamespace(num_gpus=1)


def fake_paths(monkeypatch: pytest.MonkeyPatch, edge: dict[str, float], unlucky: set[tuple[str, int]]
               ) -> dict[str, list[tuple[float, int]]]:
    """Each path meets 99% up to its ``edge`` fraction of raw (raw is 1000), except the runs named in ``unlucky``
    (path, seed); the calls each path got, as (rate, arrival seed)."""
    calls: dict[str, list[tuple[float, int]]] = {"inprocess": [], "http": []}

    def point(path: str, rate: float, seed: int) -> dict[str, float]:
        ok = rate / 1000.0 <= edge[path] + 1e-9 and (path, seed) not in unlucky
        return {"slo_attainment": 0.995 if ok else 0.9, "goodput": rate * (0.995 if ok else 0.9),
                "offered_rate": rate, "p99_ms": 40.0}

    def measure_point(ctl, rates, duration_s, seed, payloads, procs):
        rate = rates[ib.SESSION]
        calls["inprocess"].append((rate, ib._same(seed)))  # the arrivals run_load(seed=seed) offers
        return point("inprocess", rate, ib._same(seed))

    def run_http_load(urls, body, headers, rate, duration_s, *, slo_ms, seed):
        calls["http"].append((rate, seed))
        return point("http", rate, seed)

    monkeypatch.setattr(ib, "measure_point", measure_point)
    monkeypatch.setattr(ib, "cluster_processes", lambda client: [])
    monkeypatch.setattr(loadclient, "run_http_load", run_http_load)
    monkeypatch.setattr(ib.time, "sleep", lambda s: None)
    return calls


def test_both_paths_get_the_same_arrivals_and_a_lone_run_decides_nothing(monkeypatch):
    # in-process holds to 0.5 of raw, HTTP to 0.35
    unlucky = {("inprocess", ib._same(30))}  # the first run at 0.3 of raw misses: its other two runs pass
    calls = fake_paths(monkeypatch, {"inprocess": 0.5, "http": 0.35}, unlucky)
    grid = (0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65)
    out = ib.paired_sweep(FakeCtl(), ["http://x"], 1000.0, grid, 1.0, "convnet", runs=3)
    best_in, sweep_in = out["inprocess"]
    best_http, sweep_http = out["http"]
    assert best_in["fraction_of_raw"] == 0.5 and best_http["fraction_of_raw"] == 0.35
    at = {p["fraction_of_raw"]: p for p in sweep_in}
    assert len(at[0.3]["runs"]) == 3 and ib.meets_slo(at[0.3])  # split 1-1, the third run decided
    assert len(at[0.2]["runs"]) == 2  # two passes settle a load without a third run
    # the runs each path made at a load it shares with the other had the same arrivals, in the same order
    for f in (0.2, 0.3, 0.35):
        mine = [s for r, s in calls["inprocess"] if abs(r - f * 1000) < 1e-6]
        theirs = [s for r, s in calls["http"] if abs(r - f * 1000) < 1e-6]
        assert theirs == mine[:len(theirs)] and len(set(mine)) == len(mine)
    # HTTP stopped after its two misses (0.4, 0.45); in-process after its own (0.55, 0.6)
    assert [p["fraction_of_raw"] for p in sweep_http][-1] == 0.45
    assert [p["fraction_of_raw"] for p in sweep_in][-1] == 0.6


def test_one_run_per_load_when_asked(monkeypatch):
    calls = fake_paths(monkeypatch, {"inprocess": 0.4, "http": 0.4}, set())
    out = ib.paired_sweep(FakeCtl(), ["http://x"], 1000.0, (0.2, 0.4, 0.6, 0.8), 1.0, "convnet", runs=1)
    assert len(calls["inprocess"]) == len(calls["http"]) == 4
    assert out["http"][0]["fraction_of_raw"] == out["inprocess"][0]["fraction_of_raw"] == 0.4
