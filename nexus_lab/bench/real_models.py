"""Benchmark ``real-models``: torchvision models served on the cpu device and on a simulated GPU.

- ``goodput_over_raw``: ``torchvision:resnet18`` (224 x 224, JPEG requests decoded and resized on the backends'
  CPU threads) on 2 single-threaded CPU workers: the best goodput with >= 99% of requests within the SLO, over
  the raw batched torch throughput of the same job on the same 2 worker processes (``cpu-model``'s method and
  helpers: raw measured on both workers at once, a linear profile, a sweep of offered load). Both sides get the
  same input and do the same work: raw decodes and transforms the same JPEG, runs the forward pass and takes the
  top-k in a batched loop, as the served path does. A client sends a JPEG (28 KB here), not the 600 KB float
  tensor; raw on ready tensors would credit raw with the decoding the served path cannot skip
  (``raw_forward_only`` is reported too). The sweep steps 10% of raw from 0.5 until two points miss or no plan
  fits, then bisects the gap above the best point three times (1.25% of raw). Each run is 30 s (~1,000 requests
  near the edge, so 1% is ~10 requests, not one stall's worth), and each point is judged by the majority of up
  to 3 runs, each with its own arrivals (``majority_point``); raw is probed before each point and after the
  last, as ``cpu-model`` does.
  ``plan_ceiling``: the most the planner admits on 2 workers with the measured profile ((mean + std) x 1.15 per
  batch): goodput cannot pass it, so ``goodput_over_plan_ceiling`` says how close serving gets to what the plan
  provisions, and ``plan_ceiling_over_raw`` what the planner's margin costs.
- ``prefix_memory_over_separate``: the memory the cpu device holds for 4 fine-tuned resnet18 heads loaded as one
  shared backbone (prefix) plus 4 heads (suffixes), over the 4 loaded as separate models.
- ``prefix_goodput_over_separate``: the best goodput at >= 99% of the same 4 heads planned as one prefix group,
  over 4 separate models, each swept the same way.
- ``overlap_speedup``: JPEG requests to resnet18 on a simulated GPU: throughput with decoding, resizing and
  top-k made on 2 CPU threads beside the device (``runtime.backend.prepost``), over the same steps inline, in
  series with each batch; closed loop (saturating), 7 alternating pairs, the median. Each part's time is
  reported, with the speedup they predict.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from . import cluster_processes
from .cpu_model import linear_profile, measure_point
from .judging import majority_point, meets_slo

MODEL = "torchvision:resnet18"
SLO_MS = 1000.0  # resnet18 takes ~45 ms per image on one quiet core: room for batches of ~8, twice that when busy
BATCHES = (1, 2, 4, 8)
HEADS = 4
GROUP = "r18-heads"
#: The simulated GPU of ``overlap_speedup`` runs the shipped TITAN X (Pascal) profile of vgg_s, a network of
#: resnet18's cost there: 10.5 ms at batch 8. No resnet18 GPU profile is shipped, and the one published figure
#: found (jcjohnson/cnn-benchmarks: resnet-18 forward, batch 16 at 224 x 224, 16.97 ms on a Maxwell GTX TITAN X
#: with cuDNN 5.0.05, i.e. ~8.5 ms for 8 if linear, less on a Pascal) is one batch size on another card: too
#: little to derive a latency table from honestly. The speedup depends on device time against pre-processing
#: time, both reported.
SIM_PROFILE = "titan-x-pascal/vgg_s"


def frame_jpeg(seed: int = 0, size: tuple[int, int] = (240, 320)) -> bytes:
    """A synthetic camera frame (smooth gradients plus noise, so it compresses like a photo) as JPEG bytes."""
    from ..models.imaging import encode_jpeg

    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], axis=-1)
    return encode_jpeg(np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8))


def _time_model(model: str, batches: tuple[int, ...], seconds: float, payload: bytes | None = None
                ) -> dict[int, tuple[float, float, float]]:
    """Runs in a worker process, single-threaded: per batch size b, the mean and std (ms) of the forward pass of
    ``model`` (or a part of it), and the mean of the whole job the served path does for b requests: decode and
    transform ``payload`` b times, stack, forward, top-k (with no payload: zeros of the input shape, forward)."""
    import torch

    from ..models import zoo

    torch.set_num_threads(1)
    net = zoo.build(model, "cpu")
    spec = zoo.get_model_spec(model)
    out: dict[int, tuple[float, float, float]] = {}
    with torch.inference_mode():
        for b in batches:
            zeros = torch.zeros((b, *spec.input_shape), dtype=getattr(torch, spec.dtype))
            net(zeros)
            fwd: list[float] = []
            job: list[float] = []
            t_end = time.perf_counter() + seconds
            while time.perf_counter() < t_end or len(fwd) < 3:
                t0 = time.perf_counter()
                x = zeros if payload is None else torch.from_numpy(np.stack([spec.transform.apply(payload)
                                                                             for _ in range(b)]))
                t1 = time.perf_counter()
                y = net(x)
                t2 = time.perf_counter()
                if payload is not None and spec.post is not None:
                    [spec.post.apply(row) for row in y.numpy()]
                fwd.append(t2 - t1)
                job.append(time.perf_counter() - t0)
            out[b] = (float(np.mean(fwd)) * 1000.0, float(np.std(fwd)) * 1000.0, float(np.mean(job)) * 1000.0)
    return out


def probe_raw(ctl: Any, batch: int, payload: bytes, seconds: float) -> float:
    """The raw throughput of the whole job now, at one batch size: both workers at once for ``seconds``."""
    workers = sorted(ctl.client.scheduler_info()["workers"])
    timed = ctl.client.run(_time_model, MODEL, (batch,), seconds, payload, workers=workers)
    return float(sum(batch / (t[batch][2] / 1000.0) for t in timed.values()))


def _param_mb(model: str) -> float:
    """The memory a cpu device holds for ``model`` loaded (its parameters and buffers), MiB."""
    from ..runtime.device import make_device

    dev = make_device("cpu")
    dev.load(model, 1)
    mb = float(dev.memory_used_mb())
    dev.close()
    return mb


def _measured(ctl: Any, model: str, seconds: float, payload: bytes | None = None
              ) -> tuple[float, float, dict[str, Any], int]:
    """Both workers at once: the raw throughput of the whole job (decode, transform, forward, top-k of
    ``payload``; forward only without one), of the forward pass alone, and an inline profile of the forward pass
    (linear fit of the worst worker's means; memory: what the cpu device holds for the model), and the batch
    size of the best raw throughput."""
    workers = sorted(ctl.client.scheduler_info()["workers"])
    timed = ctl.client.run(_time_model, model, BATCHES, seconds, payload, workers=workers)
    raw = float(sum(max(b / (t[b][2] / 1000.0) for b in BATCHES) for t in timed.values()))
    fwd = float(sum(max(b / (t[b][0] / 1000.0) for b in BATCHES) for t in timed.values()))
    lat = {b: max(t[b][0] for t in timed.values()) for b in BATCHES}
    std = {b: max(t[b][1] for t in timed.values()) for b in BATCHES}
    best = max(BATCHES, key=lambda b: sum(b / t[b][2] for t in timed.values()))
    mb = _param_mb(model)
    return raw, fwd, {"latency_ms": linear_profile(lat), "std_ms": std, "memory_mb": {b: mb for b in BATCHES}}, best


def plan_ceiling(profile: dict[str, Any], gpus: int) -> float:
    """The most req/s the planner admits for ``MODEL`` on ``gpus`` with this inline profile: every GPU back to back
    at its most efficient batch ``b* <= B`` (``2 l(B) <= L' = SLO - pre - post - net``), where ``l(b)`` is the
    planner's latency, (mean + std) x the profiles' safety factor. Goodput at 99% cannot pass it, so it is reported
    beside the raw throughput: the gap between the two is the planner's margin, not serving overhead."""
    from ..planner.squishy import saturated_batch
    from ..profiles import load_profile

    p = load_profile(profile, MODEL)
    big = saturated_batch(p, p.budget_ms(SLO_MS), float("inf"))
    return gpus * max((b * 1000.0 / float(p.lat_ms[b]) for b in range(1, big + 1)), default=0.0)


def _pre_post_ms(model: str) -> dict[str, Any]:
    """This process's measured pre-processing (decode + transform of a JPEG frame) and top-k cost, for ``L'``."""
    from ..models import zoo

    spec = zoo.get_model_spec(model)
    jpeg, logits = frame_jpeg(), np.random.default_rng(0).normal(size=1000).astype(np.float32)
    spec.transform.apply(jpeg)

    def mean_ms(fn: Any, n: int = 20) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) * 1000.0 / n

    return {"preprocess_ms": {"mean": mean_ms(lambda: spec.transform.apply(jpeg)), "std": 0.0},
            "postprocess_ms": {"mean": mean_ms(lambda: spec.post.apply(logits)), "std": 0.0}}


def _point(ctl: Any, sessions: dict[str, str], raw: float, f: float, duration_s: float, payload: bytes,
           procs: list[Any], run: int = 0) -> dict[str, Any]:
    """Plan for ``f * raw`` req/s split over ``sessions`` and measure it (``cpu_model.measure_point``; ``run`` k
    offers the k-th arrival sequence of that load); a point with ``error`` where no plan serves that rate."""
    rates = {n: raw * f / len(sessions) for n in sessions}
    try:
        for n, r in rates.items():
            ctl.set_rate(n, r)
        plan = ctl.apply()
    except Exception as exc:  # no plan fits this rate
        return {"fraction_of_raw": f, "error": str(exc)[:300]}
    if plan.unserved:  # e.g. the measured l(1) leaves no batch within the budget
        return {"fraction_of_raw": f, "error": "; ".join(f"{u.session}: {u.reason}" for u in plan.unserved)}
    time.sleep(0.5)
    point = measure_point(ctl, rates, duration_s, int(f * 1000) + 100_000 * run, {n: payload for n in sessions},
                          procs)
    return {"fraction_of_raw": f, **point, "plan_gpus": plan.num_gpus,
            "batches": [a.batch for g in plan.gpus for a in g.allocations]}


def sweep(ctl: Any, sessions: dict[str, str], raw: float, fracs: tuple[float, ...], duration_s: float,
          payload: bytes, bisect: int = 0, raw_probe: Any = None, runs: int = 1
          ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """``cpu_model.nexus_sweep`` with this benchmark's SLO and JPEG payloads: offer ``f * raw`` split over
    ``sessions`` for each fraction f until two points miss 99% within the SLO (or no plan fits); then ``bisect``
    more points halve the gap between the highest point that met it and the lowest miss above it, so the edge
    is found to ``step / 2**bisect`` without a fine grid all the way. With ``raw_probe``, raw is measured again
    before each point and after the last (``raw_around``: the mean of the two around a point), as ``cpu-model``
    does: the shared host's speed drifts between points. Each point is judged by the majority of up to ``runs``
    runs (``majority_point``). The best point at >= 99%, and every point."""
    for name, model in sessions.items():
        if name not in ctl.editor.names():
            ctl.add_session(model, SLO_MS, rate=raw * fracs[0] / len(sessions), name=name)
    procs = cluster_processes(ctl.client)
    points: list[dict[str, Any]] = []
    probes: list[float] = []

    def measure(f: float) -> dict[str, Any]:
        if raw_probe is not None:
            probes.append(float(raw_probe()))
        tries = iter(range(runs))
        return majority_point(lambda: _point(ctl, sessions, raw, f, duration_s, payload, procs, run=next(tries)),
                              runs)

    misses = 0
    for f in fracs:
        points.append(measure(f))
        if "error" in points[-1]:
            break
        misses += not meets_slo(points[-1])
        if misses >= 2:
            break
    for _ in range(bisect):
        met = [p["fraction_of_raw"] for p in points if meets_slo(p)]
        lo = max(met, default=0.0)
        above = [p["fraction_of_raw"] for p in points if not meets_slo(p) and p["fraction_of_raw"] > lo]
        if not met or not above:
            break
        points.append(measure(round((lo + min(above)) / 2, 4)))
    if raw_probe is not None:
        probes.append(float(raw_probe()))
        for k, pt in enumerate(points):
            pt["raw_around"] = (probes[k] + probes[k + 1]) / 2.0
            if "goodput" in pt:
                pt["goodput_over_raw_around"] = pt["goodput"] / pt["raw_around"]
    ok = [x for x in points if meets_slo(x)]
    for name in sessions:
        ctl.remove(name)
    ctl.apply()
    return (max(ok, key=lambda x: x["goodput"]) if ok else None), points


def prefix_memory() -> dict[str, float]:
    """MiB the cpu device holds for the heads as separate models and as one prefix plus suffixes."""
    from ..runtime.device import make_device

    out = {}
    for how, names in (("separate", [f"head{k}" for k in range(HEADS)]),
                       ("prefix", [f"{GROUP}.prefix"] + [f"head{k}.suffix" for k in range(HEADS)])):
        dev = make_device("cpu")
        for n in names:
            dev.load(n, 1)
        out[how] = float(dev.memory_used_mb())
        dev.close()
    return out


def _stack(rows: list[tuple[bool, Any]]) -> np.ndarray:
    return np.stack([v for _, v in rows])


def _inline_run(dev: Any, spec: Any, jpegs: list[bytes], batches: int) -> tuple[float, dict[str, float]]:
    """Pre-processing, the device batch and top-k in series: requests/s and the mean ms of each part per batch."""
    from ..runtime.backend.prepost import post_rows, pre_rows

    spent = {"pre": 0.0, "device": 0.0, "post": 0.0}
    t0 = time.perf_counter()
    for _ in range(batches):
        a = time.perf_counter()
        x = _stack(pre_rows(spec.transform, jpegs))
        b = time.perf_counter()
        out = dev.run_batch(MODEL, x)
        c = time.perf_counter()
        post_rows(spec.post, out)
        spent["pre"] += b - a
        spent["device"] += c - b
        spent["post"] += time.perf_counter() - c
    rps = batches * len(jpegs) / (time.perf_counter() - t0)
    return rps, {k: v * 1000.0 / batches for k, v in spent.items()}


def _overlapped_run(dev: Any, spec: Any, jpegs: list[bytes], batches: int, pool: ThreadPoolExecutor,
                    threads: int) -> float:
    """The same work with pre- and post-processing on ``pool`` beside the device: pre of batch k+1 and post of
    batch k-1 run while the device runs batch k (as ``runtime.backend.prepost`` does); requests/s."""
    from ..runtime.backend.prepost import post_rows, pre_rows

    chunk = -(-len(jpegs) // threads)

    def submit_pre() -> list[Any]:
        return [pool.submit(pre_rows, spec.transform, jpegs[i:i + chunk]) for i in range(0, len(jpegs), chunk)]

    t0 = time.perf_counter()
    posts, nxt = [], submit_pre()
    for k in range(batches):
        x = _stack([r for f in nxt for r in f.result()])
        nxt = submit_pre() if k + 1 < batches else []
        out = dev.run_batch(MODEL, x)
        posts.append(pool.submit(post_rows, spec.post, out))
    for f in posts:
        f.result()
    return batches * len(jpegs) / (time.perf_counter() - t0)


def overlap(batches: int, batch: int, threads: int = 2, reps: int = 5) -> dict[str, Any]:
    """Requests per second through pre-processing, a simulated GPU batch and top-k, inline vs on ``threads`` CPU
    threads beside the device. Both run closed loop (the next batch starts as soon as it can: a saturating load,
    so throughput is what is measured), ``reps`` times each, alternating which goes first (a drift of the shared
    host's speed hits both alike); the speedup is the median over the pairs. Each part is timed in the inline
    runs, so the speedup to expect, ``(pre + device + post) / max((pre + post) / threads, device)``, is reported
    beside it (and with one free core for the pool, ``/ max(pre + post, device)``)."""
    from ..models import zoo
    from ..runtime.backend.prepost import single_threaded_ops
    from ..runtime.device import make_device

    single_threaded_ops()  # as the backend's pre/post threads run (both modes alike)
    spec = zoo.get_model_spec(MODEL)
    dev = make_device("simulated:titan-x-pascal")
    dev.register_profile(MODEL, SIM_PROFILE)
    dev.load(MODEL, batch)
    jpegs = [frame_jpeg(k) for k in range(batch)]
    inline, overlapped, parts = [], [], []
    with ThreadPoolExecutor(threads, initializer=single_threaded_ops) as pool:
        _inline_run(dev, spec, jpegs, 2)  # warm-up: decoder, resize kernels, the pool's threads
        _overlapped_run(dev, spec, jpegs, 2, pool, threads)
        for r in range(reps):
            for mode in (("inline", "overlapped") if r % 2 == 0 else ("overlapped", "inline")):
                if mode == "inline":
                    rps, spent = _inline_run(dev, spec, jpegs, batches)
                    inline.append(rps)
                    parts.append(spent)
                else:
                    overlapped.append(_overlapped_run(dev, spec, jpegs, batches, pool, threads))
    dev.close()
    ms = {k: statistics.median(p[k] for p in parts) for k in ("pre", "device", "post")}
    cpu = ms["pre"] + ms["post"]
    total = cpu + ms["device"]
    return {"inline_rps": statistics.median(inline), "overlapped_rps": statistics.median(overlapped),
            "speedup": statistics.median(o / i for o, i in zip(overlapped, inline, strict=True)),
            "inline_samples": inline, "overlapped_samples": overlapped,
            "pre_ms_per_batch": ms["pre"], "device_ms_per_batch": ms["device"], "post_ms_per_batch": ms["post"],
            "expected_speedup": total / max(cpu / threads, ms["device"]),
            "expected_speedup_one_core": total / max(cpu, ms["device"]),
            "batch": batch, "batches_per_run": batches, "reps": reps, "threads": threads}


def run(quick: bool = False) -> dict[str, Any]:
    """Serve resnet18 (and 4 fine-tuned heads) on 2 CPU workers; measure the overlap on a simulated GPU."""
    from ..controller import start
    from ..controller.models import declare_prefix
    from ..profiles import load_profile

    secs, dur, pdur = (0.5, 3.0, 3.0) if quick else (1.5, 30.0, 6.0)
    payload = frame_jpeg()
    ovl = overlap(10 if quick else 40, 8, reps=3 if quick else 7)
    ctl = start(gpus=2, device="cpu", auto=False, poll_s=1.0)
    try:
        ctl.add_model(MODEL)
        for k in range(HEADS):  # fine-tuned heads: one frozen backbone (the group's), a 10-class head each
            ctl.add_model(MODEL, f"head{k}", group=GROUP, num_classes=10)
            ctl.add_model(MODEL, f"sep{k}", num_classes=10)
        prepost = _pre_post_ms(MODEL)
        raw0, fwd0, prof, best_b = _measured(ctl, MODEL, secs, payload)
        ctl.editor.add_model(MODEL, {**prof, **prepost})
        ceiling = plan_ceiling({**prof, **prepost}, 2)
        fracs = (0.4, 0.6, 0.8) if quick else tuple(round(0.5 + 0.1 * k, 2) for k in range(6))
        samples = [raw0]

        def probe() -> float:
            samples.append(probe_raw(ctl, best_b, payload, secs))
            return samples[-1]

        best, points = sweep(ctl, {"resnet18": MODEL}, raw0, fracs, dur, payload, bisect=1 if quick else 3,
                             raw_probe=probe, runs=1 if quick else 3)
        raw1, fwd1, _, _ = _measured(ctl, MODEL, secs, payload)
        samples.append(raw1)
        # the host's speed drifts by tens of % over minutes (other work shares the 2 cores): raw is the median of
        # every measurement of the run, and each point is also set against the raw measured around it
        raw = statistics.median(samples)
        pre_prof = _measured(ctl, f"{GROUP}.prefix", secs)[2]
        suf_prof = _measured(ctl, "head0.suffix", secs)[2]
        for k in range(HEADS):
            ctl.editor.add_model(f"head{k}", {**prof, **prepost})
            ctl.editor.add_model(f"sep{k}", {**prof, **prepost})
            declare_prefix(ctl.editor, f"head{k}", GROUP, load_profile({**pre_prof, **prepost}, f"{GROUP}.prefix"),
                           load_profile({**suf_prof, "postprocess_ms": prepost["postprocess_ms"]}, f"head{k}.suffix"))
        pfracs = (0.2, 0.4) if quick else (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
        best_p, points_p = sweep(ctl, {f"p{k}": f"head{k}" for k in range(HEADS)}, raw, pfracs, pdur, payload)
        best_s, points_s = sweep(ctl, {f"s{k}": f"sep{k}" for k in range(HEADS)}, raw, pfracs, pdur, payload)
        mem = prefix_memory()
    finally:
        ctl.close()
    good = best["goodput"] if best else 0.0
    gp, gs = (best_p or {}).get("goodput", 0.0), (best_s or {}).get("goodput", 0.0)
    return {
        "benchmark": "real-models",
        "model": MODEL,
        "slo_ms": SLO_MS,
        "raw_throughput": raw,
        "raw_samples": samples,
        "raw_batch": best_b,
        "raw_forward_only": statistics.median([fwd0, fwd1]),
        "profile_fit_ms": prof["latency_ms"],
        "pre_post_ms": prepost,
        "goodput_at_99": good,
        "goodput_over_raw": good / raw if raw else None,
        "goodput_over_raw_around": best.get("goodput_over_raw_around") if best else None,
        "plan_ceiling": ceiling,
        "plan_ceiling_over_raw": ceiling / raw if raw else None,
        "goodput_over_plan_ceiling": good / ceiling if ceiling else None,
        "sweep": points,
        "prefix_memory_mb": mem,
        "prefix_memory_over_separate": mem["prefix"] / mem["separate"],
        "prefix_goodput": gp,
        "separate_goodput": gs,
        "prefix_goodput_over_separate": gp / gs if gs else None,
        "prefix_sweep": points_p,
        "separate_sweep": points_s,
        "overlap": ovl,
        "overlap_speedup": ovl["speedup"],
        "simulated_gpu_profile": SIM_PROFILE,
        "targets": {"goodput_over_raw": ">= 0.8", "prefix_memory_over_separate": "<= 0.5",
                    "overlap_speedup": ">= 1.2"},
        "note": "2 single-threaded CPU workers with JPEG requests; the load generator and frontend share the same "
                "2 cores. raw_throughput does the served path's work (decode, transform, forward, top-k) in a "
                "batched loop; raw_forward_only is forward passes alone. On a CPU the backbone costs the same per "
                "image whether it runs once for the group or once per model, so prefix batching saves memory "
                "there, not time.",
    }
