"""How many GPUs a workload needs at least, known before anything is packed: the planner's size bound.

Packing 4 million GPUs takes minutes and gigabytes; the lower bound ``sum_i R_i * c_i`` (``c_i`` the least time
per request a valid plan may spend, ``per_request_ms``; docs/architecture.md section 2, step 4) takes microseconds
per session. ``lower_bound`` is the same sum over the demands a packer sees; plans report their GPUs against it.
``check_bound`` refuses a workload whose bound exceeds a limit (``plan_workload(max_gpus=...)``, ``nexus-lab plan
--max-gpus``, or a cluster's size), naming the field that contributes most. Pure and deterministic; numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..fields import label
from ..profiles import ModelProfile
from ..workload import Workload, WorkloadError
from .squishy import Demand, by_profile

__all__ = ["BASELINE_MAX", "DEFAULT_MAX_GPUS", "GpuLimitError", "check_baseline_size", "check_bound", "check_max_gpus",
           "format_gpus", "gpus_needed", "lower_bound", "per_request_ms"]

#: ``plan_workload``'s default limit: generous for any real cluster, small enough to plan in seconds.
DEFAULT_MAX_GPUS = 100_000


class GpuLimitError(WorkloadError):
    """A workload that needs more GPUs than a limit allows; the message starts with the field contributing most."""


def per_request_ms(profile: ModelProfile, budgets_ms: np.ndarray, memory_mb: float,
                   rates: np.ndarray | None = None) -> np.ndarray:
    """The least GPU time (ms) any valid duty-cycle plan spends per request, per device budget ``L'``.

    Without ``rates``: ``min over b <= B of l(b)/b``, B the largest batch with ``2*l(B) <= L'`` that fits memory
    (``saturated_batch``). With each session's rate ``R`` (req/s) the bound is tighter and still valid: a piece
    of the session on a GPU of duty cycle ``d`` runs ``l(b)`` every ``d`` for the ``r*d <= b`` requests that
    arrive in a cycle, where ``r <= R`` and ``d <= L' - l(b)``, so it spends at least
    ``l(b) / min(b, R*(L' - l(b)))`` per request: a slow session cannot fill its most efficient batch. The
    ``b`` with ``b <= R*(L' - l(b))`` form a prefix ``1..c`` (found by bisection); past ``c`` the cost grows with
    ``b``, so the minimum is the best ``l(b)/b`` up to ``c`` or ``l(c+1)/(R*(L' - l(c+1)))``. 0 where no batch
    is feasible.
    """
    lat, mem = profile.lat_ms, profile.mem_mb
    budgets = np.asarray(budgets_ms, dtype=np.float64)
    efficiency = np.minimum.accumulate(lat[1:] / np.arange(1, profile.max_batch + 1))
    mem_cap = int(np.searchsorted(mem[1:], memory_mb * (1 + 1e-12), side="right"))
    big = np.minimum(np.searchsorted(lat[1:], budgets / 2.0 * (1 + 1e-12), side="right"), mem_cap)
    if rates is None:
        return np.where(big >= 1, efficiency[np.maximum(big - 1, 0)], 0.0)
    per_ms = np.maximum(np.asarray(rates, dtype=np.float64), 0.0) / 1000.0  # requests per ms
    lo, hi = np.zeros_like(big), big.copy()
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        while np.any(lo < hi):  # largest c in [0, big] with c <= R*(L' - l(c)); b = 0 always qualifies
            mid = (lo + hi + 1) // 2
            fits = mid <= per_ms * (budgets - lat[mid]) * (1 + 1e-12)
            lo, hi = np.where(fits, mid, lo), np.where(fits, hi, mid - 1)
        full = np.where(lo >= 1, efficiency[np.maximum(lo - 1, 0)], np.inf)
        nxt = np.minimum(lo + 1, profile.max_batch)
        short = np.where(lo < big, lat[nxt] / (per_ms * (budgets - lat[nxt])), np.inf)
        cost = np.minimum(full, short)
    return np.where((big >= 1) & np.isfinite(cost), cost, 0.0)


def lower_bound(demands: Sequence[Demand], memory_mb: float = math.inf, *, rate_aware: bool = True) -> float:
    """``sum_i R_i * c_i``, ``c_i`` the least time per request any valid plan may spend (``per_request_ms`` with
    the session's rate: its most efficient feasible batch, or less than that batch when ``R_i`` cannot fill it).

    Every batch in a valid duty-cycle plan obeys ``l(b) <= d`` and ``d + l(b) <= L``, so ``2*l(b) <= L``, and
    collects the ``r*d <= b`` requests of one cycle. Unservable sessions add nothing. Vectorised per profile,
    summed in demand order. ``rate_aware=False``: every request at its most efficient feasible batch however slow
    its session (``sum_i R_i * l_i(B_i)/B_i``, looser; the yardstick the planner benchmark reported before).
    """
    rates = np.array([dm.session.rate for dm in demands], dtype=np.float64)
    budgets = np.array([dm.budget_ms for dm in demands], dtype=np.float64)
    terms = np.zeros(len(demands))
    for prof, idx in by_profile(demands):
        terms[idx] = rates[idx] * per_request_ms(prof, budgets[idx], memory_mb,
                                                 rates[idx] if rate_aware else None) / 1000.0
    terms[~(rates > 0)] = 0.0
    return float(sum(terms.tolist(), 0.0))


def _cost(workload: Workload, model: str, rates: Sequence[float], slos: Sequence[float]) -> np.ndarray:
    """GPUs at least, per (rate, SLO) of one model: whole-model cost, or prefix plus suffix where cheaper."""
    spec = workload.models[model]
    mem = workload.device.memory_mb
    budgets = np.asarray(slos, dtype=np.float64) - (spec.profile.preprocess_ms + spec.profile.postprocess_ms
                                                    + workload.net_ms)
    rate_arr = np.asarray(rates, dtype=np.float64)
    per_req = per_request_ms(spec.profile, budgets, mem, rate_arr)
    if spec.prefix is not None:  # the prefix runs once for the whole group (rate unknown here): may cost less
        shared = per_request_ms(spec.prefix.prefix, budgets, mem) + per_request_ms(spec.prefix.suffix, budgets, mem)
        per_req = np.minimum(per_req, shared)
    with np.errstate(over="ignore"):  # beyond float range is inf GPUs: refused all the same
        return rate_arr * per_req / 1000.0


def gpus_needed(workload: Workload, *, by_name: bool = False) -> tuple[float, str]:
    """A lower bound on the GPUs any valid plan of ``workload`` needs, and the field contributing most.

    Sessions cost ``R * per_request_ms`` at their own budget and rate; a query stage at its rate (the query's rate
    times the fan-outs above it) and the budget of the query's whole SLO, which no split can exceed. The field is
    ``sessions[i].rate`` or ``queries[j].rate`` (``sessions['name'].rate`` with ``by_name``, as editors show
    them; ``""`` when nothing costs anything). Prefix groups are priced at prefix plus suffix per request where
    that is cheaper than the whole model, so the bound stays a bound.
    """
    total, field, _ = _needs(workload, by_name)
    return total, field


def _needs(workload: Workload, by_name: bool) -> tuple[float, str, float]:
    """Total lower bound, the field contributing most, and its share."""
    by_model: dict[str, tuple[list[int], list[float], list[float]]] = {}
    for i, s in enumerate(workload.sessions):
        idx, rates, slos = by_model.setdefault(s.model, ([], [], []))
        idx.append(i)
        rates.append(s.rate)
        slos.append(s.slo_ms)
    costs = np.zeros(len(workload.sessions))
    for model, (idx, rates, slos) in by_model.items():
        costs[idx] = _cost(workload, model, rates, slos)
    total = float(sum(costs.tolist(), 0.0))  # in session order, as squishy.lower_bound sums
    best, field = 0.0, ""
    if len(costs):
        top = int(np.argmax(costs))
        best, field = float(costs[top]), f"sessions[{workload.sessions[top].name!r}].rate" if by_name \
            else f"sessions[{top}].rate"
    for j, q in enumerate(workload.queries):
        stage_rates = q.stage_rates()
        per_stage = [float(_cost(workload, st.model, [stage_rates[st.name]], [q.slo_ms])[0]) for st in q.stages]
        total += sum(per_stage)
        if sum(per_stage) > best:
            best, field = sum(per_stage), f"queries[{q.name!r}].rate" if by_name else f"queries[{j}].rate"
    return total, field if total > 0 else "", best


def format_gpus(n: float) -> str:
    """``4.1e6`` for large counts, ``39959`` below a million: how refusals print an estimate."""
    if not math.isfinite(n):
        return "1e308+"
    if n < 1e6:
        return f"{n:,.0f}".replace(",", "")
    mantissa, exponent = f"{n:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def check_max_gpus(max_gpus: object, what: str = "max_gpus") -> int:
    """``max_gpus`` as an int >= 1, or a ``ValueError`` naming ``what``."""
    if isinstance(max_gpus, bool) or not isinstance(max_gpus, int) or max_gpus < 1:
        raise ValueError(f"{what}: must be an integer >= 1, got {label(max_gpus)}")
    return max_gpus


def check_bound(workload: Workload, max_gpus: int = DEFAULT_MAX_GPUS, what: str = "max_gpus", *,
                by_name: bool = False) -> float:
    """Refuse ``workload`` when its lower bound on GPUs exceeds ``max_gpus``; else return the bound.

    Raises ``GpuLimitError`` (a ``WorkloadError``) such as ``sessions[0].rate: needs ~4.0e6 GPUs, more than
    max_gpus=100000``; ``what`` names the limit (a controller passes e.g. ``"cluster size"``), ``by_name`` names
    sessions and queries by name (``sessions['cam1'].rate``, as the editors' previews do). Costs one pass over
    the sessions: call it before planning, or to vet an edit.

    Examples
    --------
    >>> from nexus_lab.workload import load_workload
    >>> check_bound(load_workload({"sessions": [{"model": "vgg16", "slo_ms": 100, "rate": 1e9}]}))
    Traceback (most recent call last):
    ...
    nexus_lab.planner.bounds.GpuLimitError: sessions[0].rate: needs ~4.0e6 GPUs, more than max_gpus=100000
    """
    limit = check_max_gpus(max_gpus, what)
    need, field, top = _needs(workload, by_name)
    if need > limit:
        alone = "" if top > limit else f" (the whole workload; this field alone ~{format_gpus(top)}, the most)"
        raise GpuLimitError(f"{field}: needs ~{format_gpus(need)} GPUs, more than {what}={limit}{alone}")
    return need if math.isfinite(need) else math.inf


#: The baselines' packing is quadratic in sessions: past this many (about 4 s for batch-oblivious) they refuse.
BASELINE_MAX = 20_000


def check_baseline_size(workload: Workload, policy: str, baseline: bool) -> None:
    """Refuse a baseline policy a workload too large for its quadratic packing to plan within seconds."""
    size = len(workload.sessions) + sum(len(q.stages) for q in workload.queries)
    if baseline and size > BASELINE_MAX:
        raise ValueError(f"policy: {policy!r} plans at most {BASELINE_MAX} sessions and stages (its packing is "
                         f"quadratic), the workload has {size}; use 'nexus'")
