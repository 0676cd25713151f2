"""Benchmark ``queries``: queries end to end, as asynchronous DAGs in the runtime and in virtual time.

- ``sim_query_attainment``, ``dp_over_even_max_rate``: the simulator's figures (``queries_sim``).
- ``runtime_query_attainment``: the same TRAFFIC and JOIN queries (``queries_sim``, their relative rates) on a real
  ``LocalCluster`` of 8 simulated TITAN X GPUs (``simulated:titan-x-pascal``), planned by the controller (with the
  runtime's network allowance, ``RUNTIME_NET_MS``, so a little less than ``queries_sim.shared_case``'s rates) at the
  rates that fill 8 GPUs and driven at 80% of them by the load generator (``Controller.run_load``: one frame per
  arrival, each an asynchronous DAG on the frontend's loop, children drawn Poisson(gamma) per parent item by
  ``FanoutCrop``, the simulator's distribution): the share of offered frames whose every request finished within
  the query's SLO, the lower of the two queries.
- ``query_runtime_over_sim``: frames within SLO per second in the runtime over the simulator's for the same plan,
  workload and frames: one seeded Poisson draw of each query's frame arrivals is replayed by both (the load
  generator's and the simulator's ``trace`` arrivals), both queries together.
- ``fanout_parallel_ratio``: a query whose root (vgg_s) fans out to exactly 16 children (vgg16) per frame, frames
  one at a time on the same cluster after the load. Per frame: the frame's end-to-end latency (from its start to
  its last child's reply, the root included) over its slowest child's own latency (from that child's hand-over to
  the frontend to its reply); the median over the frames that completed. Children dispatched together and batched
  give ~1 (the frame lasts its cheap root plus its slowest child); sending them one after another would give
  ~16. Also reported: ``fanout_stage_over_slowest_child`` (the same without the root: the fan-out stage's span
  from the children's hand-over to the last reply) and ``fanout_stage_over_lone_child`` (that span over a lone
  child's latency, frames with one child: what a batch of 16 costs over a batch of 1, for information).

Drives the public controller, query runtime and load generator; no logic the runtime or simulator should own.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from typing import Any

from ..workload import Workload, load_workload

#: The fan-out probe: a cheap root, then 16 children of one model per frame.
FANOUT = {"name": "fanout", "slo_ms": 400, "rate": 2.0, "stages": [
    {"name": "root", "model": "vgg_s"}, {"name": "child", "model": "vgg16", "parent": "root", "gamma": 16.0}]}


def _queries_workload(queries: list[Mapping[str, Any]], net_ms: float) -> Workload:
    return load_workload({"queries": [dict(q) for q in queries], "net_ms": net_ms})


class _Timed:
    """A frontend seen through ``send_many``: records each request's hand-over and reply times per session."""

    def __init__(self, frontend: Any) -> None:
        self.fe = frontend
        self.log: list[tuple[str, float, float]] = []  # (session, handed over, answered)

    def run_on_loop(self, coro: Any) -> Any:
        return self.fe.run_on_loop(coro)

    def send_many(self, session: str, items: Any, on_done: Any, **kw: Any) -> None:
        sent = time.time()

        def wrap(cb: Any) -> Any:
            def done(status: str, value: Any) -> None:
                self.log.append((session, sent, time.time()))
                cb(status, value)

            return done

        self.fe.send_many(session, items, [wrap(cb) for cb in on_done], **kw)


def fanout_ratio(ctl: Any, frames: int) -> dict[str, Any]:
    """``fanout_parallel_ratio`` (module docstring) on a running controller: replaces its queries with ``FANOUT``
    (the probe runs on an otherwise idle cluster) and applies it."""
    from ..runtime.queries import start_query

    for q in list(ctl.workload.queries):
        ctl.remove(q.name)
    ctl.add_query(FANOUT["name"], FANOUT["slo_ms"], FANOUT["stages"], rate=FANOUT["rate"])
    ctl.apply()
    time.sleep(1.0)
    route = ctl.query_routes()[FANOUT["name"]]
    child_session = route["query"]["stages"][1]["session"]

    ends: list[Any] = []

    def run(n_children: int) -> list[tuple[float, float, float]]:
        out = []
        for _ in range(frames):
            timed = _Timed(ctl.frontend)
            res = start_query(timed, route["query"], route["parents"], None,
                              crop=lambda p_in, p_out, stage: [p_in] * n_children).result(10)
            kids = [(s, a) for sess, s, a in timed.log if sess == child_session]
            ends.append(res["ended_by"])
            if res["ended_by"] is None and len(kids) == n_children:
                handed = min(s for s, _ in kids)
                out.append((max(a for _, a in kids) - handed, max(a - s for s, a in kids),
                            res["latency_ms"] / 1000.0))
            time.sleep(0.25)
        return out

    run(1)  # warm the streams
    lone = run(1)
    fan = run(16)
    if not fan or not lone:
        return {"fanout_parallel_ratio": None, "fanout_frames_completed": len(fan),
                "fanout_ended_by": [e for e in ends if e is not None][:5]}
    return {
        "fanout_parallel_ratio": statistics.median(frame / slowest for _, slowest, frame in fan),
        "fanout_stage_over_slowest_child": statistics.median(span / slowest for span, slowest, _ in fan),
        "fanout_stage_ms": statistics.median(span for span, _, _ in fan) * 1000.0,
        "fanout_lone_child_ms": statistics.median(span for span, _, _ in lone) * 1000.0,
        "fanout_stage_over_lone_child": (statistics.median(span for span, _, _ in fan)
                                         / statistics.median(span for span, _, _ in lone)),
        "fanout_frames_completed": len(fan), "fanout_frames": frames,
    }


def runtime_queries(queries: list[Mapping[str, Any]], quick: bool = False, gpus: int = 8, load: float = 0.8,
                    seed: int = 3) -> dict[str, Any]:
    """``runtime_query_attainment``, ``query_runtime_over_sim`` and ``fanout_parallel_ratio`` (module docstring)
    for ``queries`` on one cluster of ``gpus`` simulated TITAN X GPUs."""
    from ..arrivals import ArrivalSpec
    from ..controller import start
    from ..controller.core import RUNTIME_NET_MS
    from ..planner import plan_workload
    from ..runtime.loadgen import arrival_times
    from ..runtime.queries import FanoutCrop
    from ..sim import simulate

    duration = 8.0 if quick else 20.0
    base = _queries_workload(queries, RUNTIME_NET_MS)
    big = base.scaled(30.0)  # capacity: the common rate fraction of a generously scaled load that fits
    cap_plan = plan_workload(big, gpus=gpus)
    capacity = big.scaled(cap_plan.rate_fraction)
    offered = {q.name: q.rate * load for q in capacity.queries}
    traces = {q: arrival_times("poisson", r, duration, seed=seed * 1000 + k).tolist()
              for k, (q, r) in enumerate(sorted(offered.items()))}  # the same frames for the runtime and the simulator
    crops = {q.name: FanoutCrop({st.name: st.gamma for st in q.stages if st.parents}, seed=seed + k)
             for k, q in enumerate(capacity.queries)}
    ctl = start(gpus=gpus, device="simulated:titan-x-pascal", workload=capacity, auto=False, poll_s=1.0)
    try:
        plan = ctl.apply()
        wl = ctl.workload
        time.sleep(1.0)
        ctl.run_load({q: r * 0.1 for q, r in offered.items()}, 1.0, seed=seed + 100, crop=crops)  # open streams
        rep = ctl.run_load(offered, duration, kind="trace", traces=traces, crop=crops, settle_s=5.0)
        live = ctl.state()
        fan = fanout_ratio(ctl, 6 if quick else 15)
    finally:
        ctl.close()
    sim = simulate(plan, wl, duration_s=duration, seed=seed, rates=offered, warmup_s=0.0,
                   arrivals={q: ArrivalSpec("trace", trace=t) for q, t in traces.items()}).to_dict()
    qs = rep["queries"]
    sim_q = sim.get("queries", {})
    runtime_goodput = sum(q["within_slo"] for q in qs.values()) / duration  # over the window the frames arrive in
    sim_goodput = sum(sim_q[n]["goodput"] for n in qs if n in sim_q)
    return {
        "runtime_query_attainment": min(q["slo_attainment"] or 0.0 for q in qs.values()),
        "query_runtime_over_sim": runtime_goodput / sim_goodput if sim_goodput else None,
        **fan,
        "runtime": {"gpus": gpus, "plan_gpus": plan.num_gpus, "load_fraction_of_capacity": load,
                    "duration_s": rep["duration_s"], "frame_rates": offered,
                    "runtime_goodput": runtime_goodput, "sim_goodput": sim_goodput,
                    "queries": {n: {"offered": q["offered"], "within_slo": q["within_slo"],
                                    "slo_attainment": q["slo_attainment"], "p50_ms": q["p50_ms"],
                                    "p99_ms": q["p99_ms"], "slo_ms": q["slo_ms"], "ended_by": q["ended_by"],
                                    "unfinished": q["unfinished"],
                                    "sim_frames": sim_q.get(n, {}).get("frames"),
                                    "sim_attainment": sim_q.get(n, {}).get("attainment"),
                                    "sim_p99_ms": sim_q.get(n, {}).get("latency_p99_ms")}
                                for n, q in qs.items()},
                    "state_end_to_end": {r["name"]: {k: r["end_to_end"].get(k) for k in
                                                     ("slo_attainment", "goodput", "latency_p99_ms")}
                                         for r in live["queries"] if r["name"] in qs}},
    }


def run(quick: bool = False) -> dict[str, Any]:
    from .queries_sim import JOIN, TRAFFIC, dp_over_even_max_rate, sim_query_attainment

    t0 = time.time()
    out: dict[str, Any] = {"benchmark": "queries"}
    out.update(runtime_queries([TRAFFIC, JOIN], quick))
    out.update(sim_query_attainment(quick))
    out.update(dp_over_even_max_rate(quick))
    out["wall_s"] = time.time() - t0
    out["targets"] = {"runtime_query_attainment": ">= 0.99", "sim_query_attainment": ">= 0.99",
                      "query_runtime_over_sim": ">= 0.95", "fanout_parallel_ratio": "<= 1.3",
                      "dp_over_even_max_rate": ">= 1"}
    out["note"] = "measured on a shared 2-core machine; other processes disturb timing"
    return out
