"""A simulated GPU: waits a measured profile's batch latency and enforces its memory, so a laptop can run a
16-GPU demo. Reads profiles; no torch, no Dask.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ...models.zoo import UnknownModelError
from ...profiles import BATCH_LATENCIES, ModelProfile, clipped_normal, device_spread, load_profile, profile_set
from .base import Device, DeviceOutOfMemory, check_load, check_slices, count_inputs

__all__ = ["SIMULATED_MEMORY_MB", "SIMULATED_OUTPUTS", "SUFFIX_FEATURES", "SUFFIX_SHARE", "SimulatedDevice"]

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
        b = check_load(model, max_batch)
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
        n = count_inputs(inputs)
        if n == 0:
            return []
        t_end = time.perf_counter() + self._took_ms(prof, n) / 1000.0
        outputs = [self._output(model, x) for x in inputs]
        _sleep_until(t_end)
        return outputs

    def run_prefix_batch(self, prefix_model: str, suffix_models: Sequence[str], inputs: Sequence[Any] | np.ndarray,
                         slices: Sequence[int]) -> list[list[Any]]:
        """Waits ``l_prefix(b) + sum_i l_suffix_i(b_i)``: the prefix once on all b inputs, each suffix on its slice."""
        n = count_inputs(inputs)
        sl = check_slices(n, suffix_models, slices)
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
