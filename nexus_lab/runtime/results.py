"""How a request ends in the data plane: a result, ``Dropped(reason)`` or ``RequestFailed``
(docs/architecture.md section 4).

Plain exception types shared by the frontend, query execution and the controller; no transport, no Dask.
"""

from __future__ import annotations

from typing import Any

from ..batching import ALL_REASONS

__all__ = ["Dropped", "RequestFailed"]


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
