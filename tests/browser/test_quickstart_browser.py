"""01-quickstart in a real browser: JupyterLab started here, Debian's Chromium driven by Playwright.

Runs the notebook, checks the dashboard's plotly figures render and move for 60 s without a single console warning
or error and that >= 99% of requests are served within their SLO meanwhile, refuses an absurd SLO with its message,
edits an SLO in the editor, presses Apply and checks the placement view changes, then moves a session in the
placement editor and applies it. Also: 01 in the dark theme, and notebooks 02-06 (short form) with 04's verdict.
Screenshots go to artifacts/screenshots/quickstart/, each notebook's main figure to artifacts/NN-name.png.
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
ARTIFACTS = REPO / "artifacts"
SHOTS = ARTIFACTS / "screenshots" / "quickstart"
LIVE_S = 60  # seconds of live dashboard without a console warning (the done-criterion)
#: Kernel code: the first session move the placement editor would accept, and the plan version.
_FIND_MOVE = """import json
from nexus_lab.planner.manual import edit_placement as _e, placement_violations as _v
_p, _w = ctl.current_plan, ctl.workload
_m = next(([a.session, g.id, h.id] for g in _p.gpus for a in g.allocations for h in _p.gpus
           if h.id != g.id and not _v(_e(_p, _w, moves={a.session: (g.id, h.id)}, real_rates=True), _w)), None)
print('MOVE', json.dumps(_m), ctl.version)"""
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
    yield from _lab(tmp_path, ["01-quickstart"])


@pytest.fixture
def dark_lab(tmp_path: Path):
    """As ``lab``, in the "JupyterLab Dark" theme (set in the user settings, as a user would)."""
    yield from _lab(tmp_path, ["01-quickstart"], theme="JupyterLab Dark")


@pytest.fixture
def fast_lab(tmp_path: Path):
    """As ``lab``, serving notebooks 02-06 in their short form (NEXUS_LAB_FAST=1)."""
    yield from _lab(tmp_path, [p.stem for p in sorted((REPO / "notebooks").glob("0[2-6]-*.ipynb"))], fast=True)


def _lab(tmp_path: Path, notebooks: list[str], theme: str | None = None, fast: bool = False):
    root = tmp_path / "notebooks"
    root.mkdir()
    for name in notebooks:
        shutil.copy(REPO / "notebooks" / f"{name}.ipynb", root)
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    if theme:
        (settings / "themes.jupyterlab-settings").write_text(json.dumps({"theme": theme}))
    port = _free_port()
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "ws"))
    env.pop("NEXUS_LAB_FAST", None)  # the traffic must outlive the test's checks
    if fast:
        env["NEXUS_LAB_FAST"] = "1"
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


def _kernel(page, code: str) -> str:
    """Run ``code`` in the open notebook's kernel (after any cell still running) and return what it printed."""
    return page.evaluate("""async (code) => {
        const k = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
        const f = k.requestExecute({code, store_history: false});
        let out = '';
        f.onIOPub = (m) => { const t = m.header.msg_type;
            if (t === 'stream') { out += m.content.text; }
            else if (t === 'error') { out += 'ERROR ' + m.content.ename + ': ' + m.content.evalue; } };
        await f.done;
        return out; }""", code)


def _open_and_run(page, url: str, name: str, reset: bool = False) -> None:
    """Open ``name`` (``reset``: alone, in a workspace of its own) and press Run All."""
    where = f"workspaces/{name}/tree" if reset else "tree"
    page.goto(f"{url}/lab/{where}/{name}.ipynb?token={TOKEN}")
    # The toolbar can say idle before the kernel is connected; the status bar's "| Idle" is reliable.
    page.locator(".jp-StatusBar-TextItem", has_text="| Idle").first.wait_for(timeout=120_000)
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")


def _main_figure(page, selector: str, name: str, nth: int = 0) -> None:
    """The notebook's main figure, as a PNG for the closing note: artifacts/<name>.png."""
    fig = page.locator(selector).nth(nth)
    fig.scroll_into_view_if_needed()
    time.sleep(1)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    fig.screenshot(path=str(ARTIFACTS / f"{name}.png"))


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
            # LIVE_S seconds of a live dashboard: its figures keep moving (checked every 10 s) and nothing is logged
            while time.monotonic() - t_live < LIVE_S:
                time.sleep(10)
                second = _figures(page)
                assert len(first) == 6 and first != second, "the dashboard's figures did not change in 10 s"
                first = second
            _main_figure(page, ".nexus-dashboard", "01-quickstart")
            # Every array reached plotly.js as an array: a live dashboard logs nothing (it once logged "Invalid
            # color specifier" 25 times a second).
            live = [(kind, text) for t, kind, text in console if t >= t_live]
            (SHOTS / "console.json").write_text(json.dumps([c[1:] for c in console], indent=1))
            assert live == [], live[:10]
            arrays = page.evaluate("""() => Array.from(document.querySelectorAll('.nexus-dashboard .js-plotly-plot'))
                .every(gd => (gd.data || []).every(t => ['x', 'y', 'base'].every(k => t[k] === undefined
                    || Array.isArray(t[k]) || ArrayBuffer.isView(t[k]))))""")
            assert arrays, "a dashboard trace holds an object where plotly.js expects an array"
            # Served within SLO while the dashboard ran (sessions and query stages together): >= 99% on 2 cores.
            out = _kernel(page, f"import json\n_s = ctl.stats(None, since=time.time() - {LIVE_S - 5})\n"
                                "print(json.dumps({k: [round(v['slo_attainment'], 4), v['latency_p99_ms']] for k, v in "
                                "_s['sessions'].items()}))\nprint('ATTAIN', _s['totals']['slo_attainment'], "
                                "_s['totals']['requests'])")
            _, attained, requests = out.split()[-3:]
            (SHOTS / "quickstart-attainment.json").write_text(json.dumps(
                {"slo_attainment": float(attained), "requests": int(requests), "window_s": LIVE_S - 5,
                 "sessions (attainment, p99 ms)": out.splitlines()[0]}))
            print(out)
            print(f"within SLO over {LIVE_S - 5} s of live dashboard: {float(attained):.2%} of {requests} requests")
            assert int(requests) > 500 and float(attained) >= 0.99, out

            # An absurd value is refused, before planning, in words a student reads.
            editor = page.locator(".nexus-slo-editor")
            editor.scroll_into_view_if_needed()
            box = editor.locator(".nexus-slo-classify input")
            box.fill("1e12")
            box.press("Enter")
            editor.locator(".nexus-msg-error", has_text="must be at most 60000 ms").wait_for(timeout=60_000)
            assert not editor.locator("button.nexus-apply").is_enabled()
            _shot(page, "03-slo-refused")
            editor.get_by_role("button", name="Reset").click()
            time.sleep(1)

            before = _placement(page)
            editor = page.locator(".nexus-slo-editor")
            editor.scroll_into_view_if_needed()
            box = editor.locator(".nexus-slo-classify input")
            box.fill("90")
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
            # A placement move that fits (the plan keeps headroom; the editor judges moves at the real rates)
            found = _kernel(page, _FIND_MOVE)
            move, version = json.loads(found.split("MOVE", 1)[1].rsplit(" ", 1)[0]), int(found.split()[-1])
            assert move, f"no placement move fits: {found}"
            place = page.locator(".nexus-placement-editor")
            place.scroll_into_view_if_needed()
            selects = place.locator("select")
            for k, value in enumerate(move):
                selects.nth(k).select_option(label=str(value))
                time.sleep(0.5)
            place.get_by_role("button", name="Move").click()
            place.locator(".nexus-msg-ok", has_text="feasible").wait_for(timeout=30_000)
            place.get_by_role("button", name="Apply").click()
            place.locator(".nexus-msg-ok", has_text="Applied").wait_for(timeout=60_000)
            after_move = int(_kernel(page, "print(ctl.version)").split()[-1])
            assert after_move > version, (version, after_move)
            _shot(page, "06b-placement-applied")
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


def _console_of(page) -> list[tuple[float, str, str]]:
    console: list[tuple[float, str, str]] = []
    page.on("console", lambda m: console.append((time.monotonic(), m.type, m.text))
            if m.type in ("warning", "error") else None)
    return console


def test_quickstart_in_the_dark_theme(dark_lab):
    """01 in "JupyterLab Dark": the dashboard renders, moves, and logs nothing for 15 s."""
    sync_api = pytest.importorskip("playwright.sync_api")
    url, _server = dark_lab
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        console = _console_of(page)
        try:
            _open_and_run(page, url, "01-quickstart")
            page.locator(".nexus-dashboard .js-plotly-plot").nth(5).wait_for(timeout=180_000)
            assert page.evaluate("() => document.body.dataset.jpThemeLight") == "false"
            page.locator(".nexus-dashboard").scroll_into_view_if_needed()
            _wait_for(lambda: _has_data(_figures(page)), 60, "the heatmap and placement figures stayed empty")
            t_live = time.monotonic()
            first = _figures(page)
            time.sleep(15)
            assert _figures(page) != first, "the dashboard's figures did not change in 15 s"
            live = [(kind, text) for t, kind, text in console if t >= t_live]
            assert live == [], live[:10]
            _main_figure(page, ".nexus-dashboard", "01-quickstart-dark")
        finally:
            browser.close()
            _shutdown_kernels(url)


#: Each notebook's main figure: (selector, which of them).
#: (a static plotly figure's output is itself the plot: ``.jp-RenderedPlotly``, no widget around it)
MAIN_FIGURES = {"02": (".jp-RenderedPlotly", 1)}  # 02: the placement; the others: their first figure


def _run_all_done(page, timeout_s: float) -> None:
    """Wait until every code cell ran (an execution count each, kernel idle twice in a row); fail at an error."""
    deadline, idle = time.monotonic() + timeout_s, 0
    while True:
        st = page.evaluate("""() => { const nb = window.jupyterapp.shell.currentWidget;
            const cells = nb.content.model.cells; let pending = 0; const errors = [];
            for (let i = 0; i < cells.length; i++) { const c = cells.get(i);
                if (c.type !== 'code') { continue; }
                if (c.executionCount === null || c.executionCount === undefined) { pending += 1; }
                for (let j = 0; j < c.outputs.length; j++) { const o = c.outputs.get(j);
                    if (o.type === 'error') { errors.push(JSON.stringify(o.toJSON()).slice(0, 2000)); } } }
            const k = nb.sessionContext.session && nb.sessionContext.session.kernel;
            return {pending, errors, idle: !!k && k.status === 'idle'}; }""")
        assert not st["errors"], st["errors"]
        idle = idle + 1 if st["pending"] == 0 and st["idle"] else 0
        if idle >= 2:
            return
        assert time.monotonic() < deadline, f"run all did not finish in {timeout_s} s: {st}"
        time.sleep(1)


def test_teaching_notebooks_run_in_the_browser(fast_lab):
    """02-06 (short form) run to the end in the browser without an error output; 04 prints its lesson's verdict;
    each notebook's main figure is saved to artifacts/."""
    sync_api = pytest.importorskip("playwright.sync_api")
    url, _server = fast_lab
    names = [p.stem for p in sorted((REPO / "notebooks").glob("0[2-6]-*.ipynb"))]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            for name in names:
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                _open_and_run(page, url, name, reset=True)
                _run_all_done(page, 240)
                errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                                      has_text="Traceback")
                assert errors.count() == 0, (name, errors.first.inner_text()[-2000:])
                if name.startswith("04"):
                    verdict = page.locator(".jp-OutputArea-output", has_text="prefix batching served")
                    verdict.first.wait_for(timeout=30_000)
                    print(name, verdict.first.inner_text().strip())
                selector, nth = MAIN_FIGURES.get(name[:2], (".jp-RenderedPlotly", 0))
                page.locator(selector).nth(nth).wait_for(state="attached", timeout=60_000)
                _main_figure(page, selector, name, nth)
                _shutdown_kernels(url)
                page.close()
        finally:
            browser.close()
            _shutdown_kernels(url)
