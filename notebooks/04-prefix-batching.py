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
# # Prefix batching
#
# Fine-tuned variants of one network share their leading layers. Nexus runs the shared **prefix** once for the
# requests of every variant (one batch, one copy in memory) and only the small per-model **suffixes** separately.
# First what this buys on GPUs (planned with the TITAN X profiles, simulated), then what it does on this machine's
# CPU with real torch models, where the answer is different.

# %%
import os

FAST = os.environ.get("NEXUS_LAB_FAST") == "1"  # CI: a short version of everything below
import time

import plotly.graph_objects as go
import torch
from nexus_lab.bench.query import vgg16_variants_workload
from nexus_lab.models import zoo
from nexus_lab.planner import plan_workload
from nexus_lab.planner.prefix import shared_prefix_length
from nexus_lab.widgets.figures import style

# %% [markdown]
# ## On GPUs (TITAN X profiles, simulated)
# Eight fine-tuned `vgg16` variants, 20 requests/s each, SLO 100 ms. With prefix batching the planner holds one
# copy of the shared layers per GPU and batches the requests of all eight variants through it together; without
# it, each variant is a whole model with its own weights and its own (small) batches.

# %%
wl = vgg16_variants_workload(variants=8, rate=20, slo_ms=100)
on, off = plan_workload(wl), plan_workload(wl, prefix=False)
memory = {"without prefix batching": sum(g.memory_mb for g in off.gpus) / 1024,
          "with prefix batching": sum(g.memory_mb for g in on.gpus) / 1024}
gpus = {"without prefix batching": off.num_gpus, "with prefix batching": on.num_gpus}
print(f"GPUs: {off.num_gpus} without, {on.num_gpus} with prefix batching; GPU memory: "
      f"{memory['without prefix batching']:.1f} GB without, {memory['with prefix batching']:.1f} GB with")
fig = go.Figure([go.Bar(name="GPUs", x=list(gpus), y=list(gpus.values()), marker_color="#1f77b4"),
                 go.Bar(name="GPU memory (GB)", x=list(memory), y=list(memory.values()), marker_color="#ff7f0e")])
style(fig, "8 vgg16 variants on TITAN X GPUs (planned)", x="", y="GPUs / GB", barmode="group", height=320)

# %% [markdown]
# ## On this CPU, with real torch models
# The zoo's `convnet` variants share their leading layers; we build them and check that.

# %%
torch.set_num_threads(1)
group = "convnet"
members = zoo.prefix_groups()[group]
modules = [zoo.build(m) for m in members]
print(members, "share", shared_prefix_length(modules), "leading layers")

# %% [markdown]
# ### Memory: one prefix copy instead of one per model

# %%
def param_mb(module):
    return sum(p.numel() * p.element_size() for p in module.parameters()) / 2**20

prefix = zoo.build(f"{group}.prefix")
suffixes = [zoo.build(f"{m}.suffix") for m in members]
whole = sum(param_mb(m) for m in modules)
shared = param_mb(prefix) + sum(param_mb(s) for s in suffixes)
fig = go.Figure(go.Bar(x=["without prefix batching", "with prefix batching"], y=[whole, shared], showlegend=False,
                       marker_color=["#9e9e9e", "#2ca02c"], text=[f"{whole:.2f} MB", f"{shared:.2f} MB"]))
style(fig, "Weights held in memory", x="", y="MB", height=300)

# %% [markdown]
# ### Throughput: a batch per model vs one prefix batch and per-model suffix slices
# Same inputs, same answers (checked below): prefix batching is a way to execute, not an approximation.

# %%
shape = zoo.input_spec(members[0]).shape
batch = 8 if FAST else 16
x = torch.zeros((batch * len(members), *shape))
reps = 3 if FAST else 10

def best(fn):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)

with torch.inference_mode():
    t_without = best(lambda: [m(x[i * batch:(i + 1) * batch]) for i, m in enumerate(modules)])
    def with_prefix():
        feats = prefix(x)
        return [s(feats[i * batch:(i + 1) * batch]) for i, s in enumerate(suffixes)]
    t_with = best(with_prefix)
    assert torch.allclose(modules[0](x[:batch]), with_prefix()[0], atol=1e-5)
rates = {"without prefix batching": len(x) / t_without, "with prefix batching": len(x) / t_with}
fig = go.Figure(go.Bar(x=list(rates), y=list(rates.values()), showlegend=False, marker_color=["#9e9e9e", "#2ca02c"]))
style(fig, f"Requests/s on one CPU thread ({len(members)} models, batch {batch} each)", x="", y="requests/s",
      height=300)

# %% [markdown]
# ### Why the CPU answer differs
# On a GPU, one batch of 32 through the prefix costs little more than one batch of 8: a GPU is wide, and small
# batches leave most of it idle. Merging the variants' batches is what saves GPU time (and GPUs, above). One CPU
# thread has no idle width to fill: a batch four times as large takes about four times as long, so running the
# prefix once for everyone saves no time, and slicing its output for the suffixes adds a little work. On a CPU the
# gain is memory; the throughput is measured, and may come out a little lower:

# %%
ratio = rates["with prefix batching"] / rates["without prefix batching"]
if ratio >= 1.05:
    verdict = f"prefix batching served {ratio:.2f}x as many requests per second"
elif ratio > 0.95:
    verdict = f"prefix batching served about as many requests per second ({ratio:.2f}x)"
else:
    verdict = (f"prefix batching served fewer requests per second ({ratio:.2f}x): the merged prefix batch saved "
               "no compute, and slicing it cost a little")
print(f"On this CPU {verdict}; it held {whole / shared:.1f}x less weight memory.")
