"""uvicorn serving the endpoint's bare ASGI app (``app.InferenceApp``) on the running event loop: its httptools
protocol (the C parser uvicorn ships with), no websockets, lifespan, proxy headers, access log or logging set-up (the
process may be a Dask worker's), and signals left to the host process (uvicorn takes them only on the main thread).

One change to how uvicorn writes: its request cycle writes a response's head and body with two ``transport.write``
calls, and uvloop sends each at once, so every answer cost two sends and woke the client twice. Here the writes a
connection makes in one turn of the loop go out as one send (``CoalescingTransport``); the cost is measured in
docs/architecture.md, "HTTP library".
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

__all__ = ["GRACE_S", "KEEP_ALIVE_S", "CoalescingTransport", "coalesce", "listen", "make_server"]

#: How long an idle keep-alive connection stays open (s), as aiohttp's default: a load generator that pauses
#: between its points keeps its connections.
KEEP_ALIVE_S = 75
#: At close, how long requests in flight may take to end (s) before their connections are closed.
GRACE_S = 3


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (the first address ``host`` resolves to; 0: a free port). ``OSError``
    naming the cause when it cannot listen (a taken port): nothing is left open."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class CoalescingTransport:
    """A connection's transport as uvicorn's request cycles see it: what they write in one turn of the loop is
    sent as one write at the end of that turn (a response's head and body: one send, one wake-up of the client).
    Closing sends what is pending first; everything else is the real transport's."""

    __slots__ = ("_loop", "_parts", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._parts:
            self._loop.call_soon(self.flush)
        self._parts.append(data)

    def flush(self) -> None:
        parts, self._parts = self._parts, []
        if parts and not self._transport.is_closing():
            self._transport.write(parts[0] if len(parts) == 1 else b"".join(parts))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def coalesce(protocol: Any, transport: asyncio.Transport) -> bool:
    """Have ``protocol`` (uvicorn's, after its ``connection_made``) write through a ``CoalescingTransport``.
    uvicorn's protocol internals are not its public API: where they are not the ``transport`` and ``loop``
    attributes this relies on, the protocol is left as uvicorn made it (each write its own send, as before this
    change) rather than broken. Whether it coalesces."""
    loop = getattr(protocol, "loop", None)
    if getattr(protocol, "transport", None) is not transport or not isinstance(loop, asyncio.AbstractEventLoop):
        return False
    protocol.transport = CoalescingTransport(transport, loop)
    return True


def _protocol_class() -> type | str:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # a uvicorn that moved it: its own httptools protocol, without coalescing
        return "httptools"

    class CoalescingHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc]
        """uvicorn's httptools protocol writing through a ``CoalescingTransport`` (flow control keeps the real
        transport)."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            coalesce(self, transport)

    return CoalescingHttpToolsProtocol


def make_server(app: Any) -> Any:
    """A ``uvicorn.Server`` for the ASGI ``app``; ``await server.serve(sockets=[listen(...)])`` on the loop."""
    import uvicorn

    config = uvicorn.Config(app, http=_protocol_class(), loop="none", ws="none", lifespan="off",
                            interface="asgi3", log_config=None, log_level="warning", access_log=False,
                            proxy_headers=False, server_header=False, timeout_keep_alive=KEEP_ALIVE_S,
                            timeout_graceful_shutdown=GRACE_S, backlog=1024)
    return uvicorn.Server(config)
