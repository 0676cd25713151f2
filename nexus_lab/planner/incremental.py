"""Incremental re-planning (Nexus, SOSP 2019, section 6.3): the next epoch's GPUs start from the current plan.

A session whose new rate stays inside its hysteresis band keeps its GPUs and batches (only the rates it is routed
change); a session that left its band is resized: its allocations are taken out and it is split again into whole
GPUs and a residual, placed where its model is already loaded when it fits (its own former GPUs first), else
best-fit, else on a new GPU. GPUs keep their identity, so what each re-plan loads is known exactly: a model that a
GPU did not hold before. Freed capacity is consolidated (``emptying.empty_gpus``) only when that frees whole GPUs.

Pure and deterministic; no Dask, no I/O. The choice between this and a from-scratch plan is ``epoch_plan.py``'s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .emptying import empty_gpus
from .plan import Allocation, GpuPlan, Plan
from .squishy import Demand, residual_for, saturated_batch

__all__ = ["Band", "IncrementalResult", "incremental_gpus", "model_loads"]

_TOL = 1e-9


@dataclass(frozen=True)
class Band:
    """The hysteresis band, the headroom and the re-pack rule.

    A session resized (or new) is given capacity for ``high`` times its rate: ``high - 1`` is the headroom that
    absorbs a rising rate until the next re-plan. It then keeps its allocations while
    ``low * capacity <= rate <= capacity`` (``capacity``: what its batches sustain, ``b/d`` summed over its
    GPUs): sized at ``high`` times a rate, a session is resized when its rate rose by ``high - 1`` or fell
    below ``low * high`` of it. ``repack_share``: a from-scratch
    plan replaces the incremental one when the latter needs more than ``1 + repack_share`` times its GPUs.
    ``consolidate``: empty lightly loaded GPUs into the others' slack when that frees whole GPUs.
    """

    low: float = 0.8
    high: float = 1.1
    repack_share: float = 0.05
    consolidate: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.low, bool) or not (isinstance(self.low, (int, float)) and 0 < self.low <= 1):
            raise ValueError(f"band.low: must be a number in (0, 1], got {self.low!r}")
        if isinstance(self.high, bool) or not (isinstance(self.high, (int, float)) and 1 <= self.high <= 10):
            raise ValueError(f"band.high: must be a number in [1, 10], got {self.high!r}")
        if isinstance(self.repack_share, bool) or not (isinstance(self.repack_share, (int, float))
                                                       and 0 <= self.repack_share <= 1):
            raise ValueError(f"band.repack_share: must be a number in [0, 1], got {self.repack_share!r}")


@dataclass
class _Gpu:
    """A GPU while it is re-planned: its duty cycle, members (session -> [rate, batch]) and what it held before."""

    gid: int
    duty: float
    members: dict[str, list] = field(default_factory=dict)
    before: frozenset[str] = frozenset()  # models it held in the current plan (loaded: free to keep)

    def models(self, dms: dict[str, Demand]) -> set[str]:
        return {dms[s].session.model for s in self.members}


@dataclass(frozen=True)
class IncrementalResult:
    """The incremental GPUs, and what the re-plan did: sessions kept and resized, GPUs emptied by consolidation,
    model loads (a model placed on a GPU that did not hold it)."""

    gpus: list[GpuPlan]
    kept: tuple[str, ...]
    resized: tuple[str, ...]
    consolidated: int
    loads: int


def _batch(rate: float, duty: float) -> int:
    """``ceil(r*d)``, at least 1, with ``squishy.ceil_batch``'s float tolerance."""
    return max(math.ceil(rate * duty / 1000.0 - 1e-7), 1)


def _fits(g: _Gpu, dms: dict[str, Demand], add: tuple[str, float] | None, duty: float, memory_mb: float
          ) -> tuple[bool, dict[str, int], float]:
    """Whether ``g`` with ``add`` (session, rate) stays feasible at duty cycle ``duty`` (<= its own); the batches
    it would run and its occupancy. Members keep their batch unless the shorter cycle needs a smaller one."""
    batches: dict[str, int] = {}
    load = mem = 0.0
    items = [(s, r + (add[1] if add is not None and s == add[0] else 0.0), b) for s, (r, b) in g.members.items()]
    if add is not None and add[0] not in g.members:
        items.append((add[0], add[1], 0))
    for s, r, b in items:
        dm = dms[s]
        p = dm.profile
        need = _batch(r, duty)
        # A shorter cycle shrinks every batch to what it collects; the same cycle keeps the batches.
        nb = need if b == 0 or duty < g.duty - _TOL else max(b, need)
        if nb > p.max_batch or duty + float(p.lat_ms[nb]) > dm.budget_ms * (1 + _TOL):
            return False, {}, 0.0
        batches[s] = nb
        load += float(p.lat_ms[nb])
        mem += float(p.mem_mb[nb])
    ok = load <= duty * (1 + _TOL) and mem <= memory_mb * (1 + 1e-12)
    return ok, batches, load / duty


def _set(g: _Gpu, batches: dict[str, int], duty: float, add: tuple[str, float] | None) -> None:
    if add is not None:
        r0 = g.members[add[0]][0] if add[0] in g.members else 0.0
        g.members[add[0]] = [r0 + add[1], 0]
    g.duty = duty
    for s, b in batches.items():
        g.members[s][1] = b


def _remove(gpus: list[_Gpu], session: str) -> list[_Gpu]:
    homes = [g for g in gpus if session in g.members]
    for g in homes:
        del g.members[session]
    return homes


def _place_residual(gpus: list[_Gpu], dms: dict[str, Demand], name: str, rate: float, duty: float,
                    memory_mb: float, new_id: list[int], loaded_only: bool = False) -> bool:
    """A residual (rate, own duty cycle): merge where its model is loaded, else open on an empty GPU that held
    it, else merge best-fit anywhere, else reuse any empty GPU, else a new GPU. Best fit: highest occupancy.
    ``loaded_only``: only the first two (no model load); returns whether it was placed."""
    model = dms[name].session.model
    loaded_fits: list[tuple[float, _Gpu, dict[str, int], float]] = []  # merges where the model is loaded
    other_fits: list[tuple[float, _Gpu, dict[str, int], float]] = []  # merges that load it
    for g in gpus:
        if not g.members:
            continue
        d = min(g.duty, duty)
        ok, batches, occ = _fits(g, dms, (name, rate), d, memory_mb)
        if ok:
            loaded = model in g.before or model in g.models(dms)
            # Prefer merges that keep the GPU's cycle (its sessions keep their batches), then occupancy.
            (loaded_fits if loaded else other_fits).append((occ + (1.0 if d >= g.duty - _TOL else 0.0), g, batches, d))
    if loaded_fits:
        _occ, g, batches, d = max(loaded_fits, key=lambda t: (t[0], -t[1].gid))
        _set(g, batches, d, (name, rate))
        return True
    empty = [g for g in gpus if not g.members]
    holding = [g for g in empty if model in g.before]
    if holding:
        g = min(holding, key=lambda g: g.gid)
        g.duty, g.members = duty, {name: [rate, _batch(rate, duty)]}
        return True
    if loaded_only:
        return False
    if other_fits:
        _occ, g, batches, d = max(other_fits, key=lambda t: (t[0], -t[1].gid))
        _set(g, batches, d, (name, rate))
        return True
    g = min(empty, key=lambda g: g.gid) if empty else None
    if g is None:
        g = _Gpu(new_id[0], duty)
        new_id[0] += 1
        gpus.append(g)
    g.duty, g.members = duty, {name: [rate, _batch(rate, duty)]}
    return True


def _room(g: _Gpu, dms: dict[str, Demand], name: str, memory_mb: float) -> tuple[float, int]:
    """The most rate of ``name`` that ``g`` can take on top of what it gives it, at its own duty cycle (its other
    members keep their batches), and the batch that takes it."""
    dm = dms[name]
    p = dm.profile
    load = mem = 0.0
    for s, (_r, b) in g.members.items():
        if s != name:
            load += float(dms[s].profile.lat_ms[b])
            mem += float(dms[s].profile.mem_mb[b])
    d = g.duty
    lat_cap = min(d - load, dm.budget_ms - d) * (1 + 1e-12)
    b = min(int(np.searchsorted(p.lat_ms[1:], lat_cap, side="right")),
            int(np.searchsorted(p.mem_mb[1:], (memory_mb - mem) * (1 + 1e-12), side="right")))
    r0 = g.members[name][0] if name in g.members else 0.0
    return max(b * 1000.0 / d - r0, 0.0), b


def _fill_loaded(gpus: list[_Gpu], dms: dict[str, Demand], name: str, extra: float, memory_mb: float) -> float:
    """Put up to ``extra`` more rate of ``name`` into the room of GPUs that hold its model (no load, no other
    session changes): whole into the fullest GPU with room for it, else split, largest room first. Returns the
    rate left over."""
    model = dms[name].session.model
    loaded = [g for g in gpus if g.members and (model in g.before or model in g.models(dms))]
    rooms = [(x, b, g) for g in loaded for x, b in [_room(g, dms, name, memory_mb)] if x > 0 and b >= 1]
    whole = [t for t in rooms if t[0] >= extra * (1 - 1e-12)]
    if whole:
        rooms = [max(whole, key=lambda t: (sum(float(dms[s].profile.lat_ms[b]) for s, (_r, b) in t[2].members.items()
                                                if s != name) / t[2].duty, -t[2].gid))]
    else:
        rooms.sort(key=lambda t: (-t[0], t[2].gid))
    for x, _b, g in rooms:
        if extra <= 1e-9:
            break
        take = min(x, extra)
        r0 = g.members[name][0] if name in g.members else 0.0
        g.members[name] = [r0 + take, _batch(r0 + take, g.duty)]
        extra -= take
    return max(extra, 0.0)


def _saturated(dm: Demand, memory_mb: float) -> tuple[int, float, float]:
    """The session's whole-GPU batch B, its throughput B/l(B) (req/s) and cycle l(B)."""
    b = saturated_batch(dm.profile, dm.budget_ms, memory_mb)
    lat = float(dm.profile.lat_ms[b])
    return b, b * 1000.0 / lat, lat


def _residual_duty(dm: Demand, rate: float, memory_mb: float) -> float:
    """The duty cycle of ``rate`` of the session alone on a GPU (``squishy.residual_for``)."""
    return residual_for(dm.profile, dm.budget_ms, rate, saturated_batch(dm.profile, dm.budget_ms, memory_mb))[1]


def _take_empty(gpus: list[_Gpu], model: str, any_model: bool) -> _Gpu | None:
    empty = [g for g in gpus if not g.members]
    holding = [g for g in empty if model in g.before]
    pool = holding or (empty if any_model else [])
    return min(pool, key=lambda g: g.gid) if pool else None


def _new(gpus: list[_Gpu], new_id: list[int], duty: float) -> _Gpu:
    g = _Gpu(new_id[0], duty)
    new_id[0] += 1
    gpus.append(g)
    return g


def _shrink(allocs: list[tuple[_Gpu, float, int]], name: str, rate: float) -> None:
    """Give back allocations while the rest still sustains ``rate``: whole GPUs of the session first (each frees a
    GPU), then its largest shares; the rest share ``rate`` by capacity, each at the batch its share needs."""
    caps = [(b * 1000.0 / g.duty, g) for g, _r, b in allocs]
    total = sum(c for c, _ in caps)
    keep = []
    for c, g in sorted(caps, key=lambda t: (len(t[1].members) > 1, -t[0], t[1].gid)):
        if total - c >= rate * (1 + 1e-9):
            del g.members[name]
            total -= c
        else:
            keep.append((c, g))
    for c, g in keep:
        r = rate * c / total
        g.members[name] = [r, min(g.members[name][1], _batch(r, g.duty))]  # a smaller batch frees cycle time


def _working(previous: Plan, dms: dict[str, Demand]) -> tuple[list[_Gpu], dict[str, list[tuple[_Gpu, float, int]]]]:
    """The current plan as working GPUs, and per session its allocations there (GPU, rate, batch). Allocations of
    sessions that left, or whose model or SLO changed, are dropped (they are placed anew)."""
    gpus: list[_Gpu] = []
    where: dict[str, list[tuple[_Gpu, float, int]]] = {}
    for gp in previous.gpus:
        if gp.batching != "duty-cycle":
            continue
        g = _Gpu(gp.id, gp.duty_cycle_ms, before=frozenset(a.model for a in gp.allocations))
        for a in gp.allocations:
            dm = dms.get(a.session)
            if dm is None or dm.session.model != a.model or abs(dm.session.slo_ms - a.slo_ms) > 1e-9:
                continue
            g.members[a.session] = [a.rate, a.batch]
            where.setdefault(a.session, []).append((g, a.rate, a.batch))
        gpus.append(g)
    return gpus, where


def incremental_gpus(previous: Plan, demands: Sequence[Demand], memory_mb: float, band: Band | None = None,
                     target: int | None = None) -> IncrementalResult:
    """The next plan's GPUs for ``demands`` (the rates they need now), starting from ``previous``'s GPUs.

    A session inside its band keeps its GPUs and batches, serving ``min(capacity, high * rate)`` spread over them
    by capacity. Below the band it shrinks: it gives back whole GPUs, then shares, while the rest sustain
    ``high * rate``. Above it grows to ``high * rate``: its
    allocations fill to capacity, then whole GPUs at its saturated batch, then the room of GPUs that hold its
    model, and only what is left is packed as a residual (``_place_residual``). New sessions are split and
    placed the same way. With ``band.consolidate`` and a ``target`` GPU count (a from-scratch plan's) that the
    result exceeds, lightly loaded GPUs are emptied into the others' slack where that frees whole GPUs.
    GPU ids: the current ones, then new ones after the largest. Deterministic.
    """
    band = Band() if band is None else band
    dms = {dm.session.session: dm for dm in demands}
    if len(dms) != len(demands):
        raise ValueError("demands: session names must be unique")
    gpus, where = _working(previous, dms)
    kept: list[str] = []
    resized: list[str] = []
    grow: list[str] = []
    fresh: list[str] = []
    for name in sorted(dms):
        allocs, rate = where.get(name, []), dms[name].session.rate
        capacity = sum(b * 1000.0 / g.duty for g, _, b in allocs)
        if rate <= 0:
            _remove(gpus, name)
        elif not allocs:
            fresh.append(name)
        elif band.low * capacity <= rate <= capacity * (1 - 1e-9):
            serve = min(capacity, rate * band.high)
            for g, _r, b in allocs:
                g.members[name][0] = serve * (b * 1000.0 / g.duty) / capacity
            kept.append(name)
        elif rate < band.low * capacity:
            _shrink(allocs, name, rate * band.high)
            resized.append(name)
        else:
            grow.append(name)
            resized.append(name)
    new_id = [max((g.gid for g in gpus), default=-1) + 1]
    later_sat: list[tuple[str, int, float, float]] = []  # whole GPUs no empty GPU holding the model could take
    later_res: list[tuple[str, float]] = []  # residual rates no loaded GPU had room for
    growing = set(grow)
    for name in sorted(grow + fresh, key=lambda n: (-dms[n].session.rate, n)):
        dm = dms[name]
        extra = dm.session.rate * band.high
        for g, _r, _b in where.get(name, []) if name in growing else []:
            # Its allocations at capacity first (at the GPU's cycle and batch now: a merge may have shortened them).
            g.members[name][0] = g.members[name][1] * 1000.0 / g.duty
            extra -= g.members[name][0]
        big, tput, cycle = _saturated(dm, memory_mb)
        whole = math.floor(extra / tput + 1e-9)
        for _ in range(whole):
            g = _take_empty(gpus, dm.session.model, any_model=False)
            if g is None:
                later_sat.append((name, big, tput, cycle))
            else:
                g.duty, g.members = cycle, {name: [tput, big]}
        extra -= whole * tput
        if extra > 1e-9:
            extra = _fill_loaded(gpus, dms, name, extra, memory_mb)
        if extra > 1e-9 and not _place_residual(gpus, dms, name, extra, _residual_duty(dm, extra, memory_mb),
                                                memory_mb, new_id, loaded_only=True):
            later_res.append((name, extra))
    for name, big, tput, cycle in later_sat:
        g = _take_empty(gpus, dms[name].session.model, any_model=True) or _new(gpus, new_id, cycle)
        g.duty, g.members = cycle, {name: [tput, big]}
    for name, rate in sorted(later_res, key=lambda t: (-t[1], t[0])):
        _place_residual(gpus, dms, name, rate, _residual_duty(dms[name], rate, memory_mb), memory_mb, new_id)
    out = _to_plans([g for g in gpus if g.members], dms)
    consolidated = 0
    if band.consolidate and target is not None and len(out) > target:
        emptied = empty_gpus(out, list(dms.values()), memory_mb)
        if len(emptied) < len(out):
            consolidated = len(out) - len(emptied)
            out = sorted(emptied, key=lambda g: g.id)
    before = {g.gid: g.before for g in gpus}
    loads = sum(len({a.model for a in g.allocations} - before.get(g.id, frozenset())) for g in out)
    return IncrementalResult(out, tuple(kept), tuple(resized), consolidated, loads)


def _to_plans(gpus: list[_Gpu], dms: dict[str, Demand]) -> list[GpuPlan]:
    out = []
    for g in sorted(gpus, key=lambda g: g.gid):
        allocs, load, mem = [], 0.0, 0.0
        for s, (rate, b) in g.members.items():
            p = dms[s].profile
            b = max(int(b), _batch(rate, g.duty))
            load += float(p.lat_ms[b])
            mem += float(p.mem_mb[b])
            ps = dms[s].session
            allocs.append(Allocation(ps.session, ps.model, ps.slo_ms, b, rate))
        out.append(GpuPlan(g.gid, g.duty, load / g.duty, mem, tuple(allocs)))
    return out


def model_loads(previous: Plan | None, gpus: Sequence[GpuPlan]) -> int:
    """The fewest model loads any mapping of ``gpus`` onto the machines running ``previous`` can need: per model,
    the GPUs that run it beyond those that held it. A lower bound; identity-kept GPUs load exactly this."""
    held: dict[str, int] = {}
    for g in (previous.gpus if previous is not None else ()):
        for m in {a.model for a in g.allocations}:
            held[m] = held.get(m, 0) + 1
    need: dict[str, int] = {}
    for g in gpus:
        for m in {a.model for a in g.allocations}:
            need[m] = need.get(m, 0) + 1
    return sum(max(0, n - held.get(m, 0)) for m, n in need.items())
