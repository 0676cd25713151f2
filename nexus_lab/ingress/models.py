"""What the endpoint serves as models: every routed session under its session name, every planned query under its
query name (its stages' outputs, like a Triton ensemble), with the tensors each declares.

Built from the routes a controller publishes (the session table of ``Frontend.set_routes``) and the query table of
``nexus_lab.runtime.queries``; no HTTP, no Dask. Output shapes are worked out once per model and process
(``output_item``: the zoo net on a meta tensor), only when metadata asks for them, so a frontend that only
infers never imports torch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .protocol import TensorSpec, datatype_of

logger = logging.getLogger("nexus_lab.ingress")

__all__ = ["INPUT", "OUTPUT", "ModelEntry", "adopt_outputs", "model_table", "output_item", "published_outputs"]

#: The name of a session's one input and one output tensor.
INPUT = "input"
OUTPUT = "output"


@dataclass(frozen=True)
class ModelEntry:
    """One model of the endpoint: a session (``stages`` empty) or a query (its stage names, in order)."""

    name: str
    kind: str  # "session" or "query"
    inputs: tuple[TensorSpec, ...]
    output_names: tuple[str, ...]
    output_models: tuple[str, ...]  # the model computing each output ("" unknown)
    slo_ms: float
    item: tuple[int, ...] | None = None  # one request's input shape (None: any)
    stages: tuple[str, ...] = ()
    query: dict[str, Any] = field(default_factory=dict)  # the query's plain route data

    @property
    def max_batch(self) -> int | None:
        """Queries take one frame per request; sessions any batch."""
        return 1 if self.kind == "query" else None

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """Each output's spec: ``[-1, *one item's output]`` where the model's output is fixed (worked out on first
        use, then cached per model), ``[-1, -1]`` where it varies (a detector's boxes, labels) or is unknown."""
        out = []
        for name, model in zip(self.output_names, self.output_models, strict=True):
            if _steps(model)[1]:  # top-k labels, boxes: one JSON text per item
                out.append(TensorSpec(name, "BYTES", (-1,)))
                continue
            known = output_item(model)
            out.append(TensorSpec(name, "FP32", (-1, -1)) if known is None
                       else TensorSpec(name, known[1], (-1, *known[0])))
        return tuple(out)


#: model -> (one item's output shape, datatype), or None (varies / unknown); filled by ``output_item``.
_OUTPUTS: dict[str, tuple[tuple[int, ...], str] | None] = {}
_OUTPUTS_LOCK = threading.Lock()


def output_item(model: str) -> tuple[tuple[int, ...], str] | None:
    """One request's output shape (no batch axis) and datatype of a zoo model, or None where it is not fixed: no
    input spec (profile-only models, the no-op), a result step (top-k labels, boxes), a per-image postprocess (the
    detector), or a net that cannot be run on a meta tensor or zeros. Computed once per model and process."""
    if not model:
        return None
    with _OUTPUTS_LOCK:
        if model in _OUTPUTS:
            return _OUTPUTS[model]
        try:
            found = _infer_output(model)
        except Exception as exc:  # a net that does not run on zeros: its output is declared variable
            logger.debug("output shape of %r unknown: %s", model, exc)
            found = None
        _OUTPUTS[model] = found
        return found


def published_outputs(models: Any) -> dict[str, list[Any] | None]:
    """``output_item`` of each model in a JSON-able form (``{model: [shape, datatype] or None}``), for a serving
    controller to publish: a frontend process that adopts them (``adopt_outputs``) answers metadata without
    importing torch (~2 s, its loop stopped or starved of the GIL while it loads)."""
    out: dict[str, list[Any] | None] = {}
    for model in sorted({str(m) for m in models if m}):
        found = output_item(model)
        out[model] = None if found is None else [list(found[0]), found[1]]
    return out


def adopt_outputs(published: Mapping[str, Any] | None) -> None:
    """Take a controller's ``published_outputs`` as this process's ``output_item`` answers."""
    with _OUTPUTS_LOCK:
        for model, found in (published or {}).items():
            _OUTPUTS[str(model)] = None if found is None else (tuple(int(d) for d in found[0]), str(found[1]))


def _zoo_spec(model: str) -> Any:
    """The zoo's spec a session of ``model`` serves with: a suffix session its whole model's (it takes the model's
    input and answers its output); None for a prefix part, an empty name or a model outside the zoo."""
    from ..models import zoo

    part, base = zoo.part_of(model) if model else ("prefix", "")
    if part == "prefix":
        return None
    try:
        return zoo.get_model_spec(base)
    except (KeyError, ValueError):
        return None


def _infer_output(model: str) -> tuple[tuple[int, ...], str] | None:
    spec = _zoo_spec(model)
    if (spec is None or spec.input_shape is None or spec.passthrough or spec.postprocess is not None
            or spec.post is not None):
        return None
    import numpy as np
    import torch

    dtype = torch.from_numpy(np.zeros(0, dtype=spec.dtype)).dtype
    try:  # the meta device: shapes only, no weights allocated or initialised, no arithmetic
        with torch.device("meta"):
            net = spec.factory()
            with torch.no_grad():
                y = net(torch.zeros((1, *spec.input_shape), dtype=dtype))
    except Exception:  # a net that needs real tensors (e.g. a TorchScript file): one forward pass on zeros
        net = spec.factory()
        with torch.no_grad():
            y = net(torch.zeros((1, *spec.input_shape), dtype=dtype))
    if not isinstance(y, torch.Tensor) or y.ndim < 1 or y.shape[0] != 1:
        return None
    return tuple(int(d) for d in y.shape[1:]), datatype_of(np.dtype(str(y.dtype).removeprefix("torch.")))


def _steps(model: str) -> tuple[bool, bool]:
    """Whether ``model`` has an image transform (it takes encoded images) and a result step (it answers
    structured results), from the zoo; (False, False) for models outside it."""
    spec = _zoo_spec(model)
    if spec is None:
        return False, False
    return spec.transform is not None, spec.post is not None


def _input(model: str, batch: int) -> tuple[TensorSpec, tuple[int, ...] | None]:
    from ..runtime.wire import input_spec

    if _steps(model)[0]:  # an image model: one encoded image (JPEG/PNG bytes) per element
        return TensorSpec(INPUT, "BYTES", (batch,)), ()
    spec = input_spec(model)
    if spec is None:  # a model without an input spec (simulated, profile only) takes any FP32 tensor
        return TensorSpec(INPUT, "FP32", (batch, -1)), None
    shape = tuple(int(d) for d in spec.shape)
    return TensorSpec(INPUT, datatype_of(spec.dtype), (batch, *shape)), shape


def model_table(sessions: Mapping[str, Mapping[str, Any]],
                queries: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, ModelEntry]:
    """Every routed session (``{"model", "slo_ms", ...}``) and query (``query_routes``' ``{"query": {"slo_ms",
    "stages": [{"name", "session"}]}, "parents"}``) as a model entry. Query stages (``query/stage``) are not
    models of their own."""
    out: dict[str, ModelEntry] = {}
    for name, s in sessions.items():
        if "/" in name:
            continue
        spec, item = _input(str(s.get("model", "")), -1)
        out[name] = ModelEntry(name, "session", (spec,), (OUTPUT,), (str(s.get("model", "")),),
                               float(s.get("slo_ms", 0.0)), item)
    for name, q in (queries or {}).items():
        plan_q = q.get("query", q)  # ``query_routes``' form: {"query": QueryPlan.to_dict(), "parents"}
        stages = list(plan_q.get("stages", ()))
        if not stages:
            continue
        root = sessions.get(str(stages[0].get("session", "")), {})
        spec, item = _input(str(root.get("model", "")), 1)
        names = tuple(str(st["name"]) for st in stages)
        models = tuple(str(sessions.get(str(st.get("session", "")), {}).get("model", "")) for st in stages)
        out[name] = ModelEntry(name, "query", (spec,), names, models, float(plan_q.get("slo_ms", 0.0)), item,
                               names, dict(q))
    return out
