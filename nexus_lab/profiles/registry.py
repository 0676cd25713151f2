"""Where profiles come from: the built-in measured sets shipped as package data, files, and inline mappings.

Reads files only; knows nothing of planners or runtimes.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .profile import DEFAULT_SAFETY, ModelProfile, ProfileError

_DATA = "nexus_lab.profiles"


def _data_root() -> Path:
    return Path(str(resources.files(_DATA))) / "data"


def builtin_profiles() -> list[str]:
    """Names of the shipped profiles, e.g. ``titan-x-pascal/vgg16``."""
    root = _data_root()
    return sorted(f"{d.name}/{f.stem}" for d in root.iterdir() if d.is_dir() for f in d.glob("*.txt"))


def profile_sets() -> list[str]:
    """Device types with shipped profiles (usable as ``simulated:<set>``)."""
    return sorted({name.split("/")[0] for name in builtin_profiles()})


@lru_cache(maxsize=256)
def _builtin(name: str, safety: float) -> ModelProfile:
    path = _data_root() / f"{name}.txt"
    if not path.is_file():
        raise ProfileError(f"unknown built-in profile {name!r}; available: {', '.join(builtin_profiles())}")
    return ModelProfile.from_text(path.read_text(), name=name.split("/")[-1], safety=safety)


def load_profile(spec: str | Mapping | ModelProfile, name: str | None = None, *,
                 safety: float = DEFAULT_SAFETY, base_dir: Path | None = None,
                 field_path: str = "profile") -> ModelProfile:
    """Resolve a profile given as a built-in name, a file path, an inline mapping or a profile object."""
    if isinstance(spec, ModelProfile):
        return spec if spec.safety == safety else spec.with_safety(safety)
    if isinstance(spec, Mapping):
        return ModelProfile.from_inline(name or "inline", spec, safety=safety, field_path=field_path)
    if not isinstance(spec, str) or not spec:
        raise ProfileError(f"{field_path}: must be a built-in profile name, a file path or a mapping")
    if spec in builtin_profiles():
        prof = _builtin(spec, safety)
        if name and name != prof.name:
            prof = ModelProfile(name, prof.device, prof.batches, prof.latency_us, prof.std_us,
                                prof.memory_bytes, prof.preprocess_us, prof.postprocess_us, safety)
        return prof
    path = Path(spec)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if path.is_file():
        return ModelProfile.from_text(path.read_text(), name=name, safety=safety)
    raise ProfileError(f"{field_path}: {spec!r} is neither a built-in profile "
                       f"({', '.join(builtin_profiles())}) nor a file")


def profile_set(device_set: str, safety: float = DEFAULT_SAFETY) -> dict[str, ModelProfile]:
    """All built-in profiles of one device type, keyed by model name."""
    names = [n for n in builtin_profiles() if n.split("/")[0] == device_set]
    if not names:
        raise ProfileError(f"unknown profile set {device_set!r}; available: {', '.join(profile_sets())}")
    return {n.split("/")[1]: _builtin(n, safety) for n in names}
