"""3D view of selected attention rows against every key index (paper Fig. 3, left).

Each selected query row (CLS, registers, some patches, or all rows) is drawn over the full key axis
``[prefix | CLS prompts | image prompts | prompts | patches]``: as one line per row (``wireframe``) or as
a shaded surface (``surface``). Group boundaries are drawn as dashed lines on the floor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from .colors import GROUP_COLORS, get_cmap, plotly_colorscale
from .errors import AnalysisArgumentError
from .heatmap import attention_matrix, group_ticks
from .tokens import GROUP_TITLES, HeadReduction, QuerySpec, key_labels, nonempty_groups, query_labels, resolve_query

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from tcpa_core.layout import TokenLayout

SurfaceKind = Literal["wireframe", "surface"]


def default_surface_queries(layout: TokenLayout, num_patches: int = 8) -> list[int]:
    """Query rows shown by default: every prefix token, then ``num_patches`` evenly spaced patch rows."""
    n = min(num_patches, layout.num_patches)
    patches = np.linspace(0, layout.num_patches - 1, n).round().astype(int) if n > 0 else np.array([], int)
    return list(range(layout.num_prefix)) + [layout.num_prefix + int(p) for p in np.unique(patches)]


def surface_rows(
    attn: torch.Tensor | np.ndarray,
    layout: TokenLayout,
    queries: Sequence[QuerySpec] | Literal["all"] | None = None,
    image: int = 0,
    heads: HeadReduction = "mean",
) -> tuple[np.ndarray, list[str]]:
    """Selected rows ``[rows, key]`` of the head-reduced matrix of image ``image`` and their labels.

    ``queries``: a list of query specs (``"cls"``, ``(row, col)``, ...), ``"all"`` for every row, or
    ``None`` for :func:`default_surface_queries`.
    """
    m = attention_matrix(attn, layout, image, heads)
    if queries is None:
        rows = default_surface_queries(layout)
    elif isinstance(queries, str) and queries == "all":
        rows = list(range(layout.num_queries))
    else:
        rows = [resolve_query(layout, q) for q in queries]
    if not rows:
        raise AnalysisArgumentError("select at least one query row")
    labels = query_labels(layout)
    return m[rows], [labels[r] for r in rows]


def _row_ticks(labels: list[str], max_ticks: int = 16) -> tuple[list[int], list[str]]:
    step = max(1, int(np.ceil(len(labels) / max_ticks)))
    idx = list(range(0, len(labels), step))
    return idx, [labels[i] for i in idx]


def plot_attention_surface_matplotlib(
    attn: torch.Tensor | np.ndarray,
    layout: TokenLayout,
    queries: Sequence[QuerySpec] | Literal["all"] | None = None,
    image: int = 0,
    heads: HeadReduction = "mean",
    kind: SurfaceKind = "wireframe",
    title: str | None = None,
    cmap: str = "viridis",
    elev: float = 35.0,
    azim: float = -60.0,
) -> Figure:
    """mplot3d figure of the selected rows: x = key index, y = selected query, z = attention."""
    z, labels = surface_rows(attn, layout, queries, image, heads)
    x, y = np.meshgrid(np.arange(z.shape[1]), np.arange(z.shape[0]))
    fig = Figure(figsize=(8.5, 6.0), layout="constrained")
    ax = fig.add_subplot(projection="3d")
    colormap = get_cmap(cmap)
    if kind == "wireframe":
        colours = colormap(np.linspace(0.0, 0.9, z.shape[0]))
        for r in range(z.shape[0]):
            ax.plot(x[r], y[r], z[r], color=colours[r], linewidth=0.9)
    elif kind == "surface":
        surf = ax.plot_surface(x, y, z, cmap=colormap, norm=Normalize(0.0, max(float(z.max()), 1e-12)),
                               linewidth=0, antialiased=True, rcount=z.shape[0], ccount=min(z.shape[1], 400))
        fig.colorbar(surf, ax=ax, shrink=0.6, pad=0.08, label="attention")
    else:
        raise AnalysisArgumentError(f"kind must be 'wireframe' or 'surface', got {kind!r}")
    _, _, bounds = group_ticks(layout.key_slices())
    for b in bounds:
        ax.plot([b, b], [0, z.shape[0] - 1], [0, 0], color="grey", linestyle="--", linewidth=0.8)
    for name, s in nonempty_groups(layout.key_slices()):
        ax.plot([s.start - 0.5, s.stop - 0.5], [-1.0, -1.0], [0.0, 0.0], color=GROUP_COLORS[name], linewidth=4.0,
                label=f"{GROUP_TITLES[name]} (keys {s.start}-{s.stop - 1})")
    ax.legend(loc="upper left", fontsize="x-small", title="key groups", title_fontsize="x-small")
    yt, yl = _row_ticks(labels)
    ax.set_yticks(yt, yl, fontsize="x-small")
    ax.set_xlabel("key index")
    ax.set_ylabel("query", labelpad=12)
    ax.set_zlabel("attention")
    ax.view_init(elev=elev, azim=azim)
    ax.set_title(title or f"attention rows, image {image}, heads: {heads}")
    return fig


def plot_attention_surface_plotly(
    attn: torch.Tensor | np.ndarray,
    layout: TokenLayout,
    queries: Sequence[QuerySpec] | Literal["all"] | None = None,
    image: int = 0,
    heads: HeadReduction = "mean",
    kind: SurfaceKind = "surface",
    title: str | None = None,
    cmap: str = "viridis",
) -> go.Figure:
    """Interactive 3D view: ``go.Surface`` (``kind="surface"``) or one ``Scatter3d`` line per row."""
    import plotly.graph_objects as go

    z, labels = surface_rows(attn, layout, queries, image, heads)
    klab = key_labels(layout)
    fig = go.Figure()
    if kind == "surface":
        custom = np.empty(z.shape + (2,), dtype=object)
        custom[..., 0] = np.asarray(labels, dtype=object)[:, None]
        custom[..., 1] = np.asarray(klab, dtype=object)[None, :]
        fig.add_trace(
            go.Surface(
                z=z, x=np.arange(z.shape[1]), y=np.arange(z.shape[0]), colorscale=plotly_colorscale(cmap),
                customdata=custom, colorbar=dict(title=dict(text="attention")),
                hovertemplate="query %{customdata[0]}<br>key %{customdata[1]}<br>attention %{z:.4g}<extra></extra>",
            )
        )
    elif kind == "wireframe":
        colours = get_cmap(cmap)(np.linspace(0.0, 0.9, z.shape[0]))
        for r in range(z.shape[0]):
            rgb = "rgb({},{},{})".format(*(int(round(c * 255)) for c in colours[r][:3]))
            fig.add_trace(
                go.Scatter3d(
                    x=np.arange(z.shape[1]), y=np.full(z.shape[1], r), z=z[r], mode="lines", name=labels[r],
                    line=dict(color=rgb, width=3), customdata=klab,
                    hovertemplate=f"query {labels[r]}<br>key %{{customdata}}<br>attention %{{z:.4g}}<extra></extra>",
                )
            )
    else:
        raise AnalysisArgumentError(f"kind must be 'wireframe' or 'surface', got {kind!r}")
    kx, kn, _ = group_ticks(layout.key_slices())
    yt, yl = _row_ticks(labels)
    fig.update_layout(
        title=dict(text=title or f"attention rows, image {image}, heads: {heads}"),
        scene=dict(
            xaxis=dict(title=dict(text="key"), tickvals=kx, ticktext=kn),
            yaxis=dict(title=dict(text="query"), tickvals=yt, ticktext=yl),
            zaxis=dict(title=dict(text="attention")),
        ),
        width=850, height=650,
    )
    return fig
