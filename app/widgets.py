"""Widgets shared by several views: the layer slider, the patch inputs and the head selector, plus the plotly
chart options every view uses. Their values live in :mod:`app.state`, so every view sees the same selection.

There is no button per patch: a click on a patch picture (``app.patch_panels``) or the row/column inputs pick
the patch, so a 14x14 ViT-B/16 grid costs one picture, not 196 buttons."""

from __future__ import annotations

import streamlit as st

from app import state

CHART_CONFIG = {"displayModeBar": False}
"""Plotly options of every chart (no mode bar: exports are the view's download buttons)."""


def layer_slider(depth: int) -> None:
    """The shared layer selector (block index, 0 = first block)."""
    if depth > 1:
        st.slider("Layer (block, 0 = first)", min_value=0, max_value=depth - 1, step=1, **state.bound(state.LAYER))
    else:
        st.caption("Layer 0 (the model has one block)")


def patch_inputs(grid_size: tuple[int, int]) -> None:
    """Row and column inputs of the shared patch (0-based grid coordinates)."""
    h, w = grid_size
    left, right = st.columns(2)
    left.number_input(f"Patch row (0-{h - 1})", min_value=0, max_value=h - 1, step=1, **state.bound(state.PATCH_ROW))
    right.number_input(f"Patch column (0-{w - 1})", min_value=0, max_value=w - 1, step=1,
                       **state.bound(state.PATCH_COL))


def head_options(num_heads: int) -> list[str]:
    """Choices of the head selector: ``mean``, ``max`` and every head index."""
    return ["mean", "max", *[str(h) for h in range(num_heads)]]


def head_text(choice: str) -> str:
    """Label of a head choice: ``mean over heads``, ``max over heads``, ``head 2``."""
    return f"{choice} over heads" if choice in ("mean", "max") else f"head {choice}"


def parse_heads(choice: str) -> str | int:
    """Selector value -> the ``heads`` argument of tcpa_viz (``"mean"``, ``"max"`` or an int)."""
    return choice if choice in ("mean", "max") else int(choice)
