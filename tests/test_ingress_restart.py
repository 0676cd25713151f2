"""A frontend that dies is started again by the controller's watcher, on the same URL with the same token: killed
with its worker (the nanny brings the worker back), it answers again within seconds while the other frontend's
clients see no error; a frontend process killed alone comes back on its own worker; ``stop_serving`` ends the
watcher. Each restart is an event."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading
import time

import pytest
import requests

from nexus_lab.controller import start
from nexus_lab.controller.ingress import WATCH

SIM = "simulated:titan-x-pascal"
TOKEN = "restart-token"
BODY = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


@pytest.fixture(scope="module")
def served():
    ctl = start(gpus=3, device=SIM, auto=False, fill=1.0)
    try:
        ctl.add_session("vgg16", slo_ms=300.0, rate=200, name="cls")
        ctl.pin("cls", 0)  # the model runs on worker 0; the frontends on the two others
        ctl.apply()
        urls = ctl.serve(frontends=2, workers=spare_workers(ctl), token=TOKEN)
        yield ctl, urls
    finally:
        ctl.close()


def spare_workers(ctl) -> list[str]:
    """The workers that run no backend of the plan (addresses change as the nanny restarts workers, so ask)."""
    busy = {g["worker"] for g in ctl.state()["gpus"] if g["sessions"]}
    assert len(busy) == 1
    return [w for w in ctl.workers() if w not in busy]


def infer(url: str, token: str | None = TOKEN, timeout: float = 5.0) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        return requests.post(url + "/v2/models/cls/infer", json=BODY, headers=headers, timeout=timeout).status_code
    except requests.RequestException:
        return -1


def hammer(url: str, stop: threading.Event, out: list) -> None:
    with requests.Session() as s:
        while not stop.is_set():
            try:
                r = s.post(url + "/v2/models/cls/infer", json=BODY, timeout=10,
                           headers={"Authorization": f"Bearer {TOKEN}"})
                out.append(r.status_code)
            except requests.RequestException as exc:
                out.append(repr(exc))
            time.sleep(0.02)


def wait_until(pred, timeout_s: float) -> float:
    """Seconds until ``pred()`` held; fails the test after ``timeout_s``."""
    t0 = time.monotonic()
    while not pred():
        assert time.monotonic() - t0 < timeout_s, f"not within {timeout_s} s"
        time.sleep(0.2)
    return time.monotonic() - t0


def test_a_frontend_killed_with_its_worker_answers_again_on_its_url(served):
    ctl, urls = served
    assert all(infer(u) == 200 for u in urls)
    victim = next(e for e in ctl._endpoints if e.url == urls[0])
    home = ctl.client.scheduler_info(n_workers=-1)["workers"][victim.worker]["name"]
    pid = ctl.client.run(os.getpid, workers=[victim.worker])[victim.worker]
    other: list = []
    stop = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        futs = [ex.submit(hammer, urls[1], stop, other) for _ in range(2)]
        time.sleep(0.5)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: infer(urls[0], timeout=1.0) == -1, 5.0)  # gone with its worker
        back_s = wait_until(lambda: infer(urls[0], timeout=2.0) == 200, 20.0)
        time.sleep(0.5)
        stop.set()
        for f in futs:
            f.result()
    assert back_s < 15.0
    assert other and all(c == 200 for c in other), [c for c in other if c != 200][:3]
    assert infer(urls[0], token=None) == 401 and infer(urls[0], token="wrong") == 401  # the same token
    now = next(e for e in ctl._endpoints if e.name == victim.name)
    assert now.url == urls[0] and now.pid != victim.pid and now.worker != victim.worker
    assert ctl.client.scheduler_info(n_workers=-1)["workers"][now.worker]["name"] == home  # the nanny's worker
    ev = [e for e in ctl._events if e["event"] == "frontend_restarted" and e["name"] == victim.name]
    assert ev and ev[-1]["url"] == urls[0] and ev[-1]["previous_worker"] == victim.worker
    assert sorted(ctl.endpoints()) == sorted(urls)
    rows = {f["name"]: f for f in ctl.state()["cluster"]["frontends"]}
    assert rows[victim.name]["alive"] and rows[victim.name]["restarts"] == 1


def test_a_frontend_process_killed_alone_comes_back_on_its_worker(served, monkeypatch):
    ctl, urls = served
    monkeypatch.setattr(WATCH, "process_s", 1.0)
    victim = next(e for e in ctl._endpoints if e.url == urls[1])
    before = sum(e["event"] == "frontend_restarted" for e in ctl._events)
    os.kill(victim.pid, signal.SIGKILL)
    wait_until(lambda: infer(urls[1], timeout=2.0) == 200 and
               next(e for e in ctl._endpoints if e.name == victim.name).pid != victim.pid, 20.0)
    now = next(e for e in ctl._endpoints if e.name == victim.name)
    assert now.worker == victim.worker and now.url == urls[1]
    assert sum(e["event"] == "frontend_restarted" for e in ctl._events) == before + 1


def test_a_frontend_on_a_workers_thread_comes_back_with_its_worker(served):
    ctl, _ = served
    w = spare_workers(ctl)[0]
    (url,) = ctl.serve(frontends=1, workers=[w], dedicated=False, token=TOKEN)
    assert infer(url) == 200
    pid = ctl.client.run(os.getpid, workers=[w])[w]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: infer(url, timeout=1.0) == -1, 5.0)
    wait_until(lambda: infer(url, timeout=2.0) == 200, 20.0)
    (now,) = ctl._endpoints
    assert now.url == url and now.worker != w
    assert now.pid == ctl.client.run(os.getpid, workers=[now.worker])[now.worker]  # a thread of the new worker


def test_a_frontend_whose_worker_is_retired_moves_to_another(served, monkeypatch):
    ctl, _ = served
    monkeypatch.setattr(WATCH, "rehome_s", 0.5)
    gone, spare = spare_workers(ctl)
    (url,) = ctl.serve(frontends=1, workers=[gone, spare], token=TOKEN)
    ctl.client.retire_workers([gone], close_workers=True, remove=True)  # gone for good: no nanny restart
    wait_until(lambda: len(ctl.workers()) == 2, 20.0)
    wait_until(lambda: ctl._endpoints[0].worker != gone, 20.0)
    assert infer(url, timeout=5.0) == 200
    (now,) = ctl._endpoints
    assert now.url == url and now.worker == spare  # among the workers serve was given, not the backend's
    ev = [e for e in ctl._events if e["event"] == "frontend_restarted"][-1]
    assert ev["previous_worker"] == gone and ev["worker"] == now.worker


def test_stop_serving_ends_the_watcher_and_restarts_nothing(served):
    ctl, _ = served
    thread = ctl._watcher[0]
    assert thread.is_alive()
    ctl.stop_serving()
    assert not thread.is_alive() and ctl._watcher is None and ctl.endpoints() == []
    assert ctl.state()["cluster"]["frontends"] == []
