"""The ``nexus-lab`` command: plan, simulate, profile, bench and demo from a shell.

A thin layer over the package's Python API; bad input exits 2 with a message naming the field, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from .profiles import BATCH_LATENCIES, ProfileError
from .workload import WorkloadError, load_workload


def _positive_int(text: str) -> int:
    try:
        val = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if val < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {val}")
    return val


def _positive_float(text: str) -> float:
    try:
        val = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not val > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {val}")
    return val


def _max_gpus(parser: argparse.ArgumentParser) -> None:
    from .planner.bounds import DEFAULT_MAX_GPUS

    parser.add_argument("--max-gpus", type=_positive_int, default=DEFAULT_MAX_GPUS,
                        help="refuse a workload that needs more GPUs than this (default %(default)s)")


def _policies() -> list[str]:
    from .planner import policies

    return sorted(policies())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nexus-lab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plan", help="plan a workload and print the placement")
    p.add_argument("workload", help="workload file (YAML or JSON)")
    p.add_argument("--policy", default="nexus", choices=_policies())
    p.add_argument("--gpus", type=_positive_int, default=None, help="fit this many GPUs (scales every rate down)")
    p.add_argument("--split", default="dp", choices=["dp", "even"], help="query SLO split")
    p.add_argument("--json", action="store_true", help="print exactly the plan JSON contract")
    _max_gpus(p)

    s = sub.add_parser("simulate", help="plan, then run the plan in the discrete-event simulator")
    s.add_argument("workload")
    s.add_argument("--policy", default="nexus", choices=_policies())
    s.add_argument("--gpus", type=_positive_int, default=None)
    s.add_argument("--split", default="dp", choices=["dp", "even"])
    s.add_argument("--duration", type=_positive_float, default=30.0, help="virtual seconds")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--arrivals", default="poisson", choices=["poisson", "uniform", "bursty"])
    s.add_argument("--batch-latency", default="measured", choices=list(BATCH_LATENCIES),
                   help="a batch lasts the profile's measured latency (default) or the inflated planning l(b)")
    s.add_argument("--json", action="store_true", help="print the plan and the metrics as JSON")
    _max_gpus(s)

    pr = sub.add_parser("profile", help="measure a built-in torch model's batch latency profile")
    pr.add_argument("model", help="a model of the built-in zoo")
    pr.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    pr.add_argument("--batches", default="1,2,4,8,16,32", help="comma-separated batch sizes")
    pr.add_argument("--repeats", type=_positive_int, default=10)
    pr.add_argument("--out", default=None, help="write the profile to this file, or into this model repository "
                    "(a folder: <model>/profiles/<device>.txt); default: stdout")
    pr.add_argument("--models", default=None, help="a model repository whose models to know first")

    b = sub.add_parser("bench", help="run one benchmark and print its JSON")
    b.add_argument("name")
    b.add_argument("--json", action="store_true", help="print only the JSON object")
    b.add_argument("--quick", action="store_true", help="a smaller run (for smoke tests)")

    d = sub.add_parser("demo", help="the main job: serve a demo workload on a local cluster of simulated GPUs")
    d.add_argument("--quick", action="store_true")
    from .ingress.headless import add_parser as add_serve_parser

    add_serve_parser(sub)
    return parser


def _cmd_plan(args: argparse.Namespace) -> int:
    from .planner import plan_workload, validate
    from .report import plan_report

    wl = load_workload(args.workload)
    plan = plan_workload(wl, args.policy, args.gpus, split=args.split, max_gpus=args.max_gpus)
    validate(plan, wl)
    print(plan.to_json() if args.json else plan_report(plan))
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .planner import plan_workload
    from .report import sim_report
    from .sim import simulate

    wl = load_workload(args.workload)
    plan = plan_workload(wl, args.policy, args.gpus, split=args.split, max_gpus=args.max_gpus)
    # With --gpus the plan serves a fraction of every rate; offer the full rates so the excess shows as drops.
    rates = ({s.session: s.rate / plan.rate_fraction for s in plan.sessions}
             if 0 < plan.rate_fraction < 1 else None)
    result = simulate(plan, wl, duration_s=args.duration, seed=args.seed, arrivals=args.arrivals, rates=rates,
                      batch_latency=args.batch_latency)
    if args.json:
        print(json.dumps({"plan": plan.to_dict(), "metrics": result.to_dict()}, indent=2))
    else:
        print(sim_report(plan, result))
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from .runtime.profiler import profile_builtin

    try:
        batches = [int(x) for x in args.batches.split(",") if x.strip()]
    except ValueError:
        raise WorkloadError(f"--batches: must be comma-separated integers >= 1, got {args.batches!r}") from None
    if not batches or min(batches) < 1:
        raise WorkloadError("--batches: must be comma-separated integers >= 1")
    if args.models:
        from .models.repository import load_repository, register_config

        for cfg in load_repository(args.models):
            register_config(cfg)
    prof = profile_builtin(args.model, device=args.device, batches=batches, repeats=args.repeats,
                           progress="console")
    text = prof.to_text()
    if args.out and (os.path.isdir(args.out) or not os.path.splitext(args.out)[1]):  # a model repository
        from .models.repository import store_profile

        print(f"wrote {store_profile(args.out, args.model, prof)}", file=sys.stderr)
    elif args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(text, end="")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_benchmark

    result = run_benchmark(args.name, quick=args.quick)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    return demo_main(quick=args.quick)


def _cmd_serve(args: argparse.Namespace) -> int:
    from .ingress.headless import main as serve_main

    return serve_main(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; bad input exits 2 naming the field, a plan that fails its own check exits 1."""
    from .planner import PlanInvalid

    args = build_parser().parse_args(argv)
    handler = {"plan": _cmd_plan, "simulate": _cmd_simulate, "profile": _cmd_profile, "bench": _cmd_bench,
               "demo": _cmd_demo, "serve": _cmd_serve}[args.command]
    try:
        return handler(args)
    except (WorkloadError, ProfileError, ValueError) as exc:
        print(f"nexus-lab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except PlanInvalid as exc:
        print(f"nexus-lab {args.command}: internal error: the plan fails its check (please report): {exc}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
