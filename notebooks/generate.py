"""Writes the notebooks of this folder (outputs cleared) from the cell sources below: `python notebooks/generate.py`.

Only nbformat; the notebooks themselves use nexus_lab's public API.
"""

from __future__ import annotations

from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).resolve().parent

SETUP = """import os
FAST = os.environ.get("NEXUS_LAB_FAST") == "1"  # CI: a short version of everything below"""


def md(text: str) -> nbf.NotebookNode:
    return nbf.v4.new_markdown_cell(text.strip())


def code(text: str) -> nbf.NotebookNode:
    return nbf.v4.new_code_cell(text.strip())


QUICKSTART = [
    md("""
# Quickstart: a live Nexus cluster in a notebook

We start a local Dask cluster of **simulated GPUs** (each worker sleeps for the profiled batch latency of a TITAN X),
deploy a few sessions and a query, open the live dashboard and change an SLO while it runs.
"""),
    code(SETUP + """
import threading
import nexus_lab
from nexus_lab.report import plan_report
from nexus_lab.widgets import dashboard, placement_editor, query_editor, slo_editor

ctl = nexus_lab.start(gpus=4, device="simulated:titan-x-pascal", epoch_s=30)
ctl"""),
    md("""
## Deploy sessions and a query
A **session** is a model with a latency SLO; a **query** is a DAG of models sharing one end-to-end SLO, split into
per-stage budgets by the planner. `apply()` plans (squishy bin packing) and pushes the plan to the workers.
"""),
    code("""
ctl.add_session("vgg16", slo_ms=100, rate=120, name="classify")
ctl.add_session("vgg_face", slo_ms=150, rate=80, name="faces")
ctl.add_session("vgg_s", slo_ms=60, rate=100, name="scenes")
ctl.add_query("traffic", slo_ms=400, rate=10, stages=[
    {"name": "detect", "model": "yolo9000"},
    {"name": "car", "model": "vgg16", "parent": "detect", "gamma": 1.5},
])
plan = ctl.apply()
print(plan_report(plan))"""),
    md("## Send traffic (in a background thread, so cells stay responsive)"),
    code("""
from nexus_lab.runtime.loadgen import run_load

LOAD_S = 20 if FAST else 900
stop_load = threading.Event()

def drive():
    rates = {"classify": 120, "faces": 80, "scenes": 100}
    seed = 0
    while not stop_load.is_set() and seed * 5 < LOAD_S:
        run_load(ctl.frontend, rates, 5.0, seed=seed)
        seed += 1

load = threading.Thread(target=drive, name="quickstart-load", daemon=True)
load.start()"""),
    md("""
## The dashboard
Utilization per GPU over time, goodput against the offered rate, latency against the SLO, drops by reason, the
last duty cycles (one lane per GPU, one bar per batch) and the placement (each session's share of its GPU's duty
cycle). It refreshes every second from a background thread.
"""),
    code("""
dash = dashboard(ctl)
dash"""),
    md("""
## Change an SLO live
With code: tighten `classify` to 60 ms and apply; or use the editor below (it previews the GPUs before → after and
which sessions move, and refuses invalid values with the reason).
"""),
    code("""
import time
time.sleep(3)
ctl.set_slo("classify", 60)
plan = ctl.apply()
print(plan_report(plan))"""),
    code("""
slo_editor(ctl)"""),
    md("The query editor: the DAG, each stage's budget from the planner's split, and the GPUs it costs."),
    code("""
query_editor(ctl, "traffic")"""),
    md("The placement editor: move a session or change a batch; every violated constraint is named as you edit."),
    code("""
placement_editor(ctl)"""),
    md("""
## When you are done
`shutdown()` stops the traffic, the dashboard and the cluster (shutting the kernel down does the same). Unattended
runs (CI, `NEXUS_LAB_FAST=1`) call it here; interactively the cluster keeps running so you can keep editing.
"""),
    code("""
def shutdown():
    stop_load.set()
    load.join()
    dash.close()
    ctl.close()

if FAST:
    shutdown()"""),
]

SQUISHY = [
    md("""
# Squishy bin packing, step by step

Nexus packs sessions onto GPUs knowing that a GPU's throughput depends on its **batch size**: batches are
"squishy" items whose size (latency share of a duty cycle) changes with how they are batched.
"""),
    code(SETUP + """
import numpy as np
import plotly.graph_objects as go
from nexus_lab.controller.edits import WorkloadEditor, base_workload
from nexus_lab.planner import demands, plan_workload
from nexus_lab.planner.squishy import split_saturated, squishy_pack, saturated_batch
from nexus_lab.planner.baselines import batch_oblivious_pack
from nexus_lab.report import plan_report
from nexus_lab.widgets.logic import placement_segments, gantt_bars
from nexus_lab.widgets.figures import static_placement, static_gantt
from nexus_lab.sim import simulate

wl, pset = base_workload("simulated:titan-x-pascal")
ed = WorkloadEditor.from_workload(wl, pset)
for model, slo, rate in [("vgg16", 100, 500), ("vgg_face", 150, 90), ("vgg_s", 60, 120), ("yolo9000", 300, 20)]:
    ed.add_session(model, slo, rate)
wl = ed.workload()
[s.name for s in wl.sessions]"""),
    md("""
## 1. Batch profiles
Latency `l(b)` grows sub-linearly with the batch `b`, so throughput `b / l(b)` grows with it: batching pays.
"""),
    code("""
fig = go.Figure()
for name, m in wl.models.items():
    p = m.profile
    b = np.arange(1, min(p.max_batch, 64) + 1)
    fig.add_scatter(x=b, y=p.lat_ms[b], name=f"{name} l(b) ms")
fig.update_layout(title="Batch latency profiles (TITAN X)", xaxis_title="batch", yaxis_title="ms", height=350)
fig"""),
    md("""
## 2. Saturated vs residual load
Each session's budget `L'` caps the batch (a request may wait one duty cycle and then run: `d + l(b) <= L'`).
Whole GPUs run at the **saturated** batch; what is left (the **residual**) gets a GPU of its own to start with.
"""),
    code("""
dms = demands(wl)
full, residuals, unserved = split_saturated(dms, wl.device.memory_mb)
for d in dms:
    print(f"{d.session.session:14s} budget {d.budget_ms:6.1f} ms  saturated batch "
          f"{saturated_batch(d.profile, d.budget_ms, wl.device.memory_mb)}")
print(f"{len(full)} saturated GPUs")
for r in residuals:
    print(f"residual of {dms[r.index].session.session}: {r.rate:.0f} req/s, batch {r.batch}, "
          f"duty cycle {r.duty_ms:.1f} ms, occupancy {r.occupancy:.0%}")"""),
    md("""
## 3. Merging residuals
Residual GPUs are merged when the busier one's batches fit in the other's duty cycle after shrinking it (each
session's batch shrinks with the shorter cycle): fewer, fuller GPUs.
"""),
    code("""
gpus, _ = squishy_pack(dms, wl.device.memory_mb)
plan = plan_workload(wl)
print(plan_report(plan))
static_placement(placement_segments(plan, wl), [(g.id, g.occupancy) for g in plan.gpus],
                 title=f"Nexus placement: {plan.num_gpus} GPUs (lower bound {plan.lower_bound_gpus:.2f})")"""),
    md("## 4. The duty cycle in action (simulated)"),
    code("""
res = simulate(plan, wl, duration_s=2.0 if FAST else 10.0, seed=0, trace=True)
window = 3 * max(g.duty_cycle_ms for g in plan.gpus) / 1000  # three of the longest duty cycles, in steady state
lanes = {}
for r in res.trace:
    if 1.0 <= r.start_s < 1.0 + window:
        lanes.setdefault(f"GPU {r.gpu}", []).append(r)
static_gantt(gantt_bars(lanes), title="Three duty cycles: one bar per batch, coloured by session (hover: batch)")"""),
    md("""
## 5. Against the batch-oblivious baseline
The same demands packed by rate alone, each at its largest SLO-feasible batch, needs more GPUs.
"""),
    code("""
oblivious = plan_workload(wl, "batch-oblivious")
sims = {name: simulate(p, wl, duration_s=2.0 if FAST else 10.0, seed=1).to_dict()["totals"]
        for name, p in [("nexus", plan), ("batch-oblivious", oblivious)]}
fig = go.Figure(go.Bar(x=list(sims), y=[plan.num_gpus, oblivious.num_gpus],
                       text=[f"SLO attainment {s['slo_attainment']:.1%}" for s in sims.values()]))
fig.update_layout(title="GPUs needed for the same workload", yaxis_title="GPUs", height=320)
fig"""),
]

QUERY = [
    md("""
# Splitting a query's SLO across its DAG

A query (detect → car, face) has one end-to-end SLO. How it is split into per-stage budgets changes the GPU bill:
the planner's dynamic program picks the split with the fewest GPUs; the even split gives every stage the same.
"""),
    code(SETUP + """
import plotly.graph_objects as go
from nexus_lab.controller.edits import WorkloadEditor, base_workload
from nexus_lab.planner import plan_workload
from nexus_lab.widgets.logic import preview_query

wl, pset = base_workload("simulated:titan-x-pascal")
stages = [{"name": "detect", "model": "yolo9000"},
          {"name": "car", "model": "vgg16", "parent": "detect", "gamma": 1.5},
          {"name": "face", "model": "vgg_face", "parent": "detect", "gamma": 0.5}]
pv = preview_query(wl, "traffic", 400, stages, rate=40, profile_set=pset)
pv.budgets, pv.even_budgets"""),
    code("""
fig = go.Figure()
for label, b in [("DP split", pv.budgets), ("even split", pv.even_budgets)]:
    fig.add_bar(name=label, x=list(b), y=list(b.values()))
fig.update_layout(title="Per-stage budgets (ms) for a 400 ms query", barmode="group", height=320)
fig"""),
    md("## The GPU bill across SLOs"),
    code("""
slos = [300, 400, 500] if FAST else list(range(250, 801, 50))
rows = []
for slo in slos:
    p = preview_query(wl, "traffic", slo, stages, rate=40, profile_set=pset)
    if not p.ok:
        continue
    gpus = {split: plan_workload(p.workload, split=split).num_gpus for split in ("dp", "even")}
    rows.append((slo, p.gpu_cost, p.even_gpu_cost, gpus["dp"], gpus["even"]))
fig = go.Figure()
fig.add_scatter(x=[r[0] for r in rows], y=[r[3] for r in rows], name="DP split: GPUs planned", mode="lines+markers")
fig.add_scatter(x=[r[0] for r in rows], y=[r[4] for r in rows], name="even split: GPUs planned", mode="lines+markers")
fig.add_scatter(x=[r[0] for r in rows], y=[r[1] for r in rows], name="DP split: fractional cost", line_dash="dot")
fig.add_scatter(x=[r[0] for r in rows], y=[r[2] for r in rows], name="even split: fractional cost", line_dash="dot")
fig.update_layout(title="GPUs for the traffic query at 40 frames/s", xaxis_title="end-to-end SLO (ms)",
                  yaxis_title="GPUs", height=380)
fig"""),
    md("The editor below does the same interactively: change stages, gammas or the SLO and watch the budgets."),
    code("""
from nexus_lab.widgets import SimController, query_editor
sim = SimController(gpus=8)
sim.add_query("traffic", 400, stages, rate=40)
sim.apply()
query_editor(sim)"""),
    code("sim.close()"),
]

PREFIX = [
    md("""
# Prefix batching on real torch models (CPU)

Fine-tuned variants of one network share their leading layers. Nexus runs the shared **prefix** once for the
requests of every variant (one batch, one copy in memory) and only the small **suffixes** separately.
"""),
    code(SETUP + """
import time
import numpy as np
import torch
import plotly.graph_objects as go
from nexus_lab.models import zoo
from nexus_lab.planner.prefix import shared_prefix_length

torch.set_num_threads(1)
group = "convnet"
members = zoo.prefix_groups()[group]
modules = [zoo.build(m) for m in members]
print(members, "share", shared_prefix_length(modules), "leading layers")"""),
    md("## Memory: one prefix copy instead of one per model"),
    code("""
def param_mb(module):
    return sum(p.numel() * p.element_size() for p in module.parameters()) / 2**20

prefix = zoo.build(f"{group}.prefix")
suffixes = [zoo.build(f"{m}.suffix") for m in members]
whole = sum(param_mb(m) for m in modules)
shared = param_mb(prefix) + sum(param_mb(s) for s in suffixes)
go.Figure(go.Bar(x=["without prefix batching", "with prefix batching"], y=[whole, shared])).update_layout(
    title="Weights held in memory (MB)", height=300)"""),
    md("## Throughput: a batch per model vs one prefix batch + per-model suffix slices"),
    code("""
shape = zoo.input_spec(members[0]).shape
batch = 8 if FAST else 16
x = torch.zeros((batch * len(members), *shape))
reps = 3 if FAST else 10

def best(fn):
    times = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return min(times)

with torch.inference_mode():
    t_without = best(lambda: [m(x[i * batch:(i + 1) * batch]) for i, m in enumerate(modules)])
    def with_prefix():
        feats = prefix(x)
        return [s(feats[i * batch:(i + 1) * batch]) for i, s in enumerate(suffixes)]
    t_with = best(with_prefix)
    # Same answers either way: prefix batching is an execution plan, not an approximation.
    ref = modules[0](x[:batch]); got = with_prefix()[0]
    assert torch.allclose(ref, got, atol=1e-5)
rates = {"without prefix batching": len(x) / t_without, "with prefix batching": len(x) / t_with}
go.Figure(go.Bar(x=list(rates), y=list(rates.values()))).update_layout(
    title=f"Requests/s on one CPU thread ({len(members)} models, batch {batch} each)", height=300)"""),
]

REAL = [
    md("""
# Real models on this machine's CPU

Profile a torch model of the zoo here (batch latency, memory, pre/post-processing), then serve it on a local
cluster whose workers run real forward passes on CPU, and watch the dashboard.
"""),
    code(SETUP + """
import threading, time
import plotly.graph_objects as go
import nexus_lab
from nexus_lab.runtime.profiler import profile_builtin
from nexus_lab.widgets import dashboard

model = "tiny"
prof = profile_builtin(model, device="cpu", batches=(1, 2, 4, 8) if FAST else (1, 2, 4, 8, 16, 32),
                       repeats=3 if FAST else 10, progress=False)
go.Figure(go.Scatter(x=list(prof.batches), y=list(prof.latency_us / 1000), mode="lines+markers")).update_layout(
    title=f"{model} on this CPU: batch latency (ms)", xaxis_title="batch", height=300)"""),
    code("""
ctl = nexus_lab.start(gpus=2, device="cpu", epoch_s=30)
ctl.editor.add_model(model, prof)  # the profile measured above is what the planner sizes batches with
ctl.add_session(model, slo_ms=200, rate=50, name="tiny")
plan = ctl.apply()
dash = dashboard(ctl)
dash"""),
    code("""
from nexus_lab.runtime.loadgen import run_load
report = run_load(ctl.frontend, {"tiny": 50}, 5.0 if FAST else 60.0, seed=0)
{k: v for k, v in report["sessions"]["tiny"].items() if k != "latencies_ms"}"""),
    code("""
dash.close()
ctl.close()"""),
]

PAPER = [
    md("""
# Paper experiments in the simulator: Nexus against the baselines

The paper's mixed video-analysis workload on simulated TITAN X GPUs. For each cluster size and policy, the
largest request rate at which 99% of requests finish within their SLO (virtual time, seeded: reproducible).
"""),
    code(SETUP + """
import plotly.graph_objects as go
from nexus_lab.bench.paper import POLICIES, max_multiplier, paper_workload, user_rate
from nexus_lab.planner import plan_workload

wl = paper_workload()
sizes = [16] if FAST else [16, 32, 64, 100]
policies = ["nexus", "batch-oblivious", "clipper"] if FAST else list(POLICIES)
duration, tol = (1.5, 0.15) if FAST else (8.0, 0.02)
print(len(wl.sessions), "sessions,", len(wl.queries), "queries;", round(user_rate(wl), 1), "req/s at 1x")"""),
    code("""
results = {}
for gpus in sizes:
    for policy in policies:
        r = max_multiplier(wl, lambda w, p=policy, g=gpus: plan_workload(w, p, gpus=g), duration_s=duration, tol=tol)
        results[(gpus, policy)] = r["max_rate"]
        print(f"{gpus:4d} GPUs {policy:16s} {r['max_rate']:9.1f} req/s")"""),
    code("""
fig = go.Figure()
for policy in policies:
    fig.add_bar(name=policy, x=[str(g) for g in sizes], y=[results[(g, policy)] for g in sizes])
fig.update_layout(title="Max throughput at 99% SLO attainment", xaxis_title="GPUs", yaxis_title="requests/s",
                  barmode="group", height=380)
fig"""),
    code("""
ratio = {g: results[(g, "nexus")] / max(results[(g, p)] for p in policies if p != "nexus") for g in sizes}
ratio"""),
]

NOTEBOOKS = {
    "01-quickstart.ipynb": QUICKSTART,
    "02-squishy-bin-packing.ipynb": SQUISHY,
    "03-query-latency-split.ipynb": QUERY,
    "04-prefix-batching.ipynb": PREFIX,
    "05-real-models-on-cpu.ipynb": REAL,
    "06-paper-experiments.ipynb": PAPER,
}


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        nb = nbf.v4.new_notebook()
        nb.cells = cells
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.metadata["language_info"] = {"name": "python"}
        nbf.write(nb, HERE / name)


if __name__ == "__main__":
    main()
