"""How a request ends in the data plane: a result, ``Dropped(reason)`` or ``RequestFailed`` (DESIGN.md section 4).

Plain exception and record types shared by the backend, the frontend and the controller; no transport, no Dask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..batching import ALL_REASONS

__all__ = ["Dropped", "RequestFailed", "Result", "reply_dropped", "reply_error", "reply_ok"]


class Dropped(Exception):
    """The request ended without a result by policy: early drop (``deadline``), ``overload``, ``no_route`` or
    ``worker_lost``. ``reason`` is one of ``nexus_lab.batching.DropReason``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in ALL_REASONS:
            raise ValueError(f"reason: must be one of {ALL_REASONS}, got {reason!r}")
        self.reason = reason
        self.detail = detail
        super().__init__(f"dropped ({reason}){': ' + detail if detail else ''}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (Dropped, (self.reason, self.detail))


class RequestFailed(Exception):
    """The request failed: its model raised (the message carries the exception) or its backend was lost (the
    message names the worker). Only the requests of that batch, or of that worker, fail."""


@dataclass(frozen=True)
class Result:
    """One finished request as the backend reports it: ``status`` is ``ok``, ``dropped`` or ``error``."""

    id: Any
    status: str
    value: Any = None  # the output (ok), the drop reason (dropped) or the error text (error)

    def to_dict(self) -> dict[str, Any]:
        key = {"ok": "result", "dropped": "reason", "error": "error"}[self.status]
        return {"id": self.id, "status": self.status, key: self.value}

    def unwrap(self) -> Any:
        """The output, or raise the matching exception."""
        if self.status == "ok":
            return self.value
        if self.status == "dropped":
            raise Dropped(self.value)
        raise RequestFailed(str(self.value))


def reply_ok(rid: Any, result: Any) -> dict[str, Any]:
    return {"id": rid, "status": "ok", "result": result}


def reply_dropped(rid: Any, reason: str) -> dict[str, Any]:
    return {"id": rid, "status": "dropped", "reason": reason}


def reply_error(rid: Any, error: str) -> dict[str, Any]:
    return {"id": rid, "status": "error", "error": error}
