"""Prefix batching (Nexus, SOSP 2019, section 6.3): models that share their first layers run that prefix once per
batch for all of them, then each suffix on its slice of the batch. Planning here; detection for torch models is
``nexus_lab.models.sharing.shared_prefix_length`` (re-exported). Pure and deterministic; never imports torch.

Planning model. The sessions of one prefix group with one SLO (rates ``R_i``, total ``R``) are packed as ONE
composite demand: at batch b the prefix runs once on b requests, then every suffix i on its slice
``b_i = ceil(b * R_i / R)``, back to back on the same GPU, so the composite's latency is
``l_P(b) + sum_i l_Si(b_i)`` and its memory one prefix copy ``m_P(b) + sum_i m_Si(b_i)``. Its budget is the
smallest of the members' ``L'``. Each GPU that gets the composite then holds one allocation for the prefix
session (batch b) and one per suffix session (batch ``b_i``, rate its share).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..models.sharing import shared_prefix_length
from ..profiles import ModelProfile
from ..workload import Workload
from .plan import Allocation, GpuPlan, PlannedSession
from .query import stage_cost
from .squishy import Demand, unservable_reason

__all__ = ["PrefixGroup", "composite_profile", "expand_prefix_gpus", "group_demands", "memory_saved",
           "prefix_profile", "prefix_session_name", "shared_prefix_length", "slice_batch", "suffix_model"]


# ---------------------------------------------------------------------------------------------- planning
def slice_batch(batch: int, share: float) -> int:
    """A suffix's slice of a prefix batch: ``ceil(b * R_i / R)`` (robust to float noise), at least 1."""
    return max(math.ceil(batch * share - 1e-9), 1)


def prefix_session_name(group: str, slo_ms: float) -> str:
    return f"{group}.prefix:{slo_ms:g}"


def suffix_model(model: str) -> str:
    """The model name a suffix allocation runs (the profile name the workload gives the suffix)."""
    return f"{model}.suffix"


def _profile(name: str, lat_ms: np.ndarray, mem_mb: np.ndarray, pre_us: tuple[float, float] = (0.0, 0.0),
             post_us: tuple[float, float] = (0.0, 0.0)) -> ModelProfile:
    """A profile from already-inflated tables for batches 1..B: zero std and safety 1.0, so nothing is inflated
    twice and (the tables being non-decreasing) ``lat_ms``/``mem_mb`` reproduce them."""
    return ModelProfile(name=name, device="composite", batches=np.arange(1, len(lat_ms) + 1),
                        latency_us=np.asarray(lat_ms) * 1000.0, std_us=np.zeros(len(lat_ms)),
                        memory_bytes=np.asarray(mem_mb) * 2**20, preprocess_us=pre_us, postprocess_us=post_us,
                        safety=1.0)


def prefix_profile(group: str, prefixes: Sequence[ModelProfile]) -> ModelProfile:
    """The group's prefix profile: members declare it each; plan with the element-wise worst of their tables
    over the batches all of them cover (identical declarations give the declared table back)."""
    top = min(p.max_batch for p in prefixes)
    lat = np.max([p.lat_ms[1:top + 1] for p in prefixes], axis=0)
    mem = np.max([p.mem_mb[1:top + 1] for p in prefixes], axis=0)
    return _profile(f"{group}.prefix", lat, mem)


def composite_profile(name: str, prefix: ModelProfile, suffixes: Sequence[ModelProfile],
                      shares: Sequence[float]) -> ModelProfile:
    """One profile for prefix + suffixes at batch b: ``l_P(b) + sum_i l_Si(ceil(b*s_i))``, memory likewise.

    Its largest batch is the largest b whose every slice fits its suffix's table.
    """
    top = prefix.max_batch
    for s, share in zip(suffixes, shares, strict=True):
        while top > 1 and slice_batch(top, share) > s.max_batch:
            top -= 1
    bs = np.arange(1, top + 1)
    lat = prefix.lat_ms[1:top + 1].copy()
    mem = prefix.mem_mb[1:top + 1].copy()
    for s, share in zip(suffixes, shares, strict=True):
        sl = np.minimum(np.maximum(np.ceil(bs * share - 1e-9), 1).astype(np.int64), s.max_batch)
        lat += s.lat_ms[sl]
        mem += s.mem_mb[sl]
    return _profile(name, lat, mem)


@dataclass(frozen=True, eq=False)
class PrefixGroup:
    """Sessions of one prefix group and SLO planned as one composite demand."""

    group: str
    prefix: Demand  # the prefix session: summed rate, the prefix profile, the composite's budget
    suffixes: tuple[Demand, ...]  # one per member session (its own name), with its suffix profile
    shares: tuple[float, ...]  # R_i / R
    composite: Demand  # what the packer sees; its session is the prefix session

    def to_dict(self, memory_saved_mb: float) -> dict[str, Any]:
        return {"group": self.group, "sessions": [s.session.session for s in self.suffixes],
                "prefix_session": self.prefix.session.session, "memory_saved_mb": memory_saved_mb}


def group_demands(dms: Sequence[Demand], workload: Workload, memory_mb: float | None = None
                  ) -> tuple[list[Demand], list[PrefixGroup]]:
    """Replace the sessions of each prefix group (same group and SLO, rate > 0, at least two) by one composite.

    A group is formed only when its composite is servable and needs no more GPUs (squishy cost: saturated GPUs
    plus residual occupancy, or that cost rounded up) than its members planned whole; otherwise they stay whole.
    Returns the demands to pack, in input order with each composite at its first member's place, and the groups.
    """
    mem = workload.device.memory_mb if memory_mb is None else memory_mb
    buckets: dict[tuple[str, float], list[int]] = {}
    for i, dm in enumerate(dms):
        spec = workload.models.get(dm.session.model)
        if spec is not None and spec.prefix is not None and dm.session.rate > 0:
            buckets.setdefault((spec.prefix.group, dm.session.slo_ms), []).append(i)
    first: dict[int, PrefixGroup] = {}
    grouped: set[int] = set()
    for (group, slo), idx in buckets.items():
        if len(idx) < 2:
            continue
        members = [dms[i] for i in idx]
        specs = [workload.models[m.session.model].prefix for m in members]
        total = sum(m.session.rate for m in members)
        shares = tuple(m.session.rate / total for m in members)
        budget = min(m.budget_ms for m in members)
        name = prefix_session_name(group, slo)
        pre = prefix_profile(group, [s.prefix for s in specs])
        comp = Demand(PlannedSession(name, pre.name, slo, total),
                      composite_profile(f"{group}.composite", pre, [s.suffix for s in specs], shares), budget)
        if unservable_reason(comp, mem) is not None:
            continue
        # Worth it when the composite needs no more GPUs: its squishy cost is lower, or rounds to no more whole
        # GPUs (then it still saves the prefix copies' memory). plan_workload keeps the whole-model plan anyway
        # if the packed result turns out larger.
        whole = sum(stage_cost(m.profile, m.session.rate, m.budget_ms, mem) for m in members)
        cost = stage_cost(comp.profile, total, budget, mem)
        if cost > whole + 1e-9 and math.ceil(cost - 1e-9) > math.ceil(whole - 1e-9):
            continue
        suffixes = tuple(Demand(PlannedSession(m.session.session, suffix_model(m.session.model), slo,
                                               m.session.rate), s.suffix, m.budget_ms)
                         for m, s in zip(members, specs, strict=True))
        first[idx[0]] = PrefixGroup(group, Demand(comp.session, pre, budget), suffixes, shares, comp)
        grouped.update(idx)
    out: list[Demand] = []
    groups: list[PrefixGroup] = []
    for i, dm in enumerate(dms):
        if i in first:
            out.append(first[i].composite)
            groups.append(first[i])
        elif i not in grouped:
            out.append(dm)
    return out, groups


def expand_prefix_gpus(gpus: Sequence[GpuPlan], groups: Sequence[PrefixGroup]) -> list[GpuPlan]:
    """Each composite allocation becomes the prefix session's allocation (batch b) followed by one allocation
    per suffix (batch ``ceil(b*R_i/R)``, rate its share); occupancy and memory are re-summed from the parts."""
    by_name = {g.prefix.session.session: g for g in groups}
    out: list[GpuPlan] = []
    for gpu in gpus:
        if not any(a.session in by_name for a in gpu.allocations):
            out.append(gpu)
            continue
        allocs: list[Allocation] = []
        load = gpu.occupancy * gpu.duty_cycle_ms
        mem = gpu.memory_mb
        for a in gpu.allocations:
            grp = by_name.get(a.session)
            if grp is None:
                allocs.append(a)
                continue
            comp, pre = grp.composite.profile, grp.prefix.profile
            load -= float(comp.lat_ms[a.batch])
            mem -= float(comp.mem_mb[a.batch])
            allocs.append(Allocation(a.session, pre.name, a.slo_ms, a.batch, a.rate, a.batch_timeout_ms))
            load += float(pre.lat_ms[a.batch])
            mem += float(pre.mem_mb[a.batch])
            for sfx, share in zip(grp.suffixes, grp.shares, strict=True):
                b = min(slice_batch(a.batch, share), sfx.profile.max_batch)
                s = sfx.session
                allocs.append(Allocation(s.session, s.model, s.slo_ms, b, a.rate * share, a.batch_timeout_ms))
                load += float(sfx.profile.lat_ms[b])
                mem += float(sfx.profile.mem_mb[b])
        out.append(GpuPlan(gpu.id, gpu.duty_cycle_ms, max(load, 0.0) / gpu.duty_cycle_ms, max(mem, 0.0),
                           tuple(allocs), gpu.batching))
    return out


def memory_saved(gpus: Sequence[GpuPlan], prefix_session: str, prefix: ModelProfile,
                 members: Sequence[str]) -> float:
    """MB saved by one prefix copy per GPU instead of one per model: on each GPU holding the prefix session,
    ``sum_i m_P(b_i) - m_P(b)`` over the suffix slices ``b_i`` there (each model would hold its own copy)."""
    names = set(members)
    saved = 0.0
    for gpu in gpus:
        head = [a for a in gpu.allocations if a.session == prefix_session]
        if not head:
            continue
        copies = sum(float(prefix.mem_mb[min(a.batch, prefix.max_batch)]) for a in gpu.allocations
                     if a.session in names)
        saved += copies - sum(float(prefix.mem_mb[a.batch]) for a in head)
    return saved


def members_of(raw: Mapping[str, Any]) -> list[str]:
    """Member session names of one ``plan.prefix_groups`` entry."""
    return [str(s) for s in raw.get("sessions", ())]
