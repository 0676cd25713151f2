"""Helpers of the Nexus panel's browser test: a JupyterLab server started for the test, and its clean-up.

The test's controller is a real one (``nexus_lab.start``: a Dask ``LocalCluster`` inside the notebook kernel), so a
kernel killed outright leaves worker processes behind; ``LabServer`` tracks them and ``stop()`` ends them.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
LABEXTENSION = REPO / "nexus_lab" / "labextension"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


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

    def __init__(self, root: Path, token: str = "nexus-panel-test-token",
                 env: dict[str, str | None] | None = None) -> None:
        """``env``: variables for the server and its kernels (None unsets one)."""
        self.root, self.token, self.port = root, token, free_port()
        self.env = dict(env or {})
        self.notebooks = root / "notebooks"
        self.runtime = root / "runtime"
        self.proc: subprocess.Popen | None = None
        self._tracked: dict[int, psutil.Process] = {}

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
                   JUPYTERLAB_WORKSPACES_DIR=str(self.root / "workspaces"))
        for key, value in self.env.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
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

    def set_theme(self, theme: str) -> None:
        """The user's JupyterLab theme (``"JupyterLab Dark"``), as the settings editor saves it; pages loaded from
        now on use it, and kernels read it (``widgets.figures.lab_theme_dark``)."""
        settings = self.root / "settings" / "@jupyterlab" / "apputils-extension"
        settings.mkdir(parents=True, exist_ok=True)
        (settings / "themes.jupyterlab-settings").write_text(json.dumps({"theme": theme}))

    def log_size(self) -> int:
        """Bytes of the server's log so far (its kernels and their workers write to it too)."""
        return (self.root / "lab.log").stat().st_size

    def log_since(self, offset: int) -> str:
        with open(self.root / "lab.log", "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def track_tree(self, pid: int) -> list[psutil.Process]:
        """Remember ``pid`` and its descendants now, so ``stop()`` ends whichever of them outlive the server.

        Call it before killing a kernel: its Dask workers are then orphans, no longer below the server.
        """
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        for p in procs:
            self._tracked.setdefault(p.pid, p)
        return procs

    def stop(self) -> None:
        """Stop the server, then every tracked process still running (its kernels and their cluster workers)."""
        if self.proc is not None:
            self.track_tree(self.proc.pid)
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        self.log.close()
        leak = leftover(self._tracked.values())
        for p in leak:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.terminate()
        _, alive = psutil.wait_procs(leak, timeout=10)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        _, alive = psutil.wait_procs(alive, timeout=10)
        if leftover(alive):
            raise RuntimeError(f"processes of the test's JupyterLab survived SIGKILL: {leftover(alive)}")


def leftover(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    """The processes still running: not exited, not a zombie awaiting its (possibly absent) reaper, pid not reused."""
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            continue
    return out
