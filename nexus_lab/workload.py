"""The workload contract (docs/architecture.md section 3): device, models, sessions and queries, checked field by field.

Pure data and validation; reads a YAML/JSON file at most. Every error names the offending field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .fields import WorkloadError, as_list, fmt, label, number, read_document, text, unknown
from .profiles import DEFAULT_NET_MS, DEFAULT_SAFETY, ModelProfile, ProfileError, load_profile
from .profiles.registry import builtin_profiles, load_prefix


@dataclass(frozen=True)
class Device:
    name: str = "titan-x-pascal"
    memory_mb: float = 12288.0


@dataclass(frozen=True, eq=False)
class PrefixSpec:
    """This model shares its first layers with the other models of ``group``.

    ``prefix`` is the shared part's profile (identical for the whole group), ``suffix`` this model's own rest.
    """

    group: str
    prefix: ModelProfile
    suffix: ModelProfile


@dataclass(frozen=True, eq=False)
class ModelSpec:
    name: str
    profile: ModelProfile
    prefix: PrefixSpec | None = None


@dataclass(frozen=True)
class SessionSpec:
    """One model served under one latency SLO at one request rate (requests per second)."""

    model: str
    slo_ms: float
    rate: float
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", f"{self.model}:{fmt(self.slo_ms)}")


@dataclass(frozen=True)
class StageSpec:
    """One model in a query DAG; each request of every parent triggers ``gamma`` requests of this stage."""

    name: str
    model: str
    parents: tuple[str, ...] = ()
    gamma: float = 1.0


@dataclass(frozen=True)
class QuerySpec:
    """A DAG of stages with one end-to-end SLO, entered at ``rate`` requests per second."""

    name: str
    slo_ms: float
    rate: float
    stages: tuple[StageSpec, ...]

    def stage_rates(self) -> dict[str, float]:
        """Rate of every stage: the query rate at roots, ``sum over parents of rate(parent) * gamma`` below."""
        rates: dict[str, float] = {}
        for st in topological(self.stages):
            rates[st.name] = self.rate * st.gamma if not st.parents else sum(
                rates[p] * st.gamma for p in st.parents)
        return rates

    def children(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {s.name: [] for s in self.stages}
        for s in self.stages:
            for p in s.parents:
                out[p].append(s.name)
        return out

    @property
    def is_tree(self) -> bool:
        return all(len(s.parents) <= 1 for s in self.stages)


@dataclass(frozen=True, eq=False)
class Workload:
    device: Device = field(default_factory=Device)
    models: Mapping[str, ModelSpec] = field(default_factory=dict)
    sessions: tuple[SessionSpec, ...] = ()
    queries: tuple[QuerySpec, ...] = ()
    net_ms: float = DEFAULT_NET_MS
    safety: float = DEFAULT_SAFETY

    def profile(self, model: str) -> ModelProfile:
        try:
            return self.models[model].profile
        except KeyError:
            raise WorkloadError(f"model {model!r}: not declared in models") from None

    def budget_ms(self, model: str, slo_ms: float) -> float:
        return self.profile(model).budget_ms(slo_ms, self.net_ms)

    def with_sessions(self, sessions: Sequence[SessionSpec]) -> Workload:
        return replace(self, sessions=tuple(sessions))

    def scaled(self, factor: float) -> Workload:
        """The same workload with every session and query rate multiplied by ``factor``."""
        return replace(
            self,
            sessions=tuple(replace(s, rate=s.rate * factor) for s in self.sessions),
            queries=tuple(replace(q, rate=q.rate * factor) for q in self.queries),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form that ``Workload.from_dict`` reads back (profiles inline as text-equivalent tables)."""
        models = []
        for m in self.models.values():
            entry: dict[str, Any] = {"name": m.name, "profile": m.profile.to_inline()}
            if m.prefix is not None:
                entry["prefix"] = {"group": m.prefix.group, "profile": m.prefix.prefix.to_inline(),
                                   "suffix_profile": m.prefix.suffix.to_inline()}
            models.append(entry)
        return {
            "device": {"name": self.device.name, "memory_mb": self.device.memory_mb},
            "net_ms": self.net_ms,
            "safety": self.safety,
            "models": models,
            "sessions": [{"name": s.name, "model": s.model, "slo_ms": s.slo_ms, "rate": s.rate}
                         for s in self.sessions],
            "queries": [{"name": q.name, "slo_ms": q.slo_ms, "rate": q.rate,
                         "stages": [{"name": st.name, "model": st.model, "parents": list(st.parents),
                                     "gamma": st.gamma} for st in q.stages]} for q in self.queries],
        }

    @classmethod
    def from_dict(cls, raw: Mapping, base_dir: Path | None = None) -> Workload:
        return parse_workload(raw, base_dir)


def topological(stages: Sequence[StageSpec]) -> list[StageSpec]:
    """Stages ordered parents first (depth first, in declaration order); raises on unknown parents and cycles.

    Iterative, so a chain of thousands of stages needs no deep recursion."""
    by_name = {s.name: s for s in stages}
    order: list[StageSpec] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for s in stages:
        if state.get(s.name) == 2:
            continue
        state[s.name] = 1
        path = [[s.name, 0]]
        while path:
            top = path[-1]
            parents = by_name[top[0]].parents
            if top[1] == len(parents):
                path.pop()
                state[top[0]] = 2
                order.append(by_name[top[0]])
                continue
            p = parents[top[1]]
            top[1] += 1
            if p not in by_name:
                raise WorkloadError(f"stages[{top[0]}].parent: unknown stage {p!r}")
            if state.get(p) == 1:
                raise WorkloadError(f"stages: cycle through {' -> '.join([*(n for n, _ in path), p])}")
            if state.get(p) is None:
                state[p] = 1
                path.append([p, 0])
    return order


# ---------------------------------------------------------------------------------------------- parsing
#: Most sessions plus query stages, and most query stages (each costs a DP of a few ms): the planner's bound.
MAX_UNITS, MAX_STAGES = 100_000, 500
SAFETY_RANGE = (0.1, 100.0)


def load_workload(source: str | Path | Mapping) -> Workload:
    """Read a workload from a YAML/JSON file path or a mapping, validating every field."""
    if isinstance(source, Mapping):
        return parse_workload(source)
    path = Path(source)
    raw = read_document(path)
    return parse_workload(raw, path.parent)


def check_session(s: SessionSpec, models: Mapping[str, ModelSpec], where: str) -> None:
    """The checks an edit must pass before it reaches a planner or a cluster."""
    if s.model not in models:
        raise WorkloadError(f"{where}.model: unknown model {s.model!r}; known: {sorted(models)}")
    if not (math.isfinite(s.slo_ms) and s.slo_ms > 0):
        raise WorkloadError(f"{where}.slo_ms: must be > 0")
    if not (math.isfinite(s.rate) and s.rate >= 0):
        raise WorkloadError(f"{where}.rate: must be >= 0")


def stage_session(query: str, stage: str) -> str:
    """Name of the session that serves one query stage (``query/stage``)."""
    return f"{query}/{stage}"


def name_fields(sessions: Sequence[SessionSpec], queries: Sequence[QuerySpec], *, by_name: bool = False,
                reserved: Sequence[str] = ()) -> dict[str, str]:
    """The one namespace: session, query and stage (``query/stage``) names -> the field declaring each; a
    ``WorkloadError`` names both fields of a collision (or a name in ``reserved``, the planner's prefix sessions).
    ``by_name`` labels fields by name (``sessions['a']``), as the editor shows them."""
    out: dict[str, str] = {}

    def claim(name: str, where: str) -> None:
        if name in out:
            raise WorkloadError(f"{where}: {name!r} collides with {out[name]} (sessions, queries and query stages "
                                f"'query/stage' share one namespace)")
        hit = next((r for r in reserved if name.startswith(r)), None)
        if hit is not None:
            raise WorkloadError(f"{where}: {name!r} starts with {hit!r}, reserved for prefix sessions")
        out[name] = where

    for i, s in enumerate(sessions):
        claim(s.name, f"sessions[{s.name!r}]" if by_name else f"sessions[{i}].name")
    for j, q in enumerate(queries):
        qw = f"queries[{q.name!r}]" if by_name else f"queries[{j}]"
        claim(q.name, f"{qw}.name" if not by_name else qw)
        for k, st in enumerate(q.stages):
            claim(stage_session(q.name, st.name), f"{qw}.stages[{st.name!r}]" if by_name else f"{qw}.stages[{k}].name")
    return out


def reserved_names(models: Mapping[str, ModelSpec]) -> list[str]:
    """Name prefixes the planner's prefix sessions use (``<group>.prefix:<slo>``), one per prefix group."""
    return sorted({f"{m.prefix.group}.prefix:" for m in models.values() if m.prefix is not None})


def _model(m: object, where: str, safety: float, base_dir: Path | None) -> ModelSpec:
    if not isinstance(m, Mapping):
        raise WorkloadError(f"{where}: must be a mapping {{name, profile}}")
    unknown(m, {"name", "profile", "prefix"}, where)
    name = text(m, "name", where)
    if "profile" not in m:
        raise WorkloadError(f"{where}.profile: required")
    try:
        prof = load_profile(m["profile"], name, safety=safety, base_dir=base_dir, field_path=f"{where}.profile")
        prefix = None if m.get("prefix") is None else PrefixSpec(*load_prefix(
            m["prefix"], name, safety=safety, base_dir=base_dir, field_path=f"{where}.prefix"))
    except ProfileError as exc:
        raise WorkloadError(str(exc) if str(exc).startswith(where) else f"{where}.profile: {exc}") from exc
    return ModelSpec(name, prof, prefix)


def _stage(st: object, sw: str) -> tuple[str, str, tuple[str, ...], float]:
    if not isinstance(st, Mapping):
        raise WorkloadError(f"{sw}: must be a mapping {{name, model, parent, gamma}}")
    unknown(st, {"name", "model", "parent", "parents", "gamma"}, sw)
    sname = text(st, "name", sw)
    model = text(st, "model", sw)
    parents = st.get("parents", st.get("parent"))
    if parents is None:
        parents = ()
    elif isinstance(parents, str):
        parents = (parents,)
    elif isinstance(parents, Sequence) and not isinstance(parents, bytes) and all(
            isinstance(p, str) for p in parents):
        parents = tuple(parents)
    else:
        raise WorkloadError(f"{sw}.parent: must be a stage name or a list of them, got {label(parents)}")
    return sname, model, parents, number(st, "gamma", sw, default=1.0, gt=0)


def parse_workload(raw: Mapping, base_dir: Path | None = None) -> Workload:
    if not isinstance(raw, Mapping):
        raise WorkloadError("workload: top level must be a mapping")
    unknown(raw, {"device", "models", "sessions", "queries", "net_ms", "safety"}, "workload")
    dev_raw = raw.get("device")
    dev_raw = {} if dev_raw is None else dev_raw
    if not isinstance(dev_raw, Mapping):
        raise WorkloadError(f"device: must be a mapping {{name, memory_mb}}, got {label(dev_raw)}")
    unknown(dev_raw, {"name", "memory_mb"}, "device")
    device = Device(name=text(dev_raw, "name", "device") if dev_raw.get("name") is not None else Device.name,
                    memory_mb=number(dev_raw, "memory_mb", "device", default=Device.memory_mb, gt=0))
    net_ms = number(raw, "net_ms", "workload", default=DEFAULT_NET_MS, ge=0)
    safety = number(raw, "safety", "workload", default=DEFAULT_SAFETY, ge=SAFETY_RANGE[0], le=SAFETY_RANGE[1])

    models: dict[str, ModelSpec] = {}
    for i, m in enumerate(as_list(raw, "models", "models")):
        spec = _model(m, f"models[{i}]", safety, base_dir)
        if spec.name in models:
            raise WorkloadError(f"models[{i}].name: duplicate model {spec.name!r}")
        models[spec.name] = spec

    def resolve(model: str, where: str) -> None:
        """A model not declared but shipped for this device (e.g. ``vgg16`` on ``titan-x-pascal``)."""
        if model in models:
            return
        builtin = f"{device.name}/{model}"
        if builtin in builtin_profiles():
            models[model] = ModelSpec(model, load_profile(builtin, model, safety=safety))
            return
        raise WorkloadError(f"{where}.model: unknown model {label(model)}; declare it in models")

    sess_raw = as_list(raw, "sessions", "sessions")
    q_raw = as_list(raw, "queries", "queries")
    if len(sess_raw) + len(q_raw) > MAX_UNITS:
        raise WorkloadError(f"sessions: {len(sess_raw)} sessions and {len(q_raw)} queries, more than the "
                            f"{MAX_UNITS} the planner takes")
    sessions: list[SessionSpec] = []
    seen: set[str] = set()
    for i, s in enumerate(sess_raw):
        where = f"sessions[{i}]"
        if not isinstance(s, Mapping):
            raise WorkloadError(f"{where}: must be a mapping {{model, slo_ms, rate}}")
        unknown(s, {"name", "model", "slo_ms", "rate"}, where)
        model = text(s, "model", where)
        resolve(model, where)
        name = text(s, "name", where) if s.get("name") is not None else ""
        spec = SessionSpec(model=model, slo_ms=number(s, "slo_ms", where, gt=0),
                           rate=number(s, "rate", where, ge=0), name=name)
        if spec.name in seen:
            raise WorkloadError(f"{where}.name: duplicate session {spec.name!r} (give each a distinct name)")
        seen.add(spec.name)
        sessions.append(spec)

    queries: list[QuerySpec] = []
    units = len(sessions)
    for i, q in enumerate(q_raw):
        where = f"queries[{i}]"
        if not isinstance(q, Mapping):
            raise WorkloadError(f"{where}: must be a mapping {{name, slo_ms, rate, stages}}")
        unknown(q, {"name", "slo_ms", "rate", "stages"}, where)
        qname = text(q, "name", where)
        st_raw = q.get("stages")
        if not isinstance(st_raw, Sequence) or isinstance(st_raw, (str, bytes)) or not st_raw:
            raise WorkloadError(f"{where}.stages: must be a non-empty list")
        units += len(st_raw)
        if units > MAX_UNITS or units - len(sessions) > MAX_STAGES:
            raise WorkloadError(f"{where}.stages: more than {MAX_STAGES} query stages in all, or "
                                f"{MAX_UNITS} sessions and stages, which the planner takes")
        stages: list[StageSpec] = []
        names: set[str] = set()
        for j, st in enumerate(st_raw):
            sw = f"{where}.stages[{j}]"
            sname, model, parents, gamma = _stage(st, sw)
            if sname in names:
                raise WorkloadError(f"{sw}.name: duplicate stage {sname!r}")
            resolve(model, sw)
            names.add(sname)
            stages.append(StageSpec(sname, model, parents, gamma))
        for j, st in enumerate(stages):
            for p in st.parents:
                if p not in names:
                    raise WorkloadError(f"{where}.stages[{j}].parent: unknown stage {p!r}")
        topological(stages)
        spec = QuerySpec(qname, number(q, "slo_ms", where, gt=0), number(q, "rate", where, ge=0), tuple(stages))
        rates = spec.stage_rates()
        for j, st in enumerate(stages):
            if not math.isfinite(rates[st.name]):
                raise WorkloadError(f"{where}.stages[{j}].gamma: the stage's rate (query rate times the fan-outs "
                                    f"above it) is beyond float range")
        queries.append(spec)
    name_fields(sessions, queries, reserved=reserved_names(models))
    return Workload(device=device, models=models, sessions=tuple(sessions), queries=tuple(queries),
                    net_ms=net_ms, safety=safety)
