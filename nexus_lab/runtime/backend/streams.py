"""The backend's end of a frontend's stream: replies batched into one message per wake-up of its writer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from .. import wire

__all__ = ["StreamSink"]


class StreamSink:
    """Where the requests read from one stream end: ``complete`` one, ``complete_ok`` a batch's results,
    ``holds`` the backend's holds; ``writer`` sends what gathered, one message per wake-up."""

    __slots__ = ("closed", "comm", "outbox", "wake")

    def __init__(self, comm: Any) -> None:
        self.comm = comm
        self.outbox: list[list[Any]] = []
        self.wake = asyncio.Event()
        self.closed = False

    def _put(self, rows: list[list[Any]]) -> None:
        if not self.closed:
            self.outbox.extend(rows)
            self.wake.set()

    def complete(self, rid: Any, status: str, value: Any) -> None:
        self._put([wire.reply_row(rid, status, value)])

    def complete_ok(self, rids: Sequence[Any], outputs: Sequence[Any]) -> None:
        self._put(wire.ok_rows(rids, outputs))

    def holds(self, holds_ms: dict[str, float]) -> None:
        """Tell the frontend how long this backend holds each session's small batches: it coalesces that long."""
        self._put([wire.holds_row(holds_ms)])

    def close(self) -> None:
        self.closed = True
        self.wake.set()

    async def writer(self) -> None:
        try:
            while not self.closed:
                await self.wake.wait()
                self.wake.clear()
                if self.outbox:
                    out, self.outbox = self.outbox, []
                    await self.comm.write(wire.replies_message(out))
        except Exception:  # the frontend went away: nothing left to reply to
            self.closed = True
