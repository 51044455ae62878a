"""Steps that drive the dashboard in a real browser, shared by ``tests/test_app_browser.py`` and
``benchmarks/bench_dashboard.py --browser``. Every function takes a Playwright ``Page`` (Playwright itself is a
development dependency and is not imported here)."""

from __future__ import annotations

from typing import Any

IDLE = """() => !document.querySelector('[data-testid="stStatusWidget"]')
  && Array.from(document.querySelectorAll('[data-testid="stPlotlyChart"]')).every(c => c.querySelector('.main-svg'))
  && !document.querySelector('[data-testid="stSkeleton"]')"""
"""True once Streamlit's "Running..." status widget is gone (the rerun, full or fragment, has finished) and every
plotly chart is drawn (the chart library is loaded lazily on first use)."""
PAINTED = "() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))"
"""Resolves after the browser has painted the current state (two animation frames)."""

_POINT = """([key, trace, point]) => {
  const gd = document.querySelector(`.st-key-${key} .js-plotly-plot`);
  const data = gd._fullData[trace];
  const xa = gd._fullLayout[data.xaxis.replace('x', 'xaxis')], ya = gd._fullLayout[data.yaxis.replace('y', 'yaxis')];
  const box = gd.getBoundingClientRect();
  const custom = data.customdata ? Array.from(data.customdata[point]) : null;
  return {x: box.left + xa._offset + xa.l2p(data.x[point]), y: box.top + ya._offset + ya.l2p(data.y[point]),
          customdata: custom};
}"""


def settle(page: Any, text: str | None = None, timeout_ms: int = 60_000) -> None:
    """Wait until ``text`` is on the page (when given) and the rerun has finished."""
    if text is not None:
        page.get_by_text(text).first.wait_for(timeout=timeout_ms)
    page.wait_for_function(IDLE, timeout=timeout_ms)
    page.evaluate(PAINTED)


def point_position(page: Any, chart_key: str, trace: int, point: int) -> dict[str, Any]:
    """Page coordinates ``{x, y}`` and the custom data of point ``point`` of trace ``trace`` in the plotly chart
    drawn with key ``chart_key`` (from plotly's own axis mapping, so it follows zoom and layout)."""
    return page.evaluate(_POINT, [chart_key, trace, point])


RETRIES: list[str] = []
"""Clicks that had to be repeated (what was expected), for the benchmark's report."""


def click_until(page: Any, x: float, y: float, text: str, tries: int = 3, wait_ms: int = 8_000) -> None:
    """Click at ``(x, y)`` until ``text`` appears and the rerun has finished.

    A click that lands while the page is still applying the previous rerun can be dropped by the browser's
    plotly chart; it is repeated (at most ``tries`` times, each recorded in :data:`RETRIES`).
    """
    for attempt in range(tries):
        page.mouse.move(x, y)
        page.mouse.click(x, y)
        try:
            page.get_by_text(text).first.wait_for(timeout=wait_ms if attempt < tries - 1 else 60_000)
            break
        except Exception:
            if attempt == tries - 1:
                raise
            RETRIES.append(text)
    settle(page)


def click_patch_marker(page: Any, chart_key: str, trace: int, row: int, col: int, grid_width: int,
                       text: str) -> None:
    """Click the invisible marker of patch ``(row, col)`` (trace ``trace`` holds one marker per patch) until
    ``text`` shows."""
    at = point_position(page, chart_key, trace, row * grid_width + col)
    click_until(page, at["x"], at["y"], text)


def choose_view(page: Any, label: str) -> None:
    """Pick a page in the sidebar's view list."""
    page.locator("[data-testid='stSidebar'] label").filter(has_text=label).first.click()
