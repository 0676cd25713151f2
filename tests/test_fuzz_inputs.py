"""No input gives a traceback (issue 12, item 8): mutated workload files and API arguments either plan (a valid
plan) or are refused with a ``WorkloadError``/``ValueError`` naming a field, in under 10 s, and wrong types are
refused rather than coerced.

``python tests/test_fuzz_inputs.py 2000`` runs a larger campaign and prints the counts (tracebacks, hangs,
coercions, invalid plans) as JSON; ``fuzz(n, seed)`` returns them.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import random
import signal
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus_lab.cli import main
from nexus_lab.planner import PlanInvalid, plan_workload, validate
from nexus_lab.profiles import ProfileError
from nexus_lab.workload import WorkloadError, load_workload

TINY = {"latency_ms": {1: 2.0, 8: 5.0, 32: 14.0}, "memory_mb": {1: 300, 32: 900}, "std_ms": {1: 0.1, 32: 0.5},
        "preprocess_ms": {"mean": 1.0, "std": 0.5}, "postprocess_ms": 0.2}
BASE: dict[str, Any] = {
    "device": {"name": "titan-x-pascal", "memory_mb": 12288},
    "net_ms": 2.0,
    "safety": 1.15,
    "models": [{"name": "tiny", "profile": TINY},
               {"name": "ft", "profile": TINY, "prefix": {"group": "g", "profile": {"latency_ms": {1: 1.0, 32: 8.0}},
                                                          "suffix_profile": {"latency_ms": {1: 1.0, 32: 6.0}}}}],
    "sessions": [{"model": "vgg16", "slo_ms": 100, "rate": 350}, {"name": "cam", "model": "tiny", "slo_ms": 50,
                                                                  "rate": 900},
                 {"name": "ft1", "model": "ft", "slo_ms": 80, "rate": 200}],
    "queries": [{"name": "traffic", "slo_ms": 400, "rate": 30, "stages": [
        {"name": "detect", "model": "yolo9000"}, {"name": "face", "model": "vgg_face", "parent": "detect",
                                                  "gamma": 1.2}]}],
}
LIMIT_S = 10.0
REFUSED = (WorkloadError, ProfileError, ValueError)
NAMES = ("traffic", "traffic/detect", "vgg16:100", "cam", "g.prefix:80", "detect", "face", "", " ", "q/x")


# ---------------------------------------------------------------------------------------------- mutations
def nasty(rng: random.Random) -> Any:
    """A value from the classes that broke the planner: huge and tiny numbers, wrong types, odd containers."""
    kind = rng.randrange(14)
    if kind == 0:
        return rng.choice([10**400, -10**400, 2**63, 2**1100, 10**5000])
    if kind == 1:
        return rng.choice([math.inf, -math.inf, math.nan, 1e-320, 5e-324, 1e308, -0.0, 0.0, -1.0])
    if kind == 2:
        return 10.0 ** rng.uniform(-30, 30) * rng.choice([1, -1, 1, 1])
    if kind == 3:
        return rng.randint(-5, 10**rng.randint(1, 12))
    if kind == 4:
        return rng.choice(["", "1e9", "nan", "vgg16", "titan-x-pascal/vgg16", "\x00", "é" * 3, "x" * 300, "/dev/zero"])
    if kind == 5:
        return rng.choice(NAMES)
    if kind == 6:
        return [rng.choice([1, "a", None, 2.5]) for _ in range(rng.randrange(4))]
    if kind == 7:
        return {1: "a", "b": 2, None: 3, 2.5: [1]}
    if kind == 8:
        return rng.choice([None, True, False])
    if kind == 9:
        return rng.choice([[], {}, [[]], [{}], {"a": {}}])
    if kind == 10:
        return {rng.choice([1, 8, 32, "4", 0, -1, 5000, True, 1.5]): rng.choice([1.0, 0, -1, math.nan, "x", 10**400])}
    if kind == 11:
        return rng.choice([1e9, 1e12, 1e15, 1e30, 1e300])  # rates and fan-outs past any cluster
    if kind == 12:
        return rng.choice([0, 1, 3, 100, 4096, 4097, 10**6])
    return copy.deepcopy(rng.choice([BASE["sessions"][0], BASE["queries"][0], BASE["models"][0], TINY]))


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, Mapping):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _parent(doc: Any, path: tuple) -> Any:
    for k in path[:-1]:
        doc = doc[k]
    return doc


def mutate(rng: random.Random, doc: dict[str, Any] | None = None) -> dict[str, Any]:
    """``BASE`` (or ``doc``) with one to three random edits: replace, delete, add a key, rename a key, repeat a
    list item, or scale a number by a power of ten."""
    doc = copy.deepcopy(BASE if doc is None else doc)
    for _ in range(rng.randint(1, 3)):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = rng.choice(paths)
        parent, key = _parent(doc, path), path[-1]
        op = rng.randrange(7)
        if op <= 1:
            parent[key] = nasty(rng)
        elif op == 2:
            del parent[key]
        elif op == 3 and isinstance(parent[key], dict):
            parent[key][rng.choice(["colour", 7, None, "name", "parents"])] = nasty(rng)
        elif op == 4 and isinstance(parent, dict):
            parent[rng.choice([1, None, 2.5, "Rate", key + "_" if isinstance(key, str) else "k"])] = parent.pop(key)
        elif op == 5 and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))
        elif isinstance(parent[key], (int, float)) and not isinstance(parent[key], bool):
            try:
                parent[key] = parent[key] * 10.0 ** rng.choice([-400, -30, -6, 3, 6, 9, 300])
            except OverflowError:  # an integer beyond float range already
                parent[key] = -parent[key]
        else:
            parent[key] = nasty(rng)
    return doc


# ---------------------------------------------------------------------------------------------- coercion check
def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def strictly_typed(raw: Any) -> bool:
    """Whether every known field of ``raw`` has its declared type: a workload that loads must pass this, or
    the loader coerced something."""
    def opt(m: Mapping, key: str, ok) -> bool:
        return m.get(key) is None or ok(m[key])

    def lst(x: Any) -> bool:
        return x is None or isinstance(x, list)

    def name(x: Any) -> bool:
        return isinstance(x, str)

    dev = raw.get("device")
    if not (dev is None or (isinstance(dev, Mapping) and opt(dev, "name", name) and opt(dev, "memory_mb", _num))):
        return False
    if not (opt(raw, "net_ms", _num) and opt(raw, "safety", _num)):
        return False
    if not all(lst(raw.get(k)) for k in ("models", "sessions", "queries")):
        return False
    for s in raw.get("sessions") or ():
        if not (name(s.get("model")) and _num(s.get("slo_ms")) and _num(s.get("rate")) and opt(s, "name", name)):
            return False
    for q in raw.get("queries") or ():
        if not (name(q.get("name")) and _num(q.get("slo_ms")) and _num(q.get("rate"))):
            return False
        for stage in q.get("stages"):
            parents = stage.get("parents", stage.get("parent"))
            if not (name(stage.get("name")) and name(stage.get("model")) and opt(stage, "gamma", _num)
                    and (parents is None or name(parents) or (isinstance(parents, list)
                                                              and all(map(name, parents))))):
                return False
    return all(name(m.get("name")) and (name(m.get("profile")) or isinstance(m.get("profile"), Mapping))
               for m in raw.get("models") or ())


# ---------------------------------------------------------------------------------------------- one case
class Hang(Exception):
    pass


@contextlib.contextmanager
def _deadline(seconds: float):
    """Interrupt a call that runs past ``seconds`` (main thread only; elsewhere just measure)."""
    def stop(signum, frame):
        raise Hang()

    try:
        old = signal.signal(signal.SIGALRM, stop)
    except ValueError:
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _refusal_names_a_field(exc: BaseException) -> bool:
    """``field.path: what is wrong`` (the field path comes first, before a colon)."""
    return isinstance(exc, REFUSED) and ":" in str(exc)


def check_workload(raw: Any, api: Mapping[str, Any] | None = None, hang_s: float = 3 * LIMIT_S) -> tuple[str, str]:
    """Load and plan ``raw`` (with the ``plan_workload`` keyword arguments ``api``). Returns (outcome, detail):
    ``ok``, ``refused`` (named a field), or a failure: ``traceback``, ``hang`` (over 10 s), ``coerced`` (loaded
    though a field had the wrong type), ``invalid`` (a plan that fails ``validate``)."""
    t0 = time.perf_counter()
    try:
        with _deadline(hang_s):
            wl = load_workload(raw)
            plan = plan_workload(wl, **(api or {}))
            validate(plan, wl)
    except Hang:
        return "hang", f"> {hang_s:g} s"
    except PlanInvalid as exc:
        return "invalid", str(exc)[:300]
    except REFUSED as exc:
        took = time.perf_counter() - t0
        if took > LIMIT_S:
            return "hang", f"{took:.1f} s then {exc}"
        return ("refused", str(exc)) if _refusal_names_a_field(exc) else ("traceback", f"unnamed: {exc!r}"[:300])
    except Exception as exc:  # what the campaign counts
        return "traceback", f"{type(exc).__name__}: {exc}"[:300]
    took = time.perf_counter() - t0
    if took > LIMIT_S:
        return "hang", f"{took:.1f} s"
    if isinstance(raw, Mapping) and not strictly_typed(raw):
        return "coerced", json.dumps(raw, default=repr)[:300]
    return "ok", ""


def check_cli(raw: Any, directory: Path, rng: random.Random) -> tuple[str, str]:
    """``nexus-lab plan`` on ``raw`` written as YAML or JSON (sometimes with bytes that are not UTF-8): exit 0
    or 2, never a traceback."""
    import yaml

    path = directory / ("w.json" if rng.random() < 0.5 else "w.yaml")
    try:
        text = json.dumps(raw) if path.suffix == ".json" else yaml.safe_dump(raw)
    except (TypeError, ValueError, OverflowError, yaml.YAMLError):
        try:  # keys of mixed types, integers too long to print: write what can be written
            text = json.dumps(raw, default=str, skipkeys=True)
        except (TypeError, ValueError):
            text = "sessions: [{model: vgg16, slo_ms: 100, rate: 1}]"
    data = text.encode()
    if rng.random() < 0.1:
        cut = rng.randrange(len(data) + 1)
        data = data[:cut] + rng.choice([b"\xff", b"\xc3", b"\x00", b""]) + data[cut:]
    path.write_bytes(data)
    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    try:
        with _deadline(3 * LIMIT_S), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["plan", str(path)])
    except Hang:
        return "hang", "cli"
    except BaseException as exc:  # SystemExit from argparse included
        return "traceback", f"cli {type(exc).__name__}: {exc}"[:300]
    if time.perf_counter() - t0 > LIMIT_S:
        return "hang", "cli"
    if rc not in (0, 2) or "Traceback" in err.getvalue():
        return "traceback", f"cli rc={rc}: {err.getvalue()[-300:]}"
    return ("ok", "") if rc == 0 else ("refused", err.getvalue())


def random_api(rng: random.Random) -> dict[str, Any]:
    """Keyword arguments of ``plan_workload``, sometimes wrong."""
    out: dict[str, Any] = {}
    if rng.random() < 0.3:
        out["policy"] = rng.choice(["nexus", "nexus-greedy", "batch-oblivious", "clipper", "triton", "tf-serving",
                                    "nope", ["nexus"], None])
    if rng.random() < 0.3:
        out["gpus"] = rng.choice([1, 2, 7, 0, -1, 2.5, True, 10**400, 100_001, "3", None])
    if rng.random() < 0.2:
        out["fill"] = rng.choice([1.0, 2.0, 100.0, 0.5, math.nan, "2", 10**400])
    if rng.random() < 0.2:
        out["max_gpus"] = rng.choice([1, 10, 100_000, 0, 2.5, None, 10**400])
    if rng.random() < 0.1:
        out["split"] = rng.choice(["dp", "even", "odd", 3, {}])
    return out


def fuzz(n: int, seed: int = 0, cli_every: int = 5) -> dict[str, Any]:
    """Run ``n`` mutated workloads (every ``cli_every``-th also through the CLI); counts of each outcome."""
    rng = random.Random(seed)
    counts: dict[str, int] = {}
    failures: list[tuple[str, str]] = []
    slowest = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            raw = mutate(rng)
            t0 = time.perf_counter()
            outcome = check_workload(raw, random_api(rng) if rng.random() < 0.3 else None)
            if i % cli_every == 0 and outcome[0] in ("ok", "refused"):
                outcome = check_cli(raw, Path(tmp), rng)
            slowest = max(slowest, time.perf_counter() - t0)
            counts[outcome[0]] = counts.get(outcome[0], 0) + 1
            if outcome[0] not in ("ok", "refused"):
                failures.append(outcome)
    return {"cases": n, "seed": seed, **{k: counts.get(k, 0) for k in
                                         ("ok", "refused", "traceback", "hang", "coerced", "invalid")},
            "slowest_s": round(slowest, 3), "failures": failures[:20]}


# ---------------------------------------------------------------------------------------------- tests
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(st.integers(0, 2**32 - 1))
def test_mutated_workloads_plan_or_are_refused_naming_a_field(seed):
    rng = random.Random(seed)
    raw = mutate(rng)
    api = random_api(rng) if rng.random() < 0.3 else None
    t0 = time.perf_counter()
    outcome, detail = check_workload(raw, api)
    assert outcome in ("ok", "refused"), (outcome, detail, raw, api)
    assert time.perf_counter() - t0 < LIMIT_S


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(st.integers(0, 2**32 - 1))
def test_mutated_files_through_the_cli(tmp_path_factory, seed):
    rng = random.Random(seed)
    outcome, detail = check_cli(mutate(rng), tmp_path_factory.mktemp("cli"), rng)
    assert outcome in ("ok", "refused"), (outcome, detail)


@pytest.mark.parametrize("raw", [
    {"sessions": [{"model": "vgg16", "slo_ms": 10**400, "rate": 1}]},
    {"sessions": [{"model": "vgg16", "slo_ms": 100, "rate": 1, 1: "x", "y": 2}]},
    {"safety": 1e-320, "sessions": [{"model": "vgg16", "slo_ms": 100, "rate": 1}]},
    {"device": {"name": {"a": 1}}},
    {"sessions": [{"name": 1e308, "model": "vgg16", "slo_ms": 100, "rate": 1}]},
    {"sessions": 0},
    {"sessions": [{"model": "vgg16", "slo_ms": 100, "rate": 1e9}]},
    {"sessions": [{"model": "vgg16", "slo_ms": 100, "rate": 5e-324}]},
    {"sessions": [{"model": "vgg16", "slo_ms": 1e308, "rate": 1e5}]},
    {"net_ms": 1e308, "sessions": [{"model": "vgg16", "slo_ms": 100, "rate": 1}]},
    {"queries": [{"name": "q", "slo_ms": 1e300, "rate": 1, "stages": [{"name": "a", "model": "vgg16"}]}]},
    {"queries": [{"name": "q", "slo_ms": 400, "rate": 1, "stages": [
        {"name": f"s{i}", "model": "vgg_s", **({"parent": f"s{i - 1}"} if i else {})} for i in range(300)]}]},
])
def test_reported_inputs_are_refused_or_planned_quickly(raw):
    outcome, detail = check_workload(raw)
    assert outcome in ("ok", "refused"), detail
    if outcome == "refused":
        assert ":" in detail


def test_api_arguments_are_checked():
    wl = load_workload({"sessions": [{"model": "vgg16", "slo_ms": 100, "rate": 350}]})
    for kwargs, field in [({"policy": ["nexus"]}, "policy"), ({"split": {}}, "split"), ({"gpus": 2.5}, "gpus"),
                          ({"gpus": 10**400}, "gpus"), ({"fill": math.nan}, "fill"), ({"max_gpus": None}, "max_gpus")]:
        with pytest.raises(ValueError, match=rf"^{field}: "):
            plan_workload(wl, **kwargs)


def test_campaign_counts():
    result = fuzz(30, seed=1, cli_every=3)
    assert result["traceback"] == result["hang"] == result["coerced"] == result["invalid"] == 0, result["failures"]


if __name__ == "__main__":
    cases = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    print(json.dumps(fuzz(cases, seed=int(sys.argv[2]) if len(sys.argv) > 2 else 0), indent=2, default=str))
