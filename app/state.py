"""Selection shared by the views (patch, layer, head) kept in ``st.session_state``.

Only one view is drawn per script run, and Streamlit forgets the value of a widget that was not drawn in
a run. The shared values therefore live under plain keys (``patch_row``, ``layer`` ...) and every widget
that edits one is bound to it with :func:`bound` (a mirror widget key filled from the value before the
widget is drawn, copied back by its ``on_change`` callback).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import streamlit as st

PATCH_ROW = "patch_row"
PATCH_COL = "patch_col"
LAYER = "layer"
HEADS = "heads"
WIDGET_PREFIX = "w_"
GRID_CHART = "grid_chart"


def ensure(grid_size: tuple[int, int], depth: int) -> None:
    """Create the shared values on first use and keep them inside the current model's grid and depth."""
    state = st.session_state
    h, w = grid_size
    state.setdefault(PATCH_ROW, h // 2)
    state.setdefault(PATCH_COL, w // 2)
    state.setdefault(LAYER, depth - 1)
    state.setdefault(HEADS, "mean")
    state[PATCH_ROW] = min(max(int(state[PATCH_ROW]), 0), h - 1)
    state[PATCH_COL] = min(max(int(state[PATCH_COL]), 0), w - 1)
    state[LAYER] = min(max(int(state[LAYER]), 0), depth - 1)


def default(key: str, value: float, low: float, high: float) -> str:
    """Give the widget ``key`` its default ``value`` on first use and keep its value in ``[low, high]``
    (the range changes with the model or data set); returns ``key``. The widget itself gets no ``value``."""
    current = st.session_state.get(key, value)
    st.session_state[key] = type(value)(min(max(current, low), high))
    return key


def bound(name: str) -> dict[str, Any]:
    """Widget keyword arguments binding a widget to the shared value ``name``: ``key`` and ``on_change``."""
    key = WIDGET_PREFIX + name
    st.session_state[key] = st.session_state[name]
    return {"key": key, "on_change": _copy_back, "args": (name,)}


def _copy_back(name: str) -> None:
    st.session_state[name] = st.session_state[WIDGET_PREFIX + name]


def select_patch(row: int, col: int) -> None:
    """Callback of the patch buttons."""
    st.session_state[PATCH_ROW] = int(row)
    st.session_state[PATCH_COL] = int(col)


def _as_pair(data: Any) -> tuple[int, int] | None:
    """``(row, col)`` from a clicked point's custom data (a sequence, or a mapping keyed by position)."""
    if isinstance(data, Mapping):
        data = [data[k] for k in sorted(data, key=lambda k: int(k))]
    if isinstance(data, Sequence) and not isinstance(data, str) and len(data) >= 2:
        return int(data[0]), int(data[1])
    return None


def on_grid_click(grid_width: int, chart_key: str = GRID_CHART) -> None:
    """Callback of a clickable patch chart (``chart_key``): a point carries its patch ``(row, col)`` as custom
    data (its index in the row-major patch list is used when the custom data is missing)."""
    event = st.session_state.get(chart_key) or {}
    selection = event.get("selection", {}) if isinstance(event, Mapping) else {}
    for point in selection.get("points", []):
        pair = _as_pair(point.get("customdata"))
        if pair is None and point.get("point_index") is not None:
            pair = divmod(int(point["point_index"]), grid_width)
        if pair is not None:
            select_patch(*pair)
            return


def patch() -> tuple[int, int]:
    """The selected patch ``(row, col)``."""
    return int(st.session_state[PATCH_ROW]), int(st.session_state[PATCH_COL])


def layer() -> int:
    """The selected layer."""
    return int(st.session_state[LAYER])
