"""Tests of controller self-registration for the Nexus panel: 0600 files, loopback-only servers, stale pids.

Uses a small fake controller with the panel's interface; no Dask, no Jupyter server.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from nexus_lab.lab import registry


class FakeController:
    def __init__(self, gpus: int = 2) -> None:
        self.gpus = gpus
        self.replans = 0
        self.paused = False

    def state(self) -> dict:
        return {"cluster": {"workers": self.gpus, "paused": self.paused, "version": self.replans,
                            "nan": float("nan")},
                "gpus": [{"gpu": i, "utilization": 0.5} for i in range(self.gpus)], "sessions": [], "queries": []}

    def replan_now(self) -> None:
        self.replans += 1

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False


def _req(reg: registry.Registration, path: str, method: str = "GET", token: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{reg.port}{path}", method=method,
                                 data=b"" if method == "POST" else None,
                                 headers={"Authorization": f"Bearer {token or reg.token}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_register_writes_0600_file_and_close_removes_it(tmp_path):
    ctl = FakeController()
    reg = registry.register(ctl, name="demo", runtime_dir=tmp_path)
    try:
        assert reg.path.parent == tmp_path / "nexus-lab"
        assert stat.S_IMODE(reg.path.stat().st_mode) == 0o600
        data = json.loads(reg.path.read_text())
        assert data["id"] == reg.id and data["name"] == "demo" and data["pid"] == os.getpid()
        assert data["host"] == "127.0.0.1" and data["port"] == reg.port and data["token"] == reg.token
        assert data["kernel_id"] is None  # not inside a kernel
        assert [r["id"] for r in registry.list_registrations(tmp_path)] == [reg.id]
        assert registry.live_controller(reg.id) is ctl
    finally:
        reg.close()
    assert not reg.path.exists()
    assert registry.list_registrations(tmp_path) == []
    with pytest.raises(KeyError, match="controller_id"):
        registry.live_controller(reg.id)
    reg.close()  # idempotent


def test_server_bound_to_loopback_only(tmp_path):
    with registry.register(FakeController(), runtime_dir=tmp_path) as reg:
        assert reg._server.server_address[0] == "127.0.0.1"
        assert reg.host == "127.0.0.1"


def test_server_serves_state_and_actions_with_token(tmp_path):
    ctl = FakeController(gpus=3)
    with registry.register(ctl, runtime_dir=tmp_path) as reg:
        code, body = _req(reg, "/state")
        assert code == 200 and len(body["gpus"]) == 3
        assert body["cluster"]["nan"] is None  # strict JSON
        assert _req(reg, "/replan", "POST") == (200, {"ok": True, "action": "replan"})
        assert ctl.replans == 1
        _req(reg, "/pause", "POST")
        assert ctl.paused
        _req(reg, "/resume", "POST")
        assert not ctl.paused
        assert _req(reg, "/state", token="wrong")[0] == 403
        assert _req(reg, "/replan", "POST", token="wrong")[0] == 403
        assert ctl.replans == 1
        assert _req(reg, "/delete", "POST")[0] == 404


def test_controller_error_is_json_500(tmp_path):
    class Broken(FakeController):
        def state(self) -> dict:
            raise RuntimeError("scheduler lost")

    with registry.register(Broken(), runtime_dir=tmp_path) as reg:
        code, body = _req(reg, "/state")
        assert code == 500 and "scheduler lost" in body["message"]


def _raw(reg: registry.Registration, data: bytes) -> tuple[int, dict]:
    """Send raw bytes, read until the server closes; the status and JSON body of its answer."""
    with socket.create_connection(("127.0.0.1", reg.port), timeout=10) as s:
        s.sendall(data)
        resp = b""
        while chunk := s.recv(65536):
            resp += chunk
    head, body = resp.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(body)


def test_idle_connection_stalls_nothing_and_times_out(tmp_path, monkeypatch):
    """Issue 12, item 6: one idle local connection stalled the single-threaded server for everyone."""
    monkeypatch.setattr(registry, "SOCKET_TIMEOUT_S", 2.0)
    ctl = FakeController()
    with registry.register(ctl, runtime_dir=tmp_path) as reg, \
            socket.create_connection(("127.0.0.1", reg.port), timeout=10) as idle:
        idle.sendall(b"GET /state HTTP/1.1\r\n")  # half a request, then silence
        t0 = time.monotonic()
        assert _req(reg, "/state")[0] == 200
        assert _req(reg, "/replan", "POST")[0] == 200 and ctl.replans == 1
        assert time.monotonic() - t0 < 1.5  # served at once, not after the idle connection's timeout
        assert idle.recv(1024) == b""  # closed by the server's socket timeout
        assert time.monotonic() - t0 < 6


@pytest.mark.parametrize("length", ["abc", "-1", "1e3", "12 34", "\u00b2", ""])
def test_malformed_content_length_is_400_without_traceback(tmp_path, capfd, length):
    ctl = FakeController()
    with registry.register(ctl, runtime_dir=tmp_path) as reg:
        code, body = _raw(reg, (f"POST /replan HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {reg.token}\r\n"
                                f"Content-Length: {length}\r\n\r\n").encode("latin-1"))
        assert code == 400 and body["error"] == "bad-request" and "Content-Length" in body["message"]
        assert _req(reg, "/state")[0] == 200  # the server carries on
    assert ctl.replans == 0
    assert capfd.readouterr() == ("", "")


def test_oversize_body_is_refused(tmp_path, capfd):
    ctl = FakeController()
    with registry.register(ctl, runtime_dir=tmp_path) as reg:
        for length in (registry.MAX_BODY + 1, "9" * 5000):
            code, body = _raw(reg, (f"POST /replan HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {reg.token}\r\n"
                                    f"Content-Length: {length}\r\n\r\n").encode())
            assert code == 413 and body["error"] == "too-large"
        # a body within the bound is read and ignored
        code, body = _raw(reg, (f"POST /replan HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {reg.token}\r\n"
                                "Connection: close\r\nContent-Length: 5\r\n\r\nhello").encode())
        assert code == 200 and body == {"ok": True, "action": "replan"}
    assert ctl.replans == 1
    assert capfd.readouterr() == ("", "")


def test_client_errors_print_nothing(tmp_path, capfd):
    with registry.register(FakeController(), runtime_dir=tmp_path) as reg:
        for junk in (b"\x16\x03\x01\x00\xa5garbage\r\n\r\n", b"GET /state HTTP/1.1\r\nHost: x\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", reg.port), timeout=10) as s:
                s.sendall(junk)
                s.shutdown(socket.SHUT_RDWR)  # hang up before the answer is read
        try:
            raise ConnectionResetError("a client hung up")
        except ConnectionResetError:
            reg._server.handle_error(None, ("127.0.0.1", 1))  # what socketserver calls on a handler's error
        assert _req(reg, "/state")[0] == 200
    assert capfd.readouterr() == ("", "")


def test_stale_pid_is_ignored_and_cleaned(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    d = tmp_path / "nexus-lab"
    d.mkdir()
    stale = d / "0123456789abcdef.json"
    stale.write_text(json.dumps({"id": "0123456789abcdef", "name": "old", "pid": dead_pid, "port": 1, "token": "x",
                                 "created": 0.0}))
    assert not registry.pid_alive(dead_pid)
    assert registry.list_registrations(tmp_path, clean=False) == []
    assert stale.exists()
    assert registry.list_registrations(tmp_path) == []
    assert not stale.exists()
    # listed as gone for a while, so the panel can say the kernel died; then forgotten
    assert [r["name"] for r in registry.list_gone(tmp_path)] == ["old"]
    assert registry.find_registration("0123456789abcdef", tmp_path)["pid"] == dead_pid
    assert registry.list_gone(tmp_path, now=time.time() + registry.GONE_KEEP_S + 1) == []
    assert registry.find_registration("0123456789abcdef", tmp_path) is None


def test_malformed_files_are_skipped(tmp_path):
    d = tmp_path / "nexus-lab"
    d.mkdir()
    (d / "abcdefabcdef0000.json").write_text("{half")
    (d / "zzzz.json").write_text(json.dumps({"id": "../../etc", "pid": os.getpid(), "port": 1, "token": "t"}))
    assert registry.list_registrations(tmp_path) == []
    assert registry.find_registration("../../etc", tmp_path) is None


def test_unregister_and_bad_controller(tmp_path):
    ctl = FakeController()
    reg = registry.register(ctl, runtime_dir=tmp_path)
    assert registry.unregister(ctl) == 1 and reg.closed and not reg.path.exists()
    with pytest.raises(TypeError, match="controller: must have a callable state"):
        registry.register(object(), runtime_dir=tmp_path)


def test_atexit_removes_file_in_a_child_process(tmp_path):
    code = (
        f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "from test_lab_registry import FakeController\n"
        "from nexus_lab.lab import registry\n"
        f"r = registry.register(FakeController(), runtime_dir={str(tmp_path)!r})\n"
        "print(r.path, flush=True)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    path = out.stdout.strip()
    assert path.endswith(".json") and not os.path.exists(path)


def test_show_dashboard_names_unknown_controller():
    import nexus_lab.lab

    with pytest.raises(KeyError, match="controller_id: no live controller"):
        nexus_lab.lab.show_dashboard("ffffffffffffffff")


def test_extension_points_name_this_package():
    import nexus_lab.lab

    assert nexus_lab.lab._jupyter_server_extension_points() == [{"module": "nexus_lab.lab"}]
    (ext,) = nexus_lab.lab._jupyter_labextension_paths()
    src = os.path.normpath(os.path.join(os.path.dirname(nexus_lab.lab.__file__), ext["src"]))
    assert src == os.path.join(os.path.dirname(os.path.dirname(nexus_lab.lab.__file__)), "labextension")
    assert ext["dest"] == json.loads((Path(__file__).parents[1] / "extension" / "package.json").read_text())["name"]


def test_panel_benchmark_measures_the_kernel_side():
    from nexus_lab.bench.panel import run

    out = run(duration_s=2.0, rate_hz=2.0)
    assert out["requests"] == 4 and out["gpus"] == 64 and out["sessions"] == 100
    assert 0.0 < out["kernel_cpu_fraction"] < 1.0 and out["state_bytes"] > 10_000
    with pytest.raises(ValueError, match="rate_hz"):
        run(duration_s=1.0, rate_hz=0.0)


class ClosableController(FakeController):
    def __init__(self, close_s: float = 0.0) -> None:
        super().__init__()
        self.close_s, self.closed_at = close_s, None

    def close(self) -> None:
        time.sleep(self.close_s)
        self.closed_at = time.monotonic()


class FakeKernel:
    def __init__(self) -> None:
        self.shutdowns: list[bool] = []

    def do_shutdown(self, restart: bool) -> dict:
        self.shutdowns.append(restart)
        return {"status": "ok", "restart": restart}


def test_kernel_shutdown_closes_registrations_then_controllers(tmp_path):
    """Issue 13: a deliberate kernel shutdown read as 'the kernel has died' (SIGTERM came before atexit)."""
    from nexus_lab.lab import shutdown

    kernel, ctl = FakeKernel(), ClosableController()
    reg = registry.register(ctl, runtime_dir=tmp_path)
    assert shutdown.install(kernel, lambda: list(registry._LIVE.values()))
    assert not shutdown.install(kernel, lambda: [])  # once per kernel
    assert kernel.do_shutdown(False) == {"status": "ok", "restart": False}
    assert kernel.shutdowns == [False]
    assert reg.closed and reg.close_reason == "kernel-shutdown" and not reg.path.exists()
    assert ctl.closed_at is not None
    assert registry.list_registrations(tmp_path) == [] and registry.list_gone(tmp_path) == []


def test_kernel_shutdown_bounds_a_wedged_controller_close(tmp_path, capfd):
    from nexus_lab.lab import shutdown

    class Raising(ClosableController):
        def close(self) -> None:
            raise RuntimeError("cluster already gone")

    wedged, raising = ClosableController(close_s=5.0), Raising()
    regs = [registry.register(c, runtime_dir=tmp_path) for c in (raising, wedged)]
    t0 = time.monotonic()
    shutdown.close_all(lambda: regs, budget_s=0.5)
    assert time.monotonic() - t0 < 2.5
    assert all(r.closed and not r.path.exists() for r in regs)
    assert capfd.readouterr() == ("", "")  # expected errors print nothing


def test_state_answers_busy_while_another_call_holds_the_controller(tmp_path, monkeypatch):
    import threading

    monkeypatch.setattr(registry, "BUSY_WAIT_S", 0.3)
    release = threading.Event()

    class Slow(FakeController):
        def replan_now(self) -> None:
            release.wait(10)

    with registry.register(Slow(), runtime_dir=tmp_path) as reg:
        t = threading.Thread(target=_req, args=(reg, "/replan", "POST"))
        t.start()
        time.sleep(0.2)
        t0 = time.monotonic()
        code, body = _req(reg, "/state")
        assert code == 503 and body["error"] == "controller-busy" and time.monotonic() - t0 < 2
        release.set()
        t.join(10)
        assert _req(reg, "/state")[0] == 200


def test_real_kernel_shutdown_removes_the_registration(tmp_path):
    """A Jupyter kernel shut down through its manager (as the server's API does) closes its controller first."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        code = (f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
                "from test_lab_registry import ClosableController\n"
                "import pathlib, threading, time\n"
                "from nexus_lab.lab import registry\n"
                "class Ctl(ClosableController):\n"
                f"    def close(self): pathlib.Path({str(tmp_path / 'closed')!r}).write_text('yes')\n"
                f"reg = registry.register(Ctl(), runtime_dir={str(tmp_path)!r})\n"
                # a thread that holds the exit past the manager's SIGTERM, as a LocalCluster's teardown can: atexit
                # never runs then, only the shutdown hook does
                "threading.Thread(target=time.sleep, args=(30,)).start()\n"
                "print(reg.path)")
        out: list[str] = []
        reply = kc.execute_interactive(code, timeout=60, output_hook=lambda m: out.append(
            m["content"].get("text", "")) if m["msg_type"] == "stream" else None)
        assert reply["content"]["status"] == "ok", reply["content"]
        path = Path("".join(out).strip())
        assert path.exists()
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    assert not path.exists() and (tmp_path / "closed").read_text() == "yes"
    assert registry.list_gone(tmp_path) == []
