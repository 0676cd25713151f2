"""The nexus-lab command: plan output, the JSON contract, and exit code 2 with a named field on bad input."""

import json
import subprocess
import sys

import pytest

from nexus_lab.cli import main

WORKLOAD = """
sessions:
  - {model: vgg16, slo_ms: 100, rate: 350}
  - {model: vgg_s, slo_ms: 50, rate: 900}
  - {model: yolo9000, slo_ms: 60, rate: 5}
"""


@pytest.fixture
def workload(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text(WORKLOAD)
    return path


def test_plan_json_is_the_contract(workload, capsys):
    assert main(["plan", str(workload), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert {"gpus", "sessions", "num_gpus", "lower_bound_gpus"} <= set(plan)
    for g in plan["gpus"]:
        assert {"id", "duty_cycle_ms", "occupancy", "memory_mb", "allocations"} <= set(g)
        for a in g["allocations"]:
            assert set(a) >= {"session", "model", "slo_ms", "batch", "rate"}
    assert plan["num_gpus"] == len(plan["gpus"]) >= 1
    # yolo9000 at 60 ms cannot be served: its pre/post-processing alone exceed the SLO.
    assert [u["session"] for u in plan["unserved"]] == ["yolo9000:60"]


def test_plan_with_fixed_cluster_scales_rates(workload, capsys):
    assert main(["plan", str(workload), "--gpus", "1", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["num_gpus"] == 1
    assert 0 < plan["rate_fraction"] < 1


def test_simulate_json_with_either_batch_latency(workload, capsys):
    p50 = {}
    for mode in ("measured", "planned"):
        assert main(["simulate", str(workload), "--json", "--duration", "3", "--batch-latency", mode]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["metrics"]["batch_latency"] == mode and out["plan"]["num_gpus"] >= 1
        p50[mode] = out["metrics"]["sessions"]["vgg16:100"]["latency_p50_ms"]
    assert p50["measured"] < p50["planned"]  # the device is faster than the inflated planning latency


def test_plan_text_report(workload, capsys):
    assert main(["plan", str(workload)]) == 0
    out = capsys.readouterr().out
    assert "lower bound" in out and "UNSERVED yolo9000:60" in out


def test_bad_workload_exits_2_naming_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sessions:\n  - {model: vgg16, slo_ms: 50, rate: 1}\n  - {model: vgg16, slo_ms: 50, rate: 2}\n"
                   "  - {model: vgg_s, slo_ms: 50, rate: 2}\n  - {model: vgg_s, slo_ms: -1, rate: 2}\n")
    proc = subprocess.run([sys.executable, "-m", "nexus_lab.cli", "plan", str(bad)], capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert "sessions[1].name: duplicate" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_gpus_argument_exits_2(workload):
    proc = subprocess.run([sys.executable, "-m", "nexus_lab.cli", "plan", str(workload), "--gpus", "0"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "--gpus" in proc.stderr and ">= 1" in proc.stderr


@pytest.mark.parametrize("text, message", [
    ("sessions:\n  - {name: traffic/detect, model: vgg16, slo_ms: 100, rate: 1}\nqueries:\n  - {name: traffic, "
     "slo_ms: 400, rate: 30, stages: [{name: detect, model: yolo9000}]}\n",
     "queries[0].stages[0].name: 'traffic/detect' collides with sessions[0].name"),
    ("sessions:\n  - {name: q/x/y, model: vgg16, slo_ms: 100, rate: 1}\nqueries:\n  - {name: q/x, slo_ms: 400, "
     "rate: 30, stages: [{name: y, model: vgg16}]}\n", "'q/x/y' collides with sessions[0].name"),
    ("sessions:\n  - {model: vgg16, slo_ms: 100, rate: 1, 1: x, y: 2}\n", "sessions[0]: unknown field(s)"),
    ("safety: 1.0e-320\nsessions:\n  - {model: vgg16, slo_ms: 100, rate: 1}\n", "workload.safety: must be >= 0.1"),
    ("device: {name: {a: 1}}\n", "device.name: must be a non-empty string"),
    ("sessions:\n  - {name: 1.0e+308, model: vgg16, slo_ms: 100, rate: 1}\n", "sessions[0].name: must be a non-empty"),
    ("sessions: 0\n", "sessions: must be a list, got 0"),
    ("sessions:\n  - {model: vgg16, slo_ms: " + "9" * 400 + ", rate: 1}\n", "sessions[0].slo_ms: must be a finite"),
])
def test_reported_inputs_exit_2_naming_the_field(tmp_path, capsys, text, message):
    path = tmp_path / "w.yaml"
    path.write_text(text)
    assert main(["plan", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_non_utf8_file_exits_2(tmp_path, capsys):
    path = tmp_path / "w.yaml"
    path.write_bytes(b"sessions: []\n# \xe9t\xe9\n")
    assert main(["plan", str(path)]) == 2
    assert "workload: w.yaml is not UTF-8 text (byte 15)" in capsys.readouterr().err


def test_simulate_text_report_gives_each_query_end_to_end(capsys):
    from importlib.resources import files

    demo = files("nexus_lab.workloads") / "demo.yaml"
    assert main(["simulate", str(demo), "--duration", "4"]) == 0
    out = capsys.readouterr().out
    assert "end to end:" in out
    row = next(line for line in out.splitlines() if line.startswith("traffic "))
    assert "%" in row and len(row.split()) >= 6
