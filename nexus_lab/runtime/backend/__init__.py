"""The GPU backend (Nexus section 6): ``NexusBackend``, a Dask ``WorkerPlugin`` per worker, over its units.

``plugin`` (setup, teardown, handlers), ``table`` (the plan part, slots and loaded models), ``slots`` (what one
turn of the duty cycle forms), ``queues`` (admission and early drop), ``cycle`` (turns, launches, replies),
``stats`` (counters and Prometheus) and ``streams`` (the reply side of a frontend's stream). Depends on the shared
batching rules, the wire protocol and the device layer; never on the planner, the controller or the frontend.
"""

from .plugin import NexusBackend
from .stats import LATENCY_BUCKETS_MS
from .table import parse_gpu

__all__ = ["LATENCY_BUCKETS_MS", "NexusBackend", "parse_gpu"]
