"""Benchmark: what the Nexus panel's 1 Hz polling costs the kernel that runs the controller (the target is <= 2% of
one core with 64 GPUs and 100 sessions). Standard library and ``nexus_lab.lab.registry`` only; no Jupyter server.

A child process plays the kernel: it registers a controller-sized stand-in whose ``state()`` rebuilds a full snapshot
on every call, then serves it; the parent polls ``GET /state`` once a second, as the server extension's proxy does for
the panel, and the child reports its own CPU time over the polling window (idle wake-ups included).
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

GPUS = 64
SESSIONS = 100
QUERIES = 10
_MODELS = ("resnet50", "ssd_mobilenet", "vgg16", "inception_v3", "googlenet", "darknet53")


def controller_state(gpus: int, sessions: int, queries: int, t: float, version: int = 1) -> dict[str, Any]:
    """A snapshot with the controller's ``state()`` shape and size: every GPU, session and query stage."""
    return {
        "cluster": {"scheduler": "tcp://127.0.0.1:8786", "workers": gpus, "gpus_used": gpus,
                    "device": "simulated:titan-x-pascal", "epoch_s": 30.0, "version": version, "plan_age_s": t % 30,
                    "paused": False, "dashboard_link": "http://127.0.0.1:8787/status"},
        "gpus": [{"gpu": i, "worker": f"tcp://127.0.0.1:{41000 + i}", "utilization": 0.5 + 0.45 * math.sin(t + i),
                  "duty_cycle_ms": 50.0 + i % 7, "occupancy": 0.8,
                  "sessions": [f"s{j:03d}" for j in range(sessions) if j % gpus == i]} for i in range(gpus)],
        "sessions": [{"name": f"s{j:03d}", "model": _MODELS[j % len(_MODELS)], "slo_ms": 50.0 + 10 * (j % 20),
                      "rate": 20.0 + j, "offered_rate": 20.0 + j + math.sin(t + j), "measured": True,
                      "goodput": 19.5 + j, "slo_attainment": 0.99, "latency_p50_ms": 20.0 + j % 30,
                      "latency_p99_ms": 40.0 + j % 60, "drops": {"early_drop": j % 5, "expired": j % 3},
                      "gpus": [j % gpus]} for j in range(sessions)],
        "queries": [{"name": f"q{k}", "slo_ms": 300.0,
                     "stages": [{"name": f"stage{m}", "model": _MODELS[(k + m) % len(_MODELS)],
                                 "budget_ms": 100.0 + 10 * m, "parents": [f"stage{m - 1}"] if m else [],
                                 "session": f"q{k}/stage{m}", "gpus": [(k + m) % gpus]} for m in range(3)]}
                    for k in range(queries)],
    }


class _SizedController:
    """The stand-in the child registers: builds a fresh snapshot per call, as a live controller does."""

    def __init__(self, gpus: int, sessions: int, queries: int) -> None:
        self.shape = (gpus, sessions, queries)
        self.version = 1

    def state(self) -> dict[str, Any]:
        return controller_state(*self.shape, t=time.time(), version=self.version)

    def replan_now(self) -> None:
        self.version += 1

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass


def _kernel_main(gpus: int, sessions: int, queries: int, runtime_dir: str) -> None:
    """The child ("kernel"): register, then time its own CPU between the parent's "start" and "stop" lines."""
    from nexus_lab.lab.registry import register

    reg = register(_SizedController(gpus, sessions, queries), name="bench-panel", runtime_dir=runtime_dir)
    print(json.dumps({"port": reg.port, "token": reg.token}), flush=True)
    assert sys.stdin.readline().strip() == "start"
    cpu0, wall0 = time.process_time(), time.monotonic()
    assert sys.stdin.readline().strip() == "stop"
    cpu1, wall1 = time.process_time(), time.monotonic()
    print(json.dumps({"cpu_s": cpu1 - cpu0, "wall_s": wall1 - wall0}), flush=True)
    reg.close()


def run(quick: bool = False, duration_s: float | None = None, rate_hz: float = 1.0) -> dict[str, Any]:
    """Poll the kernel-side state endpoint at ``rate_hz`` for ``duration_s`` (20 s, 5 s when quick)."""
    duration_s = duration_s if duration_s is not None else (5.0 if quick else 20.0)
    if duration_s <= 0:
        raise ValueError(f"duration_s: must be > 0, got {duration_s}")
    if not 0 < rate_hz <= 100:
        raise ValueError(f"rate_hz: must be in (0, 100], got {rate_hz}")
    with tempfile.TemporaryDirectory() as runtime_dir:
        code = (f"from nexus_lab.bench.panel import _kernel_main; "
                f"_kernel_main({GPUS}, {SESSIONS}, {QUERIES}, {runtime_dir!r})")
        child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
        try:
            info = json.loads(child.stdout.readline())
            req = urllib.request.Request(f"http://127.0.0.1:{info['port']}/state",
                                         headers={"Authorization": f"Bearer {info['token']}"})

            def poll() -> tuple[float, int]:
                t0 = time.perf_counter()
                with urllib.request.urlopen(req, timeout=5) as r:
                    body = r.read()
                return time.perf_counter() - t0, len(body)

            for _ in range(3):  # warm-up: first-request costs are not the steady state
                poll()
            child.stdin.write("start\n")
            child.stdin.flush()
            latencies, sizes = [], []
            start = time.monotonic()
            n = int(duration_s * rate_hz)
            for i in range(n):
                latency, size = poll()
                latencies.append(latency)
                sizes.append(size)
                time.sleep(max(0.0, start + (i + 1) / rate_hz - time.monotonic()))
            child.stdin.write("stop\n")
            child.stdin.flush()
            usage = json.loads(child.stdout.readline())
            child.stdin.close()
            child.wait(timeout=10)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    fraction = usage["cpu_s"] / usage["wall_s"]
    return {
        "benchmark": "panel",
        "gpus": GPUS,
        "sessions": SESSIONS,
        "queries": QUERIES,
        "rate_hz": rate_hz,
        "requests": len(latencies),
        "duration_s": round(usage["wall_s"], 3),
        "kernel_cpu_s": round(usage["cpu_s"], 4),
        "kernel_cpu_fraction": round(fraction, 5),
        "kernel_cpu_ms_per_request": round(1000 * usage["cpu_s"] / max(len(latencies), 1), 3),
        "state_bytes": int(statistics.median(sizes)),
        "latency_ms_p50": round(1000 * statistics.median(latencies), 3),
        "latency_ms_max": round(1000 * max(latencies), 3),
        "target_fraction": 0.02,
        "within_target": fraction <= 0.02,
    }
