"""Cluster I/O of the controller: RPC fan-out to the workers' ``nexus_*`` backend handlers, registering the backend
plugin on a bare cluster, the scheduler metadata a later controller adopts, and reading what the cluster already runs.

The boundary where distributed's failures become the controller's: a worker that does not answer a short poll is
*unresponsive* (planned around until it answers again), a worker being retired is *draining* (planned around until
it is gone), and a scheduler that cannot be reached is ``ClusterLost``.
Depends on distributed's client only through the object it is given; no planning, no threads of its own.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..planner import Plan
from ..workload import Workload, WorkloadError
from .edits import WorkloadEditor
from .placement import routes_of

logger = logging.getLogger("nexus_lab.controller")

__all__ = ["META_KEY", "POLL_TIMEOUT_S", "Adopted", "ClusterIO", "ClusterLost", "close_cluster", "connected"]

META_KEY = "nexus_lab-controller"  # scheduler metadata: the workload and plan the backends run (for adoption)
DEFAULT_DEVICE = "simulated:titan-x-pascal"
#: How long a stats or state poll waits for a worker: one that takes longer did not answer (a hung process must
#: not block the epoch loop; a healthy backend answers in milliseconds).
POLL_TIMEOUT_S = 2.0


class ClusterLost(RuntimeError):
    """The Dask scheduler cannot be reached (closed, crashed, or the connection to it is gone): the controller can
    do nothing on the cluster any more. Close it and start or attach a new one."""


def connected(client: Any, security: Any) -> Any:
    """A ``distributed.Client``: ``client`` itself, or one connected to the scheduler address ``client``."""
    if not isinstance(client, str):
        return client
    from distributed import Client

    return Client(client, security=security, set_as_default=False)


def close_cluster(client: Any, cluster: Any, timeout_s: float) -> None:
    """Close a cluster this process started, its workers first: a scheduler that closes under running workers
    makes each one log a traceback for its next heartbeat. Workers that do not leave within ``timeout_s`` (or a
    cluster already lost) are left to the cluster's own close."""
    import time

    try:
        cluster.scale(0)
        deadline = time.monotonic() + timeout_s
        while client.scheduler_info(n_workers=-1)["workers"] and time.monotonic() < deadline:
            time.sleep(0.05)
    except Exception as exc:  # a lost scheduler: nothing to wait for
        logger.debug("closing the cluster's workers: %s", exc)
    client.close()
    cluster.close()


@dataclass
class Adopted:
    """What a re-attaching controller takes over: the backends' GPU plans and the workload, plan and pins behind
    them (from the scheduler metadata, else rebuilt from the backends' session tables)."""

    editor: WorkloadEditor
    current: dict[str, dict | None]
    sessions: dict[str, dict[str, Any]]
    version: int
    plan: Plan | None = None
    pins: dict[str, str] = field(default_factory=dict)


class ClusterIO:
    """One client's calls to the backends: every call fans out concurrently and reports failures per worker."""

    def __init__(self, client: Any, rpc_timeout_s: float = 30.0) -> None:
        self.client = client
        self.rpc_timeout_s = float(rpc_timeout_s)
        self.unresponsive: set[str] = set()  # workers that stopped answering polls (the epoch loop judges)
        self._draining: set[str] = set()
        self._draining_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ draining
    @property
    def draining(self) -> frozenset[str]:
        """Workers being drained before they are retired: no plan or apply places anything on them (``usable``
        leaves them out) until they are gone or their retirement failed (``undrain``)."""
        with self._draining_lock:
            return frozenset(self._draining)

    def drain(self, workers: Sequence[str]) -> None:
        """Mark ``workers`` draining: every plan from now on leaves them out."""
        with self._draining_lock:
            self._draining |= set(workers)

    def undrain(self, workers: Sequence[str] | set[str] | frozenset[str]) -> set[str]:
        """Clear ``workers``' draining mark (they left, or their retirement failed); returns those that had it."""
        with self._draining_lock:
            had = self._draining & set(workers)
            self._draining -= had
        return had

    def lost(self) -> str | None:
        """Why the scheduler cannot be reached, or None while the client is connected."""
        status = getattr(self.client, "status", "running")
        if status == "running" and getattr(self.client, "scheduler", None) is not None:
            return None
        return f"the Dask scheduler cannot be reached (client status {status!r})"

    def check(self) -> None:
        """``ClusterLost`` once the scheduler cannot be reached."""
        why = self.lost()
        if why is not None:
            raise ClusterLost(why)

    def workers(self) -> list[str]:
        """Every worker the scheduler knows, sorted (unresponsive ones included)."""
        self.check()
        info = self.client.scheduler_info(n_workers=-1)
        if "workers" not in info:  # the scheduler went away during the call
            self.check()
            raise ClusterLost("the Dask scheduler did not answer with its workers")
        return sorted(info["workers"])

    def worker_names(self) -> dict[str, str]:
        """Every worker's address -> its name (its address where it has none): a nanny restarts a worker under its
        name at a new address."""
        return {a: str(w.get("name", a)) for a, w in self.client.scheduler_info(n_workers=-1)["workers"].items()}

    def usable(self) -> list[str]:
        """The workers to plan on: every worker but the unresponsive and the draining ones."""
        out = set(self.unresponsive) | self.draining
        return [w for w in self.workers() if w not in out]

    async def _call_each(self, calls: Mapping[str, tuple[str, dict[str, Any]]], timeout: float) -> dict[str, Any]:
        """Run ``op(**kw)`` on each worker's backend concurrently; an exception is returned in place of a reply."""
        async def one(addr: str, op: str, kw: dict[str, Any]) -> tuple[str, Any]:
            try:
                return addr, await asyncio.wait_for(getattr(self.client.rpc(addr), op)(**kw), timeout)
            except Exception as exc:  # a lost worker or one without the backend: reported, never raised here
                return addr, exc

        pairs = await asyncio.gather(*(one(a, op, kw) for a, (op, kw) in calls.items()))
        return dict(pairs)

    def call(self, calls: Mapping[str, tuple[str, dict[str, Any]]], timeout: float | None = None) -> dict[str, Any]:
        """``{worker: (handler, kwargs)}`` -> ``{worker: reply or exception}``."""
        if not calls:
            return {}
        self.check()
        return self.client.sync(self._call_each, calls, timeout or self.rpc_timeout_s)

    def states(self, workers: Sequence[str] | None = None, timeout: float = 10.0) -> dict[str, dict | None]:
        """Each worker's ``nexus_state`` (None: no backend there, or it did not answer)."""
        workers = self.workers() if workers is None else workers
        replies = self.call({w: ("nexus_state", {}) for w in workers}, timeout=timeout)
        return {w: (r if isinstance(r, dict) else None) for w, r in replies.items()}

    def poll(self, op: str, workers: Sequence[str]) -> dict[str, Any]:
        """``op`` on each worker with the short ``POLL_TIMEOUT_S`` (a hung worker must not block the caller);
        replies as ``call`` gives them, a ``TimeoutError`` for each worker that took longer."""
        return self.call({w: (op, {}) for w in workers}, timeout=POLL_TIMEOUT_S)

    @staticmethod
    def silent(replies: Mapping[str, Any]) -> set[str]:
        """The workers of ``replies`` that did not answer: timed out, or their connection failed."""
        return {w for w, r in replies.items() if isinstance(r, (TimeoutError, OSError))}

    def connect(self, device: str | None) -> tuple[str, dict[str, dict | None]]:
        """The device the backends run (``device`` when given) and their states, after registering the backend
        plugin when no worker has one yet (a bare cluster)."""
        states = self.states()
        if device is None:
            device = next((str(s["device"]) for s in states.values() if s and s.get("device")), DEFAULT_DEVICE)
        if not states or all(s is None for s in states.values()):
            from ..runtime.backend import NexusBackend

            self.client.register_plugin(NexusBackend(device=device, threads=1))
            states = self.states()
        return device, states

    def publish(self, routes_key: str, routes: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        """Scheduler metadata: the routes (load generators on workers follow re-plans through them) and the
        workload and plan (a later controller adopts them). Best effort: adoption falls back to the backends."""
        try:
            self.client.set_metadata(routes_key, dict(routes))
            self.client.set_metadata(META_KEY, dict(meta))
        except Exception as exc:
            logger.debug("cannot publish controller metadata: %s", exc)

    def adoption(self, states: Mapping[str, dict | None], editor: WorkloadEditor) -> Adopted | None:
        """What the backends already run, or None when they run nothing. ``editor`` gives the profile set and,
        without metadata, receives the adopted sessions."""
        running = {w: s.get("gpu") for w, s in states.items() if s and s.get("gpu")}
        if not running:
            return None
        try:
            meta = self.client.get_metadata(META_KEY, default=None)
        except Exception:  # older schedulers or no metadata: fall back to the backends' session tables
            meta = None
        sessions: dict[str, dict[str, Any]] = {}
        for s in states.values():
            if s:
                sessions.update(s.get("sessions") or {})
        plan, pins = None, {}
        if meta:
            editor = WorkloadEditor.from_workload(Workload.from_dict(meta["workload"]), editor.profile_set)
            editor.measured = set(meta.get("measured", ())) & editor.names()
            plan = Plan.from_dict(meta["plan"]) if meta.get("plan") else None
            pins = dict(meta.get("pins", {}))
        else:
            for name, s in sorted(sessions.items()):
                if "/" in name or name in editor.names():
                    continue  # query stages cannot be rebuilt without their query
                try:
                    editor.add_session(s["model"], float(s["slo_ms"]), None, name=name)
                except WorkloadError as exc:
                    logger.warning("cannot adopt session %s: %s", name, exc)
        current = {w: running.get(w) for w in states}
        version = max([int(s.get("version", 0)) for s in states.values() if s] + [int((meta or {}).get("version", 0))])
        table = {n: sessions.get(n) or {"model": "", "slo_ms": 1.0} for n in routes_of(current)}
        return Adopted(editor=editor, current=current, sessions=table, version=version, plan=plan, pins=pins)
