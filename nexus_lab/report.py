"""Plain-text reports of plans and simulation results, for the CLI and ``make demo``.

Formatting only: reads plans and result objects, computes nothing a planner or simulator should.
"""

from __future__ import annotations

from typing import Any

from .planner import Plan


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths, strict=True)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def plan_report(plan: Plan) -> str:
    """GPUs with their duty cycle, occupancy and allocations; then the totals against the lower bound."""
    rows = []
    for g in plan.gpus:
        for k, a in enumerate(g.allocations):
            first = k == 0
            rows.append([str(g.id) if first else "", f"{g.duty_cycle_ms:.1f}" if first else "",
                         f"{g.occupancy:.0%}" if first else "", f"{g.memory_mb:.0f}" if first else "",
                         a.session, str(a.batch), f"{a.rate:.1f}"])
    out = [f"policy {plan.policy}: {plan.num_gpus} GPUs (lower bound {plan.lower_bound_gpus:.2f})"]
    if plan.rate_fraction < 1.0:
        out.append(f"every rate scaled to {plan.rate_fraction:.1%} to fit the cluster")
    elif plan.rate_fraction > 1.0:
        out.append(f"planned for {plan.rate_fraction:.2f}x every rate: the spare GPUs are headroom")
    out.append(_table(rows, ["gpu", "duty ms", "occ", "mem MB", "session", "batch", "rate/s"]))
    for q in plan.queries:
        out.append(f"query {q.name} (SLO {q.slo_ms:g} ms): " +
                   ", ".join(f"{s.name} {s.budget_ms:.1f} ms" for s in q.stages))
    for u in plan.unserved:
        out.append(f"UNSERVED {u.session}: {u.reason}")
    return "\n".join(out)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def metrics_table(sessions: dict[str, dict[str, Any]]) -> str:
    """One row per session from metrics dicts (simulator or runtime): goodput, attainment, drops, latency."""
    rows = []
    for name, m in sessions.items():
        drops = m.get("drops", {})
        rows.append([name, f"{m['offered_rate']:.1f}", f"{m['goodput']:.1f}", f"{m['slo_attainment']:.2%}",
                     str(sum(drops.values())), _ms(m.get("latency_p50_ms")), _ms(m.get("latency_p99_ms"))])
    return _table(rows, ["session", "offered/s", "goodput/s", "within SLO", "drops", "p50 ms", "p99 ms"])


def query_table(queries: dict[str, dict[str, Any]]) -> str:
    """One row per query end to end (``SimResult.queries``): frames, goodput, attainment, the stages that ended
    frames, latency from a frame's birth to its last result."""
    rows = []
    for name, q in queries.items():
        ended = ", ".join(f"{st} {n}" for st, n in sorted(q.get("drops", {}).items()) if n) or "-"
        rows.append([name, f"{q['offered_rate']:.1f}", f"{q['goodput']:.1f}", f"{q['attainment']:.2%}", ended,
                     _ms(q.get("latency_p50_ms")), _ms(q.get("latency_p99_ms"))])
    return _table(rows, ["query", "frames/s", "goodput/s", "within SLO", "ended by", "p50 ms", "p99 ms"])


def sim_report(plan: Plan, result: Any) -> str:
    data = result.to_dict()
    util = ", ".join(f"{gid}: {g['utilization']:.0%}" for gid, g in data["gpus"].items())
    out = [plan_report(plan), "", f"simulated {data['duration_s']:g} s:", metrics_table(data["sessions"])]
    if data.get("queries"):
        out += ["", "end to end:", query_table(data["queries"])]
    return "\n".join([*out, f"GPU utilization: {util}"])
