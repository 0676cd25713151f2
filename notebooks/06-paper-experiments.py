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
# # Paper experiments in the simulator: Nexus against the baselines
#
# The paper's mixed video-analysis workload on simulated TITAN X GPUs. For each cluster size and policy: the
# largest request rate at which 99% of requests finish within their SLO (virtual time, seeded: reproducible).

# %%
import os

FAST = os.environ.get("NEXUS_LAB_FAST") == "1"  # CI: a short version of everything below
import plotly.graph_objects as go
from IPython.display import HTML
from nexus_lab.bench.paper import POLICIES, max_multiplier, paper_workload, user_rate
from nexus_lab.planner import plan_workload
from nexus_lab.widgets.figures import style

wl = paper_workload()
sizes = [16] if FAST else [16, 32, 64, 100]
policies = ["nexus", "batch-oblivious", "clipper"] if FAST else list(POLICIES)
duration, tol = (1.5, 0.15) if FAST else (8.0, 0.02)
print(len(wl.sessions), "sessions,", len(wl.queries), "queries;", round(user_rate(wl), 1), "req/s at 1x")

# %%
results = {}
for gpus in sizes:
    for policy in policies:
        r = max_multiplier(wl, lambda w, p=policy, g=gpus: plan_workload(w, p, gpus=g), duration_s=duration, tol=tol)
        results[(gpus, policy)] = r["max_rate"]
        print(f"{gpus:4d} GPUs {policy:16s} {r['max_rate']:9.1f} req/s")

# %%
fig = go.Figure()
for policy in policies:
    fig.add_bar(name=policy, x=[str(g) for g in sizes], y=[results[(g, policy)] for g in sizes])
style(fig, "Max throughput with 99% of requests within their SLO", x="cluster size (GPUs)", y="requests/s",
      barmode="group", height=380)

# %% [markdown]
# ## What the numbers say
# Each baseline against Nexus on the same cluster, with a sentence on why it lands where it does.

# %%
WHY = {
    "nexus": "packs sessions onto shared GPUs at the batch sizes their SLOs allow, and splits the query's SLO "
             "between its stages to need the fewest GPUs.",
    "batch-oblivious": "packs the same demands as Nexus but prices them as if batches did not shrink when a GPU is "
                       "shared, so its GPUs overflow, get split, and the cluster carries less.",
    "clipper": "gives every session GPUs of its own and grows each batch until it nears the SLO (adaptive "
               "batching); rarely used sessions hold whole GPUs at small batches.",
    "tf-serving": "also dedicates GPUs per session, with a fixed maximum batch and batching timeout chosen to meet "
                  "the SLO.",
    "triton": "also dedicates GPUs per session (dynamic batching with a maximum batch and a queue delay).",
}
SAME = ("{a} and {b} sustain the same rate: both dedicate GPUs to each session, and at the highest load that still "
        "meets the SLO both run full batches of the same largest size back to back, so the simulator sees the same "
        "capacity. They differ in how they batch below that load, not in this maximum.")


def fmt(v):
    return f"{v:,.0f}"


rows, notes = [], []
for g in sizes:
    base = results[(g, "nexus")]
    for p in policies:
        v = results[(g, p)]
        vs = "–" if p == "nexus" else (f"{base / v:.2f}x" if v > 0 else "–")
        rows.append(f"<tr><td>{g}</td><td>{p}</td><td style='text-align:right'>{fmt(v)}</td>"
                    f"<td style='text-align:right'>{vs}</td></tr>")
    others = [p for p in policies if p != "nexus"]
    for i, a in enumerate(others):
        for b in others[i + 1:]:
            if abs(results[(g, a)] - results[(g, b)]) <= 1e-9 * max(1.0, results[(g, a)]):
                notes.append(f"<li>At {g} GPUs: " + SAME.format(a=a, b=b) + "</li>")
best = {g: max((p for p in policies if p != "nexus"), key=lambda p: results[(g, p)]) for g in sizes}
summary = "".join(f"<li>At {g} GPUs Nexus sustains {fmt(results[(g, 'nexus')])} requests/s, "
                  f"{results[(g, 'nexus')] / max(results[(g, best[g])], 1e-9):.2f}x the best baseline "
                  f"({best[g]}, {fmt(results[(g, best[g])])} requests/s).</li>" for g in sizes)
why = "".join(f"<li><b>{p}</b> {WHY[p]}</li>" for p in policies if p in WHY)
HTML("<table><tr><th>GPUs</th><th>policy</th><th>max requests/s at 99% within SLO</th>"
     "<th>Nexus serves (x as much)</th></tr>" + "".join(rows) + "</table>"
     f"<ul>{summary}{''.join(notes)}</ul><ul>{why}</ul>")
