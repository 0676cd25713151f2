"""Start and stop frontends in the processes of a Dask cluster: each ``IngressServer`` is started by a worker
(``client.run``), in a child process of that worker (``dedicated``, the default: ``process``) or on a thread of the
worker's own process, and found again by name there to be stopped.

K frontends run in K processes, so ingress capacity (HTTP parsing, encoding, dispatch) grows with K; a frontend
whose process dies takes only its own connections with it, and a worker's death takes its frontends. Depends on
distributed's client only through the object it is given.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .app import DEFAULT_MAX_BODY, DEFAULT_MAX_INFLIGHT

__all__ = ["Endpoint", "restart_frontend", "running_frontends", "start_frontends", "stop_frontends"]

#: The frontends running in this process, by name (a worker's ``client.run`` finds them here).
_SERVERS: dict[str, Any] = {}


@dataclass(frozen=True)
class Endpoint:
    """One frontend: its name, the worker it belongs to, its URL and the pid of the process serving it (the
    worker's own, or its child's when dedicated)."""

    name: str
    worker: str
    url: str
    pid: int = 0


def _start_here(name: str, host: str, port: int, token: str | None, max_body_bytes: int, max_inflight: int,
                dedicated: bool, dask_worker: Any = None) -> tuple[str, int]:
    """In a worker: start frontend ``name`` (replacing one of that name), on a thread of this process or in a child
    process of its own (``dedicated``); its URL and the pid of the process it runs in."""
    old = _SERVERS.pop(name, None)
    if old is not None:
        _close(old)
    kw = {"scheduler_address": dask_worker.scheduler.address, "host": host, "port": port, "token": token,
          "max_body_bytes": max_body_bytes, "max_inflight": max_inflight, "name": name,
          "worker": dask_worker.address}
    if dedicated:
        from .process import spawn

        proc, url = spawn(kw, dask_worker.security)
        _SERVERS[name] = proc
        return url, proc.pid
    from .server import IngressServer

    srv = IngressServer(security=dask_worker.security, **kw)
    _SERVERS[name] = srv
    return srv.url, os.getpid()


def _close(server: Any) -> None:
    if hasattr(server, "poll"):  # a child process
        from .process import stop

        stop(server)
    else:
        server.close()


def _stop_here(names: Sequence[str], dask_worker: Any = None) -> list[str]:
    """In a worker: stop the named frontends that run here; the names stopped."""
    stopped = []
    for n in names:
        srv = _SERVERS.pop(n, None)
        if srv is not None:
            _close(srv)
            stopped.append(n)
    return stopped


def _running_here(names: Sequence[str], dask_worker: Any = None) -> list[str]:
    """In a worker: which of the named frontends run here (a child process that has not exited, or a thread's
    server)."""
    return [n for n in names if n in _SERVERS and (not hasattr(_SERVERS[n], "poll") or _SERVERS[n].poll() is None)]


def running_frontends(client: Any, endpoints: Sequence[Endpoint]) -> set[str]:
    """The names of ``endpoints`` whose frontend still runs on its worker (one whose worker does not answer counts
    as running: a worker's death is the scheduler's to see)."""
    by_worker: dict[str, list[str]] = {}
    for e in endpoints:
        by_worker.setdefault(e.worker, []).append(e.name)
    out: set[str] = set()
    for w, names in by_worker.items():
        try:
            got = client.run(_running_here, names, workers=[w], on_error="return").get(w, names)
        except Exception:  # no answer: not evidence of a dead frontend
            got = names
        out.update(names if isinstance(got, BaseException) else got)
    return out


def restart_frontend(client: Any, endpoint: Endpoint, worker: str, *, host: str, token: str | None,
                     max_body_bytes: int = DEFAULT_MAX_BODY, max_inflight: int = DEFAULT_MAX_INFLIGHT,
                     dedicated: bool = True) -> Endpoint:
    """Start ``endpoint``'s frontend again on ``worker``, under its name and on its port, with the same limits;
    the new endpoint. Raises ``OSError`` while the port is still taken."""
    from urllib.parse import urlsplit

    port = urlsplit(endpoint.url).port or 0
    url, pid = client.run(_start_here, endpoint.name, host, port, token, int(max_body_bytes), int(max_inflight),
                          bool(dedicated), workers=[worker])[worker]
    return Endpoint(endpoint.name, worker, url, int(pid))


def start_frontends(client: Any, workers: Sequence[str], *, host: str = "127.0.0.1", port: int = 0,
                    token: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY,
                    max_inflight: int = DEFAULT_MAX_INFLIGHT, prefix: str = "frontend", dedicated: bool = True
                    ) -> list[Endpoint]:
    """One frontend for each of ``workers``: the k-th listens on ``port + k`` (every one on a free port when
    ``port`` is 0), in a child process of the worker (``dedicated``) or on a thread of the worker's own process.
    Starts them all, or none: on a failure the started ones are stopped and it raises."""
    if not isinstance(host, str) or not host:
        raise ValueError(f"host: must be a host name or address, got {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535 - max(len(workers) - 1, 0):
        raise ValueError(f"port: must be an integer in [0, {65535 - max(len(workers) - 1, 0)}], got {port!r}")
    out: list[Endpoint] = []
    try:
        for k, w in enumerate(workers):
            name = f"{prefix}-{k}"
            url, pid = client.run(_start_here, name, host, port + k if port else 0, token, int(max_body_bytes),
                                  int(max_inflight), bool(dedicated), workers=[w])[w]
            out.append(Endpoint(name, w, url, int(pid)))
    except BaseException:
        stop_frontends(client, out)
        raise
    return out


def stop_frontends(client: Any, endpoints: Sequence[Endpoint]) -> None:
    """Stop the frontends (those whose worker is gone are gone already)."""
    by_worker: dict[str, list[str]] = {}
    for e in endpoints:
        by_worker.setdefault(e.worker, []).append(e.name)
    for w, names in by_worker.items():
        try:
            client.run(_stop_here, names, workers=[w], on_error="ignore")
        except Exception:  # the worker died: its frontend died with it
            continue
