"""Calls into a backend's handlers from tests: one-shot RPCs, and requests sent down a real stream (the wire
protocol the frontend speaks), their replies as dicts ``{"id", "status", "result" | "reason" | "error"}``."""

from __future__ import annotations

import asyncio
from typing import Any

from nexus_lab.runtime import wire

_KEY = {"ok": "result", "dropped": "reason", "error": "error"}


async def call(client: Any, address: str, op: str, timeout_s: float = 30.0, **kwargs: Any) -> Any:
    """Handler ``op`` of the worker at ``address``, over the client's connection pool."""
    return await asyncio.wait_for(getattr(client.rpc(address), op)(**kwargs), timeout_s)


def call_sync(client: Any, address: str, op: str, **kwargs: Any) -> Any:
    return client.sync(call, client, address, op, **kwargs)


async def stream_submit(client: Any, address: str, requests: list[dict[str, Any]], timeout_s: float = 20.0
                        ) -> list[dict[str, Any]]:
    """Send ``requests`` ({id, session, deadline, payload}) on a fresh stream; every reply, in arrival order."""
    from distributed.comm import connect

    comm = await connect(address, timeout=5, **client.security.get_connection_args("client"))
    replies: list[dict[str, Any]] = []
    ids = [r.get("id") for r in requests]

    def end(k: Any, status: str, value: Any) -> None:
        replies.append({"id": ids[k], "status": status, _KEY[status]: value})

    try:
        await comm.write(wire.OPEN_STREAM)
        await comm.write(wire.requests_message((k, r.get("session"), r.get("deadline"), r.get("payload"))
                                               for k, r in enumerate(requests)))
        while len(replies) < len(requests):
            wire.read_replies(await asyncio.wait_for(comm.read(), timeout_s), end, lambda holds: None)
    finally:
        comm.abort()
    return replies


def submit(client: Any, address: str, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return client.sync(stream_submit, client, address, requests)
