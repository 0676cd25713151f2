"""Notebooks 02-06 (short form, ``NEXUS_LAB_FAST=1``) in a real browser: each runs to its end without an error
output, and 04 shows its lesson (prefix batching saves GPUs and memory on the GPU profiles; on the CPU the notebook
measures the throughput and its sentence says what the measurement shows). Each main figure goes to
artifacts/screenshots/fast/ (``screenshots.py`` makes the full-length ones in artifacts/).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from notebook_helpers import (
    ARTIFACTS,
    lab_with_notebooks,
    launch,
    main_figure,
    notebook_names,
    open_and_run,
    run_all_done,
    shutdown_kernels,
)
from panel_helpers import CHROMIUM

# serial: JupyterLab, Chromium and the notebooks' clusters on 2 cores; beside the parallel suite they starve
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.serial,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} absent")]

_GPU_LINE = re.compile(r"GPUs: (\d+) without, (\d+) with prefix batching; GPU memory: ([\d.]+) GB without, "
                       r"([\d.]+) GB with")
_CPU_LINE = re.compile(r"On this CPU prefix batching served (?P<verdict>.+?); it held (?P<mem>[\d.]+)x less weight "
                       r"memory")


def check_prefix_lesson(text: str) -> None:
    """04's printed results against its text: fewer GPUs and less memory on the GPU profiles, less weight memory
    on the CPU, and a throughput sentence whose words match its measured ratio."""
    gpu = _GPU_LINE.search(text)
    assert gpu, f"04 printed no GPU comparison: {text[-2000:]}"
    gpus_off, gpus_on, mem_off, mem_on = int(gpu[1]), int(gpu[2]), float(gpu[3]), float(gpu[4])
    assert gpus_on < gpus_off and mem_on < mem_off, gpu[0]
    cpu = _CPU_LINE.search(text)
    assert cpu, f"04 printed no CPU verdict: {text[-2000:]}"
    assert float(cpu["mem"]) > 1.0, cpu[0]
    verdict = cpu["verdict"]
    ratio = float(re.search(r"([\d.]+)x", verdict)[1])
    if verdict.startswith("fewer"):
        assert ratio <= 0.95 and "saved no compute" in verdict, verdict
    elif verdict.startswith("about as many"):
        assert 0.95 < ratio < 1.05, verdict
    else:
        assert ratio >= 1.05 and "as many requests per second" in verdict, verdict


def test_prefix_lesson_check_can_fail():
    good = ("GPUs: 2 without, 1 with prefix batching; GPU memory: 7.9 GB without, 1.5 GB with\n"
            "On this CPU prefix batching served about as many requests per second (0.98x); it held 3.1x less "
            "weight memory.")
    check_prefix_lesson(good)
    for bad in (good.replace("2 without, 1 with", "1 without, 1 with"),
                good.replace("about as many requests per second (0.98x)", "about as many requests per second (0.80x)"),
                good.replace("3.1x less", "1.0x less"), "nothing printed"):
        with pytest.raises(AssertionError):
            check_prefix_lesson(bad)


@pytest.fixture
def fast_lab(tmp_path: Path):
    server = lab_with_notebooks(tmp_path, notebook_names("0[2-6]-*.ipynb"), fast=True)
    yield server
    server.stop()


def test_teaching_notebooks_run_in_the_browser(fast_lab):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = launch(p)
        try:
            for name in notebook_names("0[2-6]-*.ipynb"):
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                open_and_run(page, fast_lab, name, reset=True)
                run_all_done(page, 240)
                errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                                      has_text="Traceback")
                assert errors.count() == 0, (name, errors.first.inner_text()[-2000:])
                if name.startswith("04"):
                    text = "\n".join(page.locator(".jp-OutputArea-output").all_inner_texts())
                    check_prefix_lesson(text)
                    print(name, _CPU_LINE.search(text)[0])
                main_figure(page, name, ARTIFACTS / "screenshots" / "fast" / f"{name}.png")
                shutdown_kernels(fast_lab)
                page.close()
        finally:
            browser.close()
            shutdown_kernels(fast_lab)
