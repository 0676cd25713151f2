"""What the three editors share: status messages, rate-cell parsing, CSS-safe names and following the cluster's
re-plans. Widgets only; no planning here.
"""

from __future__ import annotations

import html
import weakref
from typing import Any, Protocol

from ..controller.protocol import ControllerView
from ..planner import Plan


class Follower(Protocol):
    """An editor that reacts to re-plans: its widget, and ``on_plan(version)``."""

    widget: Any

    def on_plan(self, version: int) -> None: ...


def widget_of(editor: Follower) -> Any:
    """The editor's widget to display, with the editor as its ``.editor`` (tests and notebooks reach it there)."""
    editor.widget.editor = editor
    return editor.widget


def msg(text: str, ok: bool) -> str:
    color = "#2ca02c" if ok else "#d62728"
    return f"<span class='nexus-msg' style='color:{color}'>{html.escape(text)}</span>"


def float_or_none(text: str) -> Any:
    """The text of a rate cell: '' or 'measured' -> None (measure it), else the number; bad text stays text so the
    workload editor names the field and the allowed range."""
    t = text.strip()
    if t in ("", "measured", "auto"):
        return None
    try:
        return float(t)
    except ValueError:
        return t


def css(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name)


def follow(ctl: ControllerView, editor: Follower) -> None:
    """Keep ``editor`` in step with the cluster: ``editor.on_plan(version)`` after every applied plan (the epoch
    loop's re-plans too), until its widget is closed. Holds the editor weakly."""
    ref = weakref.ref(editor)

    def listener(_plan: Plan, version: int) -> None:
        ed = ref()
        if ed is not None:
            ed.on_plan(version)

    unsubscribe = ctl.on_plan(listener)
    editor.widget.observe(lambda ch: unsubscribe() if ch["new"] is None else None, names="comm")
