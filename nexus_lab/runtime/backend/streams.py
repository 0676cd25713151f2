"""The backend's end of a frontend's stream: replies batched into one message per wake-up of its writer, and a
heartbeat while the stream's requests wait, so that the frontend can tell a hung backend by its silence."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from .. import wire

__all__ = ["BEAT_S", "StreamSink"]

#: While a stream has requests here and nothing was written for this long, a beat row goes out: silence then means
#: a hung backend (its frontends suspect it after a few beats' worth). An idle stream sends nothing.
BEAT_S = 0.1


class StreamSink:
    """Where the requests read from one stream end: ``complete`` one, ``complete_ok`` a batch's results,
    ``holds`` the backend's holds; ``writer`` sends what gathered, one message per wake-up; ``beats`` keeps a
    stream with requests waiting from falling silent."""

    __slots__ = ("closed", "comm", "outbox", "pending", "said", "wake")

    def __init__(self, comm: Any) -> None:
        self.comm = comm
        self.outbox: list[list[Any]] = []
        self.wake = asyncio.Event()
        self.closed = False
        self.pending = 0  # requests read from the stream and not yet ended
        self.said = False  # something other than a beat was put since the last look of ``beats``

    def _put(self, rows: list[list[Any]], beat: bool = False) -> None:
        if not self.closed:
            self.outbox.extend(rows)
            self.said = self.said or not beat
            self.wake.set()

    def received(self, n: int) -> None:
        """``n`` requests were read from the stream (an empty message is a ping: answered with a beat at once)."""
        if n:
            self.pending += n
        else:
            self._put([wire.beat_row()], beat=True)

    def complete(self, rid: Any, status: str, value: Any) -> None:
        self.pending -= 1
        self._put([wire.reply_row(rid, status, value)])

    def complete_ok(self, rids: Sequence[Any], outputs: Sequence[Any]) -> None:
        self.pending -= len(rids)
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

    async def beats(self) -> None:
        """Every ``BEAT_S``: a beat row when requests of this stream wait here and nothing else was said since."""
        while not self.closed:
            await asyncio.sleep(BEAT_S)
            if self.pending > 0 and not self.said and not self.outbox:
                self._put([wire.beat_row()], beat=True)
            self.said = False
