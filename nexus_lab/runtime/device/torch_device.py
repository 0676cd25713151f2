"""Torch devices: zoo models (``nexus_lab.models``) on ``cpu`` or ``cuda[:N]``. Torch is imported when a device
is made, not at module load.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...models.zoo import UnknownModelError
from .base import Device, DeviceOutOfMemory, check_load, check_slices, count_inputs
from .host_memory import keep_freed_memory
from .spec import resolve_torch_device

__all__ = ["TorchDevice"]


class TorchDevice(Device):
    """Zoo models (``nexus_lab.models``) on a torch device, run under ``inference_mode``.

    ``load`` builds the model (or a ``<group>.prefix`` / ``<model>.suffix`` part), runs it once at its max batch
    (on cuda this surfaces an out-of-memory at load time, as ``DeviceOutOfMemory``) and calibrates ``l(b)``: the
    mean plus one std of a few timed runs at batch 1 and at the max batch, times the profiles' safety factor,
    interpolated linearly in b. The no-op model is a pass-through that never touches torch.

    ``torch.set_num_threads(threads)`` is called on the first call in each thread (it does not carry across
    threads). Memory: cuda reports ``torch.cuda.memory_allocated``; cpu the loaded modules' parameter and buffer
    bytes (activations are transient there), with capacity ``inf``. A cpu device keeps freed activations in the
    process heap (``keep_freed_memory``), whatever malloc environment its worker was started with.
    """

    CALIBRATION_RUNS = 5

    def __init__(self, device: str = "cpu", threads: int = 1) -> None:
        super().__init__()
        import torch

        if int(threads) < 1:
            raise ValueError(f"threads: must be >= 1, got {threads}")
        self.threads = int(threads)
        self.torch_device = resolve_torch_device(device)
        self.kind = self.torch_device.type
        if self.kind == "cuda":
            self.name = f"cuda:{self.torch_device.index}"
            self.memory_mb = torch.cuda.get_device_properties(self.torch_device).total_memory / 2**20
        else:
            self.name = "cpu"
            self.memory_mb = math.inf
            keep_freed_memory()
        self._modules: dict[str, Any] = {}
        self._specs: dict[str, Any] = {}
        self._fit: dict[str, tuple[float, float]] = {}  # model -> (alpha, beta): l(b) = alpha*b + beta (ms)
        self._param_mb: dict[str, float] = {}
        self._local = threading.local()

    def _thread_setup(self) -> None:
        if getattr(self._local, "ready", False):
            return
        import torch

        torch.set_num_threads(self.threads)
        self._local.ready = True

    def load(self, model: str, max_batch: int) -> None:
        import torch

        from ... import models

        b = check_load(model, max_batch)
        self._thread_setup()
        spec = models.get_model_spec(model)
        if spec.passthrough:
            with self._lock:
                self._specs[model] = spec
                self._fit[model] = (0.0, 0.001)
                self._param_mb[model] = 0.0
                self._loaded[model] = b
            return
        try:
            module = self._modules.get(model)
            if module is None:
                module = models.build(model, self.torch_device)
            with self._lock:
                self._modules[model] = module
                self._specs[model] = spec
            fit = self._calibrate(model, b)
        except torch.cuda.OutOfMemoryError as exc:
            self.unload(model)
            torch.cuda.empty_cache()
            raise DeviceOutOfMemory(f"{self.name}: out of memory loading {model} for batch {b}: {exc}") from exc
        params = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
        with self._lock:
            self._fit[model] = fit
            self._param_mb[model] = params / 2**20
            self._loaded[model] = b

    def _calibrate(self, model: str, max_batch: int) -> tuple[float, float]:
        from ...profiles import DEFAULT_SAFETY

        def inflated(b: int) -> float:
            x = self._zeros_batch(model, b)
            self._forward(model, x)  # warm-up (allocator, kernels)
            times = []
            for _ in range(self.CALIBRATION_RUNS):
                t0 = time.perf_counter()
                self._forward(model, x)
                times.append((time.perf_counter() - t0) * 1000.0)
            return (float(np.mean(times)) + float(np.std(times))) * DEFAULT_SAFETY

        l1 = inflated(1)
        if max_batch == 1:
            return 0.0, l1
        lb = max(inflated(max_batch), l1)
        alpha = (lb - l1) / (max_batch - 1)
        return alpha, l1 - alpha

    def _zeros_batch(self, model: str, b: int) -> np.ndarray:
        spec = self._specs[model]
        return np.zeros((b, *spec.input_shape), dtype=np.dtype(spec.dtype))

    def _forward(self, model: str, batch: np.ndarray) -> Any:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.torch_device, non_blocking=True)
            y = self._modules[model](x)
            if self.kind == "cuda":
                y = y.to("cpu")
            return y.numpy()

    def unload(self, model: str) -> None:
        with self._lock:
            self._loaded.pop(model, None)
            self._modules.pop(model, None)
            self._specs.pop(model, None)
            self._fit.pop(model, None)
            self._param_mb.pop(model, None)
        if self.kind == "cuda":
            import torch

            torch.cuda.empty_cache()

    def memory_used_mb(self) -> float:
        if self.kind == "cuda":
            import torch

            return torch.cuda.memory_allocated(self.torch_device) / 2**20
        with self._lock:
            return float(sum(self._param_mb.values()))

    def set_latency(self, model: str, alpha_ms: float, beta_ms: float) -> None:
        """Use ``l(b) = alpha*b + beta`` (ms) for a loaded ``model`` instead of its calibration at load: a curve
        profiled on a quiet host (``nexus-lab profile``), or a known one. The backend reads it at its next plan."""
        if not (np.isfinite(alpha_ms) and np.isfinite(beta_ms) and alpha_ms >= 0 and alpha_ms + beta_ms > 0):
            raise ValueError(f"alpha_ms, beta_ms: must be finite, alpha >= 0 and l(1) > 0; got {alpha_ms}, {beta_ms}")
        self._spec(model)  # loaded, or UnknownModelError
        with self._lock:
            self._fit[model] = (float(alpha_ms), float(beta_ms))

    def batch_latency_ms(self, model: str, batch: int) -> float | None:
        with self._lock:
            fit = self._fit.get(model)
        if fit is None:
            return None
        return max(fit[0] * int(batch) + fit[1], 1e-3)

    def _spec(self, model: str) -> Any:
        with self._lock:
            spec = self._specs.get(model)
            if spec is None or model not in self._loaded:
                raise UnknownModelError(f"{self.name}: model {model!r} is not loaded (loaded: {sorted(self._loaded)})")
            return spec

    def _stack(self, model: str, inputs: Sequence[Any] | np.ndarray) -> np.ndarray:
        from ...models import check_input

        batch = inputs if isinstance(inputs, np.ndarray) else np.stack([np.asarray(x) for x in inputs])
        check_input(model, batch, batched=True)
        return np.ascontiguousarray(batch)

    @staticmethod
    def _split(spec: Any, out: np.ndarray) -> list[Any]:
        post = spec.postprocess
        return [post(row) for row in out] if post is not None else list(out)

    def run_batch(self, model: str, inputs: Sequence[Any] | np.ndarray) -> list[Any]:
        spec = self._spec(model)
        if spec.passthrough:
            return list(inputs)
        if count_inputs(inputs) == 0:
            return []
        self._thread_setup()
        return self._split(spec, self._forward(model, self._stack(model, inputs)))

    def run_prefix_batch(self, prefix_model: str, suffix_models: Sequence[str], inputs: Sequence[Any] | np.ndarray,
                         slices: Sequence[int]) -> list[list[Any]]:
        import torch

        n = count_inputs(inputs)
        sl = check_slices(n, suffix_models, slices)
        self._spec(prefix_model)
        specs = [self._spec(m) for m in suffix_models]
        if n == 0:
            return [[] for _ in suffix_models]
        self._thread_setup()
        batch = self._stack(prefix_model, inputs)
        out: list[list[Any]] = []
        with torch.inference_mode():
            feats = self._modules[prefix_model](torch.from_numpy(batch).to(self.torch_device, non_blocking=True))
            start = 0
            for m, spec, k in zip(suffix_models, specs, sl, strict=True):
                if k == 0:
                    out.append([])
                    continue
                y = self._modules[m](feats[start:start + k])
                out.append(self._split(spec, y.to("cpu").numpy()))
                start += k
        return out
