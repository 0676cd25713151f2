"""``BYTES`` tensors of the Open Inference Protocol: encoded images in, structured results out.

A model with an image transform (``torchvision:*``, a repository model with ``preprocess``) takes each request's
JPEG/PNG bytes, decoded on the backend's CPU threads; a model with a result step answers top-k labels or boxes,
which are not numbers in a grid. Both travel as ``BYTES``: in the binary extension each element is a 4-byte
little-endian length and that many bytes (what tritonclient writes and reads); in JSON each element is a string.
A result row is one element holding its JSON text (``[{"label": "tabby", "index": 281, "score": 0.41}, ...]``).
Pure: no HTTP, no numpy beyond object arrays.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["MAX_ELEMENTS", "decode_binary", "encode_binary", "from_json", "result_elements", "to_json"]

#: Elements one BYTES tensor may hold: a batch of frames, not a denial of service by a million empty strings.
MAX_ELEMENTS = 4096

_LEN = struct.Struct("<I")


class BytesError(ValueError):
    """Malformed BYTES data; the message names the field."""


def decode_binary(raw: memoryview, count: int, where: str) -> np.ndarray:
    """``count`` length-prefixed elements that must fill ``raw`` exactly, as a 1-D object array of ``bytes``."""
    if count > MAX_ELEMENTS:
        raise BytesError(f"{where}.shape: at most {MAX_ELEMENTS} BYTES elements per tensor, got {count}")
    out = np.empty(count, dtype=object)
    pos, end = 0, len(raw)
    for k in range(count):
        if pos + 4 > end:
            raise BytesError(f"{where}: BYTES element {k} has no 4-byte length (malformed binary data)")
        (n,) = _LEN.unpack_from(raw, pos)
        pos += 4
        if pos + n > end:
            raise BytesError(f"{where}: BYTES element {k} says {n} bytes, only {end - pos} follow "
                             f"(malformed binary data)")
        out[k] = bytes(raw[pos:pos + n])
        pos += n
    if pos != end:
        raise BytesError(f"{where}: {end - pos} bytes left after {count} BYTES elements (malformed binary data)")
    return out


def encode_binary(arr: np.ndarray) -> bytes:
    """The binary extension's layout of an object array of ``bytes``/``str`` (row-major)."""
    parts: list[bytes] = []
    for v in arr.reshape(-1).tolist():
        b = v if isinstance(v, (bytes, bytearray)) else str(v).encode()
        parts += [_LEN.pack(len(b)), bytes(b)]
    return b"".join(parts)


def from_json(data: Any, count: int, where: str) -> np.ndarray:
    """JSON ``data`` of a BYTES tensor: ``count`` strings (UTF-8 encoded as the elements' bytes)."""
    if not isinstance(data, list) or len(data) != count or not all(isinstance(v, str) for v in data):
        raise BytesError(f"{where}.data: a BYTES tensor of {count} elements takes a list of {count} strings "
                         f"(send images with the binary data extension)")
    if count > MAX_ELEMENTS:
        raise BytesError(f"{where}.shape: at most {MAX_ELEMENTS} BYTES elements per tensor, got {count}")
    out = np.empty(count, dtype=object)
    for k, v in enumerate(data):
        out[k] = v.encode()
    return out


def to_json(arr: np.ndarray) -> list[str]:
    """An object array's elements as JSON strings (bytes decoded as UTF-8, undecodable bytes replaced)."""
    return [v.decode("utf-8", "replace") if isinstance(v, (bytes, bytearray)) else str(v)
            for v in arr.reshape(-1).tolist()]


def result_elements(rows: Sequence[Any]) -> np.ndarray:
    """Structured results (a classifier's top-k, a detector's boxes), one BYTES element each: its JSON text."""
    out = np.empty(len(rows), dtype=object)
    for k, r in enumerate(rows):
        out[k] = json.dumps(_plain(r), separators=(",", ":")).encode()
    return out


def _plain(value: Any) -> Any:
    """JSON-ready: tuples (results cross the wire as tuples) as lists, numpy scalars and arrays as numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
