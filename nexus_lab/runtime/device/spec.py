"""Device strings: ``cpu``, ``cuda``, ``cuda:N`` or ``simulated:<profile-set>``, parsed in one place for the
devices and the profiler. Pure; torch is imported only by ``resolve_torch_device``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["DEVICE_FORMS", "DeviceSpec", "parse_device", "resolve_torch_device"]

DEVICE_FORMS = "'cpu', 'cuda', 'cuda:N' or 'simulated:<profile-set>'"


@dataclass(frozen=True)
class DeviceSpec:
    """A parsed device string: ``kind`` (``cpu`` | ``cuda`` | ``simulated``), the cuda ``index`` and the
    simulated device's ``profile_set`` (not checked against the shipped sets here)."""

    kind: str
    index: int = 0
    profile_set: str = ""


def parse_device(spec: str) -> DeviceSpec:
    """Split a device string into its parts; a ``ValueError`` naming ``DEVICE_FORMS`` when it is none of them.

    Examples
    --------
    >>> parse_device("cuda:1")
    DeviceSpec(kind='cuda', index=1, profile_set='')
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"device: must be one of {DEVICE_FORMS}, got {spec!r}")
    if spec == "cpu":
        return DeviceSpec("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        index = 0
        if spec != "cuda":
            try:
                index = int(spec.split(":", 1)[1])
            except ValueError:
                raise ValueError(f"device: {spec!r} is not one of {DEVICE_FORMS}") from None
        return DeviceSpec("cuda", index)
    if spec.startswith("simulated:"):
        return DeviceSpec("simulated", profile_set=spec.split(":", 1)[1])
    raise ValueError(f"device: {spec!r} is not one of {DEVICE_FORMS}")


def resolve_torch_device(device: str) -> torch.device:
    """``cpu`` / ``cuda`` / ``cuda:N`` -> ``torch.device``; a clear ``ValueError`` when cuda is absent."""
    import torch

    text = str(device)
    spec = parse_device(text)
    if spec.kind == "cpu":
        return torch.device("cpu")
    if spec.kind != "cuda":
        raise ValueError(f"device: {text!r} is not a torch device ('cpu', 'cuda' or 'cuda:N')")
    if not torch.cuda.is_available():
        raise ValueError(f"device: {text!r} requested but torch.cuda.is_available() is False on this machine "
                         f"(torch {torch.__version__}); use 'cpu' or a 'simulated:<profile-set>' device")
    count = torch.cuda.device_count()
    if not 0 <= spec.index < count:
        raise ValueError(f"device: {text!r} out of range; this machine has cuda:0..cuda:{count - 1}")
    return torch.device("cuda", spec.index)
