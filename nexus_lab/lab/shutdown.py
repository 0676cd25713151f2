"""A deliberate kernel shutdown closes the kernel's registered controllers first, so the panel reads it as closed.

Jupyter shuts a kernel down by a ``shutdown_request``; ipykernel then terminates the kernel's child processes (a
``LocalCluster``'s workers among them, killed mid-request: tracebacks in the server log) and exits, and the kernel
manager sends SIGTERM once half its ``shutdown_wait_time`` (2.5 s) has passed: ``atexit`` never runs, the registration
file outlives its pid and the panel would say the kernel died. So, inside a kernel, the first registration wraps the
kernel's ``do_shutdown`` (which runs before any of that): it removes every registration file of this process at once,
then closes each controller (its epoch loop, client and the cluster it started) within a bounded time.

Jupyter also interrupts a kernel (on every interrupt, and first thing on a shutdown) with SIGINT to the kernel's
whole process group; the workers of a cluster that ``nexus_lab.start`` made are not in it (each starts a session of
its own: ``controller.cluster.own_session``), so that SIGINT leaves no worker tracebacks in the server log.

Standard library only; IPython is looked up only when already imported (``registry.in_kernel``); controllers are
reached only through their own ``close``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

#: Seconds the controllers of a shutting-down kernel get to close (the kernel manager sends SIGTERM at 2.5 s).
CLOSE_BUDGET_S = 2.0
_MARK = "_nexus_lab_shutdown_hook"


def close_all(registrations: Callable[[], list[Any]], budget_s: float = CLOSE_BUDGET_S) -> None:
    """Close every registration (their files go at once), then their controllers, within ``budget_s`` in all.

    A controller's ``close`` runs on a daemon thread, so a wedged cluster delays the shutdown by ``budget_s`` at
    most; errors are expected here (the cluster may already be going) and are dropped, never printed.
    """
    regs = list(registrations())
    controllers = []
    for reg in regs:
        with contextlib.suppress(Exception):
            reg.close(reason="kernel-shutdown")
        if not any(c is reg.controller for c in controllers):
            controllers.append(reg.controller)

    def _close() -> None:
        for ctl in controllers:
            close = getattr(ctl, "close", None)
            if callable(close):
                with contextlib.suppress(BaseException):
                    close()

    if controllers:
        t = threading.Thread(target=_close, name="nexus-lab-shutdown", daemon=True)
        t.start()
        t.join(budget_s)


def install(kernel: Any, registrations: Callable[[], list[Any]]) -> bool:
    """Wrap ``kernel.do_shutdown`` (once per kernel) to run ``close_all`` before it; False when it cannot."""
    original = getattr(kernel, "do_shutdown", None)
    if original is None or getattr(original, _MARK, False):
        return False

    def do_shutdown(restart: bool, *args: Any, **kw: Any) -> Any:
        with contextlib.suppress(Exception):
            close_all(registrations)
        return original(restart, *args, **kw)

    setattr(do_shutdown, _MARK, True)
    try:
        kernel.do_shutdown = do_shutdown
    except Exception:
        return False
    return True


def install_in_kernel(registrations: Callable[[], list[Any]]) -> bool:
    """``install`` on this process's IPython kernel; False outside one (never imports IPython to find out)."""
    import sys

    if "IPython" not in sys.modules:
        return False
    try:
        from IPython import get_ipython

        kernel = getattr(get_ipython(), "kernel", None)
    except Exception:
        return False
    return kernel is not None and install(kernel, registrations)
