"""Importing torchvision on a CPU-only torch, whatever torchvision wheel is installed.

PyPI's Linux torchvision wheels are built against CUDA torch: with the CPU torch wheel their C++ extension does
not load, and ``import torchvision`` then fails while registering fake kernels for operators that do not exist.
The Python side (the model architectures, their weights' metadata, the v2 transforms) needs none of it, so
``import_torchvision`` retries the import without those two registration modules, and gives ``nms`` (the one
operator the single-stage detectors call) a pure-torch implementation. A torchvision whose extension loads is
used as it is. Operators without a fallback (``roi_align``: the R-CNN detectors) raise torchvision's own error.
"""

from __future__ import annotations

import sys
import threading
import types
from typing import Any

__all__ = ["has_native_ops", "import_torchvision", "nms_fallback"]

_LOCK = threading.Lock()
_REGISTRATIONS = ("_meta_registrations", "_autograd_registrations")


def import_torchvision() -> Any:
    """``torchvision``, imported once per process (see the module docstring for the CPU-torch fallback)."""
    with _LOCK:
        tv = sys.modules.get("torchvision")
        if tv is not None and hasattr(tv, "models"):
            return tv
        try:
            import torchvision
        except ModuleNotFoundError:
            raise ImportError("torchvision is not installed: pip install torchvision (the version that matches "
                              "your torch)") from None
        except RuntimeError as exc:
            if "does not exist" not in str(exc):
                raise
            for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
                del sys.modules[name]
            for sub in _REGISTRATIONS:  # they only register kernels of operators this build lacks
                sys.modules[f"torchvision.{sub}"] = types.ModuleType(f"torchvision.{sub}")
            import torchvision
        if not has_native_ops(torchvision):
            from torchvision.ops import boxes

            boxes.nms = nms_fallback  # batched_nms (the detectors' post-processing) looks it up at call time
        return torchvision


def has_native_ops(tv: Any) -> bool:
    """Whether torchvision's C++ operators loaded."""
    try:
        return bool(tv.extension._has_ops())
    except Exception:
        return False


def nms_fallback(boxes: Any, scores: Any, iou_threshold: float) -> Any:
    """Greedy non-maximum suppression in torch: the indices of the boxes kept, highest score first, as
    ``torchvision.ops.nms`` returns them."""
    import torch
    from torchvision.ops import box_iou

    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    order = torch.argsort(scores, descending=True)
    over = (box_iou(boxes[order], boxes[order]) > float(iou_threshold)).cpu().numpy()
    removed = [False] * len(order)
    keep = []
    for i in range(len(order)):
        if removed[i]:
            continue
        keep.append(i)
        for j in over[i].nonzero()[0]:
            removed[j] = True
    return order[torch.tensor(keep, dtype=torch.int64, device=boxes.device)]
