"""Steps that drive the dashboard in a real browser, shared by ``tests/test_app_browser.py`` and
``benchmarks/bench_dashboard.py --browser``. Every function takes a Playwright ``Page`` (Playwright itself is a
development dependency and is not imported here).

No step sleeps for a fixed time: each waits for a condition of the page (the rerun finished, every plotly
chart drawn and still, the expected text shown). A click on a chart is made only once that chart is ready, at
coordinates computed from its current drawing, and is repeated (at freshly computed coordinates) only when
the page shows no sign of having received it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

_CHARTS_READY = """() => Array.from(document.querySelectorAll('[data-testid="stPlotlyChart"]')).every(c => {
  const gd = c.querySelector('.js-plotly-plot');
  return gd && gd.isConnected && gd._fullLayout && gd._fullData && !gd._fullLayout._replotting
    && c.querySelector('.main-svg') && getComputedStyle(gd).visibility !== 'hidden';
})"""
IDLE = f"""() => !document.querySelector('[data-testid="stStatusWidget"]')
  && !document.querySelector('[data-testid="stElementContainer"][data-stale="true"]')
  && !document.querySelector('[data-testid="stSkeleton"]') && !document.querySelector('.tcpa-pp[data-pending]')
  && ({_CHARTS_READY})()"""
"""True once Streamlit's "Running..." status widget is gone and no element of the previous run is still shown
as stale (the rerun, full or fragment, has finished and replaced every element: text drawn early in a rerun
can otherwise sit above the previous run's charts), every patch-panel component has shown its new pictures and
every plotly chart is drawn and not being redrawn (the chart library is loaded lazily on first use)."""
STILL = """() => new Promise(done => {
  const boxes = () => JSON.stringify(Array.from(document.querySelectorAll('.js-plotly-plot, .tcpa-pp'))
    .map(g => { const r = g.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; }));
  let last = boxes(), calm = 0;
  const step = () => requestAnimationFrame(() => {
    const now = boxes();
    calm = now === last ? calm + 1 : 0;
    last = now;
    if (calm >= 2) done(true); else step();
  });
  step();
})"""
"""Resolves once the charts' and patch panels' positions and sizes have not changed for two painted frames."""

_CHART = "document.querySelector(`.st-key-${key} .js-plotly-plot`)"
_POINT = f"""([key, trace, point]) => {{
  const gd = {_CHART};
  const data = gd._fullData[trace];
  const xa = gd._fullLayout[data.xaxis.replace('x', 'xaxis')], ya = gd._fullLayout[data.yaxis.replace('y', 'yaxis')];
  const box = gd.getBoundingClientRect();
  const x = box.left + xa._offset + xa.l2p(data.x[point]), y = box.top + ya._offset + ya.l2p(data.y[point]);
  const hit = document.elementFromPoint(x, y);
  const custom = data.customdata ? Array.from(data.customdata[point]) : null;
  return {{x, y, customdata: custom, on_chart: !!hit && gd.contains(hit)}};
}}"""
_PATCH = """([key, row, col, panel]) => {
  const frame = document.querySelectorAll(`.st-key-${key} .tcpa-pp-frame`)[panel];
  const [h, w] = frame.closest('.tcpa-pp').dataset.grid.split('x').map(Number);
  const box = frame.getBoundingClientRect();
  const x = box.left + (col + 0.5) * box.width / w, y = box.top + (row + 0.5) * box.height / h;
  const hit = document.elementFromPoint(x, y);
  return {x, y, on_chart: !!hit && frame.contains(hit)};
}"""
_REVISION = f"""(key) => {{
  const panels = document.querySelector(`.st-key-${{key}} .tcpa-pp`);
  if (panels) return panels.dataset.revision ?? null;
  const gd = {_CHART};
  if (!gd || !gd.isConnected) return 'replaced';
  return gd.layout.meta ? gd.layout.meta.revision : null;
}}"""
_RECEIVED = f"""([text, key, before]) => document.body.innerText.includes(text)
  || !!document.querySelector('[data-testid="stStatusWidget"]') || ({_REVISION})(key) !== before"""
"""True once the page shows a sign that a click reached the server: the expected text, a rerun running, or the
chart (or patch panel) replaced or redrawn with another revision."""


def settle(page: Any, text: str | None = None, timeout_ms: int = 60_000) -> None:
    """Wait until ``text`` is on the page (when given), the rerun has finished and every chart is drawn and
    still."""
    if text is not None:
        page.get_by_text(text).first.wait_for(timeout=timeout_ms)
    page.wait_for_function(IDLE, timeout=timeout_ms)
    page.evaluate(STILL)


def chart_ready(page: Any, chart_key: str, timeout_ms: int = 60_000) -> None:
    """Wait until the plotly chart drawn with key ``chart_key`` exists and the page has settled."""
    page.locator(f".st-key-{chart_key} .js-plotly-plot .main-svg").first.wait_for(timeout=timeout_ms)
    settle(page, timeout_ms=timeout_ms)


def point_position(page: Any, chart_key: str, trace: int, point: int) -> dict[str, Any]:
    """Page coordinates ``{x, y}`` and the custom data of point ``point`` of trace ``trace`` in the plotly chart
    drawn with key ``chart_key`` (from plotly's own axis mapping, so it follows zoom and layout) and whether the
    chart is the element at those coordinates (``on_chart``)."""
    return page.evaluate(_POINT, [chart_key, trace, point])


RETRIES: list[str] = []
"""Clicks that had to be repeated (what was expected), for the benchmark's report."""


def _click_until(page: Any, key: str, ready: Callable[[], None], locate: Callable[[], dict[str, Any]], text: str,
                 tries: int, sign_ms: int, timeout_ms: int) -> dict[str, Any]:
    """Click what ``locate`` finds on the element ``key`` until ``text`` appears and the rerun has finished;
    returns the located point with ``clicked_at``, the ``time.perf_counter()`` of the first click (a latency
    runs from there: the waits before it, for the element to be ready, are not the user's).

    Each try waits for ``ready``, locates the point anew and clicks; when within ``sign_ms`` the page shows no
    sign of the click (see ``_RECEIVED``), the click was lost and is repeated (at most ``tries`` times, each
    recorded in :data:`RETRIES`)."""
    clicked_at = None
    for attempt in range(tries):
        ready()
        at = locate()
        if not at["on_chart"]:
            raise AssertionError(f"the point to click is not on {key}: {at}")
        before = page.evaluate(_REVISION, key)
        page.mouse.move(at["x"], at["y"])
        clicked_at = time.perf_counter() if clicked_at is None else clicked_at
        page.mouse.click(at["x"], at["y"])
        try:
            page.wait_for_function(_RECEIVED, arg=[text, key, before], timeout=sign_ms)
        except Exception:
            if attempt == tries - 1:
                raise
            RETRIES.append(text)
            continue
        settle(page, text, timeout_ms)
        return {**at, "clicked_at": clicked_at}
    raise AssertionError(f"no click on {key} showed {text!r}")


def click_point(page: Any, chart_key: str, trace: int, point: int, text: str, tries: int = 3,
                sign_ms: int = 5_000, timeout_ms: int = 60_000) -> dict[str, Any]:
    """Click point ``point`` of trace ``trace`` of the plotly chart ``chart_key`` until ``text`` appears and
    the rerun has finished (see :func:`_click_until`); returns the point (:func:`point_position`) with
    ``clicked_at``."""
    return _click_until(page, chart_key, lambda: chart_ready(page, chart_key, timeout_ms),
                        lambda: point_position(page, chart_key, trace, point), text, tries, sign_ms, timeout_ms)


def patch_position(page: Any, key: str, row: int, col: int, panel: int = 0) -> dict[str, Any]:
    """Page coordinates ``{x, y}`` of the centre of patch ``(row, col)`` on picture ``panel`` of the
    patch-panel component ``key`` (:mod:`app.patch_panels`), and whether that picture is the element there
    (``on_chart``)."""
    return page.evaluate(_PATCH, [key, row, col, panel])


def click_patch(page: Any, key: str, row: int, col: int, text: str, panel: int = 0, tries: int = 3,
                sign_ms: int = 5_000, timeout_ms: int = 60_000) -> dict[str, Any]:
    """Click patch ``(row, col)`` on picture ``panel`` of the patch-panel component ``key`` until ``text``
    shows (see :func:`_click_until`)."""
    def ready() -> None:
        page.locator(f".st-key-{key} .tcpa-pp-frame").first.wait_for(timeout=timeout_ms)
        settle(page, timeout_ms=timeout_ms)

    return _click_until(page, key, ready, lambda: patch_position(page, key, row, col, panel), text, tries,
                        sign_ms, timeout_ms)


def click_element(page: Any, locator: Any) -> float:
    """Click the centre of the element ``locator`` finds with the mouse; returns the ``time.perf_counter()``
    of the click (Playwright's own checks before a click, that the element is visible and still, come before
    it: they are not the user's time)."""
    locator.scroll_into_view_if_needed()
    box = locator.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    clicked_at = time.perf_counter()
    page.mouse.click(x, y)
    return clicked_at


def choose_view(page: Any, label: str) -> float:
    """Pick a page in the sidebar's view list; returns the time of the click (see :func:`click_element`)."""
    return click_element(page, page.locator("[data-testid='stSidebar'] label").filter(has_text=label).first)
