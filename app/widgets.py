"""Widgets shared by several views: the layer slider, the patch picker and the head selector, plus the plotly
chart options every view uses. Their values live in :mod:`app.state`, so every view sees the same selection."""

from __future__ import annotations

import streamlit as st

from app import state

CHART_CONFIG = {"displayModeBar": False}
"""Plotly options of every chart (no mode bar: exports are the view's download buttons)."""
MAX_BUTTON_GRID = 16
"""Largest grid side for which a button per patch is drawn (bigger grids: row/column inputs and clicks)."""


def layer_slider(depth: int) -> None:
    """The shared layer selector."""
    if depth > 1:
        st.slider("Layer", min_value=0, max_value=depth - 1, step=1, **state.bound(state.LAYER))
    else:
        st.caption("Layer 0 (the model has one block)")


def patch_picker(grid_size: tuple[int, int], depth: int) -> None:
    """Patch buttons (small grids), row/column inputs and the layer slider."""
    h, w = grid_size
    row, col = state.patch()
    if max(h, w) <= MAX_BUTTON_GRID:
        st.markdown("**Choose a patch**")
        for r in range(h):
            cells = st.columns(w, gap="xxsmall")
            for c in range(w):
                cells[c].button(f"{r},{c}", key=f"patch_{r}_{c}", on_click=state.select_patch, args=(r, c),
                                type="primary" if (r, c) == (row, col) else "secondary", width="stretch")
    left, right = st.columns(2)
    left.number_input("Patch row", min_value=0, max_value=h - 1, step=1, **state.bound(state.PATCH_ROW))
    right.number_input("Patch column", min_value=0, max_value=w - 1, step=1, **state.bound(state.PATCH_COL))
    layer_slider(depth)


def head_options(num_heads: int) -> list[str]:
    """Choices of the head selector: ``mean``, ``max`` and every head index."""
    return ["mean", "max", *[str(h) for h in range(num_heads)]]


def parse_heads(choice: str) -> str | int:
    """Selector value -> the ``heads`` argument of tcpa_viz (``"mean"``, ``"max"`` or an int)."""
    return choice if choice in ("mean", "max") else int(choice)
