"""Warm interaction latency of the dashboard: a patch or a layer change until the page is updated.

Usage: python benchmarks/bench_dashboard.py [--demo-dir demo_out] [--threads 1] [--browser [--chromium PATH]]

Runs on the checkpoints of ``--demo-dir`` (run ``make demo`` first). Without ``--browser``: the script
reruns of ``app/dashboard.py`` through Streamlit's ``AppTest`` (server side only). With ``--browser``: the
real server on a free localhost port and headless Chromium (Playwright), from the click until the new
selection is shown and Streamlit reports the run finished (server + websocket + rendering). Both warm up
with one interaction first. The bar (DESIGN.md section 4) is <= 2 s per warm interaction on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "app" / "dashboard.py"
PATCHES = [(1, 2), (5, 6), (7, 0), (3, 3)]
LAYERS = (0, 3, 5, 2)


def report(cold: float, timings: dict[str, list[float]]) -> None:
    print(f"cold start {cold:.2f} s")
    for name, values in timings.items():
        print(f"warm {name} change: median {statistics.median(values):.3f} s, max {max(values):.3f} s")


def bench_apptest() -> None:
    """Server-side reruns through ``AppTest`` (the demo folder comes from ``TCPA_VIZ_DEMO_DIR``)."""
    app = AppTest.from_file(str(DASHBOARD), default_timeout=300)
    start = time.perf_counter()
    app.run()
    cold = time.perf_counter() - start
    if app.exception:
        raise SystemExit(f"the dashboard failed: {[e.value for e in app.exception]}")
    app.button(key="patch_0_0").click().run()
    timings: dict[str, list[float]] = {"patch": [], "layer": []}
    for row, col in PATCHES:
        start = time.perf_counter()
        app.button(key=f"patch_{row}_{col}").click().run()
        timings["patch"].append(time.perf_counter() - start)
    for layer in LAYERS:
        start = time.perf_counter()
        app.slider(key="w_layer").set_value(layer).run()
        timings["layer"].append(time.perf_counter() - start)
    report(cold, timings)


def bench_browser(demo_dir: Path, chromium: str) -> None:
    """The real server and headless Chromium; each timing ends when the page shows the new selection and
    Streamlit's status widget ("Running...") is gone."""
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(ROOT))  # app/ sits beside the installed packages in the source tree
    from app.launch import free_port, wait_until_healthy

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "app" / "launch.py"), "--port", str(port), "--address", "127.0.0.1",
         "--demo-dir", str(demo_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until_healthy(url, server, timeout_s=60.0)
        idle = "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox"])
            page = browser.new_page(viewport={"width": 1500, "height": 1500})
            page.set_default_timeout(120_000)
            start = time.perf_counter()
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_text("Selected patch (4, 4) at layer 5").wait_for()
            page.wait_for_function(idle)
            cold = time.perf_counter() - start

            def select_patch(row: int, col: int, layer: int) -> float:
                start = time.perf_counter()
                page.locator(f".st-key-patch_{row}_{col} button").click()
                page.get_by_text(f"Selected patch ({row}, {col}) at layer {layer}").wait_for()
                page.wait_for_function(idle)
                return time.perf_counter() - start

            select_patch(0, 0, 5)
            timings: dict[str, list[float]] = {"patch": [select_patch(r, c, 5) for r, c in PATCHES], "layer": []}
            slider = page.locator(".st-key-w_layer input[type=range]")
            for layer in (4, 3, 2, 1):
                start = time.perf_counter()
                slider.focus()
                page.keyboard.press("ArrowLeft")
                page.get_by_text(f"Selected patch (3, 3) at layer {layer}").wait_for()
                page.wait_for_function(idle)
                timings["layer"].append(time.perf_counter() - start)
            browser.close()
        report(cold, timings)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-dir", default="demo_out")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--browser", action="store_true", help="measure in headless Chromium")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium executable for --browser")
    args = parser.parse_args()
    os.environ["TCPA_VIZ_DEMO_DIR"] = str(Path(args.demo_dir).resolve())
    os.environ["TCPA_VIZ_THREADS"] = str(args.threads)
    if args.browser:
        bench_browser(Path(args.demo_dir).resolve(), args.chromium)
    else:
        bench_apptest()


if __name__ == "__main__":
    main()
