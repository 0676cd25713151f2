"""Batch-latency profiles of models: the latency model of docs/architecture.md section 2.

Pure data and arithmetic over numpy arrays; no torch, no Dask, no I/O beyond parsing text handed to it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

DEFAULT_SAFETY = 1.15
# How long a simulated batch runs: what the profile measured (mean, give or take its std), or the planning l(b).
BATCH_LATENCIES = ("measured", "planned")
DRAW_CLIP = 3.0  # a measured batch lasts mean + spread * z, z a standard normal clipped to +-DRAW_CLIP
DEFAULT_NET_MS = 2.0


def clipped_normal(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` standard normal draws clipped to +-``DRAW_CLIP``: the ``z`` of a measured batch's duration."""
    return np.clip(rng.standard_normal(n), -DRAW_CLIP, DRAW_CLIP)


def device_spread(mean_ms: float | np.ndarray, std_ms: float | np.ndarray) -> float | np.ndarray:
    """The std a simulated batch's duration is drawn with: the measured one, at most ``mean / DRAW_CLIP``, so
    ``mean + spread * z`` never lasts less than nothing. Shared by the simulator and the simulated GPUs."""
    return np.minimum(std_ms, np.asarray(mean_ms) / DRAW_CLIP)


class ProfileError(ValueError):
    """A profile file or inline profile that cannot be used; the message names the field."""


@dataclass(frozen=True, eq=False)
class ModelProfile:
    """Measured batch latency and memory of one model on one device type.

    The raw measurements are kept as given (microseconds and bytes, as in the Nexus profile format); planning
    uses the derived tables ``lat_ms`` and ``mem_mb``, indexed by batch size (index 0 is unused and is 0):

    * ``lat_ms[b]`` = ``min over b' >= b of (mean(b') + std(b')) * safety`` in ms: the inflated latency on its
      monotone envelope (a batch can always be padded up to a faster measured size);
    * ``mem_mb[b]`` = running max of the measured memory in MiB (more requests never need less memory).

    What a batch really takes on the device is the measurement itself, ``mean_ms[b]`` give or take ``std_ms[b]``
    (as measured, not inflated): simulated devices run batches with it, so the planner's inflation is the margin
    it was meant to be.

    Examples
    --------
    >>> p = ModelProfile.from_inline("tiny", {"latency_ms": {1: 2.0, 8: 5.0}, "memory_mb": {1: 100}})
    >>> p.max_batch, round(float(p.latency_ms(1)), 3)
    (8, 2.3)
    """

    name: str
    device: str
    batches: np.ndarray
    latency_us: np.ndarray
    std_us: np.ndarray
    memory_bytes: np.ndarray
    preprocess_us: tuple[float, float] = (0.0, 0.0)
    postprocess_us: tuple[float, float] = (0.0, 0.0)
    safety: float = DEFAULT_SAFETY
    lat_ms: np.ndarray = field(init=False, repr=False)
    mem_mb: np.ndarray = field(init=False, repr=False)
    mean_ms: np.ndarray = field(init=False, repr=False)
    std_ms: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        b = np.asarray(self.batches, dtype=np.int64)
        if b.ndim != 1 or len(b) == 0:
            raise ProfileError(f"{self.name}: latency table is empty")
        if b[0] != 1 or np.any(np.diff(b) != 1):
            raise ProfileError(f"{self.name}: batches must be 1..B contiguous (got {b[:5].tolist()}...)")
        if not self.safety > 0:
            raise ProfileError(f"{self.name}.safety: must be > 0")
        mean = np.asarray(self.latency_us, dtype=np.float64)
        std = np.asarray(self.std_us, dtype=np.float64)
        mem = np.asarray(self.memory_bytes, dtype=np.float64)
        if not (len(mean) == len(std) == len(mem) == len(b)):
            raise ProfileError(f"{self.name}: latency, std and memory tables differ in length")
        if np.any(~np.isfinite(mean)) or np.any(mean <= 0):
            raise ProfileError(f"{self.name}.latency: must be finite and > 0 for every batch")
        if np.any(std < 0) or np.any(mem < 0):
            raise ProfileError(f"{self.name}: std and memory must be >= 0")
        inflated = (mean + std) * self.safety / 1000.0
        # Envelope: l(b) = min over b' >= b, i.e. a reversed running minimum.
        envelope = np.minimum.accumulate(inflated[::-1])[::-1]
        lat = np.concatenate(([0.0], envelope))
        memory = np.concatenate(([0.0], np.maximum.accumulate(mem / 2**20)))
        measured = np.concatenate(([0.0], mean / 1000.0))
        spread = np.concatenate(([0.0], std / 1000.0))
        for table in (lat, memory, measured, spread):
            table.setflags(write=False)
        object.__setattr__(self, "batches", b)
        object.__setattr__(self, "lat_ms", lat)
        object.__setattr__(self, "mem_mb", memory)
        object.__setattr__(self, "mean_ms", measured)
        object.__setattr__(self, "std_ms", spread)

    # ------------------------------------------------------------------ queries
    @property
    def max_batch(self) -> int:
        return int(self.batches[-1])

    @property
    def preprocess_ms(self) -> float:
        """Per-request CPU pre-processing time, inflated like a batch latency."""
        return (self.preprocess_us[0] + self.preprocess_us[1]) * self.safety / 1000.0

    @property
    def postprocess_ms(self) -> float:
        return (self.postprocess_us[0] + self.postprocess_us[1]) * self.safety / 1000.0

    def latency_ms(self, batch: int | np.ndarray) -> float | np.ndarray:
        """Planning latency ``l(b)`` in ms; vectorised over arrays of batch sizes."""
        idx = np.asarray(batch)
        if np.any(idx < 1) or np.any(idx > self.max_batch):
            raise ValueError(f"{self.name}: batch must be in 1..{self.max_batch}")
        out = self.lat_ms[idx]
        return float(out) if out.ndim == 0 else out

    def memory_mb(self, batch: int | np.ndarray) -> float | np.ndarray:
        idx = np.asarray(batch)
        if np.any(idx < 1) or np.any(idx > self.max_batch):
            raise ValueError(f"{self.name}: batch must be in 1..{self.max_batch}")
        out = self.mem_mb[idx]
        return float(out) if out.ndim == 0 else out

    def throughput(self, batch: int) -> float:
        """Requests per second when running ``batch`` back to back."""
        return batch * 1000.0 / float(self.lat_ms[batch])

    def budget_ms(self, slo_ms: float, net_ms: float = DEFAULT_NET_MS) -> float:
        """The device's share of an SLO: ``L' = L - pre - post - net``."""
        return slo_ms - self.preprocess_ms - self.postprocess_ms - net_ms

    def max_batch_within(self, latency_ms: float) -> int:
        """Largest b with ``l(b) <= latency_ms`` (0 when even b = 1 is too slow)."""
        return int(np.searchsorted(self.lat_ms[1:], latency_ms * (1 + 1e-12), side="right"))

    def with_safety(self, safety: float) -> ModelProfile:
        return ModelProfile(self.name, self.device, self.batches, self.latency_us, self.std_us,
                            self.memory_bytes, self.preprocess_us, self.postprocess_us, safety)

    # ------------------------------------------------------------------ formats
    @classmethod
    def from_text(cls, text: str, name: str | None = None, safety: float = DEFAULT_SAFETY) -> ModelProfile:
        """Parse the Nexus profile text format (see ``profiles/data/README.md``)."""
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if len(lines) < 5 or lines[2] != "Forward latency":
            raise ProfileError("profile text: expected 'model id', 'device', 'Forward latency', header, rows")
        model_id, device = lines[0], lines[1]
        rows: list[list[float]] = []
        i = 4
        while i < len(lines) and not lines[i].endswith("latency"):
            try:
                rows.append([float(x) for x in lines[i].split(",")])
            except ValueError as exc:
                raise ProfileError(f"profile text line {i + 1}: {lines[i]!r} is not numeric") from exc
            if len(rows[-1]) != 4:
                raise ProfileError(f"profile text line {i + 1}: expected batch,latency,std,memory")
            i += 1
        sections = {"Preprocess latency": (0.0, 0.0), "Postprocess latency": (0.0, 0.0)}
        while i < len(lines):
            key = lines[i]
            if key not in sections or i + 2 >= len(lines):
                raise ProfileError(f"profile text line {i + 1}: unexpected {key!r}")
            mean, std = (float(x) for x in lines[i + 2].split(","))
            sections[key] = (mean, std)
            i += 3
        arr = np.array(rows)
        return cls(
            name=name or (model_id.split(":")[1] if ":" in model_id else model_id),
            device=device,
            batches=arr[:, 0].astype(np.int64),
            latency_us=arr[:, 1],
            std_us=arr[:, 2],
            memory_bytes=arr[:, 3],
            preprocess_us=sections["Preprocess latency"],
            postprocess_us=sections["Postprocess latency"],
            safety=safety,
        )

    def to_text(self, model_id: str | None = None) -> str:
        """Write the Nexus profile text format; ``from_text(to_text())`` round-trips."""
        out = [model_id or f"nexus_lab:{self.name}:1", self.device, "Forward latency",
               "batch,latency(us),std(us),memory(B)"]
        for b, m, s, mem in zip(self.batches, self.latency_us, self.std_us, self.memory_bytes, strict=True):
            out.append(f"{int(b)},{_num(m)},{_num(s)},{round(mem)}")
        for title, (m, s) in (("Preprocess latency", self.preprocess_us),
                              ("Postprocess latency", self.postprocess_us)):
            out += [title, "mean(us),std(us)", f"{_num(m)},{_num(s)}"]
        return "\n".join(out) + "\n"

    @classmethod
    def from_inline(cls, name: str, spec: Mapping, safety: float = DEFAULT_SAFETY,
                    field_path: str | None = None) -> ModelProfile:
        """An inline profile: ``{latency_ms: {b: ms}, memory_mb: {b: MiB}, std_ms?, preprocess_ms?, ...}``.

        Values between the given batch sizes are interpolated linearly; the largest given latency batch is
        the model's maximum batch; memory beyond its last point is extrapolated from the last two points.
        """
        where = field_path or name
        if not isinstance(spec, Mapping):
            raise ProfileError(f"{where}: must be a mapping with latency_ms")
        lat = _points(spec.get("latency_ms"), f"{where}.latency_ms", positive=True)
        bmax = int(lat[0][-1])
        if bmax > 4096:
            raise ProfileError(f"{where}.latency_ms: largest batch must be <= 4096")
        grid = np.arange(1, bmax + 1)
        mean = _interp(grid, *lat)
        std = _interp(grid, *_points(spec["std_ms"], f"{where}.std_ms")) if "std_ms" in spec else np.zeros_like(mean)
        if "memory_mb" in spec:
            mem = _interp(grid, *_points(spec["memory_mb"], f"{where}.memory_mb")) * 2**20
        else:
            mem = np.zeros_like(mean)
        known = {"latency_ms", "std_ms", "memory_mb", "preprocess_ms", "postprocess_ms", "device"}
        extra = set(spec) - known
        if extra:
            raise ProfileError(f"{where}: unknown field(s) {sorted(extra)}; allowed: {sorted(known)}")
        pre = _ms_pair(spec.get("preprocess_ms", 0.0), f"{where}.preprocess_ms")
        post = _ms_pair(spec.get("postprocess_ms", 0.0), f"{where}.postprocess_ms")
        return cls(name=name, device=str(spec.get("device", "inline")), batches=grid,
                   latency_us=mean * 1000.0, std_us=np.maximum(std, 0) * 1000.0,
                   memory_bytes=np.maximum(mem, 0), preprocess_us=pre, postprocess_us=post, safety=safety)


def _num(x: float) -> str:
    return f"{float(x):.6g}"


def _points(raw: object, where: str, positive: bool = False) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(raw, Mapping) or not raw:
        raise ProfileError(f"{where}: must be a non-empty mapping of batch size to value")
    pts = []
    for k, v in raw.items():
        try:
            b, val = int(k), float(v)
        except (TypeError, ValueError) as exc:
            raise ProfileError(f"{where}[{k!r}]: batch must be an integer and value a number") from exc
        if b < 1:
            raise ProfileError(f"{where}[{k!r}]: batch must be >= 1")
        if not math.isfinite(val) or val < 0 or (positive and val <= 0):
            raise ProfileError(f"{where}[{k!r}]: must be {'> 0' if positive else '>= 0'}")
        pts.append((b, val))
    pts.sort()
    xs = np.array([p[0] for p in pts], dtype=np.float64)
    ys = np.array([p[1] for p in pts], dtype=np.float64)
    return xs, ys


def _interp(grid: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Linear interpolation, linear extrapolation past the last point, flat before the first."""
    out = np.interp(grid, xs, ys)
    if len(xs) >= 2:
        slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        beyond = grid > xs[-1]
        out[beyond] = ys[-1] + slope * (grid[beyond] - xs[-1])
    return out


def _ms_pair(raw: object, where: str) -> tuple[float, float]:
    """``3.0`` or ``{mean: 3.0, std: 1.0}`` in ms, returned as (mean, std) in us."""
    if isinstance(raw, Mapping):
        mean, std = raw.get("mean", 0.0), raw.get("std", 0.0)
    else:
        mean, std = raw, 0.0
    try:
        mean, std = float(mean), float(std)
    except (TypeError, ValueError) as exc:
        raise ProfileError(f"{where}: must be a number of ms") from exc
    if mean < 0 or std < 0 or not math.isfinite(mean + std):
        raise ProfileError(f"{where}: must be >= 0")
    return mean * 1000.0, std * 1000.0
