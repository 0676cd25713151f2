"""An independent check of any plan against its workload: every constraint of docs/architecture.md section 2.

Shares no code path with the packers beyond the profile tables, so a packer bug cannot hide behind it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from ..profiles import ModelProfile
from .plan import Plan

_TOL = 1e-6


class PlanInvalid(AssertionError):
    """A plan breaks a constraint; ``errors`` lists every violation found."""

    def __init__(self, errors: list[str]):
        super().__init__("; ".join(errors[:10]) + (f" (+{len(errors) - 10} more)" if len(errors) > 10 else ""))
        self.errors = errors


def plan_violations(plan: Plan, profiles: Mapping[str, ModelProfile], budgets: Mapping[str, float],
                    rates: Mapping[str, float], memory_mb: float) -> list[str]:
    """Every violated constraint, named.

    ``profiles``/``budgets``/``rates`` are keyed by planned session name: the profile each runs with, its device
    budget L' in ms and the rate it must be given (already scaled by the plan's rate fraction).
    """
    errors: list[str] = []
    served: dict[str, float] = {}
    for g in plan.gpus:
        d = g.duty_cycle_ms
        where = f"gpu {g.id}"
        if not (d > 0 and math.isfinite(d)):
            errors.append(f"{where}: duty cycle {d} must be > 0")
            continue
        load = mem = 0.0
        for a in g.allocations:
            p = profiles.get(a.session)
            if p is None:
                errors.append(f"{where}/{a.session}: session not in the workload")
                continue
            if not 1 <= a.batch <= p.max_batch:
                errors.append(f"{where}/{a.session}: batch {a.batch} outside 1..{p.max_batch}")
                continue
            lat = float(p.lat_ms[a.batch])
            load += lat
            mem += float(p.mem_mb[a.batch])
            if a.rate < -_TOL:
                errors.append(f"{where}/{a.session}: negative rate {a.rate}")
            budget = budgets[a.session]
            served[a.session] = served.get(a.session, 0.0) + a.rate
            if g.batching != "duty-cycle":
                # A dedicated-GPU baseline batches on its own: its largest batch must fit the budget after its
                # batch timeout, and back to back at that batch it must keep up with its rate.
                wait = a.batch_timeout_ms or 0.0
                if wait + lat > budget * (1 + _TOL) + _TOL:
                    errors.append(f"{where}/{a.session}: timeout + l(b) = {wait + lat:.3f} ms exceeds budget "
                                  f"L' = {budget:.3f} ms")
                if a.rate * lat / 1000.0 > a.batch * (1 + _TOL) + _TOL:
                    errors.append(f"{where}/{a.session}: rate {a.rate:.3f}/s exceeds batch {a.batch} every "
                                  f"l(b) = {lat:.3f} ms")
                continue
            # A batch of b collected per duty cycle d serves at most b/d requests per second.
            if a.rate * d / 1000.0 > a.batch * (1 + _TOL) + _TOL:
                errors.append(f"{where}/{a.session}: rate {a.rate:.3f}/s needs batch {a.rate * d / 1000:.2f} > "
                              f"{a.batch} per duty cycle {d:.3f} ms")
            # Worst case: wait one duty cycle for the batch, then run it.
            if d + lat > budget * (1 + _TOL) + _TOL:
                errors.append(f"{where}/{a.session}: d + l(b) = {d + lat:.3f} ms exceeds budget L' = {budget:.3f} ms")
        if g.batching == "duty-cycle" and load > d * (1 + _TOL) + _TOL:
            errors.append(f"{where}: sum of batch latencies {load:.3f} ms exceeds duty cycle {d:.3f} ms")
        if mem > memory_mb * (1 + _TOL):
            errors.append(f"{where}: memory {mem:.0f} MB exceeds the device's {memory_mb:.0f} MB")
        if abs(g.occupancy - load / d) > 1e-6 * max(1.0, g.occupancy):
            errors.append(f"{where}: reported occupancy {g.occupancy:.6f} != {load / d:.6f}")
    unserved = {u.session for u in plan.unserved}
    for name, rate in rates.items():
        if name in unserved:
            if served.get(name, 0.0) > 0:
                errors.append(f"{name}: reported unserved but given {served[name]:.3f}/s")
            continue
        got = served.get(name, 0.0)
        if got < rate * (1 - 1e-6) - 1e-6:
            errors.append(f"{name}: planned {got:.3f}/s of its {rate:.3f}/s")
    return errors
