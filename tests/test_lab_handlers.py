"""Tests of the Nexus panel's REST handlers under a real jupyter_server (pytest-jupyter's ``jp_fetch``).

A fake controller registered through ``nexus_lab.lab.registry`` stands in for the controller; no Dask.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from jupyter_core.paths import jupyter_runtime_dir
from tornado.httpclient import HTTPClientError

from nexus_lab.lab import handlers, registry

pytest_plugins = ["pytest_jupyter.jupyter_server"]


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"nexus_lab.lab": True}}}


class FakeController:
    def __init__(self, gpus: int = 2) -> None:
        self.gpus, self.replans, self.paused = gpus, 0, False

    def state(self) -> dict:
        return {"cluster": {"workers": self.gpus, "version": self.replans, "paused": self.paused},
                "gpus": [{"gpu": i, "utilization": 0.25 * i} for i in range(self.gpus)], "sessions": [],
                "queries": []}

    def replan_now(self) -> None:
        self.replans += 1

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False


@pytest.fixture
def controller(jp_serverapp):
    ctl = FakeController(gpus=4)
    reg = registry.register(ctl, name="fake", runtime_dir=jupyter_runtime_dir())
    yield ctl, reg
    reg.close()


async def _json_error(jp_fetch, *parts, **kw) -> tuple[int, dict]:
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch(*parts, **kw)
    return info.value.code, json.loads(info.value.response.body)


async def test_list_hides_port_and_token(jp_fetch, controller):
    _ctl, reg = controller
    r = await jp_fetch("nexus", "api", "controllers")
    body = json.loads(r.body)
    assert [c["id"] for c in body["controllers"]] == [reg.id]
    c = body["controllers"][0]
    assert c["name"] == "fake" and c["alive"] is True and c["pid"] == os.getpid()
    assert "token" not in c and "port" not in c


async def test_state_and_actions(jp_fetch, controller):
    ctl, reg = controller
    r = await jp_fetch("nexus", "api", "controllers", reg.id, "state")
    assert len(json.loads(r.body)["gpus"]) == 4
    for action in ("replan", "pause"):
        r = await jp_fetch("nexus", "api", "controllers", reg.id, action, method="POST", body=b"")
        assert json.loads(r.body) == {"ok": True, "action": action}
    assert ctl.replans == 1 and ctl.paused
    await jp_fetch("nexus", "api", "controllers", reg.id, "resume", method="POST", body=b"")
    assert not ctl.paused


async def test_state_change_needs_post(jp_fetch, controller):
    _, reg = controller
    code, _ = await _json_error(jp_fetch, "nexus", "api", "controllers", reg.id, "replan")
    assert code == 405


@pytest.mark.parametrize("auth", [None, "token wrong-token"])
async def test_403_without_valid_token(jp_fetch, controller, auth):
    ctl, reg = controller
    headers = {"Authorization": auth or ""}
    for parts, kw in [(("nexus", "api", "controllers"), {}),
                      (("nexus", "api", "controllers", reg.id, "state"), {}),
                      (("nexus", "api", "controllers", reg.id, "replan"), {"method": "POST", "body": b""})]:
        with pytest.raises(HTTPClientError) as info:
            await jp_fetch(*parts, headers=dict(headers), **kw)
        assert info.value.code == 403
    assert ctl.replans == 0


async def test_unknown_controller_404(jp_fetch, jp_serverapp):
    code, body = await _json_error(jp_fetch, "nexus", "api", "controllers", "00000000deadbeef", "state")
    assert code == 404 and body["error"] == "unknown-controller" and "00000000deadbeef" in body["message"]


async def test_dead_controller_410_and_listed_as_gone(jp_fetch, jp_serverapp):
    pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                             text=True).stdout)
    d = registry.registry_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / "0123456789abcdef.json"
    path.write_text(json.dumps({"id": "0123456789abcdef", "name": "dead", "pid": pid, "port": 9, "token": "t",
                                "created": time.time()}))
    code, body = await _json_error(jp_fetch, "nexus", "api", "controllers", "0123456789abcdef", "state")
    assert code == 410 and body["error"] == "controller-gone" and "exited" in body["message"]
    assert not path.exists()
    r = await jp_fetch("nexus", "api", "controllers")
    gone = json.loads(r.body)["controllers"]
    assert [(c["name"], c["alive"]) for c in gone] == [("dead", False)]
    code, _ = await _json_error(jp_fetch, "nexus", "api", "controllers", "0123456789abcdef", "replan", method="POST",
                                body=b"")
    assert code == 410


async def test_closed_controller_404(jp_fetch, controller):
    _, reg = controller
    reg.close()
    code, body = await _json_error(jp_fetch, "nexus", "api", "controllers", reg.id, "state")
    assert code == 404 and body["error"] == "unknown-controller"


async def test_unanswering_controller_502_not_hang(jp_fetch, jp_serverapp, monkeypatch):
    monkeypatch.setattr(handlers, "REQUEST_TIMEOUT_S", 0.5)
    with socket.socket() as s:  # listens but never answers: a wedged kernel
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        d = registry.registry_dir()
        d.mkdir(parents=True, exist_ok=True)
        (d / "abcdef0123456789.json").write_text(json.dumps({
            "id": "abcdef0123456789", "name": "wedged", "pid": os.getpid(), "port": s.getsockname()[1],
            "token": "t", "created": time.time()}))
        t0 = time.monotonic()
        code, body = await _json_error(jp_fetch, "nexus", "api", "controllers", "abcdef0123456789", "state")
        assert code == 502 and body["error"] == "controller-unreachable" and "wedged" in body["message"]
        assert time.monotonic() - t0 < 5


async def test_controller_exception_is_reported(jp_fetch, jp_serverapp):
    class Broken(FakeController):
        def state(self) -> dict:
            raise RuntimeError("scheduler lost")

    with registry.register(Broken(), runtime_dir=jupyter_runtime_dir()) as reg:
        code, body = await _json_error(jp_fetch, "nexus", "api", "controllers", reg.id, "state")
    assert code == 500 and "scheduler lost" in body["message"]


async def test_idle_local_connection_does_not_stall_the_panel(jp_fetch, controller):
    """Issue 12, item 6: one idle TCP connection to a controller's server made every panel call 502."""
    _, reg = controller
    with socket.create_connection(("127.0.0.1", reg.port)) as idle:
        idle.sendall(b"GET /state HTTP/1.1\r\n")  # half a request, then silence
        for _ in range(3):
            r = await jp_fetch("nexus", "api", "controllers", reg.id, "state")
            assert len(json.loads(r.body)["gpus"]) == 4


async def test_busy_controller_is_a_502_proxy_error(jp_fetch, controller, monkeypatch):
    monkeypatch.setattr(registry, "BUSY_WAIT_S", 0.3)
    _, reg = controller
    with reg.calls:  # another call (a re-plan on a frozen cluster) holds the controller
        code, body = await _json_error(jp_fetch, "nexus", "api", "controllers", reg.id, "state")
    assert code == 502 and body["error"] == "controller-busy" and "busy" in body["message"]
    assert (await jp_fetch("nexus", "api", "controllers", reg.id, "state")).code == 200


def _write_reg(cid: str, name: str, pid: int, kernel_id: str | None) -> None:
    d = registry.registry_dir()
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{cid}.json").write_text(json.dumps({"id": cid, "name": name, "pid": pid, "port": 9, "token": "t",
                                               "kernel_id": kernel_id, "created": time.time()}))


async def test_kernel_shut_down_through_the_api_reads_closed_a_crash_died(jp_fetch, jp_serverapp):
    """Issue 13: a deliberate kernel shutdown was reported as 'the kernel has died'."""
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    r = await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": "python3"}))
    kid = json.loads(r.body)["id"]
    try:
        # both registrations seen alive, one in this server's kernel
        _write_reg("00000000000000aa", "shut", os.getpid(), kid)
        _write_reg("00000000000000bb", "crashed", os.getpid(), "not-a-kernel-of-this-server")
        listed = json.loads((await jp_fetch("nexus", "api", "controllers")).body)["controllers"]
        assert {c["name"]: (c["alive"], c["ended"]) for c in listed} == {"shut": (True, None),
                                                                       "crashed": (True, None)}
    finally:
        await jp_fetch("api", "kernels", kid, method="DELETE")
    # both processes end without closing: the kernel that was shut down reads closed, the other died
    _write_reg("00000000000000aa", "shut", dead, kid)
    _write_reg("00000000000000bb", "crashed", dead, "not-a-kernel-of-this-server")
    code, body = await _json_error(jp_fetch, "nexus", "api", "controllers", "00000000000000aa", "state")
    assert code == 410 and body["error"] == "controller-closed" and body["ended"] == "closed"
    code, body = await _json_error(jp_fetch, "nexus", "api", "controllers", "00000000000000bb", "state")
    assert code == 410 and body["error"] == "controller-gone" and body["ended"] == "died"
    listed = json.loads((await jp_fetch("nexus", "api", "controllers")).body)["controllers"]
    assert {c["name"]: (c["alive"], c["ended"]) for c in listed} == {"shut": (False, "closed"),
                                                                   "crashed": (False, "died")}


async def test_controller_closed_while_asked_is_404_not_502(jp_fetch, jp_serverapp, monkeypatch):
    """Issue 13: a poll that met a kernel shutting down logged a 502 error; the controller was closed, as expected."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing answers there
    d = registry.registry_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / "abcdef0123456780.json"
    path.write_text(json.dumps({"id": "abcdef0123456780", "name": "closing", "pid": os.getpid(), "port": port,
                                "token": "t", "created": time.time()}))
    find = registry.find_registration

    def closing(cid, runtime_dir=None):  # the file goes while the proxy asks, as a closing registration's does
        found = find(cid, runtime_dir)
        path.unlink(missing_ok=True)
        return found

    monkeypatch.setattr(registry, "find_registration", closing)
    code, body = await _json_error(jp_fetch, "nexus", "api", "controllers", "abcdef0123456780", "state")
    assert code == 404 and body["error"] == "unknown-controller" and "closed" in body["message"]
