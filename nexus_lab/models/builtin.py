"""The built-in zoo: a small classifier, fine-tuned variants sharing its prefix, a detector with a variable number
of boxes per image, a tiny net for smoke tests, and a no-op model for dispatch benchmarks.

Registers lazy factories only: importing this module does not import torch. No device or Dask code here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .zoo import model_seed, register_model

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Fine-tuned variants of ``convnet``: same backbone (seed of "convnet"), own head (seed of their name).
VARIANTS = {"convnet-cars": 10, "convnet-faces": 20}
CONVNET_CLASSES = 100
GROUP = "convnet"


def boxes(grid: np.ndarray) -> np.ndarray:
    """One image's detector map ``(6, G, G)`` -> ``(n, 6)`` float32 boxes ``(x0, y0, x1, y1, score, class)``,
    coordinates in [0, 1] of the frame, best score first; n (0..MAX_BOXES) depends on the image."""
    from .nets import DETECT_THRESHOLD, MAX_BOXES  # plain constants; nets imports torch, so read them lazily

    g = np.asarray(grid, dtype=np.float32)
    size = g.shape[-1]
    z = g[0]
    rows, cols = np.nonzero(z > DETECT_THRESHOLD)
    if rows.size == 0:
        return np.zeros((0, 6), dtype=np.float32)
    order = np.argsort(-z[rows, cols], kind="stable")[:MAX_BOXES]
    rows, cols = rows[order], cols[order]
    sig = 1.0 / (1.0 + np.exp(-g[1:5, rows, cols]))
    cx = (cols + sig[0]) / size
    cy = (rows + sig[1]) / size
    w = 0.1 + 0.3 * sig[2]
    h = 0.1 + 0.3 * sig[3]
    score = 1.0 / (1.0 + np.exp(-z[rows, cols]))
    cls = (g[5, rows, cols] > 0).astype(np.float32)
    out = np.stack([np.clip(cx - w / 2, 0, 1), np.clip(cy - h / 2, 0, 1), np.clip(cx + w / 2, 0, 1),
                    np.clip(cy + h / 2, 0, 1), score, cls], axis=1)
    return out.astype(np.float32)


def _tiny() -> torch.nn.Module:
    from .nets import tiny

    return tiny(model_seed("tiny"))


def _convnet() -> torch.nn.Module:
    from .nets import classifier

    return classifier(model_seed(GROUP), model_seed(GROUP) + 1, CONVNET_CLASSES)


def _variant(name: str, classes: int) -> Callable[[], torch.nn.Module]:
    def factory() -> torch.nn.Module:
        from .nets import classifier

        return classifier(model_seed(GROUP), model_seed(name), classes)

    return factory


def _detector() -> torch.nn.Module:
    from .nets import detector

    return detector(model_seed("detector"))


def _noop() -> torch.nn.Module:
    import torch

    return torch.nn.Identity()


def register_builtins() -> None:
    register_model("tiny", _tiny, (3, 32, 32), description="3x32x32 -> 10 logits; one conv (smoke tests)",
                   replace=True)
    register_model(GROUP, _convnet, (3, 64, 64), group=GROUP, replace=True,
                   description=f"3x64x64 -> {CONVNET_CLASSES} logits; 4 conv layers (~20 M MACs)")
    for name, classes in VARIANTS.items():
        register_model(name, _variant(name, classes), (3, 64, 64), group=GROUP, replace=True,
                       description=f"convnet fine-tuned to {classes} classes: shares the convnet backbone")
    register_model("detector", _detector, (3, 64, 64), postprocess=boxes, replace=True,
                   description="3x64x64 -> (n, 6) boxes x0,y0,x1,y1,score,class; n varies per image")
    register_model("noop", _noop, None, passthrough=True, replace=True,
                   description="returns its input unchanged, any payload (dispatch benchmarks)")
