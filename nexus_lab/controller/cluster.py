"""``nexus_lab.start``: a local Dask cluster with one single-threaded worker process per GPU, and its controller.

Depends on distributed's ``LocalCluster`` and the runtime's backend plugin; nothing notebook-specific.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from typing import TYPE_CHECKING, Any

import dask

from ..runtime.device import MALLOC_THRESHOLD
from .core import Controller

if TYPE_CHECKING:
    from distributed.security import Security

#: glibc settings for worker processes, set through ``distributed.nanny.pre-spawn-environ``. distributed's nanny
#: trims freed memory above 64 KiB, returning and re-faulting a forward pass's activations on every batch; and any
#: explicit trim threshold also freezes glibc's mmap threshold at 128 KiB, so every activation above that is mmap'd
#: and unmapped per forward pass. With both high, freed activations stay in the heap for the next batch (the cost
#: measured is in docs/architecture.md). A cpu ``TorchDevice`` also sets both with ``mallopt`` in whatever worker it
#: runs: ``keep_freed_memory``.
WORKER_MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": MALLOC_THRESHOLD, "MALLOC_MMAP_THRESHOLD_": MALLOC_THRESHOLD}


#: distributed's housekeeping on a cluster started to serve (``start``): workers run no Dask tasks, so the statistical
#: profiler (a stack sample of every worker thread each 10 ms) profiles nothing, and the event-loop tick (every
#: 20 ms on the scheduler, each nanny and worker) and the system monitor (every 0.5 s) wake every server far more
#: often than serving needs, taking CPU from the backends (docs/architecture.md has the measurement).
#: A loop blocked longer than ``distributed.admin.tick.limit`` (3 s) is still reported.
SERVING_CONFIG = {"distributed.worker.profile.enabled": False, "distributed.admin.tick.interval": "1s",
                  "distributed.admin.system-monitor.interval": "5s"}


def own_session() -> bool:
    """Put this process into a session (and process group) of its own; False where it already leads one.

    Jupyter interrupts a kernel, and begins every shutdown, with SIGINT to the kernel's whole process group; a
    ``LocalCluster``'s worker processes are born into it, so each would die mid-request with a ``KeyboardInterrupt``
    traceback in the server log (the same for Ctrl-C in a terminal). Out of the group, a worker hears only its
    nanny: the cluster's close still ends it, and distributed ends it when the process that started it dies.
    """
    with contextlib.suppress(OSError):
        os.setsid()
        return True
    return False


def dask_setup(worker: Any) -> None:
    """Preload hook (this module is a worker preload of ``start``'s clusters): runs first in each new worker
    process, before it joins the scheduler, so no interrupt of the starting process ever reaches a worker."""
    own_session()


#: Worker preloads of ``start``'s clusters: this module, whose ``dask_setup`` is ``own_session``.
WORKER_PRELOAD = [__name__]


class InsecureClusterWarning(UserWarning):
    """``start(security=False)``: the cluster accepts any local process (no TLS, no credentials)."""


def worker_malloc_config() -> dict[str, int]:
    """``WORKER_MALLOC_ENV`` as dask config keys, for ``dask.config.set`` around a ``LocalCluster``."""
    return {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in WORKER_MALLOC_ENV.items()}


def cluster_security(security: Security | bool | None) -> Security | None:
    """The ``distributed.security.Security`` a cluster started by ``start`` runs with, or None for plain TCP.

    Secure by default: a Dask scheduler, nanny or worker runs whatever a connected peer sends (``client.run``, a
    backend's ``nexus_apply``), so without TLS any local process that finds the port can take the cluster over.
    ``True``/``None`` create fresh in-memory certificates (``Security.temporary()``): only this process and the
    workers it spawns hold them. ``False`` opts out with an ``InsecureClusterWarning``.
    """
    if security is False:
        warnings.warn("nexus_lab.start(security=False): the cluster runs without TLS, so any local process can "
                      "join it, run code on its workers and call its backends", InsecureClusterWarning, stacklevel=3)
        return None
    if security is None or security is True:
        from distributed.security import Security

        try:
            return Security.temporary()
        except ImportError as exc:
            raise ImportError("nexus_lab.start secures its cluster with TLS and needs the 'cryptography' package "
                              "for the certificates (pip install cryptography); security=False starts an "
                              "insecure cluster instead") from exc
    return security


def loopback(address: str | None) -> str | None:
    """A dashboard address that names no host (``":8787"``) binds to 127.0.0.1, not to every interface (Dask's
    default): the dashboard has no authentication. An explicit host is kept; None disables the dashboard."""
    if address is None or not address.startswith(":"):
        return address
    return f"127.0.0.1{address}"


def start(gpus: int = 4, device: str = "simulated:titan-x-pascal", *, security: Security | bool | None = True,
          dashboard_address: str | None = "127.0.0.1:0", threads: int = 1, memory_limit: str | int = "auto",
          silence_logs: int = logging.ERROR, **controller_kw: Any) -> Controller:
    """Start a ``LocalCluster`` with ``gpus`` single-threaded worker processes, register the backend plugin
    with ``device`` on each, and return a ``Controller`` that closes the cluster with itself.

    Every worker gets the same ``device``; for several CUDA GPUs start dask-cuda's ``LocalCUDACluster`` (one
    worker per GPU, each seeing only its own) and attach with ``Controller(client, device="cuda")``.
    The cluster is TLS-only (distributed's TLS, certificates made for it and held only by this process and its
    workers: ``cluster_security``) and listens on 127.0.0.1 only, its dashboard included (a dashboard address
    without a host binds to 127.0.0.1). ``security`` may be a ``distributed.security.Security`` of your own;
    ``security=False`` runs plain TCP that any local process can join, and warns. Other clients connect with
    ``Client(ctl.client.scheduler.address, security=ctl.client.security)``. Other keywords go to ``Controller``.

    Examples
    --------
    >>> ctl = start(gpus=2)  # doctest: +SKIP
    >>> ctl.add_session("vgg16", slo_ms=100, rate=200); ctl.apply()  # doctest: +SKIP
    """
    from distributed import Client, LocalCluster

    from ..runtime.backend import NexusBackend

    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise ValueError(f"gpus: must be an integer >= 1, got {gpus!r}")
    if not isinstance(device, str) or not device:
        raise ValueError(f"device: must be a device spec string, got {device!r}")
    security = cluster_security(security)
    kw: dict[str, Any] = {"protocol": "tcp://"} if security is None else {"security": security, "protocol": "tls://"}
    with dask.config.set({**worker_malloc_config(), **SERVING_CONFIG}):
        # host: every server (scheduler, nannies, workers and their HTTP servers) on loopback only
        cluster = LocalCluster(n_workers=gpus, threads_per_worker=threads, processes=True, host="127.0.0.1",
                               dashboard_address=loopback(dashboard_address), silence_logs=silence_logs,
                               memory_limit=memory_limit, preload=WORKER_PRELOAD, **kw)
    try:
        client = Client(cluster, security=security, set_as_default=False)
        client.register_plugin(NexusBackend(device=device, threads=threads))
        ctl = Controller(client, device=device, security=security, **controller_kw)
    except BaseException:
        cluster.close()
        raise
    ctl._cluster = cluster
    return ctl
