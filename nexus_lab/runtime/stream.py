"""A frontend's persistent stream to one backend (its ``nexus_stream`` handler): the comm, the buffer of requests
waiting to be flushed, the requests in flight, the holds the backend has told and when it last said anything (a
backend beats while it holds requests of the stream, so silence with requests in flight means it hangs)."""

from __future__ import annotations

import asyncio
import time
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
        self.heard = 0.0  # time.monotonic() the backend last said anything on the stream
        self.busy_since = 0.0  # time.monotonic() the in-flight set last went from empty to not
        self.pinging = False

    def track(self, batch: list[Pending]) -> None:
        """Loop thread: ``batch`` is in flight from now (the silence clock starts when the first request goes)."""
        if not self.inflight:
            self.busy_since = time.monotonic()
        for r in batch:
            self.inflight[r.id] = r

    def silence(self, mono: float) -> float:
        """How long the backend has said nothing while requests were in flight (s); 0 with none in flight."""
        return mono - max(self.heard, self.busy_since) if self.inflight else 0.0

    async def ping(self) -> None:
        """Ask a backend suspected of hanging to say something (an empty request message; it answers a beat)."""
        if self.comm is None or self.lock is None or self.pinging:
            return
        self.pinging = True
        try:
            async with self.lock:
                await self.comm.write(wire.PING)
        except Exception:  # the reader sees a closed stream and loses the backend
            pass
        finally:
            self.pinging = False

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
            msg = await comm.read()
            self.heard = time.monotonic()
            wire.read_replies(msg, end, holds)
