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
# # A day of serving: the long-running deployment in virtual time
#
# The paper's section 7.5 ran Nexus on a 100-GPU cluster for hours of a changing load. Here the same experiment
# runs in virtual time: sessions whose rates follow a diurnal curve, with bursts, and sessions that users add and
# remove. Every epoch the controller's own rule (`planner.epoch_plan`, what the epoch loop calls) re-plans from the
# current plan, and each epoch's plan is sampled in the discrete-event simulator. The cluster is elastic: it has
# exactly the GPUs each plan needs.

# %%
import os

FAST = os.environ.get("NEXUS_LAB_FAST") == "1"  # CI: a short version of everything below
import plotly.graph_objects as go
from nexus_lab.planner.incremental import Band
from nexus_lab.sim.deployment import DeploymentSpec, run_deployment
from nexus_lab.widgets.figures import style

if FAST:
    spec = DeploymentSpec(hours=1.0, epoch_s=300.0, sample_s=0.5, sessions=20, peak_gpus=20.0,
                          band=Band(low=0.8, high=1.05))
else:
    spec = DeploymentSpec(hours=8.0, epoch_s=60.0, sample_s=2.0, sessions=60, peak_gpus=90.0,
                          band=Band(low=0.8, high=1.05))
result = run_deployment(spec)
{k: round(v, 4) if isinstance(v, float) else v for k, v in result.totals.items()}

# %% [markdown]
# ## Load, GPUs and the lower bound
# The GPUs the plan uses follow the load down as well as up; the gap to the lower bound (every request at its
# most efficient batch) is the headroom, the integer GPUs and the band that keeps the plan from flapping.

# %%
fig = go.Figure()
fig.add_scatter(x=result.t_h, y=result.gpus, name="GPUs planned", line_shape="hv")
fig.add_scatter(x=result.t_h, y=result.lower_bound, name="lower bound")
fig.add_scatter(x=result.t_h, y=[result.totals["peak_gpus"]] * len(result.t_h), name="fixed cluster (peak)",
                line={"dash": "dot"})
fig.add_scatter(x=result.t_h, y=result.offered, name="offered load (req/s)", yaxis="y2", opacity=0.5)
style(fig, "GPUs over a day of load", x="virtual time (h)", y="GPUs", height=380,
      yaxis2={"title": "requests/s", "overlaying": "y", "side": "right", "showgrid": False})

# %% [markdown]
# ## SLO violations and model loads
# Each epoch's share of sampled requests dropped or late, and the models each re-plan loaded.

# %%
share = result.violations / result.requests.clip(min=1)
fig = go.Figure()
fig.add_bar(x=result.t_h, y=share * 100, name="violations (%)")
fig.add_scatter(x=result.t_h, y=result.loads, name="model loads", yaxis="y2", mode="markers")
style(fig, "SLO violations and model loads per epoch", x="virtual time (h)", y="% of requests", height=340,
      yaxis2={"title": "loads", "overlaying": "y", "side": "right", "showgrid": False})

# %% [markdown]
# What to read: GPU-hours over the lower bound (the paper reports 84% of optimal utilisation), GPU-hours over a
# cluster sized for the peak (what an elastic cluster saves), and the violation rate (the paper: 0.27%).

# %%
t = result.totals
print(f"GPU-hours {t['gpu_hours']:.1f}: {t['gpu_hours_over_lower_bound']:.3f} x the lower bound, "
      f"{t['gpu_hours_over_fixed_peak']:.3f} x a fixed {t['peak_gpus']}-GPU cluster; "
      f"{100 * t['slo_violation_rate']:.3f}% of requests violated their SLO; "
      f"{t['model_loads_per_hour']:.1f} model loads per hour; epochs by mode {t['modes']}")
