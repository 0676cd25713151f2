"""The model zoo's registry: names -> input spec and a factory of a ``torch.nn.Module``; prefix/suffix parts of
fine-tuned variants; input validation and per-request image pre-processing.

Importing this module does not import torch (the frontend checks inputs with it); torch is imported when a model is
built. Knows nothing of devices, planners or Dask.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .sharing import shared_prefix_length

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["InputError", "InputSpec", "ModelSpec", "UnknownModelError", "available_models", "build",
           "check_input", "get_model_spec", "input_spec", "model_seed", "part_of", "prefix_groups",
           "preprocess_image", "register_model", "unregister_model"]

PREFIX_SUFFIX = ".prefix"
SUFFIX_SUFFIX = ".suffix"


class UnknownModelError(KeyError, ValueError):
    """A model name the zoo does not know; a ``KeyError`` for lookups and a ``ValueError`` for the CLI."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InputError(ValueError):
    """An input whose shape or dtype is not the model's input spec; the message names expected vs given."""


@dataclass(frozen=True)
class InputSpec:
    """One request's input: ``shape`` without the batch axis, and ``dtype``."""

    shape: tuple[int, ...]
    dtype: np.dtype


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: how to build it and what one request looks like.

    ``input_shape`` is None for a model that accepts any payload (the no-op model: dispatch benchmarks send None).
    ``postprocess`` turns one request's row of the batch output (numpy) into its result (e.g. the detector's
    variable number of boxes). ``group`` names the prefix group of fine-tuned variants sharing their first layers.
    """

    name: str
    input_shape: tuple[int, ...] | None
    dtype: str
    factory: Callable[[], Any]
    postprocess: Callable[[np.ndarray], Any] | None = None
    group: str | None = None
    passthrough: bool = False
    description: str = ""
    transform: Any = None  # ``imaging.ImageTransform``: requests send images, the backend makes the input
    post: Any = None  # ``imaging.TopK`` / ``imaging.Boxes``: applied to each output row on the backend's CPU threads

    @property
    def shape(self) -> tuple[int, ...] | None:
        return self.input_shape

    @property
    def input_spec(self) -> InputSpec | None:
        """The wire's spec of one request; None (any payload) for a model with a transform: it takes images."""
        if self.input_shape is None or self.transform is not None:
            return None
        return InputSpec(self.input_shape, np.dtype(self.dtype))


_REGISTRY: dict[str, ModelSpec] = {}
_LOCK = threading.Lock()
_PREFIX_LEN: dict[str, int] = {}  # group -> number of shared leading children (detected, cached)
_FEATURE_SHAPE: dict[str, tuple[int, ...]] = {}  # group -> prefix output shape per request


def model_seed(name: str) -> int:
    """The seed of a model's random weights: a stable hash of its name (same name, same weights, any process)."""
    return zlib.crc32(name.encode())


def register_model(name: str, factory: Callable[[], Any] | str | Path, input_shape: tuple[int, ...] | None,
                   dtype: str = "float32", postprocess: Callable[[np.ndarray], Any] | None = None, *,
                   group: str | None = None, passthrough: bool = False, description: str = "",
                   replace: bool = False, transform: Any = None, post: Any = None) -> ModelSpec:
    """Register a model under ``name``.

    Parameters
    ----------
    factory
        A zero-argument callable returning a ``torch.nn.Module``, or the path of a TorchScript file.
    input_shape
        One request's input shape (no batch axis), e.g. ``(3, 64, 64)``.
    dtype
        The input's numpy dtype name.
    postprocess
        Optional: one request's output row (numpy) -> its result.
    group
        Prefix group: variants of one base whose leading ``nn.Sequential`` children are identical (detected by
        hashing structure and weights when first needed); their shared part runs as ``<group>.prefix``.
    transform, post
        Optional image pre-processing (``imaging.ImageTransform``: requests then send images) and result
        post-processing (``imaging.TopK``/``imaging.Boxes``), both run on the backend's CPU threads.

    Examples
    --------
    >>> import torch
    >>> spec = register_model("my-linear", lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)),
    ...                       (4,), replace=True)
    >>> get_model_spec("my-linear").input_shape
    (4,)
    >>> unregister_model("my-linear")
    """
    if not isinstance(name, str) or not name or name.endswith((PREFIX_SUFFIX, SUFFIX_SUFFIX)):
        raise ValueError(f"name: must be a non-empty string not ending in .prefix/.suffix, got {name!r}")
    if isinstance(factory, str | Path):
        path = Path(factory)
        if not path.is_file():
            raise ValueError(f"factory: TorchScript file {str(path)!r} does not exist")
        factory = _torchscript_loader(path)
    if not callable(factory):
        raise ValueError(f"factory: must be a callable returning an nn.Module or a TorchScript path, got {factory!r}")
    if input_shape is not None:
        try:
            input_shape = tuple(int(d) for d in input_shape)
        except (TypeError, ValueError):
            raise ValueError(f"input_shape: must be a tuple of positive ints, got {input_shape!r}") from None
        if not input_shape or min(input_shape) < 1:
            raise ValueError(f"input_shape: must be a non-empty tuple of positive ints, got {input_shape!r}")
    try:
        np.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype: {dtype!r} is not a numpy dtype name") from None
    spec = ModelSpec(name, input_shape, str(np.dtype(dtype)), factory, postprocess, group, passthrough, description,
                     transform, post)
    with _LOCK:
        if name in _REGISTRY and not replace:
            raise ValueError(f"name: model {name!r} is already registered (pass replace=True)")
        _REGISTRY[name] = spec
        if group is not None:
            _PREFIX_LEN.pop(group, None)
            _FEATURE_SHAPE.pop(group, None)
    return spec


def unregister_model(name: str) -> None:
    with _LOCK:
        spec = _REGISTRY.pop(name, None)
        if spec is not None and spec.group is not None:
            _PREFIX_LEN.pop(spec.group, None)
            _FEATURE_SHAPE.pop(spec.group, None)


def _torchscript_loader(path: Path) -> Callable[[], Any]:
    def load() -> Any:
        import torch

        return torch.jit.load(str(path), map_location="cpu")

    return load


def available_models() -> list[str]:
    """Registered whole models (their ``<group>.prefix`` / ``<model>.suffix`` parts are buildable too)."""
    return sorted(_REGISTRY)


def prefix_groups() -> dict[str, list[str]]:
    """Prefix group -> its member models."""
    out: dict[str, list[str]] = {}
    for spec in _REGISTRY.values():
        if spec.group is not None:
            out.setdefault(spec.group, []).append(spec.name)
    return {g: sorted(m) for g, m in sorted(out.items())}


def part_of(name: str) -> tuple[str, str]:
    """``("whole", model)``, ``("prefix", group)`` or ``("suffix", model)`` for a model or part name."""
    if name.endswith(PREFIX_SUFFIX):
        return "prefix", name[: -len(PREFIX_SUFFIX)]
    if name.endswith(SUFFIX_SUFFIX):
        return "suffix", name[: -len(SUFFIX_SUFFIX)]
    return "whole", name


#: name prefix -> a function that registers a model it names on first use (``torchvision:<arch>``); filled by
#: ``nexus_lab.models.sources``, so every process knows such a model without registering it by hand.
RESOLVERS: dict[str, Callable[[str], ModelSpec]] = {}


def _spec(name: str) -> ModelSpec:
    spec = _REGISTRY.get(name)
    if spec is None:
        resolver = next((r for p, r in RESOLVERS.items() if isinstance(name, str) and name.startswith(p)), None)
        if resolver is not None:
            return resolver(name)
    if spec is None:
        raise UnknownModelError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    return spec


def _members(group: str) -> list[ModelSpec]:
    members = [s for s in _REGISTRY.values() if s.group == group]
    if not members:
        groups = ", ".join(prefix_groups()) or "none"
        raise UnknownModelError(f"unknown prefix group {group!r} (model {group}{PREFIX_SUFFIX}); groups: {groups}")
    return sorted(members, key=lambda s: s.name)


def get_model_spec(name: str) -> ModelSpec:
    """The spec of a model, or of a part: ``<group>.prefix`` takes the group's input; ``<model>.suffix`` takes the
    prefix's output features (one request's feature shape, found by one forward pass on CPU)."""
    part, base = part_of(name)
    if part == "whole":
        return _spec(base)
    if part == "prefix":
        first = _members(base)[0]
        return ModelSpec(name, first.input_shape, first.dtype, lambda: _build_part("prefix", base), None, base,
                         False, f"shared prefix of group {base}", first.transform)
    spec = _spec(base)
    if spec.group is None:
        raise UnknownModelError(f"model {base!r} belongs to no prefix group, so {name!r} does not exist")
    return ModelSpec(name, feature_shape(spec.group), "float32", lambda: _build_part("suffix", base),
                     spec.postprocess, spec.group, False, f"suffix of {base} after the {spec.group} prefix",
                     None, spec.post)


def input_spec(name: str) -> InputSpec | None:
    """One request's input spec of ``name`` (None: any payload); raises ``UnknownModelError`` for unknown names.
    A request to a ``<model>.suffix`` session (a prefix group's member) carries the model's own input: the
    backend runs the group's prefix on it first."""
    part, base = part_of(name)
    return get_model_spec(base if part == "suffix" else name).input_spec


def check_input(name: str, array: Any, *, batched: bool = False) -> None:
    """Raise ``InputError`` unless ``array`` is one request's input of ``name`` (``batched``: a stack of them)."""
    spec = get_model_spec(name)
    if spec.input_shape is None:
        return
    want = ((-1,) if batched else ()) + spec.input_shape
    shown = ("(n, " + ", ".join(map(str, spec.input_shape)) + ")") if batched else str(spec.input_shape)
    if not isinstance(array, np.ndarray):
        raise InputError(f"{name}: input must be a numpy array of shape {shown} and dtype {spec.dtype}, "
                         f"got {type(array).__name__}")
    if array.ndim != len(want) or any(w not in (-1, g) for w, g in zip(want, array.shape, strict=True)):
        raise InputError(f"{name}: input shape must be {shown}, got {tuple(array.shape)}")
    if array.dtype != np.dtype(spec.dtype):
        raise InputError(f"{name}: input dtype must be {spec.dtype}, got {array.dtype}")


# ---------------------------------------------------------------------------------------------- building
def build(name: str, device: Any = "cpu") -> torch.nn.Module:
    """Build ``name`` (a model, ``<group>.prefix`` or ``<model>.suffix``) with its seeded weights, in eval mode
    on ``device``. The same name gives the same weights in every process."""
    part, base = part_of(name)
    if part == "whole":
        module = _instantiate(_spec(base))
    else:
        get_model_spec(name)  # validates the name
        module = _build_part(part, base)
    return module.to(device).eval()


def _instantiate(spec: ModelSpec) -> torch.nn.Module:
    import torch

    module = spec.factory()
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"{spec.name}: factory returned {type(module).__name__}, not a torch.nn.Module")
    return module.eval()


def _children(spec: ModelSpec, module: torch.nn.Module) -> list[torch.nn.Module]:
    import torch

    if not isinstance(module, torch.nn.Sequential):
        raise TypeError(f"{spec.name}: prefix groups need an nn.Sequential model, got {type(module).__name__}")
    return list(module.children())


def prefix_length(group: str) -> int:
    """Leading children shared (identical structure and weights) by every member of ``group``; detected once by
    hashing (``nexus_lab.models.sharing.shared_prefix_length``) and cached."""
    with _LOCK:
        if group in _PREFIX_LEN:
            return _PREFIX_LEN[group]
    members = _members(group)
    modules = [_instantiate(s) for s in members]
    for s, m in zip(members, modules, strict=True):
        _children(s, m)
    n = shared_prefix_length(modules)
    if n == 0:
        raise ValueError(f"prefix group {group!r}: its members {[s.name for s in members]} share no leading layer")
    if len(members) > 1 and any(n >= len(list(m.children())) for m in modules):
        raise ValueError(f"prefix group {group!r}: a member is entirely the shared prefix (no head of its own)")
    with _LOCK:
        _PREFIX_LEN[group] = n
    return n


def feature_shape(group: str) -> tuple[int, ...]:
    """One request's shape at the output of ``group``'s prefix."""
    with _LOCK:
        if group in _FEATURE_SHAPE:
            return _FEATURE_SHAPE[group]
    import torch

    first = _members(group)[0]
    prefix = _build_part("prefix", group)
    with torch.inference_mode():
        out = prefix(torch.zeros((1, *first.input_shape), dtype=getattr(torch, first.dtype)))
    shape = tuple(out.shape[1:])
    with _LOCK:
        _FEATURE_SHAPE[group] = shape
    return shape


def _build_part(part: str, base: str) -> torch.nn.Module:
    import torch

    if part == "prefix":
        n = prefix_length(base)
        first = _members(base)[0]
        return torch.nn.Sequential(*_children(first, _instantiate(first))[:n]).eval()
    spec = _spec(base)
    n = prefix_length(spec.group)
    return torch.nn.Sequential(*_children(spec, _instantiate(spec))[n:]).eval()


# ---------------------------------------------------------------------------------------------- pre-processing
#: Per-channel normalisation of decoded images (the usual ImageNet statistics).
IMAGE_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGE_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def preprocess_image(name: str, image: np.ndarray) -> np.ndarray:
    """One request's pre-processing: a decoded ``H x W x 3`` uint8 image -> the model's float32 ``C x h x w``
    input (nearest-neighbour resize, scale to [0, 1], normalise per channel)."""
    spec = get_model_spec(name)
    shape = spec.input_shape
    if shape is None or len(shape) != 3 or shape[0] != 3:
        raise InputError(f"{name}: preprocess_image needs a 3 x h x w image model, input shape is {shape}")
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = f"{image.shape} {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InputError(f"{name}: preprocess_image takes an H x W x 3 uint8 image, got {got}")
    h, w = shape[1], shape[2]
    rows = (np.arange(h) * image.shape[0] // h).astype(np.intp)
    cols = (np.arange(w) * image.shape[1] // w).astype(np.intp)
    resized = image[rows[:, None], cols[None, :]].astype(np.float32) * np.float32(1 / 255)
    out = (resized - IMAGE_MEAN) / IMAGE_STD
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.dtype(spec.dtype))
