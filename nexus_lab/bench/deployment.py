"""Benchmark ``deployment``: the paper's long-running deployment (section 7.5) in virtual time.

Runs ``sim.deployment.run_deployment``: a diurnal load with bursts and sessions arriving and leaving, on up to about
100 GPUs, re-planned every epoch by ``planner.epoch_plan`` (the controller's own rule), each epoch sampled in the
discrete-event simulator. Model loads are counted by the controller's minimal-move assignment
(``controller.placement.assign_gpus``). See the simulator module for exactly what is simulated.
"""

from __future__ import annotations

import time
from typing import Any

from ..planner.incremental import Band
from ..sim.deployment import DeploymentSpec, run_deployment
from .epochs import model_loads

#: The deployment's controller settings: epochs of a minute and a 5% headroom; a session is resized when its
#: rate leaves ``[0.8, 1.0]`` of the capacity it holds.
SPEC = DeploymentSpec(hours=8.0, epoch_s=60.0, sample_s=2.0, sessions=60, peak_gpus=90.0,
                      band=Band(low=0.8, high=1.05))


def _loads(old: Any, new: Any) -> int:
    return 0 if old is None else model_loads(old, new)


def run(quick: bool = False) -> dict[str, Any]:
    """The full day (8 virtual hours), or its first 2 hours with ``quick``."""
    spec = SPEC if not quick else DeploymentSpec(**{**SPEC.__dict__, "hours": 2.0})
    t0 = time.perf_counter()
    result = run_deployment(spec, loads=_loads)
    out = dict(result.totals)
    out.update({
        "wall_s": time.perf_counter() - t0,
        "settings": {"epoch_s": spec.epoch_s, "sample_s": spec.sample_s, "sessions": spec.sessions,
                     "headroom": round(spec.band.high - 1.0, 6), "band_low": spec.band.low, "trough": spec.trough,
                     "churn": spec.churn, "bursts_per_hour": spec.bursts_per_hour, "burst_gain": spec.burst_gain,
                     "seed": spec.seed},
        "targets": {"gpu_hours_over_lower_bound": "<= 1.15", "gpu_hours_over_fixed_peak": "<= 0.75",
                    "slo_violation_rate": "<= 0.003"},
        "note": "each epoch's plan simulated for sample_s seconds at the rates of the epoch's end, from empty "
                "queues; plan switches are not simulated (model loads are counted)",
    })
    return out
