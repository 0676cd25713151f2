"""A frontend in a process of its own, the child of a Dask worker (``launcher``'s ``dedicated=True``): no backend
shares its interpreter, so parsing HTTP never waits on a forward pass for the GIL, and the planner, which plans on
every worker, never sees it. It lives as long as its worker: it exits when its parent does.

``python -m nexus_lab.ingress.process`` reads one JSON line on stdin (the scheduler address, the cluster's TLS
material, where to listen, token and limits), prints ``{"url": ...}`` (or ``{"error": ...}``) on stdout once it
listens, then serves until SIGTERM, stdin's end or its parent's death. The credentials travel over the pipe only,
never argv or the environment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from typing import Any

__all__ = ["spawn", "stop"]

PARENT_POLL_S = 0.5


def _security_fields(security: Any) -> dict[str, Any] | None:
    if security is None:
        return None
    return {k: getattr(security, k) for k in security.__slots__ if k != "extra_conn_args"
            and getattr(security, k, None) is not None}


def spawn(config: dict[str, Any], security: Any, timeout_s: float = 60.0) -> tuple[subprocess.Popen, str]:
    """Start a frontend process with ``config`` (``IngressServer``'s keywords, JSON-able) and ``security``; its
    process and URL once it listens. Raises ``OSError`` (it could not listen) or ``RuntimeError``."""
    # A session of its own (setsid), as the workers have: with the kernel's autogroup scheduling (the default on
    # desktop and many server kernels) CPU is shared fairly between sessions first, so a frontend left in its
    # worker's session got only what that worker's forward passes left of one share, and queued requests behind
    # them; its own session gets its own share. It still exits with its worker (``main`` polls its parent).
    proc = subprocess.Popen([sys.executable, "-m", "nexus_lab.ingress.process"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps({"config": config, "security": _security_fields(security)}) + "\n")
    proc.stdin.flush()
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout_s)
    line = got[0] if got else ""
    try:
        reply = json.loads(line) if line else {"error": f"no answer within {timeout_s:g} s"}
    except ValueError:
        reply = {"error": f"unexpected answer {line[:200]!r}"}
    if "url" not in reply:
        stop(proc)
        why = str(reply.get("error"))
        raise (OSError if reply.get("kind") == "OSError" else RuntimeError)(f"frontend process: {why}")
    return proc, str(reply["url"])


def stop(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGTERM (it closes its server and frontend), then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _use_uvloop() -> None:
    """uvloop for this process's loops (the frontend's), when installed: its event loop and transports cost about
    a third less CPU per request than asyncio's on the cores the frontend shares with the backends."""
    try:
        import uvloop
    except ImportError:
        return
    import asyncio

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _freeze_heap() -> None:
    """Once listening: move everything alive now (modules, the server, its tables: ~65,000 objects) out of the
    collector's sight. Each full collection scanned them all: 40-60 ms with the frontend stopped, every few seconds
    under load, which is where the HTTP path's p99 went; after the freeze ~1 ms (docs/architecture.md, "HTTP
    library")."""
    import gc

    gc.collect()
    gc.freeze()


def main() -> int:
    from .server import IngressServer

    _use_uvloop()
    parent = os.getppid()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    msg = json.loads(sys.stdin.readline())
    security = None
    if msg.get("security"):
        from distributed.security import Security

        security = Security(**msg["security"])
    try:
        srv = IngressServer(security=security, **msg["config"])
    except Exception as exc:
        kind = "OSError" if isinstance(exc, OSError) else "other"
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}", "kind": kind}), flush=True)
        return 1
    _freeze_heap()
    print(json.dumps({"url": srv.url}), flush=True)
    try:
        while not done.wait(PARENT_POLL_S):
            if os.getppid() != parent:  # the worker died: its frontend goes with it
                break
    finally:
        srv.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
