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
from test_app import DEMO_POOLS, ROOT, app_module, write_demo_dir, write_history

from app.browser_steps import (
    STILL,
    chart_ready,
    choose_view,
    click_patch,
    click_point,
    patch_position,
    point_position,
    settle,
)
from tcpa_viz.cli import main as cli_main

CHROMIUM_ENV = "TCPA_VIZ_CHROMIUM"
CHROMIUM_DEFAULT = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HOST = "127.0.0.1"
START_TIMEOUT_S = 60
STEP_TIMEOUT_MS = 60_000
ATLAS_LAYER = 4
"""The block the fixture's prompt atlas covers (the layer the test moves to before opening the atlas)."""


def chromium_path() -> str:
    """The Chromium executable (``$TCPA_VIZ_CHROMIUM`` or the Debian package's)."""
    return os.environ.get(CHROMIUM_ENV, CHROMIUM_DEFAULT)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """Start ``app/launch.py`` on a free port (own process group) and stop it, whatever happens. The
    checkpoints have the demo architecture (``tcpa_demo_vit``: 64 px, 8x8 patches, depth 6) with random
    weights, so the timings are those of the demo models; beside them a prompt atlas of block
    ``ATLAS_LAYER`` on 16 test images (``tcpa-viz atlas``)."""
    demo = write_demo_dir(tmp_path / "fixtures", arch={}, pools=DEMO_POOLS, num_prompts=10)
    write_history(demo / "tcpa", [0.35, 0.62, 0.71, 0.69], loss_scale=2.0)
    write_history(demo / "vpt-deep", [0.30, 0.55, 0.58, 0.66], loss_scale=2.4)
    atlas = ["atlas", "--model", str(demo / "tcpa"), "--out", str(demo / "atlas"), "--max-samples", "16",
             "--layers", str(ATLAS_LAYER), "--formats", "png", "--no-progress"]
    assert cli_main(atlas) == 0, "the prompt atlas of the fixture checkpoint"
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


SCREENSHOTS_ENV = "TCPA_VIZ_SCREENSHOTS"
"""Folder where the browser test also copies its screenshots (to look at them; default: only pytest's tmp)."""


def download(page: Any, key: str = "sel_export", kind: str = "png") -> tuple[str, bytes]:
    """Press the export button ``{key}_{kind}`` (``kind``: ``png``, ``html`` or ``csv_<suffix>``); returns the
    file's suggested name and its bytes.

    Export files are produced on demand by callables that every script run registers anew, so a press that
    races the last rerun's update of the page can name a callable that is already gone: the page is let
    settle first and the press is repeated once.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    def press() -> tuple[str, bytes]:
        settle(page)
        with page.expect_download(timeout=20_000) as event:
            page.locator(f".st-key-{key}_{kind} button").click()
        return event.value.suggested_filename, Path(event.value.path()).read_bytes()

    try:
        return press()
    except PlaywrightTimeout:
        return press()


def shoot(page: Any, folder: Path, name: str) -> Path:
    """Save a screenshot of the whole page (and a copy under ``$TCPA_VIZ_SCREENSHOTS`` when set)."""
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get(SCREENSHOTS_ENV):
        target = Path(os.environ[SCREENSHOTS_ENV])
        target.mkdir(parents=True, exist_ok=True)
        (target / path.name).write_bytes(path.read_bytes())
    return path


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_linked_views_in_a_real_browser(server: str, tmp_path: Path) -> None:
    """Clicks a patch on the image, steps the layer, exports a PNG, opens the patch's first selected prompt in
    the prompt atlas and comes back, opens the prompt map, picks a patch on the Attention difference panel and
    hovers the TCPA overlay, shows and exports the explanation map and its deletion curve, runs the t-SNE and clicks a
    point, which makes that test image the current one, and opens the Models view (training curves, per-class
    accuracy and confusion matrices after Evaluate)."""
    if not Path(chromium_path()).is_file():
        pytest.skip(f"no Chromium at {chromium_path()} (install the Debian package `chromium` or set {CHROMIUM_ENV})")
    from playwright.sync_api import sync_playwright

    shots = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1500}, accept_downloads=True)
        try:
            page.set_default_timeout(STEP_TIMEOUT_MS)
            page.goto(server, wait_until="domcontentloaded")
            settle(page, "Selected patch (4, 4) at layer 5", 180_000)
            assert page.locator("[data-testid='stAppDeployButton']:visible").count() == 0
            assert page.locator("[class*='st-key-patch_']").count() == 0, "no button per patch"

            click_patch(page, "grid_chart", 2, 3, "Selected patch (2, 3) at layer 5")
            slider = page.locator(".st-key-w_layer input[type=range]")
            slider.focus()
            page.keyboard.press("ArrowLeft")
            settle(page, "Selected patch (2, 3) at layer 4")
            assert page.get_by_text("the baseline gives its 10 prompts").count() == 1
            shots.append(shoot(page, tmp_path, "1_selection"))
            name, png = download(page)
            assert name.endswith("_patch2-3_layer4_image_and_patch_grid.png") and png.startswith(b"\x89PNG"), name

            chosen = page.get_by_text("Image prompts selected by patch (2, 3) at layer 4").first.inner_text()
            entry = chosen.split("first: img ")[1].split(",")[0]
            page.locator(".st-key-sel_atlas_open button").click()
            settle(page, f"Block {ATLAS_LAYER}, image pool, entry {entry}")
            shots.append(shoot(page, tmp_path, "1b_atlas_entry_of_the_selected_prompt"))
            choose_view(page, "Prompt selection")
            settle(page, "Selected patch (2, 3) at layer 4")

            page.locator(".st-key-sel_panel button").filter(has_text="image coloured by selected prompt").click()
            settle(page, "layer 4: image prompt at rank 1 of every patch")
            shots.append(shoot(page, tmp_path, "2_selection_prompt_map"))

            choose_view(page, "Attention")
            settle(page, "Attention of patch (2, 3) at layer 4")
            click_patch(page, "att_overlay", 6, 1, "Attention of patch (6, 1) at layer 4", panel=2)
            hover = patch_position(page, "att_overlay", 2, 5, panel=1)
            page.mouse.move(hover["x"], hover["y"])
            readout = page.locator(".st-key-att_overlay .tcpa-pp-readout")
            readout.filter(has_text="TCPA (TCPA), patch (2, 5): 0.").wait_for()
            shots.append(shoot(page, tmp_path, "3_attention_patch_picked"))

            page.locator(".st-key-att_explain label").click()
            settle(page, "Export the explanation", 120_000)
            chart_ready(page, "att_explain_chart")
            assert page.get_by_text("deletion AUC").count() >= 1
            name, png = download(page, "att_explain_export", "png")
            assert name.startswith("test_image_0_relevance_class") and png.startswith(b"\x89PNG"), name
            name, data = download(page, "att_explain_export", "csv_deletion_curve")
            assert name.endswith("_deletion_curve.csv") and data.startswith(b"model,method,target,fraction"), name
            page.locator(".st-key-att_explain_chart").scroll_into_view_if_needed()
            shots.append(shoot(page, tmp_path, "3b_attention_explanation"))

            choose_view(page, "Features (t-SNE)")
            settle(page, "Run t-SNE")
            count = page.locator(".st-key-tsne_count input")
            count.fill("40")
            count.press("Enter")
            settle(page)
            page.locator(".st-key-tsne_run button").click()
            settle(page, "Accuracy per class on the sample", 240_000)
            at = point_position(page, "tsne_TCPA", 0, 7)
            index = int(at["customdata"][0])
            assert index != 0
            click_point(page, "tsne_TCPA", 0, 7, f"current: test image {index}")
            shots.append(shoot(page, tmp_path, "4_tsne_point_clicked"))

            choose_view(page, "Prompt selection")
            settle(page, "Selected patch (6, 1) at layer 4")
            assert page.get_by_text(f"test image {index} ·").count() == 1
            assert page.locator("[data-testid='stException']").count() == 0
            shots.append(shoot(page, tmp_path, "5_selection_of_the_clicked_image"))

            choose_view(page, "Models")
            settle(page, "Training curves")
            chart_ready(page, "models_curves")
            images = page.locator(".st-key-models_images_test input")
            images.fill("120")
            images.press("Enter")
            settle(page, "Press Evaluate to run the models on 120 images")
            page.locator(".st-key-models_eval button").click()
            settle(page, "classes with differing rows", 180_000)
            title = page.locator(".st-key-models_class_accuracy .gtitle").first.text_content()
            assert title == "accuracy per class on 120 images of the test split", title
            for chart in ("models_curves", "models_class_accuracy", "models_confusion"):
                chart_ready(page, chart)
                drawn = page.locator(f".st-key-{chart} .cartesianlayer .trace, .st-key-{chart} .cartesianlayer .hm")
                assert drawn.count() > 0, f"{chart} has nothing drawn"
            assert page.locator("[data-testid='stException']").count() == 0
            shots.append(shoot(page, tmp_path, "6_models"))
            for chart in ("models_class_accuracy", "models_confusion"):
                page.locator(f".st-key-{chart}").scroll_into_view_if_needed()
                page.evaluate(STILL)
                shots.append(shoot(page, tmp_path, f"6_{chart}"))
        except Exception as exc:
            failure = shoot(page, tmp_path, "failure")
            log = (tmp_path / "server.log").read_text()[-3000:]
            raise AssertionError(f"browser step failed ({exc}); page at {failure}; server log tail:\n{log}") from exc
        finally:
            browser.close()
    for shot in shots:
        with Image.open(shot) as image:
            assert image.size[0] == 1500 and image.size[1] >= 1500, shot
