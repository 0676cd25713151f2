"""Query DAGs at run time (docs/architecture.md, "Query execution"): ``start_query`` runs one frame of a query as
an asynchronous DAG on a frontend's event loop (``query_frames``) and hands back a future of its result; ``aquery``
awaits it from asyncio code; ``start_queries`` starts many frames at once. Crops turn a parent's output into its
children's inputs: ``crop_boxes`` (one child per detected box, cut on the child's backend where its model can crop,
``runtime.crops``) or ``FanoutCrop`` (a seeded Poisson number of children per item, for simulated devices, as the
simulator draws them).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .crops import BoxCrop, crop_boxes
from .query_frames import Crop, FrameResult, QueryShape, check_query, launch_frame

__all__ = ["BoxCrop", "Crop", "FanoutCrop", "FrameResult", "QueryShape", "aquery", "crop_boxes",
           "start_queries", "start_query"]


def start_query(frontend: Any, query: Mapping[str, Any], parents: Mapping[str, Sequence[str]], frame: Any, *,
                crop: Crop | None = None) -> concurrent.futures.Future:
    """Start one frame of ``query`` on ``frontend`` (from any thread); a future of its result.

    ``query`` is the plan's query (``QueryPlan.to_dict()``: ``{"name", "slo_ms", "stages": [{"name", "session",
    "budget_ms"}]}``), ``parents`` maps every stage to its parent stages (``[]`` for a root; the controller's
    ``query_routes`` gives both as plain data). Each stage runs as soon as its parents have all answered: the
    roots on ``frame``, a child once per item ``crop(parent_input, parent_output, child)`` returns (default
    ``crop_boxes``: a child whose model pre-processes images gets ``{"image", "box"}`` requests and crops on its
    backend), a join on the crops of all its parents' items, concatenated in its parents' order. Every
    request carries the frame's end-to-end stage deadline (``nexus_lab.querytime``).

    The future resolves, never raising for drops or failures, to ``{"query", "outputs": {stage: [output per
    item]} (the stages that finished), "latency_ms", "within_slo", "ended_by"}``; ``ended_by`` is None, or
    ``{"stage", "reason", "status": "dropped" | "failed"}`` for the first request that did not succeed (it ends the
    frame). A ``query``/``parents`` that does not fit raises ``ValueError`` here; a frame a root's input spec
    refuses sets ``ValueError`` on the future. Every request ends by its deadline plus the frontend's bound, so the
    future always resolves.
    """
    return start_queries(frontend, query, parents, [frame], crop=crop)[0]


def start_queries(frontend: Any, query: Mapping[str, Any] | QueryShape, parents: Mapping[str, Sequence[str]] | None,
                  frames: Iterable[Any], *, crop: Crop | None = None) -> list[concurrent.futures.Future]:
    """``start_query`` for many frames at once (one hand-over to the loop); one future per frame, in order."""
    shape = check_query(query, parents)
    frames = list(frames)
    crop = crop or crop_boxes
    t0 = time.time()
    futs = [concurrent.futures.Future() for _ in frames]

    async def go() -> None:
        for frame, fut in zip(frames, futs, strict=True):
            try:
                launch_frame(frontend, shape, frame, _resolver(fut), crop=crop, arrived=t0)
            except Exception as exc:  # the frame does not fit a root's input spec, or the frontend closed
                fut.set_exception(exc)

    frontend.run_on_loop(go())
    return futs


def _resolver(fut: concurrent.futures.Future) -> Callable[[FrameResult], None]:
    def resolve(result: FrameResult) -> None:
        if not fut.done():
            fut.set_result(result)

    return resolve


async def aquery(frontend: Any, query: Mapping[str, Any], parents: Mapping[str, Sequence[str]], frame: Any, *,
                 crop: Crop | None = None) -> FrameResult:
    """``start_query`` for asyncio code: awaits the frame's result on any event loop."""
    return await asyncio.wrap_future(start_query(frontend, query, parents, frame, crop=crop))


class FanoutCrop:
    """A crop for devices whose outputs carry no boxes (simulated GPUs): each parent item gets a Poisson(gamma)
    number of children, gamma per child stage, drawn from a generator seeded with ``seed`` (the simulator's
    distribution; ``nexus_lab.sim``). Each child's input is its parent's input. Picklable, so a load generator on a
    worker can use it; not thread-safe (a frontend's loop thread is its only caller)."""

    def __init__(self, gammas: Mapping[str, float], seed: int = 0) -> None:
        for stage, g in gammas.items():
            if not (isinstance(g, (int, float)) and 0 <= g < float("inf")):
                raise ValueError(f"gammas[{stage!r}]: must be a number >= 0, got {g!r}")
        self.gammas = {s: float(g) for s, g in gammas.items()}
        self.rng = np.random.default_rng(seed)

    def __call__(self, parent_input: Any, parent_output: Any, stage: str) -> list[Any]:
        g = self.gammas.get(stage)
        if g is None:
            raise ValueError(f"stage: FanoutCrop has no gamma for stage {stage!r}; known: {sorted(self.gammas)}")
        return [parent_input] * int(self.rng.poisson(g))
