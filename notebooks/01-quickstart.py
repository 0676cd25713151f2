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
# # Quickstart: a live Nexus cluster in a notebook
#
# We start a local Dask cluster of four **simulated GPUs** (each worker waits as long as a TITAN X would take for
# the work it is given), deploy a few models, send them traffic, then watch and edit the cluster while it runs.
# The ideas behind the numbers (batching, duty cycles, latency budgets) come one at a time in notebooks 02 to 04.

# %%
import os

FAST = os.environ.get("NEXUS_LAB_FAST") == "1"  # CI: a short version of everything below
import threading
import time

import nexus_lab
from nexus_lab.widgets import dashboard, placement_editor, query_editor, slo_editor

# net_ms: the time each request may spend outside the GPU (network, and here Python on a busy laptop CPU): every
# SLO less this allowance is the GPU's budget. 60 ms keeps >= 99% of requests within their SLO on 2 cores with
# JupyterLab, the browser and the dashboard sharing them.
ctl = nexus_lab.start(gpus=4, device="simulated:titan-x-pascal", epoch_s=30, net_ms=60)

# %% [markdown]
# ## Deploy sessions and a query
# A **session** is one model answering requests within a latency objective (its **SLO**, in ms) at some rate
# (requests per second). A **query** chains models: here `detect` finds cars in a video frame and `car` classifies
# each one. The query has one SLO for the whole chain, which the planner splits between its stages.
# `apply()` decides which GPU runs what, at which batch size, and sends that plan to the workers.

# %%
ctl.add_session("vgg16", slo_ms=150, rate=60, name="classify")
ctl.add_session("vgg_face", slo_ms=200, rate=40, name="faces")
ctl.add_session("vgg_s", slo_ms=150, rate=50, name="scenes")
ctl.add_query("traffic", slo_ms=500, rate=5, stages=[
    {"name": "detect", "model": "yolo9000"},
    {"name": "car", "model": "vgg16", "parent": "detect", "gamma": 1.5},  # on average 1.5 cars per frame
])
plan = ctl.apply()
for g in plan.gpus:
    print(f"GPU {g.id} runs", ", ".join(f"{a.session} in batches of {a.batch}" for a in g.allocations))
ctl

# %% [markdown]
# ## Send traffic
# A background thread, so the cells below stay responsive, runs the load generator: random (Poisson) requests to
# the three sessions, and five video frames a second through the `traffic` query. Each frame runs as a small
# graph: `detect` first, then one `car` request per car it found, all of a frame's cars sent together so they
# share a batch; a frame counts as served within its SLO only when every one of its results is back in time.

# %%
LOAD_S = 20 if FAST else 900
stop_load = threading.Event()


def drive():
    seed = 0
    while not stop_load.is_set() and seed * 5 < LOAD_S:
        ctl.run_load({"classify": 60, "faces": 40, "scenes": 50, "traffic": 5}, 5.0, seed=seed)
        seed += 1


load = [threading.Thread(target=drive, name="quickstart-load", daemon=True)]
for t in load:
    t.start()

# %% [markdown]
# ## The dashboard
# It refreshes every second from a background thread. Top: how busy each GPU has been over the last minutes, and
# which sessions each GPU runs (each session's share of the GPU's repeating round of batches, its *duty cycle*,
# explained in notebook 02). Middle: requests served within the SLO against requests offered, and latency against
# the SLO; the row `traffic (end to end)` counts whole frames of the query (frames per second, and the time from a
# frame's arrival to its last result), next to a row per stage. Bottom: requests dropped (and why), and the last
# few rounds on each GPU, one bar per batch. A session has the same colour in every chart.

# %%
dash = dashboard(ctl)
dash

# %% [markdown]
# ## A query end to end
# The query's row as numbers: frames offered and frames served within the query's SLO per second, the share within
# it, and the time a whole frame took (median and 99th percentile). Run it again any time.

# %%
time.sleep(3)
row = next(q for q in ctl.state()["queries"] if q["name"] == "traffic")["end_to_end"]
print(f"traffic: {row['offered_rate'] or 0:.1f} frames/s offered, {row['goodput'] or 0:.1f} within its"
      f" {row['slo_ms']:.0f} ms SLO ({row['slo_attainment'] or 0:.1%}); p50 {row['latency_p50_ms'] or 0:.0f} ms,"
      f" p99 {row['latency_p99_ms'] or 0:.0f} ms")

# %% [markdown]
# ## Change an SLO live
# With code: tighten `classify` to 120 ms and apply. Or use the editor below: it shows how many GPUs the change
# needs and which sessions move before you press Apply, and says why when a value cannot work.

# %%
time.sleep(3)
ctl.set_slo("classify", 120)
plan = ctl.apply()
print(f"plan v{ctl.version}: {plan.num_gpus} GPUs")

# %%
slo_editor(ctl)

# %% [markdown]
# The query editor: the query's stages as a graph, the time each stage gets from the planner's split of the SLO,
# and what that costs in GPUs.

# %%
query_editor(ctl, "traffic")

# %% [markdown]
# The placement editor: move a session to another GPU, or change a batch or a GPU's duty cycle; every broken
# constraint is named as you edit. The plan keeps headroom for bursts (it is sized for up to twice every rate, so
# its GPUs look full); the editor shows how busy each GPU is at the real rates and judges your edit at them, so a
# move can use that headroom.

# %%
placement_editor(ctl)

# %% [markdown]
# ## When you are done
# `shutdown()` stops the traffic, the dashboard and the cluster (shutting the kernel down does the same). Unattended
# runs (CI, `NEXUS_LAB_FAST=1`) call it here; interactively the cluster keeps running so you can keep editing.

# %%
def shutdown():
    stop_load.set()
    for t in load:
        t.join()
    dash.close()
    ctl.close()


# %% [markdown]
# ## How well did it serve?
# The share of requests (sessions and query stages together) answered within their SLO over the last minute, as the
# goodput chart shows it. Run this cell again any time: on a laptop it stays at 99% or more.

# %%
if FAST:
    for t in load:
        t.join()  # the short run: let its traffic finish first
served = ctl.stats(60.0)["totals"]
print(f"Within SLO over the last minute: {served['slo_attainment']:.2%} of {served['requests']} requests")
frames = ctl.query_stats(60.0)["traffic"]
print(f"traffic end to end: {frames['slo_attainment']:.2%} of {frames['ended']} frames within"
      f" {frames['slo_ms']:.0f} ms")
if FAST:
    shutdown()
