"""The Open Inference Protocol (KServe v2, REST) as plain functions: parse an infer request (JSON tensors or the
binary tensor data extension), check it against a model's declared inputs, and encode responses and metadata.

Pure: bytes and dicts in, numpy arrays and bytes out; no HTTP library, no Dask, no frontend. Every bad request
raises ``ProtocolError`` with the HTTP status and a message naming the field (``inputs[0].shape``, ...).

Facts of the protocol used here: an infer body is a JSON object ``{"id", "parameters", "inputs": [{"name", "shape",
"datatype", "parameters", "data"}], "outputs": [{"name", "parameters"}]}``; with the binary extension the request's
``Inference-Header-Content-Length`` header gives the JSON part's length, and the raw little-endian tensors follow it
in input order, each sized by its ``parameters.binary_data_size``. Outputs are binary when the output asks
(``parameters.binary_data``) or the request does (``parameters.binary_data_output``); the response then carries
the same header and the raw outputs after its JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import bytes_tensors

__all__ = ["DATATYPES", "HEADER", "InferRequest", "ProtocolError", "TensorSpec", "check_inputs", "datatype_of",
           "dtype_of", "encode_error", "encode_infer_response", "model_metadata", "parse_infer_request",
           "stack_outputs"]

#: The binary tensor data extension's header: the length of the JSON part of a body.
HEADER = "Inference-Header-Content-Length"

#: Protocol datatype -> numpy dtype (little-endian). BYTES (encoded images in, structured results out) is an
#: object array of ``bytes`` (``bytes_tensors``).
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("bool"), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
_NAMES = {dt: name for name, dt in DATATYPES.items()}
BYTES_DTYPE = np.dtype(object)


def dtype_of(datatype: str) -> np.dtype:
    """The numpy dtype of a protocol datatype (object for BYTES)."""
    return BYTES_DTYPE if datatype == "BYTES" else DATATYPES[datatype]


class ProtocolError(ValueError):
    """A request the protocol answers with ``{"error": message}`` and ``status`` (400, 404, 413, ...)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = int(status)


@dataclass(frozen=True)
class TensorSpec:
    """One declared input or output of a model: ``shape`` with -1 for a variable axis (the first is the batch)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass
class InferRequest:
    """A parsed infer request: its ``id`` (echoed back), input arrays by name, and which outputs it asked for
    (name -> binary or not; empty: every output, binary when ``binary_all``)."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: dict[str, bool] = field(default_factory=dict)
    binary_all: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)

    def binary(self, name: str) -> bool:
        """Whether output ``name`` goes back as raw bytes."""
        return self.outputs.get(name, self.binary_all)


def datatype_of(dtype: Any) -> str:
    """The protocol datatype of a numpy dtype (``ProtocolError`` for one it has no name for)."""
    dt = np.dtype(dtype)
    if dt == BYTES_DTYPE:
        return "BYTES"
    name = _NAMES.get(dt.newbyteorder("<") if dt.byteorder == ">" else dt)
    if name is None:
        raise ProtocolError(f"output datatype: numpy dtype {dt} has no Open Inference Protocol datatype", 500)
    return name


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{where}: must be a JSON object, got {type(value).__name__}")
    return value


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in value):
        raise ProtocolError(f"{where}: must be a list of integers >= 0, got {value!r}")
    return tuple(value)


def _json_length(size: int, header_length: str | None) -> int:
    """How many bytes of a body of ``size`` are its JSON part (the header's value, checked)."""
    if header_length is None:
        return size
    try:
        json_len = int(header_length)
    except ValueError:
        raise ProtocolError(f"{HEADER}: must be an integer, got {header_length!r}") from None
    if not 0 < json_len <= size:
        raise ProtocolError(f"{HEADER}: must be in [1, {size}] (the body's length), got {json_len}")
    return json_len


def _loads(head: bytes) -> Any:
    try:
        return json.loads(head)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"body: not valid JSON ({exc})") from None


class _Layout:
    """What a binary-only JSON header says, parsed once: the id, parameters, each input's name, dtype, shape,
    offset and size in the binary part, and the outputs asked for. A client sends the same header for every
    request of one shape (tritonclient, a camera loop), so ``parse_infer_request`` keeps the layouts of recent
    headers and only slices the next body."""

    __slots__ = ("binary_all", "id", "inputs", "outputs", "params", "size")

    def __init__(self, req: InferRequest, rest_size: int) -> None:
        self.id, self.binary_all, self.size = req.id, req.binary_all, rest_size
        self.params, self.outputs = req.parameters, req.outputs
        offset, inputs = 0, []
        for name, arr in req.inputs.items():
            inputs.append((name, arr.dtype, arr.shape, offset, arr.size))
            offset += arr.nbytes
        self.inputs = tuple(inputs)

    def request(self, rest: memoryview) -> InferRequest:
        arrays = {name: np.frombuffer(rest, dtype, count, offset).reshape(shape)
                  for name, dtype, shape, offset, count in self.inputs}
        return InferRequest(self.id, arrays, dict(self.outputs), self.binary_all, dict(self.params))


#: Layouts of recent binary-only headers, by the header's bytes (at most ``LAYOUTS_KEPT``, each at most
#: ``LAYOUT_HEAD_MAX`` bytes; the oldest goes first). A memo of a pure function: results are the same with or
#: without it.
_LAYOUTS: dict[bytes, _Layout] = {}
LAYOUTS_KEPT = 256
LAYOUT_HEAD_MAX = 4096


def _tensor(item: dict[str, Any], k: int, rest: memoryview, offset: int) -> tuple[str, np.ndarray, int]:
    where = f"inputs[{k}]"
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"{where}.name: must be a non-empty string, got {name!r}")
    shape = _shape(item.get("shape"), f"{where}.shape")
    datatype = item.get("datatype")
    if datatype != "BYTES" and datatype not in DATATYPES:
        raise ProtocolError(f"{where}.datatype: must be one of {sorted([*DATATYPES, 'BYTES'])}, got {datatype!r}")
    count = math.prod(shape)  # Python ints: no overflow, and ~20x cheaper than numpy on a short list
    params = _obj(item.get("parameters", {}), f"{where}.parameters")
    dtype = dtype_of(datatype)
    size = params.get("binary_data_size")
    try:
        if size is None:
            if "data" not in item:
                raise ProtocolError(f"{where}.data: missing (give data, or parameters.binary_data_size with the "
                                    f"{HEADER} header)")
            return name, _from_json(item["data"], datatype, dtype, shape, count, where), offset
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError(f"{where}.parameters.binary_data_size: must be an integer >= 0, got {size!r}")
        if "data" in item:
            raise ProtocolError(f"{where}: gives both data and parameters.binary_data_size")
        if dtype != BYTES_DTYPE and size != count * dtype.itemsize:  # BYTES elements carry their own lengths
            raise ProtocolError(f"{where}.parameters.binary_data_size: shape {list(shape)} of {datatype} takes "
                                f"{count * dtype.itemsize} bytes, got {size}")
        if offset + size > len(rest):
            raise ProtocolError(f"{where}.parameters.binary_data_size: {size} bytes from offset {offset}, but the "
                                f"binary part of the body has {len(rest)} (malformed binary data)")
        raw = rest[offset:offset + size]
        arr = bytes_tensors.decode_binary(raw, count, where) if dtype == BYTES_DTYPE else np.frombuffer(raw, dtype)
    except bytes_tensors.BytesError as exc:
        raise ProtocolError(str(exc)) from None
    return name, arr.reshape(shape), offset + size


def _from_json(data: Any, datatype: str, dtype: np.dtype, shape: tuple[int, ...], count: int, where: str
               ) -> np.ndarray:
    """A tensor's JSON ``data``: ``count`` strings for BYTES, else ``count`` values of ``dtype``."""
    if dtype == BYTES_DTYPE:
        return bytes_tensors.from_json(data, count, where).reshape(shape)
    try:
        arr = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ProtocolError(f"{where}.data: not {datatype} values ({exc})") from None
    if arr.size != count:
        raise ProtocolError(f"{where}.data: shape {list(shape)} takes {count} values, got {arr.size}")
    return arr.reshape(shape)


def parse_infer_request(body: bytes, header_length: str | None = None) -> InferRequest:
    """Parse an infer body; ``header_length`` is the ``Inference-Header-Content-Length`` header (None: JSON only).
    Binary inputs are read-only views of ``body`` (no copy)."""
    view = memoryview(body)
    json_len = _json_length(len(body), header_length)
    head = bytes(view[:json_len])
    rest = view[json_len:]
    layout = _LAYOUTS.get(head) if header_length is not None else None
    if layout is not None and layout.size == len(rest):
        return layout.request(rest)
    req, binary_only = _parse(_loads(head), rest)
    if binary_only and header_length is not None and json_len <= LAYOUT_HEAD_MAX:
        if len(_LAYOUTS) >= LAYOUTS_KEPT:
            _LAYOUTS.pop(next(iter(_LAYOUTS)), None)
        _LAYOUTS[head] = _Layout(req, len(rest))
    return req


def _parse(doc: Any, rest: memoryview) -> tuple[InferRequest, bool]:
    """The request a parsed JSON part and the binary rest make, and whether every input was binary."""
    doc = _obj(doc, "body")
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise ProtocolError(f"id: must be a string, got {type(rid).__name__}")
    params = _obj(doc.get("parameters", {}), "parameters")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError("inputs: must be a non-empty list of tensors")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    binary_only = True
    for k, item in enumerate(inputs):
        name, arr, offset = _tensor(_obj(item, f"inputs[{k}]"), k, rest, offset)
        if name in arrays:
            raise ProtocolError(f"inputs[{k}].name: {name!r} given twice")
        arrays[name] = arr
        binary_only = binary_only and "data" not in item and arr.dtype != BYTES_DTYPE  # no layout for BYTES
    if offset != len(rest):
        raise ProtocolError(f"{HEADER}: the binary inputs take {offset} bytes but {len(rest)} follow the JSON "
                            f"(malformed binary data)")
    outs: dict[str, bool] = {}
    binary_all = params.get("binary_data_output", False)
    if not isinstance(binary_all, bool):
        raise ProtocolError(f"parameters.binary_data_output: must be true or false, got {binary_all!r}")
    requested = doc.get("outputs", [])
    if not isinstance(requested, list):
        raise ProtocolError("outputs: must be a list")
    for k, item in enumerate(requested):
        item = _obj(item, f"outputs[{k}]")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise ProtocolError(f"outputs[{k}].name: must be a non-empty string, got {name!r}")
        b = _obj(item.get("parameters", {}), f"outputs[{k}].parameters").get("binary_data", binary_all)
        if not isinstance(b, bool):
            raise ProtocolError(f"outputs[{k}].parameters.binary_data: must be true or false, got {b!r}")
        outs[name] = b
    return InferRequest(rid, arrays, outs, binary_all, params), binary_only


def check_inputs(req: InferRequest, specs: Sequence[TensorSpec], model: str, *, batch: int | None = None,
                 any_rank: bool = False) -> int:
    """Check the inputs against the model's declared ones: every one given, no other, datatype and shape equal
    (-1 matches any size; ``any_rank``: only the batch axis counts, for a model that takes any tensor), one batch
    size for all. Returns the batch size."""
    known = {s.name: s for s in specs}
    for name in req.inputs:
        if name not in known:
            raise ProtocolError(f"inputs: model {model!r} has no input {name!r}; its inputs: {sorted(known)}")
    n = None
    for s in specs:
        arr = req.inputs.get(s.name)
        if arr is None:
            raise ProtocolError(f"inputs: missing input {s.name!r} of model {model!r}")
        if dtype_of(s.datatype) != arr.dtype:
            raise ProtocolError(f"inputs[{s.name!r}].datatype: model {model!r} takes {s.datatype}, "
                                f"got {datatype_of(arr.dtype)}")
        if any_rank:
            if not arr.shape:
                raise ProtocolError(f"inputs[{s.name!r}].shape: model {model!r} takes a batch axis first, got []")
        elif len(arr.shape) != len(s.shape) or any(d != -1 and d != g for d, g in zip(s.shape, arr.shape,
                                                                                 strict=True)):
            raise ProtocolError(f"inputs[{s.name!r}].shape: model {model!r} takes {list(s.shape)} (-1: any), "
                                f"got {list(arr.shape)}")
        if arr.shape[0] < 1:
            raise ProtocolError(f"inputs[{s.name!r}].shape: the batch axis must be >= 1, got {arr.shape[0]}")
        if n is not None and arr.shape[0] != n:
            raise ProtocolError(f"inputs[{s.name!r}].shape: batch {arr.shape[0]}, but another input has {n}")
        n = arr.shape[0]
    if batch is not None and n is not None and n > batch:
        raise ProtocolError(f"inputs.shape: model {model!r} takes at most {batch} per request, got {n}")
    return int(n or 0)


def stack_outputs(rows: Sequence[Any]) -> np.ndarray:
    """One output tensor from per-item results: stacked along a new first axis; items of different shapes (a
    detector's box lists) are zero-padded to the largest (a zero row is no box). Structured results (top-k
    labels, boxes: lists of dicts) are one BYTES element each, their JSON text."""
    if rows and any(isinstance(r, (list, tuple, dict)) and not _numeric(r) for r in rows):
        return bytes_tensors.result_elements(rows)
    arrs = [np.asarray(r) for r in rows]
    if not arrs:
        return np.zeros((0,), dtype=np.float32)
    if len(arrs) == 1:  # one row, the common request: a view, no copy
        return arrs[0][np.newaxis]
    if all(a.shape == arrs[0].shape for a in arrs):
        return np.stack(arrs)
    if len({a.ndim for a in arrs}) != 1:
        raise ProtocolError("outputs: items of different ranks cannot form one tensor", 500)
    top = tuple(max(a.shape[d] for a in arrs) for d in range(arrs[0].ndim))
    out = np.zeros((len(arrs), *top), dtype=np.result_type(*arrs))
    for k, a in enumerate(arrs):
        out[(k, *(slice(0, s) for s in a.shape))] = a
    return out


def _numeric(row: Any) -> bool:
    """Whether a result row is numbers (a plain nested list of them), not a structure to send as JSON."""
    try:
        return np.asarray(row).dtype.kind in "biuf"
    except (ValueError, TypeError):
        return False


def encode_infer_response(model: str, req: InferRequest, outputs: Mapping[str, np.ndarray],
                          version: str = "1") -> tuple[bytes, dict[str, str]]:
    """The response body and its extra headers: outputs the request asked for (all when it named none), binary
    ones as raw little-endian bytes after the JSON with the ``Inference-Header-Content-Length`` header."""
    names = list(req.outputs) if req.outputs else list(outputs)
    for k, name in enumerate(names):
        if name not in outputs:
            raise ProtocolError(f"outputs[{k}].name: model {model!r} has no output {name!r}; its outputs: "
                                f"{sorted(outputs)}")
    items: list[dict[str, Any]] = []
    raw: list[bytes] = []
    for name in names:
        arr = np.asarray(outputs[name])
        dt = datatype_of(arr.dtype)
        item: dict[str, Any] = {"name": name, "datatype": dt, "shape": list(arr.shape)}
        if req.binary(name):
            data = (bytes_tensors.encode_binary(arr) if dt == "BYTES" else
                    np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes())
            item["parameters"] = {"binary_data_size": len(data)}
            raw.append(data)
        else:
            item["data"] = bytes_tensors.to_json(arr) if dt == "BYTES" else arr.reshape(-1).tolist()
        items.append(item)
    doc: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": items}
    if req.id is not None:
        doc["id"] = req.id
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not raw:
        return head, {"Content-Type": "application/json"}
    return b"".join([head, *raw]), {HEADER: str(len(head)), "Content-Type": "application/octet-stream"}


def encode_error(message: str) -> bytes:
    """The protocol's error body."""
    return json.dumps({"error": str(message)}).encode()


def model_metadata(name: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], *,
                   platform: str = "nexus_lab", versions: Sequence[str] = ("1",)) -> dict[str, Any]:
    """``GET /v2/models/{name}``: the model's name, versions, platform, inputs and outputs."""
    return {"name": name, "versions": list(versions), "platform": platform,
            "inputs": [s.to_dict() for s in inputs], "outputs": [s.to_dict() for s in outputs]}
