"""Helpers of the Nexus panel's browser test: a JupyterLab server started for the test, and a moving fake controller.

The fake controller has the real controller's ``state()`` shape and runs inside the notebook kernel; no Dask.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
LABEXTENSION = REPO / "nexus_lab" / "labextension"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class MovingFakeController:
    """A controller stand-in whose GPU utilization moves with time and whose plan age resets on ``replan_now()``."""

    def __init__(self, gpus: int = 2, sessions: int = 3, device: str = "simulated:titan-x-pascal") -> None:
        self.gpus, self.n_sessions, self.device = gpus, sessions, device
        self.version = 1
        self.planned_at = time.time()
        self.paused = False
        self.closed = False
        self._reg: Any = None

    def attach(self, name: str = "fake-nexus") -> MovingFakeController:
        from nexus_lab.lab import register

        self._reg = register(self, name=name)
        return self

    def state(self) -> dict[str, Any]:
        t = time.time()
        gpus = [{"gpu": i, "worker": f"tcp://127.0.0.1:{40000 + i}",
                 "utilization": 0.5 + 0.45 * math.sin(1.3 * t + i), "duty_cycle_ms": 80.0,
                 "sessions": [f"cam-{j}" for j in range(self.n_sessions) if j % self.gpus == i]}
                for i in range(self.gpus)]
        sessions = [{"name": f"cam-{j}", "model": ["resnet50", "ssd_mobilenet", "vgg16"][j % 3],
                     "slo_ms": 100.0 + 50 * j, "offered_rate": 100.0 + 10 * j + 5 * math.sin(t),
                     "goodput": 95.0 + 10 * j, "latency_p99_ms": 60.0 + 40 * j, "drops": {"early_drop": j}}
                    for j in range(self.n_sessions)]
        return {"cluster": {"scheduler": "inproc://fake", "workers": self.gpus, "gpus_used": self.gpus,
                            "device": self.device, "epoch_s": 30.0, "version": self.version,
                            "plan_age_s": t - self.planned_at, "paused": self.paused, "dashboard_link": None},
                "gpus": gpus, "sessions": sessions,
                "queries": [{"name": "traffic", "slo_ms": 400.0,
                             "stages": [{"name": "detect", "model": "ssd_mobilenet", "budget_ms": 250.0,
                                         "parents": [], "session": "traffic/detect", "gpus": [0]},
                                        {"name": "recognize", "model": "resnet50", "budget_ms": 150.0,
                                         "parents": ["detect"], "session": "traffic/recognize", "gpus": [1]}]}]}

    def replan_now(self) -> None:
        self.version += 1
        self.planned_at = time.time()

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def close(self) -> None:
        self.closed = True
        if self._reg is not None:
            self._reg.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_notebook(path: Path, cells: list[str]) -> None:
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [],
                     "source": src} for i, src in enumerate(cells)],
          "metadata": {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                                      "name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))


class LabServer:
    """A JupyterLab on 127.0.0.1 with its own config, runtime, settings and data dirs; the Nexus extension on."""

    def __init__(self, root: Path, token: str = "nexus-panel-test-token") -> None:
        self.root, self.token, self.port = root, token, free_port()
        self.notebooks = root / "notebooks"
        self.runtime = root / "runtime"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 90.0) -> LabServer:
        if not (LABEXTENSION / "package.json").exists():
            raise RuntimeError(f"{LABEXTENSION} is not built: run `jlpm install && jlpm build` in extension/ "
                               "(pip install of the project does this through hatch-jupyter-builder)")
        config, data = self.root / "config", self.root / "share" / "jupyter"
        settings = self.root / "settings" / "@jupyterlab" / "apputils-extension"
        for d in (self.notebooks, self.runtime, config, data / "labextensions", settings):
            d.mkdir(parents=True, exist_ok=True)
        link = data / "labextensions" / "nexus-lab-panel"
        if not link.exists():
            link.symlink_to(LABEXTENSION, target_is_directory=True)
        (settings / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        (config / "jupyter_server_config.json").write_text(
            json.dumps({"ServerApp": {"jpserver_extensions": {"nexus_lab.lab": True}}}))
        env = dict(os.environ, JUPYTER_CONFIG_DIR=str(config), JUPYTER_RUNTIME_DIR=str(self.runtime),
                   JUPYTER_PATH=str(data), JUPYTERLAB_SETTINGS_DIR=str(self.root / "settings"),
                   JUPYTERLAB_WORKSPACES_DIR=str(self.root / "workspaces"), PYTHONPATH=str(Path(__file__).parent))
        self.log = open(self.root / "lab.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
             f"--ServerApp.root_dir={self.notebooks}", "--LabApp.expose_app_in_browser=True",
             "--ServerApp.disable_check_xsrf=False"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.notebooks)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited: {(self.root / 'lab.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2):
                    return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"jupyter lab did not start in {timeout_s} s")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
