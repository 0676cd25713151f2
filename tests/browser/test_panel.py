"""Real-browser test of the Nexus side panel: JupyterLab started here, Debian Chromium driven by Playwright.

A real controller (``nexus_lab.start``: a two-worker Dask cluster of simulated GPUs) runs in a notebook kernel under
steady load and registers itself; the panel must list it, move its GPU bars, re-plan on request and say when it
closes or its kernel dies, and show its last known state marked stale while it does not answer.
Screenshots go to artifacts/screenshots/. Skipped only without /usr/bin/chromium.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from panel_helpers import CHROMIUM, CHROMIUM_ARGS, REPO, LabServer, write_notebook

# serial: a live cluster, JupyterLab and Chromium on 2 cores; beside the parallel suite they starve each other
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.serial,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} absent")]

SHOTS = REPO / "artifacts" / "screenshots"


#: Cell 0: a real controller on two simulated GPUs, one session planned at 100 req/s and offered ~80 req/s (below
#: the rate-move threshold) so the bars move; a one-hour epoch so only "re-plan now" re-plans. Cell 1: its close.
CONTROLLER_CELLS = ["""\
import threading

import nexus_lab

ctl = nexus_lab.start(gpus=2, device="simulated:titan-x-pascal", epoch_s=3600)
session = ctl.add_session("vgg_s", slo_ms=100, rate=100)
ctl.apply()
stop = threading.Event()


def offer(ctl=ctl, stop=stop, every_s=1 / 80):
    while not stop.wait(every_s):
        try:
            ctl.submit(session, None)
        except Exception:
            return


threading.Thread(target=offer, daemon=True).start()
print("serving", session, "on", ctl.client.scheduler.address)""", "stop.set()\nctl.close()"]


@pytest.fixture
def lab(tmp_path: Path):
    server = LabServer(tmp_path)
    server.notebooks.mkdir(parents=True)
    write_notebook(server.notebooks / "panel.ipynb", CONTROLLER_CELLS)
    server.start()
    yield server
    server.stop()


def _run_cell(page, index: int, timeout_ms: float = 120_000) -> None:
    """Run one cell and wait until it finished; starting a LocalCluster in the kernel takes seconds on 2 cores."""
    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    cell.locator(".cm-content").click()
    page.keyboard.press("Shift+Enter")
    # the prompt shows a number once the cell ran ("[*]" while it runs)
    cell.locator(".jp-InputPrompt").filter(has_text=re.compile(r"\[\d+\]")).wait_for(timeout=timeout_ms)
    outputs = cell.locator(".jp-OutputArea-output").all_inner_texts()
    assert "Traceback" not in "\n".join(outputs), f"cell {index} failed: {outputs}"


def _controllers(lab) -> list[dict]:
    with urllib.request.urlopen(f"{lab.url}/nexus/api/controllers?token={lab.token}", timeout=10) as r:
        return json.loads(r.read())["controllers"]


def _utilizations(page) -> list[float]:
    return [float(v) for v in page.locator(".jp-NexusPanel-barTrack").evaluate_all(
        "els => els.map(e => e.getAttribute('aria-valuenow'))")]


def _plan_age_s(page) -> float:
    text = page.locator('.jp-NexusPanel-summary dd[data-field="Plan age"]').inner_text()
    m = re.match(r"(\d+) s", text)
    assert m, f"plan age {text!r}"
    return float(m.group(1))


def test_panel_lists_controller_moves_replans_and_sees_close(lab):
    from playwright.sync_api import expect, sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{lab.url}/lab/tree/panel.ipynb?token={lab.token}")
            expect(page.locator("#jp-main-statusbar")).to_contain_text("| Idle", timeout=90_000)

            # before any controller: the panel says so rather than showing nothing
            page.locator('.jp-SideBar .lm-TabBar-tab[data-id="nexus-lab-panel"]').click()
            panel = page.locator("#nexus-lab-panel")
            expect(panel.locator(".jp-NexusPanel-message")).to_contain_text("No controller is running")

            _run_cell(page, 0)
            # the controller registers as "nexus <scheduler address>" from its kernel (tls:// once clusters are secure)
            (live,) = _controllers(lab)
            assert re.fullmatch(r"nexus (tcp|tls)://127\.0\.0\.1:\d+", live["name"]), live
            options = panel.locator(".jp-NexusPanel-select option")
            expect(options).to_have_count(1, timeout=15_000)
            expect(options.first).to_have_text(f"{live['name']} (pid {live['pid']})")
            # one bar per worker (GPU) of the cluster, and the planned session in the table
            expect(panel.locator(".jp-NexusPanel-bar")).to_have_count(2, timeout=30_000)
            expect(panel.locator(".jp-NexusPanel-sessions tbody tr")).to_have_count(1)
            expect(panel.locator(".jp-NexusPanel-sessions tbody tr").first).to_contain_text("vgg_s:100")

            # one bar per GPU: the GPU serving the load shows it, and the values move with the 1 s polling
            deadline = time.monotonic() + 30
            while max(_utilizations(page)) <= 0.0 and time.monotonic() < deadline:
                page.wait_for_timeout(300)
            first = _utilizations(page)
            assert len(first) == 2 and max(first) > 0.0, f"the GPU serving ~80 req/s shows no utilization: {first}"
            deadline = time.monotonic() + 20
            while _utilizations(page) == first and time.monotonic() < deadline:
                page.wait_for_timeout(300)
            assert _utilizations(page) != first, f"GPU utilization bars did not move from {first}"
            assert all(0.0 <= u <= 1.0 for u in _utilizations(page))
            page.screenshot(path=str(SHOTS / "panel-live.png"))

            # usable at 300 px: drag the sidebar to 300 px; the session table must not need a horizontal scroll
            handle = page.locator("#jp-main-split-panel > .lm-SplitPanel-handle").first
            box, left = handle.bounding_box(), panel.bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.down()
            page.mouse.move(left["x"] + 300, box["y"] + box["height"] / 2, steps=5)
            page.mouse.up()
            page.wait_for_timeout(500)
            assert abs(panel.bounding_box()["width"] - 300) <= 8, panel.bounding_box()
            overflow = panel.locator(".jp-NexusPanel-scroll").evaluate("n => n.scrollWidth - n.clientWidth")
            assert overflow <= 0, f"session table overflows the 300 px panel by {overflow} px"
            panel.screenshot(path=str(SHOTS / "panel-only.png"))

            # re-plan now: the plan age resets (the one-hour epoch never re-plans on its own here)
            deadline = time.monotonic() + 15
            while _plan_age_s(page) < 3 and time.monotonic() < deadline:
                page.wait_for_timeout(300)
            before = _plan_age_s(page)
            assert before >= 3
            panel.locator('button[data-action="replan"]').click()
            deadline = time.monotonic() + 10
            while _plan_age_s(page) >= before and time.monotonic() < deadline:
                page.wait_for_timeout(200)
            assert _plan_age_s(page) < min(before, 2.0), "plan age did not reset after re-plan"

            # pause and resume through the palette commands (the same ones the buttons call)
            page.evaluate("window.jupyterapp.commands.execute('nexus-lab:pause')")
            expect(panel.locator('button[data-action="resume"]')).to_be_visible(timeout=5_000)
            expect(panel.locator('.jp-NexusPanel-summary dd[data-field="Plan age"]')).to_contain_text("paused")
            page.evaluate("window.jupyterapp.commands.execute('nexus-lab:resume')")
            expect(panel.locator('button[data-action="pause"]')).to_be_visible(timeout=5_000)

            # open the dashboard: a view split right of the notebook runs nexus_lab.lab.show_dashboard("<id>") on the
            # notebook's own kernel connection, so its widget manager renders the live plotly figures
            kernel_id = _controllers(lab)[0]["kernel_id"]
            assert kernel_id is not None
            panel.locator('button[data-action="dashboard"]').click()
            view = page.locator(".jp-NexusDashboardView")
            expect(view).to_have_count(1, timeout=30_000)
            expect(view).to_be_visible()
            tab = page.locator("#jp-main-dock-panel .lm-TabBar-tab").filter(has_text="Nexus dashboard")
            expect(tab).to_have_count(1)
            expect(tab).to_contain_text(live["name"])
            dash = view.locator(".nexus-dashboard")
            expect(dash).to_have_count(1, timeout=90_000)
            plots = dash.locator(".js-plotly-plot")
            expect(plots.first).to_be_visible(timeout=60_000)
            assert plots.count() >= 1
            text = view.inner_text()
            assert "Error displaying widget" not in text and "Traceback" not in text, text
            expect(view.locator(".jp-NexusDashboardView-status")).to_be_hidden()
            # beside the notebook, not instead of it; the notebook kernel ran it (no console session was opened)
            assert page.locator(".jp-NotebookPanel").first.is_visible()
            nb_box, view_box = page.locator(".jp-NotebookPanel").first.bounding_box(), view.bounding_box()
            assert view_box["x"] >= nb_box["x"] + nb_box["width"] - 2, (nb_box, view_box)
            sessions = json.loads(urllib.request.urlopen(f"{lab.url}/api/sessions?token={lab.token}").read())
            assert {s["type"] for s in sessions if s["kernel"]["id"] == kernel_id} == {"notebook"}
            # the panel shows no error after the dashboard opened
            expect(panel.locator(".jp-NexusPanel-message.jp-mod-error")).to_have_count(0)
            # a second click re-activates the open view rather than starting another dashboard
            panel.locator('button[data-action="dashboard"]').click()
            page.wait_for_timeout(1000)
            expect(view).to_have_count(1)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(SHOTS / "panel-dashboard.png"))

            # dark theme: the panel follows it (theme variables only)
            page.evaluate("window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Dark'})")
            page.wait_for_timeout(1500)
            panel.screenshot(path=str(SHOTS / "panel-dark.png"))

            # polling pauses while the panel is hidden and resumes when it is shown again
            polls: list[str] = []
            page.on("request", lambda r: polls.append(r.url) if "/nexus/api/" in r.url else None)
            tab = page.locator('.jp-SideBar .lm-TabBar-tab[data-id="nexus-lab-panel"]')
            tab.click()
            expect(panel).to_be_hidden()
            page.wait_for_timeout(1500)
            polls.clear()
            page.wait_for_timeout(2500)
            assert polls == [], f"the hidden panel still polled: {polls}"
            tab.click()
            expect(panel).to_be_visible()
            page.wait_for_timeout(1500)
            assert polls, "the panel did not poll again once shown"

            # a frozen controller (its kernel, scheduler included, stopped): the panel keeps the last known values,
            # marked stale with their age, instead of dashes or an empty error (issue 13)
            (live,) = _controllers(lab)
            frozen = psutil.Process(live["pid"])
            message = panel.locator(".jp-NexusPanel-message")
            frozen.suspend()
            try:
                expect(message).to_contain_text("Stale: no answer from the controller", timeout=20_000)
                expect(message).to_have_class(re.compile("jp-mod-stale"))
                expect(panel.locator(".jp-NexusPanel-body.jp-mod-stale")).to_have_count(1)
                bars = panel.locator(".jp-NexusPanel-bar")
                expect(bars).to_have_count(2)
                values = bars.locator(".jp-NexusPanel-barValue").all_inner_texts()
                assert all("%" in v for v in values), f"stale bars lost their values: {values}"
                assert "–" not in panel.locator('.jp-NexusPanel-summary dd[data-field="GPUs / workers"]').inner_text()
                page.wait_for_timeout(1500)
                assert re.search(r"for \d+ s", message.inner_text()), message.inner_text()  # its age
                panel.screenshot(path=str(SHOTS / "panel-stale.png"))
            finally:
                frozen.resume()
            expect(message).not_to_contain_text("Stale", timeout=20_000)  # current again once it answers
            expect(panel.locator(".jp-NexusPanel-body.jp-mod-stale")).to_have_count(0)

            # close the controller: the panel says so
            _run_cell(page, 1)
            expect(panel.locator(".jp-NexusPanel-message")).to_contain_text("closed", timeout=15_000)
            assert _controllers(lab) == []
            expect(panel.locator(".jp-NexusPanel-bar")).to_have_count(0)
            page.screenshot(path=str(SHOTS / "panel-closed.png"))

            # a deliberate kernel shutdown from the page (what the Kernel menu's "Shut Down Kernel" calls): the panel
            # reads closed, not died, and neither the kernel nor its cluster's workers (in sessions of their own, out
            # of reach of the SIGINT Jupyter sends the kernel's process group) write a traceback to the server log
            _run_cell(page, 0)
            expect(panel.locator(".jp-NexusPanel-bar")).to_have_count(2, timeout=30_000)
            (live,) = _controllers(lab)
            procs = lab.track_tree(live["pid"])
            assert len(procs) > 2, f"expected the kernel and its two Dask workers, found {procs}"
            offset = lab.log_size()
            page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.shutdown()")
            expect(message).to_contain_text("closed", timeout=15_000)
            _gone, alive = psutil.wait_procs(procs, timeout=30)
            assert not alive, f"processes of the shut-down kernel still run: {alive}"
            page.wait_for_timeout(2000)  # anything late (a worker's dying words) reaches the log by now
            said = message.inner_text() + " ".join(panel.locator(".jp-NexusPanel-select option").all_inner_texts())
            assert "closed" in said and "died" not in said and "gone" not in said, said
            log = lab.log_since(offset)
            assert "Traceback" not in log and "KeyboardInterrupt" not in log, log[-4000:]
            panel.screenshot(path=str(SHOTS / "panel-kernel-shutdown.png"))
            page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.changeKernel({name: 'python3'})")
            expect(page.locator("#jp-main-statusbar")).to_contain_text("| Idle", timeout=90_000)

            # a kernel that dies without closing its controller: the panel says the controller is gone
            # (its cluster's worker processes become orphans: the fixture's stop() ends them)
            _run_cell(page, 0)
            expect(panel.locator(".jp-NexusPanel-bar")).to_have_count(2, timeout=30_000)
            (live,) = _controllers(lab)
            kernel = lab.track_tree(live["pid"])
            assert len(kernel) > 2, f"expected the kernel and its two Dask workers, found {kernel}"
            os.kill(live["pid"], signal.SIGKILL)
            expect(panel.locator(".jp-NexusPanel-message")).to_contain_text("Controller gone", timeout=15_000)
            expect(panel.locator(".jp-NexusPanel-select option").first).to_contain_text("gone")
            expect(panel.locator(".jp-NexusPanel-bar")).to_have_count(0)
            panel.screenshot(path=str(SHOTS / "panel-kernel-dead.png"))
        finally:
            browser.close()
