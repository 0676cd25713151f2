"""The GPU backend (Nexus section 6): a Dask ``WorkerPlugin`` that holds models on its device and runs its duty cycle.

Executes the plan it is given (no scheduling decisions). The plugin is setup, teardown and the handler table over
separate units: the model table (``table``), the session queues (``queues``), the duty cycle (``cycle``), the
stats (``stats``) and the frontends' streams (``streams``). Every handler and the duty cycle run on the worker's
event loop; the device runs on ONE dedicated executor thread, so inference uses one thread whatever the
worker's ``nthreads``.

Examples
--------
>>> client.register_plugin(NexusBackend(device="simulated:titan-x-pascal"))  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from ...batching import cpu_pressure
from ...models.sources import weight_warnings
from .. import wire
from .cycle import DutyCycle
from .prepost import DEFAULT_THREADS, PrePost
from .queues import SessionQueues
from .stats import BackendStats, register_metrics, unregister_metrics
from .streams import StreamSink
from .table import ModelTable

logger = logging.getLogger("nexus_lab.backend")

__all__ = ["PRESSURE_INTERVAL_S", "NexusBackend"]


def _fail(sink: StreamSink, rid: Any, message: str) -> None:
    sink.complete(rid, "error", message)

PRESSURE_INTERVAL_S = 1.0  # how often a host-CPU backend checks whether the host's cores are short (``_watch_cpu``)
_HANDLERS = ("nexus_apply", wire.STREAM_OP, "nexus_stats", "nexus_state", "nexus_configure")


class NexusBackend(WorkerPlugin):
    """One GPU backend per worker: loads the models of its part of the plan and serves their sessions.

    Parameters
    ----------
    device : str
        ``cpu``, ``cuda[:N]`` or ``simulated:<profile-set>`` (``nexus_lab.runtime.device.make_device``).
    threads : int
        Intra-op threads of the device (torch CPU); the device still runs on one executor thread.
    trace_len : int
        Batches kept in the bounded batch trace.
    work_conserving : bool
        True (default, as ``nexus_lab.sim`` runs a plan): the next cycle starts as soon as the previous one ends
        and a full batch may grow during a burst while its oldest request still makes its deadline. False: a
        cycle starts every ``duty_cycle_ms`` (the paper's fixed cycle) and batches never exceed the plan.
    batch_floor : bool or None
        Hold a work-conserving batch back while it is smaller than its floor (``batching.batch_floor``) until its
        oldest request has waited ``l(floor)`` or one duty cycle, whichever is shorter. None (default): only when
        the device is the host's CPU, whose idle time is the CPU the dispatch path runs on; a GPU (or a
        simulated one) runs whatever is queued.
    inline : bool or None
        Run each batch on the event loop's own thread instead of the device thread. None (default): only when the
        device is the host's CPU, where a device thread overlaps nothing and only adds wake-ups.
    prepost_threads : int or None
        CPU threads beside the device that decode and prepare images and make results (top-k, boxes) for
        models with a transform or a result step (``prepost``); 0 runs them inline on the event loop. None
        (default): 2 beside a device thread, 0 when batches run inline (the cpu device). There the loop is busy
        with batch k while the pool decodes what arrived during it, so those requests were queued only after
        batch k+1 had formed and waited for k+2 (~3 l(b), not the 2 l(b) the plan allows); decoded on the loop
        right after batch k they make k+1, and the threads had no core of their own to overlap on anyway.
    """

    name = "nexus-backend"

    def __init__(self, device: str = "simulated:titan-x-pascal", threads: int = 1, trace_len: int = 2000,
                 work_conserving: bool = True, batch_floor: bool | None = None, inline: bool | None = None,
                 prepost_threads: int | None = None) -> None:
        if not isinstance(device, str) or not device:
            raise ValueError(f"device: must be a device spec string, got {device!r}")
        if int(threads) < 1:
            raise ValueError(f"threads: must be >= 1, got {threads}")
        if int(trace_len) < 1:
            raise ValueError(f"trace_len: must be >= 1, got {trace_len}")
        self.device_spec = device
        self.threads = int(threads)
        self.trace_len = int(trace_len)
        self.work_conserving = bool(work_conserving)
        self.batch_floor = batch_floor
        self.inline = inline
        if prepost_threads is not None and int(prepost_threads) < 0:
            raise ValueError(f"prepost_threads: must be >= 0 (0: inline), got {prepost_threads}")
        # CPU threads decoding images and making results (``prepost``); None: by where batches run (``setup``)
        self.prepost_threads = None if prepost_threads is None else int(prepost_threads)

    # ------------------------------------------------------------------------------------------ lifecycle
    async def setup(self, worker: Any) -> None:
        """Runs on the worker's event loop when registered (and on every worker that joins later)."""
        from ..device import make_device

        self.address = worker.address
        loop = asyncio.get_running_loop()
        if not self.device_spec.startswith("simulated"):  # torch's first import here, on the loop thread: other
            import torch  # noqa: F401  plugins (``ModelPlugin``) import it there too, and a concurrent first import
            # from two threads leaves torch partially initialised in one of them
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="nexus-device")
        self.device = await loop.run_in_executor(self._executor,
                                                 lambda: make_device(self.device_spec, threads=self.threads))
        self.host_cpu = getattr(self.device, "kind", "") == "cpu"  # the device is the cores the loop runs on
        self.pressure = False  # the host's cores are short: floors nearer the planned batch (``_watch_cpu``)

        def on_device(fn: Any, *args: Any) -> asyncio.Future:
            return loop.run_in_executor(self._executor, fn, *args)

        self.stats = BackendStats(self.trace_len)
        self.queues = SessionQueues(self.stats.arrival, self.stats.drop)
        self.table = ModelTable(self.device, on_device, self.work_conserving)
        inline = self.inline if self.inline is not None else self.host_cpu
        self.cycle = DutyCycle(self.table, self.queues, self.stats, on_device, inline, self.work_conserving,
                               self.address)
        threads = self.prepost_threads if self.prepost_threads is not None else (0 if inline else DEFAULT_THREADS)
        self.prepost = self.cycle.prepost = PrePost(threads)
        self._apply_lock = asyncio.Lock()
        self._streams: set[StreamSink] = set()
        self._tasks = [asyncio.ensure_future(self.cycle.run())]
        if self.batch_floor is None and self.host_cpu:
            self._tasks.append(asyncio.ensure_future(self._watch_cpu()))
        worker.handlers.update({h: getattr(self, h) for h in _HANDLERS})
        register_metrics(self, self.address, self.stats, self.queues)

    async def teardown(self, worker: Any) -> None:
        """Stop the duty cycle, fail every queued request (``backend closed``), release the device thread."""
        self.cycle.closing = True
        for t in self._tasks:
            t.cancel()
        self.queues.fail_all(f"backend on {self.address} closed")
        for s in list(self._streams):
            s.closed = True
        for h in _HANDLERS:
            worker.handlers.pop(h, None)
        self._executor.submit(self.device.close)  # after any batch still on the device thread
        self._executor.shutdown(wait=False)
        self.prepost.close()
        unregister_metrics(self)

    # ------------------------------------------------------------------------------------------ handlers
    async def nexus_apply(self, gpu: dict[str, Any] | None = None, sessions: dict[str, dict] | None = None,
                          version: int = 0, prefix_groups: list[dict[str, Any]] | None = None,
                          profiles: dict[str, Any] | None = None) -> dict[str, Any]:
        """Switch to a new part of the plan without losing a request (``ModelTable.apply``). A device
        out-of-memory is reported in ``error`` and the previous plan stays in force. ``prefix_groups`` is the
        plan's ``prefix_groups``; ``profiles`` (model -> profile mapping) registers a workload's inline profiles
        on a simulated device before loading. The reply carries the holds just sent down the streams."""
        async with self._apply_lock:
            error = await self.table.apply(gpu, sessions, version, prefix_groups, profiles, self.queues,
                                           self._floor_on(), self.pressure)
            self.cycle.arrival.set()
            self.prepost.forget()
            if error is not None:
                return self.table.reply(error)
            return {**self.table.reply(None), "holds_ms": self._announce_holds()}

    async def nexus_stream(self, comm: Any, **_: Any) -> Any:
        """A frontend's persistent duplex stream (``nexus_lab.runtime.wire``): request messages in, reply
        messages out, batched per wake-up of the writer, with beats while requests wait (``StreamSink.beats``)."""
        from distributed.core import Status

        comm.allow_offload = False  # bounded messages: no sizeof walk before each reply
        sink = StreamSink(comm)
        self._streams.add(sink)
        sink.holds(self.table.holds_ms())
        writer = asyncio.ensure_future(sink.writer())
        beats = asyncio.ensure_future(sink.beats())
        enqueue, arrival = self.queues.enqueue, self.cycle.arrival

        def prepared(rid: Any, session: str, deadline: float, payload: Any, sink: StreamSink) -> None:
            if enqueue(rid, session, deadline, payload, sink) and not arrival.is_set():
                arrival.set()

        try:
            while not self.cycle.closing:
                rows = wire.request_rows(await comm.read())
                if rows is None:
                    break
                sink.received(len(rows))
                rows = self.prepost.intake(rows, self._model_of, prepared, _fail, sink)  # images: to the pool
                for rid, session, deadline, payload in rows:
                    if enqueue(rid, session, deadline, payload, sink) and not arrival.is_set():
                        arrival.set()
        except Exception:  # the frontend closed the stream
            pass
        finally:
            sink.close()
            self._streams.discard(sink)
            beats.cancel()
            await asyncio.gather(writer, beats, return_exceptions=True)
            comm.abort()
        return Status.dont_reply

    async def nexus_stats(self) -> dict[str, Any]:
        """The stats window since the previous call plus cumulative counters; resets the window.

        Keys: ``t0``/``t1`` (window, time.time() s), ``utilization`` (device busy fraction of wall time),
        ``busy_s``, ``batches``, ``batch_sizes`` {size: count}, ``served``, ``within_slo``, ``drops`` {reason:
        count}, ``errors``, ``sessions`` {session: {``arrivals``, ``rate`` (arrivals/s), ``served``,
        ``within_slo``, ``errors``, ``drops``, ``batches``, ``batch_sizes``, ``latency_hist`` (counts per
        ``latency_buckets_ms`` upper edge, last open), ``p50_ms``, ``p99_ms``}}, ``cumulative`` (the same since
        the backend started, without percentiles), ``queues`` {session: length}, ``overrun_p99_ms``, ``trace``
        [(session, start, end, batch)] (bounded, this window), ``latency_buckets_ms``, ``version``, ``address``,
        ``device``. Latency is measured from the request's send time (its deadline less its SLO) to its reply.
        """
        out = self.stats.report(reset=True)
        out.update(queues=self.queues.lengths(), version=self.table.version, address=self.address,
                   device=getattr(self.device, "name", self.device_spec))
        return out

    async def nexus_configure(self, batch_floor: bool | None = None) -> dict[str, Any]:
        """Switch the batch floor live (``batch_floor`` as in the constructor; None: by device kind); returns each
        planned session's floor (1: runs whatever is queued) and the holds sent down the streams."""
        self.batch_floor = batch_floor
        holds = self._refloor()
        return {"floors": self.table.floors(), "holds_ms": holds}

    async def nexus_state(self) -> dict[str, Any]:
        """What a new controller needs to adopt the running plan."""
        return {"version": self.table.version, "gpu": self.table.gpu, "sessions": dict(self.queues.sessions),
                "device": getattr(self.device, "name", self.device_spec), "address": self.address,
                "loaded": dict(self.table.loaded), "holds_ms": self.table.holds_ms(),
                "memory_used_mb": float(self.device.memory_used_mb()), "model_warnings": weight_warnings()}

    def _model_of(self, session: str) -> str:
        return str(self.queues.sessions.get(session, {}).get("model", ""))

    # ------------------------------------------------------------------------------------------ batch floor
    def _floor_on(self) -> bool:
        return self.batch_floor if self.batch_floor is not None else self.host_cpu

    def _refloor(self) -> dict[str, float]:
        """Recompute every slot's floor and tell the frontends; the holds told."""
        self.table.refloor(self._floor_on(), self.pressure)
        return self._announce_holds()

    def _announce_holds(self) -> dict[str, float]:
        """Send the current holds down every frontend stream; the holds sent, for the caller's reply."""
        holds = self.table.holds_ms()
        for sink in self._streams:
            sink.holds(holds)
        return holds

    async def _watch_cpu(self) -> None:
        """Every ``PRESSURE_INTERVAL_S``: the host's CPU busy fraction (psutil, all cores), and with it whether
        the floors are nearer the planned batch (``batching.cpu_pressure``). Runs where the device is the host's
        CPU and the floor is on by default."""
        import psutil

        psutil.cpu_percent(None)
        while not self.cycle.closing:
            await asyncio.sleep(PRESSURE_INTERVAL_S)
            try:
                pressure = cpu_pressure(self.pressure, psutil.cpu_percent(None) / 100.0)
                if pressure != self.pressure:
                    self.pressure = pressure
                    self._refloor()
            except Exception:  # never let the watcher die: the floors stay as they are
                logger.exception("nexus backend cpu watch error on %s", self.address)
