"""Pre- and post-processing on CPU threads beside the device, as the original Nexus backend does.

A model with a transform (``ModelSpec.transform``) takes images: each request's JPEG/PNG bytes or uint8 frame is
decoded, resized and normalised on a small thread pool before it is queued, so the device's batches and the
image work overlap. A model with a result step (``ModelSpec.post``: top-k labels, boxes) has each request's row
turned into its result on the same pool before the reply. Models without either skip the pool entirely.
The data plane only: what runs where is the plan's; these threads only move the CPU work off the batch path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ...models import zoo

logger = logging.getLogger("nexus_lab.backend")

__all__ = ["DEFAULT_THREADS", "PrePost", "post_rows", "pre_rows", "single_threaded_ops"]

DEFAULT_THREADS = 2


def _spec(model: str) -> Any:
    try:
        return zoo.get_model_spec(model)
    except (KeyError, ValueError):
        return None


def single_threaded_ops() -> None:
    """Torch's intra-op threads for image ops: one. The pool is the parallelism; several intra-op threads per
    resize only fight the device and each other for the cores (8 JPEGs took 10x longer on 2 busy cores)."""
    import torch

    torch.set_num_threads(1)


def pre_rows(transform: Any, payloads: Sequence[Any]) -> list[tuple[bool, Any]]:
    """Each payload as the model's input ``(True, array)`` or its error ``(False, message)``."""
    out: list[tuple[bool, Any]] = []
    for p in payloads:
        try:
            out.append((True, transform.apply(p)))
        except Exception as exc:  # a bad image fails its own request, never the batch
            out.append((False, f"pre-processing failed: {type(exc).__name__}: {exc}"))
    return out


def post_rows(post: Any, rows: Sequence[Any]) -> list[Any]:
    return [None if r is None else post.apply(r) for r in rows]


class PrePost:
    """The pool and the two hooks the backend calls: ``intake`` (stream rows in) and ``reply`` (results out).

    ``threads`` = 0 runs both inline, on the calling thread (the baseline the ``real-models`` benchmark compares
    the pool against)."""

    def __init__(self, threads: int = DEFAULT_THREADS) -> None:
        if int(threads) < 0:
            raise ValueError(f"threads: must be >= 0, got {threads}")
        self.threads = int(threads)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="nexus-prepost",
                                        initializer=single_threaded_ops) if self.threads else None
        self._transforms: dict[str, Any] = {}
        self._posts: dict[str, Any] = {}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def transform(self, model: str) -> Any:
        """The model's image transform, or None (its requests are queued as they come)."""
        if model not in self._transforms:  # a prefix member's requests carry the member's own input
            part, base = zoo.part_of(model)
            spec = _spec(base if part == "suffix" else model)
            self._transforms[model] = None if spec is None else spec.transform
        return self._transforms[model]

    def post(self, model: str) -> Any:
        if model not in self._posts:
            spec = _spec(model)
            self._posts[model] = None if spec is None else spec.post
        return self._posts[model]

    def forget(self) -> None:
        """A new plan (a model may have been re-registered): look the steps up again."""
        self._transforms.clear()
        self._posts.clear()

    def intake(self, rows: list[list[Any]], model_of: Callable[[str], str], enqueue: Callable[..., Any],
               fail: Callable[[Any, Any, str], None], sink: Any) -> list[list[Any]]:
        """Rows ``[id, session, deadline, payload]`` of a stream message: those that need pre-processing go to
        the pool (queued with ``enqueue`` once ready, or failed with ``fail``); the rest are returned."""
        plain: list[list[Any]] = []
        work: dict[str, list[list[Any]]] = {}
        for row in rows:
            t = self.transform(model_of(row[1]))
            if t is None:
                plain.append(row)
            else:
                work.setdefault(row[1], []).append(row)
        if not work:
            return plain
        loop = asyncio.get_running_loop()
        for session, todo in work.items():
            t = self.transform(model_of(session))

            def done(out: list[tuple[bool, Any]], todo: list[list[Any]] = todo) -> None:
                for (rid, s, deadline, _), (ok, value) in zip(todo, out, strict=True):
                    if ok:
                        enqueue(rid, s, deadline, value, sink)
                    else:
                        fail(sink, rid, value)

            if self._pool is None:
                done(pre_rows(t, [r[3] for r in todo]))
                continue
            fut = self._pool.submit(pre_rows, t, [r[3] for r in todo])
            fut.add_done_callback(lambda f, done=done: loop.call_soon_threadsafe(_settle, f, done))
        return plain

    def reply(self, model: str, sink: Any, rids: list[Any], results: list[Any]) -> None:
        """Reply to a batch's requests on ``sink``: after the model's result step on the pool when it has one."""
        post = self.post(model)
        if post is None:
            sink.complete_ok(rids, results)
            return
        if self._pool is None:
            _reply(sink, rids, results, post)
            return
        loop = asyncio.get_running_loop()
        fut = self._pool.submit(post_rows, post, results)
        fut.add_done_callback(lambda f: loop.call_soon_threadsafe(_replied, f, sink, rids))


def _settle(fut: Any, done: Callable[[Any], None]) -> None:
    if fut.cancelled():
        return
    try:
        done(fut.result())
    except Exception:
        logger.exception("nexus backend pre-processing error")


def _reply(sink: Any, rids: list[Any], results: list[Any], post: Any) -> None:
    try:
        out = post_rows(post, results)
    except Exception as exc:
        for rid in rids:
            sink.complete(rid, "error", f"post-processing failed: {type(exc).__name__}: {exc}")
        return
    sink.complete_ok(rids, out)


def _replied(fut: Any, sink: Any, rids: list[Any]) -> None:
    if fut.cancelled():
        for rid in rids:
            sink.complete(rid, "error", "backend closed during post-processing")
        return
    exc = fut.exception()
    if exc is not None:
        for rid in rids:
            sink.complete(rid, "error", f"post-processing failed: {type(exc).__name__}: {exc}")
        return
    sink.complete_ok(rids, fut.result())
