"""Batch-latency profiles: the measured cost model every planner, simulator and simulated GPU reads.

Pure: no torch, no Dask. The torch profiler that measures them is ``nexus_lab.runtime.profiler``.
"""

from .profile import (
    BATCH_LATENCIES,
    DEFAULT_NET_MS,
    DEFAULT_SAFETY,
    ModelProfile,
    ProfileError,
    clipped_normal,
    device_spread,
)
from .registry import builtin_profiles, load_profile, profile_set, profile_sets

__all__ = [
    "BATCH_LATENCIES",
    "DEFAULT_NET_MS",
    "DEFAULT_SAFETY",
    "ModelProfile",
    "ProfileError",
    "builtin_profiles",
    "clipped_normal",
    "device_spread",
    "load_profile",
    "profile_set",
    "profile_sets",
]
