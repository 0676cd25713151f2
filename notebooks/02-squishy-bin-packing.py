# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Squishy bin packing, step by step
#
# Nexus packs sessions onto GPUs knowing that a GPU's throughput depends on its **batch size**: the items it packs
# are "squishy", because the share of a GPU a session needs changes with how large its batches are.
#
# Words used below:
# - **`l(b)`**: the time the GPU takes to run one batch of `b` requests (the model's *batch profile*).
# - **duty cycle**: a GPU shared by several sessions runs one batch of each in turn, round after round; one round
#   is its duty cycle (in ms). A session's **share** of the GPU is `l(b)` over the duty cycle.
# - **budget `L'`**: the part of a session's SLO left for the GPU once pre/post-processing and the network are
#   counted. A request may wait up to one duty cycle for its batch to start, then the batch runs, so the planner
#   keeps `duty cycle + l(b) <= L'`.

# %%
import os

FAST = os.environ.get("NEXUS_LAB_FAST") == "1"  # CI: a short version of everything below
import numpy as np
import plotly.graph_objects as go
from nexus_lab.controller.edits import WorkloadEditor, base_workload
from nexus_lab.planner import demands, plan_workload
from nexus_lab.planner.squishy import saturated_batch, split_saturated, squishy_pack
from nexus_lab.report import plan_report
from nexus_lab.sim import simulate
from nexus_lab.widgets.figures import session_colors, static_gantt, static_placement, style
from nexus_lab.widgets.logic import gantt_bars, placement_segments

wl, pset = base_workload("simulated:titan-x-pascal")
ed = WorkloadEditor.from_workload(wl, pset)
for model, slo, rate in [("vgg16", 100, 500), ("vgg_face", 150, 90), ("vgg_s", 60, 120), ("yolo9000", 300, 20)]:
    ed.add_session(model, slo, rate)
wl = ed.workload()
colors = session_colors(s.name for s in wl.sessions)  # one colour per session in every chart of this notebook
[s.name for s in wl.sessions]

# %% [markdown]
# ## 1. Batch profiles
# The latency `l(b)` grows much more slowly than the batch `b`, so the throughput `b / l(b)` grows with it:
# batching pays. `vgg16` and `vgg_face` share one architecture (VGG-16; only their weights differ), so their
# profiles differ by a few percent at most: the solid `vgg16` line and the dashed `vgg_face` line almost coincide.

# %%
fig = go.Figure()
dashes = {"vgg_face": "dash"}
for name, m in wl.models.items():
    p = m.profile
    b = np.arange(1, min(p.max_batch, 64) + 1)
    fig.add_scatter(x=b.tolist(), y=p.lat_ms[b].tolist(), name=name, mode="lines",
                    line={"dash": dashes.get(name, "solid"), "width": 3 if name == "vgg_face" else 2})
style(fig, "Batch latency l(b) on a TITAN X", x="batch size b (requests)", y="l(b) (ms)")

# %% [markdown]
# ## 2. Saturated vs residual load
# The budget `L'` caps the batch a session can use. A session busy enough to fill whole GPUs gets them, each
# running its largest batch that fits (the **saturated** batch); what is left over (the **residual** load) starts
# on a GPU of its own, at a smaller batch and a shorter duty cycle. *Occupancy* is the share of that GPU's duty
# cycle the residual uses.

# %%
dms = demands(wl)
full, residuals, unserved = split_saturated(dms, wl.device.memory_mb)
for d in dms:
    print(f"{d.session.session:14s} budget L' {d.budget_ms:6.1f} ms, saturated batch "
          f"{saturated_batch(d.profile, d.budget_ms, wl.device.memory_mb)}")
print(f"{len(full)} GPUs run a saturated batch")
for r in residuals:
    print(f"residual of {dms[r.index].session.session}: {r.rate:.0f} req/s in batches of {r.batch}, "
          f"duty cycle {r.duty_ms:.1f} ms, occupancy {r.occupancy:.0%}")

# %% [markdown]
# ## 3. Merging residuals
# Two residual GPUs are merged when one's batches fit into the other's duty cycle after shrinking it (every
# session's batch shrinks with the shorter round): fewer, fuller GPUs. The chart shows each GPU's duty cycle split
# between its sessions; the number above each GPU is its occupancy.

# %%
gpus, _ = squishy_pack(dms, wl.device.memory_mb)
plan = plan_workload(wl)
print(plan_report(plan))
static_placement(placement_segments(plan, wl), [(g.id, g.occupancy) for g in plan.gpus], colors=colors,
                 title=f"Nexus placement: {plan.num_gpus} GPUs (lower bound {plan.lower_bound_gpus:.2f})")

# %% [markdown]
# ## 4. The duty cycle in action (simulated)
# Three rounds of the longest duty cycle, in steady state: each GPU's lane shows one bar per batch, in the colour
# of its session (hover for the batch size). GPUs are listed in order, GPU 0 on top.

# %%
res = simulate(plan, wl, duration_s=2.0 if FAST else 10.0, seed=0, trace=True)
window = 3 * max(g.duty_cycle_ms for g in plan.gpus) / 1000  # three of the longest duty cycles
lanes = {}
for r in res.trace:
    if 1.0 <= r.start_s < 1.0 + window:
        lanes.setdefault(f"GPU {r.gpu}", []).append(r)
static_gantt(gantt_bars(lanes), lanes=[f"GPU {g.id}" for g in plan.gpus], colors=colors,
             title="Three duty cycles: one bar per batch, coloured by session")

# %% [markdown]
# ## 5. Against the batch-oblivious baseline
# The same demands packed by rate alone (as if a session's batch did not shrink when it shares a GPU) need more
# GPUs; the label on each bar is the share of requests served within their SLO in simulation.

# %%
oblivious = plan_workload(wl, "batch-oblivious")
sims = {name: simulate(p, wl, duration_s=2.0 if FAST else 10.0, seed=1).to_dict()["totals"]
        for name, p in [("nexus", plan), ("batch-oblivious", oblivious)]}
fig = go.Figure(go.Bar(x=list(sims), y=[plan.num_gpus, oblivious.num_gpus], marker_color=["#1f77b4", "#9e9e9e"],
                       text=[f"{s['slo_attainment']:.1%} within SLO" for s in sims.values()], showlegend=False))
style(fig, "GPUs needed for the same workload", x="policy", y="GPUs", height=320)
