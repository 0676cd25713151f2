"""The steps of a backend's duty cycle: a plain session's batch, or a prefix unit (prefix once, then each suffix).

Both kinds answer one question, ``form(queues, now)``: a ``Batch`` to run now (with its formed time and planned
duration), a ``Hold`` until a time (a batch below its floor waits for company), or None (nothing queued). The
rules are the shared ones of ``nexus_lab.batching`` that the simulator calls too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...batching import (
    FLOOR_SLACK,
    PRESSURE_SLACK,
    batch_floor,
    burst_limit,
    burst_take,
    floor_hold_s,
    form_prefix_unit,
    held_until,
)
from .queues import Req, SessionQueues

__all__ = ["BURST_MARGIN_S", "Batch", "Hold", "PlainSlot", "PrefixSlot", "Slot", "compile_slots"]

BURST_MARGIN_S = 0.001  # a grown batch leaves its oldest request this much slack for runtime overheads

#: ``l(n)`` in ms of a model on the device (0 when the device cannot tell) and its profile's largest batch.
LatencyMs = Callable[[str, int], float]
MaxBatch = Callable[[str, int], int]


@dataclass(frozen=True, slots=True)
class Batch:
    """A batch to run now: each member session's requests, when it was formed and how long the plan says it
    lasts (its lateness against that is the backend's overrun)."""

    parts: list[list[Req]]
    formed_at: float
    planned_s: float


@dataclass(frozen=True, slots=True)
class Hold:
    """Nothing runs now; a batch below its floor must run at ``until`` (``time.time()``) if no company comes."""

    until: float


def _table(latency_ms: LatencyMs, model: str, top: int) -> np.ndarray:
    """``l(n)`` in seconds for n = 0..top."""
    return np.array([0.0] + [latency_ms(model, k) / 1000.0 for k in range(1, top + 1)])


@dataclass(eq=False)
class PlainSlot:
    """One session's batch. ``table`` is ``l(n)`` (s) for n = 0..the burst limit; ``floor`` the smallest batch
    worth running now (1: whatever is queued), set by ``refloor``."""

    session: str
    model: str
    batch: int
    table: np.ndarray
    duty_s: float
    burst: bool
    floor: int = 1

    @property
    def sessions(self) -> list[str]:
        return [self.session]

    @property
    def models(self) -> list[str]:
        return [self.model]

    @property
    def device_models(self) -> list[str]:
        """The models this slot runs on the device."""
        return [self.model]

    def admission(self) -> dict[str, tuple[int, float, float]]:
        return {self.session: (self.batch, float(self.table[self.batch]), self.duty_s)}

    def refloor(self, on: bool, pressure: bool) -> None:
        """The floor under the current setting: under CPU pressure nearer the planned batch."""
        slack = PRESSURE_SLACK if pressure else FLOOR_SLACK
        self.floor = batch_floor(self.table, self.batch, slack) if on else 1

    def hold_s(self) -> float:
        return floor_hold_s(self.table, self.floor, self.duty_s)

    def form(self, queues: SessionQueues, now: float) -> Batch | Hold | None:
        q, w = queues.window(self.session, now, self.batch, self.table)
        take = w.take
        if not take:
            return None
        until = held_until(take, self.floor, q[0].start, self.hold_s())
        if until is not None and now < until:  # wait for company, counted from the oldest request's send time
            return Hold(until)
        if self.burst and take == self.batch and len(q) > take:
            # a Poisson burst: grow the batch while the oldest request still makes its deadline; the excess
            # would otherwise wait a whole turn more
            take = burst_take(q[0].deadline - BURST_MARGIN_S, now, len(q), take, self.table)
        return Batch([[q.popleft() for _ in range(take)]], now, float(self.table[take]))

    def launch(self, device: Any, payload: Callable[[list[Req]], Any], parts: list[list[Req]]) -> tuple[Any, ...]:
        """The device call of a batch: ``(fn, *args)``."""
        return (device.run_batch, self.model, payload(parts[0]))

    def split(self, outputs: Any) -> list[Any]:
        """The outputs of a batch, one entry per non-empty part."""
        return [outputs]


@dataclass(eq=False)
class PrefixSlot:
    """A prefix group: the prefix model once on every member's batch, then each member's suffix on its slice."""

    prefix_model: str
    sessions: list[str]
    models: list[str]
    batches: list[int]
    prefix_table: np.ndarray
    suffix_tables: list[np.ndarray]
    full_s: float  # the planned unit: l_P(b_P) + sum_i l_Si(b_i), each member's admission latency
    duty_s: float
    floor: int = field(default=1, init=False)  # prefix units never hold

    @property
    def device_models(self) -> list[str]:
        return [self.prefix_model, *self.models]

    def admission(self) -> dict[str, tuple[int, float, float]]:
        return {s: (b, self.full_s, self.duty_s) for s, b in zip(self.sessions, self.batches, strict=True)}

    def refloor(self, on: bool, pressure: bool) -> None:
        """Prefix units run whatever is queued."""

    def hold_s(self) -> float:
        return 0.0

    def form(self, queues: SessionQueues, now: float) -> Batch | None:
        qs = [queues.queues.get(s) for s in self.sessions]

        def member(i: int, ahead: float, suffix: Sequence[float] | np.ndarray) -> Any:
            return queues.window(self.sessions[i], now, self.batches[i], ahead + suffix)[1]

        windows, planned = form_prefix_unit([len(q) if q else 0 for q in qs], self.batches, self.prefix_table,
                                            self.suffix_tables, member)
        if not windows:
            return None
        parts = [[q.popleft() for _ in range(w.take)] if q else [] for q, w in zip(qs, windows, strict=True)]
        return Batch(parts, now, planned) if any(parts) else None

    def launch(self, device: Any, payload: Callable[[list[Req]], Any], parts: list[list[Req]]) -> tuple[Any, ...]:
        live = [k for k, p in enumerate(parts) if p]
        return (device.run_prefix_batch, self.prefix_model, [self.models[k] for k in live],
                payload([r for k in live for r in parts[k]]), [len(parts[k]) for k in live])

    def split(self, outputs: Any) -> list[Any]:
        return list(outputs)


Slot = PlainSlot | PrefixSlot


def compile_slots(allocs: Sequence[dict[str, Any]], prefix_groups: Sequence[dict[str, Any]] | None, duty_s: float,
                  latency_ms: LatencyMs, max_batch: MaxBatch, work_conserving: bool) -> list[Slot]:
    """The duty cycle as slots, in allocation order; a prefix allocation takes its group's suffixes along.

    A prefix group is recognised from ``prefix_groups`` (``plan.prefix_groups``) when given, else by the
    planner's naming: an allocation of model ``<group>.prefix`` followed by ``<model>.suffix`` allocations.
    A work-conserving backend lets a burst grow a plain batch up to ``batching.burst_limit``.
    """
    groups = {g["prefix_session"]: set(g["sessions"]) for g in (prefix_groups or ())}
    slots: list[Slot] = []
    i = 0
    while i < len(allocs):
        a = allocs[i]
        members: list[dict[str, Any]] = []
        if a["session"] in groups or (not groups and str(a["model"]).endswith(".prefix")):
            j = i + 1
            while j < len(allocs) and (allocs[j]["session"] in groups.get(a["session"], ())
                                       or (not groups and str(allocs[j]["model"]).endswith(".suffix"))):
                members.append(allocs[j])
                j += 1
        if members:
            pm, pb = a["model"], int(a["batch"])
            batches = [int(m["batch"]) for m in members]
            full = latency_ms(pm, pb) + sum(latency_ms(m["model"], b) for m, b in zip(members, batches, strict=True))
            slots.append(PrefixSlot(pm, [m["session"] for m in members], [m["model"] for m in members], batches,
                                    _table(latency_ms, pm, max(pb, sum(batches))),
                                    [_table(latency_ms, m["model"], b) for m, b in zip(members, batches, strict=True)],
                                    full / 1000.0, duty_s))
            i = j
            continue
        model, b = a["model"], int(a["batch"])
        top = burst_limit(b, max_batch(model, 2 * b)) if work_conserving else b
        slots.append(PlainSlot(a["session"], model, b, _table(latency_ms, model, top), duty_s, work_conserving))
        i += 1
    return slots

