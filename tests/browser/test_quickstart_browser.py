"""01-quickstart in a real browser: one JupyterLab started here for both themes, Debian's Chromium driven by Playwright.

Light theme: Run All, the dashboard's figures render and move, an absurd SLO is refused with its message, an SLO
edit is applied and the placement view changes, a placement move that fits is applied, and at 1000 px nothing needs
a horizontal scrollbar; over all of it (60 s or more of a live dashboard) not one console warning or error.
Dark theme: 60 s of a live dashboard without a console warning or error, >= 99% of requests within their SLO
meanwhile. Screenshots go to artifacts/screenshots/quickstart/.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from notebook_helpers import (
    ARTIFACTS,
    console_of,
    dashboard_arrays,
    dashboard_has_data,
    figures,
    kernel,
    lab_with_notebooks,
    launch,
    main_figure,
    open_and_run,
    shutdown_kernels,
    wait_for,
)
from panel_helpers import CHROMIUM

SHOTS = ARTIFACTS / "screenshots" / "quickstart"
LIVE_S = 60  # seconds of live dashboard without a console warning (the done-criterion), in each theme
#: Kernel code: the first session move the placement editor would accept, and the plan version.
_FIND_MOVE = """import json
from nexus_lab.planner.manual import edit_placement as _e, placement_violations as _v
_p, _w = ctl.current_plan, ctl.workload
_m = next(([a.session, g.id, h.id] for g in _p.gpus for a in g.allocations for h in _p.gpus
           if h.id != g.id and not _v(_e(_p, _w, moves={a.session: (g.id, h.id)}, real_rates=True), _w)), None)
print('MOVE', json.dumps(_m), ctl.version)"""

# serial: a live cluster, JupyterLab and Chromium on 2 cores; beside the parallel suite they starve each other
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.serial,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} absent (install Debian's "
                                 "chromium; .ci/run does)")]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """One JupyterLab for both themes (the theme is a user setting, read when a page or a figure is made)."""
    server = lab_with_notebooks(tmp_path_factory.mktemp("quickstart"), ["01-quickstart"])
    yield server
    server.stop()


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)


def _placement(page) -> str:
    return page.evaluate("""() => { const gd = document.querySelectorAll('.nexus-dashboard .js-plotly-plot')[1];
        return JSON.stringify((gd.data || []).map(t => ({x: t.x, y: t.y, base: t.base, cd: t.customdata}))); }""")


def _live_dashboard(page, lab, name: str, reset: bool) -> float:
    """Open 01, Run All, wait until the dashboard shows data; returns the seconds from Run All to that."""
    t_run = time.monotonic()
    open_and_run(page, lab, name, reset=reset)
    plots = page.locator(".nexus-dashboard .js-plotly-plot")
    plots.nth(5).wait_for(timeout=180_000)
    assert plots.count() == 6
    page.locator(".nexus-dashboard").scroll_into_view_if_needed()
    try:
        wait_for(lambda: dashboard_has_data(figures(page)), 120, "the heatmap and placement figures stayed empty")
    except AssertionError:
        _shot(page, f"empty-{name}")
        raise AssertionError(f"the heatmap and placement figures stayed empty: {figures(page)}"[:3000]) from None
    return time.monotonic() - t_run


def _watch(page, seconds: float) -> None:
    """``seconds`` of live dashboard: its figures keep moving (checked every 10 s)."""
    first, t0 = figures(page), time.monotonic()
    while time.monotonic() - t0 < seconds:
        time.sleep(min(10.0, max(0.5, seconds - (time.monotonic() - t0))))
        second = figures(page)
        assert len(second) == 6 and first != second, "the dashboard's figures did not change in 10 s"
        first = second


def _quiet_since(console, t0: float) -> None:
    """Not one console warning or error since ``t0`` (once 25 a second: "Invalid color specifier")."""
    live = [(kind, text) for t, kind, text in console if t >= t0]
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / "console.json").write_text(json.dumps([c[1:] for c in console], indent=1))
    assert live == [], live[:10]


def _end_kernels(lab) -> None:
    """Shut the kernels down as a user does; no process of their clusters may outlive them."""
    procs = psutil.Process(lab.proc.pid).children(recursive=True)
    shutdown_kernels(lab)
    _gone, alive = psutil.wait_procs(procs, timeout=60)
    assert not alive, f"processes left behind after the kernel shut down: {[p.cmdline() for p in alive]}"


def test_quickstart_dashboard_and_editors(lab):
    """Light theme: the dashboard and the three editors, with no console message over the whole (>= 60 s) run."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        console = console_of(page)
        try:
            # What a newcomer does: Run All. Interactively the last cell leaves the cluster running.
            to_live = _live_dashboard(page, lab, "01-quickstart", reset=False)
            assert page.evaluate("() => document.body.dataset.jpThemeLight") == "true"
            # "Run all" to a live dashboard: 30 s on a newcomer's machine; CI runs this beside other tests on
            # 2 cores, so the figure is recorded (and printed) rather than asserted that tightly.
            SHOTS.mkdir(parents=True, exist_ok=True)
            (SHOTS / "quickstart-timing.json").write_text(json.dumps({"run_all_to_live_dashboard_s": to_live}))
            print(f"run all -> live dashboard: {to_live:.1f} s")
            assert to_live < 120, to_live
            t_live = time.monotonic()
            _watch(page, 20)
            _shot(page, "02-dashboard")
            assert dashboard_arrays(page), "a dashboard trace holds an object where plotly.js expects an array"

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

            # An SLO edit, previewed, applied: the placement view changes.
            before = _placement(page)
            box.fill("90")
            box.press("Enter")
            editor.locator(".nexus-preview").wait_for(timeout=60_000)
            _shot(page, "03-slo-preview")
            apply = editor.locator("button.nexus-apply")
            assert apply.is_enabled()
            apply.click()
            editor.locator(".nexus-msg", has_text="applied").wait_for(timeout=60_000)
            wait_for(lambda: _placement(page) != before, 30, "the placement view did not change after Apply")
            page.locator(".nexus-dashboard").scroll_into_view_if_needed()
            _shot(page, "04-after-apply")
            for cls, name in ((".nexus-query-editor", "05-query-editor"),
                              (".nexus-placement-editor", "06-placement-editor")):
                page.locator(cls).scroll_into_view_if_needed()
                time.sleep(1)
                _shot(page, name)

            # A placement move that fits (the plan keeps headroom; the editor judges moves at the real rates)
            found = kernel(page, _FIND_MOVE)
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
            after_move = int(kernel(page, "print(ctl.version)").split()[-1])
            assert after_move > version, (version, after_move)
            _shot(page, "06b-placement-applied")
            # A bad batch is refused with a sentence, not clamped to 1: the box shows the batch in force again.
            batch = place.locator(".widget-text:not(.nexus-duty) input").first
            was = batch.input_value()
            batch.fill("0")
            batch.press("Enter")
            place.locator(".nexus-msg-error", has_text="at least 1: 0 is refused").wait_for(timeout=30_000)
            assert not place.get_by_role("button", name="Apply").is_enabled()
            _shot(page, "06c-placement-bad-batch")
            wait_for(lambda: batch.input_value() == was, 10, "the refused batch's box did not show the batch again")

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
            # The dashboard stays live through all of it, LIVE_S seconds at least, without a console message.
            left = LIVE_S - (time.monotonic() - t_live)
            if left > 0:
                _watch(page, left)
            print(f"light theme: {time.monotonic() - t_live:.0f} s of live dashboard, console quiet")
            _quiet_since(console, t_live)
        finally:
            browser.close()
            _end_kernels(lab)


def test_quickstart_in_the_dark_theme(lab):
    """01 in "JupyterLab Dark": the dashboard moves and logs nothing for 60 s, and serves >= 99% within SLO."""
    sync_api = pytest.importorskip("playwright.sync_api")
    lab.set_theme("JupyterLab Dark")
    with sync_api.sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        console = console_of(page)
        try:
            _live_dashboard(page, lab, "01-quickstart", reset=True)
            assert page.evaluate("() => document.body.dataset.jpThemeLight") == "false"
            t_live = time.monotonic()
            _watch(page, LIVE_S)
            _quiet_since(console, t_live)
            assert dashboard_arrays(page), "a dashboard trace holds an object where plotly.js expects an array"
            main_figure(page, "01", SHOTS / "01-quickstart-dark.png")
            # Served within SLO while the dashboard ran (sessions and query stages together): >= 99% on 2 cores.
            out = kernel(page, f"import json, time\n_s = ctl.stats(None, since=time.time() - {LIVE_S - 5})\n"
                               "print(json.dumps({k: [round(v['slo_attainment'], 4), v['latency_p99_ms']] for k, v "
                               "in _s['sessions'].items()}))\nprint('ATTAIN', _s['totals']['slo_attainment'], "
                               "_s['totals']['requests'])")
            _, attained, requests = out.split()[-3:]
            (SHOTS / "quickstart-attainment.json").write_text(json.dumps(
                {"slo_attainment": float(attained), "requests": int(requests), "window_s": LIVE_S - 5,
                 "theme": "dark", "sessions (attainment, p99 ms)": out.splitlines()[0]}))
            print(out)
            print(f"within SLO over {LIVE_S - 5} s of live dashboard: {float(attained):.2%} of {requests} requests")
            assert int(requests) > 500 and float(attained) >= 0.99, out
        finally:
            browser.close()
            _end_kernels(lab)
