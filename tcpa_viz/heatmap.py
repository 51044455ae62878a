"""The whole attention matrix of one layer and image as a 2D heatmap (paper Fig. 3, right).

Rows are queries ``[prefix | patches]`` and columns keys ``[prefix | CLS prompts | image prompts |
prompts | patches]``; thin lines separate the token groups and the group names label the axes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from matplotlib.colors import LogNorm, Normalize, PowerNorm
from matplotlib.figure import Figure

from tcpa_core.errors import InputShapeError

from .colors import get_cmap, plotly_colorscale
from .errors import AnalysisArgumentError, AnalysisIndexError
from .tokens import (
    GROUP_TITLES,
    HeadReduction,
    check_attention,
    key_labels,
    nonempty_groups,
    query_labels,
    reduce_heads,
    to_numpy,
)

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from matplotlib.axes import Axes

    from tcpa_core.layout import TokenLayout

ColorScale = Literal["linear", "sqrt", "log"]


def attention_matrix(
    attn: torch.Tensor | np.ndarray, layout: TokenLayout, image: int = 0, heads: HeadReduction = "mean"
) -> np.ndarray:
    """``[query, key]`` float64 matrix of image ``image`` from ``[batch, head, query, key]`` attention,
    heads reduced by ``heads``. A 2D ``[query, key]`` input is checked against ``layout`` and returned."""
    a = torch.as_tensor(to_numpy(attn))
    if a.ndim == 2:
        a = a[None, None]
        image, heads = 0, "mean"
    a = check_attention(a, layout)
    if not -a.shape[0] <= image < a.shape[0]:
        raise AnalysisIndexError(f"image {image} is outside the batch of {a.shape[0]}")
    image %= a.shape[0]
    return reduce_heads(a[image : image + 1], heads)[0].double().numpy()


def group_ticks(slices: dict[str, slice]) -> tuple[list[float], list[str], list[float]]:
    """Tick positions at group centres, the group titles, and the boundaries between non-empty groups."""
    groups = nonempty_groups(slices)
    centres = [(s.start + s.stop - 1) / 2 for _, s in groups]
    names = [GROUP_TITLES[name] for name, _ in groups]
    bounds = [s.start - 0.5 for _, s in groups[1:]]
    return centres, names, bounds


def _norm(values: np.ndarray, scale: ColorScale, vmax: float | None) -> Normalize:
    hi = float(values.max()) if vmax is None else float(vmax)
    hi = hi if hi > 0 else 1.0
    if scale == "linear":
        return Normalize(0.0, hi)
    if scale == "sqrt":
        return PowerNorm(0.5, 0.0, hi)
    if scale == "log":
        positive = values[values > 0]
        lo = max(float(positive.min()) if positive.size else hi * 1e-4, hi * 1e-4)
        return LogNorm(lo, hi)
    raise AnalysisArgumentError(f"scale must be 'linear', 'sqrt' or 'log', got {scale!r}")


def plot_attention_heatmap_matplotlib(
    attn: torch.Tensor | np.ndarray,
    layout: TokenLayout,
    image: int = 0,
    heads: HeadReduction = "mean",
    title: str | None = None,
    cmap: str = "viridis",
    scale: ColorScale = "linear",
    vmax: float | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Heatmap of the ``[query, key]`` attention with a colour bar and group separators/labels.

    ``attn`` is ``[batch, head, query, key]`` (image ``image``, heads reduced by ``heads``) or a ready
    ``[query, key]`` matrix. ``scale="log"`` shows exact zeros (masked TCPA entries) in light grey.
    """
    m = attention_matrix(attn, layout, image, heads)
    if ax is None:
        fig = Figure(figsize=(7.5, 6.0), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure  # type: ignore[assignment]
    colormap = get_cmap(cmap).with_extremes(bad="#dddddd", under="#dddddd")
    shown = np.ma.masked_less_equal(m, 0.0) if scale == "log" else m
    im = ax.imshow(shown, cmap=colormap, norm=_norm(m, scale, vmax), aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="attention" + ("" if scale == "linear" else f" ({scale} scale)"))
    kx, kn, kb = group_ticks(layout.key_slices())
    qx, qn, qb = group_ticks(layout.query_slices())
    for b in kb:
        ax.axvline(b, color="white", linewidth=1.0)
        ax.axvline(b, color="black", linewidth=0.5, linestyle=":")
    for b in qb:
        ax.axhline(b, color="white", linewidth=1.0)
        ax.axhline(b, color="black", linewidth=0.5, linestyle=":")
    ax.set_xticks(kx, kn, rotation=90, fontsize="small")
    ax.set_yticks(qx, qn, fontsize="small")
    ax.set_xlabel(f"key ({m.shape[1]} columns)")
    ax.set_ylabel(f"query ({m.shape[0]} rows)")
    ax.set_title(title or f"attention, image {image}, heads: {heads}")
    return fig


def plot_attention_heatmap_plotly(
    attn: torch.Tensor | np.ndarray,
    layout: TokenLayout,
    image: int = 0,
    heads: HeadReduction = "mean",
    title: str | None = None,
    cmap: str = "viridis",
    scale: ColorScale = "linear",
) -> go.Figure:
    """Interactive heatmap; hovering shows the query and key token labels and the raw weight.

    For ``scale="sqrt"``/``"log"`` the colours use ``sqrt(a)``/``log10(a)`` (log of exact zeros is blank).
    """
    import plotly.graph_objects as go

    m = attention_matrix(attn, layout, image, heads)
    if scale == "linear":
        z = m
    elif scale == "sqrt":
        z = np.sqrt(m)
    elif scale == "log":
        with np.errstate(divide="ignore"):
            z = np.where(m > 0, np.log10(np.where(m > 0, m, 1.0)), np.nan)
    else:
        raise AnalysisArgumentError(f"scale must be 'linear', 'sqrt' or 'log', got {scale!r}")
    qlab, klab = query_labels(layout), key_labels(layout)
    if m.shape != (len(qlab), len(klab)):
        raise InputShapeError(f"matrix {m.shape} does not match the layout ({len(qlab)}, {len(klab)})")
    custom = np.empty(m.shape + (3,), dtype=object)
    custom[..., 0] = np.asarray(qlab, dtype=object)[:, None]
    custom[..., 1] = np.asarray(klab, dtype=object)[None, :]
    custom[..., 2] = np.vectorize(lambda v: f"{v:.4g}", otypes=[object])(m)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            colorscale=plotly_colorscale(cmap),
            customdata=custom,
            hovertemplate="query %{customdata[0]}<br>key %{customdata[1]}<br>attention %{customdata[2]}"
            "<extra></extra>",
            colorbar=dict(title=dict(text={"linear": "attention", "sqrt": "sqrt(attention)",
                                           "log": "log10(attention)"}[scale])),
        )
    )
    kx, kn, kb = group_ticks(layout.key_slices())
    qx, qn, qb = group_ticks(layout.query_slices())
    for b in kb:
        fig.add_vline(x=b, line=dict(color="white", width=1))
    for b in qb:
        fig.add_hline(y=b, line=dict(color="white", width=1))
    fig.update_xaxes(tickvals=kx, ticktext=kn, title_text=f"key ({m.shape[1]} columns)", tickangle=-90)
    fig.update_yaxes(tickvals=qx, ticktext=qn, title_text=f"query ({m.shape[0]} rows)", autorange="reversed")
    fig.update_layout(title=dict(text=title or f"attention, image {image}, heads: {heads}"), width=800, height=650)
    return fig
