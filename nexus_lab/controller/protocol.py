"""What views may use of a controller: ``PanelControl`` for the JupyterLab panel, ``ControllerView`` for the widgets.

``Controller`` (a Dask cluster) and ``SimController`` (the simulator) both satisfy ``ControllerView``; views are
written against it, so neither controller's internals can leak into them. Typing only: importing this module loads
nothing else of the package (the lab imports it inside a kernel).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..planner import Plan
    from ..workload import Workload
    from .edits import WorkloadEditor

__all__ = ["ControllerView", "PanelControl", "missing_members", "protocol_members"]


@runtime_checkable
class PanelControl(Protocol):
    """The panel's needs: a JSON-able snapshot and the three actions it offers."""

    def state(self) -> dict[str, Any]: ...

    def replan_now(self) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...


@runtime_checkable
class ControllerView(PanelControl, Protocol):
    """Everything the dashboard and the editors read or call; nothing private, no optional members."""

    editor: WorkloadEditor  # its ``profile_set`` and ``measured`` (the editors' previews use them)
    policy: str
    fill: float

    @property
    def gpus(self) -> int: ...  # GPUs (workers) the cluster has: the cap of every preview

    @property
    def closed(self) -> bool: ...

    @property
    def version(self) -> int: ...

    @property
    def current_plan(self) -> Plan | None: ...

    @property
    def workload(self) -> Workload: ...

    def stats(self, window_s: float | None = ...) -> dict[str, Any]: ...

    def traces(self) -> dict[str, list]: ...

    def plan(self) -> Plan: ...

    def apply(self) -> Plan: ...

    def apply_plan(self, plan: Plan) -> Plan: ...

    def on_plan(self, listener: Callable[[Plan, int], None]) -> Callable[[], None]: ...

    def set_slo(self, session: str, slo_ms: float) -> None: ...

    def set_rate(self, session: str, rate: float | None) -> None: ...

    def add_query(self, name: str, slo_ms: float, stages: Sequence[Mapping[str, Any]],
                  rate: float | None = ...) -> str: ...

    def remove(self, name: str) -> None: ...

    def unpin(self, session: str) -> None: ...


def protocol_members(proto: type) -> list[str]:
    """The attribute and method names a Protocol class declares, its Protocol bases' first, in declaration order."""
    names: dict[str, None] = {}
    for klass in reversed(proto.__mro__):
        if klass is not Protocol and getattr(klass, "_is_protocol", False):
            names.update(dict.fromkeys(vars(klass).get("__annotations__", {})))
            names.update(dict.fromkeys(n for n in vars(klass) if not n.startswith("_")))
    return list(names)


def missing_members(obj: object, proto: type) -> list[str]:
    """The members of ``proto`` that ``obj`` lacks (``isinstance`` with a runtime Protocol skips data members)."""
    return [n for n in protocol_members(proto) if not hasattr(obj, n)]
