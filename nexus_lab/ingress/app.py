"""The HTTP face of one frontend: the Open Inference Protocol's REST routes on aiohttp, over a ``Service`` that
knows the models and runs requests (``server.FrontendService``, or anything with the same three members).

Status codes (the endpoint's contract, docs/architecture.md, "The service face"): 200; 400 bad input naming the
field; 401 a missing or wrong bearer token (every route but ``/v2/health/*``); 404 unknown model or route; 405 wrong
method; 413 a body over ``max_body_bytes``; 429 dropped for overload (the backend's admission control, or more than
``max_inflight`` requests in flight at this frontend); 503 dropped by the system for another reason (``deadline``,
``no_route``, ``worker_lost``), failed with its worker (lost, hung, unreachable), or the frontend is not ready;
500 a model that raised (its message, no traceback).
Every error body is ``{"error": "..."}``.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import numpy as np
from aiohttp import web

from ..runtime.results import Dropped, RequestFailed
from .models import ModelEntry
from .protocol import (
    HEADER,
    InferRequest,
    ProtocolError,
    check_inputs,
    encode_error,
    encode_infer_response,
    model_metadata,
    parse_infer_request,
)

logger = logging.getLogger("nexus_lab.ingress")

__all__ = ["DEFAULT_MAX_BODY", "DEFAULT_MAX_INFLIGHT", "Service", "Stats", "drop_status", "failure_status", "make_app"]

DEFAULT_MAX_BODY = 64 * 1024 * 1024  # bytes: a batch of frames, not a denial of service
DEFAULT_MAX_INFLIGHT = 4096  # requests (tensors' rows) in flight at one frontend before it answers 429
SERVER_NAME = "nexus_lab"
EXTENSIONS = ["binary_tensor_data"]


class Service(Protocol):
    """What the HTTP app needs from a frontend."""

    def models(self) -> Mapping[str, ModelEntry]: ...

    def ready(self) -> bool: ...

    async def infer(self, entry: ModelEntry, req: InferRequest, batch: int) -> dict[str, np.ndarray]: ...


def drop_status(reason: str) -> int:
    """The HTTP status of a request the system dropped: 429 for overload (retry later, slower), else 503."""
    return 429 if reason == "overload" else 503


#: What the runtime says when a request ends because of the system, not its model: a lost or hung worker, a
#: closed frontend (``runtime/frontend.py``, ``runtime/health.py``). Those answer 503; a model that raised, 500.
_SYSTEM_FAILURE = re.compile(r"^(worker \S+ (lost|unresponsive)|no reply from worker|frontend closed|could not send)")


def failure_status(message: str) -> int:
    """503 for a request that failed because a worker was lost, hung or unreachable; 500 for a model's error."""
    return 503 if _SYSTEM_FAILURE.match(message) else 500


class Stats:
    """Request counts of one frontend by HTTP status, and the times of the last requests (for its rate)."""

    def __init__(self) -> None:
        self.requests = 0
        self.by_status: dict[int, int] = {}
        self.inflight = 0
        self.started = time.time()
        self._marks: list[tuple[float, int]] = [(time.time(), 0)]

    def count(self, status: int) -> None:
        self.requests += 1
        self.by_status[status] = self.by_status.get(status, 0) + 1

    def snapshot(self, window_s: float = 5.0) -> dict[str, Any]:
        """Totals, errors by status, and the request rate over about the last ``window_s`` seconds."""
        now = time.time()
        self._marks.append((now, self.requests))
        while len(self._marks) > 2 and self._marks[1][0] < now - window_s:
            self._marks.pop(0)
        t0, n0 = self._marks[0]
        return {"requests": self.requests, "rate": (self.requests - n0) / (now - t0) if now > t0 else 0.0,
                "inflight": self.inflight, "errors": {str(k): v for k, v in sorted(self.by_status.items())
                                                      if k >= 400}, "uptime_s": now - self.started}


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(doc).encode(), status=status, content_type="application/json")


def _error(message: str, status: int) -> web.Response:
    return web.Response(body=encode_error(message), status=status, content_type="application/json")


def make_app(service: Service, *, token: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY,
             max_inflight: int = DEFAULT_MAX_INFLIGHT, stats: Stats | None = None) -> web.Application:
    """The aiohttp application of one frontend (``stats`` counts its requests)."""
    if token is not None and (not isinstance(token, str) or not token):
        raise ValueError("token: must be a non-empty string or None")
    if int(max_body_bytes) < 1:
        raise ValueError(f"max_body_bytes: must be >= 1, got {max_body_bytes}")
    if int(max_inflight) < 1:
        raise ValueError(f"max_inflight: must be >= 1, got {max_inflight}")
    stats = stats if stats is not None else Stats()
    expected = f"Bearer {token}".encode() if token else None

    @web.middleware
    async def guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        """Token check, then every outcome as the protocol's error body; never a traceback."""
        try:
            if expected is not None and not request.path.startswith("/v2/health/"):
                given = request.headers.get("Authorization", "").encode()
                if not hmac.compare_digest(given, expected):
                    raise ProtocolError("Authorization: missing or wrong bearer token", 401)
            resp = await handler(request)
        except ProtocolError as exc:
            resp = _error(str(exc), exc.status)
            if exc.status == 401:
                resp.headers["WWW-Authenticate"] = "Bearer"
        except web.HTTPRequestEntityTooLarge:
            resp = _error(f"body: larger than the limit of {max_body_bytes} bytes", 413)
        except web.HTTPException as exc:  # aiohttp's own 404/405
            resp = _error(f"{request.method} {request.path}: {exc.reason}", exc.status)
        except Exception as exc:
            logger.exception("ingress: %s %s failed", request.method, request.path)
            resp = _error(f"internal error ({type(exc).__name__})", 500)
        stats.count(resp.status)
        return resp

    def entry(request: web.Request) -> ModelEntry:
        name = request.match_info["model"]
        version = request.match_info.get("version")
        found = service.models().get(name)
        if found is None:
            raise ProtocolError(f"model: unknown model {name!r}; models: {sorted(service.models())}", 404)
        if version is not None and version != "1":
            raise ProtocolError(f"version: model {name!r} has only version '1', got {version!r}", 404)
        return found

    async def server_meta(request: web.Request) -> web.Response:
        return _json({"name": SERVER_NAME, "version": _version(), "extensions": EXTENSIONS})

    async def live(request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def ready(request: web.Request) -> web.Response:
        return web.Response(status=200 if service.ready() else 503)

    async def model_meta(request: web.Request) -> web.Response:
        e = entry(request)
        return _json(model_metadata(e.name, e.inputs, e.outputs, platform=f"nexus_lab_{e.kind}"))

    async def model_ready(request: web.Request) -> web.Response:
        entry(request)
        return web.Response(status=200 if service.ready() else 503)

    async def infer(request: web.Request) -> web.Response:
        e = entry(request)
        if request.content_length is not None and request.content_length > max_body_bytes:
            raise web.HTTPRequestEntityTooLarge(max_size=max_body_bytes, actual_size=request.content_length)
        body = await request.read()
        req = parse_infer_request(body, request.headers.get(HEADER))
        n = check_inputs(req, e.inputs, e.name, batch=e.max_batch, any_rank=e.item is None)
        if stats.inflight + n > max_inflight:
            raise ProtocolError(f"dropped (overload): {stats.inflight} requests in flight at this frontend, at "
                                f"most {max_inflight}", 429)
        stats.inflight += n
        try:
            outputs = await service.infer(e, req, n)
        except Dropped as exc:
            raise ProtocolError(str(exc), drop_status(exc.reason)) from None
        except RequestFailed as exc:
            raise ProtocolError(f"request failed: {exc}", failure_status(str(exc))) from None
        finally:
            stats.inflight -= n
        payload, headers = encode_infer_response(e.name, req, outputs)
        return web.Response(body=payload, headers=headers)

    app = web.Application(middlewares=[guard], client_max_size=int(max_body_bytes))
    r = app.router
    r.add_get("/v2", server_meta)
    r.add_get("/v2/health/live", live)
    r.add_get("/v2/health/ready", ready)
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        r.add_get(base, model_meta)
        r.add_get(base + "/ready", model_ready)
        r.add_post(base + "/infer", infer)
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nexus_lab")
    except PackageNotFoundError:
        return "0"
