"""Query analysis: split one end-to-end SLO over a DAG of model stages into per-stage latency budgets.

Pure; depends only on profiles and the workload's query types.
"""

from __future__ import annotations

from ..workload import QuerySpec, Workload, topological

__all__ = ["even_split", "topological"]


def even_split(query: QuerySpec, workload: Workload) -> dict[str, float]:
    """Every stage gets ``SLO / depth`` where depth is the most stages on any root-to-leaf path (sound on DAGs)."""
    depth: dict[str, int] = {}
    for st in topological(query.stages):
        depth[st.name] = 1 + max((depth[p] for p in st.parents), default=0)
    longest = max(depth.values())
    return {st.name: query.slo_ms / longest for st in query.stages}
