"""The baseline policies as packers: Nexus's batch-oblivious ablation and three dedicated-GPU serving systems.

Pure and deterministic like the rest of the planner: profiles and budgets in, ``GpuPlan`` lists out; no simulator,
no Dask. Each baseline is written to be as strong as its real counterpart, so comparisons against it mean something.

* ``batch-oblivious`` (the Nexus paper's own ablation): whole GPUs at the saturated batch as Nexus does, but the
  residual loads are costed at their *saturated* per-request cost ``r * l(B) / B`` and bin-packed by that
  occupancy (first-fit decreasing), ignoring that sharing a GPU shrinks every batch (and small batches cost more
  per request). Each bin then runs the duty-cycle batching at the duty cycle the merge implies (the smallest of
  its members' own residual duty cycles, as Nexus merges) with batches ``ceil(r_i * d)``; when its real load
  ``sum_i l_i(b_i)`` exceeds ``d`` the bin is split (first fit, real loads) until every GPU fits, so the plans
  are valid and the extra GPUs are what ignoring batch shrinkage costs.
* ``clipper``, ``tf-serving``, ``triton``: every session on its own GPUs (no sharing), each GPU running the
  system's batching (``GpuPlan.batching``). Without a cluster size each session gets ``ceil(R * l(B) / B)``
  GPUs, ``B`` its largest batch with ``2*l(B) <= L'`` (under load a request waits for the running batch, then
  runs in the next, so B / l(B) is the highest throughput any of these systems sustains within the SLO); with
  ``gpus=N`` the N GPUs are divided among sessions in proportion to their load (at least one each, D'Hondt: the
  next GPU goes to the session with the highest load per GPU) and a session may be given less than its rate
  needs: the simulator then shows the drops and misses. Each GPU takes ``rate / n`` of its session.

  Run-time batch limits are those of the real systems, capped only by ``l(b) <= L'`` (``slo_batch``), not by
  ``2*l(b) <= L'``: Clipper's AIMD grows its batch until a batch's latency exceeds the objective, and an operator
  sets TF-Serving's and Triton's max batch and timeout so that ``timeout + l(b) <= L'``. In simulation the larger
  cap is the stronger choice: ``nexus-lab bench paper --json`` prints Clipper's max sustained rate with it
  (``max_rate.clipper``, 723 req/s on the mixed workload, 16 GPUs) and with the ``2*l(b)`` cap
  (``clipper_cap_half_budget``, 565 req/s). Such GPUs have ``l(b) > L'/2`` and
  therefore do not pass ``validate``'s duty-cycle checks ``l(b) <= d`` and ``d + l(b) <= L'``, which are
  Nexus's; their reported ``duty_cycle_ms`` is the longest a batch waits to start: ``max(timeout, l(b))``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .plan import Allocation, GpuPlan, Unserved
from .squishy import Demand, make_gpu, renumber, saturated_batch, split_saturated, unservable_reason

__all__ = [
    "BASELINES",
    "BatchConfig",
    "batch_oblivious_pack",
    "choose_config",
    "clipper_pack",
    "config_grid",
    "dedicated_gpu_counts",
    "slo_batch",
    "tf_serving_pack",
    "triton_pack",
]

#: Batch timeouts / max queue delays (ms) tried for TF-Serving and Triton, as an operator would sweep them.
TIMEOUT_GRID_MS = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0)

#: Utilization above which a configuration is treated as overloaded when choosing among the grid.
_RHO_MAX = 0.95


@dataclass(frozen=True)
class BatchConfig:
    """One point of a baseline's configuration grid: max batch and batch timeout (``max_queue_delay`` for Triton).

    ``utilization`` is the predicted busy fraction at the rate it was chosen for and ``latency_ms`` the predicted
    request latency (batch fill + queueing + run), both from the analytic model of ``choose_config``.
    """

    batch: int
    timeout_ms: float
    utilization: float
    latency_ms: float


# ------------------------------------------------------------------------------------------ batch-oblivious
def batch_oblivious_pack(demands: Sequence[Demand], memory_mb: float, gpus: int | None = None
                         ) -> tuple[list[GpuPlan], list[Unserved]]:
    """Nexus's batch-oblivious ablation (see the module docstring). ``gpus`` is ignored: ``plan_workload``
    scales every rate to fit a fixed cluster, as it does for Nexus."""
    full, residuals, unserved = split_saturated(demands, memory_mb)
    # Oblivious cost of a residual: its rate at the saturated batch's per-request cost, r * l(B) / B.
    items = []
    for res in residuals:
        dm = demands[res.index]
        big = saturated_batch(dm.profile, dm.budget_ms, memory_mb)
        occ = res.rate * float(dm.profile.lat_ms[big]) / big / 1000.0
        # Memory is not mis-estimated: merged, a member's batch only shrinks from the one it runs alone.
        items.append((occ, float(dm.profile.mem_mb[res.batch]), res))
    items.sort(key=lambda it: (-it[0], it[2].index))
    bins: list[tuple[float, float, list]] = []  # (occupancy, memory, residuals)
    for occ, mem, res in items:
        for k, (b_occ, b_mem, members) in enumerate(bins):
            if b_occ + occ <= 1.0 + 1e-9 and b_mem + mem <= memory_mb * (1 + 1e-12):
                members.append(res)
                bins[k] = (b_occ + occ, b_mem + mem, members)
                break
        else:
            bins.append((occ, mem, [res]))
    out = list(full)
    for _, _, members in bins:
        out.extend(_deploy_oblivious(demands, members, memory_mb))
    return renumber(out), unserved


def _deploy_oblivious(demands: Sequence[Demand], members: list, memory_mb: float) -> list[GpuPlan]:
    """Run one oblivious bin: split it, first fit in the oblivious order, until every GPU really fits.

    The merged duty cycle is the smallest member's own, so every deadline ``d + l(ceil(r_i d)) <= L'_i`` holds,
    but the batches shrink to ``ceil(r_i * d)`` and their summed latency can exceed ``d``: the bin the oblivious
    estimate promised does not fit, and deploying it needs more GPUs. Those extra GPUs are the ablation's cost.
    """
    gpus: list[list] = []
    for res in members:
        for group in gpus:
            cand = [*group, res]
            g = make_gpu([(demands[r.index], r.rate) for r in cand], min(r.duty_ms for r in cand))
            if g.occupancy <= 1.0 + 1e-9 and g.memory_mb <= memory_mb * (1 + 1e-12):
                group.append(res)
                break
        else:
            gpus.append([res])
    return [make_gpu([(demands[r.index], r.rate) for r in group], min(r.duty_ms for r in group))
            for group in gpus]


# ------------------------------------------------------------------------------------------ dedicated GPUs
def dedicated_gpu_counts(loads: Sequence[float], gpus: int) -> list[int]:
    """Divide ``gpus`` among sessions in proportion to ``loads`` (GPU-equivalents), at least one each.

    D'Hondt / highest averages: after one GPU each, every next GPU goes to the session with the highest load per
    GPU, which minimises the most loaded session's per-GPU load. When there are fewer GPUs than sessions, the
    largest loads get one each and the rest get none (ties by position).
    """
    if gpus < 0:
        raise ValueError(f"gpus: must be >= 0, got {gpus}")
    if any(not (math.isfinite(x) and x >= 0) for x in loads):
        raise ValueError("loads: must be finite and >= 0")
    n = len(loads)
    counts = [0] * n
    order = sorted(range(n), key=lambda i: (-loads[i], i))
    for i in order[:gpus]:
        counts[i] = 1
    heap = [(-loads[i], i) for i in order[:gpus]]
    heapq.heapify(heap)
    for _ in range(max(0, gpus - n) if heap else 0):
        _, i = heapq.heappop(heap)
        counts[i] += 1
        heapq.heappush(heap, (-loads[i] / counts[i], i))
    return counts


def config_grid(dm: Demand, memory_mb: float) -> list[tuple[int, float]]:
    """The (max batch, timeout ms) grid an operator sweeps: powers of two up to ``slo_batch`` plus that batch
    itself, each with every timeout of ``TIMEOUT_GRID_MS`` that keeps the analytic worst case of a batch that
    starts when it closes within the budget: ``timeout + l(b) <= L'``. Queueing behind a running batch is left
    to ``choose_config``'s latency model."""
    p, budget = dm.profile, dm.budget_ms
    big = slo_batch(p, budget, memory_mb)
    batches = sorted({1 << k for k in range(int(math.log2(big)) + 1)} | {big}) if big >= 1 else []
    out = []
    for b in batches:
        lat = float(p.lat_ms[b])
        out += [(b, t) for t in TIMEOUT_GRID_MS if t + lat <= budget * (1 + 1e-9)]
    return out


def slo_batch(profile, budget_ms: float, memory_mb: float) -> int:
    """Largest b with ``l(b) <= L'`` that fits memory: the largest batch that can meet the SLO at all."""
    b = profile.max_batch_within(budget_ms)
    return min(b, int(np.searchsorted(profile.mem_mb[1:], memory_mb * (1 + 1e-12), side="right")))


def _stable_batch(lat: np.ndarray, rate_ms: float, cap: int) -> int:
    """Smallest s <= cap whose batch runs no longer than s requests take to arrive (``r * l(s) <= s``), else cap.

    A work-conserving batcher (Triton, Clipper) settles near it: the requests that arrive while one batch runs
    form the next."""
    s = np.arange(1, cap + 1)
    ok = np.nonzero(rate_ms * lat[1:cap + 1] <= s)[0]
    return int(ok[0]) + 1 if len(ok) else cap


def _predict(dm: Demand, system: str, b: int, t: float, rate: float) -> tuple[float, float]:
    """Predicted (utilization, latency ms) of one GPU of ``system`` at ``rate`` req/s with config (b, t).

    Mean-value model: the batch is what arrives within the timeout after its first request (``1 + r*t``), for a
    work-conserving system at least what arrives while the previous batch runs; utilization ``r * l(s) / s``;
    latency = time to close the batch + M/D/1 queueing ``rho / (2 (1 - rho)) * l(s)`` + ``l(s)``.
    """
    lat = dm.profile.lat_ms
    r_ms = rate / 1000.0
    fill = 1.0 + r_ms * t
    s = min(b, math.floor(fill + 1e-9))
    if system in ("triton", "clipper"):
        s = max(s, _stable_batch(lat, r_ms, b))
    ls = float(lat[s])
    rho = r_ms * ls / s
    wait = min(t, (b - 1) / r_ms) if r_ms > 0 else t
    if system == "clipper":
        wait = 0.0
    queue = math.inf if rho >= 1.0 else rho / (2.0 * (1.0 - rho)) * ls
    return rho, wait + queue + ls


def choose_config(dm: Demand, system: str, rate: float, memory_mb: float) -> BatchConfig:
    """The best grid point for one GPU of ``system`` (``tf-serving`` or ``triton``) serving ``rate`` req/s.

    Among configurations predicted stable (utilization <= 0.95), the one with the lowest predicted latency
    (largest slack to the budget); when none is, the one with the highest throughput (lowest utilization).
    """
    grid = config_grid(dm, memory_mb)
    if not grid:
        raise ValueError(f"{dm.session.session}: no batch fits the budget L' = {dm.budget_ms:.2f} ms")
    scored = [(b, t, *_predict(dm, system, b, t, rate)) for b, t in grid]
    stable = [c for c in scored if c[2] <= _RHO_MAX]
    if stable:
        b, t, rho, latency = min(stable, key=lambda c: (c[3], c[2], -c[0], c[1]))
    else:
        b, t, rho, latency = min(scored, key=lambda c: (c[2], -c[0], -c[1]))
    return BatchConfig(b, t, rho, latency)


def _dedicated(system: str):
    def pack(demands: Sequence[Demand], memory_mb: float, gpus: int | None = None
             ) -> tuple[list[GpuPlan], list[Unserved]]:
        unserved: list[Unserved] = []
        live: list[tuple[Demand, int, float]] = []  # demand, saturated batch B, load R*l(B)/B in GPUs
        for dm in demands:
            reason = unservable_reason(dm, memory_mb)
            if reason is not None:
                unserved.append(Unserved(dm.session.session, reason))
                continue
            if dm.session.rate <= 0:
                continue
            big = saturated_batch(dm.profile, dm.budget_ms, memory_mb)
            live.append((dm, big, dm.session.rate * float(dm.profile.lat_ms[big]) / big / 1000.0))
        if gpus is None:
            # Enough GPUs for the rate at the best throughput the SLO allows, B / l(B).
            counts = [max(1, math.ceil(load - 1e-9)) for _, _, load in live]
        else:
            counts = dedicated_gpu_counts([load for _, _, load in live], gpus)
        out: list[GpuPlan] = []
        for (dm, _, _), n in zip(live, counts, strict=True):
            s = dm.session
            if n == 0:
                unserved.append(Unserved(s.session, f"{system} gives every session its own GPUs and the cluster "
                                                    f"of {gpus} GPUs has none left for it"))
                continue
            per_gpu = s.rate / n
            p = dm.profile
            if system == "clipper":
                # AIMD grows the batch until one batch's latency exceeds the objective: cap at l(b) <= L'.
                b, timeout = slo_batch(p, dm.budget_ms, memory_mb), None
                duty = float(p.lat_ms[b])
            else:
                cfg = choose_config(dm, system, per_gpu, memory_mb)
                b, timeout = cfg.batch, cfg.timeout_ms
                # The worst wait before a batch starts: its timeout, or the running batch.
                duty = max(timeout, float(p.lat_ms[b]))
            lat = float(p.lat_ms[b])
            alloc = Allocation(s.session, s.model, s.slo_ms, b, per_gpu, timeout)
            out += [GpuPlan(-1, duty, lat / duty, float(p.mem_mb[b]), (alloc,), system) for _ in range(n)]
        return renumber(out), unserved

    pack.__name__ = f"{system.replace('-', '_')}_pack"
    pack.__doc__ = f"Dedicated GPUs per session running {system}'s batching (see the module docstring)."
    return pack


clipper_pack = _dedicated("clipper")
tf_serving_pack = _dedicated("tf-serving")
triton_pack = _dedicated("triton")

#: Baseline policies by CLI name; ``api.policies()`` merges them in.
BASELINES = {
    "batch-oblivious": batch_oblivious_pack,
    "clipper": clipper_pack,
    "tf-serving": tf_serving_pack,
    "triton": triton_pack,
}
