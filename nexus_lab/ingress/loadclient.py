"""An open-loop HTTP load generator for Open Inference Protocol endpoints (ours, or a peer's HTTP proxy): Poisson
arrivals (``nexus_lab.arrivals``), binary tensor bodies, keep-alive connections spread over the URLs, each request's
latency counted from its arrival (time waiting for a free connection included). For benchmarks and load tests.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from .protocol import HEADER, datatype_of

__all__ = ["binary_infer_body", "drive", "run_http_load"]


def binary_infer_body(x: np.ndarray, name: str = "input", *, binary_output: bool = True) -> tuple[bytes, dict]:
    """An infer body with ``x`` (batch axis first) as a binary input, and its headers."""
    x = np.ascontiguousarray(x)
    doc: dict[str, Any] = {"inputs": [{"name": name, "shape": list(x.shape), "datatype": datatype_of(x.dtype),
                                       "parameters": {"binary_data_size": x.nbytes}}]}
    if binary_output:
        doc["parameters"] = {"binary_data_output": True}
    head = json.dumps(doc).encode()
    return head + x.tobytes(), {HEADER: str(len(head)), "Content-Type": "application/octet-stream"}


async def drive(urls: Sequence[str], body: bytes, headers: dict[str, str], rate: float, duration_s: float, *,
                slo_ms: float, seed: int = 0, connections: int = 1024, timeout_s: float = 10.0) -> dict[str, Any]:
    """Offer ``rate`` req/s for ``duration_s`` over ``urls`` (round robin, each a full infer URL); a report of
    offered load, goodput (answers with status 200 within ``slo_ms`` per second), attainment, statuses and
    latency percentiles. HTTP/1.1 carries one request per connection at a time, so the pool (``connections``
    in all) must exceed rate x latency with room for bursts, or the client's own queue becomes the bottleneck:
    open connections are reused (keep-alive), new ones opened only as concurrency needs them.

    One request is one write of bytes built once (request line, headers, body) and its answer is parsed by
    httptools (uvicorn's C parser): the client shares the cores with the system under test, so it must cost far
    less per request than the frontend it drives (aiohttp's client cost about as much as the frontend itself)."""
    from ..arrivals import generate

    offsets = generate("poisson", float(rate), float(duration_s), np.random.default_rng(seed))
    lat: list[float] = []
    statuses: dict[str, int] = {}
    loop = asyncio.get_running_loop()
    pools = [_Pool(loop, u, body, headers, max(1, connections // max(1, len(urls)))) for u in urls]

    async def one(pool: _Pool, t_arrive: float) -> None:
        key = await pool.request(timeout_s)
        statuses[key] = statuses.get(key, 0) + 1
        if key == "200":
            lat.append(time.perf_counter() - t_arrive)

    tasks = []
    try:
        t0 = time.perf_counter()
        for k, off in enumerate(offsets):
            delay = t0 + off - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(one(pools[k % len(pools)], t0 + off)))
        wall = max(time.perf_counter() - t0, float(duration_s))
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s + 5.0)
    finally:
        for p in pools:
            p.close()
    sent = len(offsets)
    within = sum(1 for x in lat if x * 1000.0 <= slo_ms)
    arr = np.array(lat) * 1000.0 if lat else None
    return {"offered": sent, "offered_rate": sent / wall, "ok": len(lat), "within_slo": within,
            "goodput": within / wall, "slo_attainment": within / sent if sent else 0.0, "statuses": statuses,
            "p50_ms": float(np.percentile(arr, 50)) if arr is not None else None,
            "p99_ms": float(np.percentile(arr, 99)) if arr is not None else None}


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: one request at a time; the answer's status code ends ``waiter``."""

    def __init__(self, pool: _Pool) -> None:
        import httptools

        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception as exc:  # httptools' HttpParserError: the server spoke no HTTP
            self._end(f"BadResponse({type(exc).__name__})")
            self.close()

    def on_message_complete(self) -> None:
        status = str(self.parser.get_status_code())
        keep = self.parser.should_keep_alive()
        w, self.waiter = self.waiter, None
        if not keep:
            self.close()
        elif w is not None:
            self.pool.idle.append(self)
        if w is not None and not w.done():
            w.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._end("ServerDisconnectedError")

    def _end(self, key: str) -> None:
        w, self.waiter = self.waiter, None
        if w is not None and not w.done():
            w.set_result(key)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _Pool:
    """The keep-alive connections to one URL (at most ``limit``) and the one request they all send."""

    def __init__(self, loop: asyncio.AbstractEventLoop, url: str, body: bytes, headers: dict[str, str],
                 limit: int) -> None:
        u = urlsplit(url)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"urls: must be http://HOST[:PORT]/PATH URLs, got {url!r}")
        self.loop, self.host, self.port, self.limit = loop, u.hostname, u.port or 80, int(limit)
        head = {"Host": u.netloc, "Connection": "keep-alive", **headers, "Content-Length": str(len(body))}
        lines = "".join(f"{k}: {v}\r\n" for k, v in head.items())
        self.message = f"POST {u.path or '/'}{'?' + u.query if u.query else ''} HTTP/1.1\r\n{lines}\r\n".encode() + body
        self.idle: list[_Conn] = []
        self.opened = 0
        self.free = asyncio.Semaphore(self.limit)
        self.all: list[_Conn] = []

    async def request(self, timeout_s: float) -> str:
        """One request on an idle connection (or a new one); its status code, or the error's name."""
        async with self.free:
            conn = None
            while self.idle:
                c = self.idle.pop()
                if not c.closed:
                    conn = c
                    break
            try:
                if conn is None:
                    _, conn = await asyncio.wait_for(self.loop.create_connection(lambda: _Conn(self), self.host,
                                                                                 self.port), timeout_s)
                    self.all.append(conn)
                assert conn is not None and conn.transport is not None
                w = conn.waiter = self.loop.create_future()
                timer = self.loop.call_later(timeout_s, conn._end, "TimeoutError")
                conn.transport.write(self.message)
                key = await w
                timer.cancel()
            except (OSError, asyncio.TimeoutError) as exc:
                key = type(exc).__name__
            if key == "TimeoutError" and conn is not None:
                conn.close()
            return key

    def close(self) -> None:
        for c in self.all:
            c.close()


def run_http_load(urls: Sequence[str], body: bytes, headers: dict[str, str], rate: float, duration_s: float,
                  **kw: Any) -> dict[str, Any]:
    """``drive`` on a fresh event loop (blocking): uvloop's when installed, which halves the client's CPU per
    request on the cores it shares with the system under test."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(drive(urls, body, headers, rate, duration_s, **kw))


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
