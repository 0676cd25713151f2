"""``nexus-lab serve WORKLOAD``: start a cluster (or attach to one), apply the workload's plan, serve it over the
Open Inference Protocol from K frontends, print ``serving on http://HOST:PORT`` per frontend once ready, and shut
down cleanly on SIGINT or SIGTERM. The controller's epoch loop keeps re-planning from the measured rates meanwhile.

The bearer token, when wanted, comes from the ``NEXUS_LAB_TOKEN`` environment variable (never the command line,
which other local users can read). Attaching to a TLS cluster (``--scheduler tls://...``) takes the paths of the
client's credentials (``--tls-ca-file``, ``--tls-cert``, ``--tls-key``): files, never their contents on argv.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any

__all__ = ["TOKEN_ENV", "add_parser", "main", "scheduler_security"]

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
    p.add_argument("--scheduler", default=None, help="attach to this Dask scheduler instead of starting one "
                   "(a tls:// address needs --tls-ca-file and --tls-cert)")
    p.add_argument("--tls-ca-file", default=None, metavar="PATH", help="with a tls:// --scheduler: the CA "
                   "certificate (PEM file) the cluster's certificates are signed with")
    p.add_argument("--tls-cert", default=None, metavar="PATH", help="with a tls:// --scheduler: this client's "
                   "certificate (PEM file; it may hold the private key too)")
    p.add_argument("--tls-key", default=None, metavar="PATH", help="with a tls:// --scheduler: this client's "
                   "private key (PEM file), unless --tls-cert holds it")
    p.add_argument("--epoch", type=float, default=30.0, help="re-plan at least this often (s, default 30)")


def scheduler_security(args: argparse.Namespace) -> Any:
    """The ``distributed.security.Security`` to attach to ``args.scheduler`` with (None for plain TCP), from the
    ``--tls-*`` files; ``WorkloadError`` naming the flag for a TLS address without credentials, a missing file,
    or credentials given where they cannot be used."""
    from pathlib import Path

    from ..workload import WorkloadError

    files = {"--tls-ca-file": getattr(args, "tls_ca_file", None), "--tls-cert": getattr(args, "tls_cert", None),
             "--tls-key": getattr(args, "tls_key", None)}
    given = [flag for flag, path in files.items() if path]
    address = args.scheduler
    if not address:
        if given:
            raise WorkloadError(f"{given[0]}: only with --scheduler tls://... (a cluster started here makes its own "
                                f"certificates)")
        return None
    if not address.startswith("tls://"):
        if given:
            raise WorkloadError(f"{given[0]}: --scheduler {address!r} is not a tls:// address")
        return None
    missing = [flag for flag in ("--tls-ca-file", "--tls-cert") if not files[flag]]
    if missing:
        raise WorkloadError(f"--scheduler {address!r} uses TLS: pass the cluster's CA certificate and a client "
                            f"certificate as files ({' and '.join(missing)} PATH; --tls-key PATH unless the "
                            f"certificate file holds the key)")
    for flag, path in files.items():
        if path and not Path(path).is_file():
            raise WorkloadError(f"{flag}: {path!r} is not a readable file")
    from distributed.security import Security

    return Security(tls_ca_file=files["--tls-ca-file"], tls_client_cert=files["--tls-cert"],
                    tls_client_key=files["--tls-key"], require_encryption=True)


def _controller(args: argparse.Namespace, workload: Any) -> Any:
    from ..controller import Controller
    from ..controller.cluster import start
    from ..workload import WorkloadError

    if args.scheduler:
        security = scheduler_security(args)
        try:
            return Controller(args.scheduler, device=args.device, workload=workload, epoch_s=args.epoch,
                              security=security)
        except (OSError, TimeoutError) as exc:  # unreachable, or the TLS handshake refused our credentials
            raise WorkloadError(f"--scheduler: cannot connect to {args.scheduler!r}: {exc}") from None
    device = args.device or "simulated:titan-x-pascal"
    return start(gpus=args.gpus, device=device, workload=workload, epoch_s=args.epoch)


def main(args: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """Run until SIGINT/SIGTERM (or ``stop`` is set); 0 after a clean shutdown."""
    from ..workload import WorkloadError, load_workload

    wl = load_workload(args.workload)
    scheduler_security(args)  # refuse a TLS address without credentials before anything starts
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
