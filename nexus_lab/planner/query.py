"""Query analysis: split one end-to-end SLO over a DAG of model stages into per-stage latency budgets.

Pure and deterministic (numpy only); depends on profiles, the workload's query types and the squishy cost model.

A stage ``v`` with SLO budget ``t`` gets the device budget ``L' = t - pre - post - net`` and, at its rate ``R_v``
(query rate times the gammas on the way down), costs the GPUs squishy bin packing would give it: ``floor(R/T)``
saturated GPUs plus the occupancy ``l(b)/d`` of its residual (the fraction of a GPU it leaves for merging), or
infinity when ``L' < 2*l(1)``. ``optimal_split`` minimises the summed cost subject to every root-to-leaf path's
budgets summing to at most the SLO.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..profiles import ModelProfile
from ..workload import QuerySpec, Workload, topological
from .squishy import ceil_batch, residual_for, saturated_batch

__all__ = ["budget_shortfall", "even_split", "optimal_split", "split_cost", "split_infeasibility", "stage_cost",
           "topological"]

_EPS = 1e-9
#: Moves times stages the DAG greedy may make (each move visits every stage): about a second of work; DAGs of
#: up to 20 stages never reach it.
GREEDY_WORK = 200_000
#: Budget grid of the dynamic program: 1 ms or SLO/400, whichever is coarser (at most ~400 points per stage).
GRID_MIN_MS = 1.0
GRID_POINTS = 400


def even_split(query: QuerySpec, workload: Workload) -> dict[str, float]:
    """Every stage gets ``SLO / depth`` where depth is the most stages on any root-to-leaf path (sound on DAGs)."""
    depth: dict[str, int] = {}
    for st in topological(query.stages):
        depth[st.name] = 1 + max((depth[p] for p in st.parents), default=0)
    longest = max(depth.values())
    return {st.name: query.slo_ms / longest for st in query.stages}


# ---------------------------------------------------------------------------------------------- cost model
def stage_cost(profile: ModelProfile, rate: float, budget_ms: float, memory_mb: float) -> float:
    """GPUs squishy bin packing needs for one session at device budget ``L' = budget_ms``: whole saturated GPUs
    plus the residual's occupancy; ``inf`` when ``L' < 2*l(1)`` or batch 1 does not fit memory.

    The scalar reference of ``_cost_grid``, built on the packer's own ``saturated_batch``/``residual_for``.
    """
    lat1 = float(profile.lat_ms[1])
    if budget_ms < 2 * lat1 or float(profile.mem_mb[1]) > memory_mb:
        return math.inf
    if rate <= 0:
        return 0.0
    big = saturated_batch(profile, budget_ms, memory_mb)
    tput = big * 1000.0 / float(profile.lat_ms[big])
    n = math.floor(rate / tput + _EPS)
    r = rate - n * tput
    if r <= rate * _EPS:
        return float(n)
    b, duty = residual_for(profile, budget_ms, r, big)
    return n + float(profile.lat_ms[b]) / duty


def _cost_grid(profile: ModelProfile, rate: float, budgets_ms: np.ndarray, memory_mb: float) -> np.ndarray:
    """``stage_cost`` at every device budget of ``budgets_ms`` at once (the DP's inner loop)."""
    lp = np.asarray(budgets_ms, dtype=np.float64)
    lat, mem = profile.lat_ms, profile.mem_mb
    out = np.full(lp.shape, np.inf)
    feasible = lp >= 2 * float(lat[1])
    if float(mem[1]) > memory_mb or not feasible.any():
        return out
    if rate <= 0:
        out[feasible] = 0.0
        return out
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # tiny residual rates: waits -> inf
        out[feasible] = _grid_feasible(lat, mem, rate, lp[feasible], memory_mb)
    return out


def _grid_feasible(lat: np.ndarray, mem: np.ndarray, rate: float, lp: np.ndarray, memory_mb: float
                   ) -> np.ndarray:
    # Saturated batch: the largest B with 2*l(B) <= L', capped by memory (as saturated_batch).
    mem_cap = int(np.searchsorted(mem[1:], memory_mb * (1 + 1e-12), side="right"))
    big = np.minimum(np.searchsorted(lat[1:], lp / 2.0 * (1 + 1e-12), side="right"), mem_cap)
    lat_big = lat[big]
    tput = big * 1000.0 / lat_big
    n = np.floor(rate / tput + _EPS)
    r = rate - n * tput
    has_res = r > rate * _EPS
    r_safe = np.where(has_res, r, 1.0)
    # Residual batch: the largest b <= B with (b-1)/r + l(b) <= L' (the wait is increasing in b).
    top = int(big.max())
    bs = np.arange(1, top + 1)
    wait = (bs - 1)[None, :] * 1000.0 / r_safe[:, None] + lat[1:top + 1][None, :]
    within = (wait <= lp[:, None] * (1 + 1e-12)) & (bs[None, :] <= big[:, None])
    b = np.maximum(within.sum(axis=1), 1)
    lat_b = lat[b]
    duty = np.minimum(lp - lat_b, b * 1000.0 / r_safe)
    # r beyond what batch b sustains: run at the saturated duty cycle l(B) with batch ceil(r*l(B)).
    slow = lat_b > duty
    b_slow = np.minimum(ceil_batch(r_safe, lat_big), big)
    occ = np.where(slow, lat[b_slow] / lat_big, lat_b / np.where(slow, 1.0, duty))
    return n + np.where(has_res, occ, 0.0)


@dataclass(frozen=True)
class _Stage:
    name: str
    profile: ModelProfile
    rate: float
    overhead_ms: float  # pre + post + net: L' = t - overhead

    @property
    def min_budget_ms(self) -> float:
        """The smallest SLO budget with ``L' >= 2*l(1)``."""
        return 2 * float(self.profile.lat_ms[1]) + self.overhead_ms


def _stages(query: QuerySpec, workload: Workload) -> list[_Stage]:
    rates = query.stage_rates()
    return [_Stage(st.name, workload.profile(st.model), rates[st.name], -workload.budget_ms(st.model, 0.0))
            for st in query.stages]


def split_cost(query: QuerySpec, workload: Workload, budgets: Mapping[str, float]) -> float:
    """Summed ``stage_cost`` of a split (GPUs, fractional): what ``optimal_split`` minimises."""
    mem = workload.device.memory_mb
    return sum(stage_cost(s.profile, s.rate, budgets[s.name] - s.overhead_ms, mem) for s in _stages(query, workload))


# ---------------------------------------------------------------------------------------------- feasibility
def _longest(query: QuerySpec, weight: Mapping[str, float]) -> tuple[float, list[str]]:
    """The heaviest root-to-leaf path under ``weight`` and its stages."""
    best: dict[str, tuple[float, list[str]]] = {}
    for st in topological(query.stages):
        head = max((best[p] for p in st.parents), key=lambda x: x[0], default=(0.0, []))
        best[st.name] = (head[0] + weight[st.name], [*head[1], st.name])
    return max(best.values(), key=lambda x: x[0])


def split_infeasibility(query: QuerySpec, workload: Workload, where: str = "query") -> str | None:
    """Why no split of ``query`` serves every stage (``None`` when one does); ``where`` prefixes the field path.

    A stage needs ``t >= 2*l(1) + pre + post + net``; the SLO must cover the heaviest path of those minima.
    """
    mem = workload.device.memory_mb
    for j, s in enumerate(_stages(query, workload)):
        if float(s.profile.mem_mb[1]) > mem:
            return (f"{where}.stages[{j}].model: {query.stages[j].model} needs {float(s.profile.mem_mb[1]):.0f} MB "
                    f"at batch 1, more than the device's {mem:.0f} MB")
    need, path = _longest(query, {s.name: s.min_budget_ms for s in _stages(query, workload)})
    if need <= query.slo_ms * (1 + 1e-12):
        return None
    what = f"stage {path[0]}" if len(path) == 1 else f"path {' -> '.join(path)}"
    return f"{where}.slo_ms: {query.slo_ms:g} ms is too small for {what} (needs >= {need:.1f} ms)"


def budget_shortfall(query: QuerySpec, workload: Workload, budgets: Mapping[str, float],
                     where: str = "query") -> str | None:
    """Why ``query`` cannot be served whole under ``budgets`` (``None`` when every stage is servable).

    A query is all or nothing: serving some of its stages would spend GPUs on requests that cannot finish.
    """
    reason = split_infeasibility(query, workload, where)
    if reason is not None:
        return reason
    for j, s in enumerate(_stages(query, workload)):
        if budgets[s.name] < s.min_budget_ms * (1 - 1e-12):
            return (f"{where}.stages[{j}]: budget {budgets[s.name]:.1f} ms of stage {s.name} is below the "
                    f"{s.min_budget_ms:.1f} ms it needs (L' >= 2*l(1)); use the dp split")
    return None


# ---------------------------------------------------------------------------------------------- the split
def _grid_step(slo_ms: float) -> float:
    return max(GRID_MIN_MS, slo_ms / GRID_POINTS)


def _tree_dp(query: QuerySpec, costs: Mapping[str, np.ndarray], k_max: int) -> dict[str, int] | None:
    """Optimal grid budgets (in steps) of a tree-shaped (or forest) query; ``None`` when none is finite."""
    roots = [st.name for st in query.stages if not st.parents]
    return _forest_dp(query.children(), roots, costs, k_max)


def _forest_dp(children: Mapping[Any, Sequence[Any]], roots: Sequence[Any], costs: Mapping[Any, np.ndarray],
               k_max: int) -> dict[Any, int] | None:
    """``f(v, k) = min_j cost(v, j) + sum_c f(c, k - j)`` over a forest given by ``children`` and ``roots``.

    ``f(v, k)`` is the least cost of v's subtree when every path below v (v included) may use ``k`` steps; it is
    non-increasing in k because the min ranges over all j <= k. Ties go to the larger j (the parent's budget).
    """
    order: list[Any] = []  # parents before children
    stack = list(reversed(roots))
    while stack:
        v = stack.pop()
        order.append(v)
        stack.extend(reversed(children[v]))
    ks = np.arange(k_max + 1)
    # Columns in reverse (column i is j = k_max - i) so argmin's first minimiser is the largest j; entries with
    # j > k point at an infinite pad after g.
    diff = ks[:, None] - (k_max - ks)[None, :]  # k - j
    back = np.where(diff >= 0, diff, k_max + 1)
    f: dict[Any, np.ndarray] = {}
    choice: dict[Any, np.ndarray] = {}
    for v in reversed(order):
        g = np.zeros(k_max + 2)
        g[-1] = np.inf
        for c in children[v]:
            g[:-1] += f[c]
        # Min-plus convolution over the grid: M[k, j] = cost(v, j) + g(k - j) for j <= k.
        m = costs[v][::-1][None, :] + g[back]
        col = np.argmin(m, axis=1)
        choice[v] = k_max - col
        f[v] = m[ks, col]
    if not math.isfinite(sum(float(f[r][k_max]) for r in roots)):
        return None
    steps: dict[Any, int] = {}
    avail = {r: k_max for r in roots}
    for v in order:
        k = avail[v]
        steps[v] = int(choice[v][k])
        for c in children[v]:
            avail[c] = k - steps[v]
    return steps


#: Largest tree a DAG is unrolled into (one node per root-to-stage path) for its DP starting point.
MAX_UNROLLED = 64


def _unrolled_start(query: QuerySpec, costs: Mapping[str, np.ndarray], k_max: int) -> dict[str, int] | None:
    """A sound grid split of a DAG from the DP on its unrolling into a tree (a stage reached by p paths becomes p
    copies, each charged 1/p of its cost), keeping for each stage the smallest budget any copy got.

    Every path of the DAG is a path of the tree, whose budgets sum to at most ``k_max``; lowering budgets keeps
    that, so the result is sound. ``None`` when the unrolling is too large or infeasible.
    """
    kids = query.children()
    nodes: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
    stack = [(st.name,) for st in query.stages if not st.parents]
    roots = list(stack)
    while stack:
        path = stack.pop()
        if len(nodes) >= MAX_UNROLLED:
            return None
        nodes[path] = [(*path, c) for c in kids[path[-1]]]
        stack.extend(nodes[path])
    copies: dict[str, int] = {}
    for path in nodes:
        copies[path[-1]] = copies.get(path[-1], 0) + 1
    steps = _forest_dp(nodes, roots, {p: costs[p[-1]] / copies[p[-1]] for p in nodes}, k_max)
    if steps is None:
        return None
    out: dict[str, int] = {}
    for path, k in steps.items():
        out[path[-1]] = min(out.get(path[-1], k), k)
    return out


def _through(query: QuerySpec, budget: Mapping[str, float]) -> dict[str, float]:
    """Per stage, the heaviest root-to-leaf path through it."""
    order = topological(query.stages)
    children = query.children()
    up: dict[str, float] = {}
    for st in order:
        up[st.name] = budget[st.name] + max((up[p] for p in st.parents), default=0.0)
    down: dict[str, float] = {}
    for st in reversed(order):
        down[st.name] = budget[st.name] + max((down[c] for c in children[st.name]), default=0.0)
    return {n: up[n] + down[n] - budget[n] for n in up}


def _dag_greedy(query: QuerySpec, costs: Mapping[str, np.ndarray], start: dict[str, int], k_max: int
                ) -> dict[str, int]:
    """From a sound grid split, repeatedly grow the one budget with the best GPU saving per step while every
    path stays within ``k_max`` steps. Each move strictly lowers the total cost, so it terminates."""
    steps = dict(start)
    names = [st.name for st in query.stages]
    # Each move costs a pass over every stage: cap the moves so a large DAG splits in bounded time (stopping
    # early keeps the split sound; the leftover slack is handed out by _fill_slack).
    for _ in range(min(len(names) * (k_max + 1), max(64, GREEDY_WORK // len(names)))):
        through = _through(query, {n: float(k) for n, k in steps.items()})
        best: tuple[float, str, int] | None = None
        for n in names:
            slack = k_max - round(through[n])
            if slack < 1:
                continue
            k = steps[n]
            saving = costs[n][k] - costs[n][k + 1:k + slack + 1]
            per_step = saving / np.arange(1, slack + 1)
            j = int(np.argmax(per_step))
            if per_step[j] > 1e-12 and (best is None or per_step[j] > best[0]):
                best = (float(per_step[j]), n, j + 1)
        if best is None:
            break
        steps[best[1]] += best[2]
    return steps


def _fill_slack(query: QuerySpec, stages: Mapping[str, _Stage], budget: dict[str, float], memory_mb: float
                ) -> dict[str, float]:
    """Hand each path's unused SLO to its stages, leaves first, where it does not raise the stage's cost
    (more budget never invalidates a plan; it gives the packer room)."""
    slo = query.slo_ms
    for st in reversed(topological(query.stages)):
        extra = slo - _through(query, budget)[st.name]
        if extra <= slo * 1e-12:
            continue
        s = stages[st.name]
        old = stage_cost(s.profile, s.rate, budget[st.name] - s.overhead_ms, memory_mb)
        new = stage_cost(s.profile, s.rate, budget[st.name] + extra - s.overhead_ms, memory_mb)
        if new <= old + 1e-12:
            budget[st.name] += extra
    return budget


def optimal_split(query: QuerySpec, workload: Workload) -> dict[str, float]:
    """Per-stage SLO budgets (ms) that minimise the summed squishy cost with every root-to-leaf path within SLO.

    Trees (and forests): the dynamic program over a budget grid of ``max(1 ms, SLO/400)``, optimal on that grid.
    General DAGs: from two sound starting points (the DP on the DAG unrolled into a tree, keeping each stage's
    smallest copy; and each stage's smallest feasible grid budget) greedily grow the budget with the best GPU
    saving per ms while every path stays within the SLO, and keep the cheaper. The even split is kept if it costs
    less (it can only on a DAG, or off the grid). Leftover slack then goes to stages whose cost it does not
    raise. When no split can serve every stage (see ``split_infeasibility``) this returns the even split; the
    planner then reports the query's stages unserved.
    """
    even = even_split(query, workload)
    if split_infeasibility(query, workload) is not None:
        return even
    mem = workload.device.memory_mb
    stages = {s.name: s for s in _stages(query, workload)}
    step = _grid_step(query.slo_ms)
    k_max = math.floor(query.slo_ms / step + 1e-9)
    grid = np.arange(k_max + 1) * step
    costs = {n: _cost_grid(s.profile, s.rate, grid - s.overhead_ms, mem) for n, s in stages.items()}
    steps: dict[str, int] | None = _tree_dp(query, costs, k_max) if query.is_tree else None
    if steps is None:
        # A DAG: greedy growth from two sound starting points, the cheaper result wins.
        starts = [_unrolled_start(query, costs, k_max)]
        finite = {n: np.isfinite(c) for n, c in costs.items()}
        if all(f.any() for f in finite.values()):
            low = {n: int(np.argmax(f)) for n, f in finite.items()}  # smallest feasible grid budget
            if _longest(query, {n: float(k) for n, k in low.items()})[0] <= k_max:
                starts.append(low)
        tried = [_dag_greedy(query, costs, s0, k_max) for s0 in starts if s0 is not None]
        if tried:
            steps = min(tried, key=lambda ks: sum(float(costs[n][k]) for n, k in ks.items()))
    if steps is not None:
        budget = {n: k * step for n, k in steps.items()}
    else:
        # Feasible only off the grid: every stage at its exact minimum, the rest handed out below.
        budget = {n: s.min_budget_ms for n, s in stages.items()}
    if split_cost(query, workload, even) < split_cost(query, workload, budget):
        budget = dict(even)
    return _fill_slack(query, stages, budget, mem)
