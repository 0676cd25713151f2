"""The GPU backend (Nexus section 6): a Dask ``WorkerPlugin`` that holds models on its device and runs its duty cycle.

Executes the plan it is given (no scheduling decisions); depends on the planner's plan data, the shared early-drop
policy and the device layer, never on the controller or the frontend.

Lifecycle: ``setup`` runs on the worker's event loop when the plugin is registered; it opens the device, starts the
duty-cycle task and adds the ``nexus_*`` handlers to ``worker.handlers``. Every handler and the duty cycle run on
the worker's event loop; the device runs on ONE dedicated executor thread (``run_in_executor``), so inference uses
one thread whatever the worker's ``nthreads``. ``teardown`` fails whatever is still queued and closes the device.

Examples
--------
>>> client.register_plugin(NexusBackend(device="simulated:titan-x-pascal"))  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin

from ..batching import (
    FLOOR_SLACK,
    PRESSURE_SLACK,
    DropReason,
    batch_floor,
    burst_take,
    cpu_pressure,
    early_drop_window,
)

logger = logging.getLogger("nexus_lab.backend")

__all__ = ["LATENCY_BUCKETS_MS", "NexusBackend", "parse_gpu"]

# Upper edges (ms) of the per-session latency histogram; the last bucket is open.
LATENCY_BUCKETS_MS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, math.inf)
_LAT_SAMPLES = 20000  # latency samples kept per session per stats window (for p50/p99)
BURST_MARGIN_S = 0.001  # a grown batch leaves its oldest request this much slack for runtime overheads
OVERRUN_WINDOW = 256  # recent batches whose lateness (finish - formed - planned l(b)) the stats report
PRESSURE_INTERVAL_S = 1.0  # how often a host-CPU backend checks whether the host's cores are short (``_watch_cpu``)
DRAIN_GRACE_S = 2.0  # a removed session keeps accepting (and serving) requests this long: routes switch meanwhile


class _Req:
    """One queued request. ``deadline`` is the device deadline: the end-to-end deadline less what must still
    happen after the batch (``_allowance_s``)."""

    __slots__ = ("deadline", "e2e", "id", "payload", "session", "sink", "start")

    def __init__(self, rid: Any, session: str, deadline: float, e2e: float, start: float, payload: Any,
                 sink: Any) -> None:
        self.id = rid
        self.session = session
        self.deadline = deadline
        self.e2e = e2e
        self.start = start
        self.payload = payload
        self.sink = sink


class _Deadlines:
    """A read-only view of a queue's budget deadlines, as ``early_drop_window`` wants them (no copy)."""

    __slots__ = ("q",)

    def __init__(self, q: deque) -> None:
        self.q = q

    def __len__(self) -> int:
        return len(self.q)

    def __getitem__(self, i: int) -> float:
        return self.q[i].deadline


class _MessageSink:
    """Collects the replies of one ``nexus_submit`` message; the handler returns when all have ended."""

    __slots__ = ("done", "n", "replies")

    def __init__(self, n: int, done: asyncio.Future) -> None:
        self.n = n
        self.replies: list[dict[str, Any]] = []
        self.done = done

    def complete(self, rid: Any, status: str, value: Any) -> None:
        key = "result" if status == "ok" else ("reason" if status == "dropped" else "error")
        self.replies.append({"id": rid, "status": status, key: _wire(value)})
        if len(self.replies) >= self.n and not self.done.done():
            self.done.set_result(self.replies)

    def complete_ok(self, rids: list[Any], outputs: list[Any]) -> None:
        for rid, out in zip(rids, outputs, strict=True):
            self.complete(rid, "ok", out)


class _StreamSink:
    """Replies of one frontend's persistent stream: batched into one message per wake-up of the writer task."""

    __slots__ = ("closed", "comm", "outbox", "wake")

    def __init__(self, comm: Any) -> None:
        self.comm = comm
        self.outbox: list[list[Any]] = []
        self.wake = asyncio.Event()
        self.closed = False

    def complete(self, rid: Any, status: str, value: Any) -> None:
        if self.closed:
            return
        self.outbox.append([rid, status, _wire(value)])  # lists: inproc comms unwrap serialized values in lists
        self.wake.set()

    def holds(self, holds_ms: dict[str, float]) -> None:
        """Tell the frontend how long this backend holds each session's small batches (``[None, "holds",
        {session: ms}]``): it coalesces that long for this backend."""
        if not self.closed:
            self.outbox.append([None, "holds", dict(holds_ms)])
            self.wake.set()

    def complete_ok(self, rids: list[Any], outputs: list[Any]) -> None:
        """A batch's results for this stream: arrays of one shape and dtype travel stacked, as one reply
        ``[ids, "oks", [dtype, shape, bytes]]`` (one msgpack field instead of a serialized frame per request)."""
        if self.closed:
            return
        first = outputs[0] if outputs else None
        if (len(rids) > 1 and isinstance(first, np.ndarray)
                and all(isinstance(o, np.ndarray) and o.shape == first.shape and o.dtype == first.dtype
                        for o in outputs)):
            arr = np.stack(outputs)  # raw bytes in the message: no serializer pass, no extra frame
            self.outbox.append([list(rids), "oks", [arr.dtype.str, list(arr.shape), arr.tobytes()]])
            self.wake.set()
            return
        for rid, out in zip(rids, outputs, strict=True):
            self.complete(rid, "ok", out)

    async def writer(self) -> None:
        try:
            while not self.closed:
                await self.wake.wait()
                self.wake.clear()
                if self.outbox:
                    out, self.outbox = self.outbox, []
                    await self.comm.write({"d": out})
        except Exception:  # the frontend went away: nothing left to reply to
            self.closed = True


def _wire(value: Any) -> Any:
    """Arrays travel as distributed's serialized frames (no pickle fallback warning, zero-copy)."""
    if isinstance(value, np.ndarray):
        from distributed.protocol import to_serialize

        return to_serialize(value)
    return value


class _Slot:
    """One step of the duty cycle: a session's batch, or a prefix group (prefix once, then each suffix)."""

    __slots__ = ("batches", "floor", "lat_s", "models", "prefix_model", "sessions", "suffix_tables", "table")

    def __init__(self, sessions: list[str], models: list[str], batches: list[int], prefix_model: str | None,
                 lat_s: Callable[[int], float], table: np.ndarray | None = None) -> None:
        self.sessions = sessions
        self.models = models
        self.batches = batches
        self.prefix_model = prefix_model
        self.lat_s = lat_s
        self.table = table  # l(n) in seconds for n = 0..N (N >= planned batch): burst growth looks it up
        self.suffix_tables: list[np.ndarray] = []  # prefix units: each suffix's l(n), n = 0..its batch
        self.floor = 1  # the smallest batch worth running when the device is the host's CPU (``batching.batch_floor``)


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


class _Stats:
    """Counters of one window (or the cumulative totals)."""

    def __init__(self) -> None:
        self.t0 = time.time()
        self.busy_s = 0.0
        self.batches: Counter[str] = Counter()
        self.batch_sizes: dict[str, Counter[int]] = {}
        self.arrivals: Counter[str] = Counter()
        self.served: Counter[str] = Counter()
        self.within_slo: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.drops: dict[str, Counter[str]] = {}
        self.lat_hist: dict[str, list[int]] = {}


class NexusBackend(WorkerPlugin):
    """One GPU backend per worker: loads the models of its part of the plan and serves their sessions.

    Parameters
    ----------
    device : str
        ``cpu``, ``cuda[:N]`` or ``simulated:<profile-set>`` (``nexus_lab.runtime.device.make_device``).
    threads : int
        Intra-op threads of the device (torch CPU); the device still runs on one executor thread.
    stats_interval_s : float
        How often the backend publishes a cumulative stats summary to the ``nexus-stats`` event topic (0: never).
    trace_len : int
        Batches kept in the bounded batch trace.
    work_conserving : bool
        True (default, as ``nexus_lab.sim`` runs a plan): the next cycle starts as soon as the previous one ends
        and a full batch may grow during a burst while its oldest request still makes its deadline. Each
        session still waits at most one cycle of planned batches, so the plan's ``d + l(b) <= L'`` holds.
        False: a cycle starts every ``duty_cycle_ms`` (the paper's fixed cycle) and batches never exceed the plan.
    batch_floor : bool or None
        Hold a work-conserving batch back while it is smaller than its floor (``batching.batch_floor``: the
        smallest batch whose cost per request is within ``FLOOR_SLACK`` of the planned batch's) until its oldest
        request has waited ``l(floor)`` or one duty cycle (the wait the plan allows), whichever is shorter.
        None (default): only when the device is the host's CPU, whose idle time is the CPU the dispatch path runs
        on, so tiny batches cost throughput twice; a GPU (or a simulated one) runs whatever is queued.
    inline : bool or None
        Run each batch on the event loop's own thread instead of the device thread. None (default): only when the
        device is the host's CPU. There the "device" is the cores the event loop also runs on, so a device
        thread overlaps nothing: it only adds a runnable thread that preempts the forward pass, plus two thread
        wake-ups per batch. A GPU (or a simulated one) runs on the device thread, overlapped with decoding and
        replies.
    """

    name = "nexus-backend"

    def __init__(self, device: str = "simulated:titan-x-pascal", threads: int = 1, stats_interval_s: float = 1.0,
                 trace_len: int = 2000, work_conserving: bool = True, batch_floor: bool | None = None,
                 inline: bool | None = None) -> None:
        if not isinstance(device, str) or not device:
            raise ValueError(f"device: must be a device spec string, got {device!r}")
        if int(threads) < 1:
            raise ValueError(f"threads: must be >= 1, got {threads}")
        if stats_interval_s < 0:
            raise ValueError(f"stats_interval_s: must be >= 0, got {stats_interval_s}")
        if int(trace_len) < 1:
            raise ValueError(f"trace_len: must be >= 1, got {trace_len}")
        self.device_spec = device
        self.threads = int(threads)
        self.stats_interval_s = float(stats_interval_s)
        self.trace_len = int(trace_len)
        self.work_conserving = bool(work_conserving)
        self.batch_floor = batch_floor
        self.inline = inline

    # ------------------------------------------------------------------------------------------ lifecycle
    async def setup(self, worker: Any) -> None:
        """Runs on the worker's event loop when registered (and on every worker that joins later)."""
        from .device import make_device

        self.worker = worker
        self.address = worker.address
        self.loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="nexus-device")
        self.device = await self.loop.run_in_executor(
            self._executor, lambda: make_device(self.device_spec, threads=self.threads))
        self._host_cpu = getattr(self.device, "kind", "") == "cpu"  # the device is the cores the loop runs on
        self._inline = self.inline if self.inline is not None else self._host_cpu
        self._pressure = False  # the host's cores are short: floors nearer the planned batch (``_watch_cpu``)
        self._hold_until = math.inf  # earliest time a held-back batch must run (``_form``)
        self.version = -1
        self.gpu: dict[str, Any] | None = None
        self.sessions: dict[str, dict[str, Any]] = {}
        self._queues: dict[str, deque[_Req]] = {}
        self._accept: dict[str, float] = {}  # session -> accept arrivals until (inf while planned)
        self._specs: dict[str, Any] = {}  # session -> the zoo input spec that raw-bytes payloads decode to
        # admission control: session -> (batch per cycle, l(b) in s, duty cycle in s), see ``_admits``
        self._cap: dict[str, tuple[int, float, float]] = {}
        self._slots: list[_Slot] = []
        self._draining: list[_Slot] = []  # slots of removed sessions, served until their queues are empty
        self._duty_s = 0.0
        self._loaded_batch: dict[str, int] = {}
        self._unload_pending: set[str] = set()
        self._win = _Stats()
        self._cum = _Stats()
        self._lat_samples: dict[str, list[float]] = {}
        self.trace: deque[tuple[str, float, float, int]] = deque(maxlen=self.trace_len)
        # Lateness of recent batches against their profile: a loaded host (sleep overshoot, a busy event loop)
        # finishes batches later than planned, which no plan accounts for; the stats report its p99 so a user sees
        # when the host, not the plan, costs SLO attainment.
        self._overrun: deque[float] = deque(maxlen=OVERRUN_WINDOW)
        self._formed: tuple[float, float] = (0.0, 0.0)  # (wall time, planned latency) of the batch just formed
        self._arrival = asyncio.Event()
        self._apply_lock = asyncio.Lock()
        self._closing = False
        self._streams: set[_StreamSink] = set()
        self._tasks = [asyncio.ensure_future(self._run_cycles())]
        if self.stats_interval_s > 0:
            self._tasks.append(asyncio.ensure_future(self._publish_stats()))
        if self.batch_floor is None and self._host_cpu:
            self._tasks.append(asyncio.ensure_future(self._watch_cpu()))
        worker.handlers.update({
            "nexus_apply": self.nexus_apply,
            "nexus_submit": self.nexus_submit,
            "nexus_stream": self.nexus_stream,
            "nexus_stats": self.nexus_stats,
            "nexus_state": self.nexus_state,
            "nexus_configure": self.nexus_configure,
        })
        _register_metrics(self)

    async def teardown(self, worker: Any) -> None:
        """Stop the duty cycle, fail every queued request (``backend closed``), release the device thread."""
        self._closing = True
        for t in self._tasks:
            t.cancel()
        for q in self._queues.values():
            while q:
                r = q.popleft()
                r.sink.complete(r.id, "error", f"backend on {self.address} closed")
        for s in list(self._streams):
            s.closed = True
        for h in ("nexus_apply", "nexus_submit", "nexus_stream", "nexus_stats", "nexus_state", "nexus_configure"):
            worker.handlers.pop(h, None)
        self._executor.submit(self.device.close)  # after any batch still on the device thread
        self._executor.shutdown(wait=False)
        _BACKENDS.discard(self)

    # ------------------------------------------------------------------------------------------ handlers
    async def nexus_apply(self, gpu: dict[str, Any] | None = None, sessions: dict[str, dict] | None = None,
                          version: int = 0, prefix_groups: list[dict[str, Any]] | None = None,
                          profiles: dict[str, Any] | None = None) -> dict[str, Any]:
        """Switch to a new part of the plan without losing a request (event loop).

        Load new models first (device thread), then switch the duty cycle; sessions that left keep being served
        (or early-dropped) for a grace period while routes switch, then their models are unloaded. A device
        out-of-memory is reported in ``error`` and the previous plan stays in force. ``prefix_groups`` is the
        plan's ``prefix_groups``; ``profiles`` (model -> profile mapping) registers a workload's inline profiles
        on a simulated device before loading.
        """
        async with self._apply_lock:
            try:
                duty_s, allocs = parse_gpu(gpu)
                sessions = dict(sessions or {})
                for a in allocs:
                    if a["session"] not in sessions:
                        sessions[a["session"]] = {"model": a["model"], "slo_ms": float(a.get("slo_ms", 0.0)),
                                                  "budget_ms": float(a.get("slo_ms", 0.0))}
                for name, s in sessions.items():
                    if float(s.get("slo_ms", 0)) <= 0:
                        raise ValueError(f"sessions[{name!r}].slo_ms: must be > 0, got {s.get('slo_ms')}")
            except (ValueError, TypeError, KeyError) as exc:
                return {"version": self.version, "loaded": sorted(self._loaded_batch), "error": str(exc)}
            register = getattr(self.device, "register_profile", None)
            for model, prof in (profiles or {}).items():
                if register is None:
                    break
                try:
                    register(model, prof)
                except (KeyError, ValueError, TypeError) as exc:
                    return {"version": self.version, "loaded": sorted(self._loaded_batch),
                            "error": f"profiles[{model!r}]: {exc}"}
            need: dict[str, int] = {}
            for a in allocs:
                need[a["model"]] = max(need.get(a["model"], 0), int(a["batch"]))
            # 1. load new models (and grow the batch of loaded ones) before any route reaches them
            in_use = {m for slot in self._slots + self._draining for m in (*slot.models, slot.prefix_model) if m}
            fresh: list[str] = []
            for model, b in need.items():
                if self._loaded_batch.get(model, 0) >= b:
                    continue
                try:
                    await self.loop.run_in_executor(self._executor, self.device.load, model, b)
                except Exception as exc:  # DeviceOutOfMemory and unknown models alike: report, keep the old plan
                    # what this apply loaded for nothing is unloaded by the duty cycle
                    self._unload_pending |= {m for m in fresh if m not in in_use}
                    self._arrival.set()
                    return {"version": self.version, "loaded": sorted(self._loaded_batch),
                            "error": f"{type(exc).__name__}: {exc}"}
                if model not in self._loaded_batch:
                    fresh.append(model)
                self._loaded_batch[model] = b
            self._unload_pending -= set(need)
            # 2. switch the duty cycle
            old_slots = self._slots
            slots = self._compile(allocs, sessions, prefix_groups, duty_s)
            planned = {s for slot in slots for s in slot.sessions}
            now = time.time()
            removed = [slot for slot in old_slots if not set(slot.sessions) <= planned]
            for slot in removed:
                for s in slot.sessions:
                    if s not in planned:
                        self._accept[s] = now + DRAIN_GRACE_S
            self._draining = [d for d in self._draining if not set(d.sessions) & planned] + removed
            for s in planned:
                self._accept[s] = math.inf
                self._queues.setdefault(s, deque())
            self.sessions = {**{k: v for k, v in self.sessions.items() if k not in planned}, **sessions}
            for name in planned:
                spec = _input_spec(str(self.sessions[name].get("model", "")))
                if spec is not None:
                    self._specs[name] = spec
            self._slots = slots
            self._duty_s = duty_s
            self.gpu = gpu
            self.version = int(version)
            # 3. models no longer planned are unloaded once their sessions have drained (duty-cycle task)
            self._unload_pending |= set(self._loaded_batch) - set(need)
            self._arrival.set()
            return {"version": self.version, "loaded": sorted(self._loaded_batch), "error": None,
                    "holds_ms": self._announce_holds()}

    async def nexus_submit(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Enqueue a coalesced message of requests; reply once every one has ended (event loop)."""
        done = self.loop.create_future()
        sink = _MessageSink(len(requests), done)
        if not requests:
            return []
        for r in requests:
            self._enqueue(r.get("id"), r.get("session"), r.get("deadline"), r.get("payload"), sink)
        return await done

    async def nexus_stream(self, comm: Any, **_: Any) -> Any:
        """A frontend's persistent duplex stream (event loop): messages ``{"r": [[id, session, deadline,
        payload], ...]}`` in, ``{"d": [[id, status, value], ...]}`` out, replies batched per wake-up; a batch's
        same-shaped array results come as one ``[[id, ...], "oks", [dtype, shape, bytes]]``."""
        from distributed.core import Status

        comm.allow_offload = False  # bounded messages: no sizeof walk before each reply (see Frontend._connect)
        sink = _StreamSink(comm)
        self._streams.add(sink)
        sink.holds(self._holds_ms())
        writer = asyncio.ensure_future(sink.writer())
        try:
            while not self._closing:
                msg = await comm.read()
                if not isinstance(msg, dict) or "r" not in msg:
                    break
                enqueue = self._enqueue
                for rid, session, deadline, payload in msg["r"]:
                    enqueue(rid, session, deadline, payload, sink)
        except Exception:  # the frontend closed the stream
            pass
        finally:
            sink.closed = True
            sink.wake.set()
            self._streams.discard(sink)
            await asyncio.gather(writer, return_exceptions=True)
            comm.abort()
        return Status.dont_reply

    async def nexus_stats(self) -> dict[str, Any]:
        """The stats window since the previous call plus cumulative counters (event loop); resets the window.

        Keys: ``t0``/``t1`` (window, time.time() s), ``utilization`` (device busy fraction of wall time),
        ``busy_s``, ``batches``, ``batch_sizes`` {size: count}, ``served``, ``within_slo``, ``drops`` {reason:
        count}, ``errors``, ``sessions`` {session: {``arrivals``, ``rate`` (arrivals/s), ``served``,
        ``within_slo``, ``errors``, ``drops``, ``batches``, ``batch_sizes``, ``latency_hist`` (counts per
        ``latency_buckets_ms`` upper edge, last open), ``p50_ms``, ``p99_ms``}}, ``cumulative`` (the same since
        the backend started, without percentiles), ``queues`` {session: length}, ``trace`` [(session, start,
        end, batch)] (bounded, this window), ``latency_buckets_ms``, ``version``, ``address``, ``device``.
        Latency is measured from the request's send time (its deadline less its SLO) to its reply.
        """
        out = self._stats_dict(reset=True)
        return out

    def _floor_of(self, slot: _Slot) -> int:
        """The slot's batch floor under the current ``batch_floor`` setting (None: on for a host-CPU device);
        prefix units and fixed duty cycles have none. Under CPU pressure (``_watch_cpu``) it is nearer the planned
        batch (``PRESSURE_SLACK`` instead of ``FLOOR_SLACK``)."""
        on = self.batch_floor if self.batch_floor is not None else self._host_cpu
        if not (on and self.work_conserving) or slot.prefix_model is not None or slot.table is None:
            return 1
        return batch_floor(slot.table, slot.batches[0], PRESSURE_SLACK if self._pressure else FLOOR_SLACK)

    def _hold_s(self, slot: _Slot) -> float:
        """How long a batch below the slot's floor waits for company: no longer than the floor batch itself
        takes (holding costs at most one short batch of latency), nor than a duty cycle (the wait the plan allows);
        0 without a floor."""
        return min(self._duty_s, float(slot.table[slot.floor])) if slot.floor > 1 and slot.table is not None else 0.0

    def _refloor(self) -> dict[str, float]:
        """Recompute every slot's floor (the floor setting or the CPU pressure changed) and tell the frontends;
        the holds told."""
        for slot in self._slots:
            slot.floor = self._floor_of(slot)
        return self._announce_holds()

    def _announce_holds(self) -> dict[str, float]:
        """Send the current holds down every frontend stream (after a plan, a floor switch or a pressure change);
        the holds sent, for the caller's reply."""
        holds = self._holds_ms()
        for sink in self._streams:
            sink.holds(holds)
        return holds

    async def _watch_cpu(self) -> None:
        """Every ``PRESSURE_INTERVAL_S``: the host's CPU busy fraction (psutil, all cores), and with it whether
        the floors are nearer the planned batch (``batching.cpu_pressure``). Runs where the device is the host's
        CPU and the floor is on by default."""
        import psutil

        psutil.cpu_percent(None)
        while not self._closing:
            await asyncio.sleep(PRESSURE_INTERVAL_S)
            try:
                pressure = cpu_pressure(self._pressure, psutil.cpu_percent(None) / 100.0)
                if pressure != self._pressure:
                    self._pressure = pressure
                    self._refloor()
            except Exception:  # never let the watcher die: the floors stay as they are
                logger.exception("nexus backend cpu watch error on %s", getattr(self, "address", "?"))

    def _holds_ms(self) -> dict[str, float]:
        """Each planned session's hold (ms), for sessions with a floor: what a frontend may coalesce for."""
        return {sl.sessions[0]: 1000.0 * self._hold_s(sl) for sl in self._slots if sl.floor > 1}

    async def nexus_configure(self, batch_floor: bool | None = None) -> dict[str, Any]:
        """Switch the batch floor live (``batch_floor`` as in the constructor; None: by device kind); returns each
        planned session's floor (1: runs whatever is queued)."""
        self.batch_floor = batch_floor
        holds = self._refloor()
        return {"floors": {sl.sessions[0]: sl.floor for sl in self._slots if sl.prefix_model is None},
                "holds_ms": holds}

    async def nexus_state(self) -> dict[str, Any]:
        """What a new controller needs to adopt the running plan."""
        return {"version": self.version, "gpu": self.gpu, "sessions": dict(self.sessions),
                "device": getattr(self.device, "name", self.device_spec), "address": self.address,
                "loaded": dict(self._loaded_batch), "holds_ms": self._holds_ms(),
                "memory_used_mb": float(self.device.memory_used_mb())}

    # ------------------------------------------------------------------------------------------ queueing
    def _enqueue(self, rid: Any, session: Any, deadline: Any, payload: Any, sink: Any) -> None:
        now = time.time()
        cum, win = self._cum, self._win
        cum.arrivals[session] += 1
        win.arrivals[session] += 1
        q = self._queues.get(session)
        if q is None or self._accept.get(session, 0.0) < now:
            self._drop(session, rid, sink, DropReason.NO_ROUTE)
            return
        try:
            e2e = float(deadline)
        except (TypeError, ValueError):
            sink.complete(rid, "error", f"request {rid!r}: deadline must be a number (time.time() seconds)")
            return
        s = self.sessions[session]
        slo = float(s["slo_ms"]) / 1000.0
        allowance = _allowance_s(s)
        if not self._admits(session, len(q), e2e - allowance - now):
            self._drop(session, rid, sink, DropReason.OVERLOAD)
            return
        if type(payload) is bytes and session in self._specs:  # decode here, overlapping the device thread
            spec = self._specs[session]
            try:
                payload = np.frombuffer(payload, dtype=spec.dtype).reshape(spec.shape)
            except ValueError as exc:
                sink.complete(rid, "error", f"request {rid!r}: payload bytes are not one {tuple(spec.shape)} "
                                            f"{spec.dtype} input: {exc}")
                return
        # Submit time is deadline - SLO for a session's own requests; a query stage's deadline chains from its
        # parent's, which may still lie ahead: then the latency counts from receipt here.
        q.append(_Req(rid, session, e2e - allowance, e2e, min(e2e - slo, time.time()), payload, sink))
        if not self._arrival.is_set():
            self._arrival.set()

    def _drop(self, session: str, rid: Any, sink: Any, reason: str) -> None:
        for st in (self._cum, self._win):
            st.drops.setdefault(session, Counter())[reason] += 1
        sink.complete(rid, "dropped", reason)

    def _compile(self, allocs: list[dict[str, Any]], sessions: dict[str, dict],
                 prefix_groups: list[dict[str, Any]] | None, duty_s: float) -> list[_Slot]:
        """The duty cycle as slots, in allocation order; a prefix allocation takes its group's suffixes along.

        A prefix group is recognised from ``prefix_groups`` (``plan.prefix_groups``) when given, else by the
        planner's naming: an allocation of model ``<group>.prefix`` followed by ``<model>.suffix`` allocations.
        """
        groups = {g["prefix_session"]: set(g["sessions"]) for g in (prefix_groups or ())}
        dev = self.device
        slots: list[_Slot] = []
        i = 0
        while i < len(allocs):
            a = allocs[i]
            members: list[dict[str, Any]] = []
            is_prefix = a["session"] in groups or (not groups and str(a["model"]).endswith(".prefix"))
            if is_prefix:
                j = i + 1
                while j < len(allocs) and (allocs[j]["session"] in groups.get(a["session"], ())
                                           or (not groups and str(allocs[j]["model"]).endswith(".suffix"))):
                    members.append(allocs[j])
                    j += 1
            if members:
                pm = a["model"]
                pb = int(a["batch"])
                full = _lat_ms(dev, pm, pb) + sum(_lat_ms(dev, m["model"], int(m["batch"])) for m in members)
                top = max(pb, sum(int(m["batch"]) for m in members))
                prefix_table = np.array([0.0] + [_lat_ms(dev, pm, k) / 1000.0 for k in range(1, top + 1)])
                slot = _Slot([m["session"] for m in members], [m["model"] for m in members],
                             [int(m["batch"]) for m in members], pm, lambda n, _f=full / 1000.0: _f, prefix_table)
                slot.suffix_tables = [np.array([0.0] + [_lat_ms(dev, m["model"], k) / 1000.0
                                                        for k in range(1, int(m["batch"]) + 1)]) for m in members]
                slots.append(slot)
                for m in members:
                    self._cap[m["session"]] = (int(m["batch"]), full / 1000.0, duty_s)
                i = j
                continue
            model, b = a["model"], int(a["batch"])
            top = b
            if self.work_conserving:  # a burst may grow a full batch up to twice the plan's, within the profile
                top = min(2 * b, _max_batch(dev, model, 2 * b))
            table = np.array([0.0] + [_lat_ms(dev, model, k) / 1000.0 for k in range(1, top + 1)])
            slot = _Slot([a["session"]], [model], [b], None, table.__getitem__, table)
            slot.floor = self._floor_of(slot)
            slots.append(slot)
            self._cap[a["session"]] = (b, float(table[b]), duty_s)
            i += 1
        return slots

    def _admits(self, session: str, queued: int, left_s: float) -> bool:
        """Admission control: a session gets ``b`` requests per duty cycle ``d``, so a request that finds
        ``queued`` ahead of it and has ``left_s`` until its device deadline can be served only if
        ``queued < b * (floor((left_s - l(b)) / d) + 1)``; else it is dropped on arrival (``overload``) instead of
        queueing behind work it cannot outlast. At least one full batch is always admitted. The request's own
        deadline counts, not the stage budget: a query stage whose parent finished early has more time, so a
        fan-out burst (one child per detected box) is not turned away."""
        cap = self._cap.get(session)
        if cap is None:
            return True
        b, lat_s, duty_s = cap
        cycles = max(1, math.floor(max(0.0, left_s - lat_s) / duty_s) + 1) if duty_s > 0 else 1
        return queued < b * cycles

    # ------------------------------------------------------------------------------------------ duty cycle
    async def _run_cycles(self) -> None:
        """The duty cycle (event loop): each session's batch in turn, then sleep until the next cycle starts.

        Pipelined: while the device thread runs batch k, the event loop post-processes batch k-1 (splits outputs,
        writes replies) and keeps decoding arriving messages, so only device time sits on the critical path.
        Inline (a host-CPU device, see ``inline``) each batch runs here and is replied to at once.
        """
        loop = self.loop
        prev: tuple[_Slot, list[list[_Req]], Any] | None = None
        while not self._closing:
            try:
                if not self._any_queued():
                    if prev is not None:
                        self._finish(*prev)
                        prev = None
                    self._retire()
                    self._arrival.clear()
                    if not self._any_queued():
                        if self._draining or self._unload_pending:  # wake up to retire them after their grace
                            with contextlib.suppress(asyncio.TimeoutError):
                                await asyncio.wait_for(self._arrival.wait(), 0.25)
                        else:
                            await self._arrival.wait()
                    continue
                cycle_start = loop.time()
                duty = self._duty_s
                self._hold_until = math.inf
                launched = False
                for slot in self._slots + self._draining:
                    batch = self._form(slot)
                    if batch is None:
                        continue
                    launched = True
                    formed = self._formed
                    fut = self._launch(slot, batch)
                    if prev is not None:
                        self._finish(*prev)
                        prev = None
                    if fut.done():  # ran inline: reply now, then let the loop read and write
                        self._finish(slot, batch, fut, formed)
                        await asyncio.sleep(0)
                        continue
                    await asyncio.wait([fut])
                    prev = (slot, batch, fut, formed)
                if prev is not None:
                    self._finish(*prev)
                    prev = None
                self._retire()
                if not launched and self._hold_until < math.inf:  # every queue held back: wait for arrivals
                    self._arrival.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._arrival.wait(), max(0.0, self._hold_until - time.time()))
                    continue
                wait = cycle_start + duty - loop.time()
                if not self.work_conserving and wait > 0 and self._any_queued():
                    await asyncio.sleep(wait)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the duty cycle die: log and keep serving
                logger.exception("nexus backend duty cycle error on %s", getattr(self, "address", "?"))
                prev = None
                await asyncio.sleep(0.01)

    def _any_queued(self) -> bool:
        return any(self._queues.values())

    def _form(self, slot: _Slot) -> list[list[_Req]] | None:
        """Early drop (shared policy) over each member queue of the slot; None when nothing runs."""
        if slot.prefix_model is not None:
            return self._form_prefix(slot)
        now = time.time()
        parts: list[list[_Req]] = []
        total = 0
        for session, b in zip(slot.sessions, slot.batches, strict=True):
            q = self._queues.get(session)
            if not q:
                parts.append([])
                continue
            w = early_drop_window(_Deadlines(q), now, b, slot.lat_s)
            for _ in range(w.drop):
                r = q.popleft()
                self._drop(session, r.id, r.sink, DropReason.DEADLINE)
            take = w.take
            if 0 < take < slot.floor:
                # wait for company, counted from the oldest request's send time: holding costs at most one short
                # batch of latency
                until = q[0].start + self._hold_s(slot)
                if now < until:
                    self._hold_until = min(self._hold_until, until)
                    parts.append([])
                    continue
            if take == b and len(q) > b and slot.table is not None and len(slot.table) > b + 1:
                # a Poisson burst: grow the batch while the oldest request still makes its deadline (the
                # simulator's burst_take); the excess would otherwise wait a whole turn more
                take = burst_take(q[0].deadline - BURST_MARGIN_S, now, len(q), b, slot.table)
            parts.append([q.popleft() for _ in range(take)])
            total += take
        if total:
            self._formed = (now, float(slot.table[total]) if slot.table is not None and total < len(slot.table)
                            else float(slot.lat_s(total)))
        return parts if total else None

    def _form_prefix(self, slot: _Slot) -> list[list[_Req]] | None:
        """A prefix unit's batches: sizes first as if nothing were dropped (an upper bound on the prefix batch
        N), then each member's early drop sees what really runs before its suffix ends: ``l_P(N)``, the earlier
        suffixes' batches, then its own ``l_Si(n)`` (as the simulator forms them)."""
        now = time.time()
        queues = [self._queues.get(s) for s in slot.sessions]
        sizes = [min(len(q), b) if q else 0 for q, b in zip(queues, slot.batches, strict=True)]
        if not sum(sizes):
            return None
        table = slot.table
        ahead = float(table[min(sum(sizes), len(table) - 1)])
        parts: list[list[_Req]] = []
        total = 0
        for session, q, b, sfx in zip(slot.sessions, queues, slot.batches, slot.suffix_tables, strict=True):
            if not q:
                parts.append([])
                continue
            w = early_drop_window(_Deadlines(q), now, b, ahead + sfx)
            for _ in range(w.drop):
                r = q.popleft()
                self._drop(session, r.id, r.sink, DropReason.DEADLINE)
            parts.append([q.popleft() for _ in range(w.take)])
            ahead += float(sfx[w.take])
            total += w.take
        if total:
            self._formed = (now, ahead)
        return parts if total else None

    def _launch(self, slot: _Slot, parts: list[list[_Req]]) -> asyncio.Future:
        """Start one batch on the device thread; inline (see ``inline``), run it here and hand back a done
        future."""
        dev = self.device
        if slot.prefix_model is None:
            call: tuple[Any, ...] = (dev.run_batch, slot.models[0], _stack([r.payload for r in parts[0]]))
        else:
            live = [k for k, p in enumerate(parts) if p]
            call = (dev.run_prefix_batch, slot.prefix_model, [slot.models[k] for k in live],
                    _stack([r.payload for k in live for r in parts[k]]), [len(parts[k]) for k in live])
        if not self._inline:
            return self.loop.run_in_executor(self._executor, _timed, *call)
        fut = self.loop.create_future()
        try:
            fut.set_result(_timed(*call))
        except Exception as exc:  # the batch's requests fail with it (``_finish``); the backend keeps serving
            fut.set_exception(exc)
        return fut

    def _finish(self, slot: _Slot, parts: list[list[_Req]], fut: asyncio.Future, formed: tuple[float, float]
                ) -> None:
        """Post-process one batch: record it and its lateness, then reply to each of its requests (event loop)."""
        exc = fut.exception()
        live = [k for k, p in enumerate(parts) if p]
        if exc is not None:
            text = f"model failed on {self.address}: {type(exc).__name__}: {exc}"
            for k in live:
                self._cum.errors[slot.sessions[k]] += len(parts[k])
                self._win.errors[slot.sessions[k]] += len(parts[k])
                for r in parts[k]:
                    r.sink.complete(r.id, "error", text)
            return
        t0, t1, outputs = fut.result()
        busy = t1 - t0
        self._cum.busy_s += busy
        self._win.busy_s += busy
        if slot.prefix_model is not None:
            per_part = list(outputs)
        else:
            per_part = [outputs]
        done = time.time()
        self._overrun.append(done - formed[0] - formed[1])
        for k, outs in zip(live, per_part, strict=False):
            session = slot.sessions[k]
            reqs = parts[k]
            n = len(reqs)
            self.trace.append((session, t0, t1, n))
            lats = self._lat_samples.setdefault(session, [])
            hist_c = self._cum.lat_hist.setdefault(session, [0] * len(LATENCY_BUCKETS_MS))
            hist_w = self._win.lat_hist.setdefault(session, [0] * len(LATENCY_BUCKETS_MS))
            within = 0
            replies: dict[int, tuple[Any, list[Any], list[Any]]] = {}  # per sink: its ids and outputs
            for st in (self._cum, self._win):
                st.batches[session] += 1
                st.batch_sizes.setdefault(session, Counter())[n] += 1
                st.served[session] += n
            for i, r in enumerate(reqs):
                out = outs[i] if outs is not None and i < len(outs) else None
                group = replies.get(id(r.sink))
                if group is None:
                    group = replies[id(r.sink)] = (r.sink, [], [])
                group[1].append(r.id)
                group[2].append(out)
                lat_ms = (done - r.start) * 1000.0
                if done <= r.e2e:
                    within += 1
                if len(lats) < _LAT_SAMPLES:
                    lats.append(lat_ms)
                j = _bucket(lat_ms)
                hist_c[j] += 1
                hist_w[j] += 1
            self._cum.within_slo[session] += within
            self._win.within_slo[session] += within
            for sink, rids, results in replies.values():
                sink.complete_ok(rids, results)

    def _retire(self) -> None:
        """Forget drained slots of removed sessions and unload models nothing planned uses any more."""
        now = time.time()
        keep: list[_Slot] = []
        for slot in self._draining:
            if any(self._queues.get(s) for s in slot.sessions) or any(self._accept.get(s, 0) >= now
                                                                     for s in slot.sessions):
                keep.append(slot)
            else:
                for s in slot.sessions:
                    if self._accept.get(s, 0) < now:
                        self._queues.pop(s, None)
                        self._accept.pop(s, None)
                        self._cap.pop(s, None)
        self._draining = keep
        if self._unload_pending:
            busy = {m for slot in self._slots + self._draining for m in slot.models}
            busy |= {slot.prefix_model for slot in self._slots + self._draining if slot.prefix_model}
            for model in list(self._unload_pending):
                if model not in busy:
                    self._unload_pending.discard(model)
                    self._loaded_batch.pop(model, None)
                    self.loop.run_in_executor(self._executor, self.device.unload, model)

    # ------------------------------------------------------------------------------------------ stats
    def _stats_dict(self, reset: bool) -> dict[str, Any]:
        now = time.time()
        win, cum = self._win, self._cum

        def block(st: _Stats, with_lat: bool) -> dict[str, Any]:
            wall = max(now - st.t0, 1e-9)
            sessions = set(st.arrivals) | set(st.served) | set(st.drops) | set(st.errors)
            per: dict[str, Any] = {}
            for s in sorted(sessions, key=str):
                rec: dict[str, Any] = {
                    "arrivals": st.arrivals.get(s, 0), "served": st.served.get(s, 0),
                    "within_slo": st.within_slo.get(s, 0), "errors": st.errors.get(s, 0),
                    "drops": dict(st.drops.get(s, {})), "batches": st.batches.get(s, 0),
                    "batch_sizes": {int(k): v for k, v in sorted(st.batch_sizes.get(s, {}).items())},
                    "latency_hist": list(st.lat_hist.get(s, [0] * len(LATENCY_BUCKETS_MS))),
                    "rate": st.arrivals.get(s, 0) / wall,
                }
                if with_lat:
                    lats = self._lat_samples.get(s)
                    rec["p50_ms"] = float(np.percentile(lats, 50)) if lats else None
                    rec["p99_ms"] = float(np.percentile(lats, 99)) if lats else None
                per[str(s)] = rec
            drops: Counter[str] = Counter()
            for c in st.drops.values():
                drops.update(c)
            sizes: Counter[int] = Counter()
            for c in st.batch_sizes.values():
                sizes.update(c)
            return {"t0": st.t0, "t1": now, "utilization": min(1.0, st.busy_s / wall), "busy_s": st.busy_s,
                    "batches": sum(st.batches.values()), "batch_sizes": {int(k): v for k, v in sorted(sizes.items())},
                    "served": sum(st.served.values()), "within_slo": sum(st.within_slo.values()),
                    "drops": dict(drops), "errors": sum(st.errors.values()), "sessions": per}

        out = block(win, True)
        out["cumulative"] = block(cum, False)
        out["queues"] = {str(s): len(q) for s, q in self._queues.items()}
        ov = self._overrun
        out["overrun_p99_ms"] = float(np.percentile(np.fromiter(ov, float, len(ov)), 99)) * 1000.0 if ov else None
        out["trace"] = list(self.trace)
        out["latency_buckets_ms"] = [*list(LATENCY_BUCKETS_MS[:-1]), None]
        out["version"] = self.version
        out["address"] = self.address
        out["device"] = getattr(self.device, "name", self.device_spec)
        if reset:
            self._win = _Stats()
            self._lat_samples = {}
            self.trace.clear()
        return out

    async def _publish_stats(self) -> None:
        """Every ``stats_interval_s``: a cumulative summary on the ``nexus-stats`` event topic."""
        while not self._closing:
            await asyncio.sleep(self.stats_interval_s)
            try:
                c = self._stats_dict(reset=False)["cumulative"]
                self.worker.log_event("nexus-stats", {"address": self.address, "version": self.version,
                                                      "utilization": c["utilization"], "served": c["served"],
                                                      "drops": c["drops"], "errors": c["errors"]})
            except Exception:  # a closing worker: stats are best effort
                logger.debug("nexus-stats publish failed", exc_info=True)


def _allowance_s(session: Mapping[str, Any]) -> float:
    """Seconds a request's end-to-end deadline must keep after its batch ends: post-processing and the way back.

    Pre-processing and the way here are already spent when a request is queued (its deadline is absolute), so
    with ``post_ms`` and ``net_ms`` in the session table only those are kept back; a request that arrived early
    may run later than the plan's ``L'`` would have it, and fewer are dropped for time they still have. Tables
    without them keep the plan's whole allowance ``SLO - L'``."""
    slo = float(session["slo_ms"])
    if "post_ms" in session and "net_ms" in session:
        return max(0.0, float(session["post_ms"]) + float(session["net_ms"])) / 1000.0
    return max(0.0, slo - float(session.get("budget_ms", slo))) / 1000.0


def _lat_ms(device: Any, model: str, batch: int) -> float:
    """``l(b)`` for early drop; a device that cannot tell (None) plans with 0, i.e. drops only what is late."""
    lat = device.batch_latency_ms(model, batch)
    return 0.0 if lat is None else float(lat)


def _max_batch(device: Any, model: str, default: int) -> int:
    """The largest batch the model's profile covers (simulated devices); ``default`` when the device has none."""
    profile = getattr(device, "profile", None)
    if profile is None:
        return default
    try:
        return int(profile(model).max_batch)
    except (KeyError, ValueError, AttributeError):
        return default


def _input_spec(model: str) -> Any:
    """The zoo input spec of a model (None outside the zoo or for models taking any payload)."""
    try:
        from ..models.zoo import input_spec
    except ImportError:
        return None
    try:
        return input_spec(model)
    except (KeyError, ValueError):
        return None


def _bucket(lat_ms: float) -> int:
    for j, edge in enumerate(LATENCY_BUCKETS_MS):
        if lat_ms <= edge:
            return j
    return len(LATENCY_BUCKETS_MS) - 1


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


# ---------------------------------------------------------------------------------------------- prometheus
_BACKENDS: weakref.WeakSet[NexusBackend] = weakref.WeakSet()
_METRICS_LOCK = threading.Lock()
_COLLECTOR: Any = None


class _NexusCollector:
    """Exports every live backend of this process on the worker's ``/metrics`` (prometheus_client's global
    registry, which distributed's worker route renders), labelled by worker address."""

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        util = GaugeMetricFamily("nexus_utilization", "Device busy fraction since the backend started",
                                 labels=["worker"])
        queue = GaugeMetricFamily("nexus_queue_length", "Queued requests per session", labels=["worker", "session"])
        served = CounterMetricFamily("nexus_served", "Requests served per session", labels=["worker", "session"])
        within = CounterMetricFamily("nexus_within_slo", "Requests served within their SLO",
                                     labels=["worker", "session"])
        drops = CounterMetricFamily("nexus_dropped", "Requests dropped per session and reason",
                                    labels=["worker", "session", "reason"])
        batches = CounterMetricFamily("nexus_batches", "Batches run per session", labels=["worker", "session"])
        for b in list(_BACKENDS):
            cum = b._cum
            addr = str(getattr(b, "address", ""))
            wall = max(time.time() - cum.t0, 1e-9)
            util.add_metric([addr], min(1.0, cum.busy_s / wall))
            for s, q in list(b._queues.items()):
                queue.add_metric([addr, str(s)], len(q))
            for s, v in list(cum.served.items()):
                served.add_metric([addr, str(s)], v)
                within.add_metric([addr, str(s)], cum.within_slo.get(s, 0))
            for s, c in list(cum.drops.items()):
                for reason, v in c.items():
                    drops.add_metric([addr, str(s), reason], v)
            for s, v in list(cum.batches.items()):
                batches.add_metric([addr, str(s)], v)
        yield from (util, queue, served, within, drops, batches)


def _register_metrics(backend: NexusBackend) -> None:
    global _COLLECTOR
    _BACKENDS.add(backend)
    with _METRICS_LOCK:
        if _COLLECTOR is not None:
            return
        try:
            import prometheus_client
        except ModuleNotFoundError:  # metrics are optional, like distributed's own
            return
        _COLLECTOR = _NexusCollector()
        prometheus_client.REGISTRY.register(_COLLECTOR)
