"""01-quickstart in a real browser: JupyterLab started here, Debian's Chromium driven by Playwright.

Runs the notebook, checks the dashboard's plotly figures render and move without a single console warning or error,
edits an SLO in the editor, presses Apply and checks the placement view changes. Screenshots go to
artifacts/screenshots/quickstart/.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = REPO / "artifacts" / "screenshots" / "quickstart"
TOKEN = "nexus-quickstart-test-token"

# serial: a live cluster, JupyterLab and Chromium on 2 cores; beside the parallel suite they starve each other
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.serial,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} absent (install Debian's "
                                 "chromium; .ci/run does)")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path: Path):
    """JupyterLab on 127.0.0.1 serving a copy of the notebooks folder, with its own settings and runtime dirs."""
    root = tmp_path / "notebooks"
    root.mkdir()
    shutil.copy(REPO / "notebooks" / "01-quickstart.ipynb", root)
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port = _free_port()
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "ws"))
    env.pop("NEXUS_LAB_FAST", None)  # the traffic must outlive the test's checks
    log = open(tmp_path / "lab.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={TOKEN}",
         f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited: {(tmp_path / 'lab.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("jupyter lab did not start in 120 s") from None
                time.sleep(0.5)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _figures(page) -> list:
    """Every dashboard plotly figure's data, as the browser holds it."""
    return page.evaluate("""() => Array.from(document.querySelectorAll('.nexus-dashboard .js-plotly-plot'))
        .map(gd => JSON.stringify((gd.data || []).map(t => ({x: t.x, y: t.y, z: t.z, base: t.base}))))""")


def _placement(page) -> str:
    return page.evaluate("""() => { const gd = document.querySelectorAll('.nexus-dashboard .js-plotly-plot')[1];
        return JSON.stringify((gd.data || []).map(t => ({x: t.x, y: t.y, base: t.base, cd: t.customdata}))); }""")


def _has_data(figs: list) -> bool:
    if len(figs) != 6:
        return False
    heat, place = json.loads(figs[0]), json.loads(figs[1])
    # the placement: the GPUs' frames, then one trace per session
    return bool(heat and heat[0].get("z") and len(place) >= 2 and place[1].get("x"))


def _wait_for(cond, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        time.sleep(0.5)


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)


def _shutdown_kernels(url: str) -> None:
    auth = {"Authorization": f"token {TOKEN}"}
    with urllib.request.urlopen(urllib.request.Request(f"{url}/api/kernels", headers=auth), timeout=10) as r:
        kernels = json.loads(r.read())
    for k in kernels:
        req = urllib.request.Request(f"{url}/api/kernels/{k['id']}", headers=auth, method="DELETE")
        urllib.request.urlopen(req, timeout=60).close()


def test_quickstart_dashboard_and_slo_editor(lab):
    sync_api = pytest.importorskip("playwright.sync_api")
    psutil = pytest.importorskip("psutil")
    url, server = lab
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        console: list[tuple[float, str, str]] = []
        page.on("console", lambda m: console.append((time.monotonic(), m.type, m.text))
                if m.type in ("warning", "error") else None)
        try:
            page.goto(f"{url}/lab/tree/01-quickstart.ipynb?token={TOKEN}")
            # The toolbar can say idle before the kernel is connected; the status bar's "| Idle" is reliable.
            page.locator(".jp-StatusBar-TextItem", has_text="| Idle").first.wait_for(timeout=120_000)
            _shot(page, "01-opened")
            # What a newcomer does: Run All. Interactively the last cell leaves the cluster running.
            t_run = time.monotonic()
            page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
            plots = page.locator(".nexus-dashboard .js-plotly-plot")
            plots.nth(5).wait_for(timeout=180_000)
            assert plots.count() == 6
            page.locator(".nexus-slo-editor").wait_for(timeout=180_000)
            page.locator(".nexus-dashboard").scroll_into_view_if_needed()
            # The heatmap and the placement are never empty once a plan runs (the views render asynchronously).
            _wait_for(lambda: _has_data(_figures(page)), 60, "the heatmap and placement figures stayed empty")
            # "Run all" to a live dashboard: the done-criterion is 30 s on a newcomer's machine; CI runs this beside
            # other tests on 2 cores, so the figure is recorded (and printed) rather than asserted that tightly.
            to_live = time.monotonic() - t_run
            SHOTS.mkdir(parents=True, exist_ok=True)
            (SHOTS / "quickstart-timing.json").write_text(json.dumps({"run_all_to_live_dashboard_s": to_live}))
            print(f"run all -> live dashboard: {to_live:.1f} s")
            assert to_live < 120, to_live
            first = _figures(page)
            _shot(page, "02-dashboard")
            t_live = time.monotonic()
            time.sleep(6)
            second = _figures(page)
            assert len(first) == 6 and first != second, "the dashboard's figures did not change in 6 s"
            # Every array reached plotly.js as an array: a live dashboard logs nothing (it once logged "Invalid
            # color specifier" 25 times a second).
            live = [(kind, text) for t, kind, text in console if t >= t_live]
            (SHOTS / "console.json").write_text(json.dumps([c[1:] for c in console], indent=1))
            assert live == [], live[:10]
            arrays = page.evaluate("""() => Array.from(document.querySelectorAll('.nexus-dashboard .js-plotly-plot'))
                .every(gd => (gd.data || []).every(t => ['x', 'y', 'base'].every(k => t[k] === undefined
                    || Array.isArray(t[k]) || ArrayBuffer.isView(t[k]))))""")
            assert arrays, "a dashboard trace holds an object where plotly.js expects an array"

            before = _placement(page)
            editor = page.locator(".nexus-slo-editor")
            editor.scroll_into_view_if_needed()
            box = editor.locator(".nexus-slo-classify input")
            box.fill("45")
            box.press("Enter")
            page.locator(".nexus-slo-editor .nexus-preview").wait_for(timeout=60_000)
            _shot(page, "03-slo-preview")
            apply = editor.locator("button.nexus-apply")
            assert apply.is_enabled()
            apply.click()
            page.locator(".nexus-slo-editor .nexus-msg", has_text="applied").wait_for(timeout=60_000)
            deadline = time.monotonic() + 30
            after = _placement(page)
            while after == before and time.monotonic() < deadline:
                time.sleep(0.5)
                after = _placement(page)
            page.locator(".nexus-dashboard").scroll_into_view_if_needed()
            _shot(page, "04-after-apply")
            assert after != before, "the placement view did not change after Apply"
            for cls, name in ((".nexus-query-editor", "05-query-editor"), (".nexus-placement-editor",
                                                                         "06-placement-editor")):
                page.locator(cls).scroll_into_view_if_needed()
                time.sleep(1)
                _shot(page, name)
            # A narrow notebook (1000 px window): the views wrap; none needs a horizontal scrollbar.
            page.set_viewport_size({"width": 1000, "height": 1000})
            time.sleep(2)
            page.locator(".nexus-dashboard").scroll_into_view_if_needed()
            _shot(page, "07-narrow")
            wide = page.evaluate("""() => Array.from(document.querySelectorAll(
                    '.nexus-dashboard, .nexus-slo-editor, .nexus-query-editor, .nexus-placement-editor'))
                .map(el => el.closest('.jp-OutputArea-output') || el)
                .filter(el => el.scrollWidth > el.clientWidth + 1).map(el => [el.scrollWidth, el.clientWidth])""")
            assert wide == [], f"outputs wider than the notebook at 1000 px: {wide}"
        finally:
            browser.close()
            # Shutting the kernel down stops the cluster: no worker process of it may outlive the kernel.
            procs = psutil.Process(server.pid).children(recursive=True)
            _shutdown_kernels(url)
            _gone, alive = psutil.wait_procs(procs, timeout=60)
            assert not alive, f"processes left behind after the kernel shut down: {[p.cmdline() for p in alive]}"
