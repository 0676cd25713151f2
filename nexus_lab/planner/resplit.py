"""Re-splitting sessions between whole GPUs and residual pieces: a candidate plan for ``improve``.

The greedy gives a session ``n = floor(R/T*)`` whole GPUs at its most efficient batch and leaves the residual
``r = R - n*T*`` to run alone at the batch its budget allows. A small residual of a slow model runs at batch 1 or
2 and can cost nearly a whole GPU (yolo9000: 20 req/s at batch 2 fills 93% of a 51 ms duty cycle). Handing ``j``
whole GPUs back and spreading ``x = r + j*T*`` evenly over ``j+1`` pieces runs every piece at a large batch: the
session costs ``n - j + (j+1)*occ(x/(j+1))`` GPUs of occupancy instead of ``n + occ(r)``, and each piece leaves
room that other residuals fill. Every piece also runs at its batch of least occupancy (``_cheapest``), not the
paper's largest. Per session the split of least occupancy is taken (``j <= MAX_GIVE_BACK``); pieces are packed
and GPUs emptied as ``improve`` does, duty cycles re-tuned (``retune.py``) and emptied again, pieces of one
session merged where they land on one GPU, and the result is re-checked GPU by GPU. Pure and deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .duty_pack import pack_retuned
from .plan import GpuPlan, PlannedSession
from .retune import retune
from .squishy import Demand, Residual, ceil_batch, make_gpu, unservable_reason

__all__ = ["MAX_GIVE_BACK", "ORDERS", "piece_split", "resplit_candidates", "split_options"]

#: Whole GPUs a session may hand back to its residual pieces (more rarely pays and costs packing time).
MAX_GIVE_BACK = 2
#: A re-split must save at least this much occupancy (GPUs) over the greedy's split to be taken.
MARGINS = (0.0, 0.1)  # large sets try only the last
#: Residual sets up to this size (and ``improve``'s own small-set limit) get every split and order below.
ALL_ORDERS_MAX = 160
#: Residual sets up to this size are also packed by ``pack_retuned`` (each merge searches the GPU's duty cycle),
#: in these orders.
RETUNED_MAX = 100
RETUNED_ORDERS = ("banded",)


def _cheapest(dm: Demand, rate: float, big: int) -> tuple[int, float] | None:
    """Batch and duty cycle of least occupancy for ``rate`` alone on a GPU, or None.

    Batch b runs at the longest duty cycle that still collects b requests and meets the deadline,
    ``d_b = min(L - l(b), b/r)``, and must fill it: ``l(b) <= d_b`` and ``ceil(r*d_b) = b``. The paper's rule
    takes the largest such b; on a nearly linear model (yolo9000: 25 ms for 1 image, 48 ms for 2) a smaller
    batch at a shorter cycle costs half the GPU: 20 req/s at b=2, d=51 ms fills 94%, at b=1, d=50 ms 50%.
    """
    p = dm.profile
    bs = np.arange(1, big + 1)
    lat = p.lat_ms[1:big + 1]
    with np.errstate(divide="ignore", over="ignore"):
        duty = np.minimum(dm.budget_ms - lat, bs * 1000.0 / rate)
        ok = (lat <= duty) & (ceil_batch(rate, np.maximum(duty, 0.0)) == bs)
        cost = np.where(ok, lat / np.where(ok, duty, 1.0), np.inf)
    k = int(np.argmin(cost))
    if not np.isfinite(cost[k]):
        return None
    return int(bs[k]), float(duty[k])


#: Per servable session: demand index, whole GPUs ``n``, their rate ``T*`` and duty cycle ``l(b*)``, and the
#: options (occupancy cost, j whole GPUs handed back, rate of each of the j+1 pieces, batch, duty cycle).
Options = list[tuple[int, int, float, float, list[tuple[float, int, float, int, float]]]]


def split_options(demands: Sequence[Demand], memory_mb: float) -> Options | None:
    """Every session's ways to split its rate, priced by occupancy; None when the demands are not uniquely named
    or a residual is infeasible (the derivation rules it out)."""
    from .improve import residual_piece, whole_gpus

    if len({dm.session.session for dm in demands}) != len(demands):
        return None
    out: Options = []
    for i, dm in enumerate(demands):
        s, p = dm.session, dm.profile
        if unservable_reason(dm, memory_mb) is not None or s.rate <= 0:
            continue
        big, lat, tput, n, r = whole_gpus(dm, memory_mb)
        options: list[tuple[float, int, float, int, float]] = []
        for j in range(min(n, MAX_GIVE_BACK) + 1):
            x = r + j * tput
            if x <= s.rate * 1e-9:
                options.append((0.0, 0, 0.0, 0, 0.0))
                break
            got = residual_piece(dm, x / (j + 1), big, lat)
            if got is None and j == 0:
                return None
            for way in (got, _cheapest(dm, x / (j + 1), big)):
                if way is not None:
                    b, duty = way
                    options.append(((j + 1) * float(p.lat_ms[b]) / duty - j, j, x / (j + 1), b, duty))
        out.append((i, n, tput, lat, options))
    return out


def piece_split(demands: Sequence[Demand], table: Options, margin: float = 0.0
                ) -> tuple[list[GpuPlan], list[Demand], list[Residual], dict[str, str]]:
    """Whole GPUs, the demands extended by one demand per piece, the residual pieces (indices into the extended
    demands) and piece name -> session name. A session is re-split when that saves more than ``margin`` GPUs of
    occupancy (``inf``: the greedy's split, ``efficient_split``)."""
    ext: list[Demand] = list(demands)
    full: list[GpuPlan] = []
    residuals: list[Residual] = []
    owner: dict[str, str] = {}
    for i, n, tput, lat, options in table:
        dm = demands[i]
        s, p = dm.session, dm.profile
        cost, j, rate, b, duty = min(options, key=lambda o: (o[0], o[1]))
        if cost > options[0][0] - margin:
            cost, j, rate, b, duty = options[0]
        full += [make_gpu([(dm, tput)], lat)] * (n - j)
        if rate <= 0:
            continue
        if j == 0:
            if (b, duty) != options[0][3:]:
                owner[s.session] = s.session  # a cheaper residual than the greedy's: a different split
            residuals.append(Residual(i, rate, b, duty, float(p.lat_ms[b])))
            continue
        for q in range(j + 1):
            name = f"{s.session}\x00piece{q}"
            owner[name] = s.session
            residuals.append(Residual(len(ext), rate, b, duty, float(p.lat_ms[b])))
            ext.append(Demand(PlannedSession(name, s.model, s.slo_ms, rate), p, dm.budget_ms))
    return full, ext, residuals, owner


def _merge_pieces(gpus: Sequence[GpuPlan], by_name: dict[str, Demand], owner: dict[str, str]) -> list[GpuPlan]:
    """Pieces renamed to their session; two pieces of one session on one GPU become one allocation."""
    out: list[GpuPlan] = []
    for g in gpus:
        if not any(a.session in owner for a in g.allocations):
            out.append(g)
            continue
        rates: dict[str, float] = {}
        for a in g.allocations:
            real = owner.get(a.session, a.session)
            rates[real] = rates.get(real, 0.0) + a.rate
        out.append(make_gpu([(by_name[n], x) for n, x in rates.items()], g.duty_cycle_ms))
    return out


#: Packing orders of the residual pieces tried on small residual sets (``improve`` packs tightest duty cycle first
#: and, for small sets, loosest first): slowest batch first, fullest first, and fullest first within bands of
#: similar duty cycle (a factor of about 1.3), which keeps neighbours' batches while big items go in early.
ORDERS = {
    "tightest": lambda r: (r.duty_ms, r.index),
    "loosest": lambda r: (-r.duty_ms, r.index),
    "slowest": lambda r: (-r.latency_ms, r.index),
    "fullest": lambda r: (-r.occupancy, r.index),
    "banded": lambda r: (round(math.log(r.duty_ms) * 4), -r.occupancy, r.index),
}


def resplit_candidates(best: list[GpuPlan], gpus: Sequence[GpuPlan], demands: Sequence[Demand], memory_mb: float,
                       small: int) -> list[GpuPlan]:
    """``best`` or a plan with fewer GPUs from a re-split or another packing order, serving the rates of ``gpus``
    with every GPU re-checked.

    Residual sets up to ``small`` (at most ``ALL_ORDERS_MAX``) are packed in every order of ``ORDERS``; larger ones
    (planning time grows with residuals times open GPUs) only tightest first, and only re-split.
    """
    from .improve import _gpu_ok, _same_rates, empty_gpus, pack_least_increase

    small = min(small, ALL_ORDERS_MAX)

    by_name = {dm.session.session: dm for dm in demands}
    seen: set[tuple[float, ...]] = set()
    table = split_options(demands, memory_mb)
    if table is None:
        return best
    for margin in (math.inf, *MARGINS) if len(demands) <= small else MARGINS[-1:]:
        full, ext, residuals, owner = piece_split(demands, table, margin)
        if any(piece in by_name for piece, real in owner.items() if piece != real):
            return best  # a session already bears a piece's name
        key = tuple(sorted(r.rate for r in residuals))
        if key in seen:
            continue
        seen.add(key)
        for name, order in ORDERS.items():
            if len(residuals) > small and name != "tightest":
                break
            packs = [pack_least_increase(ext, sorted(residuals, key=order), memory_mb)]
            if len(residuals) <= RETUNED_MAX and name in RETUNED_ORDERS:
                packs.append(pack_retuned(ext, sorted(residuals, key=order), memory_mb))
            for packed in packs:
                if packed is None:
                    continue
                alt = empty_gpus(retune(empty_gpus(full + packed, ext, memory_mb), ext, memory_mb), ext, memory_mb)
                alt = _merge_pieces(alt, by_name, owner)
                if len(alt) < len(best) and _same_rates(alt, gpus) and \
                        all(_gpu_ok(g, by_name, memory_mb) for g in alt):
                    best = alt
    return best
