"""Argument checks of the controller's public methods, and the guard that turns a lost scheduler into one error.

A bad argument is refused before anything runs with a ``WorkloadError`` (a ``ValueError``) that names the argument
and what it allows, never a ``TypeError`` from deep inside; declared rates the cluster cannot hold are refused
before any packing (``check_declared``); once the scheduler cannot be reached, every guarded method raises
``ClusterLost`` instead of whatever distributed's client happened to raise.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from dataclasses import replace
from typing import Any, TypeVar

from ..fields import label, number
from ..planner.bounds import check_bound
from ..workload import Workload, WorkloadError
from .rpc import ClusterLost

__all__ = ["check_declared", "check_flag", "check_name", "check_number", "check_settings", "check_timeout",
           "guarded"]

F = TypeVar("F", bound=Callable[..., Any])


def check_name(value: Any, where: str) -> str:
    """A non-empty string (a session, query or worker name)."""
    if not isinstance(value, str) or not value:
        raise WorkloadError(f"{where}: must be a non-empty string, got {label(value)}")
    return value


def check_number(value: Any, where: str, *, gt: float | None = None, ge: float | None = None,
                 le: float | None = None, none: bool = False) -> float | None:
    """A finite real number (not a bool) above ``gt`` / at least ``ge`` / at most ``le`` (the workload fields'
    rule, ``fields.number``); None too when ``none``. ``where`` is ``call.argument``."""
    if value is None and none:
        return None
    call, _, arg = where.rpartition(".")
    if value is None:
        raise WorkloadError(f"{where}: must be a number, got None")
    return number({arg: value}, arg, call, gt=gt, ge=ge, le=le)


#: The longest timeout a call takes (s): about 11 days, far below what a thread's wait accepts.
MAX_TIMEOUT_S = 1e6


def check_timeout(value: Any, where: str) -> float | None:
    """A timeout: None (the default bound) or a number of seconds in ``(0, MAX_TIMEOUT_S]``."""
    return check_number(value, where, gt=0.0, le=MAX_TIMEOUT_S, none=True)


def check_flag(value: Any, where: str) -> bool | None:
    """True, False or None."""
    if value is not None and not isinstance(value, bool):
        raise WorkloadError(f"{where}: must be True, False or None, got {label(value)}")
    return value


def check_settings(*, net_ms: Any, rpc_timeout_s: Any, history: Any, policy: Any) -> None:
    """The controller's settings that no unit of its own checks."""
    from ..planner import policies

    check_number(net_ms, "net_ms", ge=0.0, none=True)
    check_number(rpc_timeout_s, "rpc_timeout_s", gt=0.0)
    if isinstance(history, bool) or not isinstance(history, int) or history < 1:
        raise WorkloadError(f"history: must be an integer >= 1, got {history!r}")
    if not isinstance(policy, str) or policy not in policies():
        raise WorkloadError(f"policy: must be one of {sorted(policies())}, got {policy!r}")


def guarded(method: F) -> F:
    """A controller method that needs the cluster: ``ClusterLost`` at once when the scheduler cannot be reached,
    and in place of whatever the call raised when it was lost meanwhile (``self.io`` is the ``ClusterIO``)."""

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        self.io.check()
        try:
            return method(self, *args, **kwargs)
        except ClusterLost:
            raise
        except Exception as exc:
            why = self.io.lost()
            if why is not None:
                raise ClusterLost(why) from exc
            raise

    return call  # type: ignore[return-value]


def check_declared(workload: Workload, measured: Collection[str], workers: int, where: str) -> None:
    """Refuse declared rates that need more GPUs than the cluster has workers, before anything is packed
    (``planner.check_bound`` on the workload with measured rates left out: those the planner scales down to the
    cluster, as the load they measure is real). ``where`` names the call; the message names the field."""
    if workers < 1:
        return
    declared = replace(workload, sessions=tuple(replace(s, rate=0.0) if s.name in measured else s
                                                for s in workload.sessions),
                       queries=tuple(replace(q, rate=0.0) if q.name in measured else q for q in workload.queries))
    try:
        check_bound(declared, workers, "cluster size", by_name=True)
    except WorkloadError as exc:
        raise type(exc)(f"{where}: {exc}") from None
