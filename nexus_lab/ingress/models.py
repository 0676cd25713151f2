"""What the endpoint serves as models: every routed session under its session name, every planned query under its
query name (its stages' outputs, like a Triton ensemble), with the tensors each declares.

Pure: built from the routes a controller publishes (the session table of ``Frontend.set_routes``) and the query
table of ``nexus_lab.runtime.queries``; no HTTP, no Dask.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .protocol import TensorSpec, datatype_of

__all__ = ["INPUT", "OUTPUT", "ModelEntry", "model_table"]

#: The name of a session's one input and one output tensor.
INPUT = "input"
OUTPUT = "output"


@dataclass(frozen=True)
class ModelEntry:
    """One model of the endpoint: a session (``stages`` empty) or a query (its stage names, in order)."""

    name: str
    kind: str  # "session" or "query"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    slo_ms: float
    item: tuple[int, ...] | None = None  # one request's input shape (None: any)
    stages: tuple[str, ...] = ()
    query: dict[str, Any] = field(default_factory=dict)  # the query's plain route data

    @property
    def max_batch(self) -> int | None:
        """Queries take one frame per request; sessions any batch."""
        return 1 if self.kind == "query" else None


def _input(model: str, batch: int) -> tuple[TensorSpec, tuple[int, ...] | None]:
    from ..runtime.wire import input_spec

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
        out[name] = ModelEntry(name, "session", (spec,), (TensorSpec(OUTPUT, "FP32", (-1, -1)),),
                               float(s.get("slo_ms", 0.0)), item)
    for name, q in (queries or {}).items():
        plan_q = q.get("query", q)  # ``query_routes``' form: {"query": QueryPlan.to_dict(), "parents"}
        stages = list(plan_q.get("stages", ()))
        if not stages:
            continue
        root = sessions.get(str(stages[0].get("session", "")), {})
        spec, item = _input(str(root.get("model", "")), 1)
        names = tuple(str(st["name"]) for st in stages)
        out[name] = ModelEntry(name, "query", (spec,), tuple(TensorSpec(n, "FP32", (-1, -1)) for n in names),
                               float(plan_q.get("slo_ms", 0.0)), item, names, dict(q))
    return out
