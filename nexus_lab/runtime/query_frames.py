"""One query frame as an asynchronous DAG on a frontend's event loop (docs/architecture.md, "Query execution").

A frame sends each stage as soon as its inputs are ready, through ``Frontend.send_many`` callbacks: no thread waits
for a frame, siblings are in flight together, and all requests of one stage of one frame go out in one call, so they
coalesce into one message and batch at the backend like any other requests. Every request carries the frame's
end-to-end stage deadline (``nexus_lab.querytime.stage_deadlines``, the rule the simulator uses too). The first
dropped or failed request ends the frame; the result names that stage and why. Nothing here plans or batches.

Everything in this module runs on the frontend's loop thread (``launch_frame``); ``queries.start_query`` is the
thread-safe entry.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..querytime import plan_stage_timings, stage_deadlines

__all__ = ["Crop", "FrameResult", "QueryShape", "check_query", "launch_frame"]

#: ``crop(parent_input, parent_output, child_stage) -> [child input, ...]``: one child request per item. A crop with
#: a ``for_models(parent_model, child_model, parent_input, parent_output, child_stage)`` method is called through it,
#: with the stages' models as the frontend routes them (``crops.BoxCrop`` sends crops to a child's backend that way).
Crop = Callable[[Any, Any, str], Sequence[Any]]
#: What a frame resolves to: ``{"outputs", "latency_ms", "within_slo", "ended_by"}``.
FrameResult = dict[str, Any]


class QueryShape:
    """A query's plan dict and parents, checked once and indexed for many frames: stage order, sessions, children,
    offsets of the end-to-end deadlines (seconds after a frame's birth)."""

    __slots__ = ("children", "name", "offsets", "order", "parents", "sessions", "slo_s")

    def __init__(self, query: Mapping[str, Any], parents: Mapping[str, Sequence[str]]) -> None:
        if not isinstance(query, Mapping):
            raise ValueError(f"query: must be a plan's query dict {{name, slo_ms, stages}}, got {type(query).__name__}")
        stages = query.get("stages")
        if not isinstance(stages, Sequence) or not stages:
            raise ValueError(f"query.stages: must be a non-empty list of {{name, session, budget_ms}}, got {stages!r}")
        slo_ms = query.get("slo_ms")
        if not (isinstance(slo_ms, (int, float)) and 0 < slo_ms < float("inf")):
            raise ValueError(f"query.slo_ms: must be a number > 0, got {slo_ms!r}")
        if not isinstance(parents, Mapping):
            raise ValueError(f"parents: must map each stage to its parent stages, got {type(parents).__name__}")
        self.name = str(query.get("name", ""))
        self.slo_s = float(slo_ms) / 1000.0
        ps = {n: (p,) if isinstance(p, str) else tuple(p or ()) for n, p in parents.items()}
        self.sessions: dict[str, str] = {}
        for k, st in enumerate(stages):
            if not isinstance(st, Mapping) or not isinstance(st.get("session"), str):
                raise ValueError(f"query.stages[{k}]: must be a mapping with a 'session' name, got {st!r}")
            self.sessions[st["name"]] = st["session"]
        extra = sorted(set(ps) - set(self.sessions))
        if extra:
            raise ValueError(f"parents: stages {extra} are not in query {self.name!r}")
        # the shared rule checks names, budgets, unknown parents and cycles
        self.offsets = {n: dl for n, dl in stage_deadlines(plan_stage_timings(stages, ps), 0.0, self.slo_s).items()}
        self.parents = {n: ps[n] for n in self.sessions}
        self.children: dict[str, list[str]] = {n: [] for n in self.sessions}
        for n, pp in self.parents.items():
            for p in pp:
                self.children[p].append(n)
        order: list[str] = []  # parents before children (the rule has rejected cycles)
        left = {n: len(p) for n, p in self.parents.items()}
        ready = [n for n in self.sessions if not left[n]]
        while ready:
            n = ready.pop(0)
            order.append(n)
            for c in self.children[n]:
                left[c] -= 1
                if not left[c]:
                    ready.append(c)
        self.order = order


def check_query(query: Mapping[str, Any] | QueryShape, parents: Mapping[str, Sequence[str]] | None) -> QueryShape:
    """``query`` and ``parents`` as a checked ``QueryShape`` (a given shape is returned as is)."""
    if isinstance(query, QueryShape):
        return query
    return QueryShape(query, parents if parents is not None else {})


class _Frame:
    """The state of one frame: per stage its inputs, outputs and requests outstanding; how many parents each
    stage still waits for. Ends once, through ``on_result``."""

    __slots__ = ("crop", "deadline", "fail", "frontend", "inputs", "left", "on_result", "outputs", "sending",
                 "shape", "stages_left", "t0", "waiting")

    def __init__(self, frontend: Any, shape: QueryShape, crop: Crop, t0: float,
                 on_result: Callable[[FrameResult], None]) -> None:
        self.frontend, self.shape, self.crop, self.t0, self.on_result = frontend, shape, crop, t0, on_result
        self.deadline = {n: t0 + off for n, off in shape.offsets.items()}
        self.waiting = {n: len(p) for n, p in shape.parents.items()}
        self.inputs: dict[str, list[Any]] = {}
        self.outputs: dict[str, list[Any]] = {}
        self.left: dict[str, int] = {}
        self.stages_left = len(shape.order)
        self.fail: tuple[str, str, str] | None = None  # (stage, status, reason) seen while sending
        self.sending = False

    def send(self, stage: str, items: list[Any], arrived: float | None = None) -> None:
        """Send one stage's requests in one call (they coalesce and batch together); an empty stage is done."""
        self.inputs[stage] = items
        self.outputs[stage] = [None] * len(items)
        self.left[stage] = len(items)
        if not items:
            self.stage_done(stage)
            return
        self.sending = True  # a drop may come back inside send_many (no route), under the frontend's lock
        try:
            self.frontend.send_many(self.shape.sessions[stage], items,
                                    [self._done_of(stage, k) for k in range(len(items))],
                                    deadline=self.deadline[stage], arrived=arrived)
        finally:
            self.sending = False
        if self.fail is not None and self.on_result is not None:
            self.end(*self.fail)

    def _done_of(self, stage: str, k: int) -> Callable[[str, Any], None]:
        def done(status: str, value: Any) -> None:
            if self.on_result is None:  # the frame has ended: a sibling's late reply
                return
            if status == "ok":
                self.outputs[stage][k] = value
                self.left[stage] -= 1
                if not self.left[stage]:
                    self.stage_done(stage)
            elif self.fail is None:
                self.fail = (stage, "dropped" if status == "dropped" else "failed", str(value))
                if not self.sending:
                    self.end(*self.fail)

        return done

    def stage_done(self, stage: str) -> None:
        """All of ``stage``'s requests answered: start each child whose parents are all done (a join waits for
        every parent; its inputs are the crops of every parent's items, concatenated in the parents' order)."""
        self.stages_left -= 1
        if not self.stages_left:
            self.end(None, None, None)
            return
        for child in self.shape.children[stage]:
            self.waiting[child] -= 1
            if self.waiting[child] or self.on_result is None:
                continue
            items: list[Any] = []
            try:
                by_models = getattr(self.crop, "for_models", None)
                c_model = None if by_models is None else self.model(child)
                for p in self.shape.parents[child]:
                    p_model = None if by_models is None else self.model(p)
                    for p_in, p_out in zip(self.inputs[p], self.outputs[p], strict=True):
                        items.extend(self.crop(p_in, p_out, child) if by_models is None else
                                     by_models(p_model, c_model, p_in, p_out, child))
                self.send(child, items)
            except Exception as exc:  # a crop that raised, or a crop that does not fit the child's input spec
                self.end(child, "failed", f"{type(exc).__name__}: {exc}")
            if self.on_result is None:
                return

    def model(self, stage: str) -> str | None:
        """The model the frontend routes ``stage``'s session to (None where it does not say)."""
        sessions = getattr(self.frontend, "sessions", None) or {}
        return (sessions.get(self.shape.sessions[stage]) or {}).get("model")

    def end(self, stage: str | None, status: str | None, reason: str | None) -> None:
        cb, self.on_result = self.on_result, None
        if cb is None:
            return
        latency = time.time() - self.t0
        done = {n: out for n, out in self.outputs.items() if not self.left.get(n)}
        cb({"query": self.shape.name, "outputs": done, "latency_ms": latency * 1000.0,
            "within_slo": stage is None and latency <= self.shape.slo_s,
            "ended_by": None if stage is None else {"stage": stage, "reason": reason, "status": status}})


def launch_frame(frontend: Any, shape: QueryShape, frame: Any, on_result: Callable[[FrameResult], None], *,
                 crop: Crop, arrived: float | None = None) -> None:
    """Loop thread: start one frame (its root stages on ``frame``); ``on_result`` gets its result once.

    ``arrived`` (``time.time()``): when the frame arrived (its latency and deadlines count from then). A frame the
    root stages refuse (a payload that does not fit a root's input spec, an unknown session) raises
    ``ValueError`` and ``on_result`` is never called."""
    f = _Frame(frontend, shape, crop, time.time() if arrived is None else float(arrived), on_result)
    try:
        for stage in shape.order:
            if shape.parents[stage]:
                break
            if f.on_result is None:  # an earlier root was dropped at once
                return
            f.send(stage, [frame], arrived=arrived)
    except ValueError:
        f.on_result = None  # the roots in flight already end unseen
        raise
