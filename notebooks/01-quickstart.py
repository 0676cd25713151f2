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
from concurrent.futures import ThreadPoolExecutor

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
# Two background threads, so the cells below stay responsive: one sends random (Poisson) requests to the three
# sessions, the other sends five video frames a second through the `traffic` query.

# %%
from nexus_lab.runtime.loadgen import run_load

LOAD_S = 20 if FAST else 900
stop_load = threading.Event()


def drive_sessions():
    seed = 0
    while not stop_load.is_set() and seed * 5 < LOAD_S:
        run_load(ctl.frontend, {"classify": 60, "faces": 40, "scenes": 50}, 5.0, seed=seed)
        seed += 1


def drive_query(frames_per_s=5):
    end = time.monotonic() + LOAD_S
    with ThreadPoolExecutor(8, thread_name_prefix="quickstart-query") as pool:
        while not stop_load.is_set() and time.monotonic() < end:
            pool.submit(ctl.query, "traffic", None, 2.0)
            stop_load.wait(1 / frames_per_s)


load = [threading.Thread(target=f, name=f.__name__, daemon=True) for f in (drive_sessions, drive_query)]
for t in load:
    t.start()

# %% [markdown]
# ## The dashboard
# It refreshes every second from a background thread. Top: how busy each GPU has been over the last minutes, and
# which sessions each GPU runs (each session's share of the GPU's repeating round of batches, its *duty cycle*,
# explained in notebook 02). Middle: requests served within the SLO against requests offered, and latency against
# the SLO. Bottom: requests dropped (and why), and the last few rounds on each GPU, one bar per batch. A session
# has the same colour in every chart.

# %%
dash = dashboard(ctl)
dash

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
if FAST:
    shutdown()
