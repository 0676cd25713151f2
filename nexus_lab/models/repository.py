"""A model repository, like Triton's: a folder with one sub-folder per model, each holding ``config.yaml`` and the
profiles measured on each device (``profiles/<device>.txt``, the Nexus profile text format).

``config.yaml``::

    source: torchvision:resnet18     # or a TorchScript file (model.pt) / torch.export program (model.pt2)
    weights: DEFAULT                 # optional: null (seeded random), DEFAULT or a torchvision weights name
    weights_file: head.pth           # optional: a state dict to load (a fine-tuned model)
    input: {shape: [3, 224, 224], dtype: float32}   # optional for torchvision sources
    preprocess: auto                 # auto | none | {crop: [224, 224], resize: 256, mean: [...], std: [...]}
    labels: labels.txt               # optional: a list, or a file with one class name a line
    num_classes: 10                  # optional: a classifier with its own head size
    topk: 5                          # optional
    group: resnet18-heads            # optional: a prefix group (fine-tuned heads on one frozen backbone)

A config is plain data (``ModelConfig.to_dict``), so the backend plugin can carry it to every worker, where
``register_config`` builds it. A bad config raises ``RepositoryError`` naming the file and the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import zoo
from .imaging import ImageTransform
from .sources import TORCHVISION, register_source, seeded

__all__ = ["CONFIG", "ModelConfig", "RepositoryError", "load_config", "load_repository", "profile_path",
           "register_config", "stored_profiles", "write_profile"]

CONFIG = "config.yaml"
_FIELDS = {"name", "source", "weights", "weights_file", "input", "preprocess", "labels", "num_classes", "topk",
           "group", "description", "min_score"}
_MAX_CONFIG_BYTES = 1 << 20


class RepositoryError(ValueError):
    """A model repository or config that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class ModelConfig:
    """One model of a repository, paths absolute: what ``register_config`` needs in any process."""

    name: str
    folder: str
    source: str
    weights: str | None = None
    weights_file: str | None = None
    shape: tuple[int, ...] | None = None
    dtype: str = "float32"
    preprocess: Any = "auto"  # "auto", None, or ImageTransform fields
    labels: tuple[str, ...] | None = None
    num_classes: int | None = None
    topk: int = 5
    group: str | None = None
    description: str = ""
    min_score: float = 0.3
    factory: Any = None  # a callable building the module (``ctl.add_model(fn, name, shape=...)``): pickled along

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ModelConfig:
        raw = dict(raw)
        for key in ("shape", "labels"):
            if raw.get(key) is not None:
                raw[key] = tuple(raw[key])
        return cls(**raw)


def _fail(where: str, msg: str) -> RepositoryError:
    return RepositoryError(f"{where}: {msg}")


def _read_yaml(path: Path) -> Mapping[str, Any]:
    import yaml

    try:
        if path.stat().st_size > _MAX_CONFIG_BYTES:
            raise _fail(str(path), f"larger than {_MAX_CONFIG_BYTES} bytes")
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except RepositoryError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(str(path), f"cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        raise _fail(str(path), f"cannot parse: {str(exc)[:200]}") from None
    if not isinstance(raw, Mapping):
        raise _fail(str(path), "top level must be a mapping")
    return raw


def _int(raw: Mapping, key: str, where: str, lo: int, hi: int) -> int | None:
    val = raw.get(key)
    if val is None:
        return None
    if isinstance(val, bool) or not isinstance(val, int) or not lo <= val <= hi:
        raise _fail(f"{where}: {key}", f"must be an integer from {lo} to {hi}, got {val!r}")
    return val


def _file(folder: Path, val: Any, where: str) -> str:
    if not isinstance(val, str) or not val:
        raise _fail(where, f"must be a file name, got {val!r}")
    path = (folder / val).resolve()
    if not path.is_file():
        raise _fail(where, f"no such file {val!r} in {folder}")
    return str(path)


def _preprocess(raw: Any, where: str) -> Any:
    if raw in ("auto", None, "none"):
        return None if raw == "none" else "auto"
    if not isinstance(raw, Mapping):
        raise _fail(where, f"must be 'auto', 'none' or a mapping of crop/resize/mean/std, got {raw!r}")
    extra = set(raw) - {"crop", "resize", "mean", "std"}
    if extra:
        raise _fail(f"{where}.{sorted(extra)[0]}", "unknown field; allowed: crop, resize, mean, std")
    crop = raw.get("crop")
    if not (isinstance(crop, list) and len(crop) == 2 and all(isinstance(c, int) and 1 <= c <= 4096 for c in crop)):
        raise _fail(f"{where}.crop", f"must be [height, width], integers from 1 to 4096, got {crop!r}")
    resize = raw.get("resize")
    if resize is not None and (isinstance(resize, bool) or not isinstance(resize, int) or not 1 <= resize <= 8192):
        raise _fail(f"{where}.resize", f"must be an integer from 1 to 8192 or null, got {resize!r}")
    out: dict[str, Any] = {"crop": tuple(crop), "resize": resize}
    for key in ("mean", "std"):
        val = raw.get(key)
        if val is not None and not (isinstance(val, list) and len(val) == 3
                                    and all(isinstance(v, int | float) and not isinstance(v, bool) for v in val)):
            raise _fail(f"{where}.{key}", f"must be three numbers (one per channel) or null, got {val!r}")
        if key == "std" and val is not None and min(val) <= 0:
            raise _fail(f"{where}.std", f"must be > 0 per channel, got {val!r}")
        out[key] = None if val is None else tuple(float(v) for v in val)
    return out


def load_config(folder: str | Path) -> ModelConfig:
    """Read and check ``<folder>/config.yaml``; the model's name is the folder's unless the config names it."""
    folder = Path(folder).resolve()
    path = folder / CONFIG
    if not path.is_file():
        raise _fail(str(path), "missing: each model folder holds a config.yaml")
    raw = _read_yaml(path)
    where = str(path)
    extra = set(raw) - _FIELDS
    if extra:
        raise _fail(f"{where}: {sorted(extra)[0]}", f"unknown field; allowed: {', '.join(sorted(_FIELDS))}")
    name = raw.get("name", folder.name)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:+-]{0,127}", name) \
            or name.endswith((".prefix", ".suffix")):
        raise _fail(f"{where}: name", f"must be letters, digits, _ . : + - (at most 128), got {name!r}")
    source = raw.get("source")
    if not isinstance(source, str) or not source:
        raise _fail(f"{where}: source", f"must be 'torchvision:<arch>' or a model file (.pt, .pt2), got {source!r}")
    if not source.startswith(TORCHVISION):
        source = _file(folder, source, f"{where}: source")
    weights = raw.get("weights")
    if weights is not None and not isinstance(weights, str):
        raise _fail(f"{where}: weights", f"must be null, DEFAULT or a torchvision weights name, got {weights!r}")
    wfile = None if raw.get("weights_file") is None else _file(folder, raw["weights_file"], f"{where}: weights_file")
    shape, dtype = None, "float32"
    if raw.get("input") is not None:
        inp = raw["input"]
        if not isinstance(inp, Mapping) or not isinstance(inp.get("shape"), list) or not inp["shape"] \
                or not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 65536 for d in inp["shape"]):
            raise _fail(f"{where}: input.shape", f"must be a list of integers from 1 to 65536, got {inp!r}")
        shape = tuple(inp["shape"])
        dtype = inp.get("dtype", "float32")
        if dtype not in ("float32", "float16", "uint8", "int64"):
            raise _fail(f"{where}: input.dtype", f"must be one of float32, float16, uint8, int64, got {dtype!r}")
    elif not source.startswith(TORCHVISION):
        raise _fail(f"{where}: input", "required for a model file: {shape: [...], dtype: float32}")
    labels = raw.get("labels")
    if isinstance(labels, str):
        labels = [ln.strip() for ln in Path(_file(folder, labels, f"{where}: labels")).read_text().splitlines()
                  if ln.strip()]
    if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
        raise _fail(f"{where}: labels", "must be a list of class names or a file with one name a line")
    group = raw.get("group")
    if group is not None and (not isinstance(group, str) or not group):
        raise _fail(f"{where}: group", f"must be a non-empty string, got {group!r}")
    min_score = raw.get("min_score", 0.3)
    if isinstance(min_score, bool) or not isinstance(min_score, int | float) or not 0 <= min_score <= 1:
        raise _fail(f"{where}: min_score", f"must be a number from 0 to 1, got {min_score!r}")
    return ModelConfig(name=name, folder=str(folder), source=source, weights=weights, weights_file=wfile,
                       shape=shape, dtype=dtype, preprocess=_preprocess(raw.get("preprocess", "auto"),
                                                                         f"{where}: preprocess"),
                       labels=None if labels is None else tuple(labels),
                       num_classes=_int(raw, "num_classes", where, 1, 100_000),
                       topk=_int(raw, "topk", where, 1, 1000) or 5, group=group,
                       description=str(raw.get("description", "")), min_score=float(min_score))


def load_repository(path: str | Path) -> list[ModelConfig]:
    """Every model folder (one holding ``config.yaml``) of a repository, sorted by name; names must be unique."""
    root = Path(path)
    if not root.is_dir():
        raise RepositoryError(f"models: no such folder {str(path)!r}")
    configs = [load_config(d) for d in sorted(root.iterdir()) if d.is_dir() and (d / CONFIG).is_file()]
    seen: dict[str, str] = {}
    for c in configs:
        if c.name in seen:
            raise RepositoryError(f"{c.folder}/{CONFIG}: name: {c.name!r} is also the name of {seen[c.name]}")
        seen[c.name] = c.folder
    return configs


def register_config(cfg: ModelConfig | Mapping[str, Any]) -> str:
    """Register a config's model in this process's zoo (replacing an older registration); its name. A failure
    raises ``RepositoryError`` naming the config file."""
    if not isinstance(cfg, ModelConfig):
        cfg = ModelConfig.from_dict(cfg)
    pre = cfg.preprocess
    transform = ImageTransform(**pre) if isinstance(pre, Mapping) else pre
    try:
        if cfg.factory is not None:  # a model built by user code, not a file or an architecture name
            if cfg.shape is None:
                raise ValueError("shape: required with a factory (one request's input shape)")
            zoo.register_model(cfg.name, seeded(cfg.name, cfg.factory), cfg.shape, cfg.dtype, group=cfg.group,
                               replace=True,
                               description=cfg.description, transform=None if transform == "auto" else transform)
            return cfg.name
        register_source(cfg.name, cfg.source, weights=cfg.weights, weights_file=cfg.weights_file,
                        input_shape=cfg.shape, dtype=cfg.dtype, transform=transform,
                        labels=None if cfg.labels is None else list(cfg.labels), topk=cfg.topk,
                        num_classes=cfg.num_classes, group=cfg.group, min_score=cfg.min_score,
                        description=cfg.description)
    except (ValueError, KeyError) as exc:
        where = f"{cfg.folder}/{CONFIG}" if cfg.factory is None else f"add_model({cfg.name!r})"
        raise RepositoryError(f"{where}: {exc}") from None
    return cfg.name


def _device_file(device: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", device) + ".txt"


def profile_path(folder: str | Path, device: str, part: str = "whole") -> Path:
    """Where a model folder keeps its profile measured on ``device`` (the profile's device line); the profiles
    of its prefix-group parts as ``<device>.prefix.txt`` and ``<device>.suffix.txt``."""
    name = _device_file(device)
    return Path(folder) / "profiles" / (name if part == "whole" else name[:-4] + f".{part}.txt")


def write_profile(folder: str | Path, profile: Any, part: str = "whole") -> Path:
    """Store a measured ``ModelProfile`` beside the model's config; the file written."""
    path = profile_path(folder, profile.device, part)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(profile.to_text(f"nexus_lab:{profile.name}:1"))
    return path


def stored_profiles(cfg: ModelConfig, part: str = "whole") -> dict[str, Any]:
    """The model's measured profiles by device line (``ModelProfile``), read from its folder; ``part``:
    ``whole``, or its group's ``prefix`` / its own ``suffix``."""
    from ..profiles import load_profile

    folder = Path(cfg.folder) / "profiles"
    name = {"whole": cfg.name, "prefix": f"{cfg.group}.prefix", "suffix": f"{cfg.name}.suffix"}[part]
    out: dict[str, Any] = {}
    for f in sorted(folder.glob("*.txt")) if folder.is_dir() else ():
        if f.name.endswith((".prefix.txt", ".suffix.txt")) != (part != "whole") \
                or (part != "whole" and not f.name.endswith(f".{part}.txt")):
            continue
        prof = load_profile(str(f), name, field_path=f"{f}")
        out[prof.device] = prof
    return out


def model_folder(root: str | Path, name: str) -> Path:
    """The folder of ``name`` in a repository: the one whose config names it, else ``<root>/<name>`` (``:`` and
    ``/`` become ``-``)."""
    root = Path(root)
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if (d / CONFIG).is_file():
                try:
                    if load_config(d).name == name:
                        return d
                except RepositoryError:
                    continue
    return root / re.sub(r"[:/\\]", "-", name)


def store_profile(root: str | Path, name: str, profile: Any) -> Path:
    """Write a measured profile into a repository (``nexus-lab profile --out DIR``): beside the model's config,
    making the folder and a config for a ``torchvision:`` model that has none; the profile file written. A part's
    profile goes beside its model's: ``<m>.suffix`` into m's folder, ``<group>.prefix`` into every member's."""
    part, base = zoo.part_of(name)
    if part != "whole":
        members = [base] if part == "suffix" else zoo.prefix_groups().get(base, [])
        paths = [write_profile(model_folder(root, m), profile, part) for m in members
                 if (model_folder(root, m) / CONFIG).is_file()]
        if not paths:
            raise RepositoryError(f"{root}: no model folder holds a config for {name!r}")
        return paths[0]
    folder = model_folder(root, name)
    if not (folder / CONFIG).is_file():
        if not name.startswith(TORCHVISION):
            raise RepositoryError(f"{folder / CONFIG}: missing: make the model's folder and config first")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG).write_text(f"name: {name}\nsource: {name}\n")
    return write_profile(folder, profile)
