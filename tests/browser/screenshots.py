"""Screenshots of each notebook's main figure, for the closing note of a change to the notebooks.

Runs notebooks 01-06 one after the other in a JupyterLab started here, in Debian's Chromium (headless, through
Playwright), as a student would (open, Run All, wait for the end), and saves each main figure
(``notebook_helpers.MAIN_FIGURES``) as ``artifacts/NN-name.png`` (``-dark`` added in the dark theme). The
window is tall, so a whole dashboard fits without scrolling.

    .venv/bin/python tests/browser/screenshots.py                 # full length, light theme (several minutes)
    .venv/bin/python tests/browser/screenshots.py --fast --theme dark --only 01 04
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from notebook_helpers import (
    ARTIFACTS,
    dashboard_has_data,
    figures,
    lab_with_notebooks,
    launch,
    main_figure,
    notebook_names,
    open_and_run,
    run_all_done,
    shutdown_kernels,
    wait_for,
)

THEMES = {"light": "JupyterLab Light", "dark": "JupyterLab Dark"}
#: Seconds of live traffic a dashboard shows before its picture is taken (its charts cover the last minute or so).
LIVE_S = 20


def take(names: list[str], theme: str = "light", fast: bool = False, width: int = 1600, height: int = 2400,
         timeout_s: float = 600.0, out: Path = ARTIFACTS) -> list[Path]:
    """Run ``names`` in the browser and save each one's main figure under ``out``; returns the files written."""
    from playwright.sync_api import sync_playwright

    suffix = "" if theme == "light" else f"-{theme}"
    written = []
    with tempfile.TemporaryDirectory(prefix="nexus-screenshots-") as tmp:
        lab = lab_with_notebooks(Path(tmp), names, theme=THEMES[theme], fast=fast)
        try:
            with sync_playwright() as p:
                browser = launch(p)
                try:
                    for name in names:
                        t0 = time.monotonic()
                        page = browser.new_page(viewport={"width": width, "height": height})
                        open_and_run(page, lab, name, reset=True)
                        run_all_done(page, timeout_s)
                        if name.startswith("01"):  # a live dashboard: let it fill
                            wait_for(lambda page=page: dashboard_has_data(figures(page)), 120,
                                     "the dashboard stayed empty")
                            time.sleep(LIVE_S)
                        path = main_figure(page, name, out / f"{name}{suffix}.png")
                        written.append(path)
                        print(f"{path.relative_to(out.parent)}: {time.monotonic() - t0:.0f} s", flush=True)
                        shutdown_kernels(lab)
                        page.close()
                finally:
                    browser.close()
        finally:
            lab.stop()
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fast", action="store_true", help="the notebooks' short form (NEXUS_LAB_FAST=1)")
    ap.add_argument("--theme", choices=sorted(THEMES), default="light")
    ap.add_argument("--only", nargs="*", metavar="NN", help="notebook numbers, e.g. 01 04 (default: all)")
    ap.add_argument("--width", type=int, default=1600, help="browser window width in px (default 1600)")
    args = ap.parse_args(argv)
    names = [n for n in notebook_names() if not args.only or n[:2] in args.only]
    if not names:
        ap.error(f"--only {' '.join(args.only)}: no such notebook; there are {[n[:2] for n in notebook_names()]}")
    take(names, args.theme, args.fast, args.width)
    return 0


if __name__ == "__main__":
    sys.exit(main())
