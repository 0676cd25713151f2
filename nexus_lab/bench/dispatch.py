"""Benchmark of dispatch overhead (issue 3, done-item 1): a no-op model through frontend -> backend -> frontend on
2 worker processes; CPU time per request summed over every process (client + scheduler, workers, nannies), on plain
TCP and on TLS (what ``nexus_lab.start``'s default security costs, issue 12).

Run: ``python benchmarks/dispatch.py`` or ``nexus-lab bench dispatch --json``. Needs no GPU (cpu device, no-op model).
"""

from __future__ import annotations

import concurrent.futures
import time
from collections import deque
from typing import Any

import dask

from . import cluster_processes, cpu_seconds

NOOP_SESSION = "noop"


def _noop_model() -> str:
    """The zoo's no-op model (it takes any payload and costs ~nothing on the cpu device)."""

    from ..models.zoo import available_models, get_model_spec

    for name in available_models():
        if get_model_spec(name).passthrough:
            return name
    raise RuntimeError(f"the model zoo has no no-op (passthrough) model; models: {available_models()}")


def _drive(fe: Any, n: int, chunk: int, window: int) -> tuple[float, int]:
    """Submit ``n`` requests in chunks of ``chunk`` (``window`` chunks in flight); return wall seconds and how
    many ended with a result."""
    inflight: deque[list[concurrent.futures.Future]] = deque()
    ok = 0
    t0 = time.perf_counter()
    sent = 0
    while sent < n or inflight:
        while sent < n and len(inflight) < window:
            k = min(chunk, n - sent)
            inflight.append(fe.submit_many(NOOP_SESSION, [None] * k))
            sent += k
        for f in inflight.popleft():
            try:
                f.result(30)
                ok += 1
            except Exception:  # counted as not ok; the figure is reported with it
                pass
    return time.perf_counter() - t0, ok


def run(quick: bool = False, tls: bool = True) -> dict[str, Any]:
    """The figures on a plain TCP cluster, then (``tls``) the same on a TLS cluster such as ``nexus_lab.start``
    makes by default: keys ending ``_tls``, and ``tls_cpu_ratio``(``_uncoalesced``), TLS's CPU per request over
    plain TCP's."""
    n = 4000 if quick else 20000
    n_unco = 500 if quick else 2000
    out = _measure(n, n_unco, security=None)
    if tls:
        from ..controller.cluster import cluster_security

        sec = _measure(n, n_unco, security=cluster_security(True))
        for key in ("cpu_us_per_request", "cpu_us_per_request_uncoalesced", "round_trip_us_uncoalesced",
                    "throughput_rps", "coalesced_batch", "requests_ok", "requests_ok_uncoalesced"):
            out[f"{key}_tls"] = sec[key]
        out["tls_cpu_ratio"] = sec["cpu_us_per_request"] / out["cpu_us_per_request"]
        out["tls_cpu_ratio_uncoalesced"] = (sec["cpu_us_per_request_uncoalesced"]
                                            / out["cpu_us_per_request_uncoalesced"])
    return out


def _measure(n: int, n_unco: int, security: Any) -> dict[str, Any]:
    """One cluster of 2 worker processes, plain TCP (``security`` None) or TLS; the figures ``run`` reports."""
    from distributed import Client, LocalCluster

    from ..runtime.backend import NexusBackend
    from ..runtime.frontend import Frontend

    model = _noop_model()
    batch = 16  # requests per coalesced message, per backend
    from ..controller.cluster import SERVING_CONFIG, worker_malloc_config

    kw: dict[str, Any] = {} if security is None else {"security": security, "protocol": "tls://"}
    with dask.config.set({**worker_malloc_config(), **SERVING_CONFIG}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                         dashboard_address="127.0.0.1:0", **kw) as cluster, \
            Client(cluster, security=security) as client:
        client.register_plugin(NexusBackend(device="cpu"))
        workers = sorted(client.scheduler_info()["workers"])
        procs = cluster_processes(client)
        session = {"model": model, "slo_ms": 1000.0, "budget_ms": 1000.0}
        gpu = {"id": 0, "duty_cycle_ms": 1.0, "occupancy": 0.0, "memory_mb": 0.0,
               "allocations": [{"session": NOOP_SESSION, "model": model, "slo_ms": 1000.0, "batch": 256,
                                "rate": 1.0}]}
        applied = [client.sync(_apply, client, w, gpu, {NOOP_SESSION: session}) for w in workers]
        errors = [a["error"] for a in applied if a["error"]]
        if errors:
            raise RuntimeError(f"nexus_apply failed: {errors}")
        routes = {NOOP_SESSION: [(w, 1.0) for w in workers]}
        out: dict[str, Any] = {"workers": 2, "model": model, "requests": n}

        # Coalesced: chunks of 2*batch split round-robin over the 2 backends -> one message of `batch` each.
        with Frontend(client, coalesce_ms=1.0, max_coalesce=batch) as fe:
            fe.set_routes(routes, {NOOP_SESSION: session})
            _drive(fe, 2000, 2 * batch, 8)  # warm-up: connections, code paths
            m0, r0 = fe.sent_messages, fe.sent_requests
            c0 = cpu_seconds(procs)
            wall, ok = _drive(fe, n, 2 * batch, 8)
            cpu = cpu_seconds(procs) - c0
            msgs = fe.sent_messages - m0
            out.update({"cpu_us_per_request": cpu / n * 1e6, "coalesced_batch": (fe.sent_requests - r0) / msgs,
                        "requests_ok": ok, "throughput_rps": n / wall})

        # Uncoalesced: one request per message, one round trip at a time.
        with Frontend(client, coalesce_ms=0.0, max_coalesce=1) as fe:
            fe.set_routes(routes, {NOOP_SESSION: session})
            _drive(fe, 200, 1, 1)
            c0 = cpu_seconds(procs)
            wall, ok = _drive(fe, n_unco, 1, 1)
            cpu = cpu_seconds(procs) - c0
            out.update({"cpu_us_per_request_uncoalesced": cpu / n_unco * 1e6,
                        "round_trip_us_uncoalesced": wall / n_unco * 1e6, "requests_ok_uncoalesced": ok,
                        "requests_uncoalesced": n_unco})
        out["target_cpu_us_per_request"] = 100.0
        out["meets_target"] = out["cpu_us_per_request"] <= 100.0 and out["coalesced_batch"] >= 16
        out["note"] = "CPU of the client (with the in-process scheduler), both workers and their nannies"
    return out


async def _apply(client: Any, addr: str, gpu: dict[str, Any], sessions: dict[str, Any]) -> dict[str, Any]:
    """``nexus_apply`` on one backend, over the client's connection pool (its TLS credentials included)."""
    return await client.rpc(addr).nexus_apply(gpu=gpu, sessions=sessions, version=1)
