"""The HTTP face of one frontend: the Open Inference Protocol's REST routes as one bare ASGI callable (no web
framework: ``server`` runs it on uvicorn's httptools protocol and uvloop), over a ``Service`` that knows the models
and runs requests (``server.FrontendService``, or anything with the same three members).

Why bare: on the 2 cores the frontend shares with the backends, every µs of per-request Python is goodput lost
(docs/architecture.md, "HTTP library"); the routes are few and fixed, so a split of the path replaces a router, one
pass over the headers replaces a request object, and the response's constant headers are built once.

Status codes (the endpoint's contract, docs/architecture.md, "The service face"): 200; 400 bad input naming the
field; 401 a missing or wrong bearer token (every route but ``/v2/health/*``); 404 unknown model or route; 405 wrong
method; 413 a body over ``max_body_bytes``; 429 dropped for overload (the backend's admission control, or more than
``max_inflight`` requests in flight at this frontend); 503 dropped by the system for another reason (``deadline``,
``no_route``, ``worker_lost``), failed with its worker (lost, hung, unreachable), or the frontend is not ready;
500 a model that raised (its message, no traceback).
Every error body is ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import numpy as np

from ..runtime.results import Dropped, RequestFailed
from .models import ModelEntry
from .protocol import (
    InferRequest,
    ProtocolError,
    check_inputs,
    encode_error,
    encode_infer_response,
    model_metadata,
    parse_infer_request,
)

logger = logging.getLogger("nexus_lab.ingress")

__all__ = ["DEFAULT_MAX_BODY", "DEFAULT_MAX_INFLIGHT", "InferenceApp", "Service", "Stats", "drop_status",
           "failure_status", "make_app"]

DEFAULT_MAX_BODY = 64 * 1024 * 1024  # bytes: a batch of frames, not a denial of service
DEFAULT_MAX_INFLIGHT = 4096  # requests (tensors' rows) in flight at one frontend before it answers 429
SERVER_NAME = "nexus_lab"
EXTENSIONS = ["binary_tensor_data"]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


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
    """503 for a request that failed because a worker was lost, hung or unreachable; 400 for an input the
    backend's pre-processing refused (an image that does not decode); 500 for a model's error."""
    if _SYSTEM_FAILURE.match(message):
        return 503
    return 400 if message.startswith("pre-processing failed") else 500


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


# Response headers built once (ASGI: lower-case byte pairs; uvicorn adds date and the status line).
_JSON = (b"content-type", b"application/json")
_OCTETS = (b"content-type", b"application/octet-stream")
_BEARER = (b"www-authenticate", b"Bearer")
_HEADER_KEY = b"inference-header-content-length"
_GET = ("GET", "HEAD")
_POST = ("POST",)


class _Disconnected(Exception):
    """The client went away before its body arrived: nothing to answer."""


class InferenceApp:
    """The ASGI application of one frontend (``stats`` counts its requests by status).

    Routes: ``GET /v2``, ``/v2/health/{live,ready}``, ``/v2/models/{name}[/versions/{v}]``, ``.../ready``, and
    ``POST .../infer``. Each request ends as one response; an exception in a handler is logged and answered
    ``internal error (TypeName)`` with 500, never a traceback.
    """

    def __init__(self, service: Service, *, token: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY,
                 max_inflight: int = DEFAULT_MAX_INFLIGHT, stats: Stats | None = None) -> None:
        if token is not None and (not isinstance(token, str) or not token):
            raise ValueError("token: must be a non-empty string or None")
        if int(max_body_bytes) < 1:
            raise ValueError(f"max_body_bytes: must be >= 1, got {max_body_bytes}")
        if int(max_inflight) < 1:
            raise ValueError(f"max_inflight: must be >= 1, got {max_inflight}")
        self.service = service
        self.stats = stats if stats is not None else Stats()
        self.max_body_bytes = int(max_body_bytes)
        self.max_inflight = int(max_inflight)
        self._expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # no lifespan or websocket events are served
            return
        method, path = scope["method"], scope["path"]
        extra: tuple[tuple[bytes, bytes], ...] = ()
        try:
            status, body, headers = await self._route(method, path, scope, receive)
        except _Disconnected:
            return
        except ProtocolError as exc:
            status, body, headers = exc.status, encode_error(str(exc)), (_JSON,)
            if status == 401:
                extra = (_BEARER,)
        except Exception as exc:
            logger.exception("ingress: %s %s failed", method, path)
            status, body, headers = 500, encode_error(f"internal error ({type(exc).__name__})"), (_JSON,)
        self.stats.count(status)
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, *extra, (b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    async def _route(self, method: str, path: str, scope: Scope, receive: Receive
                     ) -> tuple[int, bytes, tuple[tuple[bytes, bytes], ...]]:
        """The answer to one request: its status, body and headers (bar content-length)."""
        parts = path.split("/")  # "/v2/models/m/infer" -> ["", "v2", "models", "m", "infer"]
        if self._expected is not None and not path.startswith("/v2/health/"):
            given = b""
            for k, v in scope["headers"]:
                if k == b"authorization":
                    given = v
                    break
            if not hmac.compare_digest(given, self._expected):
                raise ProtocolError("Authorization: missing or wrong bearer token", 401)
        n = len(parts)
        if n < 2 or parts[0] or parts[1] != "v2":
            raise _not_found(method, path)
        if n >= 4 and parts[2] == "models" and parts[3]:
            name, rest = parts[3], parts[4:]
            version = None
            if len(rest) >= 2 and rest[0] == "versions" and rest[1]:
                version, rest = rest[1], rest[2:]
            if not rest:
                _allow(method, path, _GET)
                e = self._entry(name, version)
                # off the loop: a model whose output shape no controller published is worked out here once (torch)
                outputs = await asyncio.get_running_loop().run_in_executor(None, lambda: e.outputs)
                return 200, _dumps(model_metadata(e.name, e.inputs, outputs, platform=f"nexus_lab_{e.kind}")), \
                    (_JSON,)
            if rest == ["infer"]:
                _allow(method, path, _POST)
                return await self._infer(self._entry(name, version), scope, receive)
            if rest == ["ready"]:
                _allow(method, path, _GET)
                self._entry(name, version)
                return (200 if self.service.ready() else 503), b"", ()
            raise _not_found(method, path)
        if n == 2:
            _allow(method, path, _GET)
            return 200, _dumps({"name": SERVER_NAME, "version": _version(), "extensions": EXTENSIONS}), (_JSON,)
        if n == 4 and parts[2] == "health" and parts[3] in ("live", "ready"):
            _allow(method, path, _GET)
            return (200 if parts[3] == "live" or self.service.ready() else 503), b"", ()
        raise _not_found(method, path)

    def _entry(self, name: str, version: str | None) -> ModelEntry:
        models = self.service.models()
        found = models.get(name)
        if found is None:
            raise ProtocolError(f"model: unknown model {name!r}; models: {sorted(models)}", 404)
        if version is not None and version != "1":
            raise ProtocolError(f"version: model {name!r} has only version '1', got {version!r}", 404)
        return found

    async def _infer(self, e: ModelEntry, scope: Scope, receive: Receive
                     ) -> tuple[int, bytes, tuple[tuple[bytes, bytes], ...]]:
        declared = header_length = None
        for k, v in scope["headers"]:  # one pass over the few headers a client sends
            if k == b"content-length":
                declared = v
            elif k == _HEADER_KEY:
                header_length = v.decode("latin-1")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise self._too_large()
        body = await self._body(receive)
        req = parse_infer_request(body, header_length)
        n = check_inputs(req, e.inputs, e.name, batch=e.max_batch, any_rank=e.item is None)
        stats = self.stats
        if stats.inflight + n > self.max_inflight:
            raise ProtocolError(f"dropped (overload): {stats.inflight} requests in flight at this frontend, at "
                                f"most {self.max_inflight}", 429)
        stats.inflight += n
        try:
            outputs = await self.service.infer(e, req, n)
        except Dropped as exc:
            raise ProtocolError(str(exc), drop_status(exc.reason)) from None
        except RequestFailed as exc:
            raise ProtocolError(f"request failed: {exc}", failure_status(str(exc))) from None
        finally:
            stats.inflight -= n
        payload, headers = encode_infer_response(e.name, req, outputs)
        length = headers.get("Inference-Header-Content-Length")
        if length is None:
            return 200, payload, (_JSON,)
        return 200, payload, (_OCTETS, (_HEADER_KEY, length.encode()))

    async def _body(self, receive: Receive) -> bytes:
        """The whole request body, refused (413) as soon as it passes the limit, chunked or not."""
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                raise _Disconnected
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large()
            chunks.append(chunk)
            if not msg.get("more_body", False):
                return chunk if len(chunks) == 1 else b"".join(chunks)

    def _too_large(self) -> ProtocolError:
        return ProtocolError(f"body: larger than the limit of {self.max_body_bytes} bytes", 413)


def make_app(service: Service, *, token: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY,
             max_inflight: int = DEFAULT_MAX_INFLIGHT, stats: Stats | None = None) -> InferenceApp:
    """The ASGI application of one frontend (``stats`` counts its requests)."""
    return InferenceApp(service, token=token, max_body_bytes=max_body_bytes, max_inflight=max_inflight,
                        stats=stats)


def _allow(method: str, path: str, allowed: tuple[str, ...]) -> None:
    if method not in allowed:
        raise ProtocolError(f"{method} {path}: Method Not Allowed (allowed: {', '.join(allowed)})", 405)


def _not_found(method: str, path: str) -> ProtocolError:
    return ProtocolError(f"{method} {path}: Not Found", 404)


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nexus_lab")
    except PackageNotFoundError:
        return "0"
