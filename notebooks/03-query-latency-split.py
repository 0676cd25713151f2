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
# # Splitting a query's SLO across its stages
#
# A query (here `detect`, then `car` and `face` on what it found) has one end-to-end SLO. How it is split into
# per-stage **budgets** changes the GPU bill: a stage with more time can run larger, more efficient batches. The
# planner's dynamic program (**DP split**) picks the split that needs the fewest GPUs; the **even split** gives
# every stage on a path the same time. `gamma` (the *fan-out*) is how many requests one parent request makes for
# a stage: 1.5 cars per frame, 0.5 faces per frame.

# %%
import os

FAST = os.environ.get("NEXUS_LAB_FAST") == "1"  # CI: a short version of everything below
import plotly.graph_objects as go
from nexus_lab.controller.edits import base_workload
from nexus_lab.planner import plan_workload
from nexus_lab.widgets.figures import style
from nexus_lab.widgets.logic import preview_query

wl, pset = base_workload("simulated:titan-x-pascal")
stages = [{"name": "detect", "model": "yolo9000"},
          {"name": "car", "model": "vgg16", "parent": "detect", "gamma": 1.5},
          {"name": "face", "model": "vgg_face", "parent": "detect", "gamma": 0.5}]
pv = preview_query(wl, "traffic", 400, stages, rate=40, profile_set=pset)
for n in pv.budgets:
    print(f"{n:7s} DP split {pv.budgets[n]:6.1f} ms   even split {pv.even_budgets[n]:6.1f} ms")

# %%
fig = go.Figure()
for label, b in [("DP split", pv.budgets), ("even split", pv.even_budgets)]:
    fig.add_bar(name=label, x=list(b), y=list(b.values()))
style(fig, "Per-stage budgets for a 400 ms query", x="stage", y="budget (ms)", barmode="group", height=320)

# %% [markdown]
# ## The GPU bill across SLOs
# Solid lines: whole GPUs the planner needs; dotted: the fractional cost (the GPU time the stages use). At tight
# SLOs the even split cannot serve the query at all (one stage would get less than twice its batch-1 latency), so
# its lines start later: a missing point means "impossible", not "0 GPUs".

# %%
slos = [250, 300, 400, 500] if FAST else list(range(250, 801, 50))
rows = []
for slo in slos:
    p = preview_query(wl, "traffic", slo, stages, rate=40, profile_set=pset)
    if not p.ok:
        continue
    planned = {}
    for split, cost in (("dp", p.gpu_cost), ("even", p.even_gpu_cost)):
        plan = plan_workload(p.workload, split=split)
        planned[split] = None if cost is None or plan.unserved else plan.num_gpus
    rows.append((slo, p.gpu_cost, p.even_gpu_cost, planned["dp"], planned["even"]))
x = [r[0] for r in rows]
fig = go.Figure()
fig.add_scatter(x=x, y=[r[3] for r in rows], name="DP split: GPUs planned", mode="lines+markers",
                line={"color": "#1f77b4"})
fig.add_scatter(x=x, y=[r[4] for r in rows], name="even split: GPUs planned", mode="lines+markers",
                line={"color": "#ff7f0e"})
fig.add_scatter(x=x, y=[r[1] for r in rows], name="DP split: fractional", line={"color": "#1f77b4", "dash": "dot"})
fig.add_scatter(x=x, y=[r[2] for r in rows], name="even split: fractional", line={"color": "#ff7f0e", "dash": "dot"})
impossible = [r[0] for r in rows if r[4] is None]
if impossible:
    print("the even split cannot serve the query at", ", ".join(f"{s} ms" for s in impossible))
style(fig, "GPUs for the traffic query at 40 frames/s", x="end-to-end SLO (ms)", y="GPUs", height=380)

# %% [markdown]
# The editor below does the same interactively: rename, add or remove stages, change a model, a fan-out or the
# SLO, and watch the budgets. It runs on a simulated cluster (`SimController`), so Apply deploys there.

# %%
from nexus_lab.widgets import SimController, query_editor

sim = SimController(gpus=8)
sim.add_query("traffic", 400, stages, rate=40)
sim.apply()
query_editor(sim)
