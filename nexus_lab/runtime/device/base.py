"""The device contract: what a GPU backend executes on (``Device``), its out-of-memory error, and the argument
checks every device shares.

Execution only: no scheduling decisions, no Dask, no torch.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["Device", "DeviceOutOfMemory", "check_load", "check_slices", "count_inputs"]


class DeviceOutOfMemory(RuntimeError):
    """Loading would exceed the device's memory (simulated: the profiles' memory; cuda: a real CUDA OOM)."""


class Device(ABC):
    """One accelerator holding loaded models and running batches on them.

    Attributes: ``kind`` (``cpu`` | ``cuda`` | ``simulated``), ``name`` (``cpu``, ``cuda:0``,
    ``simulated:titan-x-pascal``), ``memory_mb`` (capacity; ``inf`` for cpu).
    """

    kind: str
    name: str
    memory_mb: float

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: dict[str, int] = {}

    @abstractmethod
    def load(self, model: str, max_batch: int) -> None:
        """Make ``model`` ready to run batches of up to ``max_batch`` (reloading grows or shrinks the reservation)."""

    @abstractmethod
    def unload(self, model: str) -> None:
        """Free ``model`` (no-op when it is not loaded)."""

    def loaded(self) -> dict[str, int]:
        """Loaded model -> the max batch it was loaded for."""
        with self._lock:
            return dict(self._loaded)

    @abstractmethod
    def run_batch(self, model: str, inputs: Sequence[Any] | np.ndarray) -> list[Any]:
        """Run one batch (blocking, on the device thread); one output per input, in order."""

    @abstractmethod
    def run_prefix_batch(self, prefix_model: str, suffix_models: Sequence[str], inputs: Sequence[Any] | np.ndarray,
                         slices: Sequence[int]) -> list[list[Any]]:
        """Prefix batching: the shared prefix once on the whole batch, then suffix ``i`` on its slice (the next
        ``slices[i]`` inputs). Returns one list per suffix with one output per input of its slice."""

    @abstractmethod
    def batch_latency_ms(self, model: str, batch: int) -> float | None:
        """The latency ``l(b)`` the backend plans early drop with, or None when unknown."""

    @abstractmethod
    def memory_used_mb(self) -> float:
        """Memory the loaded models hold (MiB)."""

    def close(self) -> None:
        """Unload everything."""
        for model in list(self.loaded()):
            self.unload(model)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}: {len(self._loaded)} models loaded>"


def check_load(model: str, max_batch: int) -> int:
    """``max_batch`` as an int; ``ValueError`` for an empty model name or a batch that is not an integer >= 1."""
    if not isinstance(model, str) or not model:
        raise ValueError(f"model: must be a non-empty model name, got {model!r}")
    try:
        b = int(max_batch)
    except (TypeError, ValueError):
        raise ValueError(f"max_batch: must be an integer >= 1, got {max_batch!r}") from None
    if b < 1 or b != max_batch:
        raise ValueError(f"max_batch: must be an integer >= 1, got {max_batch!r}")
    return b


def check_slices(n: int, suffix_models: Sequence[str], slices: Sequence[int]) -> list[int]:
    """The suffix slices as ints: one per suffix model, each >= 0, summing to the batch size ``n``."""
    sl = [int(s) for s in slices]
    if len(sl) != len(suffix_models):
        raise ValueError(f"slices: need one per suffix model ({len(suffix_models)}), got {len(sl)}")
    if any(s < 0 for s in sl) or sum(sl) != n:
        raise ValueError(f"slices: must be >= 0 and sum to the batch size {n}, got {sl}")
    return sl


def count_inputs(inputs: Sequence[Any] | np.ndarray) -> int:
    """Number of inputs in a batch (rows of an array, items of a list)."""
    return int(inputs.shape[0]) if isinstance(inputs, np.ndarray) else len(inputs)
