"""The accelerator a GPU backend executes on: torch ``cpu`` / ``cuda[:N]`` running zoo models, or a simulated GPU
that waits a measured profile's batch latency and enforces its memory (so a laptop can run a 16-GPU demo).

Execution only: no scheduling decisions, no Dask. Torch is imported by the torch devices only; reads profiles.
Threading: ``load``/``unload``/``run_*`` run on the backend's single device thread; ``loaded``,
``batch_latency_ms`` and ``memory_used_mb`` may be read from the event loop (they only read guarded state).
"""

from __future__ import annotations

import math
import threading
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..models.zoo import UnknownModelError
from ..profiles import (
    BATCH_LATENCIES,
    ModelProfile,
    clipped_normal,
    device_spread,
    load_profile,
    profile_set,
    profile_sets,
)
from ..profiles.profiler import DEVICE_FORMS, resolve_torch_device

__all__ = ["DEVICE_FORMS", "MALLOC_THRESHOLD", "SIMULATED_MEMORY_MB", "SUFFIX_SHARE", "Device", "DeviceOutOfMemory",
           "SimulatedDevice", "TorchDevice", "keep_freed_memory", "make_device"]

#: Card memory of the simulated GPU of each shipped profile set (MiB).
SIMULATED_MEMORY_MB = {"titan-x-pascal": 12288.0}

#: Share of a whole model's batch latency its suffix takes when a simulated device derives ``<m>.prefix`` /
#: ``<m>.suffix`` profiles from a profile set's whole model (no measured split exists): the same modelling as
#: ``nexus_lab.bench.query.vgg16_prefix_split`` (last fully-connected layer retrained; 4096 features in).
SUFFIX_SHARE = 0.05
SUFFIX_FEATURES = 4096

#: Per-request output of the simulated models: classifier logits / embedding sizes, ``None`` for box lists.
SIMULATED_OUTPUTS: dict[str, tuple[int, ...] | None] = {
    "vgg16": (1000,), "vgg_s": (1000,), "vgg_face": (2622,), "yolo9000": None,
}


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


def _check_load(model: str, max_batch: int) -> int:
    if not isinstance(model, str) or not model:
        raise ValueError(f"model: must be a non-empty model name, got {model!r}")
    try:
        b = int(max_batch)
    except (TypeError, ValueError):
        raise ValueError(f"max_batch: must be an integer >= 1, got {max_batch!r}") from None
    if b < 1 or b != max_batch:
        raise ValueError(f"max_batch: must be an integer >= 1, got {max_batch!r}")
    return b


def _check_slices(n: int, suffix_models: Sequence[str], slices: Sequence[int]) -> list[int]:
    sl = [int(s) for s in slices]
    if len(sl) != len(suffix_models):
        raise ValueError(f"slices: need one per suffix model ({len(suffix_models)}), got {len(sl)}")
    if any(s < 0 for s in sl) or sum(sl) != n:
        raise ValueError(f"slices: must be >= 0 and sum to the batch size {n}, got {sl}")
    return sl


def _count(inputs: Sequence[Any] | np.ndarray) -> int:
    return int(inputs.shape[0]) if isinstance(inputs, np.ndarray) else len(inputs)


# ---------------------------------------------------------------------------------------------- simulated
class SimulatedDevice(Device):
    """A GPU of a profile set: a batch of b takes what the profile measured, ``mean_ms[b]`` plus ``std_ms[b]``
    times a seeded normal draw (sleeping, no CPU burned), and a model loaded for max batch B holds ``mem_mb[B]``;
    loading past ``memory_mb`` raises ``DeviceOutOfMemory``. ``batch_latency_ms`` answers the planning latency
    ``lat_ms[b]`` (mean + std, inflated by the safety factor) that early drop decides with, as on a real GPU;
    ``batch_latency="planned"`` makes every batch take exactly that (the worst case the plan is checked against).

    Models: the set's profiles (``vgg16``, ``vgg_face``, ``vgg_s``, ``yolo9000`` for ``titan-x-pascal``), any
    profile handed to ``load(..., profile=)`` or ``register_profile``, fine-tuned variants ``m-xyz`` / ``m_xyz``
    of a set model ``m`` (with ``m``'s profile), and ``<m>.prefix`` / ``<m>.suffix`` parts derived from ``m``
    (``SUFFIX_SHARE``; the suffix of a variant ``m-xyz`` is derived from ``m``). Batches beyond a
    profile's largest batch run as several batches back to back. Outputs: zero logits of the model's output size
    (shared read-only arrays), for ``yolo9000`` 0..3 boxes per image (mean 1.5) that are a deterministic function
    of the input array (of a seeded sequence for non-array payloads).
    """

    kind = "simulated"

    def __init__(self, profile_set_name: str, memory_mb: float | None = None, *, seed: int = 0,
                 profiles: Mapping[str, ModelProfile | Mapping | str] | None = None,
                 batch_latency: str = "measured") -> None:
        super().__init__()
        if batch_latency not in BATCH_LATENCIES:
            raise ValueError(f"batch_latency: must be one of {list(BATCH_LATENCIES)}, got {batch_latency!r}")
        self.batch_latency = batch_latency
        self._jitter = np.random.default_rng([seed, 1])
        self.set_name = profile_set_name
        self.name = f"simulated:{profile_set_name}"
        self._set: dict[str, ModelProfile] = dict(profile_set(profile_set_name))
        self._profiles: dict[str, ModelProfile] = dict(self._set)
        self._shapes: dict[str, tuple[int, ...] | None] = {}  # model -> per-request output shape (cache)
        if memory_mb is None:
            if profile_set_name not in SIMULATED_MEMORY_MB:
                raise ValueError(f"memory_mb: no card memory known for profile set {profile_set_name!r}; pass it")
            memory_mb = SIMULATED_MEMORY_MB[profile_set_name]
        if not memory_mb > 0:
            raise ValueError(f"memory_mb: must be > 0, got {memory_mb}")
        self.memory_mb = float(memory_mb)
        self._rng = np.random.default_rng(seed)
        self._zeros: dict[tuple[int, ...], np.ndarray] = {}
        for name, prof in (profiles or {}).items():
            self.register_profile(name, prof)

    def register_profile(self, model: str, profile: ModelProfile | Mapping | str) -> ModelProfile:
        """Let this device run ``model`` with ``profile`` (a profile, an inline mapping or a built-in name)."""
        prof = load_profile(profile, model, field_path=f"profiles[{model!r}]")
        with self._lock:
            self._profiles[model] = prof
        return prof

    def profile(self, model: str) -> ModelProfile:
        """The profile ``model`` runs with; raises ``UnknownModelError`` (a KeyError) naming the known models."""
        with self._lock:
            prof = self._profiles.get(model)
        if prof is None:
            prof = self._derive(model)
            if prof is None:
                known = ", ".join(sorted(self._profiles))
                raise UnknownModelError(f"{self.name}: no profile for model {model!r}; known: {known}"
                                        " (plus <model>.prefix / <model>.suffix of those);"
                                        " hand one to load(profile=...)")
            with self._lock:
                self._profiles[model] = prof
        return prof

    def _base(self, name: str) -> str | None:
        """The set model a part or variant name derives from: itself, else the longest ``<m>-`` / ``<m>_`` prefix."""
        base = self._set
        if name in base:
            return name
        hits = [m for m in base if name.startswith((m + "-", m + "_"))]
        return max(hits, key=len) if hits else None

    def _derive(self, model: str) -> ModelProfile | None:
        for tail, share in ((".prefix", 1.0 - SUFFIX_SHARE), (".suffix", SUFFIX_SHARE)):
            if not model.endswith(tail):
                continue
            base = self._base(model[: -len(tail)])
            if base is None:
                return None
            whole = self._set[base]
            out = SIMULATED_OUTPUTS.get(base) or (1000,)
            weights = SUFFIX_FEATURES * math.prod(out) * 4.0  # the retrained last layer's weights, bytes
            if tail == ".prefix":
                mem = np.maximum(whole.memory_bytes - weights, 0)
                pre, post = whole.preprocess_us, (0.0, 0.0)
            else:
                mem = weights + whole.batches * (SUFFIX_FEATURES + math.prod(out)) * 4.0
                pre, post = (0.0, 0.0), whole.postprocess_us
            return ModelProfile(model, whole.device, whole.batches, whole.latency_us * share, whole.std_us * share,
                                mem, pre, post, whole.safety)
        base = self._base(model)  # a whole fine-tuned variant, e.g. vgg16-ft0: its base model's profile
        if base is None:
            return None
        w = self._set[base]
        return ModelProfile(model, w.device, w.batches, w.latency_us, w.std_us, w.memory_bytes, w.preprocess_us,
                            w.postprocess_us, w.safety)

    # -------------------------------------------------------------------------------------- lifecycle
    def load(self, model: str, max_batch: int, profile: ModelProfile | Mapping | str | None = None) -> None:
        """Reserve ``mem_mb[max_batch]`` of ``model``'s profile; ``DeviceOutOfMemory`` when the loaded models'
        reservations would exceed ``memory_mb`` (nothing changes then)."""
        b = _check_load(model, max_batch)
        prof = self.register_profile(model, profile) if profile is not None else self.profile(model)
        need = _mem_at(prof, b)
        with self._lock:
            others = sum(_mem_at(self._profiles[m], k) for m, k in self._loaded.items() if m != model)
            if others + need > self.memory_mb + 1e-9:
                raise DeviceOutOfMemory(
                    f"{self.name}: loading {model} for batch {b} needs {need:.0f} MiB; {others:.0f} of "
                    f"{self.memory_mb:.0f} MiB are held by {sorted(m for m in self._loaded if m != model)}")
            self._loaded[model] = b

    def unload(self, model: str) -> None:
        with self._lock:
            self._loaded.pop(model, None)

    def memory_used_mb(self) -> float:
        with self._lock:
            return float(sum(_mem_at(self._profiles[m], b) for m, b in self._loaded.items()))

    def batch_latency_ms(self, model: str, batch: int) -> float | None:
        try:
            prof = self.profile(model)
        except KeyError:
            return None
        return _lat_at(prof, int(batch))

    # -------------------------------------------------------------------------------------- execution
    def _require(self, model: str) -> ModelProfile:
        with self._lock:
            if model not in self._loaded:
                raise UnknownModelError(f"{self.name}: model {model!r} is not loaded (loaded: {sorted(self._loaded)})")
            return self._profiles[model]

    def run_batch(self, model: str, inputs: Sequence[Any] | np.ndarray) -> list[Any]:
        prof = self._require(model)
        n = _count(inputs)
        if n == 0:
            return []
        t_end = time.perf_counter() + self._took_ms(prof, n) / 1000.0
        outputs = [self._output(model, x) for x in inputs]
        _sleep_until(t_end)
        return outputs

    def run_prefix_batch(self, prefix_model: str, suffix_models: Sequence[str], inputs: Sequence[Any] | np.ndarray,
                         slices: Sequence[int]) -> list[list[Any]]:
        """Waits ``l_prefix(b) + sum_i l_suffix_i(b_i)``: the prefix once on all b inputs, each suffix on its slice."""
        n = _count(inputs)
        sl = _check_slices(n, suffix_models, slices)
        pre = self._require(prefix_model)
        sufs = [self._require(m) for m in suffix_models]
        lat = (self._took_ms(pre, n) if n else 0.0) + sum(self._took_ms(p, k) for p, k in zip(sufs, sl, strict=True)
                                                          if k)
        t_end = time.perf_counter() + lat / 1000.0
        out: list[list[Any]] = []
        start = 0
        for m, k in zip(suffix_models, sl, strict=True):
            out.append([self._output(m, inputs[i]) for i in range(start, start + k)])
            start += k
        _sleep_until(t_end)
        return out

    def _took_ms(self, prof: ModelProfile, batch: int) -> float:
        """How long a batch runs: the measured mean + ``device_spread`` x a clipped normal draw (the simulator's
        rule), or ``l(b)`` when planned; above the profile's largest batch, full batches back to back."""
        if self.batch_latency == "planned":
            return _lat_at(prof, batch)
        full, rest = divmod(batch, prof.max_batch)
        sizes = np.array([prof.max_batch] * full + ([rest] if rest else []))
        with self._lock:
            z = clipped_normal(self._jitter, len(sizes))
        mean = prof.mean_ms[sizes]
        return float(np.sum(mean + device_spread(mean, prof.std_ms[sizes]) * z))

    def _output(self, model: str, x: Any) -> Any:
        try:
            shape = self._shapes[model]
        except KeyError:
            shape = self._shapes[model] = self._output_shape(model)
        if shape is None:
            return self._boxes(x)
        arr = self._zeros.get(shape)
        if arr is None:
            arr = np.zeros(shape, dtype=np.float32)
            arr.setflags(write=False)
            self._zeros[shape] = arr
        return arr

    def _output_shape(self, model: str) -> tuple[int, ...] | None:
        """A prefix's features, else its base model's output (logits size, or None for box lists)."""
        if model.endswith(".prefix"):
            return (SUFFIX_FEATURES,)
        root = self._base(model[: -len(".suffix")] if model.endswith(".suffix") else model)
        return SIMULATED_OUTPUTS.get(root, (1000,)) if root is not None else (1000,)

    def _boxes(self, x: Any) -> np.ndarray:
        """0..3 boxes ``(x0, y0, x1, y1, score, class)`` in [0, 1]: a function of the input's bytes."""
        if isinstance(x, np.ndarray):
            rng = np.random.default_rng(zlib.crc32(np.ascontiguousarray(x).view(np.uint8).reshape(-1)))
        else:
            rng = self._rng
        n = int(rng.integers(0, 4))
        xy = rng.uniform(0.0, 0.7, size=(n, 2))
        wh = rng.uniform(0.1, 0.3, size=(n, 2))
        score = rng.uniform(0.5, 1.0, size=(n, 1))
        cls = rng.integers(0, 2, size=(n, 1))
        return np.concatenate([xy, xy + wh, score, cls], axis=1).astype(np.float32)


def _lat_at(prof: ModelProfile, batch: int) -> float:
    """``l(b)``; a batch above the profile's largest batch B runs as full batches of B then the rest."""
    if batch < 1:
        raise ValueError(f"batch: must be >= 1, got {batch}")
    full, rest = divmod(batch, prof.max_batch)
    return float(full * prof.lat_ms[prof.max_batch] + (prof.lat_ms[rest] if rest else 0.0))


def _mem_at(prof: ModelProfile, batch: int) -> float:
    return float(prof.mem_mb[min(batch, prof.max_batch)])


def _sleep_until(t_end: float) -> None:
    """Sleep (no CPU burned) until ``t_end`` on the perf_counter clock."""
    while True:
        left = t_end - time.perf_counter()
        if left <= 0:
            return
        time.sleep(left)


# ---------------------------------------------------------------------------------------------- torch
#: glibc's trim and mmap thresholds for processes that run torch on the cpu (bytes); see ``keep_freed_memory``.
MALLOC_THRESHOLD = 134217728


def keep_freed_memory(threshold: int = MALLOC_THRESHOLD) -> bool:
    """Make glibc keep freed blocks of up to ``threshold`` bytes in this process's heap (``mallopt``), so a
    forward pass reuses the previous batch's activation memory instead of mapping it afresh.

    distributed's nanny starts workers with a 64 KiB trim threshold, and any explicit trim threshold also freezes
    glibc's mmap threshold at 128 KiB: every larger activation is then mapped and unmapped per forward pass, and
    the page faults made the zoo's conv net 2-3x slower per item. ``nexus_lab.start`` sets both in the workers'
    environment (``controller.WORKER_MALLOC_ENV``); this covers clusters started elsewhere. Returns False where it
    does not apply (not glibc).
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        return bool(libc.mallopt(m_trim_threshold, int(threshold))) and bool(
            libc.mallopt(m_mmap_threshold, int(threshold)))
    except (OSError, AttributeError):  # another C library (musl): it has its own allocator policy
        return False


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

        from .. import models

        b = _check_load(model, max_batch)
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
        from ..profiles import DEFAULT_SAFETY

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
        from ..models import check_input

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
        if _count(inputs) == 0:
            return []
        self._thread_setup()
        return self._split(spec, self._forward(model, self._stack(model, inputs)))

    def run_prefix_batch(self, prefix_model: str, suffix_models: Sequence[str], inputs: Sequence[Any] | np.ndarray,
                         slices: Sequence[int]) -> list[list[Any]]:
        import torch

        n = _count(inputs)
        sl = _check_slices(n, suffix_models, slices)
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
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"device: must be one of {DEVICE_FORMS}, got {spec!r}")
    if spec.startswith("simulated:"):
        name = spec.split(":", 1)[1]
        if name not in profile_sets():
            raise ValueError(f"device: unknown profile set {name!r} in {spec!r}; available: "
                             f"{', '.join('simulated:' + s for s in profile_sets())}")
        return SimulatedDevice(name, memory_mb, profiles=profiles, batch_latency=batch_latency)
    if spec == "cpu" or spec == "cuda" or spec.startswith("cuda:"):
        if memory_mb is not None or profiles or batch_latency != "measured":
            raise ValueError("memory_mb, profiles, batch_latency: apply to simulated devices only")
        return TorchDevice(spec, threads=threads)
    raise ValueError(f"device: {spec!r} is not one of {DEVICE_FORMS}")
