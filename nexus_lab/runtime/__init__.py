"""The data plane (docs/architecture.md section 1): devices, the GPU backend ``WorkerPlugin``, the frontend
dispatcher and the load generator. It executes plans and makes no scheduling decisions.

Importing the package imports neither torch nor distributed; its modules do as they need.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Device", "DeviceOutOfMemory", "make_device"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import device

        return getattr(device, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
