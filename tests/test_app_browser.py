"""Real-browser test of the dashboard: the server on a free localhost port, headless Chromium via Playwright."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from test_app import DEMO_POOLS, ROOT, app_module, write_demo_dir

CHROMIUM_ENV = "TCPA_VIZ_CHROMIUM"
CHROMIUM_DEFAULT = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HOST = "127.0.0.1"
START_TIMEOUT_S = 60
STEP_TIMEOUT_MS = 60_000


def chromium_path() -> str:
    """The Chromium executable (``$TCPA_VIZ_CHROMIUM`` or the Debian package's)."""
    return os.environ.get(CHROMIUM_ENV, CHROMIUM_DEFAULT)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """Start ``app/launch.py`` on a free port (own process group) and stop it, whatever happens. The
    checkpoints have the demo architecture (``tcpa_demo_vit``: 64 px, 8x8 patches, depth 6) with random
    weights, so the timings are those of the demo models."""
    demo = write_demo_dir(tmp_path / "fixtures", arch={}, pools=DEMO_POOLS, num_prompts=10)
    launch = app_module("app.launch")
    port = launch.free_port(HOST)
    log = tmp_path / "server.log"
    env = {k: v for k, v in os.environ.items() if k not in ("TCPA_VIZ_DEMO_DIR", "TCPA_VIZ_CHECKPOINTS")}
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "app" / "launch.py"), "--port", str(port), "--address", HOST,
             "--demo-dir", str(demo)],
            cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    try:
        url = f"http://{HOST}:{port}"
        try:
            launch.wait_until_healthy(url, process, START_TIMEOUT_S)
        except RuntimeError as exc:
            pytest.fail(f"{exc}:\n{log.read_text()}")
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)


def download_png(page: Any, idle: str) -> tuple[str, bytes]:
    """Press the PNG export button; returns the file's suggested name and its bytes.

    Export files are produced on demand by callables that every script run registers anew, so a press that
    races the last rerun's update of the page can name a callable that is already gone: the page is let
    settle first and the press is repeated once.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    def press() -> tuple[str, bytes]:
        page.wait_for_timeout(1000)
        page.wait_for_function(idle)
        with page.expect_download(timeout=20_000) as download:
            page.locator(".st-key-sel_export_png button").click()
        return download.value.suggested_filename, Path(download.value.path()).read_bytes()

    try:
        return press()
    except PlaywrightTimeout:
        return press()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_click_a_patch_in_a_real_browser(server: str, tmp_path: Path) -> None:
    if not Path(chromium_path()).is_file():
        pytest.skip(f"no Chromium at {chromium_path()} (install the Debian package `chromium` or set {CHROMIUM_ENV})")
    from playwright.sync_api import sync_playwright

    screenshot = tmp_path / "dashboard.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1500}, accept_downloads=True)
        try:
            page.set_default_timeout(STEP_TIMEOUT_MS)
            page.goto(server, wait_until="domcontentloaded")
            page.get_by_text("Selected patch (4, 4) at layer 5").wait_for(timeout=90_000)

            idle = "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
            for row, col in [(1, 3), (6, 0), (0, 7), (5, 2)]:
                page.locator(f".st-key-patch_{row}_{col} button").click()
                page.get_by_text(f"Selected patch ({row}, {col}) at layer 5").wait_for()
                page.wait_for_function(idle)
                assert page.get_by_text(f"Image prompts selected by patch ({row}, {col}) at layer 5").is_visible()
                assert page.locator(f".st-key-patch_{row}_{col} button[kind='primary']").count() == 1

            slider = page.locator(".st-key-w_layer input[type=range]")
            for layer in (4, 3, 2):
                slider.focus()
                page.keyboard.press("ArrowLeft")
                page.get_by_text(f"Selected patch (5, 2) at layer {layer}").wait_for()
                page.wait_for_function(idle)
            slider.focus()
            page.keyboard.press("End")
            page.get_by_text("Selected patch (5, 2) at layer 5").wait_for()
            page.wait_for_function(idle)

            chart = page.locator(".st-key-grid_chart .nsewdrag").first
            box = chart.bounding_box()
            assert box is not None
            x, y = box["x"] + box["width"] * 3.5 / 8, box["y"] + box["height"] * 2.5 / 8
            page.mouse.move(x, y)
            page.mouse.click(x, y)
            page.get_by_text("Selected patch (2, 3) at layer 5").wait_for()
            page.wait_for_function(idle)
            assert page.locator("[data-testid='stException']").count() == 0
            page.screenshot(path=str(screenshot))

            name, png = download_png(page, idle)
            assert name.endswith(".png") and png.startswith(b"\x89PNG")
        except Exception as exc:
            failure = tmp_path / "failure.png"
            page.screenshot(path=str(failure))
            log = (tmp_path / "server.log").read_text()[-3000:]
            raise AssertionError(f"browser step failed ({exc}); page at {failure}; server log tail:\n{log}") from exc
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
    with Image.open(screenshot) as shot:
        assert shot.size == (1500, 1500)
