"""Figures specific to the dashboard (plotly for the page, matplotlib twins for PNG export).

The generic figures (attention overlays, heatmaps, surfaces, pool usage, t-SNE, rank) come from
:mod:`tcpa_viz`; this module adds the clickable image with its patch grid, the layer x pool-entry table
of one token's prompt choices, the image coloured by selected prompt, and the TCPA mask.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go
from matplotlib.figure import Figure

from tcpa_viz import as_rgb_uint8, plot_selection_grid_matplotlib, plot_selection_grid_plotly
from tcpa_viz.heatmap import group_ticks

if TYPE_CHECKING:
    from tcpa_core import TokenLayout

SELECTED_COLOUR = "red"


def image_grid_figure(display: np.ndarray, grid_size: tuple[int, int], selected: tuple[int, int],
                      title: str = "") -> go.Figure:
    """The image with its patch grid and the selected patch boxed; clicking a patch reports its
    ``(row, col)`` as the point's custom data."""
    img = as_rgb_uint8(display)
    height, width = img.shape[:2]
    h, w = grid_size
    dy, dx = height / h, width / w
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    line_x: list[float | None] = []
    line_y: list[float | None] = []
    for r in range(1, h):
        line_x += [-0.5, width - 0.5, None]
        line_y += [r * dy - 0.5, r * dy - 0.5, None]
    for c in range(1, w):
        line_x += [c * dx - 0.5, c * dx - 0.5, None]
        line_y += [-0.5, height - 0.5, None]
    r, c = selected
    box_x = [c * dx - 0.5, (c + 1) * dx - 0.5, (c + 1) * dx - 0.5, c * dx - 0.5, c * dx - 0.5]
    box_y = [r * dy - 0.5, r * dy - 0.5, (r + 1) * dy - 0.5, (r + 1) * dy - 0.5, r * dy - 0.5]
    data = [
        go.Image(z=img, hoverinfo="skip"),
        go.Scatter(x=line_x, y=line_y, mode="lines", line=dict(color="rgba(255,255,255,0.55)", width=1),
                   hoverinfo="skip", showlegend=False),
        go.Scatter(x=box_x, y=box_y, mode="lines", line=dict(color=SELECTED_COLOUR, width=3), hoverinfo="skip",
                   showlegend=False),
        go.Scatter(
            x=((cols + 0.5) * dx - 0.5).ravel(), y=((rows + 0.5) * dy - 0.5).ravel(), mode="markers",
            marker=dict(symbol="square", size=max(6, min(40, int(360 / max(h, w)))), opacity=0.01, color="white"),
            customdata=np.stack([rows.ravel(), cols.ravel()], axis=-1), showlegend=False,
            hovertemplate="patch (%{customdata[0]}, %{customdata[1]})<extra></extra>",
        ),
    ]
    layout = dict(
        title=dict(text=title), height=420, margin=dict(l=5, r=5, t=40, b=5), dragmode=False,
        clickmode="event+select", xaxis=dict(visible=False, range=[-0.5, width - 0.5]),
        yaxis=dict(visible=False, range=[height - 0.5, -0.5], scaleanchor="x"),
    )
    return go.Figure(data=data, layout=layout)


def image_grid_matplotlib(display: np.ndarray, grid_size: tuple[int, int], selected: tuple[int, int],
                          title: str = "") -> Figure:
    """Static version of :func:`image_grid_figure`."""
    from matplotlib.patches import Rectangle

    img = as_rgb_uint8(display)
    height, width = img.shape[:2]
    h, w = grid_size
    fig = Figure(figsize=(4.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(img, interpolation="nearest")
    for r in range(1, h):
        ax.axhline(r * height / h - 0.5, color="white", alpha=0.5, linewidth=0.8)
    for c in range(1, w):
        ax.axvline(c * width / w - 0.5, color="white", alpha=0.5, linewidth=0.8)
    r, c = selected
    ax.add_patch(Rectangle((c * width / w - 0.5, r * height / h - 0.5), width / w, height / h, fill=False,
                           edgecolor=SELECTED_COLOUR, linewidth=2.5))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    return fig


def rank_matrix(assign: np.ndarray, pool_size: int) -> np.ndarray:
    """``[layers, pool_size]`` int: 1-based rank of each entry in a token's top-k list per layer, 0 if not chosen.

    ``assign`` is ``[layers, k]`` (entries in ``torch.topk`` order, most similar first).
    """
    out = np.zeros((assign.shape[0], pool_size), dtype=np.int64)
    for layer, entries in enumerate(np.asarray(assign, dtype=np.int64)):
        out[layer, entries] = np.arange(1, len(entries) + 1)
    return out


def selection_table_figure(assign: np.ndarray, pool_size: int, title: str, highlight: int | None = None,
                           pool: str = "image") -> go.Figure:
    """Layer x pool-entry heatmap of one token's choices; cells show the rank (1 = most similar key)."""
    ranks = rank_matrix(assign, pool_size)
    k = max(int(ranks.max()), 1)
    strength = np.where(ranks > 0, (k + 1 - ranks) / k, 0.0)
    text = np.where(ranks > 0, ranks.astype(str), "")
    scale = "Blues" if pool == "image" else "Reds"
    fig = go.Figure(go.Heatmap(
        z=strength, x=list(range(pool_size)), y=list(range(ranks.shape[0])), text=text, texttemplate="%{text}",
        colorscale=scale, zmin=0, zmax=1, showscale=False, xgap=1, ygap=1, customdata=ranks,
        hovertemplate="layer %{y}<br>entry %{x}<br>rank %{customdata}<extra></extra>",
    ))
    if highlight is not None:
        fig.add_shape(type="rect", x0=-0.5, x1=pool_size - 0.5, y0=highlight - 0.5, y1=highlight + 0.5,
                      line=dict(color=SELECTED_COLOUR, width=2))
    fig.update_xaxes(title_text=f"{pool}-pool entry", dtick=1 if pool_size <= 40 else None)
    fig.update_yaxes(title_text="layer", autorange="reversed", dtick=1)
    fig.update_layout(title=dict(text=title), height=max(260, 34 * ranks.shape[0] + 120),
                      margin=dict(l=10, r=10, t=50, b=10))
    return fig


def selection_table_matplotlib(assign: np.ndarray, pool_size: int, title: str, pool: str = "image") -> Figure:
    """Static version of :func:`selection_table_figure`."""
    ranks = rank_matrix(assign, pool_size)
    k = max(int(ranks.max()), 1)
    strength = np.where(ranks > 0, (k + 1 - ranks) / k, 0.0)
    fig = Figure(figsize=(max(5.0, 0.32 * pool_size + 1.5), max(2.5, 0.4 * ranks.shape[0] + 1.2)),
                 layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(strength, cmap="Blues" if pool == "image" else "Reds", vmin=0, vmax=1, aspect="auto",
              interpolation="nearest")
    for (layer, entry), rank in np.ndenumerate(ranks):
        if rank:
            ax.text(entry, layer, str(rank), ha="center", va="center", fontsize="x-small",
                    color="white" if strength[layer, entry] > 0.5 else "black")
    ax.set_xticks(range(pool_size))
    ax.set_yticks(range(ranks.shape[0]))
    ax.tick_params(labelsize="x-small")
    ax.set_xlabel(f"{pool}-pool entry")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize="medium")
    return fig


def selection_map_figure(image_assign: np.ndarray, layout: TokenLayout, display: np.ndarray, mode: str,
                         rank: int, title: str, alpha: float = 0.6) -> go.Figure:
    """The image coloured by what every patch selected (``top1``: entry at ``rank``; ``set``: set id)."""
    fig = plot_selection_grid_plotly(image_assign[None], layout, image=0, mode=mode, rank=rank, title=title)
    img = as_rgb_uint8(display)
    height, width = img.shape[:2]
    h, w = layout.grid_size
    fig.data[0].opacity = alpha
    background = go.Image(z=img, x0=0.5 * w / width - 0.5, dx=w / width, y0=0.5 * h / height - 0.5, dy=h / height,
                          hoverinfo="skip")
    fig.add_trace(background)
    fig.data = (fig.data[1], fig.data[0])
    fig.update_xaxes(range=[-0.5, w - 0.5], showgrid=False, dtick=1)
    fig.update_yaxes(range=[h - 0.5, -0.5], autorange=None, showgrid=False, dtick=1)
    fig.update_layout(width=None, height=440, margin=dict(l=10, r=10, t=50, b=10))
    return fig


def selection_map_matplotlib(image_assign: np.ndarray, layout: TokenLayout, display: np.ndarray, mode: str,
                             rank: int, title: str) -> Figure:
    """Static version of :func:`selection_map_figure`."""
    return plot_selection_grid_matplotlib(image_assign[None], layout, image=0, mode=mode, rank=rank,
                                          background=display, title=title)


def mask_figure(mask: np.ndarray, layout: TokenLayout, title: str) -> go.Figure:
    """The TCPA mask ``[query, key]`` (dark = the query may attend to the key) with token-group labels."""
    m = np.asarray(mask, dtype=np.int8)
    fig = go.Figure(go.Heatmap(
        z=m, colorscale=[[0.0, "#f2f2f2"], [0.5, "#f2f2f2"], [0.5, "#1f3b73"], [1.0, "#1f3b73"]], zmin=0, zmax=1,
        showscale=False, hovertemplate="query %{y}<br>key %{x}<br>allowed %{z}<extra></extra>",
    ))
    kx, kn, kb = group_ticks(layout.key_slices())
    qx, qn, qb = group_ticks(layout.query_slices())
    for b in kb:
        fig.add_vline(x=b, line=dict(color="orange", width=1))
    for b in qb:
        fig.add_hline(y=b, line=dict(color="orange", width=1))
    fig.update_xaxes(tickvals=kx, ticktext=kn, title_text=f"key ({m.shape[1]})")
    fig.update_yaxes(tickvals=qx, ticktext=qn, title_text=f"query ({m.shape[0]})", autorange="reversed")
    fig.update_layout(title=dict(text=title), height=420, margin=dict(l=10, r=10, t=50, b=10))
    return fig


def mask_matplotlib(mask: np.ndarray, layout: TokenLayout, title: str) -> Figure:
    """Static version of :func:`mask_figure`."""
    from matplotlib.colors import ListedColormap

    m = np.asarray(mask, dtype=np.int8)
    fig = Figure(figsize=(7.0, 5.0), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(m, cmap=ListedColormap(["#f2f2f2", "#1f3b73"]), vmin=0, vmax=1, aspect="auto",
              interpolation="nearest")
    kx, kn, kb = group_ticks(layout.key_slices())
    qx, qn, qb = group_ticks(layout.query_slices())
    for b in kb:
        ax.axvline(b, color="orange", linewidth=0.8)
    for b in qb:
        ax.axhline(b, color="orange", linewidth=0.8)
    ax.set_xticks(kx, kn, rotation=30, ha="right", fontsize="small")
    ax.set_yticks(qx, qn, fontsize="small")
    ax.set_title(title)
    return fig
