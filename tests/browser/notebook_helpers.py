"""Helpers of the notebooks' browser tests and of ``screenshots.py``: a JupyterLab (``panel_helpers.LabServer``)
serving copies of the notebooks, and what a user does in it: open a notebook, Run All, wait for its figures.

Every function takes the Playwright page and the ``LabServer``; nothing here asserts a lesson (the tests do).
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from panel_helpers import CHROMIUM, CHROMIUM_ARGS, REPO, LabServer

ARTIFACTS = REPO / "artifacts"
#: Each notebook's main figure: (selector, which of them). A static plotly figure's output is itself the plot
#: (``.jp-RenderedPlotly``); the live dashboards are ``.nexus-dashboard`` widgets.
MAIN_FIGURES = {"01": (".nexus-dashboard", 0), "02": (".jp-RenderedPlotly", 1), "03": (".jp-RenderedPlotly", 0),
                "04": (".jp-RenderedPlotly", 0), "05": (".jp-RenderedPlotly", 0), "06": (".jp-RenderedPlotly", 0)}


def notebook_names(pattern: str = "0[1-6]-*.ipynb") -> list[str]:
    return [p.stem for p in sorted((REPO / "notebooks").glob(pattern))]


def lab_with_notebooks(root: Path, names: list[str], *, theme: str | None = None, fast: bool = False) -> LabServer:
    """A started ``LabServer`` on ``root`` serving copies of ``names`` (``fast``: their short form,
    ``NEXUS_LAB_FAST=1``; otherwise unset, so traffic outlives the checks), in ``theme`` if given."""
    server = LabServer(root, env={"NEXUS_LAB_FAST": "1" if fast else None})
    server.notebooks.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(REPO / "notebooks" / f"{name}.ipynb", server.notebooks)
    if theme:
        server.set_theme(theme)
    return server.start()


def launch(playwright):
    """Debian's Chromium, headless, no network of its own."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def console_of(page) -> list[tuple[float, str, str]]:
    """Every console warning and error of ``page`` from now on, as (monotonic time, type, text)."""
    console: list[tuple[float, str, str]] = []
    page.on("console", lambda m: console.append((time.monotonic(), m.type, m.text))
            if m.type in ("warning", "error") else None)
    return console


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        time.sleep(0.5)


def open_and_run(page, lab: LabServer, name: str, reset: bool = False) -> None:
    """Open ``name`` (``reset``: alone, in a workspace of its own) and press Run All once its kernel is idle."""
    where = f"workspaces/{name}/tree" if reset else "tree"
    page.goto(f"{lab.url}/lab/{where}/{name}.ipynb?token={lab.token}")
    # The toolbar can say idle before the kernel is connected; the status bar's "| Idle" is reliable.
    page.locator(".jp-StatusBar-TextItem", has_text="| Idle").first.wait_for(timeout=120_000)
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")


def run_all_done(page, timeout_s: float) -> None:
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


def figures(page) -> list[str]:
    """Every dashboard plotly figure's data, as the browser holds it."""
    return page.evaluate("""() => Array.from(document.querySelectorAll('.nexus-dashboard .js-plotly-plot'))
        .map(gd => JSON.stringify((gd.data || []).map(t => ({x: t.x, y: t.y, z: t.z, base: t.base}))))""")


def dashboard_has_data(figs: list[str]) -> bool:
    """The quickstart dashboard's six figures, its heatmap and placement filled (they render asynchronously)."""
    if len(figs) != 6:
        return False
    heat, place = json.loads(figs[0]), json.loads(figs[1])
    # the placement: the GPUs' frames, then one trace per session
    return bool(heat and heat[0].get("z") and len(place) >= 2 and place[1].get("x"))


def dashboard_arrays(page) -> bool:
    """Whether every x, y and base of every dashboard trace reached plotly.js as an array (a ``{"0": ..}`` object
    made plotly log "Invalid color specifier" 25 times a second)."""
    return page.evaluate("""() => Array.from(document.querySelectorAll('.nexus-dashboard .js-plotly-plot'))
        .every(gd => (gd.data || []).every(t => ['x', 'y', 'base'].every(k => t[k] === undefined
            || Array.isArray(t[k]) || ArrayBuffer.isView(t[k]))))""")


def kernel(page, code: str) -> str:
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


def main_figure(page, name: str, path: Path) -> Path:
    """Save notebook ``name``'s main figure (``MAIN_FIGURES``) as a PNG at ``path``, scrolled into view."""
    selector, nth = MAIN_FIGURES[name[:2]]
    fig = page.locator(selector).nth(nth)
    fig.wait_for(state="attached", timeout=60_000)
    fig.scroll_into_view_if_needed()
    time.sleep(1)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.screenshot(path=str(path))
    return path


def shutdown_kernels(lab: LabServer) -> None:
    """Shut every kernel of ``lab`` down as Jupyter does (REST ``DELETE``: interrupt, shutdown request, SIGTERM)."""
    auth = {"Authorization": f"token {lab.token}"}
    with urllib.request.urlopen(urllib.request.Request(f"{lab.url}/api/kernels", headers=auth), timeout=10) as r:
        kernels = json.loads(r.read())
    for k in kernels:
        req = urllib.request.Request(f"{lab.url}/api/kernels/{k['id']}", headers=auth, method="DELETE")
        urllib.request.urlopen(req, timeout=60).close()
