"""Batch-latency profiles of models: the latency model of docs/architecture.md section 2.

Pure data and arithmetic over numpy arrays; no torch, no Dask, no I/O beyond parsing text handed to it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_SAFETY = 1.15
# How long a simulated batch runs: what the profile measured (mean, give or take its std), or the planning l(b).
BATCH_LATENCIES = ("measured", "planned")
DRAW_CLIP = 3.0  # a measured batch lasts mean + spread * z, z a standard normal clipped to +-DRAW_CLIP
DEFAULT_NET_MS = 2.0
#: Largest batch an inline profile may give.
MAX_BATCH = 4096
#: Planning latencies a profile may have (ms): below a nanosecond, ``b / l(b)`` stops being a throughput.
LATENCY_RANGE_MS = (1e-6, 1e9)


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
        if not (math.isfinite(self.safety) and self.safety > 0):
            raise ProfileError(f"{self.name}.safety: must be finite and > 0")
        mean = np.asarray(self.latency_us, dtype=np.float64)
        std = np.asarray(self.std_us, dtype=np.float64)
        mem = np.asarray(self.memory_bytes, dtype=np.float64)
        if not (len(mean) == len(std) == len(mem) == len(b)):
            raise ProfileError(f"{self.name}: latency, std and memory tables differ in length")
        if np.any(~np.isfinite(mean)) or np.any(mean <= 0):
            raise ProfileError(f"{self.name}.latency: must be finite and > 0 for every batch")
        if np.any(~np.isfinite(std)) or np.any(std < 0) or np.any(~np.isfinite(mem)) or np.any(mem < 0):
            raise ProfileError(f"{self.name}: std and memory must be finite and >= 0")
        for what, pair in (("preprocess", self.preprocess_us), ("postprocess", self.postprocess_us)):
            if not all(math.isfinite(x) and x >= 0 for x in pair):
                raise ProfileError(f"{self.name}.{what}: mean and std must be finite and >= 0, got {pair}")
        with np.errstate(over="ignore"):  # a sum past float range fails the range check below
            inflated = (mean + std) * self.safety / 1000.0
        # Envelope: l(b) = min over b' >= b, i.e. a reversed running minimum.
        envelope = np.minimum.accumulate(inflated[::-1])[::-1]
        if not (envelope[0] >= LATENCY_RANGE_MS[0] and inflated.max() <= LATENCY_RANGE_MS[1]):
            raise ProfileError(f"{self.name}.latency: inflated l(b) must be in [{LATENCY_RANGE_MS[0]:g}, "
                               f"{LATENCY_RANGE_MS[1]:g}] ms (latency times safety {self.safety:g})")
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
    def from_text(cls, text: str, name: str | None = None, safety: float = DEFAULT_SAFETY,
                  source: str = "profile text") -> ModelProfile:
        """Parse the Nexus profile text format (see ``profiles/data/README.md``); errors name ``source``, the
        line and the column: batches must run 1, 2, ... B, every value be finite, latencies > 0, the rest >= 0."""
        lines = [(n, ln.strip()) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]
        if len(lines) < 4 or lines[2][1] != "Forward latency":
            raise ProfileError(f"{source}: expected lines 'model id', 'device', 'Forward latency', a header, rows")
        model_id, device = lines[0][1], lines[1][1]
        rows: list[list[float]] = []
        i = 4
        while i < len(lines) and not lines[i][1].endswith("latency"):
            n, ln = lines[i]
            rows.append(_row(ln, ROW_FIELDS, f"{source} line {n}"))
            if rows[-1][0] != len(rows):
                raise ProfileError(f"{source} line {n}: batch: expected {len(rows)} (batches run 1, 2, ... "
                                   f"without gaps), got {rows[-1][0]:g}")
            i += 1
        if not rows:
            raise ProfileError(f"{source} line {lines[min(i, len(lines)) - 1][0]}: 'Forward latency' has no rows")
        sections = {"Preprocess latency": (0.0, 0.0), "Postprocess latency": (0.0, 0.0)}
        while i < len(lines):
            n, key = lines[i]
            if key not in sections or i + 2 >= len(lines):
                raise ProfileError(f"{source} line {n}: unexpected {key[:60]!r}")
            mean, std = _row(lines[i + 2][1], ("mean(us)", "std(us)"), f"{source} line {lines[i + 2][0]}")
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

    def to_inline(self) -> dict[str, Any]:
        """An inline profile (``from_inline``) holding the same tables: how ``Workload.to_dict`` writes models."""
        return {
            "device": self.device,
            "latency_ms": {int(b): float(v) / 1000 for b, v in zip(self.batches, self.latency_us, strict=True)},
            "std_ms": {int(b): float(v) / 1000 for b, v in zip(self.batches, self.std_us, strict=True)},
            "memory_mb": {int(b): float(v) / 2**20 for b, v in zip(self.batches, self.memory_bytes, strict=True)},
            "preprocess_ms": {"mean": self.preprocess_us[0] / 1000, "std": self.preprocess_us[1] / 1000},
            "postprocess_ms": {"mean": self.postprocess_us[0] / 1000, "std": self.postprocess_us[1] / 1000},
        }

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
        grid = np.arange(1, bmax + 1)
        with np.errstate(over="ignore", invalid="ignore"):  # values past float range are refused below
            mean = _interp(grid, *lat)
            std = (_interp(grid, *_points(spec["std_ms"], f"{where}.std_ms")) if "std_ms" in spec
                   else np.zeros_like(mean))
            mem = (_interp(grid, *_points(spec["memory_mb"], f"{where}.memory_mb")) * 2**20 if "memory_mb" in spec
                   else np.zeros_like(mean))
        known = {"latency_ms", "std_ms", "memory_mb", "preprocess_ms", "postprocess_ms", "device"}
        extra = [k for k in spec if k not in known]
        if extra:
            raise ProfileError(f"{where}: unknown field(s) {sorted(repr(k)[:30] for k in extra)}; "
                               f"allowed: {sorted(known)}")
        pre = _ms_pair(spec.get("preprocess_ms", 0.0), f"{where}.preprocess_ms")
        post = _ms_pair(spec.get("postprocess_ms", 0.0), f"{where}.postprocess_ms")
        device = spec.get("device", "inline")
        if not isinstance(device, str):
            raise ProfileError(f"{where}.device: must be a string")
        with np.errstate(over="ignore"):
            mean, std = mean * 1000.0, np.maximum(std, 0) * 1000.0
        return cls(name=name, device=device, batches=grid, latency_us=mean, std_us=std,
                   memory_bytes=np.maximum(mem, 0), preprocess_us=pre, postprocess_us=post, safety=safety)


def _num(x: float) -> str:
    return f"{float(x):.6g}"


#: The columns of a ``Forward latency`` row.
ROW_FIELDS = ("batch", "latency(us)", "std(us)", "memory(B)")


def _row(line: str, fields: tuple[str, ...], where: str) -> list[float]:
    """One CSV row of numbers: the batch an integer >= 1, latencies > 0, everything else finite and >= 0."""
    cells = line.split(",")
    if len(cells) != len(fields):
        raise ProfileError(f"{where}: expected {','.join(fields)}, got {line[:60]!r}")
    out = []
    for cell, name in zip(cells, fields, strict=True):
        try:
            val = float(cell)
        except ValueError:
            raise ProfileError(f"{where}: {name}: {cell.strip()[:30]!r} is not a number") from None
        low = 1.0 if name == "batch" else 0.0
        if not math.isfinite(val) or val < low or (name == "latency(us)" and val <= 0) or (
                name == "batch" and not val.is_integer()):
            need = "an integer >= 1" if name == "batch" else "> 0" if name == "latency(us)" else ">= 0"
            raise ProfileError(f"{where}: {name}: must be finite and {need}, got {cell.strip()[:30]}")
        out.append(val)
    return out


def _points(raw: object, where: str, positive: bool = False) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(raw, Mapping) or not raw:
        raise ProfileError(f"{where}: must be a non-empty mapping of batch size to value")
    pts: dict[int, float] = {}
    for k, v in raw.items():
        key = repr(k)[:30] if not isinstance(k, int) or k.bit_length() < 64 else "<huge integer>"
        b = k if isinstance(k, int) and not isinstance(k, bool) else (
            int(k) if isinstance(k, str) and k.strip().isdigit() and len(k) < 20 else None)
        if b is None or not 1 <= b <= MAX_BATCH:
            raise ProfileError(f"{where}[{key}]: batch must be an integer in 1..{MAX_BATCH}")
        if b in pts:
            raise ProfileError(f"{where}[{key}]: batch {b} given twice")
        try:
            val = float(v) if not isinstance(v, bool) and isinstance(v, (int, float)) else math.nan
        except OverflowError:
            val = math.inf
        if not math.isfinite(val) or val < 0 or (positive and val <= 0):
            raise ProfileError(f"{where}[{key}]: must be a finite number {'> 0' if positive else '>= 0'}")
        pts[b] = val
    xs = np.array(sorted(pts), dtype=np.float64)
    ys = np.array([pts[b] for b in sorted(pts)], dtype=np.float64)
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
    out = []
    for val in (mean, std):
        if isinstance(val, bool) or not isinstance(val, (int, float)):
            raise ProfileError(f"{where}: must be a number of ms, or {{mean, std}} in ms")
        try:
            val = float(val)
        except OverflowError:
            val = math.inf
        if not (math.isfinite(val) and val >= 0):
            raise ProfileError(f"{where}: must be finite and >= 0")
        out.append(val * 1000.0)
    return out[0], out[1]
