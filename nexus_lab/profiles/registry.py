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
    return list(_builtin_names())


@lru_cache(maxsize=1)
def _builtin_names() -> tuple[str, ...]:
    """The package data does not change while the process runs: list it once (workloads ask per model)."""
    root = _data_root()
    return tuple(sorted(f"{d.name}/{f.stem}" for d in root.iterdir() if d.is_dir() for f in d.glob("*.txt")))


def profile_sets() -> list[str]:
    """Device types with shipped profiles (usable as ``simulated:<set>``)."""
    return sorted({name.split("/")[0] for name in builtin_profiles()})


@lru_cache(maxsize=256)
def _builtin(name: str, safety: float) -> ModelProfile:
    path = _data_root() / f"{name}.txt"
    if not path.is_file():
        raise ProfileError(f"unknown built-in profile {name!r}; available: {', '.join(builtin_profiles())}")
    return ModelProfile.from_text(path.read_text(), name=name.split("/")[-1], safety=safety, source=path.name)


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
    if spec in _builtin_names():
        prof = _builtin(spec, safety)
        if name and name != prof.name:
            prof = ModelProfile(name, prof.device, prof.batches, prof.latency_us, prof.std_us,
                                prof.memory_bytes, prof.preprocess_us, prof.postprocess_us, safety)
        return prof
    path = Path(spec)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        is_file = path.is_file()  # False for devices and pipes: a profile is a regular file
    except (OSError, ValueError):  # a name too long, a NUL byte
        is_file = False
    if is_file:
        return ModelProfile.from_text(read_profile_text(path, field_path), name=name, safety=safety,
                                      source=f"{field_path} ({path.name})")
    raise ProfileError(f"{field_path}: {spec[:80]!r} is neither a built-in profile "
                       f"({', '.join(builtin_profiles())}) nor a file")


#: Largest profile file read (a measured table of 4096 batches is about 150 kB).
MAX_PROFILE_BYTES = 4 << 20


def read_profile_text(path: Path, where: str) -> str:
    """A profile file's text, or a ``ProfileError`` naming ``where`` (unreadable, too large, not UTF-8)."""
    try:
        if path.stat().st_size > MAX_PROFILE_BYTES:
            raise ProfileError(f"{where}: {path.name} is larger than {MAX_PROFILE_BYTES >> 20} MiB")
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProfileError(f"{where}: {path.name} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ProfileError(f"{where}: cannot read {path.name}: {exc.strerror}") from None


def load_prefix(raw: object, model: str, *, safety: float = DEFAULT_SAFETY, base_dir: Path | None = None,
                field_path: str = "prefix") -> tuple[str, ModelProfile, ModelProfile]:
    """A model's ``prefix: {group, profile, suffix_profile}``: its group and the prefix and suffix profiles."""
    if not isinstance(raw, Mapping):
        raise ProfileError(f"{field_path}: must be a mapping {{group, profile, suffix_profile}}")
    allowed = {"group", "profile", "suffix_profile"}
    extra = [k for k in raw if k not in allowed]
    if extra:
        raise ProfileError(f"{field_path}: unknown field(s) {sorted(repr(k)[:40] for k in extra)}; "
                           f"allowed: {sorted(allowed)}")
    for key in ("profile", "suffix_profile"):
        if key not in raw:
            raise ProfileError(f"{field_path}.{key}: required")
    group = raw.get("group")
    if not isinstance(group, str) or not group.strip():
        raise ProfileError(f"{field_path}.group: must be a non-empty string")
    return (group,
            load_profile(raw["profile"], f"{group}.prefix", safety=safety, base_dir=base_dir,
                         field_path=f"{field_path}.profile"),
            load_profile(raw["suffix_profile"], f"{model}.suffix", safety=safety, base_dir=base_dir,
                         field_path=f"{field_path}.suffix_profile"))


def profile_set(device_set: str, safety: float = DEFAULT_SAFETY) -> dict[str, ModelProfile]:
    """All built-in profiles of one device type, keyed by model name."""
    names = [n for n in builtin_profiles() if n.split("/")[0] == device_set]
    if not names:
        raise ProfileError(f"unknown profile set {device_set!r}; available: {', '.join(profile_sets())}")
    return {n.split("/")[1]: _builtin(n, safety) for n in names}
