"""The accelerator a GPU backend executes on: torch ``cpu`` / ``cuda[:N]`` running zoo models, or a simulated GPU
that waits a measured profile's batch latency and enforces its memory (so a laptop can run a 16-GPU demo).

Execution only: no scheduling decisions, no Dask. Torch is imported by the torch devices only; reads profiles.
Threading: ``load``/``unload``/``run_*`` run on the backend's single device thread; ``loaded``,
``batch_latency_ms`` and ``memory_used_mb`` may be read from the event loop (they only read guarded state).

Modules: ``base`` (the ``Device`` contract), ``spec`` (device strings), ``simulated``, ``torch_device``,
``host_memory`` (malloc settings for torch on the cpu); ``make_device`` here picks one from a device string.
"""

from __future__ import annotations

from collections.abc import Mapping

from ...profiles import ModelProfile, profile_sets
from .base import Device, DeviceOutOfMemory
from .host_memory import MALLOC_THRESHOLD, keep_freed_memory
from .simulated import SIMULATED_MEMORY_MB, SUFFIX_SHARE, SimulatedDevice
from .spec import DEVICE_FORMS, DeviceSpec, parse_device, resolve_torch_device
from .torch_device import TorchDevice

__all__ = ["DEVICE_FORMS", "MALLOC_THRESHOLD", "SIMULATED_MEMORY_MB", "SUFFIX_SHARE", "Device", "DeviceOutOfMemory",
           "DeviceSpec", "SimulatedDevice", "TorchDevice", "keep_freed_memory", "make_device", "parse_device",
           "resolve_torch_device"]


def make_device(spec: str, *, threads: int = 1, memory_mb: float | None = None,
                profiles: Mapping[str, ModelProfile | Mapping | str] | None = None,
                batch_latency: str = "measured") -> Device:
    """A device from its spec string: ``cpu``, ``cuda``, ``cuda:N`` or ``simulated:<profile-set>``.

    ``threads``: torch intra-op threads (torch devices). ``memory_mb``, ``profiles`` (extra model profiles,
    e.g. a workload's inline ones) and ``batch_latency`` (``measured`` or ``planned``, see ``SimulatedDevice``):
    simulated devices only.

    Examples
    --------
    >>> dev = make_device("simulated:titan-x-pascal")
    >>> dev.load("vgg16", 8)
    >>> len(dev.run_batch("vgg16", [None] * 8)), round(dev.batch_latency_ms("vgg16", 8), 1)
    (8, 33.4)
    """
    parsed = parse_device(spec)
    if parsed.kind == "simulated":
        name = parsed.profile_set
        if name not in profile_sets():
            raise ValueError(f"device: unknown profile set {name!r} in {spec!r}; available: "
                             f"{', '.join('simulated:' + s for s in profile_sets())}")
        return SimulatedDevice(name, memory_mb, profiles=profiles, batch_latency=batch_latency)
    if memory_mb is not None or profiles or batch_latency != "measured":
        raise ValueError("memory_mb, profiles, batch_latency: apply to simulated devices only")
    return TorchDevice(spec, threads=threads)
