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
# # Real models on this machine's CPU
#
# Profile a torch model of the zoo here (how long a batch of each size takes), then serve it on a local cluster
# whose workers run real forward passes on the CPU, and watch the dashboard.

# %%
import os

FAST = os.environ.get("NEXUS_LAB_FAST") == "1"  # CI: a short version of everything below
import nexus_lab
import plotly.graph_objects as go
from nexus_lab.runtime.profiler import profile_builtin
from nexus_lab.widgets import dashboard
from nexus_lab.widgets.figures import style

model = "tiny"
prof = profile_builtin(model, device="cpu", batches=(1, 2, 4, 8) if FAST else (1, 2, 4, 8, 16, 32),
                       repeats=3 if FAST else 10, progress=False)
fig = go.Figure(go.Scatter(x=[int(b) for b in prof.batches], y=[float(v) / 1000 for v in prof.latency_us],
                           mode="lines+markers", name=model, showlegend=False))
style(fig, f"{model} on this CPU: time per batch", x="batch size (requests)", y="latency (ms)", height=300)

# %% [markdown]
# The planner sizes batches with the profile just measured; the dashboard shows the cluster live.

# %%
ctl = nexus_lab.start(gpus=2, device="cpu", epoch_s=30)
ctl.editor.add_model(model, prof)
ctl.add_session(model, slo_ms=200, rate=50, name="tiny")
plan = ctl.apply()
dash = dashboard(ctl)
dash

# %% [markdown]
# Now 50 requests/s of traffic for a minute (five seconds in CI); the summary counts what came back in time.

# %%
from nexus_lab.runtime.loadgen import run_load

report = run_load(ctl.frontend, {"tiny": 50}, 5.0 if FAST else 60.0, seed=0)
r = report["sessions"]["tiny"]
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
