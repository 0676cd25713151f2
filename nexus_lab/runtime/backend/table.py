"""A backend's model table: its part of the plan, compiled into duty-cycle slots, and the models its device holds.

A new part of the plan switches in without losing a request: load new models first, then switch the slots;
sessions that left keep being served (or early-dropped) for a grace period while routes switch, then drain; models
nothing planned uses any more are unloaded after that.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from .queues import SessionQueues
from .slots import PlainSlot, Slot, compile_slots

__all__ = ["DRAIN_GRACE_S", "ModelTable", "parse_gpu"]

DRAIN_GRACE_S = 2.0  # a removed session keeps accepting (and serving) requests this long: routes switch meanwhile


def parse_gpu(gpu: dict[str, Any] | None) -> tuple[float, list[dict[str, Any]]]:
    """Check one GPU of a plan (``GpuPlan.to_dict()``) and return its duty cycle (s) and allocations."""
    if gpu is None:
        return 0.0, []
    if not isinstance(gpu, dict):
        raise ValueError(f"gpu: must be a GpuPlan dict or None, got {type(gpu).__name__}")
    batching = gpu.get("batching", "duty-cycle")
    if batching != "duty-cycle":
        raise ValueError(f"gpu.batching: the runtime backend runs only 'duty-cycle' (Nexus) GPUs, got {batching!r}"
                         " (baseline batching runs in nexus_lab.sim only)")
    d = float(gpu.get("duty_cycle_ms", 0.0))
    allocs = list(gpu.get("allocations", ()))
    if allocs and not d > 0:
        raise ValueError(f"gpu.duty_cycle_ms: must be > 0, got {d}")
    for k, a in enumerate(allocs):
        for key in ("session", "model", "batch"):
            if key not in a:
                raise ValueError(f"gpu.allocations[{k}].{key}: missing")
        if int(a["batch"]) < 1:
            raise ValueError(f"gpu.allocations[{k}].batch: must be >= 1, got {a['batch']}")
    return d / 1000.0, allocs


def _session_table(allocs: list[dict[str, Any]], sessions: dict[str, dict] | None) -> dict[str, dict[str, Any]]:
    """The sessions of a plan part, completed from its allocations; ``ValueError`` names a bad entry."""
    table = dict(sessions or {})
    for a in allocs:
        if a["session"] not in table:
            slo = float(a.get("slo_ms", 0.0))
            table[a["session"]] = {"model": a["model"], "slo_ms": slo, "budget_ms": slo}
    for name, s in table.items():
        if float(s.get("slo_ms", 0)) <= 0:
            raise ValueError(f"sessions[{name!r}].slo_ms: must be > 0, got {s.get('slo_ms')}")
    return table


class ModelTable:
    """What the backend runs: ``slots`` (the planned duty cycle), ``draining`` (slots of removed sessions, served
    until their queues are empty) and the models loaded on the device, with the batch each was loaded for.

    ``on_device(fn, *args)`` runs a call on the device thread; ``work_conserving`` lets bursts grow batches.
    """

    def __init__(self, device: Any, on_device: Callable[..., Awaitable[Any]], work_conserving: bool) -> None:
        self.device = device
        self._on_device = on_device
        self.work_conserving = work_conserving
        self.version = -1
        self.gpu: dict[str, Any] | None = None
        self.duty_s = 0.0
        self.slots: list[Slot] = []
        self.draining: list[Slot] = []
        self.loaded: dict[str, int] = {}
        self._unload_pending: set[str] = set()

    def reply(self, error: str | None) -> dict[str, Any]:
        return {"version": self.version, "loaded": sorted(self.loaded), "error": error}

    def pending_work(self) -> bool:
        """Drained slots or unloads still wait for their time (the duty cycle wakes up for them)."""
        return bool(self.draining or self._unload_pending)

    def in_use(self) -> set[str]:
        """The models the planned and the draining slots run."""
        return {m for slot in self.slots + self.draining for m in slot.device_models}

    async def apply(self, gpu: dict[str, Any] | None, sessions: dict[str, dict] | None, version: int,
                    prefix_groups: list[dict[str, Any]] | None, profiles: dict[str, Any] | None,
                    queues: SessionQueues, floor_on: bool, pressure: bool) -> str | None:
        """Switch to a new part of the plan; the error that kept the old part in force, or None."""
        try:
            duty_s, allocs = parse_gpu(gpu)
            table = _session_table(allocs, sessions)
        except (ValueError, TypeError, KeyError) as exc:
            return str(exc)
        register = getattr(self.device, "register_profile", None)
        for model, prof in (profiles or {}).items():
            if register is None:
                break
            try:
                register(model, prof)
            except (KeyError, ValueError, TypeError) as exc:
                return f"profiles[{model!r}]: {exc}"
        need: dict[str, int] = {}
        for a in allocs:
            need[a["model"]] = max(need.get(a["model"], 0), int(a["batch"]))
        # 1. load new models (and grow the batch of loaded ones) before any route reaches them
        in_use = self.in_use()
        fresh: list[str] = []
        for model, b in need.items():
            if self.loaded.get(model, 0) >= b:
                continue
            try:
                await self._on_device(self.device.load, model, b)
            except Exception as exc:  # DeviceOutOfMemory and unknown models alike: report, keep the old plan
                self._unload_pending |= {m for m in fresh if m not in in_use}  # loaded for nothing
                return f"{type(exc).__name__}: {exc}"
            if model not in self.loaded:
                fresh.append(model)
            self.loaded[model] = b
        self._unload_pending -= set(need)
        # 2. switch the duty cycle
        slots = compile_slots(allocs, prefix_groups, duty_s, self._latency_ms, self._max_batch, self.work_conserving)
        for slot in slots:
            slot.refloor(floor_on and self.work_conserving, pressure)
        planned = [s for slot in slots for s in slot.sessions]
        removed = [slot for slot in self.slots if not set(slot.sessions) <= set(planned)]
        queues.plan(table, planned, {k: v for slot in slots for k, v in slot.admission().items()},
                    [s for slot in removed for s in slot.sessions if s not in planned], DRAIN_GRACE_S)
        self.draining = [d for d in self.draining if not set(d.sessions) & set(planned)] + removed
        self.slots = slots
        self.duty_s = duty_s
        self.gpu = gpu
        self.version = int(version)
        # 3. models no longer planned are unloaded once their sessions have drained (``retire``)
        self._unload_pending |= set(self.loaded) - set(need)
        return None

    def retire(self, queues: SessionQueues) -> None:
        """Forget drained slots of removed sessions and unload models nothing planned uses any more."""
        now = time.time()
        keep: list[Slot] = []
        for slot in self.draining:
            if any(queues.queues.get(s) or queues.accepting(s, now) for s in slot.sessions):
                keep.append(slot)
            else:
                for s in slot.sessions:
                    queues.forget(s)
        self.draining = keep
        if self._unload_pending:
            busy = self.in_use()
            for model in list(self._unload_pending):
                if model not in busy:
                    self._unload_pending.discard(model)
                    self.loaded.pop(model, None)
                    self._on_device(self.device.unload, model)

    def refloor(self, on: bool, pressure: bool) -> None:
        """Recompute every slot's floor (the floor setting or the CPU pressure changed)."""
        for slot in self.slots:
            slot.refloor(on and self.work_conserving, pressure)

    def holds_ms(self) -> dict[str, float]:
        """Each planned session's hold (ms), for sessions with a floor: what a frontend may coalesce for."""
        return {sl.sessions[0]: 1000.0 * sl.hold_s() for sl in self.slots if sl.floor > 1}

    def floors(self) -> dict[str, int]:
        """Each planned plain session's floor (1: runs whatever is queued)."""
        return {sl.sessions[0]: sl.floor for sl in self.slots if isinstance(sl, PlainSlot)}

    def _latency_ms(self, model: str, batch: int) -> float:
        """``l(b)`` for early drop; a device that cannot tell (None) plans with 0, i.e. drops only what is late."""
        lat = self.device.batch_latency_ms(model, batch)
        return 0.0 if lat is None else float(lat)

    def _max_batch(self, model: str, default: int) -> int:
        """The largest batch the model's profile covers (simulated devices); ``default`` when the device has none."""
        profile = getattr(self.device, "profile", None)
        if profile is None:
            return default
        try:
            return int(profile(model).max_batch)
        except (KeyError, ValueError, AttributeError):
            return default
