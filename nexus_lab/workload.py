"""The workload contract (docs/architecture.md section 3): device, models, sessions and queries, checked field by field.

Pure data and validation; reads a YAML/JSON file at most. Every error names the offending field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .profiles import DEFAULT_NET_MS, DEFAULT_SAFETY, ModelProfile, ProfileError, load_profile
from .profiles.registry import builtin_profiles


class WorkloadError(ValueError):
    """A workload or edit that cannot be planned; the message starts with the field path."""


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
            object.__setattr__(self, "name", f"{self.model}:{_fmt(self.slo_ms)}")


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
            entry: dict[str, Any] = {"name": m.name, "profile": _profile_dict(m.profile)}
            if m.prefix is not None:
                entry["prefix"] = {"group": m.prefix.group, "profile": _profile_dict(m.prefix.prefix),
                                   "suffix_profile": _profile_dict(m.prefix.suffix)}
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


def _profile_dict(p: ModelProfile) -> dict[str, Any]:
    return {
        "device": p.device,
        "latency_ms": {int(b): float(v) / 1000 for b, v in zip(p.batches, p.latency_us, strict=True)},
        "std_ms": {int(b): float(v) / 1000 for b, v in zip(p.batches, p.std_us, strict=True)},
        "memory_mb": {int(b): float(v) / 2**20 for b, v in zip(p.batches, p.memory_bytes, strict=True)},
        "preprocess_ms": {"mean": p.preprocess_us[0] / 1000, "std": p.preprocess_us[1] / 1000},
        "postprocess_ms": {"mean": p.postprocess_us[0] / 1000, "std": p.postprocess_us[1] / 1000},
    }


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def topological(stages: Sequence[StageSpec]) -> list[StageSpec]:
    """Stages ordered parents first; raises on unknown parents and cycles."""
    by_name = {s.name: s for s in stages}
    order: list[StageSpec] = []
    state: dict[str, int] = {}

    def visit(name: str, trail: tuple[str, ...]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise WorkloadError(f"stages: cycle through {' -> '.join((*trail, name))}")
        state[name] = 1
        for p in by_name[name].parents:
            if p not in by_name:
                raise WorkloadError(f"stages[{name}].parent: unknown stage {p!r}")
            visit(p, (*trail, name))
        state[name] = 2
        order.append(by_name[name])

    for s in stages:
        visit(s.name, ())
    return order


# ---------------------------------------------------------------------------------------------- parsing
def load_workload(source: str | Path | Mapping) -> Workload:
    """Read a workload from a YAML/JSON file path or a mapping, validating every field."""
    if isinstance(source, Mapping):
        return parse_workload(source)
    path = Path(source)
    if not path.is_file():
        raise WorkloadError(f"workload: no such file {str(path)!r}")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
    except Exception as exc:
        raise WorkloadError(f"workload: cannot parse {path.name}: {exc}") from exc
    if not isinstance(raw, Mapping):
        raise WorkloadError("workload: top level must be a mapping")
    return parse_workload(raw, path.parent)


def _number(raw: Mapping, key: str, where: str, *, default: float | None = None, gt: float | None = None,
            ge: float | None = None) -> float:
    if key not in raw or raw[key] is None:
        if default is None:
            raise WorkloadError(f"{where}.{key}: required")
        return default
    val = raw[key]
    if isinstance(val, bool) or not isinstance(val, (int, float)):
        raise WorkloadError(f"{where}.{key}: must be a number, got {val!r}")
    val = float(val)
    if not math.isfinite(val):
        raise WorkloadError(f"{where}.{key}: must be finite")
    if gt is not None and not val > gt:
        raise WorkloadError(f"{where}.{key}: must be > {_fmt(gt)}")
    if ge is not None and not val >= ge:
        raise WorkloadError(f"{where}.{key}: must be >= {_fmt(ge)}")
    return val


def _name(raw: Mapping, key: str, where: str) -> str:
    val = raw.get(key)
    if not isinstance(val, str) or not val.strip():
        raise WorkloadError(f"{where}.{key}: must be a non-empty string")
    return val


def _unknown(raw: Mapping, allowed: set[str], where: str) -> None:
    extra = set(raw) - allowed
    if extra:
        raise WorkloadError(f"{where}: unknown field(s) {sorted(extra)}; allowed: {sorted(allowed)}")


def check_session(s: SessionSpec, models: Mapping[str, ModelSpec], where: str) -> None:
    """The checks an edit must pass before it reaches a planner or a cluster."""
    if s.model not in models:
        raise WorkloadError(f"{where}.model: unknown model {s.model!r}; known: {sorted(models)}")
    if not (math.isfinite(s.slo_ms) and s.slo_ms > 0):
        raise WorkloadError(f"{where}.slo_ms: must be > 0")
    if not (math.isfinite(s.rate) and s.rate >= 0):
        raise WorkloadError(f"{where}.rate: must be >= 0")


def parse_workload(raw: Mapping, base_dir: Path | None = None) -> Workload:
    if not isinstance(raw, Mapping):
        raise WorkloadError("workload: top level must be a mapping")
    _unknown(raw, {"device", "models", "sessions", "queries", "net_ms", "safety"}, "workload")
    dev_raw = raw.get("device") or {}
    if not isinstance(dev_raw, Mapping):
        raise WorkloadError("device: must be a mapping {name, memory_mb}")
    _unknown(dev_raw, {"name", "memory_mb"}, "device")
    device = Device(name=str(dev_raw.get("name", Device.name)),
                    memory_mb=_number(dev_raw, "memory_mb", "device", default=Device.memory_mb, gt=0))
    net_ms = _number(raw, "net_ms", "workload", default=DEFAULT_NET_MS, ge=0)
    safety = _number(raw, "safety", "workload", default=DEFAULT_SAFETY, gt=0)

    models: dict[str, ModelSpec] = {}
    models_raw = raw.get("models") or []
    if not isinstance(models_raw, Sequence) or isinstance(models_raw, str):
        raise WorkloadError("models: must be a list")
    for i, m in enumerate(models_raw):
        where = f"models[{i}]"
        if not isinstance(m, Mapping):
            raise WorkloadError(f"{where}: must be a mapping {{name, profile}}")
        _unknown(m, {"name", "profile", "prefix"}, where)
        name = _name(m, "name", where)
        if name in models:
            raise WorkloadError(f"{where}.name: duplicate model {name!r}")
        if "profile" not in m:
            raise WorkloadError(f"{where}.profile: required")
        try:
            prof = load_profile(m["profile"], name, safety=safety, base_dir=base_dir,
                                field_path=f"{where}.profile")
            prefix = None
            if m.get("prefix") is not None:
                pr = m["prefix"]
                pw = f"{where}.prefix"
                if not isinstance(pr, Mapping):
                    raise WorkloadError(f"{pw}: must be a mapping {{group, profile, suffix_profile}}")
                _unknown(pr, {"group", "profile", "suffix_profile"}, pw)
                for key in ("profile", "suffix_profile"):
                    if key not in pr:
                        raise WorkloadError(f"{pw}.{key}: required")
                group = _name(pr, "group", pw)
                prefix = PrefixSpec(
                    group=group,
                    prefix=load_profile(pr["profile"], f"{group}.prefix", safety=safety, base_dir=base_dir,
                                        field_path=f"{pw}.profile"),
                    suffix=load_profile(pr["suffix_profile"], f"{name}.suffix", safety=safety,
                                        base_dir=base_dir, field_path=f"{pw}.suffix_profile"))
        except ProfileError as exc:
            raise WorkloadError(str(exc) if str(exc).startswith(where) else f"{where}.profile: {exc}") from exc
        models[name] = ModelSpec(name, prof, prefix)

    def resolve(model: str, where: str) -> None:
        """A model not declared but shipped for this device (e.g. ``vgg16`` on ``titan-x-pascal``)."""
        if model in models:
            return
        builtin = f"{device.name}/{model}"
        if builtin in builtin_profiles():
            models[model] = ModelSpec(model, load_profile(builtin, model, safety=safety))
            return
        raise WorkloadError(f"{where}.model: unknown model {model!r}; declare it in models")

    sessions: list[SessionSpec] = []
    seen: set[str] = set()
    sess_raw = raw.get("sessions") or []
    if not isinstance(sess_raw, Sequence) or isinstance(sess_raw, str):
        raise WorkloadError("sessions: must be a list")
    for i, s in enumerate(sess_raw):
        where = f"sessions[{i}]"
        if not isinstance(s, Mapping):
            raise WorkloadError(f"{where}: must be a mapping {{model, slo_ms, rate}}")
        _unknown(s, {"name", "model", "slo_ms", "rate"}, where)
        model = _name(s, "model", where)
        resolve(model, where)
        spec = SessionSpec(model=model, slo_ms=_number(s, "slo_ms", where, gt=0),
                           rate=_number(s, "rate", where, ge=0), name=str(s.get("name") or ""))
        if spec.name in seen:
            raise WorkloadError(f"{where}.name: duplicate session {spec.name!r} (give each a distinct name)")
        seen.add(spec.name)
        sessions.append(spec)

    queries: list[QuerySpec] = []
    q_raw = raw.get("queries") or []
    if not isinstance(q_raw, Sequence) or isinstance(q_raw, str):
        raise WorkloadError("queries: must be a list")
    for i, q in enumerate(q_raw):
        where = f"queries[{i}]"
        if not isinstance(q, Mapping):
            raise WorkloadError(f"{where}: must be a mapping {{name, slo_ms, rate, stages}}")
        _unknown(q, {"name", "slo_ms", "rate", "stages"}, where)
        qname = _name(q, "name", where)
        if any(x.name == qname for x in queries):
            raise WorkloadError(f"{where}.name: duplicate query {qname!r}")
        st_raw = q.get("stages")
        if not isinstance(st_raw, Sequence) or isinstance(st_raw, str) or not st_raw:
            raise WorkloadError(f"{where}.stages: must be a non-empty list")
        stages: list[StageSpec] = []
        for j, st in enumerate(st_raw):
            sw = f"{where}.stages[{j}]"
            if not isinstance(st, Mapping):
                raise WorkloadError(f"{sw}: must be a mapping {{name, model, parent, gamma}}")
            _unknown(st, {"name", "model", "parent", "parents", "gamma"}, sw)
            sname = _name(st, "name", sw)
            if any(x.name == sname for x in stages):
                raise WorkloadError(f"{sw}.name: duplicate stage {sname!r}")
            model = _name(st, "model", sw)
            resolve(model, sw)
            parents = st.get("parents", st.get("parent"))
            if parents is None:
                parents = ()
            elif isinstance(parents, str):
                parents = (parents,)
            elif isinstance(parents, Sequence):
                parents = tuple(str(p) for p in parents)
            else:
                raise WorkloadError(f"{sw}.parent: must be a stage name or a list of them")
            stages.append(StageSpec(sname, model, parents, _number(st, "gamma", sw, default=1.0, gt=0)))
        names = {s.name for s in stages}
        for j, st in enumerate(stages):
            for p in st.parents:
                if p not in names:
                    raise WorkloadError(f"{where}.stages[{j}].parent: unknown stage {p!r}")
        topological(stages)
        queries.append(QuerySpec(qname, _number(q, "slo_ms", where, gt=0), _number(q, "rate", where, ge=0),
                                 tuple(stages)))
    return Workload(device=device, models=models, sessions=tuple(sessions), queries=tuple(queries),
                    net_ms=net_ms, safety=safety)
