"""The benchmark's HTTP load client (``nexus_lab.ingress.loadclient``): it counts every request's end, reuses its
keep-alive connections, and a server that refuses or hangs ends requests as named errors, never a hang."""

from __future__ import annotations

import asyncio
import socket

import numpy as np
from aiohttp import web

from nexus_lab.ingress.loadclient import binary_infer_body, drive
from nexus_lab.ingress.protocol import HEADER, parse_infer_request


async def _serve(handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/v2/models/m/infer", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/v2/models/m/infer"


def test_counts_statuses_and_reuses_connections() -> None:
    body, headers = binary_infer_body(np.arange(6, dtype=np.float32).reshape(1, 6))
    seen = {"n": 0, "peers": set()}

    async def handler(request: web.Request) -> web.Response:
        req = parse_infer_request(await request.read(), request.headers.get(HEADER))
        assert req.inputs["input"].tolist() == [[0, 1, 2, 3, 4, 5]]
        seen["n"] += 1
        seen["peers"].add(request.transport.get_extra_info("peername"))
        return web.Response(status=503 if seen["n"] % 4 == 0 else 200, body=b"{}")

    async def main() -> dict:
        runner, url = await _serve(handler)
        try:
            return await drive([url], body, headers, 200.0, 1.0, slo_ms=1000.0, seed=1)
        finally:
            await runner.cleanup()

    rep = asyncio.run(main())
    assert rep["offered"] == seen["n"] > 100
    assert sum(rep["statuses"].values()) == rep["offered"]
    assert rep["statuses"]["503"] == rep["offered"] // 4
    assert rep["ok"] == rep["statuses"]["200"] == rep["within_slo"]
    assert len(seen["peers"]) < rep["offered"] / 5  # keep-alive: far fewer connections than requests


def test_refused_and_hung_servers_end_as_errors() -> None:
    body, headers = binary_infer_body(np.zeros((1, 2), dtype=np.float32))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rep = asyncio.run(drive([f"http://127.0.0.1:{port}/x"], body, headers, 50.0, 0.2, slo_ms=100.0, timeout_s=2.0))
    assert rep["statuses"] == {"ConnectionRefusedError": rep["offered"]} and rep["goodput"] == 0.0

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(1.5)  # past the client's timeout; short so the server's cleanup is quick
        return web.Response()

    async def main() -> dict:
        runner, url = await _serve(hang)
        try:
            return await drive([url], body, headers, 20.0, 0.3, slo_ms=100.0, timeout_s=0.5)
        finally:
            await runner.cleanup()

    rep = asyncio.run(main())
    assert rep["statuses"] == {"TimeoutError": rep["offered"]} and rep["p50_ms"] is None


def test_requests_wait_for_a_free_connection_and_count_the_wait() -> None:
    body, headers = binary_infer_body(np.zeros((1, 2), dtype=np.float32))
    peers = set()

    async def slow(request: web.Request) -> web.Response:
        peers.add(request.transport.get_extra_info("peername"))
        await request.read()
        await asyncio.sleep(0.03)  # two connections serve ~66 req/s: 100 req/s must queue at the client
        return web.Response(body=b"{}")

    async def main() -> dict:
        runner, url = await _serve(slow)
        try:
            return await drive([url], body, headers, 100.0, 0.5, slo_ms=1000.0, seed=2, connections=2)
        finally:
            await runner.cleanup()

    rep = asyncio.run(main())
    assert rep["statuses"] == {"200": rep["offered"]} and rep["offered"] > 20
    assert len(peers) <= 2
    assert rep["p99_ms"] > 60.0  # latency counts from arrival, the wait for a connection included


def test_connections_are_opened_before_the_first_arrival() -> None:
    """A long-lived client holds its pool: the run's first requests do not pay for opening connections."""
    body, headers = binary_infer_body(np.zeros((1, 2), dtype=np.float32))
    open_at_first: list[int] = []
    holder: dict = {}

    async def handler(request: web.Request) -> web.Response:
        if not open_at_first:
            open_at_first.append(len(holder["runner"].server.connections))
        await request.read()
        return web.Response(body=b"{}")

    async def main(**kw) -> dict:
        runner, url = await _serve(handler)
        holder["runner"] = runner
        try:
            return await drive([url], body, headers, 20.0, 0.3, slo_ms=500.0, seed=4, **kw)
        finally:
            await runner.cleanup()

    rep = asyncio.run(main(preopen=6))
    assert rep["statuses"] == {"200": rep["offered"]} and open_at_first == [6]
    open_at_first.clear()
    asyncio.run(main())  # by default twice rate x SLO: 20 req/s x 0.5 s x 2
    assert open_at_first == [20]
