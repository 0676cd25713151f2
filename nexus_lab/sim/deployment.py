"""The long-running deployment in virtual time (Nexus, SOSP 2019, section 7.5): hours of a changing load served by
re-planning every epoch with the controller's own decision rule (``planner.epoch_plan``, the function the epoch
loop calls, not a copy), on an elastic cluster that has exactly the GPUs each plan needs.

What is simulated, exactly:

* the load: sessions over a few models, each with a base rate that follows one diurnal curve (a cosine from
  ``trough`` to 1 over ``day_h`` hours), seeded bursts (a session's rate ramps up to ``burst_gain`` times over
  ``burst_ramp_s``, holds, and falls back) and sessions arriving and leaving (``churn`` of them live for one to a few
  hours from a random epoch on: users add and remove them, and the controller plans one added at once, at
  its declared rate);
* the controller: at the start of every epoch it plans from what it measured over the previous epoch (Poisson
  counts of that epoch's true rates over ``epoch_s``: the moving-average monitor is not modelled) with
  ``epoch_plan(previous, measured, band=...)``: sessions resized get ``band.high`` times their measured rate;
* the serving: each epoch's plan runs, in the discrete-event simulator (``simulate``, measured batch latencies,
  Poisson arrivals), for a sampled window of ``sample_s`` seconds at the rates of that epoch's *end* (the
  highest a rising load reaches before the next re-plan, so the sample is the epoch's worst case for a rise),
  starting from empty queues; a window's SLO violations are its requests dropped or late. A plan switch
  itself (loads, drains) is not simulated: model loads are counted instead;
* GPU-hours: each epoch's plan GPUs times the epoch; the lower bound is ``lower_bound`` of the true rates at the
  epoch's middle, integrated the same way; a fixed cluster is the peak plan's GPUs all the time.

Pure and deterministic under its seed; numpy, the planner and the simulator only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..planner.api import demands
from ..planner.bounds import lower_bound
from ..planner.epoch_plan import epoch_plan
from ..planner.incremental import Band, model_loads
from ..planner.plan import Plan
from ..workload import SessionSpec, Workload, load_workload
from .engine import simulate

__all__ = ["DeploymentResult", "DeploymentSpec", "deployment_load", "run_deployment"]

MODELS = ("vgg16", "vgg_face", "vgg_s", "yolo9000")


@dataclass(frozen=True)
class DeploymentSpec:
    """The experiment: ``hours`` of virtual time in epochs of ``epoch_s``, ``sessions`` sessions whose summed
    rate needs about ``peak_gpus`` GPUs at the diurnal peak (lower bound), and how each epoch is sampled."""

    hours: float = 8.0
    epoch_s: float = 60.0
    sample_s: float = 2.0
    sessions: int = 60
    peak_gpus: float = 90.0
    day_h: float = 8.0
    trough: float = 0.35
    churn: float = 0.3
    bursts_per_hour: float = 3.0
    burst_gain: float = 1.6
    burst_ramp_s: float = 300.0
    burst_hold_s: float = 600.0
    seed: int = 0
    band: Band = field(default_factory=Band)

    def __post_init__(self) -> None:
        checks = (("hours", self.hours, 0.01, 48.0), ("epoch_s", self.epoch_s, 1.0, 3600.0),
                  ("sample_s", self.sample_s, 0.2, 60.0), ("sessions", self.sessions, 1, 2000),
                  ("peak_gpus", self.peak_gpus, 1.0, 1000.0), ("day_h", self.day_h, 0.1, 1000.0),
                  ("trough", self.trough, 0.0, 1.0), ("churn", self.churn, 0.0, 1.0),
                  ("bursts_per_hour", self.bursts_per_hour, 0.0, 100.0), ("burst_gain", self.burst_gain, 1.0, 10.0),
                  ("burst_ramp_s", self.burst_ramp_s, 0.0, 36000.0), ("burst_hold_s", self.burst_hold_s, 0.0, 36000.0))
        for name, val, lo, hi in checks:
            if isinstance(val, bool) or not isinstance(val, (int, float)) or not lo <= val <= hi:
                raise ValueError(f"{name}: must be a number in [{lo}, {hi}], got {val!r}")
        if self.epoch_s > self.hours * 3600:
            raise ValueError(f"epoch_s: must be at most hours * 3600 = {self.hours * 3600:g}, got {self.epoch_s!r}")
        if not isinstance(self.band, Band):
            raise ValueError(f"band: must be a nexus_lab.planner.incremental.Band, got {type(self.band).__name__}")

    @property
    def epochs(self) -> int:
        return max(1, round(self.hours * 3600 / self.epoch_s))


@dataclass(frozen=True)
class DeploymentResult:
    """Per epoch (arrays over epochs) and the totals the ``deployment`` benchmark reports."""

    t_h: np.ndarray  # epoch start, hours
    offered: np.ndarray  # true summed rate at the epoch's middle, req/s
    gpus: np.ndarray  # GPUs of the epoch's plan
    lower_bound: np.ndarray  # lower bound of the true rates at the epoch's middle
    requests: np.ndarray  # requests simulated in the epoch's sampled window
    violations: np.ndarray  # of them, dropped or late
    loads: np.ndarray  # model loads of the epoch's re-plan
    modes: tuple[str, ...]  # how each epoch's plan was made
    spec: DeploymentSpec
    totals: dict[str, Any]


def _base_workload(spec: DeploymentSpec, rng: np.random.Generator) -> Workload:
    models = [{"name": m, "profile": f"titan-x-pascal/{m}"} for m in MODELS]
    sessions = [{"name": f"s{i}", "model": MODELS[int(rng.integers(len(MODELS)))],
                 "slo_ms": float(rng.choice([150.0, 200.0, 300.0, 400.0])),
                 "rate": float(10 ** rng.uniform(1.0, 2.7))} for i in range(spec.sessions)]
    return load_workload({"models": models, "sessions": sessions})


def deployment_load(spec: DeploymentSpec) -> tuple[Workload, np.ndarray, Callable[[float], np.ndarray]]:
    """The sessions (base rates scaled so the peak needs about ``spec.peak_gpus`` GPUs), their lifetimes
    (``[arrive_s, leave_s)`` per session) and ``rates(t_s)``: every session's true rate at time ``t_s``."""
    rng = np.random.default_rng(spec.seed)
    wl = _base_workload(spec, rng)
    n, span = spec.sessions, spec.hours * 3600.0
    life = np.tile([0.0, math.inf], (n, 1))
    for i in np.flatnonzero(rng.random(n) < spec.churn):
        # Users add and remove sessions; the controller plans an added one at once, at its declared rate: here
        # at an epoch's start.
        start = round(rng.uniform(0.0, span * 0.8) / spec.epoch_s) * spec.epoch_s
        life[i] = (start, start + round(rng.uniform(1.0, 3.0) * 3600.0 / spec.epoch_s) * spec.epoch_s)
    count = rng.poisson(spec.bursts_per_hour * spec.hours)
    burst_at = np.sort(rng.uniform(0.0, span, count))
    burst_who = rng.integers(n, size=count)
    base = np.array([s.rate for s in wl.sessions])
    ramp, hold, gain = max(spec.burst_ramp_s, 1e-9), spec.burst_hold_s, spec.burst_gain - 1.0

    def rates(t: float) -> np.ndarray:
        phase = 2 * math.pi * (t / 3600.0) / spec.day_h
        diurnal = spec.trough + (1 - spec.trough) * 0.5 * (1 - math.cos(phase + math.pi * 0.25))
        out = base * diurnal
        for at, who in zip(burst_at.tolist(), burst_who.tolist(), strict=True):
            dt = t - at
            if 0 <= dt < 2 * ramp + hold:
                up = min(dt / ramp, 1.0, max(0.0, (2 * ramp + hold - dt) / ramp))
                out[who] *= 1 + gain * up
        alive = (life[:, 0] <= t) & (t < life[:, 1])
        return np.where(alive, out, 0.0)

    # Scale so the busiest epoch's lower bound is about ``peak_gpus``.
    probe = np.linspace(0.0, span, 97)
    dms = demands(wl)
    per_req = np.array([lower_bound([d], wl.device.memory_mb) / max(d.session.rate, 1e-12) for d in dms])
    peak = max(float(per_req @ rates(t)) for t in probe)
    scale = spec.peak_gpus / peak if peak > 0 else 1.0
    wl = wl.with_sessions([replace(s, rate=s.rate * scale) for s in wl.sessions])
    base *= scale
    return wl, life, rates


def _workload_at(wl: Workload, rates: np.ndarray) -> Workload:
    return wl.with_sessions([SessionSpec(s.model, s.slo_ms, float(r), s.name)
                             for s, r in zip(wl.sessions, rates.tolist(), strict=True) if r > 0])


def run_deployment(spec: DeploymentSpec | None = None,
                   loads: Callable[[Plan | None, Plan], int] | None = None) -> DeploymentResult:
    """Run the deployment of ``spec``; ``loads(old, new)`` counts a re-plan's model loads (default: the planner's
    ``model_loads``, the fewest any mapping needs; the benchmark passes the controller's minimal-move count)."""
    spec = spec or DeploymentSpec()
    wl, _life, rates_at = deployment_load(spec)
    rng = np.random.default_rng(spec.seed + 1)
    count = loads or (lambda old, new: model_loads(old, new.gpus))
    n, e = spec.epochs, spec.epoch_s
    t0 = np.arange(n) * e
    gpus, lb, offered, req, bad, nloads = (np.zeros(n) for _ in range(6))
    modes: list[str] = []
    plan: Plan | None = None
    memory = wl.device.memory_mb
    for k in range(n):
        # What the controller measured over the previous epoch (Poisson counts of its rates at the middle); a
        # session added now comes with its declared rate (its true one); one removed is gone.
        now = rates_at(t0[k])
        past = rates_at(t0[k] - e / 2) if k else now
        measured = np.where(past > 0, np.maximum(rng.poisson(past * e) / e, 0.1), now)
        need = _workload_at(wl, np.where(now > 0, measured, 0.0))
        decision = epoch_plan(plan, need, band=spec.band)
        nloads[k] = count(plan, decision.plan)
        plan = decision.plan
        modes.append(decision.mode)
        gpus[k] = plan.num_gpus
        mid = rates_at(t0[k] + e / 2)
        offered[k] = float(mid.sum())
        lb[k] = lower_bound(demands(_workload_at(wl, mid)), memory)
        end = rates_at(t0[k] + e * (1 - 1e-9))
        served = {s.session for s in plan.sessions}
        actual = {s.name: float(r) for s, r in zip(wl.sessions, end.tolist(), strict=True) if s.name in served}
        if plan.gpus:
            sim = simulate(plan, need, duration_s=spec.sample_s + 0.5, warmup_s=0.5, seed=spec.seed * 100_003 + k,
                           rates=actual)
            total = sum(m.requests for m in sim.sessions.values())
            good = sum(m.within_slo for m in sim.sessions.values())
        else:
            total = good = 0
        req[k], bad[k] = total, total - good
    hours = n * e / 3600.0
    used = float(gpus.sum() * e / 3600.0)
    bound = float(lb.sum() * e / 3600.0)
    peak = int(gpus.max())
    totals = {
        "virtual_hours": hours,
        "epochs": n,
        "gpu_hours": used,
        "lower_bound_gpu_hours": bound,
        "gpu_hours_over_lower_bound": used / bound if bound > 0 else math.inf,
        "peak_gpus": peak,
        "fixed_peak_gpu_hours": peak * hours,
        "gpu_hours_over_fixed_peak": used / (peak * hours) if peak else math.inf,
        "requests_simulated": int(req.sum()),
        "slo_violation_rate": float(bad.sum() / req.sum()) if req.sum() else 0.0,
        "model_loads": int(nloads[1:].sum()),
        "model_loads_per_hour": float(nloads[1:].sum() / hours),
        "modes": {m: modes.count(m) for m in sorted(set(modes))},
    }
    return DeploymentResult(t0 / 3600.0, offered, gpus, lb, req, bad, nloads, tuple(modes), spec, totals)
