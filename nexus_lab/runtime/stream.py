"""A frontend's persistent stream to one backend (its ``nexus_stream`` handler): the comm, the buffer of requests
waiting to be flushed, the requests in flight and the holds the backend has told."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from . import wire
from .pending import Pending

__all__ = ["BackendStream"]


class BackendStream:
    """One backend's stream, owned by one frontend's loop thread (``buffer`` and the flush fields are guarded by
    the frontend's lock)."""

    def __init__(self, addr: str) -> None:
        self.addr = addr
        self.comm: Any = None
        self.ready: asyncio.Future | None = None
        self.buffer: list[Pending] = []
        self.flush_scheduled = False
        self.flush_at = 0.0  # loop time (time.monotonic) the armed coalescing timer fires
        self.inflight: dict[int, Pending] = {}
        self.lock: asyncio.Lock | None = None
        self.holds: dict[str, float] = {}  # session -> how long the backend holds its small batches (s), as it says

    async def open(self, connection_args: dict[str, Any], on_open: Callable[[Any], None]) -> Any:
        """Connect (once; concurrent callers wait for the same connection) and open the stream; ``on_open(comm)``
        starts its reader."""
        if self.comm is not None:
            return self.comm
        if self.ready is None:
            self.ready = asyncio.get_running_loop().create_future()
            self.lock = asyncio.Lock()
            try:
                from distributed.comm import connect

                comm = await connect(self.addr, timeout=5, **connection_args)
                # Messages are bounded (max_coalesce requests, or one batch's results): distributed's offload
                # check would walk every request of every message with sizeof before serializing it.
                comm.allow_offload = False
                await comm.write(wire.OPEN_STREAM)
                self.comm = comm
                self.ready.set_result(comm)
                on_open(comm)
            except Exception as exc:
                self.ready.set_exception(exc)
                self.ready.exception()  # mark retrieved: waiters re-raise it themselves
                raise
        return await asyncio.shield(self.ready)

    async def send(self, batch: list[Pending], per_message: int) -> int:
        """Write ``batch`` (on an open stream) in messages of at most ``per_message`` requests; how many."""
        comm = self.comm
        messages = 0
        async with self.lock:
            for k in range(0, len(batch), per_message):
                part = batch[k:k + per_message]
                await comm.write(wire.requests_message((r.id, r.session, r.deadline, r.payload) for r in part))
                messages += 1
        return messages

    async def read(self, comm: Any) -> None:
        """End each request as its reply comes and take the holds told, until the stream closes (raises)."""
        def end(rid: Any, status: str, value: Any) -> None:
            r = self.inflight.pop(rid, None)
            if r is not None:
                r.end(status, value)

        def holds(by_session: dict[str, float]) -> None:  # the backend's holds: coalesce that long for it
            self.holds = by_session

        while True:
            wire.read_replies(await comm.read(), end, holds)
