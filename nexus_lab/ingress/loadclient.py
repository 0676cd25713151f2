"""An open-loop HTTP load generator for Open Inference Protocol endpoints (ours, or a peer's HTTP proxy): Poisson
arrivals (``nexus_lab.arrivals``), binary tensor bodies, keep-alive connections spread over the URLs, each request's
latency counted from its arrival (time waiting for a free connection included). For benchmarks and load tests.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
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
                slo_ms: float, seed: int = 0, connections: int = 1024, timeout_s: float = 10.0,
                preopen: int | None = None) -> dict[str, Any]:
    """Offer ``rate`` req/s for ``duration_s`` over ``urls`` (round robin, each a full infer URL); a report of
    offered load, goodput (answers with status 200 within ``slo_ms`` per second), attainment, statuses and
    latency percentiles. HTTP/1.1 carries one request per connection at a time, so the pool (``connections``
    in all) must exceed rate x latency with room for bursts, or the client's own queue becomes the bottleneck:
    open connections are reused (keep-alive), new ones opened only as concurrency needs them, and a request that
    finds every connection busy waits for the first to free up (its latency counts from its arrival).

    The client shares the cores with the system under test, so it must cost far less per request than the
    frontend it drives (aiohttp's client cost about as much as the frontend itself): one request is one write of
    bytes built once (request line, headers, body), its answer is parsed by httptools (uvicorn's C parser) in the
    connection's callbacks, and nothing per request is a task, a future or a timer (a sweep every
    ``SWEEP_S`` ends the requests that ran past ``timeout_s``).

    Before the first arrival, ``preopen`` connections in all (default: twice rate x SLO, the concurrency of
    answers that take the whole SLO, at least one per URL) are opened, as a long-lived client holds its pool: with a
    fresh pool opening dozens of connections at once, the run's first half second held over half of its late
    answers in 2 of 3 runs at 0.35 of raw."""
    from ..arrivals import generate

    offsets = generate("poisson", float(rate), float(duration_s), np.random.default_rng(seed))
    tally = _Tally(len(offsets))
    loop = asyncio.get_running_loop()
    pools = [_Pool(loop, u, body, headers, max(1, connections // max(1, len(urls))), tally, timeout_s)
             for u in urls]
    want = math.ceil(2.0 * float(rate) * float(slo_ms) / 1000.0) if preopen is None else int(preopen)
    await asyncio.gather(*(p.preopen(min(p.limit, -(-max(want, len(pools)) // len(pools)))) for p in pools))
    sweeper = loop.create_task(_sweep(pools, timeout_s))
    try:
        t0 = time.perf_counter()
        for k, off in enumerate(offsets):
            delay = t0 + off - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            pools[k % len(pools)].submit(t0 + off)
        wall = max(time.perf_counter() - t0, float(duration_s))
        if tally.left:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(tally.all_ended(loop), timeout_s + 5.0)
    finally:
        sweeper.cancel()
        for p in pools:
            p.close()
    lat, statuses = tally.latencies, tally.statuses
    if tally.left:  # never answered, not even by the sweep: count them, so every request ends as something
        statuses["TimeoutError"] = statuses.get("TimeoutError", 0) + tally.left
    sent = len(offsets)
    within = sum(1 for x in lat if x * 1000.0 <= slo_ms)
    arr = np.array(lat) * 1000.0 if lat else None
    return {"offered": sent, "offered_rate": sent / wall, "ok": len(lat), "within_slo": within,
            "goodput": within / wall, "slo_attainment": within / sent if sent else 0.0, "statuses": statuses,
            "p50_ms": float(np.percentile(arr, 50)) if arr is not None else None,
            "p99_ms": float(np.percentile(arr, 99)) if arr is not None else None}


#: How often requests are checked for their timeout (s).
SWEEP_S = 0.1


class _Tally:
    """Every request's end: its status (or error's name), and the latency of each 200 from its arrival."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.statuses: dict[str, int] = {}
        self.latencies: list[float] = []
        self._done: asyncio.Future | None = None

    def end(self, key: str, t_arrive: float) -> None:
        self.statuses[key] = self.statuses.get(key, 0) + 1
        if key == "200":
            self.latencies.append(time.perf_counter() - t_arrive)
        self.left -= 1
        if self.left == 0 and self._done is not None and not self._done.done():
            self._done.set_result(None)

    def all_ended(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future:
        self._done = loop.create_future()
        if self.left <= 0:
            self._done.set_result(None)
        return self._done


async def _sweep(pools: list[_Pool], timeout_s: float) -> None:
    while True:
        await asyncio.sleep(SWEEP_S)
        now = time.perf_counter()
        for p in pools:
            for c in list(p.busy):
                if now - c.sent > timeout_s:
                    c.close()  # first: its place, not the connection, goes to the next waiting request
                    c.end("TimeoutError")


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: one request at a time; its answer's status code ends it."""

    def __init__(self, pool: _Pool) -> None:
        import httptools

        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.t_arrive: float | None = None  # the request on the wire: its arrival time
        self.sent = 0.0
        self.closed = False

    def start(self, t_arrive: float) -> None:
        assert self.transport is not None
        self.t_arrive, self.sent = t_arrive, time.perf_counter()
        self.pool.busy.add(self)
        self.transport.write(self.pool.message)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception as exc:  # httptools' HttpParserError: the server spoke no HTTP
            self.close()
            self.end(f"BadResponse({type(exc).__name__})")

    def on_message_complete(self) -> None:
        status = str(self.parser.get_status_code())
        keep = self.parser.should_keep_alive()
        if not keep:
            self.close()
        self.end(status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()
        self.end("ServerDisconnectedError")

    def end(self, key: str) -> None:
        """The request on the wire ended as ``key``; the connection takes the next waiting one or goes idle."""
        t, self.t_arrive = self.t_arrive, None
        if t is None:
            return
        self.pool.busy.discard(self)
        self.pool.tally.end(key, t)
        self.pool.release(self)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.opened -= 1
            if self.transport is not None:
                self.transport.close()


class _Pool:
    """The keep-alive connections to one URL (at most ``limit``), the one request they all send, and the requests
    waiting for a connection."""

    def __init__(self, loop: asyncio.AbstractEventLoop, url: str, body: bytes, headers: dict[str, str],
                 limit: int, tally: _Tally, timeout_s: float) -> None:
        u = urlsplit(url)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"urls: must be http://HOST[:PORT]/PATH URLs, got {url!r}")
        self.loop, self.host, self.port, self.limit = loop, u.hostname, u.port or 80, int(limit)
        self.tally, self.timeout_s = tally, float(timeout_s)
        head = {"Host": u.netloc, "Connection": "keep-alive", **headers, "Content-Length": str(len(body))}
        lines = "".join(f"{k}: {v}\r\n" for k, v in head.items())
        self.message = f"POST {u.path or '/'}{'?' + u.query if u.query else ''} HTTP/1.1\r\n{lines}\r\n".encode() + body
        self.idle: list[_Conn] = []
        self.busy: set[_Conn] = set()
        self.waiting: collections.deque[float] = collections.deque()
        self.opened = 0  # connections open or opening
        self.all: list[_Conn] = []
        self._tasks: set[asyncio.Task] = set()

    def submit(self, t_arrive: float) -> None:
        """Send a request that arrived at ``t_arrive`` on an idle connection, a new one, or when one frees up."""
        while self.idle:
            c = self.idle.pop()
            if not c.closed:
                c.start(t_arrive)
                return
        if self.opened < self.limit:
            self.opened += 1
            task = self.loop.create_task(self._open(t_arrive))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self.waiting.append(t_arrive)

    async def preopen(self, n: int) -> None:
        """Open up to ``n`` idle connections now (those that fail to open are simply not there)."""
        async def one() -> None:
            try:
                _, conn = await asyncio.wait_for(self.loop.create_connection(lambda: _Conn(self), self.host,
                                                                             self.port), self.timeout_s)
            except (OSError, asyncio.TimeoutError):
                self.opened -= 1
                return
            self.all.append(conn)
            self.idle.append(conn)

        n = max(0, min(int(n), self.limit - self.opened))
        self.opened += n
        await asyncio.gather(*(one() for _ in range(n)))

    def release(self, conn: _Conn) -> None:
        if conn.closed:
            if self.waiting and self.opened < self.limit:  # its place goes to the next waiting request
                self.submit(self.waiting.popleft())
        elif self.waiting:
            conn.start(self.waiting.popleft())
        else:
            self.idle.append(conn)

    async def _open(self, t_arrive: float) -> None:
        try:
            _, conn = await asyncio.wait_for(self.loop.create_connection(lambda: _Conn(self), self.host, self.port),
                                             self.timeout_s)
        except (OSError, asyncio.TimeoutError) as exc:
            self.opened -= 1
            self.tally.end(type(exc).__name__, t_arrive)
            if self.waiting and self.opened < self.limit:
                self.submit(self.waiting.popleft())
            return
        self.all.append(conn)
        conn.start(t_arrive)

    def close(self) -> None:
        for c in self.all:
            c.close()
        for t in list(self._tasks):
            t.cancel()


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
