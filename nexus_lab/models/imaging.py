"""A model's image pre- and post-processing as plain data, and the functions that apply them to one request.

``ImageTransform``: decode (JPEG/PNG bytes), resize, centre-crop, scale to [0, 1], normalise, as a torchvision
model's weights describe it. ``TopK``: a classifier's logits -> its best labels with class names. ``Boxes``: a
detector's packed rows -> boxes with scores and class names. The backend applies them on its CPU threads
(``nexus_lab.runtime.backend.prepost``); the profiler times them. Torch is imported when one is applied.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .zoo import InputError

__all__ = ["Boxes", "ImageTransform", "TopK", "crop_box", "decode_image", "encode_jpeg", "image_size"]


def decode_image(data: bytes) -> Any:
    """Encoded image bytes (JPEG or PNG) -> a ``3 x H x W`` uint8 tensor: ``torchvision.io`` when its image
    extension loads, else Pillow (the decoder torchvision falls back to as well)."""
    import torch

    from .tv_import import import_torchvision

    if not isinstance(data, bytes | bytearray | memoryview) or len(data) == 0:
        raise InputError(f"image: expected encoded JPEG/PNG bytes, got {type(data).__name__}")
    tv = import_torchvision()
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    try:
        return tv.io.decode_image(raw, mode=tv.io.ImageReadMode.RGB)
    except RuntimeError as exc:
        if "extension" not in str(exc) and "image" not in str(exc).lower():
            raise InputError(f"image: cannot decode: {exc}") from None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(bytes(data))) as im:
            arr = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"image: cannot decode as JPEG/PNG: {exc}") from None
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def image_size(image: Any) -> tuple[int, int] | None:
    """``(height, width)`` of encoded image bytes (read from the header only, nothing decoded) or of an
    ``H x W x 3`` uint8 frame; None for anything else (e.g. a model's input tensor)."""
    if isinstance(image, np.ndarray):
        ok = image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
        return (int(image.shape[0]), int(image.shape[1])) if ok else None
    if not isinstance(image, bytes | bytearray | memoryview) or len(image) == 0:
        return None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(bytes(image))) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    return int(h), int(w)


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """An ``H x W x 3`` uint8 image as JPEG bytes (for demos, tests and benchmarks that make their own images)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


@dataclass(frozen=True)
class ImageTransform:
    """Resize the shorter side to ``resize`` (None: straight to the crop size), centre-crop ``crop`` (h, w), scale
    to [0, 1] and normalise with ``mean``/``std`` (None: no normalisation, e.g. detectors normalise inside)."""

    crop: tuple[int, int]
    resize: int | None = None
    mean: tuple[float, float, float] | None = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] | None = (0.229, 0.224, 0.225)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (3, int(self.crop[0]), int(self.crop[1]))

    def to_dict(self) -> dict[str, Any]:
        return {"crop": list(self.crop), "resize": self.resize,
                "mean": None if self.mean is None else list(self.mean),
                "std": None if self.std is None else list(self.std)}

    def resized_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """``(h, w)`` of an ``size`` image after the resize step (torchvision's rule: the shorter side becomes
        ``resize``, the longer one scales and is truncated; no ``resize``: the crop size itself)."""
        if not self.resize:
            return int(self.crop[0]), int(self.crop[1])
        h, w = int(size[0]), int(size[1])
        r = int(self.resize)
        return (r, int(r * w / h)) if h <= w else (int(r * h / w), r)

    def box_to_source(self, box: Sequence[float], size: tuple[int, int]) -> list[float]:
        """A box ``[x1, y1, x2, y2]`` in this transform's output pixels (what a detector fed by it reports) in the
        pixels of the ``size`` = ``(h, w)`` image it was made from: the centre crop's offset added back, the
        resize undone. A child stage's crop of the parent's own image uses it."""
        if len(box) < 4:
            raise InputError(f"box: expected [x1, y1, x2, y2], got {list(box)!r}")
        nh, nw = self.resized_size(size)
        top = round((nh - int(self.crop[0])) / 2.0)  # torchvision's centre-crop offsets
        left = round((nw - int(self.crop[1])) / 2.0)
        sx, sy = int(size[1]) / nw, int(size[0]) / nh
        x1, y1, x2, y2 = (float(v) for v in box[:4])
        return [(x1 + left) * sx, (y1 + top) * sy, (x2 + left) * sx, (y2 + top) * sy]

    def apply(self, payload: Any) -> np.ndarray:
        """One request's payload -> the model's float32 ``3 x h x w`` input. Accepts encoded image bytes, an
        ``H x W x 3`` uint8 array, the model input itself (passed through after a shape check), or a child
        stage's crop: ``{"image": bytes or frame, "box": [x1, y1, x2, y2]}`` (a parent detector's box)."""
        import torch
        from torchvision.transforms.v2 import functional as F

        if isinstance(payload, np.ndarray) and payload.dtype == np.float32 and payload.shape == self.shape:
            return payload
        if isinstance(payload, dict):
            if set(payload) != {"image", "box"}:
                raise InputError(f"payload: a crop is {{'image', 'box'}}, got keys {sorted(map(str, payload))}")
            image = payload["image"]
            if isinstance(image, bytes | bytearray | memoryview):
                image = decode_image(image).numpy().transpose(1, 2, 0)
            payload = crop_box(image, payload["box"])
        if isinstance(payload, bytes | bytearray | memoryview):
            img = decode_image(payload)
        elif isinstance(payload, np.ndarray) and payload.ndim == 3 and payload.shape[2] == 3 \
                and payload.dtype == np.uint8:
            img = torch.from_numpy(np.ascontiguousarray(payload.transpose(2, 0, 1)))
        else:
            got = f"array {payload.shape} {payload.dtype}" if isinstance(payload, np.ndarray) \
                else type(payload).__name__
            raise InputError(f"payload: expected JPEG/PNG bytes, an H x W x 3 uint8 image or a float32 array of "
                             f"shape {self.shape}, got {got}")
        size = [int(self.resize)] if self.resize else list(self.crop)
        img = F.resize(img, size, antialias=True)
        img = F.center_crop(img, list(self.crop))
        x = F.to_dtype(img, torch.float32, scale=True)
        if self.mean is not None and self.std is not None:
            x = F.normalize(x, list(self.mean), list(self.std))
        return x.numpy()


def _label(labels: Sequence[str] | None, k: int) -> str:
    return labels[k] if labels is not None and 0 <= k < len(labels) else str(k)


@dataclass(frozen=True)
class TopK:
    """A classifier's result: its ``k`` best classes as ``{"label", "index", "score"}`` (softmax probability)."""

    k: int = 5
    labels: tuple[str, ...] | None = None

    def apply(self, logits: np.ndarray) -> list[dict[str, Any]]:
        z = np.asarray(logits, dtype=np.float64).reshape(-1)
        p = np.exp(z - z.max())
        p /= p.sum()
        k = min(int(self.k), z.size)
        best = np.argpartition(-p, k - 1)[:k]
        best = best[np.argsort(-p[best])]
        return [{"label": _label(self.labels, int(i)), "index": int(i), "score": float(p[i])} for i in best]


@dataclass(frozen=True)
class Boxes:
    """A detector's result: rows ``[x1, y1, x2, y2, score, label]`` (a padding row has score < 0) ->
    ``{"box", "score", "label", "index"}`` for each box scoring at least ``min_score``."""

    min_score: float = 0.3
    labels: tuple[str, ...] | None = None

    def apply(self, rows: np.ndarray) -> list[dict[str, Any]]:
        rows = np.asarray(rows).reshape(-1, 6)
        keep = rows[rows[:, 4] >= self.min_score]
        return [{"box": [float(v) for v in r[:4]], "score": float(r[4]), "index": int(r[5]),
                 "label": _label(self.labels, int(r[5]))} for r in keep]


def crop_box(frame: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """A child stage's input: the ``H x W x 3`` uint8 frame cropped to ``box`` (x1, y1, x2, y2 in pixels, clipped
    to the frame; at least one pixel)."""
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3:
        raise InputError(f"frame: expected an H x W x 3 image, got {getattr(frame, 'shape', type(frame).__name__)}")
    if len(box) != 4:
        raise InputError(f"box: expected [x1, y1, x2, y2], got {list(box)!r}")
    h, w = frame.shape[:2]
    x1, y1 = (int(np.clip(np.floor(v), 0, m - 1)) for v, m in ((box[0], w), (box[1], h)))
    x2, y2 = (int(np.clip(np.ceil(v), 0, m)) for v, m in ((box[2], w), (box[3], h)))
    return np.ascontiguousarray(frame[y1:max(y2, y1 + 1), x1:max(x2, x1 + 1)])
