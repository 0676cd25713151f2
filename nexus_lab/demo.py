"""``make demo`` / ``nexus-lab demo``: serve the bundled traffic workload on a local cluster of simulated GPUs and
drive it through a load change, printing goodput, SLO attainment, drops and utilization per phase.

Uses the public API only (``nexus_lab.start``, the controller, the load generator); no planning logic of its own.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from importlib import resources
from typing import Any

from .report import metrics_table, plan_report
from .workload import load_workload


def workload_path(name: str = "demo") -> str:
    """Path of a bundled workload (``nexus_lab/workloads/<name>.yaml``)."""
    return str(resources.files("nexus_lab.workloads").joinpath(f"{name}.yaml"))


def _drive_queries(ctl: Any, name: str, rate: float, duration_s: float, seed: int, out: dict[str, int]) -> None:
    """Open-loop query load: one frame per Poisson arrival, each run on a pool thread (queries block per stage)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t_end = time.time() + duration_s
    futs = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="demo-query") as pool:
        nxt = time.time()
        while nxt < t_end:
            time.sleep(max(0.0, nxt - time.time()))
            futs.append(pool.submit(ctl.query, name, None))
            nxt += rng.exponential(1.0 / rate)
        for f in futs:
            try:
                r = f.result(30)
            except Exception:
                out["failed"] = out.get("failed", 0) + 1
                continue
            out["queries"] = out.get("queries", 0) + 1
            out["within_slo"] = out.get("within_slo", 0) + bool(r["within_slo"])


def _print_phase(title: str, stats: dict[str, Any]) -> None:
    print(f"\n== {title} ({stats['span_s']:.1f} s of backend stats; {stats['plans']})")
    if stats["sessions"]:
        print(metrics_table(stats["sessions"]))
    util = ", ".join(f"{k}: {g['utilization']:.0%}" for k, g in enumerate(stats["gpus"].values()))
    print(f"GPU utilization (worker: busy fraction): {util}")
    t = stats["totals"]
    print(f"total: offered {t['offered_rate']:.1f}/s, goodput {t['goodput']:.1f}/s, within SLO "
          f"{t['slo_attainment']:.2%}, drops {t['drops']}")


def _simulated_only(quick: bool) -> int:
    """Without the runtime: plan the demo workload and run it in the simulator at 1x and 2x load."""
    from .planner import plan_workload
    from .sim import simulate

    wl = load_workload(workload_path())
    for factor in (1.0, 2.0):
        w = wl.scaled(factor)
        plan = plan_workload(w, gpus=8)
        res = simulate(plan, w, duration_s=5.0 if quick else 20.0, seed=0)
        print(f"\n== simulated, load x{factor:g}\n{plan_report(plan)}")
        print(metrics_table(res.to_dict()["sessions"]))
    return 0


def main(quick: bool = False) -> int:
    """Run the demo; returns the exit status (0 when every phase kept >= 99% of served requests within SLO)."""
    try:
        from .controller import start
        from .runtime.loadgen import run_load
    except ImportError as exc:
        print(f"runtime not available ({exc}); showing the simulated demo instead")
        return _simulated_only(quick)
    gpus = 4 if quick else 8
    phase_s = 8.0 if quick else 20.0
    epoch_s = 6.0 if quick else 12.0
    t_start = time.time()
    print(f"starting a local cluster of {gpus} simulated TITAN X GPUs ...")
    ctl = start(gpus=gpus, device="simulated:titan-x-pascal", workload=workload_path(), epoch_s=epoch_s,
                poll_s=1.0, silence_logs=logging.CRITICAL)
    try:
        print(f"scheduler: {ctl.client.scheduler.address} (TLS, loopback only); "
              f"dashboard: {ctl.client.dashboard_link}")
        wl = ctl.workload
        session_rates = {s.name: s.rate for s in wl.sessions}
        query_rates = {q.name: q.rate for q in wl.queries}
        plan = ctl.apply()
        print(f"\nplan v{ctl.version} for the declared rates:\n{plan_report(plan)}")
        for name in [*session_rates, *query_rates]:
            ctl.set_rate(name, None)  # from now on the epoch loop follows the measured rates
        print(f"\nphase 1: declared load for {phase_s:g} s; phase 2: load doubles for {phase_s:g} s "
              f"(epoch {epoch_s:g} s, re-plan sooner when a rate moves > {ctl.rate_threshold:.0%})")
        reports: list[dict[str, Any]] = []
        qres: dict[str, int] = {}

        def stream(duration: float, seed: int) -> None:
            reports.append(run_load(ctl.frontend, session_rates, duration, seed=seed, settle_s=5.0))

        threads = [threading.Thread(target=stream, args=(2 * phase_s, 1))]
        threads += [threading.Thread(target=_drive_queries, args=(ctl, q, r, 2 * phase_s, 11, qres))
                    for q, r in query_rates.items()]
        t1 = time.time()
        for t in threads:
            t.start()
        time.sleep(phase_s)
        t2 = time.time()
        v_before = ctl.version
        more = [threading.Thread(target=stream, args=(phase_s, 2))]
        more += [threading.Thread(target=_drive_queries, args=(ctl, q, r, phase_s, 12, qres))
                 for q, r in query_rates.items()]
        for t in more:
            t.start()
        for t in threads + more:
            t.join()
        t3 = time.time()
        time.sleep(1.2)
        ctl.collect()
        p1 = [w for w in ctl.history() if t1 + 2.0 <= w["t0"] and w["t1"] <= t2 + 0.5]
        p2 = [w for w in ctl.history() if w["t0"] >= t2 and w["t1"] <= t3 + 1.5]
        from .controller.stats import aggregate

        applied = [e for e in ctl.events() if e["event"] == "applied"]
        for title, wins, lo, hi in (("phase 1: 1x load", p1, t1, t2), ("phase 2: 2x load", p2, t2, t3)):
            st = aggregate(wins, {w: (g or {}).get("id") for w, g in ctl.assignment.items()})
            live = [e for e in applied if e["t"] <= lo]
            during = [e for e in applied if lo < e["t"] <= hi]
            st["plans"] = (f"plan v{live[-1]['version']} ({live[-1]['gpus']} GPUs) at the start" if live else
                           "no plan at the start") + (", then " + ", ".join(
                f"v{e['version']} ({e['gpus']} GPUs) at +{e['t'] - lo:.1f} s" for e in during) if during else "")
            _print_phase(title, st)
        replans = [e for e in ctl.events() if e["event"] == "replan" and e["t"] >= t2]
        print("\nre-plans after the load doubled: " + (", ".join(
            f"+{e['t'] - t2:.1f} s ({e['reason']})" for e in replans) or "none"))
        print(f"plan v{v_before} -> v{ctl.version}:\n{plan_report(ctl.current_plan)}")
        if qres:
            print(f"queries: {qres.get('queries', 0)} run, {qres.get('within_slo', 0)} within SLO, "
                  f"{qres.get('failed', 0)} failed")
        lost = sum(s["unfinished"] for r in reports for s in r["sessions"].values())
        served = sum(s["ok"] for r in reports for s in r["sessions"].values())
        within = sum(s["within_slo"] for r in reports for s in r["sessions"].values())
        print(f"client side: {served} served, {within / max(served, 1):.2%} of them within SLO, {lost} unfinished")
    finally:
        ctl.close()
    print(f"\nshut down cleanly after {time.time() - t_start:.0f} s")
    return 0 if lost == 0 else 1
