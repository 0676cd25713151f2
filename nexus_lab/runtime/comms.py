"""Thin calls into the backends' ``nexus_*`` handlers over distributed's comms (one connection per call).

Used by tests, benchmarks and the controller to apply plans and read stats; no policy, no Dask task machinery.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["call", "call_all", "call_sync"]


async def call(address: str, op: str, *, security: Any = None, timeout_s: float = 30.0, **kwargs: Any) -> Any:
    """Call handler ``op`` (e.g. ``nexus_apply``) on the worker at ``address`` and return its reply."""
    import asyncio

    from distributed.core import rpc

    args = security.get_connection_args("client") if security is not None else {}
    async with rpc(address, connection_args=args, timeout=timeout_s) as r:
        return await asyncio.wait_for(getattr(r, op)(**kwargs), timeout_s)


async def call_all(addresses: Sequence[str], op: str, *, security: Any = None, timeout_s: float = 30.0,
                   per_worker: dict[str, dict[str, Any]] | None = None, **kwargs: Any) -> dict[str, Any]:
    """``call`` on many workers concurrently; ``per_worker`` adds arguments for one worker. A worker that fails
    maps to its exception instead of a reply (the caller decides)."""
    import asyncio

    addrs = list(addresses)
    replies = await asyncio.gather(*(call(a, op, security=security, timeout_s=timeout_s,
                                          **{**kwargs, **(per_worker or {}).get(a, {})}) for a in addrs),
                                   return_exceptions=True)
    return dict(zip(addrs, replies, strict=True))


def call_sync(client: Any, address: str, op: str, **kwargs: Any) -> Any:
    """``call`` from synchronous code, on the client's event loop with the client's security."""
    return client.sync(call, address, op, security=client.security, **kwargs)
