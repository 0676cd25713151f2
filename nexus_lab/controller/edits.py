"""The controller's editable workload: sessions and queries with declared or measured rates, checked field by field.

Pure: builds ``nexus_lab.workload.Workload`` values with the workload module's own checks; no Dask, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..fields import slo_ms as check_slo_ms
from ..profiles import ModelProfile, ProfileError, load_profile
from ..profiles.registry import builtin_profiles
from ..workload import (
    Device,
    ModelSpec,
    QuerySpec,
    SessionSpec,
    Workload,
    WorkloadError,
    check_session,
    name_fields,
    parse_workload,
    reserved_names,
    stage_session,
)

#: Planning rate of a session whose rate is to be measured, until the first measurement (req/s).
INITIAL_RATE = 1.0


def device_profile_set(device: str) -> str | None:
    """``simulated:titan-x-pascal`` -> ``titan-x-pascal``: the shipped profile set a device's models use."""
    if device.startswith("simulated:"):
        return device.split(":", 1)[1]
    return None


def _check_number(value: Any, where: str, *, gt: float | None = None, ge: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise WorkloadError(f"{where}: must be a finite number, got {value!r}")
    if gt is not None and not value > gt:
        raise WorkloadError(f"{where}: must be > {gt:g}, got {value!r}")
    if ge is not None and not value >= ge:
        raise WorkloadError(f"{where}: must be >= {ge:g}, got {value!r}")
    return float(value)


@dataclass
class WorkloadEditor:
    """Sessions and queries as the user declared them (``rate=None``: measure it), plus the models they use.

    Every edit is checked before it is stored; ``workload(measured)`` is what the planner gets. A lifecycle
    object (edits accumulate), hence a class; the checks themselves are the workload module's.
    """

    base: Workload
    profile_set: str | None = None
    sessions: dict[str, SessionSpec] = field(default_factory=dict)
    queries: dict[str, QuerySpec] = field(default_factory=dict)
    measured: set[str] = field(default_factory=set)  # session / query names whose rate is measured

    @classmethod
    def from_workload(cls, workload: Workload, profile_set: str | None = None) -> WorkloadEditor:
        ed = cls(base=replace(workload, sessions=(), queries=()), profile_set=profile_set)
        for s in workload.sessions:
            ed.sessions[s.name] = s
        for q in workload.queries:
            ed.queries[q.name] = q
        return ed

    # --------------------------------------------------------------------------------------------- models
    @property
    def models(self) -> Mapping[str, ModelSpec]:
        return self.base.models

    def add_model(self, name: str, profile: ModelProfile | str | Mapping) -> None:
        """Declare ``name`` with a profile (a ``ModelProfile``, a shipped profile id, a file or an inline table)."""
        if not isinstance(name, str) or not name.strip():
            raise WorkloadError(f"model.name: must be a non-empty string, got {name!r}")
        try:
            prof = profile if isinstance(profile, ModelProfile) else load_profile(
                profile, name, safety=self.base.safety, field_path=f"models[{name}].profile")
        except ProfileError as exc:
            raise WorkloadError(str(exc)) from exc
        models = dict(self.base.models)
        models[name] = ModelSpec(name, prof)
        self.base = replace(self.base, models=models)

    def resolve_model(self, model: Any, where: str) -> str:
        """The model name if declared or shipped for this device's profile set; else a ``WorkloadError``."""
        if not isinstance(model, str) or not model.strip():
            raise WorkloadError(f"{where}.model: must be a non-empty string, got {model!r}")
        if model in self.base.models:
            return model
        if self.profile_set is not None and f"{self.profile_set}/{model}" in builtin_profiles():
            self.add_model(model, f"{self.profile_set}/{model}")
            return model
        raise WorkloadError(f"{where}.model: unknown model {model!r}; known: {sorted(self.base.models)}")

    # -------------------------------------------------------------------------------------------- sessions
    def names(self) -> set[str]:
        return set(self.sessions) | set(self.queries)

    def _claim(self, names: Sequence[str], where: str) -> None:
        """Refuse a name already in the one namespace of sessions, queries and stages (``query/stage``), naming
        both fields, or one that starts like the planner's prefix sessions."""
        taken = name_fields(tuple(self.sessions.values()), tuple(self.queries.values()), by_name=True)
        for n in names:
            if n in taken:
                raise WorkloadError(f"{where}: {n!r} collides with {taken[n]} (sessions, queries and query "
                                    f"stages 'query/stage' share one namespace)")
            hit = next((r for r in reserved_names(self.base.models) if n.startswith(r)), None)
            if hit is not None:
                raise WorkloadError(f"{where}: {n!r} starts with {hit!r}, reserved for prefix sessions")

    def add_session(self, model: str, slo_ms: float, rate: float | None = None, name: str | None = None) -> str:
        """Add a session; returns its name (``model:slo`` unless ``name`` is given)."""
        where = "add_session"
        self.resolve_model(model, where)
        slo = check_slo_ms(slo_ms, f"{where}.slo_ms")
        r = INITIAL_RATE if rate is None else _check_number(rate, f"{where}.rate", ge=0)
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise WorkloadError(f"{where}.name: must be a non-empty string, got {name!r}")
        spec = SessionSpec(model=model, slo_ms=slo, rate=r, name=name or "")
        check_session(spec, self.base.models, where)
        if spec.name in self.names():
            raise WorkloadError(f"{where}.name: {spec.name!r} already exists (remove it first or pass name=)")
        self._claim([spec.name], f"{where}.name")
        self.sessions[spec.name] = spec
        if rate is None:
            self.measured.add(spec.name)
        return spec.name

    def add_query(self, name: str, slo_ms: float, stages: Sequence[Mapping[str, Any]], rate: float | None = None
                  ) -> QuerySpec:
        where = f"add_query({name!r})"
        if not isinstance(name, str) or not name.strip():
            raise WorkloadError(f"add_query.name: must be a non-empty string, got {name!r}")
        if name in self.names():
            raise WorkloadError(f"add_query.name: {name!r} already exists")
        check_slo_ms(slo_ms, f"{where}.slo_ms")
        if rate is not None:
            _check_number(rate, f"{where}.rate", ge=0)
        if not isinstance(stages, Sequence) or isinstance(stages, str) or not stages:
            raise WorkloadError(f"{where}.stages: must be a non-empty list of {{name, model, parent, gamma}}")
        for i, st in enumerate(stages):
            if not isinstance(st, Mapping):
                raise WorkloadError(f"{where}.stages[{i}]: must be a mapping {{name, model, parent, gamma}}")
            self.resolve_model(st.get("model"), f"{where}.stages[{i}]")
        raw = self.base.to_dict()
        raw["sessions"] = []
        raw["queries"] = [{"name": name, "slo_ms": slo_ms, "rate": INITIAL_RATE if rate is None else rate,
                           "stages": [dict(st) for st in stages]}]
        try:
            q = parse_workload(raw).queries[0]
        except WorkloadError as exc:
            raise WorkloadError(str(exc).replace("queries[0]", where, 1)) from None
        self._claim([name], "add_query.name")
        for st in q.stages:
            self._claim([stage_session(name, st.name)], f"{where}.stages[{st.name!r}].name")
        self.queries[name] = q
        if rate is None:
            self.measured.add(name)
        return q

    def set_slo(self, name: str, slo_ms: float) -> None:
        self._known(name, "set_slo")
        slo = check_slo_ms(slo_ms, "set_slo.slo_ms")
        if name in self.sessions:
            self.sessions[name] = replace(self.sessions[name], slo_ms=slo)
        else:
            self.queries[name] = replace(self.queries[name], slo_ms=slo)

    def set_rate(self, name: str, rate: float | None) -> None:
        """A declared rate (req/s), or ``None`` to measure it from now on."""
        self._known(name, "set_rate")
        if rate is None:
            self.measured.add(name)
            return
        r = _check_number(rate, "set_rate.rate", ge=0)
        self.measured.discard(name)
        self._set(name, r)

    def set_measured(self, name: str, rate: float) -> None:
        """The epoch loop's measured rate for a measured session or query (ignored for declared ones)."""
        if name in self.measured and name in self.names() and math.isfinite(rate) and rate >= 0:
            self._set(name, float(rate))

    def set_measured_gamma(self, query: str, stage: str, gamma: float) -> None:
        """The measured fan-out of one stage of a measured query (children per parent request)."""
        if query not in self.measured or query not in self.queries or not (math.isfinite(gamma) and gamma > 0):
            return
        q = self.queries[query]
        stages = tuple(replace(st, gamma=float(gamma)) if st.name == stage and st.parents else st
                       for st in q.stages)
        self.queries[query] = replace(q, stages=stages)

    def _set(self, name: str, rate: float) -> None:
        if name in self.sessions:
            self.sessions[name] = replace(self.sessions[name], rate=rate)
        else:
            self.queries[name] = replace(self.queries[name], rate=rate)

    def remove(self, name: str) -> None:
        self._known(name, "remove")
        self.sessions.pop(name, None)
        self.queries.pop(name, None)
        self.measured.discard(name)

    def _known(self, name: Any, where: str) -> None:
        if name not in self.names():
            raise WorkloadError(f"{where}.session: unknown session or query {name!r}; known: {sorted(self.names())}")

    def workload(self) -> Workload:
        return replace(self.base, sessions=tuple(self.sessions.values()), queries=tuple(self.queries.values()))


def base_workload(device: str, workload: Workload | str | Mapping | None = None,
                  memory_mb: float | None = None) -> tuple[Workload, str | None]:
    """The starting workload for a device: ``workload`` as given (file, mapping or value), else an empty one on
    the device's profile set. Returns it with the profile set shipped models are resolved from."""
    pset = device_profile_set(device)
    if workload is None:
        dev = Device(name=pset or device, memory_mb=memory_mb or Device.memory_mb)
        return Workload(device=dev), pset
    if not isinstance(workload, Workload):
        from ..workload import load_workload

        workload = load_workload(workload)
    return workload, pset or workload.device.name


def planned_rates(workload: Workload) -> dict[str, float]:
    """Name -> rate the planner used: sessions by name, queries by name (entry rate)."""
    return {**{s.name: s.rate for s in workload.sessions}, **{q.name: q.rate for q in workload.queries}}
