"""``nexus-lab serve WORKLOAD``: start a cluster (or attach to one), apply the workload's plan, serve it over the
Open Inference Protocol from K frontends, print ``serving on http://HOST:PORT`` per frontend once ready, and shut
down cleanly on SIGINT or SIGTERM. The controller's epoch loop keeps re-planning from the measured rates meanwhile.

The bearer token, when wanted, comes from the ``NEXUS_LAB_TOKEN`` environment variable (never the command line,
which other local users can read).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any

__all__ = ["TOKEN_ENV", "add_parser", "main"]

TOKEN_ENV = "NEXUS_LAB_TOKEN"


def _int_in(lo: int, hi: int) -> Any:
    def parse(text: str) -> int:
        try:
            val = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer in [{lo}, {hi}], got {text!r}") from None
        if not lo <= val <= hi:
            raise argparse.ArgumentTypeError(f"must be an integer in [{lo}, {hi}], got {val}")
        return val
    return parse


def add_parser(sub: Any) -> None:
    """The ``serve`` subcommand on the ``nexus-lab`` parser's subparsers."""
    p = sub.add_parser("serve", help="serve a workload over the Open Inference Protocol (KServe v2 REST)")
    p.add_argument("workload", help="workload file (YAML or JSON): its models and sessions/queries")
    p.add_argument("--gpus", type=_int_in(1, 1024), default=2, help="workers of a new local cluster (default 2)")
    p.add_argument("--device", default=None, help="the backends' device: cpu, cuda or simulated:<profile-set> "
                   "(default: the workload's simulated device, or what an attached cluster runs)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_int_in(0, 65535), default=8000, help="first frontend's port; frontend k "
                   "listens on PORT+k (0: free ports; default 8000)")
    p.add_argument("--frontends", type=_int_in(1, 64), default=1, help="frontend processes (default 1)")
    p.add_argument("--scheduler", default=None, help="attach to this Dask scheduler instead of starting one")
    p.add_argument("--epoch", type=float, default=30.0, help="re-plan at least this often (s, default 30)")


def _controller(args: argparse.Namespace, workload: Any) -> Any:
    from ..controller import Controller
    from ..controller.cluster import start

    if args.scheduler:
        return Controller(args.scheduler, device=args.device, workload=workload, epoch_s=args.epoch)
    device = args.device or "simulated:titan-x-pascal"
    return start(gpus=args.gpus, device=device, workload=workload, epoch_s=args.epoch)


def main(args: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """Run until SIGINT/SIGTERM (or ``stop`` is set); 0 after a clean shutdown."""
    from ..workload import WorkloadError, load_workload

    wl = load_workload(args.workload)
    if args.port and args.port + args.frontends - 1 > 65535:
        raise WorkloadError(f"--port: frontends {args.frontends} from port {args.port} pass 65535")
    token = os.environ.get(TOKEN_ENV) or None
    stop = stop or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        ctl = _controller(args, wl)
        try:
            ctl.apply()
            urls = ctl.serve(port=args.port, frontends=args.frontends, host=args.host, token=token)
            for u in urls:
                print(f"serving on {u}", flush=True)
            while not stop.wait(1.0):
                if ctl.closed:
                    break
            print("shutting down", file=sys.stderr, flush=True)
        finally:
            ctl.close()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
