"""How a parent stage's output becomes its children's inputs in a query frame (docs/architecture.md, "Query
execution"): ``crop_boxes``, the default crop, one child request per detected box.

Where the child's model pre-processes images on its backend (an ``ImageTransform``: decode, crop, resize and
normalise on the backend's CPU threads beside the device, ``runtime.backend.prepost``) and the parent's input is an
image (JPEG/PNG bytes or an ``H x W x 3`` uint8 frame), each box goes out as ``{"image": <the parent's input>,
"box": [x1, y1, x2, y2]}`` in that image's pixels: the crop runs on the backend, as in the original Nexus, and the
frontend only maps the parent's boxes back to the image (``ImageTransform.box_to_source``). Otherwise (the zoo's
tiny nets take tensors) the frontend crops: each box's region of the frame, resized back to the frame's shape.
Nothing here plans or batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..models import zoo
from ..models.imaging import ImageTransform, image_size
from .wire import to_wire

__all__ = ["BoxCrop", "backend_crops", "crop_boxes", "frontend_crop"]


def _transform(model: str | None) -> ImageTransform | None:
    """``model``'s image transform (it takes ``{"image", "box"}`` crops), or None (unknown model, no transform)."""
    if not model:
        return None
    try:
        t = zoo.get_model_spec(model).transform
    except (KeyError, ValueError):
        return None
    return t if isinstance(t, ImageTransform) else None


def _boxes(output: Any) -> tuple[np.ndarray, bool] | None:
    """A parent's output as box rows ``(N, 4)`` and whether they are pixels: post-processed detections (a list of
    ``{"box": [x1, y1, x2, y2]}`` in the parent's input pixels; a tuple once it crossed the wire) or rows
    ``(x0, y0, x1, y1, ...)`` in [0, 1] of the parent's input (the zoo detector); None for anything else."""
    if isinstance(output, list | tuple) and all(isinstance(d, dict) and "box" in d for d in output):
        return np.array([d["box"][:4] for d in output], dtype=np.float64).reshape(-1, 4), True
    if not isinstance(output, np.ndarray | list | tuple):
        return None
    try:
        arr = np.asarray(output)
    except ValueError:  # ragged rows
        return None
    if arr.dtype == object or arr.ndim != 2 or arr.shape[1] < 4:
        return None
    return arr[:, :4].astype(np.float64), False


def backend_crops(parent_model: str | None, child_model: str | None, frame: Any, output: Any) -> list[Any] | None:
    """One ``{"image", "box"}`` request per box of ``output``, for a child whose model crops on its backend; None
    where it cannot (the child has no image transform, ``frame`` is not an image, ``output`` holds no boxes)."""
    if _transform(child_model) is None:
        return None
    size, found = image_size(frame), _boxes(output)
    if size is None or found is None:
        return None
    rows, pixels = found
    parent = _transform(parent_model)
    if not pixels:  # fractions of the parent's input
        h, w = parent.crop if parent is not None else size
        rows = rows * np.array([w, h, w, h], dtype=np.float64)
    image = to_wire(frame)  # the same frame under every box
    return [{"image": image,
             "box": parent.box_to_source(box, size) if parent is not None else [float(v) for v in box]}
            for box in rows]


def frontend_crop(frame: Any, boxes: Any) -> list[Any]:
    """One child input per box, cut on the frontend: rows of ``boxes`` are ``(x0, y0, x1, y1, ...)`` in [0, 1] of
    the frame (the zoo detector's output; a list of ``{"box"}`` detections is read in the frame's pixels); each
    crop is resized (nearest neighbour) back to the frame's own shape, so a classifier with the frame's input spec
    accepts it. Without a frame array, the boxes themselves go on."""
    found = _boxes(boxes)
    if found is None:
        try:
            arr = np.asarray(boxes)
        except ValueError:  # ragged: goes on as it is
            return [boxes]
        return [] if arr.size == 0 else [arr]
    if not isinstance(frame, np.ndarray) or frame.ndim < 2:
        return list(boxes)
    rows, pixels = found
    h, w = frame.shape[-2], frame.shape[-1]
    if pixels:
        rows = rows / np.array([w, h, w, h], dtype=np.float64)
    out = []
    for x0, y0, x1, y1 in rows:
        c0, c1 = sorted((int(np.clip(x0, 0, 1) * (w - 1)), int(np.clip(x1, 0, 1) * (w - 1))))
        r0, r1 = sorted((int(np.clip(y0, 0, 1) * (h - 1)), int(np.clip(y1, 0, 1) * (h - 1))))
        rr = np.linspace(r0, r1, h).astype(np.int64)
        cc = np.linspace(c0, c1, w).astype(np.int64)
        out.append(np.ascontiguousarray(frame[..., rr[:, None], cc[None, :]]))
    return out


class BoxCrop:
    """The default crop (``crop_boxes``; picklable, so a load generator on a worker can use it). Called as a
    ``Crop`` (``crop(parent_input, parent_output, child_stage)``) it crops on the frontend; the query runtime calls
    ``for_models`` with the parent's and the child's models too, and the crops go to the child's backend where
    its model can make them. ``BoxCrop(backend=False)`` always crops on the frontend."""

    def __init__(self, backend: bool = True) -> None:
        self.backend = bool(backend)

    def __call__(self, frame: Any, boxes: Any, stage: str) -> list[Any]:
        return frontend_crop(frame, boxes)

    def for_models(self, parent_model: str | None, child_model: str | None, frame: Any, boxes: Any,
                   stage: str) -> Sequence[Any]:
        if self.backend:
            items = backend_crops(parent_model, child_model, frame, boxes)
            if items is not None:
                return items
        return self(frame, boxes, stage)

    def __repr__(self) -> str:
        return f"BoxCrop(backend={self.backend})"


#: The default crop: on the child's backend where its model can crop, else on the frontend.
crop_boxes = BoxCrop()
