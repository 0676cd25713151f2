"""``nexus-lab serve --scheduler tls://...`` attaches to a TLS cluster with the client's credentials as files
(``--tls-ca-file``, ``--tls-cert``, ``--tls-key``), and refuses a TLS address without them, a missing file, or
credentials it cannot use, naming the flag, before anything starts."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import dask
import pytest
import requests

from nexus_lab.cli import build_parser
from nexus_lab.cli import main as cli_main
from nexus_lab.ingress import headless

SIM = "simulated:titan-x-pascal"
WORKLOAD = ("models:\n  - {name: vgg16, profile: titan-x-pascal/vgg16}\n"
            "sessions:\n  - {name: cls, model: vgg16, slo_ms: 300, rate: 20}\n")


@pytest.fixture
def workload(tmp_path: Path) -> Path:
    wl = tmp_path / "wl.yaml"
    wl.write_text(WORKLOAD)
    return wl


def _refused(capsys, argv: list[str]) -> str:
    assert cli_main(argv) == 2
    return capsys.readouterr().err


def test_a_tls_address_without_credentials_is_refused_naming_the_flags(capsys, workload, tmp_path):
    err = _refused(capsys, ["serve", str(workload), "--scheduler", "tls://127.0.0.1:1"])
    assert "uses TLS" in err and "--tls-ca-file" in err and "--tls-cert" in err and "Traceback" not in err
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    err = _refused(capsys, ["serve", str(workload), "--scheduler", "tls://127.0.0.1:1", "--tls-ca-file", str(ca)])
    assert "--tls-cert PATH" in err and "--tls-ca-file and" not in err
    err = _refused(capsys, ["serve", str(workload), "--scheduler", "tls://127.0.0.1:1", "--tls-ca-file", str(ca),
                            "--tls-cert", str(tmp_path / "missing.pem")])
    assert "--tls-cert: " in err and "is not a readable file" in err
    err = _refused(capsys, ["serve", str(workload), "--tls-ca-file", str(ca)])
    assert "--tls-ca-file: only with --scheduler tls://" in err
    err = _refused(capsys, ["serve", str(workload), "--scheduler", "tcp://127.0.0.1:1", "--tls-cert", str(ca)])
    assert "--tls-cert: --scheduler 'tcp://127.0.0.1:1' is not a tls:// address" in err


def test_plain_addresses_need_no_credentials():
    args = build_parser().parse_args(["serve", "wl.yaml", "--scheduler", "tcp://127.0.0.1:1"])
    assert headless.scheduler_security(args) is None
    assert headless.scheduler_security(build_parser().parse_args(["serve", "wl.yaml"])) is None


def _pem_files(security, folder: Path) -> dict[str, str]:
    """The cluster's client credentials as files (``Security.temporary()`` holds them in memory)."""
    folder.mkdir(exist_ok=True)
    out = {}
    for flag, field in (("--tls-ca-file", "tls_ca_file"), ("--tls-cert", "tls_client_cert"),
                        ("--tls-key", "tls_client_key")):
        path = folder / f"{field}.pem"
        path.write_text(getattr(security, field))
        path.chmod(0o600)
        out[flag] = str(path)
    return out


def test_serve_attaches_to_a_tls_cluster_with_credential_files(capsys, workload, tmp_path):
    from nexus_lab.controller import start

    owner = start(gpus=1, device=SIM, auto=False)  # a TLS-only cluster with certificates of its own
    try:
        addr = owner.client.scheduler.address
        assert addr.startswith("tls://")
        files = _pem_files(owner.client.security, tmp_path)
        argv = ["serve", str(workload), "--scheduler", addr, "--port", "0", "--epoch", "5"]
        for flag, path in files.items():
            argv += [flag, path]
        args = build_parser().parse_args(argv)
        sec = headless.scheduler_security(args)
        assert sec.require_encryption and sec.tls_ca_file == files["--tls-ca-file"]
        stop = threading.Event()
        result: list = []
        runner = threading.Thread(target=lambda: result.append(headless.main(args, stop)), daemon=True)
        runner.start()
        out, deadline = "", time.monotonic() + 60
        while "serving on" not in out and runner.is_alive() and time.monotonic() < deadline:
            time.sleep(0.2)
            out += capsys.readouterr().out
        assert "serving on http://127.0.0.1:" in out, out
        url = out.split("serving on ")[1].split()[0]
        r = requests.post(url + "/v2/models/cls/infer", timeout=10,
                          json={"id": "t", "inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32",
                                                       "data": [1, 2]}]})
        assert r.status_code == 200 and r.json()["id"] == "t", r.text
        stop.set()
        runner.join(60)
        assert not runner.is_alive() and result == [0]
        # credentials of another cluster: the handshake fails, an error naming --scheduler, no traceback
        from distributed.security import Security

        other = _pem_files(Security.temporary(), tmp_path / "other")
        argv = ["serve", str(workload), "--scheduler", addr, "--port", "0"]
        for flag, path in other.items():
            argv += [flag, path]
        capsys.readouterr()
        with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
            assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert f"--scheduler: cannot connect to '{addr}'" in err and "Traceback" not in err, err
    finally:
        owner.close()
