"""The endpoint on a cluster of simulated GPUs, with real clients: tritonclient's ``InferenceServerClient`` (binary
and JSON tensors), a plain HTTP client under load while the plan moves, per-frontend stats in ``state()``, a frontend
whose worker process is killed while the other's clients see no error, and the headless ``nexus-lab serve``."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests

tc = pytest.importorskip("tritonclient.http")

from nexus_lab.controller import start  # noqa: E402

SIM = "simulated:titan-x-pascal"
SLO_MS = 300.0  # loose: the host is shared, and these tests are about the path, not the SLO


@pytest.fixture(scope="module")
def served():
    ctl = start(gpus=3, device=SIM, auto=False, fill=1.0)
    try:
        workers = ctl.workers()
        ctl.add_session("vgg16", slo_ms=SLO_MS, rate=200, name="cls")  # above what the tests offer
        ctl.pin("cls", 0)
        ctl.apply()
        urls = ctl.serve(frontends=2, workers=workers[1:])  # children of workers that run no model of the plan
        yield ctl, urls
    finally:
        ctl.close()


def triton(url: str):
    return tc.InferenceServerClient(url[len("http://"):], connection_timeout=10, network_timeout=10)


def test_tritonclient_binary_and_json_on_a_session(served):
    ctl, urls = served
    assert len(urls) == 2 and ctl.endpoints() == urls
    for url in urls:
        c = triton(url)
        assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("cls")
        assert not c.is_model_ready("nope")
        meta = c.get_model_metadata("cls")
        assert meta["name"] == "cls" and meta["inputs"][0]["name"] == "input"
        x = np.random.default_rng(0).random((3, 8), dtype=np.float32)
        inp = tc.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)  # binary (the client's default), outputs binary too
        r = c.infer("cls", [inp], request_id="req-1")
        assert r.get_response()["id"] == "req-1" and r.as_numpy("output").shape == (3, 1000)
        inp.set_data_from_numpy(x, binary_data=False)
        r = c.infer("cls", [inp], outputs=[tc.InferRequestedOutput("output", binary_data=False)])
        assert r.as_numpy("output").shape == (3, 1000) and r.as_numpy("output").dtype == np.float32
        with pytest.raises(tc.InferenceServerException, match="unknown model"):
            c.infer("nope", [inp])


def _hammer(url: str, n: int, rate: float, out: list, stop: threading.Event | None = None) -> None:
    """One keep-alive client: ``n`` requests paced at ``rate``; (status, latency s, text) each."""
    body = b'{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}'
    with requests.Session() as s:
        t0 = time.perf_counter()
        for k in range(n):
            if stop is not None and stop.is_set():
                return
            time.sleep(max(0.0, t0 + k / rate - time.perf_counter()))
            t = time.perf_counter()
            try:
                r = s.post(url + "/v2/models/cls/infer", data=body, timeout=10)
                out.append((r.status_code, time.perf_counter() - t, r.text[:200]))
            except requests.RequestException as exc:
                out.append((-1, time.perf_counter() - t, str(exc)))


def test_load_through_http_while_the_plan_moves_loses_nothing(served):
    ctl, urls = served
    results: list = []
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        futs = [ex.submit(_hammer, urls[k % 2], 120, 40.0, results) for k in range(4)]
        time.sleep(1.0)
        ctl.unpin("cls")
        ctl.pin("cls", 2)  # the session moves from worker 0 to worker 2 mid-load
        ctl.apply()
        assert ctl.assignment[ctl.workers()[2]] and not ctl.assignment[ctl.workers()[0]]
        for f in futs:
            f.result()
    bad = [r for r in results if r[0] != 200]
    assert len(results) == 480 and not bad, bad[:3]
    lat = sorted(r[1] for r in results)
    assert lat[len(lat) // 2] < SLO_MS / 1000.0
    time.sleep(1.2)  # the frontends publish their counts every poll
    fronts = ctl.state()["cluster"]["frontends"]
    assert [f["url"] for f in fronts] == urls and all(f["alive"] for f in fronts)
    assert all(f["requests"] >= 240 for f in fronts), fronts


def test_errors_by_status_show_in_state(served):
    ctl, urls = served
    assert requests.get(urls[0] + "/v2/models/missing", timeout=5).status_code == 404
    time.sleep(1.2)
    fronts = {f["url"]: f for f in ctl.state()["cluster"]["frontends"]}
    assert fronts[urls[0]]["errors"].get("404", 0) >= 1 and fronts[urls[0]]["rate"] >= 0.0


def test_tritonclient_on_a_query_answers_every_stage(served):
    ctl, urls = served
    ctl.add_query("traffic", slo_ms=400, rate=10, stages=[{"name": "detect", "model": "yolo9000"},
                                                          {"name": "car", "model": "vgg16", "parent": "detect"}])
    ctl.apply()
    c = triton(urls[0])
    deadline = time.time() + 5
    while not c.is_model_ready("traffic") and time.time() < deadline:  # the frontends poll for new routes
        time.sleep(0.1)
    meta = c.get_model_metadata("traffic")
    assert [o["name"] for o in meta["outputs"]] == ["detect", "car"] and meta["inputs"][0]["shape"][0] == 1
    frame = np.random.default_rng(1).random((1, 3, 16, 16), dtype=np.float32)
    for binary in (True, False):
        inp = tc.InferInput("input", list(frame.shape), "FP32")
        inp.set_data_from_numpy(frame, binary_data=binary)
        outs = [tc.InferRequestedOutput(n, binary_data=binary) for n in ("detect", "car")]
        r = c.infer("traffic", [inp], outputs=outs, request_id=f"q-{binary}")
        boxes, cars = r.as_numpy("detect"), r.as_numpy("car")
        assert r.get_response()["id"] == f"q-{binary}"
        assert boxes.shape[0] == 1 and boxes.shape[-1] == 6  # one frame's boxes (padded), 6 numbers per box
        n_boxes = int((boxes[0].sum(axis=1) != 0).sum())
        assert cars.shape[0] == n_boxes and (n_boxes == 0 or cars.shape[1] == 1000)
    frames2 = np.zeros((2, 3, 16, 16), np.float32)
    inp = tc.InferInput("input", list(frames2.shape), "FP32")
    inp.set_data_from_numpy(frames2)
    with pytest.raises(tc.InferenceServerException, match="at most 1 per request"):
        c.infer("traffic", [inp])


def test_killing_a_frontends_process_leaves_the_others_clients_without_error(served):
    ctl, urls = served
    eps = {e.url: e.worker for e in ctl._endpoints}
    victim = eps[urls[0]]
    pid = ctl.client.run(os.getpid, workers=[victim])[victim]
    gone = next(e.pid for e in ctl._endpoints if e.url == urls[0])  # the frontend process that dies with it
    survivor: list = []
    doomed: list = []
    stop = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(3) as ex:
        futs = [ex.submit(_hammer, urls[1], 100, 50.0, survivor), ex.submit(_hammer, urls[1], 100, 50.0, survivor),
                ex.submit(_hammer, urls[0], 100, 50.0, doomed, stop)]
        time.sleep(0.6)
        os.kill(pid, signal.SIGKILL)
        for f in futs:
            f.result()
    bad = [r for r in survivor if r[0] != 200]
    assert len(survivor) == 200 and not bad, bad[:3]
    assert any(r[0] == -1 for r in doomed)  # the killed frontend's own clients lost their connection
    deadline = time.time() + 10

    def dead_one_listed() -> bool:  # the killed frontend, until the controller's watcher starts it again on its URL
        return urls[0] in ctl.endpoints() and {e.url: e.pid for e in ctl._endpoints}.get(urls[0]) == gone

    while dead_one_listed() and time.time() < deadline:
        time.sleep(0.2)
    assert not dead_one_listed() and urls[1] in ctl.endpoints()
    while psutil.pid_exists(gone) and psutil.Process(gone).status() != psutil.STATUS_ZOMBIE and time.time() < deadline:
        time.sleep(0.1)  # the frontend process follows its worker
    assert not psutil.pid_exists(gone) or psutil.Process(gone).status() == psutil.STATUS_ZOMBIE


def test_frontends_on_threads_of_the_workers_own_processes(served):
    ctl, _ = served
    from nexus_lab.workload import WorkloadError

    urls = ctl.serve(frontends=2, dedicated=False)
    pids = ctl.client.run(os.getpid)
    assert sorted(e.pid for e in ctl._endpoints) == sorted(pids[e.worker] for e in ctl._endpoints)
    x = np.ones((1, 4), np.float32)
    inp = tc.InferInput("input", [1, 4], "FP32")
    inp.set_data_from_numpy(x)
    for url in urls:
        assert triton(url).infer("cls", [inp]).as_numpy("output").shape == (1, 1000)
    with pytest.raises(WorkloadError, match="one thread per worker process"):
        ctl.serve(frontends=len(pids) + 1, dedicated=False)


def test_serve_refuses_bad_arguments(served):
    ctl, _ = served
    from nexus_lab.workload import WorkloadError

    with pytest.raises(WorkloadError, match=r"serve\.frontends"):
        ctl.serve(frontends=99)
    with pytest.raises(WorkloadError, match=r"serve\.workers"):
        ctl.serve(workers=["tls://nowhere:1"])
    import socket

    with socket.socket() as taken:  # a port in use: refused naming it, nothing left running
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(WorkloadError, match=r"serve\.port: cannot listen"):
            ctl.serve(port=taken.getsockname()[1], frontends=1)
    assert ctl.endpoints() == []


def test_headless_serve_prints_its_url_and_stops_on_sigterm(tmp_path: Path):
    wl = tmp_path / "wl.yaml"
    wl.write_text("models:\n  - {name: vgg16, profile: titan-x-pascal/vgg16}\n"
                  "sessions:\n  - {name: cls, model: vgg16, slo_ms: 300, rate: 20}\n")
    proc = subprocess.Popen([sys.executable, "-m", "nexus_lab.cli", "serve", str(wl), "--gpus", "1", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving on http://127.0.0.1:"), (line, proc.stderr.read() if proc.poll() else "")
        url = line.split()[-1]
        assert requests.get(url + "/v2/health/ready", timeout=5).status_code == 200
        r = requests.post(url + "/v2/models/cls/infer", timeout=5,
                          json={"id": "x", "inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32",
                                                       "data": [1, 2]}]})
        assert r.status_code == 200 and r.json()["id"] == "x", r.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
