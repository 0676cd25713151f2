"""The rules the simulator and the runtime share have one definition: the same inputs through the backend's
callers and the simulator's give the same outputs (burst growth, prefix-unit forming, the batch floor, arrival
processes), and forming a batch at the backend returns a value (a batch, a hold or nothing)."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from nexus_lab.arrivals import generate
from nexus_lab.planner.plan import Allocation, GpuPlan, Plan, PlannedSession
from nexus_lab.runtime.backend.queues import Req, SessionQueues
from nexus_lab.runtime.backend.slots import Batch, Hold, PlainSlot, PrefixSlot, compile_slots
from nexus_lab.runtime.loadgen import arrival_times
from nexus_lab.sim import ArrivalSpec, simulate
from nexus_lab.sim.gpu import _form_prefix
from nexus_lab.sim.queues import Queue, Session
from nexus_lab.workload import load_workload

# l(b) = b + 1 ms exactly (safety 1, no std), up to batch 8
TINY = {"latency_ms": {1: 2.0, 8: 9.0}, "memory_mb": {1: 100, 8: 200}}


class Sink:
    """Collects how each request ended."""

    def __init__(self) -> None:
        self.ended: dict[object, tuple[str, object]] = {}

    def complete(self, rid: object, status: str, value: object) -> None:
        self.ended[rid] = (status, value)

    def complete_ok(self, rids: list, outputs: list) -> None:
        for rid, out in zip(rids, outputs, strict=True):
            self.complete(rid, "ok", out)


def queues_with(**deadlines: list[tuple[float, float]]) -> tuple[SessionQueues, Sink]:
    """Backend queues holding, per session, requests given as (start, device deadline) in seconds."""
    drops: list[tuple[str, str]] = []
    queues = SessionQueues(lambda s: None, lambda s, reason: drops.append((s, reason)))
    sink = Sink()
    for session, reqs in deadlines.items():
        queues.queues[session] = deque(Req((session, k), session, dl, dl, start, None, sink)
                                       for k, (start, dl) in enumerate(reqs))
    return queues, sink


def tiny_workload(slo_ms: float):
    return load_workload({"safety": 1.0, "models": [{"name": "tiny", "profile": TINY}],
                          "sessions": [{"name": "A", "model": "tiny", "slo_ms": slo_ms, "rate": 1.0}]})


def tiny_slot(batch: int, duty_ms: float) -> PlainSlot:
    prof = tiny_workload(12.0).models["tiny"].profile
    (slot,) = compile_slots([{"session": "A", "model": "tiny", "batch": batch}], None, duty_ms / 1000.0,
                            lambda m, b: float(prof.lat_ms[b]), lambda m, default: prof.max_batch, True)
    return slot


# ---------------------------------------------------------------------------------------------- the forming value
def test_forming_returns_a_batch_a_hold_or_nothing():
    slot = tiny_slot(4, duty_ms=20.0)
    assert slot.form(queues_with(A=[])[0], now=1.0) is None
    # at its planned batch it runs now: formed then, planned for l(4) = 5 ms
    queues, _ = queues_with(A=[(1.0, 1.1)] * 4)
    batch = slot.form(queues, now=1.0)
    assert isinstance(batch, Batch) and [len(p) for p in batch.parts] == [4]
    assert batch.formed_at == 1.0 and batch.planned_s == pytest.approx(0.005)
    assert not queues.queues["A"]
    # below its floor it holds until its oldest request has waited the hold, then runs what it has
    slot.refloor(True, False)
    assert slot.floor > 1
    queues, _ = queues_with(A=[(1.0, 1.1)])
    held = slot.form(queues, now=1.0)
    assert held == Hold(1.0 + slot.hold_s()) and len(queues.queues["A"]) == 1
    late = slot.form(queues, now=1.0 + slot.hold_s())
    assert isinstance(late, Batch) and [len(p) for p in late.parts] == [1]
    # early drop ends the requests that cannot make it, and reports why
    slot.refloor(False, False)
    assert slot.floor == 1 and slot.hold_s() == 0.0
    queues, sink = queues_with(A=[(0.9, 1.0005), (1.0, 1.1)])
    batch = slot.form(queues, now=1.0)
    assert sink.ended == {("A", 0): ("dropped", "deadline")} and [len(p) for p in batch.parts] == [1]


# ---------------------------------------------------------------------------------------------- burst growth
def test_a_burst_grows_alike_in_the_backend_and_the_simulator():
    # SLO 12 ms: L' = 10 ms. Six requests at once against a planned batch of 2 grow into one batch of 6 (l(6) = 7
    # ms) in both; the backend keeps a 1 ms margin for its own overheads, which this batch leaves.
    wl = tiny_workload(12.0)
    plan = Plan(gpus=(GpuPlan(0, 10.0, 0.3, 200.0, (Allocation("A", "tiny", 12.0, 2, 1.0),)),),
                sessions=(PlannedSession("A", "tiny", 12.0, 1.0),), lower_bound_gpus=0.0)
    res = simulate(plan, wl, duration_s=1.0, warmup_s=0.0, trace=True,
                   arrivals={"A": ArrivalSpec("trace", trace=np.zeros(6))})
    sim_batches = [r.batch for r in res.trace]
    queues, _ = queues_with(A=[(0.0, 0.010)] * 6)
    batch = tiny_slot(2, duty_ms=10.0).form(queues, now=0.0)
    assert sim_batches == [len(p) for p in batch.parts] == [6]


# ---------------------------------------------------------------------------------------------- prefix units
def test_prefix_units_form_alike_in_the_backend_and_the_simulator():
    shared = {"latency_ms": {1: 5.0, 64: 100.0}, "memory_mb": {1: 1400, 64: 2800}}
    suffix = {"latency_ms": {1: 0.3, 64: 3.0}, "memory_mb": {1: 100, 64: 200}}
    whole = {"latency_ms": {1: 5.3, 64: 103.0}, "memory_mb": {1: 1500, 64: 3000}}
    wl = load_workload({"safety": 1.0, "models": [{"name": f"m{i}", "profile": whole, "prefix": {
        "group": "base", "profile": shared, "suffix_profile": suffix}} for i in range(3)],
        "sessions": [{"model": f"m{i}", "slo_ms": 100, "rate": 10.0} for i in range(3)]})
    pre, suf = wl.models["m0"].prefix.prefix, wl.models["m0"].prefix.suffix
    batches = [8, 4, 6]
    budgets = [0.030, 0.040, 0.050]
    # member i: arrivals (s) before t; the oldest ones of members 0 and 2 can no longer make it
    arrivals = [np.array([0.000, 0.021, 0.022, 0.023, 0.024, 0.025]), np.array([0.010, 0.015]),
                np.array([0.000, 0.001, 0.002, 0.020, 0.021, 0.022, 0.023, 0.024, 0.025])]
    t = 0.026

    def session(name: str, k: int, prof, budget: float, members: tuple[str, ...] = ()) -> Session:
        return Session(name, k, 100.0, budget, 0.0, prof, prof.mean_ms, prof.std_ms, members)

    alloc = Allocation("p", "base.prefix", 100.0, 16, 1.0)
    head = Queue(0, session("p", 0, pre, 1.0, ("m0", "m1", "m2")), 0, alloc, np.empty(0), True)
    unit = [Queue(k + 1, session(f"m{k}", k + 1, suf, budgets[k]), 0,
                  Allocation(f"m{k}", f"m{k}.suffix", 100.0, batches[k], 1.0), arrivals[k], True) for k in range(3)]
    sim = [(mq.sess.name, drop, take) for mq, drop, take in _form_prefix(head, unit, t, True)]

    slot = PrefixSlot("base.prefix", ["m0", "m1", "m2"], ["m0.suffix", "m1.suffix", "m2.suffix"], batches,
                      pre.lat_ms[:sum(batches) + 1] / 1000.0, [suf.lat_ms[:b + 1] / 1000.0 for b in batches], 0.0, 0.01)
    queues, sink = queues_with(**{f"m{k}": [(a, a + budgets[k]) for a in arrivals[k]] for k in range(3)})
    batch = slot.form(queues, now=t)
    dropped = {f"m{k}": sum(1 for (s, _), (st, _) in sink.ended.items() if s == f"m{k}" and st == "dropped")
               for k in range(3)}
    backend = [(f"m{k}", dropped[f"m{k}"], len(batch.parts[k])) for k in range(3)]
    assert sim == backend
    assert any(drop for _, drop, _ in sim) and all(take for _, _, take in sim)  # the case exercises both


# ---------------------------------------------------------------------------------------------- batch floor
def test_the_batch_floor_is_the_same_in_the_backend_and_the_simulator():
    wl = tiny_workload(60.0)
    slot = tiny_slot(8, duty_ms=20.0)
    slot.refloor(True, False)
    prof = wl.models["tiny"].profile
    q = Queue(0, Session("A", 0, 60.0, 0.058, 0.0, prof, prof.mean_ms, prof.std_ms), 0,
              Allocation("A", "tiny", 60.0, 8, 1.0), np.empty(0), True)
    q.set_floor(0.020)
    assert (q.floor, q.hold) == (slot.floor, pytest.approx(slot.hold_s()))
    assert 1 < slot.floor < 8
    # a lone request waits the hold for company in the simulator as at the backend
    plan = Plan(gpus=(GpuPlan(0, 20.0, 0.5, 200.0, (Allocation("A", "tiny", 60.0, 8, 1.0),)),),
                sessions=(PlannedSession("A", "tiny", 60.0, 1.0),), lower_bound_gpus=0.0)
    one = {"A": ArrivalSpec("trace", trace=[0.1])}
    held = simulate(plan, wl, duration_s=1.0, warmup_s=0.0, trace=True, arrivals=one, batch_floor=True)
    (rec,) = held.trace
    assert rec.start_s == pytest.approx(0.1 + slot.hold_s()) and rec.batch == 1
    eager = simulate(plan, wl, duration_s=1.0, warmup_s=0.0, trace=True, arrivals=one)
    assert eager.trace[0].start_s == pytest.approx(0.1)
    # company within the hold: the floor's worth runs together, at once
    crowd = {"A": ArrivalSpec("trace", trace=[0.1 + 0.0001 * k for k in range(slot.floor)])}
    together = simulate(plan, wl, duration_s=1.0, warmup_s=0.0, trace=True, arrivals=crowd, batch_floor=True)
    assert [r.batch for r in together.trace] == [slot.floor]


# ---------------------------------------------------------------------------------------------- arrivals
@pytest.mark.parametrize("kind", ["poisson", "uniform", "bursty"])
def test_load_generator_and_simulator_draw_the_same_arrivals(kind):
    ours = arrival_times(kind, 300.0, 2.0, cv=2.0, seed=11)
    sims = generate(kind, 300.0, 2.0, np.random.default_rng(11), cv=2.0)
    np.testing.assert_array_equal(ours, sims)
    assert len(ours) > 100


def test_trace_arrivals_are_replayed_alike():
    trace = [0.3, 0.1, 1.5, 0.2]
    assert arrival_times("trace", 0.0, 1.0, trace=trace).tolist() == [0.1, 0.2, 0.3]
    assert generate("trace", 0.0, 1.0, np.random.default_rng(0), trace=trace).tolist() == [0.1, 0.2, 0.3]
