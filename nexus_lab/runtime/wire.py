"""The wire between frontends and backends: every stream message and payload spec is encoded and decoded here.

One persistent stream per (frontend, backend) pair, opened with the backend's ``nexus_stream`` handler over
distributed's comms. Frontend to backend: ``{"r": [[id, session, deadline, payload], ...]}``. Backend to
frontend: ``{"d": [row, ...]}`` with rows ``[id, status, value]`` (status ``ok``, ``dropped`` or ``error``),
``[[id, ...], "oks", [dtype, shape, bytes]]`` (one batch's same-shaped array results, stacked) and
``[None, "holds", {session: ms}]`` (how long the backend holds each session's small batches) and
``[None, "beat", None]`` (the backend is alive: sent while it holds requests of the stream and has said nothing
for a while, and at once in answer to an empty request message, the frontend's ping). Payloads of
sessions whose model has a zoo input spec travel as raw bytes, checked against the spec on both sides. The backend,
the frontend and the load generator all use this module; nothing else writes these messages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ["OPEN_STREAM", "PING", "STREAM_OP", "beat_row", "check_payload", "decode_payload", "encode_payload",
           "encode_payloads", "holds_row", "input_spec", "ok_rows", "read_replies", "replies_message", "reply_row",
           "request_rows", "requests_message", "to_wire"]

#: The backend's handler that a frontend opens its stream with, and the message that opens it.
STREAM_OP = "nexus_stream"
OPEN_STREAM = {"op": STREAM_OP, "reply": False}
HOLDS = "holds"
STACKED = "oks"
BEAT = "beat"
#: A request message without requests: the backend answers it with a beat row at once (a frontend's probe of a
#: backend it suspects of hanging).
PING: dict[str, Any] = {"r": []}


def to_wire(value: Any) -> Any:
    """Arrays travel as distributed's serialized frames (no pickle fallback warning, zero-copy)."""
    if isinstance(value, np.ndarray):
        from distributed.protocol import to_serialize

        return to_serialize(value)
    return value


# ---------------------------------------------------------------------------------------------- requests
def requests_message(requests: Iterable[tuple[Any, str, float, Any]]) -> dict[str, Any]:
    """One message of ``(id, session, deadline, payload)`` requests."""
    return {"r": [[rid, session, deadline, to_wire(payload)] for rid, session, deadline, payload in requests]}


def request_rows(msg: Any) -> list[list[Any]] | None:
    """The request rows of a message a backend read; None for anything else (the frontend closed the stream)."""
    if not isinstance(msg, dict) or "r" not in msg:
        return None
    return msg["r"]


# ---------------------------------------------------------------------------------------------- replies
def reply_row(rid: Any, status: str, value: Any) -> list[Any]:
    """One request's end: a list (inproc comms unwrap serialized values only inside lists)."""
    return [rid, status, to_wire(value)]


def holds_row(holds_ms: dict[str, float]) -> list[Any]:
    """The backend's current holds (ms per session): its frontends coalesce that long for it."""
    return [None, HOLDS, dict(holds_ms)]


def beat_row() -> list[Any]:
    """A row that says only that the backend is alive: its frontends tell a hung backend by the silence."""
    return [None, BEAT, None]


def ok_rows(rids: Sequence[Any], outputs: Sequence[Any]) -> list[list[Any]]:
    """A batch's results: arrays of one shape and dtype travel stacked as one row (one msgpack field instead of a
    serialized frame per request); anything else one row per request."""
    first = outputs[0] if outputs else None
    if (len(rids) > 1 and isinstance(first, np.ndarray)
            and all(isinstance(o, np.ndarray) and o.shape == first.shape and o.dtype == first.dtype
                    for o in outputs)):
        arr = np.stack(outputs)
        return [[list(rids), STACKED, [arr.dtype.str, list(arr.shape), arr.tobytes()]]]
    return [reply_row(rid, "ok", out) for rid, out in zip(rids, outputs, strict=True)]


def replies_message(rows: list[list[Any]]) -> dict[str, Any]:
    """One message of reply rows (``reply_row``, ``ok_rows``, ``holds_row``)."""
    return {"d": rows}


def read_replies(msg: dict[str, Any], end: Callable[[Any, str, Any], None],
                 holds: Callable[[dict[str, float]], None]) -> None:
    """Decode one reply message: ``end(id, status, value)`` per request, ``holds({session: seconds})`` per holds
    row; beat rows say only that the backend is alive (reading the message said it). Stacked results come back as
    writable arrays, like any result."""
    for rid, status, value in msg["d"]:
        if status == BEAT:
            continue
        if status == HOLDS:
            holds({k: float(v) / 1000.0 for k, v in value.items()})
        elif status == STACKED:
            dtype, shape, raw = value
            rows = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
            for k, one in enumerate(rid):
                end(one, "ok", rows[k])
        else:
            end(rid, status, value)


# ---------------------------------------------------------------------------------------------- payloads
def input_spec(model: str) -> Any:
    """The zoo's input spec of ``model`` (``InputSpec``: shape without the batch axis, dtype), or None for models
    outside the zoo (profile-only models on simulated GPUs) and zoo models that take any payload."""
    if not model:
        return None
    from ..models.zoo import input_spec as zoo_spec

    try:
        return zoo_spec(model)
    except (KeyError, ValueError):
        return None


def check_payload(spec: Any, payload: Any, field: str, session: str) -> None:
    """``ValueError`` naming ``field`` unless ``payload`` is one input of ``spec``."""
    shape, dtype = tuple(spec.shape), np.dtype(spec.dtype)
    if not isinstance(payload, np.ndarray):
        raise ValueError(f"{field}: session {session!r} takes a numpy array of shape {shape} and dtype {dtype},"
                         f" got {type(payload).__name__}")
    if tuple(payload.shape) != shape:
        raise ValueError(f"{field}: session {session!r} takes shape {shape}, got {tuple(payload.shape)}")
    if payload.dtype != dtype:
        raise ValueError(f"{field}: session {session!r} takes dtype {dtype}, got {payload.dtype}")


def encode_payload(spec: Any, payload: Any, field: str, session: str) -> bytes:
    """A checked payload as the raw bytes it travels as."""
    check_payload(spec, payload, field, session)
    return np.ascontiguousarray(payload).tobytes()


def encode_payloads(spec: Any, payloads: list[Any], session: str) -> list[bytes]:
    """Checked payloads as raw bytes: one msgpack field each, where an array would be a serialized header plus a
    frame per request (~10x the frontend's CPU per request). One object sent many times is checked and encoded
    once; a ``ValueError`` names the bad one."""
    encoded: dict[int, bytes] = {}
    out = []
    for k, p in enumerate(payloads):
        raw = encoded.get(id(p))
        if raw is None:
            field = f"payloads[{k}]" if len(payloads) > 1 else "payload"
            raw = encoded[id(p)] = encode_payload(spec, p, field, session)
        out.append(raw)
    return out


def decode_payload(spec: Any, raw: bytes) -> np.ndarray:
    """The input the raw bytes encode; ``ValueError`` when they are not one input of ``spec``."""
    return np.frombuffer(raw, dtype=spec.dtype).reshape(spec.shape)
