"""What the three editors share: one status line each, errors in plain words, CSS-safe names and following the
cluster's re-plans. Widgets only; no planning here.
"""

from __future__ import annotations

import html
import re
import weakref
from typing import Any, Protocol

from ..controller.protocol import ControllerView
from ..planner import Plan

_COLORS = {"ok": "#2ca02c", "error": "#d62728", "info": "inherit"}


class Follower(Protocol):
    """An editor that reacts to re-plans: its widget, and ``on_plan(version)``."""

    widget: Any

    def on_plan(self, version: int) -> None: ...


def widget_of(editor: Follower) -> Any:
    """The editor's widget to display, with the editor as its ``.editor`` (tests and notebooks reach it there)."""
    editor.widget.editor = editor
    return editor.widget


def msg(text: str, ok: bool | None) -> str:
    """One status message (green: done, red: refused, plain: information). Each editor has one status line, so a
    new message always replaces the last one: an old "applied" never sits under a new refusal."""
    kind = "info" if ok is None else ("ok" if ok else "error")
    return (f"<span class='nexus-msg nexus-msg-{kind}' style='color:{_COLORS[kind]}'>"
            f"{html.escape(text)}</span>")


# ------------------------------------------------------------------------------------------ plain words
#: Field names of the workload's checks, as a student would say them (with the unit of their numbers).
FIELDS = {"slo_ms": ("SLO", " ms"), "rate": ("rate", " requests/s"), "gamma": ("fan-out (gamma)", ""),
          "name": ("name", ""), "model": ("model", ""), "stages": ("list of stages", ""),
          "parent": ("parent stage", ""), "parents": ("parent stages", ""), "batch": ("batch size", " requests")}
_BUDGET = re.compile(r"budget L' = (?P<left>-?[\d.]+) ms \(SLO (?P<slo>[\d.]+) ms[^)]*\) is below 2\*l\(1\) = "
                     r"(?P<need>[\d.]+) ms")
_PATH = re.compile(r"^(?P<path>[A-Za-z_]\w*(?:\.\w+|\[[^\]]*\])*): (?P<rest>.+)$", re.S)
_BATCH = re.compile(r"^batches\[\((?P<gpu>\d+), '(?P<session>[^']*)'\)\]$")
_MOVE = re.compile(r"^moves\['(?P<session>[^']*)'\]$")
_RULES = [(re.compile(r"^must be > (?P<bound>[-\d.e]+)(?:, got (?P<got>.+))?$"), "must be more than {bound}{unit}"),
          (re.compile(r"^must be >= (?P<bound>[-\d.e]+)(?:, got (?P<got>.+))?$"), "must be {bound}{unit} or more"),
          (re.compile(r"^must be <= (?P<bound>[-\d.e]+)(?:, got (?P<got>.+))?$"), "must be at most {bound}{unit}"),
          (re.compile(r"^must be an integer >= 1(?:, got (?P<got>.+))?$"), "must be a whole number, at least 1"),
          (re.compile(r"^must be a (?:finite )?number(?:, got (?P<got>.+))?$"), "must be a number"),
          (re.compile(r"^must be finite$"), "must be a number"),
          (re.compile(r"^gpu must be one of \[(?P<gpus>[^\]]*)\], got (?P<got>.+)$"), "can only use GPUs {gpus}")]

_N = r"(-?[\d.]+)"
#: The planner's placement checks (``planner.validate``), said as sentences.
_SENTENCES = [
    (re.compile(rf"^gpu (\d+)/(.+?): rate {_N}/s needs batch {_N} > (\d+) per duty cycle {_N} ms$"),
     "On GPU {0:.0f}, {1} gets {2:.0f} requests/s: {3:.1f} requests in each {5:.0f} ms duty cycle, more than its batch "
     "of {4:.0f}"),
    (re.compile(rf"^gpu (\d+)/(.+?): d \+ l\(b\) = {_N} ms exceeds budget L' = {_N} ms$"),
     "On GPU {0:.0f}, a request of {1} may wait a whole duty cycle and then its batch: {2:.0f} ms, more than the "
     "{3:.0f} ms its SLO leaves on the GPU"),
    (re.compile(r"^gpu (\d+)/(.+?): batch (-?\d+) outside 1\.\.(\d+)$"),
     "On GPU {0:.0f}, {1} has a batch of {2:.0f}: it must be between 1 and {3:.0f} (the batch sizes profiled)"),
    (re.compile(rf"^gpu (\d+): sum of batch latencies {_N} ms exceeds duty cycle {_N} ms$"),
     "GPU {0:.0f} is overbooked: its batches take {1:.0f} ms, longer than its {2:.0f} ms duty cycle"),
    (re.compile(rf"^gpu (\d+): memory {_N} MB exceeds the device's {_N} MB$"),
     "GPU {0:.0f} needs {1:.0f} MB of memory, more than its {2:.0f} MB"),
    (re.compile(r"^(?:sessions|queries)\['(.+?)'\]\.rate: needs ~([\d.e+]+) GPUs, more than cluster size=(\d+).*$"),
     "The rate of {0} needs at least {1:,.0f} GPUs, more than the {2:.0f} GPUs of this cluster: enter a lower rate"),
    (re.compile(rf"^(.+?): planned {_N}/s of its {_N}/s$"), "Session {0} is given {1:.1f} of its {2:.1f} requests/s"),
]


def _number(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def _field(path: str) -> tuple[str, str]:
    m = _BATCH.match(path)
    if m:
        return f"batch size of {m['session']} on GPU {m['gpu']}", " requests"
    m = _MOVE.match(path)
    if m:
        return f"move of {m['session']}", ""
    last = re.findall(r"[A-Za-z_]\w*", path)[-1]
    return FIELDS.get(last, (last.replace("_", " "), ""))


def _sentence(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")


def plain(error: Any) -> str:
    """A workload, planner or placement error as sentences a student reads: the field in plain words, the bound
    with its unit, what was entered (``set_slo.slo_ms: must be > 0, got -1`` -> "The SLO must be more than 0 ms
    (you entered -1).")."""
    out = []
    for part in str(error).split("; "):
        rest = part.strip()
        said = next((text.format(*map(_number, m.groups())) for rx, text in _SENTENCES if (m := rx.match(rest))),
                    None)
        if said:
            out.append(_sentence(said))
            continue
        m = _BUDGET.search(rest)
        if m:
            head = rest[:m.start()].rstrip(": ").strip()
            left, need = float(m["left"]), float(m["need"])
            room = "no time at all" if left <= 0 else f"only {left:.1f} ms"
            lead = f"For {head}, an" if head else "An"
            out.append(_sentence(f"{lead} SLO of {float(m['slo']):g} ms is too tight for this model. After "
                                 f"pre/post-processing and the network it leaves {room} on the GPU, and a "
                                 f"request needs at least {need:.1f} ms there (twice the batch-1 "
                                 "latency: one wait, then one run)"))
            continue
        m = _PATH.match(rest)
        if not (m and ("." in m["path"] or "[" in m["path"] or m["path"] in FIELDS)):
            out.append(_sentence(rest))
            continue
        word, unit = _field(m["path"])
        for rule, text in _RULES:
            r = rule.match(m["rest"])
            if r:
                d = r.groupdict()
                got = f" (you entered {d['got']})" if d.get("got") else ""
                out.append(_sentence(f"The {word} " + text.format(unit=unit, **d) + got))
                break
        else:
            out.append(_sentence(f"{word[:1].upper()}{word[1:]}: {m['rest']}"))
    return " ".join(out)


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
