# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Real models on this machine's CPU
#
# A torchvision network, served the way Nexus serves it: a **model repository** says what the model is and how its
# inputs are prepared; the **profiler** measures it here; the planner sizes its batches from that profile; the
# workers decode and resize JPEG images on CPU threads beside the model and answer with top-k class names.
#
# No download: the network gets seeded random weights (`weights: DEFAULT` in its config would fetch the pretrained
# ones through torchvision's cache on a machine that is online), and the images are made right here.

# %%
import os
import tempfile
from pathlib import Path

FAST = os.environ.get("NEXUS_LAB_FAST") == "1"  # CI: a short version of everything below
import nexus_lab
import numpy as np
import plotly.graph_objects as go
from nexus_lab.models.imaging import encode_jpeg
from nexus_lab.models.repository import load_repository, register_config, store_profile
from nexus_lab.profiles import load_profile
from nexus_lab.runtime.profiler import profile_builtin
from nexus_lab.widgets import dashboard
from nexus_lab.widgets.figures import style

repo = Path(tempfile.mkdtemp(prefix="nexus-models-"))
(repo / "mobilenet").mkdir()
(repo / "mobilenet" / "config.yaml").write_text(
    "source: torchvision:mobilenet_v3_small\n"
    "input: {shape: [3, 224, 224]}\n"
    "preprocess: auto          # the weights' own: resize 256, centre-crop 224, ImageNet mean/std\n"
    "topk: 3\n")
print((repo / "mobilenet" / "config.yaml").read_text())

# %% [markdown]
# ## Profile it here, next to the GPU profiles Nexus measured
# `nexus-lab profile mobilenet --models REPO --out REPO` does the same from a shell: latency per batch size,
# memory, and the cost of pre-processing (decoding a JPEG, resizing, normalising) and post-processing (top-k).
# The profile is written beside the config, where the planner finds it.

# %%
for cfg in load_repository(repo):
    register_config(cfg)
prof = profile_builtin("mobilenet", device="cpu", batches=(1, 2, 4, 8) if FAST else (1, 2, 4, 8, 16, 32),
                       repeats=3 if FAST else 10, progress=False)
print("stored as", store_profile(repo, "mobilenet", prof).relative_to(repo))
titan = {m: load_profile(f"titan-x-pascal/{m}") for m in ("vgg_s", "vgg16")}
fig = go.Figure()
for name, p in [("mobilenet_v3_small, this CPU (1 thread)", prof)] + [(f"{m}, TITAN X", p) for m, p in titan.items()]:
    top = min(int(p.max_batch), int(prof.max_batch))
    b = np.arange(1, top + 1)
    fig.add_scatter(x=b, y=np.asarray(p.mean_ms[1:top + 1]) / b, mode="lines+markers", name=name)
style(fig, "Time per request at each batch size", x="batch size (requests)", y="ms per request", height=320)

# %%
print(f"pre-processing {prof.preprocess_ms:.2f} ms and post-processing {prof.postprocess_ms:.2f} ms per request, "
      f"on the worker's CPU threads; a batch of 8 takes {prof.latency_ms(min(8, prof.max_batch)):.1f} ms (planned)")

# %% [markdown]
# A GPU gets more from a batch: a TITAN X runs vgg16 about 4x cheaper per request at batch 32 than alone. On one
# CPU core a batch saves far less, so the planner picks smaller batches here for the same SLO.
#
# ## Serve it
# `start(models=REPO)` makes every model of the repository known on every worker (and on any worker that joins
# later); the stored profile is the planner's.

# %%
ctl = nexus_lab.start(gpus=2, device="cpu", epoch_s=30, models=str(repo))
ctl.add_session("mobilenet", slo_ms=300, rate=20, name="cls")
plan = ctl.apply()
print("planned batch per GPU:", [a.batch for g in plan.gpus for a in g.allocations])
dash = dashboard(ctl)
dash

# %% [markdown]
# ## Images made here, sent as JPEG bytes
# Each request carries a JPEG; the backend decodes it and prepares the input on its CPU threads, runs the batch,
# and makes the top-3 labels. With random weights the labels mean nothing, but every step is the real one.

# %%
def frame(seed: int) -> np.ndarray:
    """A 240 x 320 'camera frame': gradients, a bright square and some noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:240, 0:320]
    img = np.stack([xx * 255 / 320, yy * 255 / 240, np.full_like(xx, 80.0)], axis=-1)
    x0, y0 = rng.integers(0, 200), rng.integers(0, 120)
    img[y0:y0 + 100, x0:x0 + 100] = rng.integers(0, 256, 3)
    return np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)


from nexus_lab.runtime.results import Dropped

jpegs = [encode_jpeg(frame(k)) for k in range(8)]
print(f"JPEG sizes: {[len(j) for j in jpegs]} bytes")
labels = []
for _ in range(3):  # a request ends as a result or an explicit drop: on a busy host the first may miss its SLO
    try:
        labels = ctl.infer("cls", jpegs[0], timeout_s=30)
        break
    except Dropped as exc:
        print(f"dropped ({exc.reason}): the host was too busy to answer within the SLO; sending it again")
for label in labels:
    print(f"{label['label']:>28}  {label['score']:.4f}")
print("weights warnings:", ctl.state()["cluster"]["model_warnings"] or "none")

# %% [markdown]
# Now 20 requests/s of JPEG traffic for a minute (five seconds in CI).

# %%
from nexus_lab.runtime.loadgen import run_load

report = run_load(ctl.frontend, {"cls": 20}, 5.0 if FAST else 60.0, seed=0, payloads={"cls": jpegs[1]})
r = report["sessions"]["cls"]
ms = lambda v: "–" if v is None else f"{v:.1f} ms"  # noqa: E731
print(f"offered {r['offered']} requests ({r['offered_rate']:.1f}/s): {r['within_slo']} answered within the SLO, "
      f"{sum(r['dropped'].values())} dropped, {r['failed']} failed; latency p50 {ms(r['p50_ms'])}, "
      f"p99 {ms(r['p99_ms'])}")

# %% [markdown]
# ## When you are done
# `shutdown()` closes the dashboard and the cluster (shutting the kernel down does the same). Unattended runs (CI,
# `NEXUS_LAB_FAST=1`) call it here; interactively the dashboard stays live.

# %%
def shutdown():
    dash.close()
    ctl.close()


if FAST:
    shutdown()
