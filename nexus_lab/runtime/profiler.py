"""The profiler: measures a ``torch.nn.Module``'s batch latency, its memory and the per-request pre- and
post-processing on a device, and returns a ``ModelProfile`` (written with ``to_text()``: the Nexus format).

Imports torch lazily (inside the functions); knows nothing of planners, backends or Dask. Device strings are
parsed by ``nexus_lab.runtime.device.spec``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..profiles import DEFAULT_SAFETY, ModelProfile, ProfileError
from .device.spec import resolve_torch_device

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["DEFAULT_BATCHES", "profile_builtin", "profile_module"]

DEFAULT_BATCHES = (1, 2, 4, 8, 16, 32)
#: Side of the synthetic decoded frame (uint8, H x W x 3) the pre-processing is measured on.
FRAME_SIDE = 128


def _check_batches(batches: Sequence[int]) -> list[int]:
    try:
        out = sorted({int(b) for b in batches})
    except (TypeError, ValueError):
        raise ValueError(f"batches: must be integers >= 1, got {batches!r}") from None
    if not out or out[0] < 1:
        raise ValueError(f"batches: must be a non-empty list of integers >= 1, got {list(batches)!r}")
    if out[-1] > 4096:
        raise ValueError(f"batches: largest batch must be <= 4096, got {out[-1]}")
    return out


def _timed_us(fn: Callable[[], Any], runs: int) -> tuple[float, float]:
    """Mean and standard deviation of ``runs`` calls of ``fn``, in microseconds."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e6)
    return statistics.fmean(times), (statistics.pstdev(times) if len(times) > 1 else 0.0)


def _activation_bytes(module: torch.nn.Module, x: torch.Tensor) -> int:
    """CPU memory estimate of one forward pass: the input plus every leaf module's output tensor (counted once
    each, as if none were freed early: an upper bound of what the pass keeps alive at once)."""
    import torch

    total = [x.numel() * x.element_size()]

    def hook(_m: Any, _inp: Any, out: Any) -> None:
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                total[0] += t.numel() * t.element_size()

    leaves = [m for m in module.modules() if not list(m.children())] or [module]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.inference_mode():
            module(x)
    finally:
        for h in handles:
            h.remove()
    return total[0]


def profile_module(module: torch.nn.Module, input_shape: Sequence[int], *, device: str = "cpu",
                   batches: Sequence[int] = DEFAULT_BATCHES, repeats: int = 10, warmup: int = 3,
                   name: str = "model", dtype: str = "float32", threads: int | None = None,
                   preprocess: Callable[[np.ndarray], Any] | None = None,
                   postprocess: Callable[[np.ndarray], Any] | None = None, safety: float = DEFAULT_SAFETY,
                   progress: bool | str = True) -> ModelProfile:
    """Measure ``module`` at each batch size and return its profile for batches ``1..max(batches)``.

    Each measured batch size runs ``warmup`` untimed passes then ``repeats`` timed ones (``torch.inference_mode``;
    on cuda every pass ends with ``torch.cuda.synchronize``): the table holds their mean and standard deviation.
    Unmeasured sizes in between are interpolated linearly (as inline profiles are); sizes below the smallest
    measured one take its values (a smaller batch is never slower than a padded one).

    Memory per batch: on cuda the peak ``torch.cuda.max_memory_allocated`` during the batch's passes (weights
    included); on cpu an estimate: parameter and buffer bytes plus the input and every leaf module's output at
    that batch (see ``_activation_bytes``), deterministic where an RSS delta would be noise.

    Pre-processing (per request): ``preprocess`` applied to a synthetic decoded frame (``FRAME_SIDE`` square
    uint8 RGB); by default a cast and scale of a uint8 array of the input shape to ``dtype``. Post-processing
    (per request): ``postprocess`` of one output row, by default copying it out of the batch output.

    ``threads`` sets ``torch.set_num_threads`` for the run (restored after). ``progress`` shows a tqdm bar: a notebook's
    widget inside a kernel, or with ``progress="console"`` always the terminal's, on stderr (a command's stdout
    carries the profile itself).
    """
    import torch

    if progress == "console":
        from tqdm import tqdm
    else:
        from tqdm.auto import tqdm

    shape = tuple(int(d) for d in input_shape)
    if not shape or min(shape) < 1:
        raise ValueError(f"input_shape: must be a non-empty tuple of positive ints, got {tuple(input_shape)!r}")
    measured = _check_batches(batches)
    if int(repeats) < 1:
        raise ValueError(f"repeats: must be >= 1, got {repeats}")
    if int(warmup) < 0:
        raise ValueError(f"warmup: must be >= 0, got {warmup}")
    if threads is not None and int(threads) < 1:
        raise ValueError(f"threads: must be >= 1, got {threads}")
    dev = resolve_torch_device(device)
    cuda = dev.type == "cuda"
    tdtype = getattr(torch, np.dtype(dtype).name, None)
    if not isinstance(tdtype, torch.dtype):
        raise ValueError(f"dtype: {dtype!r} has no torch equivalent")
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        module = module.to(dev).eval()
        param_bytes = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))

        def sync() -> None:
            if cuda:
                torch.cuda.synchronize(dev)

        mean_us, std_us, mem_b = [], [], []
        out_row: np.ndarray | None = None
        bar = tqdm(total=len(measured) * (int(warmup) + int(repeats)), desc=f"profile {name} on {dev}",
                   unit="pass", disable=not progress, leave=False)
        with bar:
            for b in measured:
                x = torch.zeros((b, *shape), dtype=tdtype, device=dev)
                if cuda:
                    sync()
                    torch.cuda.reset_peak_memory_stats(dev)

                def run(x: torch.Tensor = x) -> Any:
                    with torch.inference_mode():
                        y = module(x)
                    sync()
                    bar.update(1)
                    return y

                for _ in range(int(warmup)):
                    run()
                m, s = _timed_us(run, int(repeats))
                mean_us.append(m)
                std_us.append(s)
                if cuda:
                    mem_b.append(float(torch.cuda.max_memory_allocated(dev)))
                else:
                    mem_b.append(float(param_bytes + _activation_bytes(module, x)))
                if out_row is None:  # one request's output, for the post-processing measurement
                    with torch.inference_mode():
                        y = module(x)
                    if isinstance(y, torch.Tensor):
                        out_row = y[0].to("cpu").numpy()
        # with the same threads: a backend's pre/post threads run single-threaded torch ops as well
        pre = _measure_pre(shape, dtype, preprocess, int(repeats))
        post = _measure_post(out_row, postprocess, int(repeats))
    finally:
        torch.set_num_threads(old_threads)
    grid = np.arange(1, measured[-1] + 1)
    xs = np.asarray(measured, dtype=np.float64)
    label = _device_label(dev, threads if threads is not None else old_threads)
    return ModelProfile(name=name, device=label, batches=grid,
                        latency_us=np.interp(grid, xs, mean_us), std_us=np.interp(grid, xs, std_us),
                        memory_bytes=np.interp(grid, xs, mem_b), preprocess_us=pre, postprocess_us=post,
                        safety=safety)


def _measure_pre(shape: tuple[int, ...], dtype: str, preprocess: Callable[[np.ndarray], Any] | None,
                 repeats: int) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    runs = max(repeats, 20)
    if preprocess is not None:
        frame = rng.integers(0, 256, size=(FRAME_SIDE, FRAME_SIDE, 3), dtype=np.uint8)
        return _timed_us(lambda: preprocess(frame), runs)
    raw = rng.integers(0, 256, size=shape, dtype=np.uint8)
    scale = np.dtype(dtype).type(1 / 255) if np.issubdtype(np.dtype(dtype), np.floating) else 1
    return _timed_us(lambda: raw.astype(dtype) * scale, runs)


def _measure_post(row: np.ndarray | None, postprocess: Callable[[np.ndarray], Any] | None,
                  repeats: int) -> tuple[float, float]:
    if row is None:
        return 0.0, 0.0
    runs = max(repeats, 20)
    if postprocess is not None:
        return _timed_us(lambda: postprocess(row), runs)
    return _timed_us(lambda: np.array(row, copy=True), runs)


def _device_label(dev: Any, threads: int) -> str:
    """Line 2 of the profile text: what the profile was measured on."""
    if dev.type == "cuda":
        import torch

        return torch.cuda.get_device_name(dev).replace(" ", "_")
    return f"cpu_{threads}-thread"


def profile_builtin(name: str, device: str = "cpu", batches: Sequence[int] = DEFAULT_BATCHES, repeats: int = 10,
                    *, warmup: int = 3, threads: int | None = 1, progress: bool | str = True) -> ModelProfile:
    """Profile a model of the zoo (``nexus_lab.models``; also ``<group>.prefix`` / ``<model>.suffix`` parts).

    On cpu ``threads`` defaults to 1: the backends run one single-threaded worker per device, so that is the
    latency they see. Pre-processing is the model's image transform of a JPEG-encoded frame (decode, resize,
    normalise) when it has one, else the zoo's image pre-processing (decoded uint8 frame -> normalised input) for
    image models; post-processing is its result step (top-k labels, boxes) when it has one.
    """
    from .. import models

    try:
        spec = models.get_model_spec(name)
    except KeyError as exc:
        raise ProfileError(str(exc)) from None
    if spec.input_shape is None:
        raise ProfileError(f"{name}: takes any payload (no input shape), so there is nothing to profile")
    pre = None
    if spec.transform is not None:  # the model takes images: time decoding a JPEG frame and its transform
        from ..models.imaging import encode_jpeg

        jpegs: dict[int, bytes] = {}  # encoding the frame is the client's work, not the backend's

        def pre(frame: np.ndarray) -> np.ndarray:
            data = jpegs.get(id(frame))
            if data is None:
                data = jpegs[id(frame)] = encode_jpeg(frame)
                spec.transform.apply(data)  # warm-up: lazy imports, first-call allocations
            return spec.transform.apply(data)
    elif len(spec.input_shape) == 3 and spec.input_shape[0] == 3 and not name.endswith(".suffix"):
        def pre(frame: np.ndarray) -> np.ndarray:
            return models.preprocess_image(name, frame)
    dev = resolve_torch_device(device)  # a bad device fails before the model is built
    module = models.build(name, dev)
    return profile_module(module, spec.input_shape, device=device, batches=batches, repeats=repeats, warmup=warmup,
                          name=name, dtype=spec.dtype, threads=threads if dev.type == "cpu" else None,
                          preprocess=pre, postprocess=spec.post.apply if spec.post is not None else spec.postprocess,
                          progress=progress)

