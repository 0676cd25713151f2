"""A backend's duty cycle: each slot takes its turn, its batch runs on the device, its requests are replied to.

Work-conserving by default (a turn starts as soon as the device frees, each slot at most once per round, so a
request still waits at most one cycle of planned batches: the plan's ``d + l(b) <= L'`` holds); with
``work_conserving=False`` a cycle starts every ``d`` (the paper's fixed cycle). Pipelined on a device thread: while
the device runs batch k, the event loop replies to batch k-1 and reads arriving messages. Inline (the device is
the host's CPU) each batch runs on the event loop and is replied to at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .queues import Req, SessionQueues
from .slots import Batch, Hold, Slot
from .stats import BackendStats
from .table import ModelTable

logger = logging.getLogger("nexus_lab.backend")

__all__ = ["DutyCycle"]


def _stack(payloads: list[Any]) -> Any:
    """Stack a batch's inputs into one array when they are arrays of one shape and dtype; else pass the list."""
    first = payloads[0]
    if isinstance(first, np.ndarray):
        shape, dtype = first.shape, first.dtype
        if all(isinstance(p, np.ndarray) and p.shape == shape and p.dtype == dtype for p in payloads):
            return np.stack(payloads)
    return payloads


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[float, float, Any]:
    """Runs on the device thread: the call and its busy interval (for utilization and the batch trace)."""
    t0 = time.time()
    out = fn(*args)
    return t0, time.time(), out


def _payloads(reqs: list[Req]) -> Any:
    return _stack([r.payload for r in reqs])


class DutyCycle:
    """The task that runs a backend's slots. ``arrival`` is set whenever a request is queued or the plan changes;
    ``on_device(fn, *args)`` runs a call on the device thread (a future); ``inline`` runs batches here."""

    def __init__(self, table: ModelTable, queues: SessionQueues, stats: BackendStats,
                 on_device: Callable[..., asyncio.Future], inline: bool, work_conserving: bool,
                 address: str) -> None:
        self.table = table
        self.queues = queues
        self.stats = stats
        self.inline = inline
        self.work_conserving = work_conserving
        self.arrival = asyncio.Event()
        self.closing = False
        self._on_device = on_device
        self._address = address
        self.prepost: Any = None  # ``prepost.PrePost``: results made on CPU threads beside the device

    async def run(self) -> None:
        """Round after round until closed; an idle backend sleeps until a request (or a retirement) is due."""
        while not self.closing:
            try:
                if not self.queues.any_queued():
                    await self._idle()
                    continue
                await self._round()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the duty cycle die: log and keep serving
                logger.exception("nexus backend duty cycle error on %s", self._address)
                await asyncio.sleep(0.01)

    async def _idle(self) -> None:
        self.table.retire(self.queues)
        self.arrival.clear()
        if self.queues.any_queued():
            return
        if self.table.pending_work():  # wake up to retire them after their grace
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.arrival.wait(), 0.25)
        else:
            await self.arrival.wait()

    async def _round(self) -> None:
        """Each slot's turn once; then wait for a held batch's company, or (fixed cycle) for the next cycle."""
        loop = asyncio.get_running_loop()
        cycle_start = loop.time()
        duty = self.table.duty_s
        hold_until = math.inf
        launched = False
        prev: tuple[Slot, Batch, asyncio.Future] | None = None
        for slot in self.table.slots + self.table.draining:
            turn = slot.form(self.queues, time.time())
            if isinstance(turn, Hold):
                hold_until = min(hold_until, turn.until)
            if not isinstance(turn, Batch):
                continue
            launched = True
            fut = self._launch(slot, turn)
            if prev is not None:
                self._finish(*prev)
                prev = None
            if fut.done():  # ran inline: reply now, then let the loop read and write
                self._finish(slot, turn, fut)
                await asyncio.sleep(0)
                continue
            await asyncio.wait([fut])
            prev = (slot, turn, fut)
        if prev is not None:
            self._finish(*prev)
        self.table.retire(self.queues)
        if not launched and hold_until < math.inf:  # every queue held back: wait for arrivals
            self.arrival.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.arrival.wait(), max(0.0, hold_until - time.time()))
            return
        wait = cycle_start + duty - loop.time()
        if not self.work_conserving and wait > 0 and self.queues.any_queued():
            await asyncio.sleep(wait)

    def _launch(self, slot: Slot, batch: Batch) -> asyncio.Future:
        """Start one batch on the device thread; inline, run it here and hand back a done future."""
        call = slot.launch(self.table.device, _payloads, batch.parts)
        if not self.inline:
            return self._on_device(_timed, *call)
        fut = asyncio.get_running_loop().create_future()
        try:
            fut.set_result(_timed(*call))
        except Exception as exc:  # the batch's requests fail with it (``_finish``); the backend keeps serving
            fut.set_exception(exc)
        return fut

    def _finish(self, slot: Slot, batch: Batch, fut: asyncio.Future) -> None:
        """Record one batch and its lateness, then reply to each of its requests (event loop)."""
        live = [k for k, p in enumerate(batch.parts) if p]
        exc = fut.exception()
        if exc is not None:
            text = f"model failed on {self._address}: {type(exc).__name__}: {exc}"
            for k in live:
                self.stats.failed(slot.sessions[k], len(batch.parts[k]))
                for r in batch.parts[k]:
                    r.sink.complete(r.id, "error", text)
            return
        t0, t1, outputs = fut.result()
        done = time.time()
        self.stats.busy(t1 - t0, done - batch.formed_at - batch.planned_s)
        for k, outs in zip(live, slot.split(outputs), strict=False):
            reqs = batch.parts[k]
            self.stats.served(slot.sessions[k], t0, t1, done, [r.start for r in reqs], [r.e2e for r in reqs])
            replies: dict[int, tuple[Any, list[Any], list[Any]]] = {}  # per sink: its ids and outputs
            for i, r in enumerate(reqs):
                group = replies.get(id(r.sink))
                if group is None:
                    group = replies[id(r.sink)] = (r.sink, [], [])
                group[1].append(r.id)
                group[2].append(outs[i] if outs is not None and i < len(outs) else None)
            for sink, rids, results in replies.values():
                if self.prepost is None:
                    sink.complete_ok(rids, results)
                else:
                    self.prepost.reply(slot.models[k], sink, rids, results)
