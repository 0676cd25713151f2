"""A request in flight at a frontend: it ends exactly once, as a result, a drop (with its reason) or an error.

The one place a frontend's request turns into what its caller sees: a ``concurrent.futures.Future`` (``Dropped``
and ``RequestFailed`` raised) or an ``on_done(status, value)`` callback.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .results import Dropped, RequestFailed

logger = logging.getLogger("nexus_lab.frontend")

__all__ = ["LOST_GRACE_S", "OnDone", "Pending"]

LOST_GRACE_S = 5.0  # a request with no reply this long after its deadline fails (its backend hung)

#: ``on_done(status, value)`` of ``Frontend.send_many``: status ``"ok"`` (value: the output), ``"dropped"`` (value:
#: the ``DropReason``) or ``"error"`` (value: the text).
OnDone = Callable[[str, Any], None]


@dataclass(slots=True, eq=False)
class Pending:
    """One request in flight; it ends exactly once, through its future or its ``on_done`` callback."""

    id: int
    session: str
    deadline: float
    payload: Any
    future: concurrent.futures.Future | None
    on_done: OnDone | None
    expire: float
    addr: str = ""  # the backend it was sent to
    tried: tuple[str, ...] = ()  # backends lost with it in flight

    def done(self) -> bool:
        return self.future.done() if self.future is not None else self.on_done is None

    def end(self, status: str, value: Any, detail: str = "") -> None:
        """End the request (a second end is ignored): ``"ok"`` with the output, ``"dropped"`` with the reason
        (and ``detail``), anything else an error with its text."""
        fut = self.future
        if fut is None:
            cb, self.on_done = self.on_done, None
            if cb is not None:
                try:
                    cb(status if status in ("ok", "dropped") else "error", value)
                except Exception:  # the caller's bug must not take the stream that delivered the reply down
                    logger.exception("on_done callback of request %s failed", self.id)
            return
        if fut.done():
            return
        if status == "ok":
            fut.set_result(value)
        elif status == "dropped":
            fut.set_exception(Dropped(value, detail))
        else:
            fut.set_exception(RequestFailed(str(value)))
