"""Query DAGs at run time: each stage's requests go through any ``submit_many`` (a frontend's, usually) with the
deadline the plan's stage budgets give them; a child stage gets one request per item its parent detected.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .pending import LOST_GRACE_S
from .results import Dropped, RequestFailed

__all__ = ["SubmitMany", "crop_boxes", "run_query"]

#: ``submit_many(session, payloads, *, deadline=None) -> [Future]``, as ``Frontend.submit_many``.
SubmitMany = Callable[..., list[concurrent.futures.Future]]


def run_query(submit_many: SubmitMany, query: dict[str, Any], payload: Any, *, parents: dict[str, str | None],
              crop: Callable[[Any, Any, str], list[Any]] | None = None, timeout_s: float | None = None
              ) -> dict[str, Any]:
    """Run a query DAG for one input: each root stage on ``payload``, then each child stage once per item its
    parent detected (the fan-out), each stage with the deadline its plan budget gives it.

    Parameters
    ----------
    query : dict
        The plan's query (``QueryPlan.to_dict()``): ``{"name", "slo_ms", "stages": [{"name", "session",
        "budget_ms"}]}``, stages in topological order.
    payload
        The root stages' input (e.g. one video frame).
    parents : dict
        Stage name -> parent stage name (None for roots), from the workload's ``QuerySpec``.
    crop : callable, optional
        ``crop(parent_input, parent_output, child_stage) -> list of child inputs``, one per detected item.
        The default ``crop_boxes`` cuts the boxes a detector returns out of the frame.
    timeout_s : float, optional
        Give up waiting after this long (default: the query SLO plus the frontend's grace).

    Returns
    -------
    dict
        ``{"outputs": {stage: output (roots) or list of outputs, one per item}, "latency_ms", "within_slo",
        "dropped": {stage: count}, "failed": {stage: [error text]}}``. A stage's dropped or failed items are
        counted; a dropped root leaves its children empty.
    """
    stages = list(query["stages"])
    names = [s["name"] for s in stages]
    for st in names:
        if st not in parents:
            raise ValueError(f"parents: missing stage {st!r} of query {query.get('name')!r}")
    t0 = time.time()
    slo_s = float(query["slo_ms"]) / 1000.0
    crop = crop or crop_boxes
    deadline_of: dict[str, float] = {}
    inputs_of: dict[str, list[Any]] = {}
    outputs: dict[str, Any] = {}
    dropped: dict[str, int] = {}
    failed: dict[str, list[str]] = {}
    wait = timeout_s if timeout_s is not None else slo_s + LOST_GRACE_S
    for st in stages:
        name, parent = st["name"], parents[st["name"]]
        base = t0 if parent is None else deadline_of[parent]
        deadline_of[name] = min(base + float(st["budget_ms"]) / 1000.0, t0 + slo_s)
        if parent is None:
            items = [payload]
        else:
            items = []
            for p_in, p_out in zip(inputs_of.get(parent, []), _as_list(outputs.get(parent), parents[parent]),
                                   strict=False):
                if p_out is not None:
                    items.extend(crop(p_in, p_out, name))
        futs = submit_many(st["session"], items, deadline=deadline_of[name]) if items else []
        results: list[Any] = []
        for f in futs:
            try:
                results.append(f.result(max(0.0, t0 + wait - time.time())))
            except Dropped:
                dropped[name] = dropped.get(name, 0) + 1
                results.append(None)
            except (RequestFailed, concurrent.futures.TimeoutError) as exc:
                failed.setdefault(name, []).append(str(exc) or type(exc).__name__)
                results.append(None)
        inputs_of[name] = items
        outputs[name] = results[0] if parent is None and results else results
    latency = time.time() - t0
    return {"outputs": outputs, "latency_ms": latency * 1000.0, "within_slo": latency <= slo_s and not failed
            and not dropped, "dropped": dropped, "failed": failed}


def _as_list(out: Any, grandparent: str | None) -> list[Any]:
    return [out] if grandparent is None else list(out or [])


def crop_boxes(frame: Any, boxes: Any, stage: str) -> list[Any]:
    """One child input per detected box: rows of ``boxes`` are ``(x0, y0, x1, y1, ...)`` in [0, 1] of the frame
    (the zoo detector's output); each crop is resized (nearest neighbour) back to the frame's own shape so a
    classifier with the frame's input spec accepts it. Without a frame array, the box rows themselves go on."""
    arr = np.asarray(boxes)
    if arr.ndim != 2 or arr.shape[1] < 4:
        return [] if arr.size == 0 else [arr]
    if not isinstance(frame, np.ndarray) or frame.ndim < 2:
        return [row for row in arr]
    h, w = frame.shape[-2], frame.shape[-1]
    out = []
    for x0, y0, x1, y1 in arr[:, :4]:
        c0, c1 = sorted((int(np.clip(x0, 0, 1) * (w - 1)), int(np.clip(x1, 0, 1) * (w - 1))))
        r0, r1 = sorted((int(np.clip(y0, 0, 1) * (h - 1)), int(np.clip(y1, 0, 1) * (h - 1))))
        rows = np.linspace(r0, r1, h).astype(np.int64)
        cols = np.linspace(c0, c1, w).astype(np.int64)
        out.append(np.ascontiguousarray(frame[..., rows[:, None], cols[None, :]]))
    return out
