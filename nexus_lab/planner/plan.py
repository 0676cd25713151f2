"""The plan contract (docs/architecture.md section 3): GPUs, each with a duty cycle and the batch and rate of every
session.

Plain frozen dataclasses with JSON round-trip; consumed by the simulator, the runtime and the widgets alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Allocation:
    """One session's share of one GPU: it runs ``batch`` requests once per duty cycle, serving ``rate`` req/s.

    ``batch_timeout_ms`` is set only by dedicated-GPU baselines whose batching waits for a batch to fill.
    """

    session: str
    model: str
    slo_ms: float
    batch: int
    rate: float
    batch_timeout_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"session": self.session, "model": self.model, "slo_ms": self.slo_ms,
                               "batch": self.batch, "rate": self.rate}
        if self.batch_timeout_ms is not None:
            out["batch_timeout_ms"] = self.batch_timeout_ms
        return out


@dataclass(frozen=True)
class GpuPlan:
    """One GPU: it cycles through its allocations every ``duty_cycle_ms``.

    ``occupancy`` is the busy fraction of the duty cycle (sum of batch latencies / duty cycle).
    ``batching`` names the policy the backend runs: ``duty-cycle`` (Nexus) or a baseline's own.
    """

    id: int
    duty_cycle_ms: float
    occupancy: float
    memory_mb: float
    allocations: tuple[Allocation, ...]
    batching: str = "duty-cycle"

    def to_dict(self) -> dict[str, Any]:
        out = {"id": self.id, "duty_cycle_ms": self.duty_cycle_ms, "occupancy": self.occupancy,
               "memory_mb": self.memory_mb, "allocations": [a.to_dict() for a in self.allocations]}
        if self.batching != "duty-cycle":
            out["batching"] = self.batching
        return out


@dataclass(frozen=True)
class PlannedSession:
    """A session as planned: a user session, or one stage of a query (its budget as ``slo_ms``)."""

    session: str
    model: str
    slo_ms: float
    rate: float

    def to_dict(self) -> dict[str, Any]:
        return {"session": self.session, "model": self.model, "slo_ms": self.slo_ms, "rate": self.rate}


@dataclass(frozen=True)
class Unserved:
    """A session no plan can serve, with the reason (e.g. its budget is below ``2*l(1)``)."""

    session: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"session": self.session, "reason": self.reason}


@dataclass(frozen=True)
class StageBudget:
    name: str
    session: str
    budget_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "session": self.session, "budget_ms": self.budget_ms}


@dataclass(frozen=True)
class QueryPlan:
    name: str
    slo_ms: float
    stages: tuple[StageBudget, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "slo_ms": self.slo_ms, "stages": [s.to_dict() for s in self.stages]}


#: Plans of more GPUs are written one entry per line by ``Plan.to_json``.
LARGE_PLAN = 10_000


@dataclass(frozen=True)
class Plan:
    """The output of every policy; ``validate(plan, workload)`` checks it independently of who made it."""

    gpus: tuple[GpuPlan, ...]
    sessions: tuple[PlannedSession, ...]
    lower_bound_gpus: float
    policy: str = "nexus"
    unserved: tuple[Unserved, ...] = ()
    queries: tuple[QueryPlan, ...] = ()
    rate_fraction: float = 1.0
    prefix_groups: tuple[dict[str, Any], ...] = field(default=())

    @property
    def num_gpus(self) -> int:
        return len(self.gpus)

    def session(self, name: str) -> PlannedSession:
        for s in self.sessions:
            if s.session == name:
                return s
        raise KeyError(name)

    def gpus_of(self, session: str) -> list[GpuPlan]:
        return [g for g in self.gpus if any(a.session == session for a in g.allocations)]

    def routes(self) -> dict[str, list[tuple[int, float]]]:
        """Per session, the GPUs serving it and the rate each is planned to take (for weighted routing)."""
        out: dict[str, list[tuple[int, float]]] = {s.session: [] for s in self.sessions}
        for g in self.gpus:
            for a in g.allocations:
                out.setdefault(a.session, []).append((g.id, a.rate))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"gpus": [g.to_dict() for g in self.gpus], "sessions": [s.to_dict() for s in self.sessions],
                **self.to_dict_head()}

    def to_json(self, indent: int | None = 2) -> str:
        """The plan as JSON (the contract of docs/architecture.md section 3). Past ``LARGE_PLAN`` GPUs each GPU and
        session is written on one line: json's indenting encoder is pure Python (2.3 s and 600 MB for 93,000
        GPUs, against 0.6 s for the same content this way)."""
        if indent is None or len(self.gpus) <= LARGE_PLAN:
            return json.dumps(self.to_dict(), indent=indent)
        pad = " " * indent
        parts = [f'{pad}"{key}": [\n' + ",\n".join(pad * 2 + json.dumps(x.to_dict()) for x in items) + f"\n{pad}]"
                 for key, items in (("gpus", self.gpus), ("sessions", self.sessions))]
        parts += [f"{pad}{json.dumps(k)}: {json.dumps(v)}" for k, v in self.to_dict_head().items()]
        return "{\n" + ",\n".join(parts) + "\n}"

    def to_dict_head(self) -> dict[str, Any]:
        """``to_dict`` but the GPUs and sessions: the totals, unserved sessions, queries and the rest."""
        out: dict[str, Any] = {"num_gpus": self.num_gpus, "lower_bound_gpus": self.lower_bound_gpus,
                               "policy": self.policy}
        if self.unserved:
            out["unserved"] = [u.to_dict() for u in self.unserved]
        if self.queries:
            out["queries"] = [q.to_dict() for q in self.queries]
        if self.rate_fraction != 1.0:
            out["rate_fraction"] = self.rate_fraction
        if self.prefix_groups:
            out["prefix_groups"] = list(self.prefix_groups)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Plan:
        return cls(
            gpus=tuple(
                GpuPlan(id=int(g["id"]), duty_cycle_ms=float(g["duty_cycle_ms"]), occupancy=float(g["occupancy"]),
                        memory_mb=float(g["memory_mb"]),
                        allocations=tuple(Allocation(**a) for a in g["allocations"]),
                        batching=g.get("batching", "duty-cycle"))
                for g in raw["gpus"]),
            sessions=tuple(PlannedSession(**s) for s in raw["sessions"]),
            lower_bound_gpus=float(raw["lower_bound_gpus"]),
            policy=raw.get("policy", "nexus"),
            unserved=tuple(Unserved(**u) for u in raw.get("unserved", ())),
            queries=tuple(QueryPlan(q["name"], float(q["slo_ms"]), tuple(StageBudget(**s) for s in q["stages"]))
                          for q in raw.get("queries", ())),
            rate_fraction=float(raw.get("rate_fraction", 1.0)),
            prefix_groups=tuple(raw.get("prefix_groups", ())),
        )

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))
