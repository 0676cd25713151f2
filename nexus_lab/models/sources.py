"""Model sources beyond the built-in nets: ``torchvision:<arch>`` (any torchvision classification or detection
architecture, with its transforms and class names), TorchScript files and ``torch.export`` programs.

``torchvision:<arch>`` names resolve on first use in any process (``zoo.RESOLVERS``) with seeded random weights,
so every worker builds the same network without registering it by hand. ``register_source`` registers a model
with options (pretrained weights, a weights file, an input size, a prefix group). Pretrained weights come through
torchvision's own download and cache; when that fails (offline), the model keeps random weights and the reason
is kept in ``weight_warnings()`` (the backends report it, ``ctl.state()`` shows it).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from . import zoo
from .imaging import Boxes, ImageTransform, TopK
from .tv_import import import_torchvision

logger = logging.getLogger("nexus_lab.models")

__all__ = ["TORCHVISION", "architectures", "register_source", "seeded", "weight_warnings"]

TORCHVISION = "torchvision:"
MAX_DETECTIONS = 100  # rows per image a detector's packed output holds

_WARNINGS: dict[str, str] = {}
_WLOCK = threading.Lock()


def weight_warnings() -> dict[str, str]:
    """Model -> why it runs with random weights although pretrained ones were asked for (this process)."""
    with _WLOCK:
        return dict(_WARNINGS)


def architectures(kind: str = "all") -> list[str]:
    """torchvision's architecture names: ``classification``, ``detection`` or ``all``."""
    tv = import_torchvision()
    cls = tv.models.list_models(module=tv.models)
    det = tv.models.list_models(module=tv.models.detection)
    return {"classification": cls, "detection": det, "all": sorted(cls + det)}[kind]


def _kind(arch: str) -> str:
    if arch in architectures("classification"):
        return "classification"
    if arch in architectures("detection"):
        return "detection"
    raise zoo.UnknownModelError(f"{TORCHVISION}{arch}: not a torchvision classification or detection "
                                f"architecture (e.g. resnet18, mobilenet_v3_large, ssdlite320_mobilenet_v3_large)")


def _seeded(name: str, build: Any) -> Any:
    """``build()`` with torch's RNG seeded by the model name (same weights in every process), RNG restored."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zoo.model_seed(name))
        return build()


def _as_sequential(name: str, net: Any) -> Any:
    """A classifier as an ``nn.Sequential`` of its stages (prefix groups split at children), same forward."""
    import torch

    kids = dict(net.named_children())
    if "fc" in kids and "avgpool" in kids:  # ResNet, ResNeXt, Wide ResNet, RegNet-like: ... avgpool, fc
        body = [m for k, m in kids.items() if k != "fc"]
        return torch.nn.Sequential(*body, torch.nn.Flatten(1), kids["fc"])
    if "features" in kids and "classifier" in kids:  # MobileNet, EfficientNet, VGG, ConvNeXt-like
        pool = [kids["avgpool"]] if "avgpool" in kids else []
        return torch.nn.Sequential(kids["features"], *pool, torch.nn.Flatten(1), kids["classifier"])
    raise ValueError(f"{name}: group: its architecture has no known backbone/head split (fc or classifier)")


def seeded(name: str, factory: Any) -> Any:
    """``factory`` building with torch's RNG seeded by ``name``: its random initialisation is the same in every
    process (a model registered on every worker must be one model)."""
    def build() -> Any:
        return _seeded(name, factory)

    return build


def _head(net: Any) -> Any:
    """A classifier's last linear layer (the part a fine-tuned variant retrains)."""
    import torch

    last = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    if not last:
        raise ValueError(f"{type(net).__name__}: group: no linear head to fine-tune")
    return last[-1]


class _Detector:
    """Wraps a torchvision detector: a batch tensor in, a packed ``(B, MAX_DETECTIONS, 6)`` tensor out (rows
    ``x1, y1, x2, y2, score, label``; padding rows score -1), so it batches like any model."""

    @staticmethod
    def wrap(net: Any) -> Any:
        import torch

        class Packed(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = net

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                out = torch.full((x.shape[0], MAX_DETECTIONS, 6), -1.0)
                for i, det in enumerate(self.net(list(x))):
                    n = min(len(det["scores"]), MAX_DETECTIONS)
                    out[i, :n, :4] = det["boxes"][:n]
                    out[i, :n, 4] = det["scores"][:n]
                    out[i, :n, 5] = det["labels"][:n].to(torch.float32)
                return out

        return Packed()


def _weights_enum(arch: str, weights: str | None) -> Any:
    tv = import_torchvision()
    if weights is None:
        return None
    enum = tv.models.get_model_weights(arch)
    if weights == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[weights]
    except KeyError:
        raise ValueError(f"weights: {arch} has {['DEFAULT', *enum.__members__]}, got {weights!r}") from None


def _torchvision_factory(name: str, arch: str, kind: str, weights: str | None, weights_file: str | None,
                         num_classes: int | None, group: str | None) -> Any:
    def build() -> Any:
        import torch

        tv = import_torchvision()
        kw: dict[str, Any] = {} if num_classes is None else {"num_classes": int(num_classes)}
        if kind == "detection":
            kw["weights_backbone"] = None
        net = None
        enum = _weights_enum(arch, weights)
        if enum is not None:
            try:  # torchvision's own download and cache (TORCH_HOME)
                net = tv.models.get_model(arch, weights=enum, **kw)
            except Exception as exc:
                msg = f"pretrained weights {enum} unavailable ({type(exc).__name__}: {exc}); random weights"
                logger.warning("%s: %s", name, msg)
                with _WLOCK:
                    _WARNINGS[name] = msg
        if net is None:  # a group's members share the group's seeded backbone and get heads of their own
            net = _seeded(group or name, lambda: tv.models.get_model(arch, weights=None, **kw))
            if group is not None and weights_file is None:
                _seeded(name, lambda: _head(net).reset_parameters())
        if weights_file is not None:
            state = torch.load(weights_file, map_location="cpu", weights_only=True)
            net.load_state_dict(state.state_dict() if hasattr(state, "state_dict") else state)
        net = net.eval()
        if kind == "detection":
            return _Detector.wrap(net).eval()
        return _as_sequential(name, net).eval() if group is not None else net

    return build


def _exported_class() -> Any:
    import torch

    class Exported(torch.nn.Module):
        """A ``torch.export`` program's module, which refuses ``eval()``/``train()`` (an exported program has
        no training mode): held outside the module tree, moved along with ``to()``."""

        def __init__(self, gm: Any) -> None:
            super().__init__()
            self._program = (gm,)

        def _apply(self, fn: Any, recurse: bool = True) -> Any:
            self._program[0]._apply(fn)
            return self

        def forward(self, x: Any) -> Any:
            return self._program[0](x)

    return Exported


def _Exported(gm: Any) -> Any:
    return _exported_class()(gm)


def _file_factory(path: Path) -> Any:
    """A TorchScript file (``torch.jit.save``) or a ``torch.export`` program (``.pt2``)."""
    def build() -> Any:
        import torch

        if path.suffix == ".pt2":
            return _Exported(torch.export.load(str(path)).module())
        return torch.jit.load(str(path), map_location="cpu")

    return build


def register_source(name: str, source: str, *, weights: str | None = None, weights_file: str | Path | None = None,
                    input_shape: tuple[int, ...] | None = None, dtype: str = "float32",
                    transform: ImageTransform | str | None = "auto", labels: list[str] | None = None,
                    topk: int = 5, num_classes: int | None = None, group: str | None = None,
                    min_score: float = 0.3, description: str = "") -> zoo.ModelSpec:
    """Register ``name`` from ``source``: ``torchvision:<arch>`` or a TorchScript / ``.pt2`` file path.

    ``weights``: None (seeded random), ``DEFAULT`` or a torchvision weights name (downloaded and cached by
    torchvision; offline: random weights and a warning). ``weights_file``: a state dict to load (e.g. a
    fine-tuned head). ``input_shape``: the model's input (default: the weights' crop size, 3 x 224 x 224; a
    detector 3 x 320 x 320). ``transform``: "auto" (the weights' resize/crop/normalisation, scaled to
    ``input_shape``), an ``ImageTransform``, or None (requests send the input tensor). ``labels``: class names
    (default: the weights' categories when the class count matches). ``group``: a prefix group (the classifier
    becomes an ``nn.Sequential`` of its stages so its frozen backbone can be shared).
    """
    if not isinstance(source, str) or not source:
        raise ValueError(f"source: must be 'torchvision:<arch>' or a model file path, got {source!r}")
    wf = None if weights_file is None else str(Path(weights_file))
    if wf is not None and not Path(wf).is_file():
        raise ValueError(f"weights_file: {wf!r} does not exist")
    if source.startswith(TORCHVISION):
        arch = source[len(TORCHVISION):]
        kind = _kind(arch)
        meta_enum = _weights_enum(arch, weights or "DEFAULT") if _has_weights(arch) else None
        side = 320 if kind == "detection" else _crop(meta_enum)
        shape = tuple(input_shape) if input_shape is not None else (3, side, side)
        cats = list(meta_enum.meta.get("categories") or []) if meta_enum is not None else []
        if labels is None and cats and (num_classes is None or num_classes == len(cats)):
            labels = cats
        factory = _torchvision_factory(name, arch, kind, weights, wf, num_classes, group)
        if transform == "auto":
            transform = _auto_transform(meta_enum, shape, kind)
        post = Boxes(min_score, tuple(labels) if labels else None) if kind == "detection" else \
            TopK(topk, tuple(labels) if labels else None)
        desc = description or f"torchvision {arch} ({kind}; weights {weights or 'random'})"
    else:
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"source: model file {source!r} does not exist")
        if input_shape is None:
            raise ValueError(f"input_shape: required for a model file ({source})")
        factory, shape = _file_factory(path), tuple(input_shape)
        if transform == "auto":
            transform = None
        post = TopK(topk, tuple(labels)) if labels else None
        desc = description or f"{'torch.export' if path.suffix == '.pt2' else 'TorchScript'} file {path.name}"
    return zoo.register_model(name, factory, shape, dtype, group=group, description=desc, replace=True,
                              transform=transform, post=post)


def _has_weights(arch: str) -> bool:
    try:
        import_torchvision().models.get_model_weights(arch)
        return True
    except (ValueError, KeyError):
        return False


def _crop(enum: Any) -> int:
    crop = getattr(enum.transforms(), "crop_size", [224]) if enum is not None else [224]
    return int(crop[0])


def _auto_transform(enum: Any, shape: tuple[int, ...], kind: str) -> ImageTransform | None:
    """The weights' transform scaled to the model's input size: resize to crop * resize/crop, then crop."""
    if len(shape) != 3 or shape[0] != 3:
        return None
    if kind == "detection":
        return ImageTransform((shape[1], shape[2]), None, None, None)
    t = enum.transforms() if enum is not None else None
    crop = int(getattr(t, "crop_size", [224])[0])
    resize = int(getattr(t, "resize_size", [256])[0])
    mean = tuple(getattr(t, "mean", (0.485, 0.456, 0.406)))
    std = tuple(getattr(t, "std", (0.229, 0.224, 0.225)))
    return ImageTransform((shape[1], shape[2]), round(min(shape[1], shape[2]) * resize / crop), mean, std)


def _resolve(name: str) -> zoo.ModelSpec:
    """``torchvision:<arch>`` on first use: seeded random weights, the weights' transforms and class names."""
    return register_source(name, name)


zoo.RESOLVERS[TORCHVISION] = _resolve
